//! NetworkPolicy (networking.k8s.io/v1) -> NSDB chains attached to pods in `Allow` mode.
//!
//! A policy becomes one chain per direction it governs, attached to the pods its
//! `spec.podSelector` picks in its own namespace. Each chain lists what the policy allows and
//! drops everything else; the simulation isolates a pod as soon as one such chain picks it and
//! lets a packet through when any of them accepts it, so policies add up as Kubernetes says.
//!
//! One rule is written per peer and port of each policy rule. An `ipBlock` with `except`
//! entries jumps to a chain of its own that returns on each excepted prefix and accepts the
//! rest: a returned packet goes on to the policy's next rule, which another peer may allow.
//!
//! Ids are `knp:<namespace>:<name>:<direction>[:<rule>:<peer>]`: the policy's [`KubeKey`]
//! owns them all, and reads itself back from any of them.

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nsdb::{
    Chain, LabelSelector, PodAttachMode, PodAttachment, PodDirection, PortSelector, Protocol, Rule,
    RuleAction,
};

use super::{KubeKey, KubeKind};
use crate::error::Error;
use crate::store::Owner;

/// The Kubernetes kind, as errors name it.
const KIND: &str = "NetworkPolicy";

/// The id of the chain of the policy `namespace/name` for one direction, under the policy's
/// [`KubeKey`] so that the policy owns it.
pub fn chain_id(namespace: &str, name: &str, direction: PodDirection) -> String {
    let key = KubeKey {
        kind: KubeKind::NetworkPolicy,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    format!("{}:{}", key.base_id(), direction_part(direction))
}

/// The id of the chain that checks the `except` list of peer `peer` of rule `rule`.
pub fn except_chain_id(
    namespace: &str,
    name: &str,
    direction: PodDirection,
    rule: usize,
    peer: usize,
) -> String {
    format!("{}:{rule}:{peer}", chain_id(namespace, name, direction))
}

fn direction_part(direction: PodDirection) -> &'static str {
    match direction {
        PodDirection::Ingress => "ingress",
        PodDirection::Egress => "egress",
    }
}

/// The chains of one NetworkPolicy: the ingress chain and its `except` chains, then the egress
/// chain and its `except` chains, for the directions the policy governs. Every field error is
/// reported at once, each naming its field path.
pub fn chains(np: &NetworkPolicy) -> Result<Vec<Chain>, Error> {
    let namespace = np
        .metadata
        .namespace
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(Error::MissingMetadata {
            kind: KIND,
            field: "metadata.namespace",
        })?;
    let name = np
        .metadata
        .name
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(Error::MissingMetadata {
            kind: KIND,
            field: "metadata.name",
        })?;
    let mut t = Translator {
        namespace,
        name,
        errors: Vec::new(),
    };
    let spec = np.spec.clone().unwrap_or_default();

    let pods = match &spec.pod_selector {
        Some(s) => t.selector("spec.podSelector", s),
        None => Some(LabelSelector::default()),
    };
    let (ingress, egress) = t.policy_types(spec.policy_types.as_deref(), spec.egress.as_deref());

    let mut out = Vec::new();
    if ingress {
        let rules: Vec<RuleSpec<'_>> = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| (r.from.as_deref(), r.ports.as_deref()))
            .collect();
        out.extend(t.direction(PodDirection::Ingress, &rules, pods.clone()));
    }
    if egress {
        let rules: Vec<RuleSpec<'_>> = spec
            .egress
            .iter()
            .flatten()
            .map(|r| (r.to.as_deref(), r.ports.as_deref()))
            .collect();
        out.extend(t.direction(PodDirection::Egress, &rules, pods));
    }
    if t.errors.is_empty() {
        Ok(out)
    } else {
        Err(Error::InvalidSpec {
            kind: KIND,
            name: format!("{namespace}/{name}"),
            message: t.errors.join("; "),
        })
    }
}

/// The peers and ports of one ingress or egress rule.
type RuleSpec<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// Whom a rule's peer admits.
enum Peer {
    /// No `from`/`to`: any address.
    Any,
    /// Pod ports picked by their labels and their namespace's labels.
    Pods(PortSelector),
    /// An `ipBlock`: addresses in `cidr` but in no `except` prefix.
    Block { cidr: IpNet, except: Vec<IpNet> },
}

/// What a rule's port admits; `None` stands for no `ports` (any protocol, any port).
struct PortMatch {
    protocol: Protocol,
    ports: Option<(u16, u16)>,
    name: Option<String>,
}

struct Translator<'a> {
    namespace: &'a str,
    name: &'a str,
    errors: Vec<String>,
}

impl Translator<'_> {
    fn fail(&mut self, field: impl AsRef<str>, reason: impl AsRef<str>) {
        self.errors
            .push(format!("{}: {}", field.as_ref(), reason.as_ref()));
    }

    /// Which directions the policy governs: `policyTypes` when set; otherwise Ingress, and
    /// Egress when there are egress rules (the API server's defaulting, which reads an empty
    /// `policyTypes` as unset and an empty `egress` as none).
    fn policy_types(
        &mut self,
        types: Option<&[String]>,
        egress: Option<&[k8s_openapi::api::networking::v1::NetworkPolicyEgressRule]>,
    ) -> (bool, bool) {
        match types {
            Some(types) if !types.is_empty() => {
                let (mut ingress, mut egress) = (false, false);
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => ingress = true,
                        "Egress" => egress = true,
                        other => self.fail(
                            format!("spec.policyTypes[{i}]"),
                            format!("{other:?} is not one of \"Ingress\", \"Egress\""),
                        ),
                    }
                }
                (ingress, egress)
            }
            _ => (true, egress.is_some_and(|e| !e.is_empty())),
        }
    }

    /// The chain of one direction and the `except` chains its rules jump to.
    fn direction(
        &mut self,
        direction: PodDirection,
        rules: &[RuleSpec<'_>],
        pods: Option<LabelSelector>,
    ) -> Vec<Chain> {
        let (rules_field, peers_field) = match direction {
            PodDirection::Ingress => ("spec.ingress", "from"),
            PodDirection::Egress => ("spec.egress", "to"),
        };
        let id = chain_id(self.namespace, self.name, direction);
        let mut chain_rules = Vec::new();
        let mut helpers = Vec::new();
        for (i, (peers, ports)) in rules.iter().enumerate() {
            let rule_field = format!("{rules_field}[{i}]");
            let peers: Vec<Peer> = match peers.filter(|p| !p.is_empty()) {
                None => vec![Peer::Any],
                Some(peers) => peers
                    .iter()
                    .enumerate()
                    .filter_map(|(j, p)| self.peer(&format!("{rule_field}.{peers_field}[{j}]"), p))
                    .collect(),
            };
            let ports: Vec<Option<PortMatch>> = match ports.filter(|p| !p.is_empty()) {
                None => vec![None],
                Some(ports) => ports
                    .iter()
                    .enumerate()
                    .filter_map(|(k, p)| self.port(&format!("{rule_field}.ports[{k}]"), p))
                    .map(Some)
                    .collect(),
            };
            for (j, peer) in peers.iter().enumerate() {
                let mut action = RuleAction::Accept;
                let mut base = Rule::matching_all(String::new(), RuleAction::Accept);
                match (peer, direction) {
                    (Peer::Any, _) => {}
                    (Peer::Pods(s), PodDirection::Ingress) => base.src_selector = Some(s.clone()),
                    (Peer::Pods(s), PodDirection::Egress) => base.dst_selector = Some(s.clone()),
                    (Peer::Block { cidr, except }, _) => {
                        match direction {
                            PodDirection::Ingress => base.src = Some(*cidr),
                            PodDirection::Egress => base.dst = Some(*cidr),
                        }
                        if !except.is_empty() {
                            let helper =
                                except_chain_id(self.namespace, self.name, direction, i, j);
                            helpers.push(self.except_chain(
                                &helper,
                                direction,
                                &format!("{rule_field}.{peers_field}[{j}]"),
                                except,
                            ));
                            action = RuleAction::Jump(helper);
                        }
                    }
                }
                for (k, port) in ports.iter().enumerate() {
                    let mut rule = Rule {
                        id: format!("{id}:{i}:{j}:{k}"),
                        action: action.clone(),
                        ..base.clone()
                    };
                    if let Some(p) = port {
                        rule.protocol = Some(p.protocol);
                        rule.dst_ports = p.ports;
                        rule.dst_port_name = p.name.clone();
                    }
                    chain_rules.push(rule);
                }
            }
        }
        let mut out = Vec::with_capacity(1 + helpers.len());
        out.push(Chain {
            id,
            name: format!(
                "{}/{} {}",
                self.namespace,
                self.name,
                direction_part(direction)
            ),
            rules: chain_rules,
            default_action: RuleAction::Drop,
            pods: pods.map(|pods| PodAttachment {
                direction,
                selector: PortSelector::in_namespace(self.namespace, pods),
                mode: PodAttachMode::Allow,
            }),
        });
        out.extend(helpers);
        out
    }

    /// The chain an `ipBlock` with `except` jumps to: back to the policy's chain for each
    /// excepted prefix, accepted otherwise.
    fn except_chain(
        &self,
        id: &str,
        direction: PodDirection,
        peer_field: &str,
        except: &[IpNet],
    ) -> Chain {
        let rules = except
            .iter()
            .enumerate()
            .map(|(n, net)| {
                let mut rule = Rule::matching_all(format!("{id}:except:{n}"), RuleAction::Return);
                match direction {
                    PodDirection::Ingress => rule.src = Some(*net),
                    PodDirection::Egress => rule.dst = Some(*net),
                }
                rule
            })
            .collect();
        Chain {
            id: id.to_owned(),
            name: format!("{}/{} {peer_field}.ipBlock", self.namespace, self.name),
            rules,
            default_action: RuleAction::Accept,
            pods: None,
        }
    }

    fn peer(&mut self, field: &str, p: &NetworkPolicyPeer) -> Option<Peer> {
        match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
            (Some(block), None, None) => {
                let cidr_field = format!("{field}.ipBlock.cidr");
                let Ok(cidr) = block.cidr.parse::<IpNet>() else {
                    self.fail(cidr_field, format!("{:?} is not a valid CIDR", block.cidr));
                    return None;
                };
                let cidr = cidr.trunc();
                let mut except = Vec::new();
                let mut ok = true;
                for (n, e) in block.except.iter().flatten().enumerate() {
                    let except_field = format!("{field}.ipBlock.except[{n}]");
                    let Ok(net) = e.parse::<IpNet>() else {
                        self.fail(except_field, format!("{e:?} is not a valid CIDR"));
                        ok = false;
                        continue;
                    };
                    let net = net.trunc();
                    if matches!(net, IpNet::V4(_)) != matches!(cidr, IpNet::V4(_)) {
                        self.fail(
                            except_field,
                            format!("{e} is not of the address family of cidr {cidr}"),
                        );
                        ok = false;
                    } else if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
                        self.fail(
                            except_field,
                            format!("{e} is not a strict subset of cidr {cidr}"),
                        );
                        ok = false;
                    } else {
                        except.push(net);
                    }
                }
                ok.then_some(Peer::Block { cidr, except })
            }
            (None, None, Some(pods)) => {
                let pods = self.selector(&format!("{field}.podSelector"), pods)?;
                Some(Peer::Pods(PortSelector::in_namespace(self.namespace, pods)))
            }
            (None, Some(namespaces), pods) => {
                let namespaces = self.selector(&format!("{field}.namespaceSelector"), namespaces);
                let pods = match pods {
                    Some(pods) => Some(self.selector(&format!("{field}.podSelector"), pods)?),
                    None => None,
                };
                Some(Peer::Pods(PortSelector {
                    namespaces: Some(namespaces?),
                    pods,
                }))
            }
            (None, None, None) => {
                self.fail(
                    field,
                    "must set one of ipBlock, namespaceSelector, podSelector",
                );
                None
            }
            (Some(_), _, _) => {
                self.fail(
                    field,
                    "ipBlock may not be combined with namespaceSelector or podSelector",
                );
                None
            }
        }
    }

    fn port(&mut self, field: &str, p: &NetworkPolicyPort) -> Option<PortMatch> {
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(other) => {
                self.fail(
                    format!("{field}.protocol"),
                    format!("{other:?} is not one of \"TCP\", \"UDP\", \"SCTP\""),
                );
                None
            }
        };
        let end_field = format!("{field}.endPort");
        let (ports, name) = match (&p.port, p.end_port) {
            (None, None) => (None, None),
            (None, Some(_)) => {
                self.fail(end_field, "may not be set without port");
                return None;
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    self.fail(end_field, "may not be set with a named port");
                    return None;
                }
                if !is_port_name(name) {
                    self.fail(
                        format!("{field}.port"),
                        format!("{name:?} is neither a port number nor a valid port name"),
                    );
                    return None;
                }
                (None, Some(name.clone()))
            }
            (Some(IntOrString::Int(port)), end) => {
                let Some(port) = port_number(*port) else {
                    self.fail(
                        format!("{field}.port"),
                        format!("{port} is not a port number (1-65535)"),
                    );
                    return None;
                };
                let end = match end {
                    None => port,
                    Some(end) => match port_number(end) {
                        Some(end) if end >= port => end,
                        Some(end) => {
                            self.fail(end_field, format!("{end} is less than port {port}"));
                            return None;
                        }
                        None => {
                            self.fail(end_field, format!("{end} is not a port number (1-65535)"));
                            return None;
                        }
                    },
                };
                (Some((port, end)), None)
            }
        };
        Some(PortMatch {
            protocol: protocol?,
            ports,
            name,
        })
    }

    fn selector(&mut self, field: &str, s: &KubeSelector) -> Option<LabelSelector> {
        match super::label_selector(s) {
            Ok(sel) => Some(sel),
            Err(faults) => {
                for (part, reason) in faults {
                    self.fail(format!("{field}{part}"), reason);
                }
                None
            }
        }
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// A valid container port name (IANA_SVC_NAME): 1-15 lowercase letters, digits and `-`, with
/// at least one letter, no `-` at either end and no `--`.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use nsdb::{LabelExpr, SelectorOp};

    use super::*;

    fn np(yaml: &str) -> NetworkPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn rule(id: &str, action: RuleAction) -> Rule {
        Rule::matching_all(id, action)
    }

    fn attached(direction: PodDirection, ns: &str, pods: LabelSelector) -> Option<PodAttachment> {
        Some(PodAttachment {
            direction,
            selector: PortSelector::in_namespace(ns, pods),
            mode: PodAttachMode::Allow,
        })
    }

    fn net(s: &str) -> Option<IpNet> {
        Some(s.parse().unwrap())
    }

    fn invalid(np: &NetworkPolicy) -> String {
        match chains(np) {
            Err(Error::InvalidSpec {
                kind,
                name,
                message,
            }) => {
                assert_eq!(kind, "NetworkPolicy");
                assert_eq!(name, "x/p");
                message
            }
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn default_deny_ingress_is_a_chain_without_rules() {
        let got = chains(&np(r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: deny}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#))
        .unwrap();
        assert_eq!(
            got,
            vec![Chain {
                id: "knp:x:deny:ingress".into(),
                name: "x/deny ingress".into(),
                rules: vec![],
                default_action: RuleAction::Drop,
                pods: attached(PodDirection::Ingress, "x", LabelSelector::default()),
            }]
        );
    }

    #[test]
    fn directions_follow_policy_types_and_their_defaulting() {
        let ids = |yaml: &str| -> Vec<String> {
            chains(&np(yaml))
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect()
        };
        let head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x, name: p}\n";
        // No policyTypes: Ingress, and Egress when there are egress rules.
        let implied = ids(&format!("{head}spec:\n  egress: [{{}}]\n"));
        assert_eq!(implied, ["knp:x:p:ingress", "knp:x:p:egress"]);
        let got = chains(&np(&format!("{head}spec:\n  egress: [{{}}]\n"))).unwrap();
        assert_eq!(got[0].rules, vec![]);
        assert_eq!(
            got[1].rules,
            vec![rule("knp:x:p:egress:0:0:0", RuleAction::Accept)]
        );
        assert_eq!(
            got[1].pods,
            attached(PodDirection::Egress, "x", LabelSelector::default())
        );
        // An empty egress list is no egress rule, as the API server defaults it.
        assert_eq!(
            ids(&format!("{head}spec:\n  egress: []\n")),
            ["knp:x:p:ingress"]
        );
        assert_eq!(ids(&format!("{head}spec: {{}}\n")), ["knp:x:p:ingress"]);
        // Explicit types win over the rule lists, both ways.
        assert_eq!(
            ids(&format!(
                "{head}spec:\n  policyTypes: [Egress]\n  ingress: [{{}}]\n"
            )),
            ["knp:x:p:egress"]
        );
        assert_eq!(
            ids(&format!("{head}spec:\n  policyTypes: [Egress, Ingress]\n")),
            ["knp:x:p:ingress", "knp:x:p:egress"]
        );
        // An empty policyTypes is unset.
        assert_eq!(
            ids(&format!(
                "{head}spec:\n  policyTypes: []\n  egress: [{{}}]\n"
            )),
            ["knp:x:p:ingress", "knp:x:p:egress"]
        );
    }

    #[test]
    fn peers_of_each_kind() {
        let got = chains(&np(r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: p}
spec:
  podSelector:
    matchLabels: {pod: a}
    matchExpressions:
      - {key: tier, operator: NotIn, values: [db, cache]}
  ingress:
    - from:
        - podSelector: {matchLabels: {pod: b}}
        - namespaceSelector: {matchLabels: {ns: y}}
        - namespaceSelector:
            matchExpressions:
              - {key: team, operator: Exists}
          podSelector: {matchLabels: {pod: c}}
        - namespaceSelector: {}
    - {}
"#))
        .unwrap();
        let label = LabelSelector::label;
        let target = LabelSelector {
            match_labels: BTreeMap::from([("pod".into(), "a".into())]),
            match_expressions: vec![LabelExpr {
                key: "tier".into(),
                op: SelectorOp::NotIn,
                values: vec!["db".into(), "cache".into()],
            }],
        };
        let from = |id: &str, s: PortSelector| Rule {
            src_selector: Some(s),
            ..rule(id, RuleAction::Accept)
        };
        assert_eq!(
            got,
            vec![Chain {
                id: "knp:x:p:ingress".into(),
                name: "x/p ingress".into(),
                rules: vec![
                    from(
                        "knp:x:p:ingress:0:0:0",
                        PortSelector::in_namespace("x", label("pod", "b"))
                    ),
                    from(
                        "knp:x:p:ingress:0:1:0",
                        PortSelector {
                            namespaces: Some(label("ns", "y")),
                            pods: None
                        }
                    ),
                    from(
                        "knp:x:p:ingress:0:2:0",
                        PortSelector {
                            namespaces: Some(LabelSelector {
                                match_labels: BTreeMap::new(),
                                match_expressions: vec![LabelExpr {
                                    key: "team".into(),
                                    op: SelectorOp::Exists,
                                    values: vec![],
                                }],
                            }),
                            pods: Some(label("pod", "c")),
                        }
                    ),
                    from(
                        "knp:x:p:ingress:0:3:0",
                        PortSelector {
                            namespaces: Some(LabelSelector::default()),
                            pods: None
                        }
                    ),
                    rule("knp:x:p:ingress:1:0:0", RuleAction::Accept),
                ],
                default_action: RuleAction::Drop,
                pods: attached(PodDirection::Ingress, "x", target),
            }]
        );
    }

    #[test]
    fn egress_peers_match_the_destination() {
        let got = chains(&np(r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: p}
spec:
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector: {matchLabels: {pod: b}}
        - ipBlock: {cidr: 10.1.2.3/16}
"#))
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].rules,
            vec![
                Rule {
                    dst_selector: Some(PortSelector::in_namespace(
                        "x",
                        LabelSelector::label("pod", "b")
                    )),
                    ..rule("knp:x:p:egress:0:0:0", RuleAction::Accept)
                },
                Rule {
                    dst: net("10.1.0.0/16"),
                    ..rule("knp:x:p:egress:0:1:0", RuleAction::Accept)
                },
            ]
        );
    }

    #[test]
    fn ip_block_except_jumps_to_a_chain_of_its_own() {
        let got = chains(&np(r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: p}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress, Ingress]
  ingress:
    - from:
        - ipBlock: {cidr: "fd00::/48", except: ["fd00:0:0:1::/64"]}
  egress:
    - to:
        - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.0.2.0/24]}
        - ipBlock: {cidr: 192.168.0.0/24}
      ports:
        - port: 80
        - {protocol: UDP, port: 53}
"#))
        .unwrap();
        let to = |id: &str, dst: &str, protocol, port: u16, action| Rule {
            dst: net(dst),
            protocol: Some(protocol),
            dst_ports: Some((port, port)),
            ..rule(id, action)
        };
        let jump = || RuleAction::Jump("knp:x:p:egress:0:0".into());
        let pods = LabelSelector::label("pod", "a");
        assert_eq!(
            got,
            vec![
                Chain {
                    id: "knp:x:p:ingress".into(),
                    name: "x/p ingress".into(),
                    rules: vec![Rule {
                        src: net("fd00::/48"),
                        ..rule(
                            "knp:x:p:ingress:0:0:0",
                            RuleAction::Jump("knp:x:p:ingress:0:0".into())
                        )
                    }],
                    default_action: RuleAction::Drop,
                    pods: attached(PodDirection::Ingress, "x", pods.clone()),
                },
                Chain {
                    id: "knp:x:p:ingress:0:0".into(),
                    name: "x/p spec.ingress[0].from[0].ipBlock".into(),
                    rules: vec![Rule {
                        src: net("fd00:0:0:1::/64"),
                        ..rule("knp:x:p:ingress:0:0:except:0", RuleAction::Return)
                    }],
                    default_action: RuleAction::Accept,
                    pods: None,
                },
                Chain {
                    id: "knp:x:p:egress".into(),
                    name: "x/p egress".into(),
                    rules: vec![
                        to(
                            "knp:x:p:egress:0:0:0",
                            "10.0.0.0/16",
                            Protocol::Tcp,
                            80,
                            jump()
                        ),
                        to(
                            "knp:x:p:egress:0:0:1",
                            "10.0.0.0/16",
                            Protocol::Udp,
                            53,
                            jump()
                        ),
                        to(
                            "knp:x:p:egress:0:1:0",
                            "192.168.0.0/24",
                            Protocol::Tcp,
                            80,
                            RuleAction::Accept
                        ),
                        to(
                            "knp:x:p:egress:0:1:1",
                            "192.168.0.0/24",
                            Protocol::Udp,
                            53,
                            RuleAction::Accept
                        ),
                    ],
                    default_action: RuleAction::Drop,
                    pods: attached(PodDirection::Egress, "x", pods),
                },
                Chain {
                    id: "knp:x:p:egress:0:0".into(),
                    name: "x/p spec.egress[0].to[0].ipBlock".into(),
                    rules: vec![
                        Rule {
                            dst: net("10.0.1.0/24"),
                            ..rule("knp:x:p:egress:0:0:except:0", RuleAction::Return)
                        },
                        Rule {
                            dst: net("10.0.2.0/24"),
                            ..rule("knp:x:p:egress:0:0:except:1", RuleAction::Return)
                        },
                    ],
                    default_action: RuleAction::Accept,
                    pods: None,
                },
            ]
        );
    }

    #[test]
    fn ports_named_ranged_and_by_protocol() {
        let got = chains(&np(r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: p}
spec:
  ingress:
    - ports:
        - port: http
        - {protocol: UDP, port: serve-53-udp}
        - {protocol: UDP, port: 1000, endPort: 2000}
        - {protocol: SCTP}
        - {protocol: SCTP, port: 9}
"#))
        .unwrap();
        let r = |k: usize| format!("knp:x:p:ingress:0:0:{k}");
        assert_eq!(
            got[0].rules,
            vec![
                Rule {
                    protocol: Some(Protocol::Tcp),
                    dst_port_name: Some("http".into()),
                    ..rule(&r(0), RuleAction::Accept)
                },
                Rule {
                    protocol: Some(Protocol::Udp),
                    dst_port_name: Some("serve-53-udp".into()),
                    ..rule(&r(1), RuleAction::Accept)
                },
                Rule {
                    protocol: Some(Protocol::Udp),
                    dst_ports: Some((1000, 2000)),
                    ..rule(&r(2), RuleAction::Accept)
                },
                Rule {
                    protocol: Some(Protocol::Sctp),
                    ..rule(&r(3), RuleAction::Accept)
                },
                Rule {
                    protocol: Some(Protocol::Sctp),
                    dst_ports: Some((9, 9)),
                    ..rule(&r(4), RuleAction::Accept)
                },
            ]
        );
    }

    #[test]
    fn errors_name_their_fields() {
        let message = invalid(&np(r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: p}
spec:
  podSelector:
    matchExpressions:
      - {key: pod, operator: In}
  policyTypes: [Ingress, Egress, Sideways]
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions:
              - {key: ns, operator: Near, values: [y]}
        - {}
        - ipBlock: {cidr: 10.0.0.0/8}
          podSelector: {}
      ports:
        - {port: 80, endPort: 90}
        - {port: 80, endPort: 79}
        - {port: http, endPort: 90}
        - {endPort: 90}
        - {protocol: ICMP}
        - port: 0
        - port: "Not_A_Name"
  egress:
    - to:
        - ipBlock: {cidr: 10.0.0.0/33}
    - {}
    - to:
        - ipBlock:
            cidr: 10.0.0.0/16
            except: [10.0.1.0/24, "fd00::/64", 10.1.0.0/24, 10.0.0.0/16, bogus]
        - podSelector:
            matchExpressions:
              - {key: pod, operator: Exists, values: [a]}
"#));
        let expected = [
            r#"spec.podSelector.matchExpressions[0].values: must be non-empty with operator In"#,
            r#"spec.policyTypes[2]: "Sideways" is not one of "Ingress", "Egress""#,
            r#"spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator: "Near" is not one of "In", "NotIn", "Exists", "DoesNotExist""#,
            "spec.ingress[0].from[1]: must set one of ipBlock, namespaceSelector, podSelector",
            "spec.ingress[0].from[2]: ipBlock may not be combined with namespaceSelector or podSelector",
            "spec.ingress[0].ports[1].endPort: 79 is less than port 80",
            "spec.ingress[0].ports[2].endPort: may not be set with a named port",
            "spec.ingress[0].ports[3].endPort: may not be set without port",
            r#"spec.ingress[0].ports[4].protocol: "ICMP" is not one of "TCP", "UDP", "SCTP""#,
            "spec.ingress[0].ports[5].port: 0 is not a port number (1-65535)",
            r#"spec.ingress[0].ports[6].port: "Not_A_Name" is neither a port number nor a valid port name"#,
            r#"spec.egress[0].to[0].ipBlock.cidr: "10.0.0.0/33" is not a valid CIDR"#,
            "spec.egress[2].to[0].ipBlock.except[1]: fd00::/64 is not of the address family of cidr 10.0.0.0/16",
            "spec.egress[2].to[0].ipBlock.except[2]: 10.1.0.0/24 is not a strict subset of cidr 10.0.0.0/16",
            "spec.egress[2].to[0].ipBlock.except[3]: 10.0.0.0/16 is not a strict subset of cidr 10.0.0.0/16",
            r#"spec.egress[2].to[0].ipBlock.except[4]: "bogus" is not a valid CIDR"#,
            "spec.egress[2].to[1].podSelector.matchExpressions[0].values: must be empty with operator Exists",
        ];
        assert_eq!(message.split("; ").collect::<Vec<_>>(), expected);
    }

    #[test]
    fn metadata_is_required() {
        let err = chains(&np(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n",
        ))
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingMetadata {
                    kind: "NetworkPolicy",
                    field: "metadata.namespace"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn ids_are_owned_by_their_policy() {
        let key = KubeKey {
            kind: KubeKind::NetworkPolicy,
            namespace: "x".into(),
            name: "p".into(),
        };
        for id in [
            chain_id("x", "p", PodDirection::Ingress),
            chain_id("x", "p", PodDirection::Egress),
            except_chain_id("x", "p", PodDirection::Egress, 2, 1),
        ] {
            assert!(key.owns(&id), "{id}");
        }
        assert_eq!(chain_id("x", "p", PodDirection::Ingress), "knp:x:p:ingress");
        // A name that is a prefix of another is not confused with it.
        assert!(!key.owns(&chain_id("x", "pq", PodDirection::Ingress)));
    }
}
