//! The 24-bit tunnel key layout: bit 23 trace, bits 22-20 type, bits 19-0 index.
//!
//! Tunnel keys are the VXLAN VNI / Geneve VNI written by the ingress host, so they are
//! limited to 24 bits. The layout follows MidoNet's `TunnelKeys`: a trace bit on top,
//! a 3-bit type field, and a 20-bit index allocated in NSDB.

use crate::error::NsdbError;

/// Bit 23: the packet is being traced.
pub const TRACE_BIT: u32 = 1 << 23;
/// Number of bits of the index field.
pub const INDEX_BITS: u32 = 20;
/// Largest index that fits in the low 20 bits.
pub const MAX_INDEX: u32 = (1 << INDEX_BITS) - 1;
/// Largest type value (3 bits).
pub const MAX_TYPE: u32 = 0b111;
/// Largest valid 24-bit key.
pub const MAX_KEY: u32 = (1 << 24) - 1;

/// Type 0: a port or device key allocated in NSDB.
pub const TYPE_PORT: u32 = 0;
/// Type 1: a key generated locally by one host (not allocated in NSDB).
pub const TYPE_LOCAL: u32 = 1;
/// Type 2: reserved for address-family translation.
pub const TYPE_FIP64: u32 = 2;
/// Type 7: reserved for state/control traffic.
pub const TYPE_STATE: u32 = 7;

const TYPE_SHIFT: u32 = INDEX_BITS;

/// Builds a key from a type and an index. Fails when either does not fit its field.
pub fn compose(ty: u32, index: u32) -> Result<u32, NsdbError> {
    if ty > MAX_TYPE || index > MAX_INDEX {
        return Err(NsdbError::TunnelKeyOutOfRange { ty, index });
    }
    Ok((ty << TYPE_SHIFT) | index)
}

/// The type field (bits 22-20) of a key.
pub const fn key_type(key: u32) -> u32 {
    (key >> TYPE_SHIFT) & MAX_TYPE
}

/// The index field (bits 19-0) of a key.
pub const fn index(key: u32) -> u32 {
    key & MAX_INDEX
}

/// Whether the trace bit is set.
pub const fn is_traced(key: u32) -> bool {
    key & TRACE_BIT != 0
}

/// The same key with the trace bit set.
pub const fn with_trace(key: u32) -> u32 {
    key | TRACE_BIT
}

/// The same key with the trace bit cleared.
pub const fn without_trace(key: u32) -> u32 {
    key & !TRACE_BIT
}

/// Whether `key` fits in 24 bits.
pub const fn is_valid(key: u32) -> bool {
    key <= MAX_KEY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_and_split() {
        let k = compose(TYPE_LOCAL, 0x12345).unwrap();
        assert_eq!(k, 0x112345);
        assert_eq!(key_type(k), TYPE_LOCAL);
        assert_eq!(index(k), 0x12345);
        assert!(!is_traced(k));
        let t = with_trace(k);
        assert_eq!(t, 0x912345);
        assert!(is_traced(t));
        assert_eq!(key_type(t), TYPE_LOCAL);
        assert_eq!(index(t), 0x12345);
        assert_eq!(without_trace(t), k);
        assert!(is_valid(t));
        assert!(!is_valid(MAX_KEY + 1));
    }

    #[test]
    fn compose_rejects_out_of_range() {
        assert!(compose(8, 0).is_err());
        assert!(compose(0, MAX_INDEX + 1).is_err());
        assert_eq!(compose(TYPE_STATE, MAX_INDEX).unwrap(), 0x7f_ffff);
        assert_eq!(compose(TYPE_PORT, 0).unwrap(), 0);
    }
}
