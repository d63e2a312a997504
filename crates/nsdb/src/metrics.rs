//! Prometheus metrics of the NSDB client, shared by every client in the process.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

static CORRUPT_RECORDS: LazyLock<Counter> = LazyLock::new(Counter::default);
static WATCH_RELISTS: LazyLock<Counter> = LazyLock::new(Counter::default);
static WATCH_RESUMES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Registers the NSDB metrics: `weft_nsdb_corrupt_records_total`,
/// `weft_nsdb_watch_relists_total` and `weft_nsdb_watch_resumes_total`.
pub fn register(registry: &mut Registry) {
    registry.register(
        "weft_nsdb_corrupt_records",
        "Stored values that could not be decoded and were skipped",
        CORRUPT_RECORDS.clone(),
    );
    registry.register(
        "weft_nsdb_watch_relists",
        "Times a watch cache listed its prefix again after compaction or a lost watch",
        WATCH_RELISTS.clone(),
    );
    registry.register(
        "weft_nsdb_watch_resumes",
        "Times a watch cache resumed its watch after a disconnect",
        WATCH_RESUMES.clone(),
    );
}

/// The number of corrupt values skipped so far in this process.
pub fn corrupt_records_total() -> u64 {
    CORRUPT_RECORDS.get()
}

/// The number of re-lists by watch caches so far in this process.
pub fn watch_relists_total() -> u64 {
    WATCH_RELISTS.get()
}

/// The number of watch resumptions so far in this process.
pub fn watch_resumes_total() -> u64 {
    WATCH_RESUMES.get()
}

pub(crate) fn inc_corrupt() {
    CORRUPT_RECORDS.inc();
}

pub(crate) fn inc_relist() {
    WATCH_RELISTS.inc();
}

pub(crate) fn inc_resume() {
    WATCH_RESUMES.inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let mut reg = Registry::default();
        register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("weft_nsdb_corrupt_records_total"), "{out}");
        assert!(out.contains("weft_nsdb_watch_relists_total"), "{out}");
    }
}
