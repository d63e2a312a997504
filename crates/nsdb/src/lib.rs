//! NSDB: Weft's network state database on etcd — record types, key layout, typed client,
//! watch cache and allocators.

pub mod alloc;
pub mod client;
pub mod codec;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod records;
pub mod tunnel_key;
pub mod watch;

pub use alloc::IpFamily;
pub use client::{Listed, MAX_TXN_OPS, Nsdb, Txn, Versioned};
pub use error::{NsdbError, Result};
pub use keys::Kind;
pub use metrics::register;
pub use records::*;
pub use watch::{Change, ChangeOp, Entry, Snapshot, Update, WatchCache};
#[cfg(feature = "test-util")]
pub mod testing;
