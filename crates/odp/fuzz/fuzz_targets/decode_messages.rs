//! Fuzzes the parsers the agent runs on what the kernel sends: `ovs_datapath`, `ovs_vport`
//! and `ovs_flow` replies and `ovs_packet` upcalls. The first byte picks the parser (and,
//! for upcalls, miss or action); the rest is the payload after the genl header. A flow that
//! parses must be written back and read again as the same flow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odp::msg::{self, FlowPut};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(e) = msg::parse_flow(rest) {
                let put = FlowPut {
                    key: e.key.clone(),
                    mask: e.mask.clone(),
                    actions: e.actions.clone(),
                    ufid: e.ufid,
                    clear: false,
                };
                let mut b = Vec::new();
                if msg::flow_put_payload(0, &put, &mut b).is_ok() {
                    let back = msg::parse_flow(&b).expect("a written flow reads back");
                    assert_eq!((&back.key, &back.mask), (&e.key, &e.mask));
                    assert_eq!((&back.actions, back.ufid), (&e.actions, e.ufid));
                }
                if let Ok(f) = e.to_flow(0) {
                    let _ = f.to_string();
                }
            }
        }
        1 => {
            let _ = msg::parse_dp(rest);
        }
        2 => {
            let _ = msg::parse_vport(rest);
        }
        _ => {
            // A miss or an action upcall; the parser's refusal of other commands is a unit test.
            let cmd = msg::cmd::PACKET_MISS + ((which >> 2) & 1);
            let _ = msg::parse_upcall(cmd, rest);
        }
    }
});
