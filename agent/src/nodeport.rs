//! The node's own port into the virtual network (`--node-bridge`), as Antrea's gateway and
//! ovn-kubernetes' management port are: the agent adds an internal vport, `weft-node`, whose
//! interface in the node's namespace gets the MAC and the address of a port of this host on
//! the node bridge. Through it:
//!
//! - the node reaches every pod on the bridges of the node bridge's router: host routes to
//!   their subnets go via the router's address on the node bridge (kubelet's probes come
//!   from the node's address on the node bridge);
//! - pods reach the node's underlay address: a route on that router sends it to the node's
//!   port.
//!
//! Everything is derived from NSDB and the agent's settings, and applied again every few
//! seconds, so a change of the topology (a bridge joining the router) or an interface
//! changed by hand converges without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipnet::{IpNet, Ipv4Net};
use nsdb::{
    Bridge, DeviceRef, IpFamily, LABEL_ROLE, PodPort, PodPortRequest, Port, PortKind, Route,
    Snapshot,
};
use odp::dpif::VportType;
use tracing::{info, warn};

use crate::cni::{LABEL_HOST, NSDB_TIMEOUT};
use crate::podnet::{self, NodeInterface};
use crate::service::Agent;

/// The internal vport, and the node's interface, of the node's port.
pub const NODE_VPORT: &str = "weft-node";

/// How often the node's port is checked and repaired.
const INTERVAL: Duration = Duration::from_secs(2);

/// The NSDB id of `host`'s node port, and of the route back to it.
pub fn port_id(host: &str) -> String {
    format!("node-{host}")
}

/// What the node's port needs from the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The node bridge.
    pub bridge: Bridge,
    /// The router joined to the node bridge, if any.
    pub router: Option<RouterSide>,
}

/// The node bridge's router, seen from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSide {
    pub router: String,
    /// The router's port on the node bridge, and its IPv4 address there (the next hop of the
    /// node's host routes).
    pub port: String,
    pub address: Ipv4Addr,
    /// The IPv4 subnets of the router's other bridges.
    pub subnets: BTreeSet<Ipv4Net>,
}

/// The plan for the node bridge named `node_bridge` (its id or its name); `None` while it
/// is not in the snapshot.
pub fn plan(snap: &Snapshot, node_bridge: &str) -> Option<Plan> {
    let bridge = snap
        .list::<Bridge>()
        .find(|b| b.id == node_bridge || b.name == node_bridge)?
        .clone();
    let peer_of = |p: &Port| match &p.kind {
        PortKind::Interior { peer } => snap.get::<Port>(peer),
        _ => None,
    };
    // The first router port (by id, for a stable answer) patched to the node bridge.
    let mut router_ports: Vec<&Port> = snap
        .list::<Port>()
        .filter(|p| p.device == DeviceRef::Bridge(bridge.id.clone()))
        .filter_map(&peer_of)
        .filter(|rp| matches!(rp.device, DeviceRef::Router(_)))
        .collect();
    router_ports.sort_by(|a, b| a.id.cmp(&b.id));
    let router = router_ports.first().and_then(|rp| {
        let address = rp.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })?;
        let subnets = snap
            .list::<Port>()
            .filter(|p| p.device == rp.device)
            .filter_map(&peer_of)
            .filter_map(|bp| match &bp.device {
                DeviceRef::Bridge(b) if *b != bridge.id => snap.get::<Bridge>(b),
                _ => None,
            })
            .filter_map(|b| b.subnet_v4)
            .collect();
        Some(RouterSide {
            router: rp.device.id().to_owned(),
            port: rp.id.clone(),
            address,
            subnets,
        })
    });
    Some(Plan { bridge, router })
}

/// The route on the node bridge's router that sends this host's underlay address to its
/// node port.
pub fn route_back(plan: &Plan, host: &str, underlay: IpAddr, node_ip: IpAddr) -> Option<Route> {
    let r = plan.router.as_ref()?;
    Some(Route {
        id: port_id(host),
        router: r.router.clone(),
        dst: IpNet::from(underlay),
        next_hop: Some(node_ip),
        port: r.port.clone(),
        weight: 1,
    })
}

/// Keeps the node's port in place for as long as the agent runs.
pub async fn run(agent: Arc<Agent>, node_bridge: String) {
    let mut port: Option<PodPort> = None;
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        let outcome = ensure(&agent, &node_bridge, &mut port).await;
        let said = match &outcome {
            Ok(Some(addr)) => format!("ready at {addr}"),
            Ok(None) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        if last.as_deref() != Some(said.as_str()) {
            match &outcome {
                Ok(Some(addr)) => {
                    info!(bridge = %node_bridge, address = %addr, vport = NODE_VPORT, "node port ready")
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(bridge = %node_bridge, error = format!("{e:#}"), "node port not ready; retrying")
                }
            }
            last = Some(said);
        }
    }
}

/// One pass: the vport, the NSDB port, the interface and its routes, the route back.
/// Returns the node's address when all of it is in place, `None` if nothing changed.
async fn ensure(
    agent: &Agent,
    node_bridge: &str,
    port: &mut Option<PodPort>,
) -> anyhow::Result<Option<Ipv4Net>> {
    let snap = agent.topo.load();
    let Some(plan) = plan(&snap.records, node_bridge) else {
        anyhow::bail!("the node bridge {node_bridge:?} is not in NSDB (yet)");
    };
    let host = &agent.settings.host;
    // The vport first: the topology compiled from the binding then has it local.
    agent
        .add_vport(NODE_VPORT, VportType::Internal)
        .await
        .with_context(|| format!("adding the internal vport {NODE_VPORT}"))?;
    if port.as_ref().is_none_or(|p| p.bridge.id != plan.bridge.id) {
        let req = PodPortRequest {
            port: port_id(host),
            bridge: plan.bridge.clone(),
            host: host.clone(),
            vport: NODE_VPORT.to_owned(),
            labels: BTreeMap::from([
                (LABEL_HOST.to_owned(), host.clone()),
                (LABEL_ROLE.to_owned(), nsdb::ROLE_NODE.to_owned()),
            ]),
        };
        let p = tokio::time::timeout(NSDB_TIMEOUT, agent.nsdb.allocate_pod_port(&req))
            .await
            .map_err(|_| anyhow::anyhow!("NSDB did not answer within {NSDB_TIMEOUT:?}"))?
            .with_context(|| format!("allocating the node port on {}", plan.bridge.name))?;
        *port = Some(p);
    }
    let p = port.as_ref().expect("allocated above");
    let Some(IpNet::V4(address)) = p.address(IpFamily::V4) else {
        anyhow::bail!("the node bridge {} has no IPv4 subnet", plan.bridge.name);
    };
    let want = NodeInterface {
        name: NODE_VPORT.to_owned(),
        mac: p.port.mac.octets(),
        address,
        mtu: u32::from(agent.settings.pod_mtu),
        routes: plan.router.as_ref().map_or_else(BTreeMap::new, |r| {
            r.subnets.iter().map(|s| (*s, r.address)).collect()
        }),
    };
    podnet::configure_node_interface(&want)
        .await
        .with_context(|| format!("configuring {NODE_VPORT}"))?;
    if let Some(route) = route_back(
        &plan,
        host,
        agent.settings.underlay_ip,
        IpAddr::V4(address.addr()),
    ) && snap.records.get::<Route>(&route.id) != Some(&route)
    {
        tokio::time::timeout(NSDB_TIMEOUT, agent.nsdb.put(&route))
            .await
            .map_err(|_| anyhow::anyhow!("NSDB did not answer within {NSDB_TIMEOUT:?}"))?
            .with_context(|| format!("writing the route {} back to this node", route.id))?;
    }
    Ok(Some(address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsdb::AnyRecord;
    use sim::fixtures::TopoBuilder;

    fn snapshot(b: TopoBuilder) -> Snapshot {
        let records = b
            .records
            .to_records()
            .into_iter()
            .map(|r| (r, 1))
            .collect::<Vec<(AnyRecord, i64)>>();
        Snapshot::from_records(1, records)
    }

    fn topology() -> TopoBuilder {
        sim::Topology::test()
            .bridge("join")
            .bridge("blue")
            .bridge("green")
            .bridge("alone")
            .router("r1")
            .link("r1", "join", "100.64.0.1/24")
            .link("r1", "blue", "10.20.1.1/24")
            .link("r1", "green", "10.20.2.1/24")
    }

    fn with_subnets(b: TopoBuilder) -> TopoBuilder {
        b.subnet("join", "100.64.0.0/24", None)
            .subnet("blue", "10.20.1.0/24", None)
            .subnet("green", "10.20.2.0/24", None)
            .subnet("alone", "10.30.0.0/24", None)
    }

    #[test]
    fn the_node_routes_to_the_bridges_of_the_node_bridges_router_only() {
        let snap = snapshot(with_subnets(topology()));
        let p = plan(&snap, "join").expect("a plan");
        let r = p.router.as_ref().expect("r1 joins the node bridge");
        assert_eq!(r.router, "r1");
        assert_eq!(r.address, "100.64.0.1".parse::<Ipv4Addr>().unwrap());
        let subnets: Vec<String> = r.subnets.iter().map(ToString::to_string).collect();
        assert_eq!(
            subnets,
            ["10.20.1.0/24", "10.20.2.0/24"],
            "the node bridge itself and a bridge on no router are not routed"
        );
        let back = route_back(
            &p,
            "h1",
            "192.168.50.1".parse().unwrap(),
            "100.64.0.11".parse().unwrap(),
        )
        .expect("a route back");
        assert_eq!(back.id, "node-h1");
        assert_eq!(back.router, "r1");
        assert_eq!(back.port, r.port);
        assert_eq!(back.dst.to_string(), "192.168.50.1/32");
        assert_eq!(back.next_hop, Some("100.64.0.11".parse().unwrap()));
    }

    #[test]
    fn a_missing_or_unrouted_node_bridge_plans_accordingly() {
        let snap = snapshot(with_subnets(topology()));
        assert!(plan(&snap, "nope").is_none(), "no such bridge: no plan yet");
        let alone = plan(&snap, "alone").expect("the bridge exists");
        assert!(alone.router.is_none(), "no router: no host routes");
        assert!(
            route_back(
                &alone,
                "h1",
                "192.168.50.1".parse().unwrap(),
                "10.30.0.5".parse().unwrap()
            )
            .is_none()
        );
    }
}
