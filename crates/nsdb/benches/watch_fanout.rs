//! Benchmark: how long 10 watch caches take to see 10,000 writes, as a ratio of the time
//! etcd itself takes to accept those writes, both measured in the same run on a local etcd
//! (a fresh etcd per phase, so both phases start from the same history).
//!
//! Run: `cargo bench -p nsdb --bench watch_fanout` (set WEFT_BENCH_WRITES / WEFT_BENCH_CACHES
//! to change the sizes).

use std::time::{Duration, Instant};

use futures::StreamExt;
use nsdb::testing::Etcd;
use nsdb::*;

const IN_FLIGHT: usize = 32;

/// CPU seconds (user + system) used so far by a process, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn port(i: usize) -> Port {
    Port {
        named_ports: Vec::new(),
        namespace_labels: Default::default(),
        id: format!("p{i:06}"),
        device: DeviceRef::Bridge("b1".into()),
        kind: PortKind::Exterior,
        mac: MacAddr::local_from_name(&i.to_string()),
        addresses: vec![
            format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap(),
        ],
        tunnel_key: i as u32,
        inbound_chain: None,
        outbound_chain: None,
        admin_up: true,
        labels: Default::default(),
    }
}

/// Writes `n` ports with `IN_FLIGHT` requests in flight; returns the elapsed time and
/// the highest revision written.
async fn write_all(db: &Nsdb, n: usize, tag: usize) -> (Duration, i64) {
    let t0 = Instant::now();
    let revs: Vec<i64> = futures::stream::iter(0..n)
        .map(|i| {
            let db = db.clone();
            async move {
                let mut p = port(i);
                p.labels.insert("round".into(), tag.to_string());
                db.put(&p).await.expect("bench write failed")
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    (t0.elapsed(), revs.into_iter().max().unwrap_or(0))
}

fn main() {
    let writes = env_or("WEFT_BENCH_WRITES", 10_000);
    let caches = env_or("WEFT_BENCH_CACHES", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        // Each phase gets its own fresh etcd, warmed up the same way, so that neither
        // runs on a bigger history (tombstones, revisions) than the other.
        let fresh = || async {
            let etcd = Etcd::start();
            let db = etcd.client().await;
            let mut warm = port(0);
            for i in 0..500 {
                warm.id = format!("warm{i}");
                db.put(&warm).await.unwrap();
            }
            (etcd, db)
        };

        // Phase 1: raw writes, nobody watching.
        let (etcd, db) = fresh().await;
        let etcd_pid = etcd.pid().expect("etcd running").to_string();
        let c0 = (cpu_seconds("self"), cpu_seconds(&etcd_pid));
        let (raw, _) = write_all(&db, writes, 1).await;
        let c1 = (cpu_seconds("self"), cpu_seconds(&etcd_pid));
        drop(db);
        drop(etcd);

        // Phase 2: the same writes with `caches` watch caches, each on its own connection
        // as separate agents would be.
        let (etcd, db) = fresh().await;
        let etcd_pid = etcd.pid().expect("etcd running").to_string();
        let mut cs = Vec::new();
        for _ in 0..caches {
            let c = etcd.client().await;
            cs.push(WatchCache::start(c).await);
        }
        let c2 = (cpu_seconds("self"), cpu_seconds(&etcd_pid));
        let t0 = Instant::now();
        let (written, last) = write_all(&db, writes, 2).await;
        for c in &cs {
            let snap = c.wait_for_revision(last).await.unwrap();
            assert_eq!(
                snap.list::<Port>().count(),
                writes + 500,
                "cache missed writes"
            );
        }
        let seen = t0.elapsed();
        let c3 = (cpu_seconds("self"), cpu_seconds(&etcd_pid));

        let ratio = seen.as_secs_f64() / raw.as_secs_f64();
        println!("watch_fanout: {writes} writes, {caches} caches, {IN_FLIGHT} writes in flight");
        println!(
            "  raw etcd writes (no watchers):        {:>8.1} ms ({:.0} writes/s)",
            raw.as_secs_f64() * 1e3,
            writes as f64 / raw.as_secs_f64()
        );
        println!(
            "  writes with {caches} caches watching:      {:>8.1} ms",
            written.as_secs_f64() * 1e3
        );
        println!(
            "  until all {caches} caches saw every write: {:>8.1} ms",
            seen.as_secs_f64() * 1e3
        );
        println!(
            "  lag of the slowest cache after the last write was acknowledged: {:.1} ms",
            (seen - written).as_secs_f64() * 1e3
        );
        println!("  ratio (all caches saw / raw writes):  {ratio:>8.2}");
        println!(
            "  CPU seconds raw phase:   bench process {:.2}, etcd {:.2}",
            c1.0 - c0.0,
            c1.1 - c0.1
        );
        println!(
            "  CPU seconds cache phase: bench process {:.2}, etcd {:.2}",
            c3.0 - c2.0,
            c3.1 - c2.1
        );
        // On a shared machine wall time depends on the neighbours; CPU time does not.
        let cpu_ratio = ((c3.0 - c2.0) + (c3.1 - c2.1)) / ((c1.0 - c0.0) + (c1.1 - c0.1));
        println!("  CPU ratio (client + etcd, cache phase / raw phase): {cpu_ratio:.2}");
    });
}
