//! Benchmark (not a test): translation plus NSDB write throughput against a local etcd that
//! the benchmark starts, compared with raw etcd puts of the same number of keys in the same
//! run.
//!
//! The topology is 1,000 bridges with 10 ports each: 1,000 routers, each with interfaces on
//! 10 bridges, so every bridge carries 10 router peer ports. Per router that is 10 router
//! ports, 10 bridge-side peers and 10 connected routes, plus tunnel keys for every device
//! and port.
//!
//! `cargo bench -p weft-operator --bench translate_write`
//! Environment: `WEFT_BENCH_BRIDGES` (default 1000), `WEFT_BENCH_PORTS` (default 10),
//! `WEFT_BENCH_CONCURRENCY` (default 16) for the concurrent pass.

use std::time::{Duration, Instant};

use api::{RouterInterface, VirtualBridge, VirtualBridgeSpec, VirtualRouter, VirtualRouterSpec};
use futures::StreamExt;
use nsdb::Nsdb;
use nsdb::testing::Etcd;
use weft_operator::offline::{self, Outcome};
use weft_operator::{CrKind, Inventory, ObjectKey, program, validate};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn subnet(b: usize) -> String {
    format!("10.{}.{}.0/24", b / 256, b % 256)
}

fn address(b: usize, host: usize) -> String {
    format!("10.{}.{}.{}", b / 256, b % 256, host)
}

/// `bridges` bridges and as many routers; router `r` has an interface on bridges
/// `r, r + step, r + 2*step, ...` so that each bridge gets `ports` routers.
fn topology(bridges: usize, ports: usize) -> Inventory {
    let mut inv = Inventory::default();
    for b in 0..bridges {
        inv.add_bridge(VirtualBridge::new(
            &format!("br-{b}"),
            VirtualBridgeSpec {
                subnet: subnet(b),
                ..Default::default()
            },
        ));
    }
    let step = bridges / ports;
    for r in 0..bridges {
        let interfaces = (0..ports)
            .map(|k| {
                let b = (r + k * step) % bridges;
                RouterInterface {
                    bridge: format!("br-{b}"),
                    // Router r is the k-th router on bridge b.
                    ip: address(b, 10 + k),
                    mac: None,
                    ip_v6: None,
                }
            })
            .collect();
        inv.add_router(VirtualRouter::new(
            &format!("rt-{r}"),
            VirtualRouterSpec {
                interfaces,
                ..Default::default()
            },
        ));
    }
    inv
}

async fn count_keys(db: &Nsdb) -> usize {
    db.list_all().await.expect("list NSDB").1.len()
}

async fn raw_puts(db: &Nsdb, n: usize, value: &[u8]) -> Duration {
    let mut etcd = db.etcd();
    let start = Instant::now();
    for i in 0..n {
        etcd.put(format!("/bench/raw/{i:08}"), value.to_vec(), None)
            .await
            .expect("raw put");
    }
    start.elapsed()
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let bridges = env("WEFT_BENCH_BRIDGES", 1000);
    let ports = env("WEFT_BENCH_PORTS", 10);
    let concurrency = env("WEFT_BENCH_CONCURRENCY", 16);
    assert!(
        bridges >= ports && bridges.is_multiple_of(ports),
        "bridges must be a multiple of ports"
    );
    let inv = topology(bridges, ports);
    let objects = inv.keys().len();

    // Translation alone (validation included), no I/O.
    let start = Instant::now();
    let report = validate::report(&inv);
    let mut records = 0;
    for key in inv.keys() {
        records += program::check_with(&key, &inv, &report)
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .records
            .len();
    }
    let pure = start.elapsed();

    // Sequential, as `weft-operator translate` writes.
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let start = Instant::now();
    let outcomes = offline::program_all(Some(&db), &inv)
        .await
        .expect("program");
    let seq = start.elapsed();
    assert!(
        outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Programmed(_)))
    );
    let keys = count_keys(&db).await;

    // Idempotent rerun: reads only.
    let start = Instant::now();
    offline::program_all(Some(&db), &inv).await.expect("rerun");
    let rerun = start.elapsed();

    // Concurrent, as the controllers reconcile: bridges first, then routers.
    let etcd2 = Etcd::start();
    let db2 = etcd2.client().await;
    let start = Instant::now();
    for kind in [CrKind::VirtualBridge, CrKind::VirtualRouter] {
        let batch: Vec<ObjectKey> = inv.keys().into_iter().filter(|k| k.kind == kind).collect();
        let results: Vec<_> = futures::stream::iter(batch)
            .map(|key| {
                let (db, inv, report) = (&db2, &inv, &report);
                async move { program::program_with(db, &key, inv, report).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for r in results {
            r.expect("program");
        }
    }
    let conc = start.elapsed();
    assert_eq!(count_keys(&db2).await, keys);

    // Raw etcd puts of the same number of keys, with a value the size of a router port.
    let (_, all) = db.list_all().await.expect("list");
    let sample = all
        .iter()
        .find(|(r, _)| matches!(r, nsdb::AnyRecord::Port(_)))
        .map(|(r, _)| nsdb::codec::encode_any(r).expect("encode"))
        .expect("a port record");
    let raw = raw_puts(&db, keys, &sample).await;

    println!(
        "translate_write: {bridges} bridges x {ports} ports ({objects} objects, {records} records, {keys} etcd keys incl. tunnel keys)"
    );
    println!(
        "  translate+validate only     {:>9.1} ms  {:>10.0} objects/s",
        pure.as_secs_f64() * 1e3,
        per_sec(objects, pure)
    );
    println!(
        "  translate+write, sequential {:>9.1} ms  {:>10.0} objects/s  {:>8.0} keys/s",
        seq.as_secs_f64() * 1e3,
        per_sec(objects, seq),
        per_sec(keys, seq)
    );
    println!(
        "  translate+write, {concurrency:>2} at once {:>9.1} ms  {:>10.0} objects/s  {:>8.0} keys/s",
        conc.as_secs_f64() * 1e3,
        per_sec(objects, conc),
        per_sec(keys, conc)
    );
    println!(
        "  idempotent rerun            {:>9.1} ms  {:>10.0} objects/s",
        rerun.as_secs_f64() * 1e3,
        per_sec(objects, rerun)
    );
    println!(
        "  raw etcd puts, sequential   {:>9.1} ms  {:>10.0} keys/s",
        raw.as_secs_f64() * 1e3,
        per_sec(keys, raw)
    );
    println!(
        "  ratio keys/s operator/raw: sequential {:.2}, concurrent {:.2}",
        per_sec(keys, seq) / per_sec(keys, raw),
        per_sec(keys, conc) / per_sec(keys, raw)
    );
}
