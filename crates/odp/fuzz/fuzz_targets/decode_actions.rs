//! Fuzzes the `OVS_ACTION_ATTR_*` decoder: it must never panic, and whatever it decodes
//! must encode and decode to the same actions and print without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = odp::decode_actions(data) {
        let mut b = Vec::new();
        if odp::encode_actions(&a, &mut b).is_ok() {
            assert_eq!(odp::decode_actions(&b).as_ref(), Ok(&a));
        }
        let _ = odp::ActionsDisplay(&a).to_string();
    }
});
