//! The error type of the api crate: generating, reading and comparing CRD manifests, and
//! checking objects against their schemas.

use std::path::PathBuf;

/// Errors of CRD generation and the drift check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CRD could not be rendered as YAML.
    #[error("cannot render CRD {crd} as YAML")]
    Render {
        crd: String,
        #[source]
        source: serde_saphyr::SerializeError,
    },
    /// A manifest could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CRD's schema cannot be compiled into a validator.
    #[error("the schema of {kind} cannot be used: {reason}")]
    Schema { kind: String, reason: String },
    /// An object that is not one of the Weft kinds.
    #[error("{api_version} {kind} is not a weft.dev/v1alpha1 kind")]
    UnknownKind { api_version: String, kind: String },
}
