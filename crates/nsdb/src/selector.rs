//! Label selectors over pod ports: the Kubernetes `LabelSelector` model (`matchLabels` plus
//! `matchExpressions`), and [`PortSelector`], which picks pod ports by their pod's labels and
//! their namespace's labels.
//!
//! Chains attach to the ports a selector picks ([`crate::PodAttachment`]), rules match the
//! addresses of those ports ([`crate::Rule::src_selector`]), and VIPs take them as members
//! ([`crate::Vip::member_selector`]). The simulation evaluates them against the ports of its
//! snapshot, so a port is judged by its labels from the moment it exists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The operator of a [`LabelExpr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SelectorOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LabelExpr {
    pub key: String,
    pub op: SelectorOp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelExpr {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            SelectorOp::In => v.is_some_and(|v| self.values.contains(v)),
            SelectorOp::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            SelectorOp::Exists => v.is_some(),
            SelectorOp::DoesNotExist => v.is_none(),
        }
    }
}

/// A Kubernetes label selector: every `match_labels` pair and every expression must hold.
/// The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpr>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    /// A selector that holds for exactly the label `key=value`.
    pub fn label(key: &str, value: &str) -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::from([(key.to_owned(), value.to_owned())]),
            match_expressions: Vec::new(),
        }
    }
}

/// Pod ports picked by their namespace's labels and their pod's labels; an absent part
/// matches any. Only pod ports (those with [`LABEL_NAMESPACE_NAME`] among their namespace
/// labels) are ever picked: node ports, router ports and uplinks never are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct PortSelector {
    /// Matched against [`crate::Port::namespace_labels`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Matched against [`crate::Port::labels`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<LabelSelector>,
}

/// The namespace label every pod port carries with its namespace's name, as the
/// kube-apiserver labels every Namespace.
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// The label that tells what a port that is no pod's is for.
pub const LABEL_ROLE: &str = "weft.dev/role";

/// [`LABEL_ROLE`] of a node's own port: traffic from it to a pod of the same node passes the
/// pod's NetworkPolicy ingress isolation, so that kubelet's probes keep working.
pub const ROLE_NODE: &str = "node";

/// Whether `port` is a node's own port ([`ROLE_NODE`]).
pub fn is_node_port(port: &crate::Port) -> bool {
    port.labels.get(LABEL_ROLE).map(String::as_str) == Some(ROLE_NODE)
}

impl PortSelector {
    /// Every pod in the namespace `ns` whose labels match `pods`.
    pub fn in_namespace(ns: &str, pods: LabelSelector) -> PortSelector {
        PortSelector {
            namespaces: Some(LabelSelector::label(LABEL_NAMESPACE_NAME, ns)),
            pods: Some(pods),
        }
    }

    /// Whether a port with these labels is picked.
    pub fn matches(
        &self,
        pod_labels: &BTreeMap<String, String>,
        namespace_labels: &BTreeMap<String, String>,
    ) -> bool {
        namespace_labels.contains_key(LABEL_NAMESPACE_NAME)
            && self
                .namespaces
                .as_ref()
                .is_none_or(|s| s.matches(namespace_labels))
            && self.pods.as_ref().is_none_or(|s| s.matches(pod_labels))
    }

    /// Whether `port` is picked.
    pub fn matches_port(&self, port: &crate::Port) -> bool {
        self.matches(&port.labels, &port.namespace_labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn expressions_follow_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let expr = |key: &str, op, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelExpr {
                key: key.into(),
                op,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        };
        assert!(expr("app", SelectorOp::In, &["web", "db"]).matches(&l));
        assert!(!expr("app", SelectorOp::In, &["db"]).matches(&l));
        assert!(!expr("missing", SelectorOp::In, &["x"]).matches(&l));
        assert!(expr("missing", SelectorOp::NotIn, &["x"]).matches(&l));
        assert!(!expr("app", SelectorOp::NotIn, &["web"]).matches(&l));
        assert!(expr("tier", SelectorOp::Exists, &[]).matches(&l));
        assert!(!expr("tier", SelectorOp::DoesNotExist, &[]).matches(&l));
        assert!(LabelSelector::default().matches(&l));
        assert!(LabelSelector::label("app", "web").matches(&l));
        assert!(!LabelSelector::label("app", "db").matches(&l));
    }

    #[test]
    fn only_pod_ports_are_picked() {
        let ns = labels(&[(LABEL_NAMESPACE_NAME, "x")]);
        let pod = labels(&[("pod", "a")]);
        let any = PortSelector::default();
        assert!(any.matches(&pod, &ns));
        assert!(!any.matches(&pod, &BTreeMap::new()), "not a pod port");
        let sel = PortSelector::in_namespace("x", LabelSelector::label("pod", "a"));
        assert!(sel.matches(&pod, &ns));
        assert!(!sel.matches(&pod, &labels(&[(LABEL_NAMESPACE_NAME, "y")])));
        assert!(!sel.matches(&labels(&[("pod", "b")]), &ns));
    }
}
