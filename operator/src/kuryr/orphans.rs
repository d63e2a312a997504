//! Pod ports nobody will release: a Pod deleted while its node was gone gets no CNI DEL, so
//! its port, addresses, tunnel key and binding would stay in NSDB for ever. Once the node's
//! host record has expired with its agent's lease, the operator releases every pod port bound
//! to that node whose Pod no longer exists there (gone, or a new Pod of the same name on
//! another node), as the node's agent would have at DEL.
//!
//! A port whose node is alive is never touched: its agent releases it (DEL, GC). A port
//! whose Pod the API server cannot be asked about is kept until the next round.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use nsdb::pod_port::{LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use nsdb::{Host, Nsdb, PodPortRelease, Port, PortBinding};
use tracing::{debug, info, warn};

use crate::error::Error;

/// How often the ports of gone nodes are looked at.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// How long one question to the API server may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

fn nsdb_err(source: nsdb::NsdbError) -> Error {
    Error::Nsdb {
        object: "pod ports of gone nodes".into(),
        source,
    }
}

/// The pod ports (id, host, namespace, pod) bound to hosts that have no host record.
fn orphan_candidates(
    hosts: &BTreeSet<String>,
    bindings: &[PortBinding],
    ports: &BTreeMap<String, Port>,
) -> Vec<(String, String, String, String)> {
    bindings
        .iter()
        .filter(|b| !hosts.contains(&b.host))
        .filter_map(|b| {
            let p = ports.get(&b.port)?;
            Some((
                b.port.clone(),
                b.host.clone(),
                p.labels.get(LABEL_POD_NAMESPACE)?.clone(),
                p.labels.get(LABEL_POD_NAME)?.clone(),
            ))
        })
        .collect()
}

/// One round: releases the pod ports of gone nodes whose Pod is gone from that node.
/// Returns the ports released.
pub async fn sweep(nsdb: &Nsdb, client: &Client) -> Result<Vec<String>, Error> {
    let hosts: BTreeSet<String> = nsdb
        .list::<Host>()
        .await
        .map_err(nsdb_err)?
        .records
        .into_iter()
        .map(|h| h.record.id)
        .collect();
    let bindings: Vec<PortBinding> = nsdb
        .list::<PortBinding>()
        .await
        .map_err(nsdb_err)?
        .records
        .into_iter()
        .map(|b| b.record)
        .collect();
    if bindings.iter().all(|b| hosts.contains(&b.host)) {
        return Ok(Vec::new());
    }
    let ports: BTreeMap<String, Port> = nsdb
        .list::<Port>()
        .await
        .map_err(nsdb_err)?
        .records
        .into_iter()
        .map(|p| (p.record.id.clone(), p.record))
        .collect();
    let mut released = Vec::new();
    for (port, host, ns, name) in orphan_candidates(&hosts, &bindings, &ports) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = match tokio::time::timeout(API_TIMEOUT, pods.get_opt(&name)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                debug!(%port, %ns, %name, error = %e, "cannot ask for the pod of a gone node's port; next round");
                continue;
            }
            Err(_) => {
                debug!(%port, %ns, %name, "the API server did not answer; next round");
                continue;
            }
        };
        let still_there = pod
            .as_ref()
            .and_then(|p| p.spec.as_ref()?.node_name.as_deref())
            .is_some_and(|n| n == host);
        if still_there {
            continue;
        }
        match nsdb.release_pod_port(&port, &host).await {
            Ok(PodPortRelease::Removed(_)) => {
                info!(%port, %host, pod = %format!("{ns}/{name}"), "released the port of a pod deleted while its node was gone");
                released.push(port);
            }
            Ok(PodPortRelease::Absent | PodPortRelease::NotOurs(_)) => {}
            Err(e) => {
                warn!(%port, %host, error = %nsdb::error::chain(&e), "cannot release a gone node's pod port; next round")
            }
        }
    }
    Ok(released)
}

/// Runs [`sweep`] every [`INTERVAL`] until the task is dropped.
pub async fn run(client: Client, nsdb: Nsdb) -> Result<(), Error> {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&nsdb, &client).await {
            warn!(error = %nsdb::error::chain(&e), "looking for the pod ports of gone nodes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, pod: Option<(&str, &str)>) -> Port {
        let mut p = Port {
            id: id.into(),
            device: nsdb::DeviceRef::Bridge("vbr:b".into()),
            kind: nsdb::PortKind::Exterior,
            mac: nsdb::MacAddr([2, 0, 0, 0, 0, 1]),
            addresses: vec![],
            tunnel_key: 1,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: Default::default(),
            namespace_labels: Default::default(),
            named_ports: vec![],
        };
        if let Some((ns, name)) = pod {
            p.labels.insert(LABEL_POD_NAMESPACE.into(), ns.into());
            p.labels.insert(LABEL_POD_NAME.into(), name.into());
        }
        p
    }

    fn bind(port: &str, host: &str) -> PortBinding {
        PortBinding {
            port: port.into(),
            host: host.into(),
            vport: format!("wf{port}"),
        }
    }

    #[test]
    fn only_pod_ports_of_hosts_without_a_record_are_candidates() {
        let hosts = BTreeSet::from(["alive".to_owned()]);
        let ports: BTreeMap<String, Port> = [
            port("a", Some(("x", "pa"))),
            port("b", Some(("x", "pb"))),
            port("node", None),
        ]
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect();
        let bindings = [bind("a", "alive"), bind("b", "gone"), bind("node", "gone")];
        assert_eq!(
            orphan_candidates(&hosts, &bindings, &ports),
            [("b".into(), "gone".into(), "x".into(), "pb".into())]
        );
    }
}
