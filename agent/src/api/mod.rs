//! The agent's local API: the protocol ([`proto`]) spoken over a root-only unix socket by
//! the CNI binary and `weftctl`, the agent's side of it ([`server`]) and the blocking
//! client ([`client`]).

pub mod client;
pub mod error;
pub mod proto;
pub mod server;

pub use client::Client;
pub use error::ApiError;
pub use proto::{AttachedPort, FlowInfo, Reply, Request, Response, Status, TraceInfo};
pub use server::{Handler, ServeOptions, bind, serve, serve_with};
