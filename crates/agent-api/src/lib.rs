//! The weft agent's local API, as its clients see it: the protocol ([`proto`]) spoken over a
//! root-only unix socket, the blocking [`client`], and the transport errors ([`error`]). It
//! holds no agent logic, so the CNI plugin and `weftctl` link only this and serde.

pub mod client;
pub mod error;
pub mod proto;

pub use client::Client;
pub use error::ApiError;
pub use proto::{
    AttachedPort, CniAttachmentId, CniDns, CniInterface, CniIp, CniResult, CniRoute, ErrorCode,
    FlowInfo, Reply, Request, Response, Status, TraceInfo,
};
