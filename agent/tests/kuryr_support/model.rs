//! The model of the Kuryr scenarios in the guest: namespaces x, y and z with pods a, b and c
//! each (upstream's NetworkPolicy e2e model), applied with kubectl, attached through
//! weft-cni on three hosts whose agents watch the API server, with servers on ports 80 and 81
//! over TCP and UDP in every pod, and the operator running in the guest.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Kube, PodServers, Proc, Proto, probe_all, start_operator};
use crate::hosts_support::{Cluster, EtcdProc};

/// Bound of the scenario, setup included (TCG emulation is slow); only ends a hung run.
pub const SCENARIO_SECS: u64 = 2400;
/// How long a policy change may take to show in the traffic (kubectl in the guest, the
/// operator's watch and write, the agents' invalidation), before the case fails.
pub const CONVERGE: Duration = Duration::from_secs(90);

/// The pods of the model: (namespace, pod, node). Each namespace has a pod on every node.
/// The model's namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];

pub const PODS: [(&str, &str, &str); 9] = [
    ("x", "a", "h1"),
    ("x", "b", "h2"),
    ("x", "c", "h3"),
    ("y", "a", "h2"),
    ("y", "b", "h3"),
    ("y", "c", "h1"),
    ("z", "a", "h3"),
    ("z", "b", "h1"),
    ("z", "c", "h2"),
];

/// The bridge every namespace's pods attach to (the agents' --default-bridge).
pub const BRIDGE: &str = "pods";
pub const SUBNET: &str = "10.128.0.0/16";
const GATEWAY: &str = "10.128.0.1";
/// The bridge is dual-stack: pods have an IPv6 address too, and a default route to the
/// router's IPv6 address.
pub const SUBNET_V6: &str = "fd00:128::/64";
const GATEWAY_V6: &str = "fd00:128::1";

/// The cluster router on `bridge`, at its gateway address (and its IPv6 gateway address,
/// if given): what Services need, since a pod sends to a cluster IP through its gateway.
pub fn cluster_router(bridge: &str, gateway: &str, gateway_v6: Option<&str>) -> String {
    let v6 = gateway_v6
        .map(|g| format!(", ipV6: \"{g}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: VirtualRouter\nmetadata: {{name: cluster}}\n\
         spec: {{interfaces: [{{bridge: {bridge}, ip: \"{gateway}\"{v6}}}]}}\n"
    )
}

/// The namespaces, the bridge and the pods, as one manifest. Every name is quoted: YAML reads
/// a bare `y` or `n` as a boolean.
pub fn model_manifest() -> String {
    let mut m = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: VirtualBridge\nmetadata: {{name: {BRIDGE}}}\n\
         spec: {{subnet: \"{SUBNET}\", subnetV6: \"{SUBNET_V6}\"}}\n---\n{}",
        cluster_router(BRIDGE, GATEWAY, Some(GATEWAY_V6))
    );
    for ns in NAMESPACES {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\n\
             metadata: {{name: \"{ns}\", labels: {{ns: \"{ns}\"}}}}\n"
        ));
    }
    for (ns, pod, node) in PODS {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\n\
             metadata: {{name: \"{pod}\", namespace: \"{ns}\", labels: {{pod: \"{pod}\"}}}}\n\
             spec:\n  nodeName: {node}\n  automountServiceAccountToken: false\n  containers:\n\
             \x20 - name: serve\n    image: registry.k8s.io/pause:3.10\n    ports:\n"
        ));
        for port in [80, 81] {
            for proto in ["tcp", "udp"] {
                m.push_str(&format!(
                    "    - {{name: serve-{port}-{proto}, containerPort: {port}, protocol: {}}}\n",
                    proto.to_uppercase()
                ));
            }
        }
    }
    m
}

/// The pod's name in the matrix and its network namespace's suffix.
pub fn pod_key(ns: &str, pod: &str) -> String {
    format!("{ns}/{pod}")
}

pub fn netns_name(ns: &str, pod: &str) -> String {
    format!("{ns}-{pod}")
}

/// The model running: the cluster, the operator, the pods' addresses and servers.
pub struct Model {
    pub c: Cluster,
    pub kube: Kube,
    _operator: Proc,
    pub ips: BTreeMap<String, Ipv4Addr>,
    /// The pods' IPv6 addresses.
    pub ips6: BTreeMap<String, Ipv6Addr>,
    pub servers: BTreeMap<String, PodServers>,
}

/// The four weft.dev kinds, as `kubectl get` takes them.
const WEFT_KINDS: &str = "virtualbridges.weft.dev,virtualrouters.weft.dev,virtualloadbalancers.weft.dev,accesscontrollists.weft.dev";

/// The Kuryr side of a three-host cluster named `name`: the CRDs and the operator's Lease
/// namespace on the host's API server, the agents watching it (through the forwarder) with
/// `default_bridge` (an NSDB bridge id), and the operator in the guest, with `operator_args`,
/// its log in the cluster's directory.
pub fn kuryr_cluster(
    name: &str,
    default_bridge: &str,
    operator_args: &[&str],
) -> (Kube, Cluster, Proc) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("weft-{name}-"))
        .tempdir()
        .expect("temp dir")
        .keep();
    let mut kube = Kube::from_env(&dir);
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    kube.kubectl(&["apply", "-f", crds]);
    kube.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    // A CRD is Established before the API server's discovery serves its kind, and kubectl
    // maps a manifest's kinds through discovery: wait until it serves all four.
    let t0 = Instant::now();
    loop {
        let out = kube.kubectl_output(&["get", WEFT_KINDS, "-o", "name"], None);
        if out.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the API server does not serve the weft.dev kinds 60 s after their CRDs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = kube.kubectl_output(&["create", "namespace", "weft-system"], None);
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_kubeconfig = kube.agent_kubeconfig.to_str().expect("path").to_owned();
    let c = Cluster::start_with(
        name,
        3,
        SCENARIO_SECS,
        &[
            "--kubeconfig",
            &agent_kubeconfig,
            "--default-bridge",
            default_bridge,
        ],
    );
    kube.forward_to_underlay();
    let lease = format!("weft-{name}");
    let mut args = vec!["--lease-name", &lease, "--identity", "guest"];
    args.extend_from_slice(operator_args);
    let operator = start_operator(
        &kube,
        &EtcdProc::endpoint(),
        &args,
        &c.dir.join("operator.log"),
    );
    (kube, c, operator)
}

impl Model {
    pub fn start() -> Model {
        let (kube, c, operator) = kuryr_cluster("kuryr", &format!("vbr:{BRIDGE}"), &[]);
        kube.apply(&model_manifest());
        let mut m = Model {
            c,
            kube,
            _operator: operator,
            ips: BTreeMap::new(),
            ips6: BTreeMap::new(),
            servers: BTreeMap::new(),
        };
        m.wait_for_bridge();
        eprintln!("kuryr: bridge {BRIDGE} written by the operator");
        for (ns, pod, node) in PODS {
            let p = m.c.cni_add_as(&netns_name(ns, pod), node, ns, pod);
            let Some(ip6) = p.ip6 else {
                m.fail(&format!("pod {ns}/{pod} has no IPv6 address: {}", p.result));
            };
            eprintln!(
                "kuryr: pod {ns}/{pod} attached on {node} at {} and {ip6}",
                p.ip
            );
            m.ips.insert(pod_key(ns, pod), p.ip);
            m.ips6.insert(pod_key(ns, pod), ip6);
        }
        m.check_identity_reached_the_ports();
        for (ns, pod, _) in PODS {
            let ip = m.ips[&pod_key(ns, pod)];
            let servers = PodServers::start(&format!("pod-{}", netns_name(ns, pod)), ip, &[80, 81]);
            m.servers.insert(pod_key(ns, pod), servers);
        }
        m
    }

    /// Waits until the operator has written the pods' bridge.
    fn wait_for_bridge(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let id = format!("vbr:{BRIDGE}");
        while !self.c.records::<nsdb::Bridge>().iter().any(|b| b.id == id) {
            if Instant::now() > deadline {
                self.fail(&format!("the operator wrote no bridge {id}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The ADD wrote each pod's labels, its namespace's labels and its named ports on its
    /// port, in the port's one transaction: a NetworkPolicy holds from the first packet.
    fn check_identity_reached_the_ports(&self) {
        let ports = self.c.records::<nsdb::Port>();
        for (ns, pod, _) in PODS {
            let ip = IpAddr::V4(self.ips[&pod_key(ns, pod)]);
            let p = ports
                .iter()
                .find(|p| p.addresses.iter().any(|a| a.addr() == ip))
                .unwrap_or_else(|| self.fail(&format!("no port holds {ns}/{pod}'s {ip}")));
            assert_eq!(p.labels.get("pod").map(String::as_str), Some(pod), "{p:?}");
            assert_eq!(
                p.namespace_labels.get("ns").map(String::as_str),
                Some(ns),
                "{p:?}"
            );
            assert_eq!(
                p.namespace_labels
                    .get(nsdb::LABEL_NAMESPACE_NAME)
                    .map(String::as_str),
                Some(ns),
                "{p:?}"
            );
            assert_eq!(p.named_ports.len(), 4, "{p:?}");
        }
    }

    pub fn fail(&self, msg: &str) -> ! {
        let log = std::fs::read_to_string(self.c.dir.join("operator.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        self.c
            .fail(&format!("{msg}\noperator log (end):\n{}", tail.join("\n")))
    }

    /// Every pair of distinct pods probed at once on each of `on` (transport and port):
    /// reached or not, by (transport, port, from, to).
    pub fn matrix(&self, on: &[(Proto, u16)]) -> BTreeMap<Pair, bool> {
        let mut pairs = BTreeMap::new();
        for &(proto, port) in on {
            for (fns, fpod, _) in PODS {
                for (tns, tpod, _) in PODS {
                    // A pod to itself is not in the matrix (upstream ignores loopback).
                    if (fns, fpod) == (tns, tpod) {
                        continue;
                    }
                    let (from, to) = (pod_key(fns, fpod), pod_key(tns, tpod));
                    let addr = SocketAddr::from((self.ips[&to], port));
                    pairs.insert(
                        (proto, port, from, to),
                        (format!("pod-{}", netns_name(fns, fpod)), addr, proto),
                    );
                }
            }
        }
        probe_all(&pairs)
    }
}

/// One probe of a matrix: transport, port, from pod, to pod.
pub type Pair = (Proto, u16, String, String);
