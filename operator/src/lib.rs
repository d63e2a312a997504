//! Weft's operator: reconciles `weft.dev` custom resources into NSDB records, writes their
//! status, and serves its metrics.
//!
//! The path of one object is the same for the controllers ([`controller`]) and for the
//! offline `weft-operator translate` command ([`offline`]): the semantic check
//! ([`validate`]), the pure translation into records with deterministic ids ([`mod@translate`],
//! [`ids`]), and the write of exactly that object's records in one transaction ([`store`]),
//! tied together by [`program`].

pub mod cli;
pub mod controller;
pub mod dump;
pub mod error;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod http;
pub mod ids;
pub mod kuryr;
pub mod metrics;
pub mod offline;
pub mod program;
pub mod store;
pub mod translate;
pub mod validate;

pub use error::{Error, Result};
pub use ids::{CrKind, ObjectKey};
pub use metrics::Metrics;
pub use translate::{Inventory, Translation, translate};
