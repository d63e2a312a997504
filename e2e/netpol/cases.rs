//! The NetworkPolicy conformance cases of `e2e/netpol/cases.yaml`: the model cluster they
//! run in, their policies (with pod addresses filled in) and the reachability each expects.
//!
//! Tests of different crates include this file as a module
//! (`#[path = "<relative path>/e2e/netpol/cases.rs"] mod cases;`); it needs only `serde`,
//! `serde-saphyr`, `k8s-openapi` and `std`. The format is described in `e2e/netpol/README.md`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;

/// The text of `cases.yaml`.
pub const CASES_YAML: &str = include_str!("cases.yaml");

/// The model's namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];

/// The model's pods of each namespace.
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];

/// The ports every pod serves, each over every protocol of [`SERVED_PROTOCOLS`].
pub const SERVED_PORTS: [u16; 2] = [80, 81];

/// The protocols every pod serves.
pub const SERVED_PROTOCOLS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

/// The namespace label the API server puts on every namespace.
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// A protocol a case probes or a policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            "SCTP" => Ok(Proto::Sctp),
            _ => Err(format!("{s:?} is not TCP, UDP or SCTP")),
        }
    }
}

/// Every pod of the model, `"x/a"` .. `"z/c"`.
pub fn pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| POD_NAMES.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// The named container ports of every pod: `serve-<port>-<protocol>` (`serve-80-tcp`).
pub fn named_ports() -> Vec<(String, Proto, u16)> {
    SERVED_PORTS
        .iter()
        .flat_map(|port| {
            SERVED_PROTOCOLS.iter().map(move |proto| {
                let name = format!("serve-{port}-{}", proto.as_str().to_lowercase());
                (name, *proto, *port)
            })
        })
        .collect()
}

/// Every case of `cases.yaml`, checked.
pub fn load() -> Result<Vec<Case>, String> {
    parse(CASES_YAML)
}

/// The cases of a `cases.yaml` text, checked: unique ids, known pods and namespaces in
/// expectations and labels, policies in the model's namespaces, each probe listed once.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    let file: RawFile = serde_saphyr::from_str(text).map_err(|e| format!("cases: {e}"))?;
    let mut ids = BTreeSet::new();
    let mut cases = Vec::with_capacity(file.cases.len());
    for raw in file.cases {
        let case = Case::from_raw(raw)?;
        if !ids.insert(case.id()) {
            return Err(format!("case {:?} is listed twice", case.id()));
        }
        cases.push(case);
    }
    Ok(cases)
}

/// Where a case comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A test of Kubernetes' `test/e2e/network/netpol/network_policy.go`; the name is its text.
    #[default]
    Upstream,
    /// Weft's own.
    Weft,
}

/// Pods named by an expectation: a namespace and a pod name, `None` for any (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPattern {
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl PodPattern {
    /// Whether the pattern names the pod `"ns/name"`.
    pub fn matches(&self, pod: &str) -> bool {
        let (ns, name) = pod.split_once('/').unwrap_or((pod, ""));
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.pod.as_deref().is_none_or(|p| p == name)
    }
}

impl FromStr for PodPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let any = |part: &str| (part != "*").then(|| part.to_owned());
        let (namespace, pod) = match s.split_once('/') {
            None if s == "*" => (None, None),
            None => return Err(format!("{s:?} is not *, ns/pod, ns/*, */pod or */*")),
            Some((ns, pod)) => (any(ns), any(pod)),
        };
        if let Some(ns) = namespace.as_deref().filter(|ns| !NAMESPACES.contains(ns)) {
            return Err(format!("{s:?}: no namespace {ns:?} in the model"));
        }
        if let Some(pod) = pod.as_deref().filter(|pod| !POD_NAMES.contains(pod)) {
            return Err(format!("{s:?}: no pod {pod:?} in the model"));
        }
        Ok(PodPattern { namespace, pod })
    }
}

/// One line of a probe's `expect`: `allow|deny <from> -> <to>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub allow: bool,
    pub from: PodPattern,
    pub to: PodPattern,
}

impl FromStr for Expectation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not `allow|deny <from> -> <to>`");
        let words: Vec<&str> = s.split_whitespace().collect();
        let [verdict, from, "->", to] = words.as_slice() else {
            return Err(bad());
        };
        let allow = match *verdict {
            "allow" => true,
            "deny" => false,
            _ => return Err(bad()),
        };
        Ok(Expectation {
            allow,
            from: from.parse()?,
            to: to.parse()?,
        })
    }
}

/// The reachability a case expects for some protocol/port pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The protocol/port pairs probed.
    pub on: Vec<(Proto, u16)>,
    /// The verdict of every pair of pods before `expect`.
    pub default: bool,
    /// Overrides, applied in order.
    pub expect: Vec<Expectation>,
}

/// One case: policies in the model cluster and the reachability they give.
#[derive(Debug, Clone)]
pub struct Case {
    /// The upstream test's text (context and `It`), or Weft's own name.
    pub name: String,
    /// Which state of a multi-step upstream test this is.
    pub step: Option<String>,
    pub origin: Origin,
    /// Labels added to the model's pods (`"x/a"`) before the policies apply.
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Labels added to the model's namespaces (`"y"`).
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The policies, placeholders unexpanded.
    pub policies: Vec<NetworkPolicy>,
    pub probes: Vec<Probe>,
}

impl Case {
    /// The unique id: the name, and the step in brackets.
    pub fn id(&self) -> String {
        match &self.step {
            Some(step) => format!("{} [{step}]", self.name),
            None => self.name.clone(),
        }
    }

    /// The labels of a model pod (`"x/a"`) in this case: `pod: <name>` and the case's own.
    pub fn labels_of_pod(&self, pod: &str) -> BTreeMap<String, String> {
        let name = pod.split_once('/').map_or(pod, |(_, p)| p);
        let mut labels = BTreeMap::from([("pod".to_owned(), name.to_owned())]);
        if let Some(extra) = self.pod_labels.get(pod) {
            labels.extend(extra.clone());
        }
        labels
    }

    /// The labels of a model namespace in this case: `ns: <name>`, the API server's
    /// `kubernetes.io/metadata.name`, and the case's own.
    pub fn labels_of_namespace(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("ns".to_owned(), ns.to_owned()),
            (LABEL_NAMESPACE_NAME.to_owned(), ns.to_owned()),
        ]);
        if let Some(extra) = self.namespace_labels.get(ns) {
            labels.extend(extra.clone());
        }
        labels
    }

    /// The protocol/port pairs the case makes claims about.
    pub fn probed(&self) -> Vec<(Proto, u16)> {
        self.probes
            .iter()
            .flat_map(|p| p.on.iter().copied())
            .collect()
    }

    /// The expected verdict of every ordered pair of distinct pods on `proto`/`port`, or
    /// `None` when the case does not probe that pair. A pod to itself is left out: upstream
    /// ignores loopback (`ignoreLoopback`, kubernetes/kubernetes#95879), its outcome being
    /// left to the implementation.
    pub fn expected(&self, proto: Proto, port: u16) -> Option<BTreeMap<(String, String), bool>> {
        let probe = self.probes.iter().find(|p| p.on.contains(&(proto, port)))?;
        let pods = pods();
        let mut out = BTreeMap::new();
        for from in &pods {
            for to in &pods {
                if from == to {
                    continue;
                }
                let mut verdict = probe.default;
                for e in &probe.expect {
                    if e.from.matches(from) && e.to.matches(to) {
                        verdict = e.allow;
                    }
                }
                out.insert((from.clone(), to.clone()), verdict);
            }
        }
        Some(out)
    }

    /// The policies with the placeholders of their `ipBlock`s filled in from `ips` (pod
    /// `"x/a"` -> its address).
    pub fn policies(&self, ips: &BTreeMap<String, IpAddr>) -> Result<Vec<NetworkPolicy>, String> {
        let mut out = self.policies.clone();
        for np in &mut out {
            let spec = np.spec.iter_mut();
            let peers = spec.flat_map(|s| {
                let ingress = s
                    .ingress
                    .iter_mut()
                    .flatten()
                    .flat_map(|r| r.from.iter_mut().flatten());
                let egress = s
                    .egress
                    .iter_mut()
                    .flatten()
                    .flat_map(|r| r.to.iter_mut().flatten());
                ingress.chain(egress)
            });
            for peer in peers {
                if let Some(block) = &mut peer.ip_block {
                    block.cidr = expand(&block.cidr, ips)?;
                    for e in block.except.iter_mut().flatten() {
                        *e = expand(e, ips)?;
                    }
                }
            }
        }
        Ok(out)
    }

    fn from_raw(raw: RawCase) -> Result<Case, String> {
        let id = match &raw.step {
            Some(step) => format!("{} [{step}]", raw.name),
            None => raw.name.clone(),
        };
        let err = |e: String| format!("case {id:?}: {e}");
        let all_pods = pods();
        for pod in raw.labels.pods.keys() {
            if !all_pods.contains(pod) {
                return Err(err(format!("labels.pods: no pod {pod:?} in the model")));
            }
        }
        for ns in raw.labels.namespaces.keys() {
            if !NAMESPACES.contains(&ns.as_str()) {
                return Err(err(format!(
                    "labels.namespaces: no namespace {ns:?} in the model"
                )));
            }
        }
        for (i, np) in raw.policies.iter().enumerate() {
            let ns = np.metadata.namespace.as_deref().unwrap_or_default();
            if !NAMESPACES.contains(&ns) {
                return Err(err(format!(
                    "policies[{i}]: metadata.namespace {ns:?} is not in the model"
                )));
            }
            if np.metadata.name.as_deref().unwrap_or_default().is_empty() {
                return Err(err(format!("policies[{i}]: metadata.name is missing")));
            }
        }
        let mut seen = BTreeSet::new();
        let mut probes = Vec::with_capacity(raw.probes.len());
        for (i, p) in raw.probes.into_iter().enumerate() {
            let mut on = Vec::with_capacity(p.on.len());
            for s in &p.on {
                let pair = parse_on(s).map_err(|e| err(format!("probes[{i}].on: {e}")))?;
                if !seen.insert(pair) {
                    return Err(err(format!("probes[{i}].on: {s} is probed twice")));
                }
                on.push(pair);
            }
            if on.is_empty() {
                return Err(err(format!("probes[{i}].on: empty")));
            }
            let default = match p.default.as_deref() {
                None | Some("allow") => true,
                Some("deny") => false,
                Some(other) => {
                    return Err(err(format!(
                        "probes[{i}].default: {other:?} is not allow or deny"
                    )));
                }
            };
            let expect = p
                .expect
                .iter()
                .enumerate()
                .map(|(j, e)| {
                    e.parse()
                        .map_err(|e| err(format!("probes[{i}].expect[{j}]: {e}")))
                })
                .collect::<Result<_, _>>()?;
            probes.push(Probe {
                on,
                default,
                expect,
            });
        }
        if probes.is_empty() {
            return Err(err("no probes".to_owned()));
        }
        Ok(Case {
            name: raw.name,
            step: raw.step,
            origin: raw.origin,
            pod_labels: raw.labels.pods,
            namespace_labels: raw.labels.namespaces,
            policies: raw.policies,
            probes,
        })
    }
}

/// `TCP/80` -> (TCP, 80).
fn parse_on(s: &str) -> Result<(Proto, u16), String> {
    let (proto, port) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not PROTOCOL/PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
    Ok((proto.parse()?, port))
}

/// Fills in the placeholders of `text`: `{{ip P}}` (the address of pod P), `{{host P}}` (P's
/// address as a /32 or /128 prefix) and `{{cidr P N}}` (the prefix of length N holding P's
/// address).
pub fn expand(text: &str, ips: &BTreeMap<String, IpAddr>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("{text:?}: unterminated {{{{"))?;
        out.push_str(&placeholder(after[..end].trim(), ips).map_err(|e| format!("{text:?}: {e}"))?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn placeholder(inner: &str, ips: &BTreeMap<String, IpAddr>) -> Result<String, String> {
    let words: Vec<&str> = inner.split_whitespace().collect();
    let ip_of = |pod: &str| {
        ips.get(pod)
            .copied()
            .ok_or_else(|| format!("no address for pod {pod:?}"))
    };
    match words.as_slice() {
        ["ip", pod] => Ok(ip_of(pod)?.to_string()),
        ["host", pod] => {
            let ip = ip_of(pod)?;
            Ok(format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
        }
        ["cidr", pod, len] => {
            let len: u8 = len
                .parse()
                .map_err(|_| format!("{len:?} is not a prefix length"))?;
            Ok(network(ip_of(pod)?, len)?)
        }
        _ => Err(format!("unknown placeholder {{{{{inner}}}}}")),
    }
}

/// The prefix of length `len` holding `ip`, as `<network>/<len>`.
fn network(ip: IpAddr, len: u8) -> Result<String, String> {
    match ip {
        IpAddr::V4(v4) => {
            if len > 32 {
                return Err(format!("/{len} is longer than an IPv4 address"));
            }
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Ok(format!("{}/{len}", Ipv4Addr::from(u32::from(v4) & mask)))
        }
        IpAddr::V6(v6) => {
            if len > 128 {
                return Err(format!("/{len} is longer than an IPv6 address"));
            }
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Ok(format!("{}/{len}", Ipv6Addr::from(u128::from(v6) & mask)))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cases: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    origin: Origin,
    #[serde(default)]
    labels: RawLabels,
    policies: Vec<NetworkPolicy>,
    probes: Vec<RawProbe>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLabels {
    #[serde(default)]
    pods: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    on: Vec<String>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    expect: Vec<String>,
}
