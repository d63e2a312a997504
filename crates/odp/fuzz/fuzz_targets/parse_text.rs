//! Fuzzes the `ovs-dpctl` text parser: it must never panic, and printing what it parsed
//! must give text that parses to a flow printing the same (printing normalizes once).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = odp::parse_flow(s) {
        let text = f.to_string();
        let again = odp::parse_flow(&text)
            .unwrap_or_else(|e| panic!("printed flow does not parse: {text}\n{e}"));
        assert_eq!(again.to_string(), text);
        // And the flow encodes without panicking.
        let mut b = Vec::new();
        let _ = odp::encode_key(&f.key, &mut b);
        let _ = odp::encode_actions(&f.actions, &mut b);
    }
});
