//! CNI ADD and DEL latency through libcni's `cnitool`, side by side with the reference
//! `bridge` + `host-local` plugins (containernetworking/plugins), in the same guest boot, on
//! the same host namespace, with the same cnitool. Weft's ADD writes NSDB (etcd in the guest)
//! and adds a vport on top of what the reference does; the goal is an ADD p99 at most twice
//! the reference's.
//!
//! The two are measured interleaved, pod by pod, so that both see the same load on the machine.
//! Sizes: WEFT_BENCH_PODS (default 100).

mod hosts_support;
mod kernel_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hosts_support::{Cluster, CniOut};
use sim::Topology;

/// Bound of the benchmark, setup included; only ends a hung run.
const BENCH_SECS: u64 = 1800;

fn pods() -> usize {
    std::env::var("WEFT_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// The `q` quantile of `sorted` (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The reference plugins' network: a Linux bridge with host-local addresses, in a conflist
/// of its own, so that cnitool runs both the same way.
struct Reference {
    netconf: PathBuf,
    plugins: PathBuf,
}

impl Reference {
    fn new(dir: &Path) -> Reference {
        let plugins = PathBuf::from(std::env::var_os("WEFT_CNI_PLUGINS").expect(
            "WEFT_CNI_PLUGINS is not set: the reference plugins' directory (e2e/kernel-bench.sh sets it)",
        ));
        assert!(
            plugins.join("bridge").exists() && plugins.join("host-local").exists(),
            "no bridge or host-local plugin in {}",
            plugins.display()
        );
        let netconf = dir.join("netconf-ref");
        std::fs::create_dir_all(&netconf).expect("reference netconf dir");
        let conf = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "ref",
            "plugins": [{
                "type": "bridge",
                "bridge": "cniref0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.99.0.0/16"}]],
                    "dataDir": dir.join("host-local"),
                },
            }],
        });
        std::fs::write(netconf.join("10-ref.conflist"), conf.to_string()).expect("conflist");
        Reference { netconf, plugins }
    }

    fn cnitool(&self, host: &str, verb: &str, pod_ns: &str) -> CniOut {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", host])
            .arg(hosts_support::cnitool_bin())
            .args([verb, "ref", &format!("/run/netns/{pod_ns}")])
            .env("CNI_PATH", &self.plugins)
            .env("NETCONFPATH", &self.netconf)
            .env("CNI_IFNAME", "eth0")
            .env_remove("CNI_ARGS")
            .stdin(Stdio::null());
        CniOut::run(cmd)
    }
}

/// Times one call; fails the benchmark if it fails.
fn timed(c: &Cluster, what: &str, f: impl FnOnce() -> CniOut) -> Duration {
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    if !out.ok {
        c.fail(&format!("{what}: {out:?}"));
    }
    took
}

fn report(name: &str, mut weft: Vec<Duration>, mut reference: Vec<Duration>) {
    weft.sort();
    reference.sort();
    let (w50, w99) = (quantile(&weft, 0.50), quantile(&weft, 0.99));
    let (r50, r99) = (quantile(&reference, 0.50), quantile(&reference, 0.99));
    println!(
        "BENCH cni_{name} pods={} weft p50={} p99={} | bridge+host-local p50={} p99={} | ratio p50={:.2} p99={:.2}",
        weft.len(),
        ms(w50),
        ms(w99),
        ms(r50),
        ms(r99),
        w50.as_secs_f64() / r50.as_secs_f64(),
        w99.as_secs_f64() / r99.as_secs_f64(),
    );
}

#[test]
#[ignore = "benchmark: run by e2e/kernel-bench.sh inside the guest"]
fn bench_cni_add_and_del_latency_against_bridge_and_host_local() {
    let n = pods();
    let mut c = Cluster::start_with("bcni", 1, BENCH_SECS, &["--default-bridge", "blue"]);
    let mut t = Topology::test()
        .bridge("blue")
        .router("r1")
        .link("r1", "blue", "10.30.0.1/16");
    let b = t
        .records
        .bridges
        .iter_mut()
        .find(|x| x.id == "blue")
        .expect("bridge");
    b.subnet_v4 = Some("10.30.0.0/16".parse().unwrap());
    b.gateway_v4 = Some("10.30.0.1".parse().unwrap());
    b.mtu = 0;
    c.write_topology(&t.records);
    let reference = Reference::new(&c.dir);

    let names: Vec<String> = (0..n).map(|i| format!("pod-w{i}")).collect();
    let refs: Vec<String> = (0..n).map(|i| format!("pod-r{i}")).collect();
    let _nss: Vec<kernel_support::Netns> = names
        .iter()
        .chain(&refs)
        .map(|ns| kernel_support::Netns::new(ns))
        .collect();
    // One of each first, outside the figures: the first ADD loads the agent's pools, and the
    // reference's first ADD creates its bridge.
    let mut add = (Vec::new(), Vec::new());
    for (i, (w, r)) in names.iter().zip(&refs).enumerate() {
        let tw = timed(&c, &format!("weft ADD {w}"), || {
            c.cnitool("h1", "add", w, Some(("blue", w)))
        });
        let tr = timed(&c, &format!("reference ADD {r}"), || {
            reference.cnitool("h1", "add", r)
        });
        if i > 0 {
            add.0.push(tw);
            add.1.push(tr);
        }
    }
    let mut del = (Vec::new(), Vec::new());
    for (w, r) in names.iter().zip(&refs) {
        del.0.push(timed(&c, &format!("weft DEL {w}"), || {
            c.cnitool("h1", "del", w, None)
        }));
        del.1.push(timed(&c, &format!("reference DEL {r}"), || {
            reference.cnitool("h1", "del", r)
        }));
    }
    report("add", add.0, add.1);
    report("del", del.0, del.1);
    let (ports, bindings, leases, keys) = c.cni_records();
    assert_eq!(
        (ports, bindings, leases, keys),
        (0, 0, 0, 0),
        "the DELs left NSDB records"
    );
}
