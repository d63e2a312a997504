//! Fuzzes the payload parsers of the four OVS families; the first byte picks the family.
//! A parsed message must emit and parse back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odp::msg;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(m) = msg::FlowMsg::parse(rest) {
                let mut b = Vec::new();
                if m.emit(&mut b).is_ok() {
                    assert_eq!(msg::FlowMsg::parse(&b).as_ref(), Ok(&m));
                }
                let _ = m.to_flow(0).to_string();
            }
        }
        1 => {
            if let Ok((i, a)) = msg::parse_dp(rest) {
                let mut b = Vec::new();
                if msg::emit_dp(i, &a, &mut b).is_ok() {
                    assert_eq!(msg::parse_dp(&b), Ok((i, a)));
                }
            }
        }
        2 => {
            if let Ok((i, a)) = msg::parse_vport(rest) {
                let mut b = Vec::new();
                if msg::emit_vport(i, &a, &mut b).is_ok() {
                    assert_eq!(msg::parse_vport(&b), Ok((i, a)));
                }
            }
        }
        _ => {
            if let Ok((i, a)) = msg::parse_packet(rest) {
                let mut b = Vec::new();
                if msg::emit_packet(i, &a, &mut b).is_ok() {
                    assert_eq!(msg::parse_packet(&b), Ok((i, a)));
                }
            }
        }
    }
});
