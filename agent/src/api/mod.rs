//! The agent's local API: the protocol ([`proto`]) spoken over a root-only unix socket by
//! the CNI binary and `weftctl`.

pub mod proto;

pub use proto::{AttachedPort, FlowInfo, Reply, Request, Response, Status, TraceInfo};
