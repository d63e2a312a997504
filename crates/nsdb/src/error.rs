//! The error type of the nsdb crate.

use std::net::IpAddr;
use std::path::PathBuf;

/// Everything that can go wrong talking to NSDB.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NsdbError {
    /// The client could not connect to any endpoint.
    #[cfg(feature = "client")]
    #[error("cannot connect to etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("{given} is given without {missing}: a client certificate needs its key")]
    TlsIncomplete {
        given: &'static str,
        missing: &'static str,
    },
    /// A TLS file could not be read.
    #[error("cannot read {flag} {}", path.display())]
    TlsFile {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no usable PEM certificate or key.
    #[error("{flag} {}: {reason}", path.display())]
    TlsPem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The endpoints do not fit the TLS settings (TLS files with `http://`, or a mix).
    #[error("etcd endpoint {endpoint}: {reason}")]
    TlsEndpoint { endpoint: String, reason: String },
    /// `https://` endpoints without `--etcd-ca-file`, on a system without trusted roots.
    #[error(
        "no --etcd-ca-file is given and the system has no trusted CA certificates ({reason}): \
         give the CA of etcd's certificate"
    )]
    TlsNoRoots { reason: String },
    /// Every etcd member that answered refused the TLS handshake, or was refused by it.
    #[error("TLS handshake with etcd at {endpoint} failed: {reason}")]
    TlsHandshake { endpoint: String, reason: String },
    /// An etcd request failed.
    #[cfg(feature = "client")]
    #[error("etcd {op} on {key} failed")]
    Etcd {
        op: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    /// A stored value is not valid JSON for its record kind.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A stored value was written by a newer (or unknown) schema.
    #[error(
        "record at {key} has unsupported schema version {version} (this build reads {supported})"
    )]
    UnsupportedSchema {
        key: String,
        version: u64,
        supported: u64,
    },
    /// A record could not be serialized.
    #[error("cannot encode record {key}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A key does not belong to the NSDB layout.
    #[error("key {key} is not an NSDB record key")]
    InvalidKey { key: String },
    /// A compare-and-swap lost: the record changed (or appeared/disappeared) since it was read.
    #[error("version conflict on {key}: expected version {expected}")]
    VersionConflict { key: String, expected: i64 },
    /// A multi-op transaction's conditions were not met.
    #[error("transaction conditions failed on {keys:?}")]
    TxnConditionFailed { keys: Vec<String> },
    /// A tunnel key type or index does not fit its field.
    #[error("tunnel key type {ty} / index {index} out of range (type <= 7, index < 2^20)")]
    TunnelKeyOutOfRange { ty: u32, index: u32 },
    /// No free address or key is left in a pool.
    #[error("pool {pool} is exhausted")]
    Exhausted { pool: String },
    /// A bridge has no subnet of the requested family to allocate from.
    #[error("bridge {bridge} has no {family} subnet")]
    NoSubnet {
        bridge: String,
        family: &'static str,
    },
    /// The bridge an allocation refers to does not exist.
    #[error("bridge {bridge} not found")]
    BridgeNotFound { bridge: String },
    /// A port is bound to a vport already, and a different binding was asked for.
    #[error("port {port} is already bound to vport {vport} on host {host}")]
    PortAlreadyBound {
        port: String,
        host: String,
        vport: String,
    },
    /// A lease or key is held by another owner and cannot be released by this one.
    #[error("{key} is owned by {holder}, not {owner}")]
    NotOwner {
        key: String,
        holder: String,
        owner: String,
    },
    /// The requested address is outside the bridge's subnet or reserved.
    #[error("address {ip} is not allocatable on bridge {bridge}: {reason}")]
    AddressNotAllocatable {
        bridge: String,
        ip: IpAddr,
        reason: &'static str,
    },
    /// Allocation kept losing races for too long.
    #[error("allocation in {pool} gave up after {attempts} contended attempts")]
    Contended { pool: String, attempts: u32 },
    /// The watch cache task has stopped.
    #[error("watch cache on {prefix} has stopped")]
    CacheStopped { prefix: String },
}

/// Shorthand for results of this crate.
pub type Result<T, E = NsdbError> = std::result::Result<T, E>;

/// An error and every `source()` under it, shown as `outer: inner: innermost`.
///
/// tracing's `%err` shows only the outermost message, which for [`NsdbError::Etcd`] is
/// "etcd list on /weft/v1/ failed" without the cause. Log errors as
/// `error = %nsdb::error::chain(&err)`: it works for any error type, so callers whose
/// errors wrap an `NsdbError` get its cause too.
pub struct Chain<'a>(&'a (dyn std::error::Error + 'static));

/// Shows `err` with its whole chain of sources (see [`Chain`]).
pub fn chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> Chain<'a> {
    Chain(err)
}

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl std::fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "client")]
    #[test]
    fn chain_shows_the_cause() {
        let err = NsdbError::Etcd {
            op: "list",
            key: "/weft/v1/".into(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
                "decoded message length too large",
            )),
        };
        let shown = chain(&err).to_string();
        assert!(
            shown.starts_with("etcd list on /weft/v1/ failed: grpc request error: "),
            "{shown}"
        );
        assert!(
            shown.contains("decoded message length too large"),
            "{shown}"
        );
        // A plain error without a source shows just itself.
        let corrupt = NsdbError::Corrupt {
            key: "k".into(),
            reason: "bad".into(),
        };
        assert_eq!(chain(&corrupt).to_string(), "corrupt record at k: bad");
    }
}
