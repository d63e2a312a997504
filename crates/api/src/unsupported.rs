//! The fields the schema accepts and nothing implements yet. An object that sets one is
//! refused (`Ready=False`, reason `Unsupported`, the field named) instead of being reported
//! programmed while the field does nothing. Implementing a field means taking its row out of
//! the table of its kind here.

use std::collections::BTreeMap;

use crate::acl::{AccessControlList, AccessControlListSpec};
use crate::bridge::{VirtualBridge, VirtualBridgeSpec};
use crate::loadbalancer::{VirtualLoadBalancer, VirtualLoadBalancerSpec};
use crate::router::{VirtualRouter, VirtualRouterSpec};
use crate::validate::{Invalid, Kind, Objects, Report};

/// A field nothing implements yet.
#[derive(Clone, Copy, Debug)]
pub struct Field<S: 'static> {
    /// Its path; `[]` stands for the index of a list item: `spec.vips[].pods`.
    pub path: &'static str,
    /// What would go wrong if it were accepted.
    pub why: &'static str,
    /// The indices of the list items that set it (the `[]` of `path`); for a field outside
    /// a list, `[0]` when it is set.
    set_in: fn(&S) -> Vec<usize>,
}

fn set(is_set: bool) -> Vec<usize> {
    if is_set { vec![0] } else { Vec::new() }
}

/// `VirtualBridge` fields nothing implements yet: none.
pub const BRIDGE: &[Field<VirtualBridgeSpec>] = &[];

/// `VirtualRouter` fields nothing implements yet.
pub const ROUTER: &[Field<VirtualRouterSpec>] = &[Field {
    path: "spec.uplink.hostInterface",
    why: "uplinks are not bound to host interfaces, so the uplink would reach nothing",
    set_in: |s| {
        set(s
            .uplink
            .as_ref()
            .is_some_and(|u| u.host_interface.is_some()))
    },
}];

/// `VirtualLoadBalancer` fields nothing implements yet: none.
pub const LOAD_BALANCER: &[Field<VirtualLoadBalancerSpec>] = &[];

/// `AccessControlList` fields nothing implements yet: none.
pub const ACL: &[Field<AccessControlListSpec>] = &[];

/// The fields of `table` that `spec` sets, each at its own path (`spec.vips[1].pods`).
pub fn check<S>(table: &[Field<S>], spec: &S) -> Vec<Invalid> {
    table
        .iter()
        .flat_map(|f| {
            (f.set_in)(spec).into_iter().map(move |i| Invalid {
                field: f.path.replacen("[]", &format!("[{i}]"), 1),
                reason: format!("not supported yet: {}", f.why),
            })
        })
        .collect()
}

/// Every listed field, by kind, with its path as in [`Field::path`].
pub fn listed() -> Vec<(Kind, &'static str)> {
    fn paths<S>(kind: Kind, table: &[Field<S>]) -> impl Iterator<Item = (Kind, &'static str)> {
        table.iter().map(move |f| (kind, f.path))
    }
    paths(Kind::VirtualBridge, BRIDGE)
        .chain(paths(Kind::VirtualRouter, ROUTER))
        .chain(paths(Kind::VirtualLoadBalancer, LOAD_BALANCER))
        .chain(paths(Kind::AccessControlList, ACL))
        .collect()
}

fn each<K, S>(
    report: &mut Report,
    kind: Kind,
    objects: &BTreeMap<String, K>,
    table: &[Field<S>],
    spec: fn(&K) -> &S,
) {
    for (name, o) in objects {
        report.push(kind, name, check(table, spec(o)));
    }
}

/// The unsupported fields each object sets. Objects that set none do not appear.
pub fn unsupported(objects: Objects<'_>) -> Report {
    let mut report = Report::default();
    each(
        &mut report,
        Kind::VirtualBridge,
        objects.bridges,
        BRIDGE,
        |o: &VirtualBridge| &o.spec,
    );
    each(
        &mut report,
        Kind::VirtualRouter,
        objects.routers,
        ROUTER,
        |o: &VirtualRouter| &o.spec,
    );
    each(
        &mut report,
        Kind::VirtualLoadBalancer,
        objects.load_balancers,
        LOAD_BALANCER,
        |o: &VirtualLoadBalancer| &o.spec,
    );
    each(
        &mut report,
        Kind::AccessControlList,
        objects.acls,
        ACL,
        |o: &AccessControlList| &o.spec,
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::PodSelector;
    use crate::loadbalancer::{HealthCheck, HealthCheckType, Member, Vip};

    fn vip(pods: bool, target_port: Option<u16>) -> Vip {
        Vip {
            ip: "10.96.0.1".into(),
            port: 80,
            members: if pods {
                vec![]
            } else {
                vec![Member {
                    ip: "10.0.0.5".into(),
                    port: 80,
                    weight: 1,
                }]
            },
            pods: pods.then(PodSelector::default),
            target_port,
            ..Default::default()
        }
    }

    #[test]
    fn pod_selected_members_health_checks_and_pod_attached_acls_are_supported() {
        let spec = VirtualLoadBalancerSpec {
            vips: vec![vip(false, None), vip(true, Some(8080)), vip(true, None)],
            health_check: Some(HealthCheck {
                kind: HealthCheckType::Tcp,
                path: None,
                interval_seconds: 5,
                timeout_seconds: 2,
                healthy_threshold: 2,
                unhealthy_threshold: 3,
            }),
            ..Default::default()
        };
        assert!(check(LOAD_BALANCER, &spec).is_empty());
        assert!(
            !listed()
                .iter()
                .any(|(k, _)| *k == Kind::VirtualLoadBalancer)
        );
        let acl = AccessControlListSpec {
            attach_to: crate::acl::Attachment {
                pods: Some(PodSelector::default()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(check(ACL, &acl).is_empty());
    }

    #[test]
    fn an_object_setting_none_is_not_reported() {
        let spec = VirtualLoadBalancerSpec {
            vips: vec![vip(false, None)],
            ..Default::default()
        };
        assert!(check(LOAD_BALANCER, &spec).is_empty());
        assert!(check(BRIDGE, &VirtualBridgeSpec::default()).is_empty());
        assert!(check(ROUTER, &VirtualRouterSpec::default()).is_empty());
        assert!(check(ACL, &AccessControlListSpec::default()).is_empty());
    }

    #[test]
    fn the_reason_says_it_is_not_supported_and_why() {
        let spec = VirtualRouterSpec {
            uplink: Some(crate::router::Uplink {
                ip: "203.0.113.2/24".into(),
                host_interface: Some("eth1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let found = check(ROUTER, &spec);
        assert_eq!(found.len(), 1, "the uplink's ip is implemented");
        assert!(
            found[0].to_string().starts_with(
                "spec.uplink.hostInterface: not supported yet: uplinks are not bound to host \
                 interfaces"
            ),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_bridge_choosing_namespaces_by_label_is_supported() {
        let spec = VirtualBridgeSpec {
            namespaces: Some(crate::bridge::NamespaceSelection {
                names: vec!["blue".into()],
                selector: Some(Default::default()),
            }),
            ..Default::default()
        };
        assert!(check(BRIDGE, &spec).is_empty());
        assert!(!listed().iter().any(|(k, _)| *k == Kind::VirtualBridge));
    }
}
