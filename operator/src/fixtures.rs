//! Test fixtures: a small topology of every kind, built in code.

use api::{
    AccessControlList, AccessControlListSpec, AclRule, Attachment, Direction, DnatRule as ApiDnat,
    L4Protocol, Member as ApiMember, PortRange, RouterInterface, SessionAffinity, StaticRoute,
    Uplink, Vip as ApiVip, VirtualBridge, VirtualBridgeSpec, VirtualLoadBalancer,
    VirtualLoadBalancerSpec, VirtualRouter, VirtualRouterSpec,
};

use crate::translate::Inventory;

pub(crate) fn vbr(name: &str, subnet: &str) -> VirtualBridge {
    VirtualBridge::new(
        name,
        VirtualBridgeSpec {
            subnet: subnet.into(),
            ..Default::default()
        },
    )
}

pub(crate) fn itf(bridge: &str, ip: &str) -> RouterInterface {
    RouterInterface {
        bridge: bridge.into(),
        ip: ip.into(),
        mac: None,
        ip_v6: None,
    }
}

pub(crate) fn route(
    dst: &str,
    hop: Option<&str>,
    itf: Option<&str>,
    weight: Option<u32>,
) -> StaticRoute {
    StaticRoute {
        destination: dst.into(),
        next_hop: hop.map(Into::into),
        interface: itf.map(Into::into),
        weight,
    }
}

/// Two bridges, a router between them with an uplink, SNAT and DNAT, an LB and two ACLs.
/// Binds router `router`'s uplink to host interface `name` (`None` unbinds it): the one field
/// still refused as unsupported.
pub(crate) fn uplink_host_interface(inv: &mut Inventory, router: &str, name: Option<&str>) {
    inv.routers
        .get_mut(router)
        .expect("fixture router")
        .spec
        .uplink
        .as_mut()
        .expect("fixture uplink")
        .host_interface = name.map(Into::into);
}

pub(crate) fn topology() -> Inventory {
    let mut inv = Inventory::default();
    inv.add_bridge(vbr("blue", "10.1.0.0/24"));
    let mut red = vbr("red", "10.2.0.0/24");
    red.spec.gateway = Some("10.2.0.254".into());
    red.spec.mtu = Some(1400);
    red.spec.vlan = Some(7);
    red.spec.excluded_ips = vec!["10.2.0.9".into()];
    red.spec.subnet_v6 = Some("fd00:2::/64".into());
    inv.add_bridge(red);
    inv.add_router(VirtualRouter::new(
        "edge",
        VirtualRouterSpec {
            interfaces: vec![itf("blue", "10.1.0.1"), itf("red", "10.2.0.254")],
            routes: vec![
                route("192.168.0.0/16", Some("10.1.0.10"), None, Some(2)),
                route("192.168.0.0/16", Some("10.2.0.10"), None, Some(1)),
                route("172.16.0.0/12", None, Some("red"), None),
            ],
            uplink: Some(Uplink {
                ip: "203.0.113.2/24".into(),
                gateway: Some("203.0.113.1".into()),
                host_interface: None,
                snat: true,
                snat_addresses: vec![],
                snat_port_range: None,
            }),
            dnat: vec![ApiDnat {
                external_ip: "203.0.113.10".into(),
                internal_ip: "10.1.0.5".into(),
                protocol: Some(L4Protocol::Tcp),
                external_port: Some(80),
                internal_port: Some(8080),
            }],
        },
    ));
    inv.add_load_balancer(VirtualLoadBalancer::new(
        "web",
        VirtualLoadBalancerSpec {
            router: Some("edge".into()),
            vips: vec![ApiVip {
                ip: "10.96.0.10".into(),
                protocol: L4Protocol::Tcp,
                port: 80,
                members: vec![
                    ApiMember {
                        ip: "10.1.0.5".into(),
                        port: 8080,
                        weight: 1,
                    },
                    ApiMember {
                        ip: "10.2.0.5".into(),
                        port: 8080,
                        weight: 3,
                    },
                ],
                pods: None,
                target_port: None,
            }],
            health_check: None,
            session_affinity: SessionAffinity::ClientIp,
            session_affinity_timeout_seconds: Some(600),
        },
    ));
    let mut web = AclRule::new(api::Action::Accept);
    web.protocol = Some(api::Protocol::Tcp);
    web.destination_ports = Some(PortRange { from: 80, to: 443 });
    web.source = Some("10.0.0.0/8".into());
    web.invert_source = true;
    let mut jump = AclRule::new(api::Action::Jump);
    jump.jump_to = Some("common".into());
    inv.add_acl(AccessControlList::new(
        "web-in",
        AccessControlListSpec {
            direction: Direction::Ingress,
            attach_to: Attachment {
                bridges: vec!["blue".into()],
                routers: vec!["edge".into()],
                pods: None,
            },
            rules: vec![jump, web],
            default_action: api::DefaultAction::Drop,
        },
    ));
    let mut est = AclRule::new(api::Action::Accept);
    est.connection_state = Some(api::ConnectionState {
        established: Some(true),
        ..Default::default()
    });
    inv.add_acl(AccessControlList::new(
        "common",
        AccessControlListSpec {
            direction: Direction::Egress,
            attach_to: Attachment::default(),
            rules: vec![est],
            default_action: api::DefaultAction::Return,
        },
    ));
    inv
}
