//! Semantic validation of Weft objects taken together: what the schema alone cannot refuse.

use std::fmt;

/// One refused field of one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Invalid {
    /// JSON path of the field, e.g. `spec.interfaces[1].ip`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}
