//! The operator's error type: one enum whose variants name the object involved.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The semantic check or the translation refused the spec. The message names the field.
    #[error("{kind} {name} has an invalid spec: {message}")]
    InvalidSpec {
        kind: &'static str,
        name: String,
        message: String,
    },
    /// The spec sets a field nothing implements yet (`api::unsupported`). The message names
    /// the field.
    #[error("{kind} {name} sets a field that is not supported yet: {message}")]
    Unsupported {
        kind: &'static str,
        name: String,
        message: String,
    },
    /// Reading or writing NSDB failed for this object.
    #[error("NSDB operation for {object} failed")]
    Nsdb {
        object: String,
        #[source]
        source: nsdb::NsdbError,
    },
    /// A Kubernetes API call failed for this object.
    #[error("Kubernetes API call for {object} failed")]
    Kube {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer, or the apply/cleanup it wraps, failed.
    #[error("finalizer step for {object} failed")]
    Finalizer {
        object: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
    /// An object arrived without the metadata the operator needs.
    #[error("{kind} object has no {field}")]
    MissingMetadata {
        kind: &'static str,
        field: &'static str,
    },
    /// A file or directory of manifests could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A YAML document could not be parsed as a Weft object.
    #[error("{}: not valid YAML", path.display())]
    Yaml {
        path: PathBuf,
        index: usize,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A YAML document does not decode as the object its kind names.
    #[error("{}: document {index} does not decode", path.display())]
    Decode {
        path: PathBuf,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    /// A YAML document has an apiVersion/kind the operator does not handle.
    #[error(
        "{path}: document {index} has apiVersion {api_version:?} kind {kind:?}, not a weft.dev/v1alpha1 kind"
    )]
    UnknownKind {
        path: PathBuf,
        index: usize,
        api_version: String,
        kind: String,
    },
    /// Two manifests define the same object.
    #[error("{kind} {name} is defined twice ({} and {})", first.display(), second.display())]
    Duplicate {
        kind: &'static str,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// The CRD schemas could not be built or applied.
    #[error("CRD schema check failed")]
    Schema {
        #[source]
        source: api::Error,
    },
    /// Leader election failed.
    #[error("leader election on lease {lease} failed")]
    Lease {
        lease: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// This replica lost the leader lease; it stops so another replica takes over cleanly.
    #[error("lost the leader lease {lease}")]
    LostLeadership { lease: String },
    /// The metrics endpoint could not be served.
    #[error("cannot serve HTTP on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short, bounded label for the `error` label of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::Unsupported { .. } => "unsupported",
            Error::Nsdb { .. } => "nsdb",
            Error::Kube { .. } => "kube",
            Error::Finalizer { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::MissingMetadata { .. } => "missing_metadata",
            Error::Io { .. } => "io",
            Error::Yaml { .. } => "yaml",
            Error::Decode { .. } => "decode",
            Error::UnknownKind { .. } => "unknown_kind",
            Error::Duplicate { .. } => "duplicate",
            Error::Schema { .. } => "schema",
            Error::Lease { .. } => "lease",
            Error::LostLeadership { .. } => "lost_leadership",
            Error::Serve { .. } => "serve",
        }
    }

    /// Whether retrying the same input can succeed (the spec is not at fault).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Error::InvalidSpec { .. }
                | Error::Unsupported { .. }
                | Error::UnknownKind { .. }
                | Error::Yaml { .. }
                | Error::Decode { .. }
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizer_errors_are_labelled_by_their_cause() {
        let inner = Error::InvalidSpec {
            kind: "VirtualBridge",
            name: "b".into(),
            message: "spec.gateway: outside".into(),
        };
        let e = Error::Finalizer {
            object: "VirtualBridge b".into(),
            source: Box::new(kube::runtime::finalizer::Error::ApplyFailed(inner)),
        };
        assert_eq!(e.metric_label(), "invalid_spec");
        let e = Error::Finalizer {
            object: "VirtualBridge b".into(),
            source: Box::new(kube::runtime::finalizer::Error::UnnamedObject),
        };
        assert_eq!(e.metric_label(), "finalizer");
    }
}
