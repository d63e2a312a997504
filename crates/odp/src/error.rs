//! The error type of the odp crate: decode, encode and text-parse failures, each saying
//! which attribute or which part of the text was wrong. The socket layer's error carries
//! it for every message it could not build or read.

use thiserror::Error;

/// Every error the pure codec and the text parser return.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A netlink attribute could not be decoded (wrong length, truncated, bad value).
    #[error("invalid {attr} {reason}")]
    Decode {
        /// Kernel name of the attribute, e.g. `OVS_KEY_ATTR_IPV4`.
        attr: &'static str,
        /// What was wrong, e.g. `length 11`.
        reason: String,
    },
    /// A message lacks an attribute it must carry.
    #[error("{within} without {attr}")]
    Missing {
        /// Kernel name of the attribute, e.g. `OVS_PACKET_ATTR_KEY`.
        attr: &'static str,
        /// The message, e.g. `upcall`.
        within: &'static str,
    },
    /// A value cannot be encoded for the kernel.
    #[error("cannot encode {attr}: {reason}")]
    Encode {
        /// Kernel name of the attribute.
        attr: &'static str,
        /// Why.
        reason: String,
    },
    /// Flow text in `ovs-dpctl` syntax could not be parsed.
    #[error("cannot parse flow text at byte {pos} ({near:?}): {reason}")]
    Parse {
        /// Byte offset in the input.
        pos: usize,
        /// The input from that offset (at most 40 bytes).
        near: String,
        /// What was expected.
        reason: String,
    },
}

impl Error {
    pub(crate) fn decode(attr: &'static str, reason: impl Into<String>) -> Self {
        Error::Decode {
            attr,
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(attr: &'static str, within: &'static str) -> Self {
        Error::Missing { attr, within }
    }

    pub(crate) fn bad_len(attr: &'static str, len: usize) -> Self {
        Error::Decode {
            attr,
            reason: format!("length {len}"),
        }
    }
}

/// Result with [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
