//! The Kuryr mapping: Kubernetes Namespaces, Services with their EndpointSlices, and
//! NetworkPolicies translated into NSDB records, as [`crate::translate`] does for Weft's own
//! kinds. Pods are not translated: the CNI ADD makes their ports on the node, and the
//! node's agent keeps the ports' labels in step with the pods.

pub mod namespaces;
pub mod netpol;
pub mod orphans;
pub mod policies;
pub mod services;
pub mod write;

use std::collections::BTreeSet;
use std::fmt;

use kube::{Resource, ResourceExt};
use nsdb::{Kind, Nsdb};

use crate::error::Error;
use crate::store::{self, Owner};

/// A Kubernetes label selector as NSDB's. The faults name the part of the selector
/// (`.matchExpressions[0].operator`) and why.
pub fn label_selector(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<nsdb::LabelSelector, Vec<(String, String)>> {
    let mut faults = Vec::new();
    let mut exprs = Vec::new();
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let field = format!(".matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        let op = match e.operator.as_str() {
            "In" => nsdb::SelectorOp::In,
            "NotIn" => nsdb::SelectorOp::NotIn,
            "Exists" => nsdb::SelectorOp::Exists,
            "DoesNotExist" => nsdb::SelectorOp::DoesNotExist,
            other => {
                faults.push((
                    format!("{field}.operator"),
                    format!(
                        "{other:?} is not one of \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                    ),
                ));
                continue;
            }
        };
        if e.key.is_empty() {
            faults.push((format!("{field}.key"), "may not be empty".to_owned()));
        }
        match op {
            nsdb::SelectorOp::In | nsdb::SelectorOp::NotIn if values.is_empty() => faults.push((
                format!("{field}.values"),
                format!("must be non-empty with operator {}", e.operator),
            )),
            nsdb::SelectorOp::Exists | nsdb::SelectorOp::DoesNotExist if !values.is_empty() => {
                faults.push((
                    format!("{field}.values"),
                    format!("must be empty with operator {}", e.operator),
                ))
            }
            _ => {}
        }
        exprs.push(nsdb::LabelExpr {
            key: e.key.clone(),
            op,
            values,
        });
    }
    if faults.is_empty() {
        Ok(nsdb::LabelSelector {
            match_labels: s.match_labels.clone().unwrap_or_default(),
            match_expressions: exprs,
        })
    } else {
        Err(faults)
    }
}

/// The Kubernetes kinds whose objects own NSDB records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KubeKind {
    /// Cluster-scoped: its records' ids are `kns:<name>[:...]` (see [`KubeKey`]).
    Namespace,
    NetworkPolicy,
    Service,
}

impl KubeKind {
    /// The first segment of the id of every record an object of this kind owns.
    pub const fn short(self) -> &'static str {
        match self {
            KubeKind::Namespace => "kns",
            KubeKind::NetworkPolicy => "knp",
            KubeKind::Service => "ksvc",
        }
    }

    /// The NSDB kinds its records have.
    pub const fn kinds(self) -> &'static [Kind] {
        match self {
            KubeKind::Namespace => &[Kind::Bridge, Kind::Port, Kind::Route],
            KubeKind::NetworkPolicy => &[Kind::Chain],
            KubeKind::Service => &[Kind::LoadBalancer],
        }
    }

    /// The Kubernetes kind name.
    pub const fn as_str(self) -> &'static str {
        match self {
            KubeKind::Namespace => "Namespace",
            KubeKind::NetworkPolicy => "NetworkPolicy",
            KubeKind::Service => "Service",
        }
    }

    /// Whether its objects have no namespace.
    pub const fn cluster_scoped(self) -> bool {
        matches!(self, KubeKind::Namespace)
    }
}

/// One Kubernetes object as the owner of its NSDB records, whose ids are
/// `<short>:<namespace>:<name>[:...]`, or `<short>:<name>[:...]` for a cluster-scoped kind
/// (whose `namespace` is empty). Kubernetes names never contain `:`, so the owner is read
/// back from an id alone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubeKey {
    pub kind: KubeKind,
    pub namespace: String,
    pub name: String,
}

impl KubeKey {
    /// The key of an object of `kind`.
    pub fn of<K: Resource>(kind: KubeKind, obj: &K) -> Result<KubeKey, Error> {
        match (obj.namespace(), obj.meta().name.clone()) {
            (None, Some(name)) if kind.cluster_scoped() => Ok(KubeKey::cluster(kind, name)),
            (Some(namespace), Some(name)) if !kind.cluster_scoped() => Ok(KubeKey {
                kind,
                namespace,
                name,
            }),
            _ if kind.cluster_scoped() => Err(Error::MissingMetadata {
                kind: kind.as_str(),
                field: "metadata.name",
            }),
            _ => Err(Error::MissingMetadata {
                kind: kind.as_str(),
                field: "metadata.namespace or metadata.name",
            }),
        }
    }

    /// The key of the cluster-scoped object `name` of `kind`.
    pub fn cluster(kind: KubeKind, name: impl Into<String>) -> KubeKey {
        KubeKey {
            kind,
            namespace: String::new(),
            name: name.into(),
        }
    }

    /// The object of `kind` that owns the record with this id, if one does.
    pub fn owner_of(kind: KubeKind, id: &str) -> Option<KubeKey> {
        if kind.cluster_scoped() {
            let mut parts = id.splitn(3, ':');
            (parts.next()? == kind.short()).then_some(())?;
            let name = parts.next().filter(|s| !s.is_empty())?;
            return Some(KubeKey::cluster(kind, name));
        }
        let mut parts = id.splitn(4, ':');
        (parts.next()? == kind.short()).then_some(())?;
        let namespace = parts.next().filter(|s| !s.is_empty())?;
        let name = parts.next().filter(|s| !s.is_empty())?;
        Some(KubeKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for KubeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.cluster_scoped() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

impl Owner for KubeKey {
    fn base_id(&self) -> String {
        if self.kind.cluster_scoped() {
            format!("{}:{}", self.kind.short(), self.name)
        } else {
            format!("{}:{}:{}", self.kind.short(), self.namespace, self.name)
        }
    }
    fn kinds(&self) -> &'static [Kind] {
        self.kind.kinds()
    }
    fn owns(&self, id: &str) -> bool {
        KubeKey::owner_of(self.kind, id).is_some_and(|o| &o == self)
    }
}

/// Every object of one kind at once, to find those that are gone.
struct AllOf(KubeKind);

impl fmt::Display for AllOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every {}", self.0.as_str())
    }
}

impl Owner for AllOf {
    fn base_id(&self) -> String {
        format!("{}:", self.0.short())
    }
    fn kinds(&self) -> &'static [Kind] {
        self.0.kinds()
    }
    fn owns(&self, id: &str) -> bool {
        KubeKey::owner_of(self.0, id).is_some()
    }
}

/// Deletes the records of every object of `kind` not in `live` (objects deleted while no
/// operator watched). Returns the objects swept.
pub async fn sweep(
    nsdb: &Nsdb,
    kind: KubeKind,
    live: &BTreeSet<KubeKey>,
) -> Result<Vec<KubeKey>, Error> {
    let stored = store::owned(nsdb, &AllOf(kind)).await?;
    let owners: BTreeSet<KubeKey> = stored
        .values()
        .filter_map(|(r, _)| KubeKey::owner_of(kind, &r.id()))
        .collect();
    let mut swept = Vec::new();
    for key in owners.difference(live) {
        store::cleanup(nsdb, key).await?;
        swept.push(key.clone());
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_back_from_ids() {
        let k = KubeKey {
            kind: KubeKind::NetworkPolicy,
            namespace: "x".into(),
            name: "allow-a".into(),
        };
        assert_eq!(k.base_id(), "knp:x:allow-a");
        for id in [
            "knp:x:allow-a",
            "knp:x:allow-a:ingress",
            "knp:x:allow-a:egress:0:1",
        ] {
            assert_eq!(
                KubeKey::owner_of(KubeKind::NetworkPolicy, id),
                Some(k.clone()),
                "{id}"
            );
            assert!(k.owns(id));
        }
        assert!(
            !k.owns("knp:x:allow-ab:ingress"),
            "a name that extends this one"
        );
        assert!(!k.owns("knp:y:allow-a:ingress"));
        assert!(!k.owns("ksvc:x:allow-a"), "another kind");
        assert!(!k.owns("acl:allow-a"));
        assert_eq!(KubeKey::owner_of(KubeKind::NetworkPolicy, "knp:x"), None);
        assert_eq!(KubeKey::owner_of(KubeKind::NetworkPolicy, "knp::a"), None);
        assert!(AllOf(KubeKind::NetworkPolicy).owns("knp:x:allow-a:ingress"));
        assert!(!AllOf(KubeKind::NetworkPolicy).owns("ksvc:x:web"));
    }

    #[test]
    fn cluster_scoped_owners_have_no_namespace_segment() {
        let ns = KubeKey::cluster(KubeKind::Namespace, "team-a");
        assert_eq!(ns.base_id(), "kns:team-a");
        assert_eq!(ns.to_string(), "Namespace team-a");
        for id in ["kns:team-a", "kns:team-a:port", "kns:team-a:port:connected"] {
            assert_eq!(
                KubeKey::owner_of(KubeKind::Namespace, id),
                Some(ns.clone()),
                "{id}"
            );
            assert!(ns.owns(id), "{id}");
        }
        assert!(!ns.owns("kns:team-ab"), "a name that extends this one");
        assert!(!ns.owns("vrt:team-a"), "another kind");
        assert_eq!(KubeKey::owner_of(KubeKind::Namespace, "kns:"), None);
        assert_eq!(KubeKey::owner_of(KubeKind::Namespace, "kns"), None);
        // The same id read as a namespaced kind's is not this owner.
        assert_eq!(
            KubeKey::owner_of(KubeKind::Service, "kns:team-a:port"),
            None
        );
        assert!(AllOf(KubeKind::Namespace).owns("kns:team-a:peer"));
        assert!(!AllOf(KubeKind::Namespace).owns("knp:x:allow-a"));

        let obj: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "team-a"}})).unwrap();
        assert_eq!(KubeKey::of(KubeKind::Namespace, &obj).unwrap(), ns);
        assert!(
            KubeKey::of(KubeKind::Service, &obj).is_err(),
            "no namespace"
        );
    }
}
