//! Weft's operator: reconciles `weft.dev` custom resources into NSDB records, writes their
//! status, and serves its metrics.

pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod translate;

pub use error::{Error, Result};
pub use ids::{CrKind, ObjectKey};
pub use metrics::Metrics;
pub use translate::{Inventory, Translation, translate};
