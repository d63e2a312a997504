//! The agent's local API: the protocol and client live in the `agent-api` crate (re-exported
//! here), shared with the CNI binary and `weftctl`; the agent's side of it is [`server`].

pub mod server;

pub use agent_api::{
    ApiError, AttachedPort, Client, FlowInfo, Reply, Request, Response, Status, TraceInfo,
};
pub use agent_api::{client, error, proto};
pub use server::{Deferred, Handler, ServeOptions, bind, serve, serve_with};
