//! NSDB: Weft's network state database on etcd — record types, key layout, typed client,
//! watch cache and allocators.

pub mod error;
pub mod keys;
pub mod records;
pub mod tunnel_key;

pub use error::{NsdbError, Result};
pub use keys::Kind;
pub use records::*;
