//! Weft's operator: reconciles `weft.dev` custom resources into NSDB records, writes their
//! status, and serves its metrics.

pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod store;
pub mod translate;

pub use error::{Error, Result};
pub use ids::{CrKind, ObjectKey};
pub use metrics::Metrics;
pub use translate::{Inventory, Translation, translate};
pub mod cli;
pub mod controller;
pub mod dump;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod offline;
pub mod program;
pub mod validate;
