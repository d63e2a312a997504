//! NSDB: Weft's network state database on etcd — record types, key layout, typed client,
//! watch cache and allocators.
//!
//! Records ([`records`]) are versioned JSON under `/weft/v1/<kind>/<id>` ([`keys`]); a
//! record's version is the etcd `mod_revision` of its key.
//!
//! ```no_run
//! use nsdb::{IpFamily, Nsdb, Port, PortBinding, WatchCache, tunnel_key};
//!
//! # async fn demo(port: Port) -> nsdb::Result<()> {
//! let db = Nsdb::connect(&["http://127.0.0.1:2379"]).await?;
//!
//! // Typed reads and writes; compare-and-swap on the version read.
//! let v = db.create(&port).await?;
//! let mut p = db.get::<Port>(&port.id).await?.expect("just created");
//! p.record.admin_up = false;
//! db.put_if_version(&p.record, p.version).await?;
//!
//! // Allocation: an IP lease and the port's binding in one transaction.
//! let binding = PortBinding { port: port.id.clone(), host: "node-1".into(), vport: "wf1".into() };
//! let lease = db
//!     .allocate_ip_with("bridge-1", &port.id, IpFamily::V4, |_ip, txn| txn.put(&binding))
//!     .await?;
//! let key = db.allocate_tunnel_key(&port.id, tunnel_key::TYPE_PORT).await?;
//!
//! // A watch cache: consistent snapshots plus the keys that changed.
//! let cache = WatchCache::start(db.clone()).await;
//! let (snapshot, mut updates) = cache.subscribe();
//! let ports = snapshot.list::<Port>().count();
//! while let Some(update) = updates.recv().await {
//!     for change in &update.changes {
//!         println!("{:?} {} at {}", change.op, change.key, change.revision);
//!     }
//! }
//! # let _ = (v, lease, key, ports);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "client")]
pub mod alloc;
#[cfg(feature = "client")]
pub mod binding;
#[cfg(feature = "client")]
pub mod client;
pub mod codec;
pub mod error;
pub mod keys;
#[cfg(feature = "client")]
pub mod lease;
#[cfg(feature = "client")]
pub mod metrics;
#[cfg(feature = "client")]
pub mod pod_port;
pub mod records;
pub mod selector;
#[cfg(feature = "client")]
pub mod tls;
pub mod tunnel_key;
#[cfg(feature = "client")]
pub mod watch;

#[cfg(feature = "client")]
pub use alloc::IpFamily;
#[cfg(feature = "client")]
pub use binding::{Bind, Unbind};
#[cfg(feature = "client")]
pub use client::{Listed, MAX_TXN_OPS, Nsdb, Txn, Versioned};
pub use error::{NsdbError, Result};
pub use keys::Kind;
#[cfg(feature = "client")]
pub use lease::KeptLease;
#[cfg(feature = "client")]
pub use metrics::register;
#[cfg(feature = "client")]
pub use pod_port::{PodPort, PodPortRelease, PodPortRequest};
pub use records::*;
pub use selector::{
    LABEL_NAMESPACE_NAME, LABEL_ROLE, LabelExpr, LabelSelector, PortSelector, ROLE_NODE,
    SelectorOp, is_node_port,
};
#[cfg(feature = "client")]
pub use tls::TlsFiles;
#[cfg(feature = "client")]
pub use watch::{Change, ChangeOp, Entry, Snapshot, Update, WatchCache, WatchHealth};
#[cfg(feature = "test-util")]
pub mod testing;
