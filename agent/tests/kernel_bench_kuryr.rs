//! Change latency of the Kuryr mapping, in the kernel guest: from a kubectl write to its
//! effect on the traffic between CNI-attached pods, p50 and p99, for a NetworkPolicy allowing
//! and revoking, a pod label change, and an EndpointSlice change; beside it, kubectl's own
//! time (the floor of any such figure here) and the agents' own measure, from an NSDB update
//! to the deletion of the flows it invalidates (`weft_agent_invalidation_latency_seconds`).
//! Run by e2e/kernel-bench.sh; prints `BENCH kuryr ...` lines.
//!
//! `WEFT_BENCH_KURYR_CHANGES` (default 10) changes of each kind are timed.

mod hosts_support;
mod kernel_support;
mod kuryr_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kuryr_support::model::{CONVERGE, Model, netns_name};
use kuryr_support::{Proto, probe_with};

/// How long one probe waits: a blocked pair costs this much of the figure's resolution.
const PROBE: Duration = Duration::from_millis(250);

fn changes() -> usize {
    std::env::var("WEFT_BENCH_KURYR_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Polls `from` -> `to` until it is `reachable` (or not); the time from `since` to the start
/// of the first probe that showed it.
fn until(
    m: &Model,
    from: (&str, &str),
    to: SocketAddr,
    reachable: bool,
    since: Instant,
) -> Duration {
    let ns = format!("pod-{}", netns_name(from.0, from.1));
    loop {
        let at = Instant::now();
        if probe_with(&ns, to, Proto::Tcp, PROBE) == reachable {
            return at - since;
        }
        if since.elapsed() > CONVERGE {
            m.fail(&format!(
                "{}/{} -> {to} not {} within {CONVERGE:?}",
                from.0,
                from.1,
                if reachable { "reachable" } else { "blocked" }
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn quantiles(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    (
        q(0.5).as_secs_f64() * 1000.0,
        q(0.99).as_secs_f64() * 1000.0,
    )
}

fn report(what: &str, v: &mut [Duration], kubectl: &mut [Duration]) {
    let (p50, p99) = quantiles(v);
    let (k50, k99) = quantiles(kubectl);
    println!(
        "BENCH kuryr {what}: kubectl write to traffic p50 {p50:.0} ms p99 {p99:.0} ms \
         (n={}; kubectl alone p50 {k50:.0} ms p99 {k99:.0} ms; after kubectl returned p50 {:.0} ms)",
        v.len(),
        p50 - k50
    );
}

/// The agents' `weft_agent_invalidation_latency_seconds` histogram, merged over the hosts:
/// p50 and p99 as the upper bounds of their buckets, in ms, and the count.
fn invalidation_latency(m: &Model) -> (f64, f64, u64) {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for h in ["h1", "h2", "h3"] {
        let (_, body) = m.c.host(h).http_get("/metrics").expect("agent metrics");
        for line in body.lines() {
            let Some(rest) =
                line.strip_prefix("weft_agent_invalidation_latency_seconds_bucket{le=\"")
            else {
                continue;
            };
            let (le, n) = rest.split_once("\"} ").expect("bucket line");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le")
            };
            let n: u64 = n.trim().parse().expect("count");
            match buckets.iter_mut().find(|b| b.0 == le) {
                Some(b) => b.1 += n,
                None => buckets.push((le, n)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    let q = |p: f64| {
        let want = (total as f64 * p).ceil() as u64;
        buckets
            .iter()
            .find(|b| b.1 >= want)
            .map_or(f64::NAN, |b| b.0 * 1000.0)
    };
    (q(0.5), q(0.99), total)
}

const DENY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: deny-b, namespace: \"x\"}\n\
    spec: {podSelector: {matchLabels: {pod: \"b\"}}, policyTypes: [Ingress]}\n";
const ALLOW_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: allow-a, namespace: \"x\"}\n\
    spec:\n  podSelector: {matchLabels: {pod: \"b\"}}\n  policyTypes: [Ingress]\n\
    \x20 ingress: [{from: [{podSelector: {matchLabels: {pod: \"a\"}}}], ports: [{protocol: TCP, port: 80}]}]\n";

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 20);

/// Service x/lb (no selector) with one endpoint, `pod` of namespace x.
fn service(m: &Model, pod: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: \"x\"}}\n\
         spec: {{clusterIP: {VIP}, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: lb-1, namespace: \"x\", labels: {{kubernetes.io/service-name: lb}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\n\
         endpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
        m.ips[&format!("x/{pod}")]
    )
}

#[test]
#[ignore = "a benchmark in the kernel guest with a control plane: run by e2e/kernel-bench.sh"]
fn bench_kuryr_change_latency() {
    let m = Model::start();
    let n = changes();
    let b80 = SocketAddr::from((m.ips["x/b"], 80));
    m.kube.apply(DENY_B);
    until(&m, ("x", "a"), b80, false, Instant::now());
    let timed = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        (t, t.elapsed())
    };

    // A NetworkPolicy allowing x/a into the isolated x/b, then deleted.
    let (mut allow, mut revoke, mut k_allow, mut k_revoke) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let (t, k) = timed(&|| m.kube.apply(ALLOW_A));
        k_allow.push(k);
        allow.push(until(&m, ("x", "a"), b80, true, t));
        let (t, k) = timed(&|| m.kube.delete(ALLOW_A));
        k_revoke.push(k);
        revoke.push(until(&m, ("x", "a"), b80, false, t));
    }
    report("NetworkPolicy allow", &mut allow, &mut k_allow);
    report("NetworkPolicy revoke", &mut revoke, &mut k_revoke);

    // A pod label change: x/c becomes `pod: a`, which the policy admits, and back.
    m.kube.apply(ALLOW_A);
    until(&m, ("x", "a"), b80, true, Instant::now());
    let (mut gain, mut lose, mut k_gain, mut k_lose) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        let (t, k) = timed(&|| {
            m.kube
                .kubectl(&["label", "--overwrite", "pod", "-n", "x", "c", "pod=a"]);
        });
        k_gain.push(k);
        gain.push(until(&m, ("x", "c"), b80, true, t));
        let (t, k) = timed(&|| {
            m.kube
                .kubectl(&["label", "--overwrite", "pod", "-n", "x", "c", "pod=c"]);
        });
        k_lose.push(k);
        lose.push(until(&m, ("x", "c"), b80, false, t));
    }
    report("pod label into a policy", &mut gain, &mut k_gain);
    report("pod label out of a policy", &mut lose, &mut k_lose);
    m.kube.delete(ALLOW_A);
    m.kube.delete(DENY_B);

    // An EndpointSlice change: the Service's one endpoint moves from x/b to x/c; timed until
    // a new connection to the VIP lands on the new endpoint.
    let vip = SocketAddr::from((VIP, 80));
    m.kube.apply(&service(&m, "b"));
    until(&m, ("x", "a"), vip, true, Instant::now());
    let (mut moved, mut k_moved) = (vec![], vec![]);
    for i in 0..n {
        let to = if i % 2 == 0 { "c" } else { "b" };
        let (t, k) = timed(&|| m.kube.apply(&service(&m, to)));
        k_moved.push(k);
        let server = &m.servers[&format!("x/{to}")];
        loop {
            let before = server.accepted();
            let at = Instant::now();
            let _ = probe_with(
                &format!("pod-{}", netns_name("x", "a")),
                vip,
                Proto::Tcp,
                PROBE,
            );
            std::thread::sleep(Duration::from_millis(20));
            if server.accepted() > before {
                moved.push(at - t);
                break;
            }
            if t.elapsed() > CONVERGE {
                m.fail(&format!(
                    "the Service did not move to x/{to} within {CONVERGE:?}"
                ));
            }
        }
    }
    report("EndpointSlice endpoint moved", &mut moved, &mut k_moved);
    m.kube.delete(&service(&m, "b"));

    let (p50, p99, count) = invalidation_latency(&m);
    println!(
        "BENCH kuryr agents' NSDB update to flow deletion: p50 <= {p50:.1} ms p99 <= {p99:.1} ms \
         (bucket upper bounds, {count} invalidations over the 3 agents)"
    );
}
