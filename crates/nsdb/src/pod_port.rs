//! A pod's port, written whole: the IP lease (IPv4, and IPv6 where the bridge has a v6
//! subnet), the tunnel key, the `Port` record and its binding to the host go to etcd in one
//! transaction, and leave it in one. A crash between two writes cannot leave a lease without
//! a port or a port without a binding, and of two agents racing for an address or a key
//! exactly one wins it.
//!
//! The caller names the port (the CNI plugin derives the id from the container and its
//! interface), so a retried allocation finds what the first one wrote instead of taking a
//! second address.
//!
//! A pod's identity ([`PodIdentity`]: what NetworkPolicy selectors read) is part of that
//! first write, and [`Nsdb::update_port_identity`] keeps it in step with the pod afterwards.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::future::try_join_all;
use futures::try_join;
use ipnet::IpNet;
use tracing::debug;

use crate::alloc::{IpFamily, MAX_ATTEMPTS, PoolSource, RELOAD_AFTER_CONFLICTS, Space};
use crate::client::{Nsdb, Versioned};
use crate::error::{NsdbError, Result};
use crate::keys;
use crate::records::{
    Bridge, DeviceRef, IpLease, MacAddr, NamedPort, Port, PortBinding, PortKind, Record,
    TunnelKeyAlloc,
};
use crate::tunnel_key;

/// How often [`Nsdb::update_port_identity`] reads and writes again after losing a race.
const IDENTITY_ATTEMPTS: u32 = 8;

/// What a pod's port is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPortRequest {
    /// The port id; also the owner of its lease(s) and tunnel key.
    pub port: String,
    /// The bridge, as the caller knows it (an agent: from its watch cache). Its subnets
    /// and gateway shape the port; the transaction requires the bridge to exist still.
    pub bridge: Bridge,
    /// The host the port is bound to, and the vport (host end of the pod's veth) there.
    pub host: String,
    pub vport: String,
    /// Labels of the port (who it belongs to).
    pub labels: BTreeMap<String, String>,
}

/// What [`crate::PortSelector`]s pick a pod's port by: its pod's labels, its namespace's
/// labels and its pod's named container ports. They are written with the port, in its one
/// transaction, so that a NetworkPolicy that isolates the pod holds from its first packet,
/// and kept in step afterwards by [`Nsdb::update_port_identity`].
///
/// Apart from [`PodPortRequest`] so that a port that is no pod's (the node's own) names none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodIdentity {
    /// The pod's labels. They go on the port next to Weft's own labels, which they never
    /// replace: see [`merge_pod_labels`].
    pub labels: BTreeMap<String, String>,
    /// The namespace's labels, with [`crate::LABEL_NAMESPACE_NAME`]; empty for no pod.
    pub namespace_labels: BTreeMap<String, String>,
    /// The named ports of the pod's containers.
    pub named_ports: Vec<NamedPort>,
}

impl PodIdentity {
    /// `port` with this identity: Weft's own labels of `port` and this pod's labels
    /// ([`merge_pod_labels`]), these namespace labels, these named ports (sorted, each once).
    pub fn applied_to(&self, port: &Port) -> Port {
        let own: BTreeMap<String, String> = port
            .labels
            .iter()
            .filter(|(k, _)| is_weft_label(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Port {
            labels: merge_pod_labels(&own, &self.labels),
            namespace_labels: self.namespace_labels.clone(),
            named_ports: self.sorted_named_ports(),
            ..port.clone()
        }
    }

    fn sorted_named_ports(&self) -> Vec<NamedPort> {
        let mut v = self.named_ports.clone();
        v.sort();
        v.dedup();
        v
    }
}

/// The domain of Weft's own labels on a port (`weft.dev/...`, also `<sub>.weft.dev/...`):
/// who the port belongs to and what it is for.
pub const WEFT_LABEL_DOMAIN: &str = "weft.dev";

/// The label of a pod's port naming the pod's namespace; with [`LABEL_POD_NAME`] it ties the
/// port to its Kubernetes Pod.
pub const LABEL_POD_NAMESPACE: &str = "weft.dev/pod-namespace";
/// The label of a pod's port naming the pod.
pub const LABEL_POD_NAME: &str = "weft.dev/pod-name";

/// Whether `key` is in Weft's label domain ([`WEFT_LABEL_DOMAIN`]).
pub fn is_weft_label(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, _)| {
        prefix == WEFT_LABEL_DOMAIN
            || prefix
                .strip_suffix(WEFT_LABEL_DOMAIN)
                .is_some_and(|p| p.ends_with('.'))
    })
}

/// The labels of a pod's port: `own` (Weft's bookkeeping), and every label of `pod` that is
/// neither in Weft's domain nor a key of `own`. A pod label in Weft's domain is dropped
/// rather than written: a pod that labelled itself `weft.dev/role: node` would otherwise
/// pass as a node's port through the NetworkPolicy isolation of the pods of its node
/// ([`crate::is_node_port`]), and one labelled `weft.dev/host` would misname its host.
pub fn merge_pod_labels(
    own: &BTreeMap<String, String>,
    pod: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = own.clone();
    for (k, v) in pod {
        if !is_weft_label(k) && !own.contains_key(k) {
            labels.insert(k.clone(), v.clone());
        }
    }
    labels
}

/// What [`Nsdb::update_port_identity`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityUpdate {
    /// The port was written with the identity; `version` is its new version.
    Updated { version: i64 },
    /// The port had the identity already: nothing was written.
    Unchanged,
    /// There is no such port.
    Absent,
}

/// A pod's port as NSDB holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub port: Port,
    pub binding: PortBinding,
    /// The bridge the port is on, as read when the port was allocated or found.
    pub bridge: Bridge,
    /// True if this call wrote the port; false if it was there already (a retry).
    pub created: bool,
}

impl PodPort {
    /// The port's address of `family`, with the prefix length of the bridge's subnet.
    pub fn address(&self, family: IpFamily) -> Option<IpNet> {
        self.port.addresses.iter().find_map(|a| {
            let (ip, len) = match (family, a.addr()) {
                (IpFamily::V4, ip @ IpAddr::V4(_)) => (ip, self.bridge.subnet_v4?.prefix_len()),
                (IpFamily::V6, ip @ IpAddr::V6(_)) => (ip, self.bridge.subnet_v6?.prefix_len()),
                _ => return None,
            };
            IpNet::new(ip, len).ok()
        })
    }
}

/// What [`Nsdb::release_pod_port`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPortRelease {
    /// The port, its binding, leases and tunnel key were deleted.
    Removed(Port),
    /// There was no such port.
    Absent,
    /// The port is bound to another host (or not bound by this host's vport) and was left.
    NotOurs(PortBinding),
}

impl Nsdb {
    /// Allocates a pod's port on `req.bridge`: free addresses, a free tunnel key of type
    /// [`tunnel_key::TYPE_PORT`], the `Port` (MAC derived from its id, its addresses as
    /// host routes) and the binding to `req.host`/`req.vport`, in one transaction.
    ///
    /// If the port exists and is bound to the same host and vport, returns it unchanged
    /// (`created` false). If it exists otherwise, fails with
    /// [`NsdbError::PortAlreadyBound`] (bound elsewhere) or [`NsdbError::VersionConflict`]
    /// (an unbound port of that id that this call did not make).
    pub async fn allocate_pod_port(&self, req: &PodPortRequest) -> Result<PodPort> {
        self.allocate_pod_port_with(req, &PodIdentity::default())
            .await
    }

    /// [`Nsdb::allocate_pod_port`], with the pod's identity on the port, written in the same
    /// transaction: its labels merged into `req.labels` ([`merge_pod_labels`]), its namespace
    /// labels and its named ports. A retry that finds the port returns it as it is: what
    /// changed since its first write is the caller's to bring up to date
    /// ([`Nsdb::update_port_identity`]).
    pub async fn allocate_pod_port_with(
        &self,
        req: &PodPortRequest,
        pod: &PodIdentity,
    ) -> Result<PodPort> {
        keys::validate_id(crate::keys::Kind::Port, &req.port)?;
        let bridge = &req.bridge;
        // A port that exists already (a retry), or a bridge deleted meanwhile, makes the
        // transaction fail, and is told apart then: the common case is one round trip.
        let mut families = Vec::new();
        if bridge.subnet_v4.is_some() {
            families.push((IpFamily::V4, Space::for_bridge(bridge, IpFamily::V4)?));
        }
        if bridge.subnet_v6.is_some() {
            families.push((IpFamily::V6, Space::for_bridge(bridge, IpFamily::V6)?));
        }
        if families.is_empty() {
            return Err(NsdbError::NoSubnet {
                bridge: bridge.id.clone(),
                family: "IPv4 or IPv6",
            });
        }
        let keys_space = Space::tunnel_keys(tunnel_key::TYPE_PORT);
        let mut reloaded = vec![false; families.len()];
        let mut reloaded_keys = false;
        let mut conflicts = 0u32;
        for _ in 0..MAX_ATTEMPTS {
            // One offset per pool; an error gives back what was picked so far.
            let mut picked: Vec<u128> = Vec::with_capacity(families.len());
            for (i, (_, space)) in families.iter().enumerate() {
                match self
                    .pick_free(space, PoolSource::Leases(&bridge.id), &mut reloaded[i])
                    .await
                {
                    Ok(off) => picked.push(off),
                    Err(e) => {
                        self.give_back(&families, &picked);
                        return Err(e);
                    }
                }
            }
            let keys_source = PoolSource::TunnelKeys(tunnel_key::TYPE_PORT);
            let key_off = match self
                .pick_free(&keys_space, keys_source, &mut reloaded_keys)
                .await
            {
                Ok(off) => off,
                Err(e) => {
                    self.give_back(&families, &picked);
                    return Err(e);
                }
            };
            // off <= MAX_INDEX, so it fits a u32.
            let key = tunnel_key::compose(tunnel_key::TYPE_PORT, key_off as u32)?;
            let leases: Vec<IpLease> = families
                .iter()
                .zip(&picked)
                .map(|((fam, space), off)| IpLease {
                    bridge: bridge.id.clone(),
                    ip: space.ip_at(*off, *fam),
                    owner: req.port.clone(),
                })
                .collect();
            let port = Port {
                named_ports: pod.sorted_named_ports(),
                namespace_labels: pod.namespace_labels.clone(),
                id: req.port.clone(),
                device: DeviceRef::Bridge(bridge.id.clone()),
                kind: PortKind::Exterior,
                mac: MacAddr::local_from_name(&req.port),
                addresses: leases.iter().map(|l| IpNet::from(l.ip)).collect(),
                tunnel_key: key,
                inbound_chain: None,
                outbound_chain: None,
                admin_up: true,
                labels: merge_pod_labels(&req.labels, &pod.labels),
            };
            let binding = PortBinding {
                port: req.port.clone(),
                host: req.host.clone(),
                vport: req.vport.clone(),
            };
            let alloc = TunnelKeyAlloc {
                key,
                owner: req.port.clone(),
            };
            let mut txn = self.txn().require_present::<Bridge>(&bridge.id);
            for l in &leases {
                txn = txn.create(l);
            }
            txn = txn.create(&alloc).create(&port).create(&binding);
            match txn.commit().await {
                Ok(_) => {
                    return Ok(PodPort {
                        port,
                        binding,
                        bridge: bridge.clone(),
                        created: true,
                    });
                }
                Err(NsdbError::TxnConditionFailed { .. }) => {
                    // Who got there first: the port itself (a concurrent retry), another
                    // port that took an address or the key, or the bridge's deletion. The
                    // reads go out together: one round trip.
                    let lease_ids: Vec<String> = leases.iter().map(Record::id).collect();
                    let alloc_id = alloc.id();
                    let (found, bridge_now, held, key_held) = try_join!(
                        self.existing_pod_port(req),
                        self.get::<Bridge>(&bridge.id),
                        try_join_all(lease_ids.iter().map(|id| self.get::<IpLease>(id))),
                        self.get::<TunnelKeyAlloc>(&alloc_id),
                    )?;
                    if let Some(found) = found {
                        self.give_back(&families, &picked);
                        self.unpick(&keys_space, key_off);
                        return Ok(found);
                    }
                    if bridge_now.is_none() {
                        self.give_back(&families, &picked);
                        self.unpick(&keys_space, key_off);
                        return Err(NsdbError::BridgeNotFound {
                            bridge: bridge.id.clone(),
                        });
                    }
                    for (((_, space), off), lease) in families.iter().zip(&picked).zip(&held) {
                        if lease.is_some() {
                            self.skip_ahead(space, *off);
                        } else {
                            self.unpick(space, *off);
                        }
                    }
                    if key_held.is_some() {
                        self.skip_ahead(&keys_space, key_off);
                    } else {
                        self.unpick(&keys_space, key_off);
                    }
                    debug!(port = %req.port, "an address or the tunnel key was taken meanwhile");
                    conflicts += 1;
                    if conflicts.is_multiple_of(RELOAD_AFTER_CONFLICTS) {
                        for (_, space) in &families {
                            self.load_pool(space, PoolSource::Leases(&bridge.id))
                                .await?;
                        }
                        self.load_pool(&keys_space, keys_source).await?;
                    }
                }
                Err(e) => {
                    self.give_back(&families, &picked);
                    self.unpick(&keys_space, key_off);
                    return Err(e);
                }
            }
        }
        Err(NsdbError::Contended {
            pool: format!("addresses of {}", bridge.id),
            attempts: MAX_ATTEMPTS,
        })
    }

    fn give_back(&self, families: &[(IpFamily, Space)], picked: &[u128]) {
        for ((_, space), off) in families.iter().zip(picked) {
            self.unpick(space, *off);
        }
    }

    /// The port `req` names if it exists: `Some` when it is bound as `req` asks, an error
    /// when it is bound elsewhere or not bound.
    async fn existing_pod_port(&self, req: &PodPortRequest) -> Result<Option<PodPort>> {
        let bridge = &req.bridge;
        // The port first, then its binding: a transaction writes both, and a read that
        // starts after the port is seen sees the binding too. Read at once, the binding's
        // read could come before a concurrent allocation's commit and the port's after it.
        let Some(Versioned { record: port, .. }) = self.get::<Port>(&req.port).await? else {
            return Ok(None);
        };
        let binding = match self.get::<PortBinding>(&req.port).await? {
            Some(Versioned { record, .. })
                if record.host == req.host && record.vport == req.vport =>
            {
                record
            }
            Some(Versioned { record, .. }) => {
                return Err(NsdbError::PortAlreadyBound {
                    port: record.port,
                    host: record.host,
                    vport: record.vport,
                });
            }
            None => {
                return Err(NsdbError::VersionConflict {
                    key: port.key(),
                    expected: 0,
                });
            }
        };
        if port.device != DeviceRef::Bridge(bridge.id.clone()) {
            return Err(NsdbError::VersionConflict {
                key: port.key(),
                expected: 0,
            });
        }
        Ok(Some(PodPort {
            port,
            binding,
            bridge: bridge.clone(),
            created: false,
        }))
    }

    /// Sets a pod port's identity ([`PodIdentity::applied_to`]: its pod labels next to Weft's
    /// own, its namespace labels, its named ports) by compare-and-swap on the version read,
    /// reading again after a lost race. Writes only when something differs, so that a caller
    /// that keeps ports in step with their pods makes no write for an unchanged pod.
    pub async fn update_port_identity(
        &self,
        port: &str,
        pod: &PodIdentity,
    ) -> Result<IdentityUpdate> {
        keys::validate_id(crate::keys::Kind::Port, port)?;
        for _ in 0..IDENTITY_ATTEMPTS {
            let Some(cur) = self.get::<Port>(port).await? else {
                return Ok(IdentityUpdate::Absent);
            };
            let next = pod.applied_to(&cur.record);
            if next == cur.record {
                return Ok(IdentityUpdate::Unchanged);
            }
            match self.put_if_version(&next, cur.version).await {
                Ok(version) => return Ok(IdentityUpdate::Updated { version }),
                Err(NsdbError::VersionConflict { .. }) => {
                    debug!(port, "the port changed meanwhile, reading it again");
                }
                Err(e) => return Err(e),
            }
        }
        Err(NsdbError::Contended {
            pool: format!("identity of {port}"),
            attempts: IDENTITY_ATTEMPTS,
        })
    }

    /// Releases a pod's port bound to `host`: deletes the port, its binding, the leases it
    /// owns and its tunnel key in one transaction, each at the version read. A port bound
    /// elsewhere is left alone; no port is [`PodPortRelease::Absent`].
    pub async fn release_pod_port(&self, port: &str, host: &str) -> Result<PodPortRelease> {
        keys::validate_id(crate::keys::Kind::Port, port)?;
        for _ in 0..8 {
            let Some(cur) = self.get::<Port>(port).await? else {
                return Ok(PodPortRelease::Absent);
            };
            // What the port names is read in one round trip.
            let bridge = cur.record.device.id().to_owned();
            let lease_ids: Vec<String> = cur
                .record
                .addresses
                .iter()
                .map(|a| keys::lease_id(&bridge, a.addr()))
                .collect();
            let key_id = keys::tunnel_key_id(cur.record.tunnel_key);
            let (binding, leases, key) = try_join!(
                self.get::<PortBinding>(port),
                try_join_all(lease_ids.iter().map(|id| self.get::<IpLease>(id))),
                self.get::<TunnelKeyAlloc>(&key_id),
            )?;
            let mut txn = self.txn().delete_if_version::<Port>(port, cur.version);
            match binding {
                Some(b) if b.record.host != host => return Ok(PodPortRelease::NotOurs(b.record)),
                Some(b) => txn = txn.delete_if_version::<PortBinding>(port, b.version),
                None => {}
            }
            for (id, lease) in lease_ids.iter().zip(leases) {
                if let Some(l) = lease
                    && l.record.owner == port
                {
                    txn = txn.delete_if_version::<IpLease>(id, l.version);
                }
            }
            if let Some(k) = &key
                && k.record.owner == port
            {
                txn = txn.delete_if_version::<TunnelKeyAlloc>(&key_id, k.version);
            }
            match txn.commit().await {
                Ok(_) => {
                    self.forget_leases(&bridge);
                    if key.is_some_and(|k| k.record.owner == port) {
                        let space = Space::tunnel_keys(tunnel_key::key_type(cur.record.tunnel_key));
                        self.unpick(&space, u128::from(tunnel_key::index(cur.record.tunnel_key)));
                    }
                    return Ok(PodPortRelease::Removed(cur.record));
                }
                Err(NsdbError::TxnConditionFailed { .. }) => {
                    debug!(port, "the port changed meanwhile, reading it again");
                }
                Err(e) => return Err(e),
            }
        }
        Err(NsdbError::Contended {
            pool: format!("release of {port}"),
            attempts: 8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Protocol;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn weft_labels_are_those_of_its_domain() {
        for k in ["weft.dev/host", "weft.dev/role", "x.weft.dev/y"] {
            assert!(is_weft_label(k), "{k}");
        }
        for k in [
            "app",
            "weft.dev",
            "notweft.dev/x",
            "example.com/weft.dev",
            "weft.dev.io/x",
        ] {
            assert!(!is_weft_label(k), "{k}");
        }
    }

    #[test]
    fn pod_labels_never_replace_or_add_weft_labels() {
        let own = labels(&[("weft.dev/host", "n1"), ("weft.dev/pod-name", "web")]);
        let pod = labels(&[
            ("app", "web"),
            ("weft.dev/host", "n2"),
            ("weft.dev/role", "node"),
            ("team.weft.dev/x", "y"),
        ]);
        assert_eq!(
            merge_pod_labels(&own, &pod),
            labels(&[
                ("app", "web"),
                ("weft.dev/host", "n1"),
                ("weft.dev/pod-name", "web"),
            ])
        );
    }

    #[test]
    fn an_identity_replaces_the_pod_labels_and_keeps_weft_labels() {
        let port = Port {
            id: "p".into(),
            device: DeviceRef::Bridge("b".into()),
            kind: PortKind::Exterior,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            addresses: Vec::new(),
            tunnel_key: 1,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: labels(&[("weft.dev/host", "n1"), ("app", "old"), ("gone", "x")]),
            namespace_labels: BTreeMap::new(),
            named_ports: Vec::new(),
        };
        let http = NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let dns = NamedPort {
            name: "dns".into(),
            protocol: Protocol::Udp,
            port: 53,
        };
        let id = PodIdentity {
            labels: labels(&[("app", "new")]),
            namespace_labels: labels(&[(crate::LABEL_NAMESPACE_NAME, "ns")]),
            named_ports: vec![http.clone(), dns.clone(), http.clone()],
        };
        let p = id.applied_to(&port);
        assert_eq!(p.labels, labels(&[("weft.dev/host", "n1"), ("app", "new")]));
        assert_eq!(p.namespace_labels, id.namespace_labels);
        assert_eq!(p.named_ports, vec![dns, http], "sorted, each once");
        assert_eq!(id.applied_to(&p), p, "applying it again changes nothing");
    }
}
