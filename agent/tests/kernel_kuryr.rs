//! The Kuryr mapping end to end in the kernel guest: Namespaces, Pods and Services are applied
//! with kubectl, and NetworkPolicies with a kube client, to the real kube-apiserver that
//! e2e/kernel-tests.sh runs on the host;
//! the operator (in the guest) writes NSDB; three agents, each watching its node's pods,
//! attach the pods through weft-cni as kubelet would (cnitool, with the pods' Kubernetes
//! names); and traffic between the pods' network namespaces is probed over TCP and UDP.
//!
//! The NetworkPolicy cases are those of the upstream e2e suite (kubernetes
//! `test/e2e/network/netpol`), ported to e2e/netpol/cases.yaml: namespaces x, y and z with
//! pods a, b and c each, serving ports 80 and 81 over TCP and UDP, and each case a set of
//! policies with its expected reachability matrix.

mod hosts_support;
mod kernel_support;
mod kuryr_support;

#[path = "../../e2e/netpol/cases.rs"]
mod cases;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use kuryr_support::model::{
    CONVERGE, Model, NAMESPACES, PODS, Pair, kuryr_cluster, netns_name, pod_key,
};
use kuryr_support::{KubeClient, PROBE_TIMEOUT, PodServers, Proto, answered, probe_all};

/// The differences between a probed and an expected matrix, as lines.
fn differences(got: &BTreeMap<Pair, bool>, want: &BTreeMap<Pair, bool>) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|((proto, port, f, t), v)| {
            format!(
                "{}/{port} {f} -> {t}: expected {}, got {}",
                proto.as_str(),
                if *v { "reachable" } else { "blocked" },
                if *v { "blocked" } else { "reachable" }
            )
        })
        .collect()
}

/// A label a case adds: the namespace of a Pod (`None` for a Namespace), its name, the key
/// and the value.
type ExtraLabel = (Option<String>, String, String, String);

/// The labels a case adds to the model's pods and namespaces: each label that differs from
/// the model's own.
fn extra_labels(case: &cases::Case) -> Vec<ExtraLabel> {
    let mut out = Vec::new();
    for (ns, pod, _) in PODS {
        let base = BTreeMap::from([("pod".to_owned(), pod.to_owned())]);
        for (k, v) in case.labels_of_pod(&pod_key(ns, pod)) {
            if base.get(&k) != Some(&v) {
                out.push((Some(ns.into()), pod.into(), k, v));
            }
        }
    }
    for ns in NAMESPACES {
        let base = BTreeMap::from([
            ("ns".to_owned(), ns.to_owned()),
            (nsdb::LABEL_NAMESPACE_NAME.to_owned(), ns.to_owned()),
        ]);
        for (k, v) in case.labels_of_namespace(ns) {
            if base.get(&k) != Some(&v) {
                out.push((None, ns.into(), k, v));
            }
        }
    }
    out
}

/// Each label set (`set`), or removed.
fn relabel(api: &KubeClient, labels: &[ExtraLabel], set: bool) {
    for (ns, name, k, v) in labels {
        api.label(ns.as_deref(), name, k, set.then_some(v.as_str()));
    }
}

fn proto(p: cases::Proto) -> Proto {
    match p {
        cases::Proto::Tcp => Proto::Tcp,
        cases::Proto::Udp => Proto::Udp,
        cases::Proto::Sctp => Proto::Sctp,
    }
}

/// The label of a case's policies, by which the next case's apply prunes them.
const CASE_LABEL: &str = "weft.dev/netpol-case";

/// The NetworkPolicy truth tables: every case of e2e/netpol/cases.yaml, its labels set and
/// its policies applied through the API server, until the probed matrix matches (bounded),
/// then undone. One client makes every change: 73 cases of kubectl processes would spend
/// most of the test starting kubectl under the guest's emulation.
fn network_policies(m: &Model) {
    let api = m.kube.client();
    let all = cases::load().unwrap_or_else(|e| panic!("e2e/netpol/cases.yaml: {e}"));
    let pod_ips: BTreeMap<String, IpAddr> = m
        .ips
        .iter()
        .map(|(k, v)| (k.clone(), IpAddr::V4(*v)))
        .collect();
    let mut report = Vec::new();
    for case in &all {
        let policies = case
            .policies(&pod_ips)
            .unwrap_or_else(|e| panic!("{}: {e}", case.id()));
        let labels = extra_labels(case);
        let changing = Instant::now();
        relabel(&api, &labels, true);
        // The case's policies, and the previous case's pruned.
        api.apply_labelled(policies, CASE_LABEL, &NAMESPACES);
        let started = Instant::now();
        let change = started - changing;
        let on: Vec<(Proto, u16)> = case
            .probed()
            .into_iter()
            .map(|(p, port)| (proto(p), port))
            .collect();
        let mut want = BTreeMap::new();
        for (p, port) in case.probed() {
            for ((from, to), v) in case.expected(p, port).expect("a probed pair") {
                want.insert((proto(p), port, from, to), v);
            }
        }
        let deadline = Instant::now() + CONVERGE;
        let mut rounds = 0;
        loop {
            rounds += 1;
            let diff = differences(&m.matrix(&on), &want);
            if diff.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                m.fail(&format!(
                    "case {:?}: the matrix differs after {CONVERGE:?}:\n  {}",
                    case.id(),
                    diff.join("\n  ")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("kuryr: case {} matched", case.id());
        report.push(format!(
            "{} (changed in {change:.1?}, matched in {rounds} rounds, {:.1?})",
            case.id(),
            started.elapsed()
        ));
        relabel(&api, &labels, false);
    }
    api.apply_labelled(Vec::<NetworkPolicy>::new(), CASE_LABEL, &NAMESPACES);
    eprintln!(
        "{} NetworkPolicy cases matched:\n  {}",
        all.len(),
        report.join("\n  ")
    );
}

/// The Service's cluster IP (the API server's range is 10.96.0.0/16).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 10);

/// A Service without a selector, `x/web`, and its EndpointSlice: x/b (on h2) and y/c (on h1),
/// the first `ready` as given.
fn service_manifest(m: &Model, b_ready: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: \"x\"}}\n\
         spec:\n  clusterIP: {VIP}\n  ports:\n  - {{name: http, port: 80, protocol: TCP}}\n\
         \x20 - {{name: dns, port: 80, protocol: UDP}}\n\
         \x20 - {{name: assoc, port: 80, protocol: SCTP}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: \"x\", labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports:\n- {{name: http, port: 80, protocol: TCP}}\n\
         - {{name: dns, port: 80, protocol: UDP}}\n- {{name: assoc, port: 80, protocol: SCTP}}\n\
         endpoints:\n\
         - {{addresses: [\"{}\"], conditions: {{ready: {b_ready}}}}}\n\
         - {{addresses: [\"{}\"], conditions: {{ready: true}}}}\n",
        m.ips["x/b"], m.ips["y/c"],
    )
}

/// `n` new TCP connections from x/a to the VIP; the accepts each endpoint saw meanwhile.
fn connect_many(m: &Model, n: usize) -> (u64, u64) {
    let (b0, c0) = (m.servers["x/b"].accepted(), m.servers["y/c"].accepted());
    let to = BTreeMap::from_iter((0..n).map(|i| {
        (
            i,
            (
                format!("pod-{}", netns_name("x", "a")),
                SocketAddr::from((VIP, 80)),
                Proto::Tcp,
            ),
        )
    }));
    let (reached, slow) = answered(&to);
    assert_eq!(reached, n, "every connection to the VIP is answered");
    if slow > 0 {
        eprintln!("kuryr: {slow} of {n} connections to the VIP answered after {PROBE_TIMEOUT:?}");
    }
    // The servers count after they accept; give the last ones a moment.
    std::thread::sleep(Duration::from_millis(500));
    (
        m.servers["x/b"].accepted() - b0,
        m.servers["y/c"].accepted() - c0,
    )
}

/// Hairpin: x/b, an endpoint of the Service, reaches the Service. Every TCP connection is
/// answered, some by x/b itself, and every UDP echo comes back from the VIP, also those x/b
/// answered itself.
fn hairpin(m: &Model) {
    let me = format!("pod-{}", netns_name("x", "b"));
    let vip = SocketAddr::from((VIP, 80));
    let (b0, c0) = (m.servers["x/b"].accepted(), m.servers["y/c"].accepted());
    let each = |proto| {
        let to = BTreeMap::from_iter((0..20).map(|i| (i, (me.clone(), vip, proto))));
        answered(&to)
    };
    let ((tcp, tcp_slow), (udp, udp_slow)) = (each(Proto::Tcp), each(Proto::Udp));
    std::thread::sleep(Duration::from_millis(500));
    let (own, other) = (
        m.servers["x/b"].accepted() - b0,
        m.servers["y/c"].accepted() - c0,
    );
    eprintln!(
        "kuryr: hairpin from x/b to {vip}: TCP {tcp}/20 ({own} to x/b itself, {other} to y/c), UDP {udp}/20 echoed from the VIP; answered after {PROBE_TIMEOUT:?}: TCP {tcp_slow}, UDP {udp_slow}"
    );
    if tcp != 20 || udp != 20 || own == 0 {
        m.fail(&format!(
            "hairpin: x/b reaching its own Service at {vip}: TCP {tcp}/20 answered ({own} by \
             x/b itself), UDP {udp}/20 echoed from the VIP"
        ));
    }
}

/// A ClusterIP Service, applied with kubectl with its EndpointSlice: the client reaches it
/// over TCP, UDP and SCTP and sees only the VIP (the UDP echo comes from it), connections spread
/// over endpoints on two hosts, an endpoint reaches its own Service (hairpin), and an
/// endpoint that turns not ready gets no new ones.
fn services(m: &Model) {
    m.kube.apply(&service_manifest(m, true));
    let client = format!("pod-{}", netns_name("x", "a"));
    let deadline = Instant::now() + CONVERGE;
    let vip = SocketAddr::from((VIP, 80));
    while !(kuryr_support::probe(&client, vip, Proto::Tcp)
        && kuryr_support::probe(&client, vip, Proto::Udp)
        && kuryr_support::probe(&client, vip, Proto::Sctp))
    {
        if Instant::now() > deadline {
            m.fail(&format!(
                "x/a does not reach the Service at {vip} over TCP, UDP and SCTP"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (b, c) = connect_many(m, 40);
    eprintln!("kuryr: 40 connections to {vip}: {b} to x/b (h2), {c} to y/c (h1)");
    assert!(
        b > 0 && c > 0,
        "spread over both endpoints: x/b {b}, y/c {c}"
    );
    hairpin(m);

    // x/b not ready: new connections go to y/c only (once the change reaches the agents).
    m.kube.apply(&service_manifest(m, false));
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (b, c) = connect_many(m, 20);
        if b == 0 {
            assert_eq!(c, 20, "every connection answered by y/c");
            break;
        }
        if Instant::now() > deadline {
            m.fail(&format!(
                "x/b, not ready, still gets new connections: {b} of 20 after {CONVERGE:?}"
            ));
        }
    }
    m.kube.delete(&service_manifest(m, false));
}

/// The dual-stack Service's cluster IPs (the API server's ranges are 10.96.0.0/16 and
/// fd00:96::/112).
const VIP_DUAL: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 20);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);

/// A dual-stack Service without a selector, `x/web6`, with an EndpointSlice per family: x/b
/// (on h2) and y/c (on h1).
fn dual_stack_manifest(m: &Model) -> String {
    let ports = "- {name: http, port: 80, protocol: TCP}\n- {name: dns, port: 80, protocol: UDP}\n";
    let slice = |family: &str, b: IpAddr, c: IpAddr| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web6-{}, namespace: \"x\", \
             labels: {{kubernetes.io/service-name: web6}}}}\n\
             addressType: {family}\nports:\n{ports}endpoints:\n\
             - {{addresses: [\"{b}\"], conditions: {{ready: true}}}}\n\
             - {{addresses: [\"{c}\"], conditions: {{ready: true}}}}\n",
            family.to_lowercase()
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: \"x\"}}\n\
         spec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n\
         \x20 clusterIP: \"{VIP_DUAL}\"\n  clusterIPs: [\"{VIP_DUAL}\", \"{VIP6}\"]\n  ports:\n{}{}{}",
        ports.replace("- ", "  - "),
        slice("IPv4", m.ips["x/b"].into(), m.ips["y/c"].into()),
        slice("IPv6", m.ips6["x/b"].into(), m.ips6["y/c"].into()),
    )
}

/// The runtime's CHECK of a dual-stack pod verifies both default routes: it passes as ADD
/// left the pod, and fails naming the IPv6 gateway once that route is gone.
fn dual_stack_check(m: &Model) {
    let (ns, pod, node) = ("x", "a", "h1");
    let netns = format!("pod-{}", netns_name(ns, pod));
    let out = m.c.cnitool(node, "check", &netns, Some((ns, pod)));
    assert!(out.ok, "CHECK of dual-stack {ns}/{pod}: {out:?}");
    kernel_support::sh(&format!("ip -n {netns} -6 route del default"));
    let out = m.c.cnitool(node, "check", &netns, Some((ns, pod)));
    kernel_support::sh(&format!(
        "ip -n {netns} -6 route add default via fd00:128::1 dev eth0"
    ));
    assert!(
        !out.ok && out.stderr.contains("no default route via fd00:128::1"),
        "CHECK without the IPv6 default route: {out:?}"
    );
}

/// A dual-stack Service over the pods' IPv6 addresses: x/a reaches its IPv6 cluster IP over
/// TCP and UDP, connections spread over the endpoints on two hosts with the VIP as the
/// client's peer, and x/b, an endpoint, reaches it too (hairpin), answered by itself and by
/// y/c, always from the VIP.
fn dual_stack_service(m: &Model) {
    dual_stack_check(m);
    let servers: BTreeMap<&str, PodServers> = ["x/b", "y/c"]
        .into_iter()
        .map(|k| {
            let (ns, pod) = k.split_once('/').expect("ns/pod");
            let s = PodServers::start(&format!("pod-{}", netns_name(ns, pod)), m.ips6[k], &[80]);
            (k, s)
        })
        .collect();
    m.kube.apply(&dual_stack_manifest(m));
    let vip = SocketAddr::from((VIP6, 80));
    let client = format!("pod-{}", netns_name("x", "a"));
    let deadline = Instant::now() + CONVERGE;
    while !(kuryr_support::probe(&client, vip, Proto::Tcp)
        && kuryr_support::probe(&client, vip, Proto::Udp))
    {
        if Instant::now() > deadline {
            m.fail(&format!(
                "x/a does not reach the dual-stack Service at {vip}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // (answered, served by x/b, served by y/c) of `n` probes from `from` over `proto`.
    let run = |from: &str, proto: Proto, n: usize| {
        let count = |k: &str| match proto {
            Proto::Udp => servers[k].echoed(),
            _ => servers[k].accepted(),
        };
        let (b0, c0) = (count("x/b"), count("y/c"));
        let to = BTreeMap::from_iter((0..n).map(|i| (i, (from.to_owned(), vip, proto))));
        let (answered, slow) = answered(&to);
        // The servers count after they answer; give the last ones a moment.
        std::thread::sleep(Duration::from_millis(500));
        (answered, slow, count("x/b") - b0, count("y/c") - c0)
    };
    let me = format!("pod-{}", netns_name("x", "b"));
    for (from, who, proto, n) in [
        (&client, "x/a", Proto::Tcp, 40),
        (&client, "x/a", Proto::Udp, 20),
        (&me, "x/b (hairpin)", Proto::Tcp, 20),
        (&me, "x/b (hairpin)", Proto::Udp, 20),
    ] {
        let (answered, slow, b, c) = run(from, proto, n);
        eprintln!(
            "kuryr: {n} {} connections from {who} to {vip}: {answered} answered from the VIP ({slow} after {PROBE_TIMEOUT:?}), {b} by x/b (h2), {c} by y/c (h1)",
            proto.as_str()
        );
        if answered != n || b == 0 || c == 0 {
            m.fail(&format!(
                "dual-stack Service at {vip}, {} from {who}: {answered} of {n} answered from \
                 the VIP, {b} by x/b and {c} by y/c; every one must be answered, by both",
                proto.as_str()
            ));
        }
    }
    m.kube.delete(&dual_stack_manifest(m));
}

#[test]
#[ignore = "needs the kernel datapath and a control plane: run by e2e/kernel-tests.sh"]
fn kuryr_policies_and_services_over_cni_pods() {
    let m = Model::start();
    dual_stack_service(&m);
    network_policies(&m);
    services(&m);
}

/// The pool the shop scenario's operator carves namespace networks from.
const SHOP_POOL: &str = "10.130.0.0/16";

/// The pods of examples/kubernetes/shop.yaml and the node each is attached on.
const SHOP: [(&str, &str); 5] = [
    ("web-0", "h1"),
    ("web-1", "h2"),
    ("web-2", "h3"),
    ("client", "h1"),
    ("visitor", "h2"),
];

/// The EndpointSlice of Service shop/web, as kube-controller-manager's EndpointSlice
/// controller would write it for the web pods (no controller manager runs here).
fn shop_slice(ips: &BTreeMap<&str, Ipv4Addr>) -> String {
    let mut s = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-x1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for pod in ["web-0", "web-1", "web-2"] {
        s.push_str(&format!(
            "- {{addresses: [\"{}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, namespace: shop, name: {pod}}}}}\n",
            ips[pod]
        ));
    }
    s
}

/// examples/kubernetes/shop.yaml, applied with kubectl as it is, on three hosts whose
/// operator gives each namespace a network of its own (its pods' addresses come from it): the
/// client
/// reaches the web Service and each web pod; the visitor reaches neither, since the
/// NetworkPolicy admits only clients; the web pods, whose egress no policy isolates, reach
/// the visitor. This is what `make demo` shows.
#[test]
#[ignore = "needs the kernel datapath and a control plane: run by e2e/kernel-tests.sh"]
fn kuryr_shop_example_works_end_to_end() {
    // Namespaces are networks here: shop gets a bridge of its own, with a subnet from the
    // pool, on the cluster router, through which its pods reach Services. The agents'
    // default bridge (for namespaces without one) is the router's first interface.
    let (kube, mut c, _operator) = kuryr_cluster(
        "shop",
        "vbr:fallback",
        &[
            "--namespace-mode",
            "per-namespace",
            "--namespace-pool",
            SHOP_POOL,
            "--namespace-prefix-len",
            "24",
            "--cluster-router",
            "cluster",
        ],
    );
    kube.apply(&format!(
        "apiVersion: weft.dev/v1alpha1\nkind: VirtualBridge\nmetadata: {{name: fallback}}\n\
         spec: {{subnet: \"10.129.0.0/24\"}}\n---\n{}",
        kuryr_support::model::cluster_router("fallback", "10.129.0.1", None)
    ));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/kubernetes");
    println!("$ kubectl apply -f examples/kubernetes/");
    print!(
        "{}",
        kube.kubectl(&["apply", "--validate=false", "-f", example])
    );
    // The namespace's own network, listed for the CNI ADD to find.
    let deadline = Instant::now() + Duration::from_secs(120);
    let subnet = loop {
        if let Some(b) = c
            .records::<nsdb::Bridge>()
            .into_iter()
            .find(|b| b.namespaces.iter().any(|n| n == "shop"))
        {
            assert_eq!(b.id, "kns:shop", "{b:?}");
            break b.subnet_v4.expect("an IPv4 subnet");
        }
        assert!(
            Instant::now() < deadline,
            "the operator gave namespace shop no network"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let pool: ipnet::Ipv4Net = SHOP_POOL.parse().expect("pool");
    assert!(pool.contains(&subnet), "{subnet} is not from {pool}");
    println!("namespace shop: network kns:shop, {subnet} from the pool {pool}");
    // The policy's chain is in NSDB before any web pod is attached: from their first
    // packet on, the web pods are isolated.
    let deadline = Instant::now() + CONVERGE;
    while !c
        .records::<nsdb::Chain>()
        .iter()
        .any(|ch| ch.id == "knp:shop:web:ingress")
    {
        assert!(
            Instant::now() < deadline,
            "the operator wrote no chain for NetworkPolicy shop/web"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut ips = BTreeMap::new();
    let mut servers = Vec::new();
    for (pod, node) in SHOP {
        let p = c.cni_add_as(&format!("shop-{pod}"), node, "shop", pod);
        assert!(
            subnet.contains(&p.ip),
            "{pod} at {} is not in {subnet}",
            p.ip
        );
        println!(
            "pod shop/{pod}: attached on {node} through cnitool and weft-cni, {}",
            p.ip
        );
        servers.push(PodServers::start(&format!("pod-shop-{pod}"), p.ip, &[8080]));
        ips.insert(pod, p.ip);
    }
    kube.apply(&shop_slice(&ips));
    let vip = SocketAddr::from((Ipv4Addr::new(10, 96, 80, 80), 80));
    let mut checks = BTreeMap::new();
    let mut add = |from: &str, to: &str, addr: SocketAddr, want: bool| {
        checks.insert(
            (from.to_owned(), to.to_owned()),
            (format!("pod-shop-{from}"), addr, want),
        );
    };
    add("client", "Service web", vip, true);
    add("visitor", "Service web", vip, false);
    for web in ["web-0", "web-1", "web-2"] {
        let addr = SocketAddr::from((ips[web], 8080));
        add("client", web, addr, true);
        add("visitor", web, addr, false);
        add(
            web,
            "visitor",
            SocketAddr::from((ips["visitor"], 8080)),
            true,
        );
    }
    let deadline = Instant::now() + CONVERGE;
    let mut first = true;
    loop {
        let pairs: BTreeMap<_, _> = checks
            .iter()
            .map(|(k, (ns, addr, _))| (k.clone(), (ns.clone(), *addr, Proto::Tcp)))
            .collect();
        let got = probe_all(&pairs);
        let wrong: Vec<String> = checks
            .iter()
            .filter(|(k, (_, _, want))| got[*k] != *want)
            .map(|((f, t), (_, a, want))| format!("{f} -> {t} ({a}): expected {want}"))
            .collect();
        // The first connections of all, right after the ADDs: none the policy refuses gets
        // through (an allowed one may still be setting up its flows).
        let leaked: Vec<&String> = wrong
            .iter()
            .filter(|w| w.ends_with("expected false"))
            .collect();
        if first && !leaked.is_empty() {
            c.fail(&format!(
                "denied traffic passed right after ADD: {leaked:?}"
            ));
        }
        first = false;
        if wrong.is_empty() {
            println!("TCP connections, as the example's NetworkPolicy and Service say:");
            for ((f, t), (_, a, want)) in &checks {
                println!(
                    "  {f:>8} -> {t:<12} {a:<18} {}",
                    if *want {
                        "connected"
                    } else {
                        "refused by policy"
                    }
                );
            }
            break;
        }
        if Instant::now() > deadline {
            c.fail(&format!("after {CONVERGE:?}:\n  {}", wrong.join("\n  ")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    kube.kubectl(&["delete", "namespace", "shop", "--wait=false"]);
}
