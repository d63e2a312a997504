//! Errors of the local API transport: binding the agent's socket and calling it as a client.

use std::io;
use std::path::PathBuf;

/// What went wrong on the agent's local API socket, on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Nothing listens at the socket path: the file is missing or nobody accepts on it.
    #[error("the weft agent is not running: cannot connect to {}: {source}", path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket exists but this user may not connect to it (it is root-only).
    #[error("permission denied connecting to the weft agent at {} (the socket is root-only): {source}", path.display())]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to the weft agent at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the request or reading the response failed.
    #[error("talking to the weft agent at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No response came within the client's timeout.
    #[error("the weft agent at {} did not answer within {timeout:?}", path.display())]
    Timeout {
        path: PathBuf,
        timeout: std::time::Duration,
    },
    /// The agent closed the connection before answering.
    #[error("the weft agent at {} closed the connection without answering", path.display())]
    Closed { path: PathBuf },
    /// The agent's answer is not a valid response line.
    #[error("the weft agent at {} sent an invalid response: {source}", path.display())]
    BadResponse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The agent's answer is longer than the client accepts.
    #[error("the weft agent at {} sent a response longer than {limit} bytes", path.display())]
    ResponseTooLong { path: PathBuf, limit: usize },
    /// The request could not be encoded (it holds nothing that can fail today).
    #[error("cannot encode the request: {source}")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
    /// The agent refused the request or failed to carry it out; its message.
    #[error("the weft agent answered: {0}")]
    Agent(String),

    /// Another process already answers on the socket path.
    #[error("another weft agent is already listening on {}; refusing to start", path.display())]
    AlreadyRunning { path: PathBuf },
    /// Something other than a socket is at the socket path; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    /// Probing, removing, creating or binding the socket or its directory failed.
    #[error("{what} {}: {source}", path.display())]
    Bind {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `bind` was called outside a tokio runtime.
    #[error("binding {} needs a tokio runtime", path.display())]
    NoRuntime { path: PathBuf },
}
