//! Flow invalidation: which simulation tags (`sim::Tag`) an NSDB record change affects, and
//! which changes no tag can cover (the agent then deletes every flow).
//!
//! The mapping follows the table in `crates/sim/src/tag.rs` and what the walk in
//! `crates/sim/src/walk.rs` actually tags. Old and new values both contribute: a flow built
//! from the old record carries the old record's tags, and a flow that missed a lookup carries
//! the tag of the entry the new record adds.
//!
//! | change | tags | why |
//! |---|---|---|
//! | bridge, router | `device(id)` | every walk through a device tags it first |
//! | router's SNAT uplink, or its DNAT rules appearing/going | also `port(uplink)` (with a view, every uplink of the router) | the uplink's first-pass `ct()` flow is tagged by the port alone |
//! | port | `port(id)`, `device(its device)`; bridge port: `mac(bridge, mac)`, `ip(bridge, a)`; router port: `ip(router, a)`; interior: `port(peer)` and, with a [`RecordView`], `device`/`mac`/`ip` of the peer's device | the device tag is conservative: a bridge's flood list and MAC/ARP tables change, and flood flows carry only the bridge's tag and the flooded ports' tags |
//! | port binding | `port(port)`, `host(old/new host)`, with a view `device(port's device)` | the binding moves the port (local, remote, unbound) and the bridge's flood list |
//! | route | `route(id)`, `device(router)` | a new route changes the LPM result of flows tagged by the router |
//! | chain | `chain(id)`, and with a view the tags of what refers to it | a chain created after its referrers (ports, devices, jumping chains) was not evaluated, so no flow carries its tag |
//! | chain attached to pods (created, deleted, its attachment or conntrack use changed) | also, with a view, `port(p)` of every pod port its old or new selector picks | flows through a pod that was not yet isolated evaluated no chain; the pod's conntrack passes change with its isolation |
//! | port (with a view) | also `chain(c)` of every chain with a rule whose selector picks the old or new port (for a node's own port, of every ingress allow-list), and `lb(l)` of every load balancer with a VIP whose member selector picks it | a rule's address set follows the pods' labels and addresses, and a flow delivered from another host carries the chain's tag, not the sender's |
//! | load balancer | `lb(id)`, `device(router)` or [`Tag::global_vips`] | VIP lookups tag the LB on a hit and the router or the global table on any lookup |
//! | host | `host(id)`, with a view `port(p)` of the ports bound to it | flows to a port on an unknown host dropped with the port's tag only |
//! | IP lease, tunnel-key allocation | nothing | the simulation does not read them |
//! | a local vport added or removed ([`tags_of_vport`]) | `port(bound port)`, `device(its device)` | the port becomes local or detached, and the bridge's flood list changes |
//!
//! Changes no tag covers ([`needs_full_flush`]):
//! - the first VIP attached to no router appears: before it, no flow consulted the global VIP
//!   table, so none carries [`Tag::global_vips`] (crates/sim/README.md);
//! - the topology becomes stateful or stops being so (the first VIP or DNAT rule appears, the
//!   last goes): every port's delivery stage gains or loses its `ct()` pass;
//! - a chain starts or stops matching on connection state while another chain jumps to it:
//!   the ports using it through the jump change their first pass, whose flows carry only the
//!   port's tag, and the jumping chains' referrers are not followed.

use std::collections::{BTreeSet, HashSet};

use nsdb::{
    AnyRecord, Chain, DeviceRef, LoadBalancer, Port, PortBinding, PortKind, Router, RuleAction,
    Snapshot, Update,
};
use sim::{RecordSet, Tag};

/// Read access to the records around a change, to follow references between records
/// (interior peers, a binding's port, a chain's referrers, a host's bindings).
pub trait RecordView {
    /// The port with this id, if any.
    fn port(&self, id: &str) -> Option<&Port>;
    /// Calls `f` for every record the simulation reads.
    fn for_each(&self, f: &mut dyn FnMut(Ref<'_>));
}

/// A borrowed record of a kind that can refer to another.
#[derive(Debug, Clone, Copy)]
pub enum Ref<'a> {
    Port(&'a Port),
    Binding(&'a PortBinding),
    Chain(&'a Chain),
    Bridge(&'a nsdb::Bridge),
    Router(&'a Router),
    LoadBalancer(&'a LoadBalancer),
}

impl RecordView for RecordSet {
    fn port(&self, id: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.id == id)
    }
    fn for_each(&self, f: &mut dyn FnMut(Ref<'_>)) {
        self.ports.iter().for_each(|r| f(Ref::Port(r)));
        self.bindings.iter().for_each(|r| f(Ref::Binding(r)));
        self.chains.iter().for_each(|r| f(Ref::Chain(r)));
        self.bridges.iter().for_each(|r| f(Ref::Bridge(r)));
        self.routers.iter().for_each(|r| f(Ref::Router(r)));
        self.load_balancers
            .iter()
            .for_each(|r| f(Ref::LoadBalancer(r)));
    }
}

impl RecordView for Snapshot {
    fn port(&self, id: &str) -> Option<&Port> {
        self.get::<Port>(id)
    }
    fn for_each(&self, f: &mut dyn FnMut(Ref<'_>)) {
        for (_, e) in self.iter() {
            match &*e.record {
                AnyRecord::Port(r) => f(Ref::Port(r)),
                AnyRecord::PortBinding(r) => f(Ref::Binding(r)),
                AnyRecord::Chain(r) => f(Ref::Chain(r)),
                AnyRecord::Bridge(r) => f(Ref::Bridge(r)),
                AnyRecord::Router(r) => f(Ref::Router(r)),
                AnyRecord::LoadBalancer(r) => f(Ref::LoadBalancer(r)),
                _ => {}
            }
        }
    }
}

/// Two views read as one (the states before and after a change): lookups prefer the second.
#[derive(Debug, Clone, Copy)]
pub struct Both<'a, A: ?Sized, B: ?Sized>(pub &'a A, pub &'a B);

impl<A: RecordView + ?Sized, B: RecordView + ?Sized> RecordView for Both<'_, A, B> {
    fn port(&self, id: &str) -> Option<&Port> {
        self.1.port(id).or_else(|| self.0.port(id))
    }
    fn for_each(&self, f: &mut dyn FnMut(Ref<'_>)) {
        self.0.for_each(f);
        self.1.for_each(f);
    }
}

/// A view with no records: only what the changed record itself says.
struct Nothing;

impl RecordView for Nothing {
    fn port(&self, _: &str) -> Option<&Port> {
        None
    }
    fn for_each(&self, _: &mut dyn FnMut(Ref<'_>)) {}
}

/// The tags of the flows one record change (`old` to `new`; `None` = absent) can affect,
/// from the record alone. References to other records (an interior port's peer device, a
/// binding's bridge, a chain's referrers, a host's bound ports) need
/// [`tags_of_change_in`]; the agent uses that form through [`tags_of_update`].
pub fn tags_of_change(old: Option<&AnyRecord>, new: Option<&AnyRecord>, out: &mut Vec<Tag>) {
    tags_of_change_in(&Nothing, old, new, out);
}

/// [`tags_of_change`], following references through `view` (give it the records before and
/// after the change, for example with [`Both`]).
pub fn tags_of_change_in(
    view: &dyn RecordView,
    old: Option<&AnyRecord>,
    new: Option<&AnyRecord>,
    out: &mut Vec<Tag>,
) {
    if old.is_some() && old == new {
        return;
    }
    let created_or_deleted = old.is_none() || new.is_none();
    for r in [old, new].into_iter().flatten() {
        match r {
            AnyRecord::Bridge(b) => out.push(Tag::device(&b.id)),
            AnyRecord::Router(r) => {
                out.push(Tag::device(&r.id));
                if let Some(s) = &r.snat {
                    out.push(Tag::port(&s.port));
                }
                // DNAT rules make the router's uplinks pass conntrack first; those first
                // passes carry only the uplink's tag.
                if has_dnat(old) != has_dnat(new) {
                    view.for_each(&mut |x| {
                        if let Ref::Port(p) = x
                            && p.kind == PortKind::Uplink
                            && matches!(&p.device, DeviceRef::Router(d) if *d == r.id)
                        {
                            out.push(Tag::port(&p.id));
                        }
                    });
                }
            }
            AnyRecord::Port(p) => {
                port_tags(view, p, out);
                selector_tags(view, p, out);
            }
            AnyRecord::PortBinding(b) => {
                out.push(Tag::port(&b.port));
                out.push(Tag::host(&b.host));
                if let Some(p) = view.port(&b.port) {
                    out.push(Tag::device(p.device.id()));
                }
            }
            AnyRecord::Route(r) => {
                out.push(Tag::route(&r.id));
                out.push(Tag::device(&r.router));
            }
            AnyRecord::Chain(c) => {
                out.push(Tag::chain(&c.id));
                if created_or_deleted || ct_flips(old, new) {
                    chain_referrers(view, &c.id, out);
                }
                if let Some(a) = &c.pods
                    && (created_or_deleted
                        || ct_flips(old, new)
                        || attachment_of(old) != attachment_of(new))
                {
                    attached_ports(view, &a.selector, out);
                }
            }
            AnyRecord::LoadBalancer(lb) => {
                out.push(Tag::lb(&lb.id));
                // A lookup that hits no VIP carries only the table's tag, and its result
                // changes only with the VIPs' addresses, protocols and ports: members,
                // weights, health and affinity are read behind a hit, under the LB's tag.
                if created_or_deleted || vip_keys(old) != vip_keys(new) {
                    out.push(match &lb.router {
                        Some(r) => Tag::device(r),
                        None => Tag::global_vips(),
                    });
                }
            }
            AnyRecord::Host(h) => {
                out.push(Tag::host(&h.id));
                if created_or_deleted {
                    view.for_each(&mut |x| {
                        if let Ref::Binding(b) = x
                            && b.host == h.id
                        {
                            out.push(Tag::port(&b.port));
                        }
                    });
                }
            }
            // A verdict changes which members the load balancer's VIPs choose from; the
            // buckets it moves are found by comparing the compiled tables.
            AnyRecord::MemberHealth(h) => out.push(Tag::lb(&h.lb)),
            AnyRecord::IpLease(_) | AnyRecord::TunnelKey(_) => {}
        }
    }
}

fn port_tags(view: &dyn RecordView, p: &Port, out: &mut Vec<Tag>) {
    out.push(Tag::port(&p.id));
    let dev = p.device.id();
    out.push(Tag::device(dev));
    match &p.device {
        DeviceRef::Bridge(b) => {
            out.push(Tag::mac(b, p.mac.0));
            out.extend(p.addresses.iter().map(|a| Tag::ip(b, a.addr())));
        }
        DeviceRef::Router(r) => {
            out.extend(p.addresses.iter().map(|a| Tag::ip(r, a.addr())));
        }
    }
    if let PortKind::Interior { peer } = &p.kind {
        out.push(Tag::port(peer));
        // The peer's bridge answers for this port's MAC and addresses.
        if let Some(pp) = view.port(peer) {
            let d = pp.device.id();
            out.push(Tag::device(d));
            if let DeviceRef::Bridge(b) = &pp.device {
                out.push(Tag::mac(b, p.mac.0));
                out.extend(p.addresses.iter().map(|a| Tag::ip(b, a.addr())));
            }
        }
    }
}

/// The tags of what evaluates chain `id`: ports, devices and chains that name it.
fn chain_referrers(view: &dyn RecordView, id: &str, out: &mut Vec<Tag>) {
    let names = |c: &Option<String>| c.as_deref() == Some(id);
    view.for_each(&mut |x| match x {
        Ref::Port(p) if names(&p.inbound_chain) || names(&p.outbound_chain) => {
            out.push(Tag::port(&p.id));
        }
        Ref::Bridge(b) if names(&b.inbound_chain) || names(&b.outbound_chain) => {
            out.push(Tag::device(&b.id));
        }
        Ref::Router(r) if names(&r.inbound_chain) || names(&r.outbound_chain) => {
            out.push(Tag::device(&r.id));
        }
        Ref::Chain(c) if jumps_to(c, id) => out.push(Tag::chain(&c.id)),
        _ => {}
    });
}

/// The tags of the pods a chain is attached to: a chain attached (or detached, or changed in
/// how it takes part) was not evaluated by the flows through them, which carry their tags.
fn attached_ports(view: &dyn RecordView, sel: &nsdb::PortSelector, out: &mut Vec<Tag>) {
    view.for_each(&mut |x| {
        if let Ref::Port(p) = x
            && sel.matches_port(p)
        {
            out.push(Tag::port(&p.id));
        }
    });
}

/// The tags of the chains and load balancers whose selectors a pod port's labels or addresses
/// feed: a VIP's members and a rule's address set, picked by selector, grow or shrink with
/// the port (flows delivered from
/// another host carry the chain's tag, not the sending port's). A node's own port is let
/// through the isolation of its pods without a chain saying so: every flow judged by an
/// ingress allow-list carries one of those chains' tags.
fn selector_tags(view: &dyn RecordView, p: &Port, out: &mut Vec<Tag>) {
    let node = nsdb::is_node_port(p);
    view.for_each(&mut |x| {
        if let Ref::LoadBalancer(lb) = x
            && lb.vips.iter().any(|v| {
                v.member_selector
                    .as_ref()
                    .is_some_and(|s| s.matches_port(p))
            })
        {
            out.push(Tag::lb(&lb.id));
        }
        let Ref::Chain(c) = x else { return };
        let picks = |s: &Option<nsdb::PortSelector>| s.as_ref().is_some_and(|s| s.matches_port(p));
        let isolates_ingress = c.pods.as_ref().is_some_and(|a| {
            a.direction == nsdb::PodDirection::Ingress && a.mode == nsdb::PodAttachMode::Allow
        });
        if (node && isolates_ingress)
            || c.rules
                .iter()
                .any(|r| picks(&r.src_selector) || picks(&r.dst_selector))
        {
            out.push(Tag::chain(&c.id));
        }
    });
}

fn attachment_of(r: Option<&AnyRecord>) -> Option<&nsdb::PodAttachment> {
    chain_of(r).and_then(|c| c.pods.as_ref())
}

fn jumps_to(c: &Chain, id: &str) -> bool {
    c.rules
        .iter()
        .map(|r| &r.action)
        .chain(std::iter::once(&c.default_action))
        .any(|a| matches!(a, RuleAction::Jump(t) if t == id))
}

/// Whether a chain may match on connection state: directly, or through a jump (whose
/// target's rules this record alone does not show).
fn may_use_ct(c: &Chain) -> bool {
    c.rules
        .iter()
        .any(|r| r.ct_state.is_some() || matches!(r.action, RuleAction::Jump(_)))
        || matches!(c.default_action, RuleAction::Jump(_))
}

fn chain_of(r: Option<&AnyRecord>) -> Option<&Chain> {
    match r {
        Some(AnyRecord::Chain(c)) => Some(c),
        _ => None,
    }
}

fn ct_flips(old: Option<&AnyRecord>, new: Option<&AnyRecord>) -> bool {
    chain_of(old).is_some_and(may_use_ct) != chain_of(new).is_some_and(may_use_ct)
}

/// A VIP as a table lookup finds it: address, protocol and port.
type VipKey = (std::net::IpAddr, nsdb::Protocol, u16);

/// What a VIP table lookup reads of a load balancer: its router and its VIPs' keys.
fn vip_keys(r: Option<&AnyRecord>) -> Option<(Option<&str>, Vec<VipKey>)> {
    let Some(AnyRecord::LoadBalancer(lb)) = r else {
        return None;
    };
    Some((
        lb.router.as_deref(),
        lb.vips.iter().map(|v| (v.ip, v.protocol, v.port)).collect(),
    ))
}

fn has_vips(r: Option<&AnyRecord>) -> bool {
    matches!(r, Some(AnyRecord::LoadBalancer(lb)) if !lb.vips.is_empty())
}

fn has_global_vips(r: Option<&AnyRecord>) -> bool {
    matches!(r, Some(AnyRecord::LoadBalancer(lb)) if lb.router.is_none() && !lb.vips.is_empty())
}

fn has_dnat(r: Option<&AnyRecord>) -> bool {
    matches!(r, Some(AnyRecord::Router(r)) if !r.dnat.is_empty())
}

/// Whether a change, judged from the record alone, may affect flows no tag names: then the
/// agent must delete every flow. Conservative: a VIP or DNAT rule appearing or going may
/// make the whole topology (un)stateful, and a chain that starts or stops using conntrack
/// changes the first pass of its ports. [`needs_full_flush_in`] decides more precisely.
pub fn needs_full_flush(old: Option<&AnyRecord>, new: Option<&AnyRecord>) -> bool {
    has_vips(old) != has_vips(new)
        || (has_global_vips(new) && !has_global_vips(old))
        || has_dnat(old) != has_dnat(new)
        || ct_flips(old, new)
}

/// [`needs_full_flush`] with the records before and after the change: a VIP or DNAT rule
/// only forces a flush when the topology's statefulness flips (or the global VIP table
/// appears), and a chain's conntrack flip only when another chain jumps to it (direct
/// referrers are covered by [`tags_of_change_in`]).
pub fn needs_full_flush_in(
    before: &dyn RecordView,
    after: &dyn RecordView,
    old: Option<&AnyRecord>,
    new: Option<&AnyRecord>,
) -> bool {
    if old.is_some() && old == new {
        return false;
    }
    if (has_vips(old) != has_vips(new) || has_dnat(old) != has_dnat(new))
        && stateful(before) != stateful(after)
    {
        return true;
    }
    if has_global_vips(new) && !global_vips(before) {
        return true;
    }
    if ct_flips(old, new)
        && let Some(c) = chain_of(old).or(chain_of(new))
    {
        let mut jumped = false;
        Both(before, after).for_each(&mut |x| {
            if let Ref::Chain(o) = x
                && jumps_to(o, &c.id)
            {
                jumped = true;
            }
        });
        return jumped;
    }
    false
}

/// Whether any VIP or DNAT rule exists (the simulation then passes every delivery through
/// conntrack).
fn stateful(view: &dyn RecordView) -> bool {
    let mut s = false;
    view.for_each(&mut |x| match x {
        Ref::LoadBalancer(lb) if !lb.vips.is_empty() => s = true,
        Ref::Router(r) if !r.dnat.is_empty() => s = true,
        _ => {}
    });
    s
}

fn global_vips(view: &dyn RecordView) -> bool {
    let mut g = false;
    view.for_each(&mut |x| {
        if let Ref::LoadBalancer(lb) = x
            && lb.router.is_none()
            && !lb.vips.is_empty()
        {
            g = true;
        }
    });
    g
}

/// The tags a local datapath vport appearing or disappearing invalidates (the agent's own
/// change, not an NSDB one): the port bound to `vport` on `host` and its device, whose
/// flood list gains or loses the port. Empty when no binding names the vport.
pub fn tags_of_vport(view: &dyn RecordView, host: &str, vport: &str) -> Vec<Tag> {
    let mut port = None;
    view.for_each(&mut |x| {
        if let Ref::Binding(b) = x
            && b.host == host
            && b.vport == vport
        {
            port = Some(b.port.clone());
        }
    });
    let Some(port) = port else {
        return Vec::new();
    };
    let mut out = vec![Tag::port(&port)];
    if let Some(p) = view.port(&port) {
        out.push(Tag::device(p.device.id()));
    }
    out
}

/// What one watch update invalidates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidation {
    /// Delete the flows carrying any of these tags (sorted, without duplicates).
    pub tags: Vec<Tag>,
    /// Delete every flow: some change is not covered by tags.
    pub full_flush: bool,
}

/// The invalidation of one watch update. `prev` is the snapshot the update follows (the
/// one `subscribe()` returned, then each update's snapshot in turn): the update lists the
/// changed keys, and the old values come from `prev`.
pub fn invalidation_of_update(prev: &Snapshot, update: &Update) -> Invalidation {
    let next = &*update.snapshot;
    let view = Both(prev, next);
    let mut tags = Vec::new();
    let mut full_flush = false;
    let mut seen = HashSet::new();
    for c in &update.changes {
        if !seen.insert(c.key.as_str()) {
            continue;
        }
        let old = prev.entry(&c.key).map(|e| &*e.record);
        let new = next.entry(&c.key).map(|e| &*e.record);
        tags_of_change_in(&view, old, new, &mut tags);
        full_flush |= needs_full_flush_in(prev, next, old, new);
    }
    let tags: BTreeSet<Tag> = tags.into_iter().collect();
    Invalidation {
        tags: tags.into_iter().collect(),
        full_flush,
    }
}

/// The tags a watch update invalidates, deduplicated (see [`invalidation_of_update`]).
pub fn tags_of_update(prev: &Snapshot, update: &Update) -> Vec<Tag> {
    invalidation_of_update(prev, update).tags
}

/// Whether a watch update needs every flow deleted (see [`invalidation_of_update`]).
pub fn update_needs_full_flush(prev: &Snapshot, update: &Update) -> bool {
    invalidation_of_update(prev, update).full_flush
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use nsdb::{
        Bridge, Change, ChangeOp, Host, Kind, MacAddr, Member, Protocol, Record, Route, TunnelType,
    };
    use sim::fields::ct;
    use sim::fixtures::{TUNNEL_PORT, TopoBuilder, pkt, rule};
    use sim::{
        Fields, LocalDatapath, PacketContext, RECIRC_CT, RECIRC_DELIVERY, Simulation, Topology,
    };

    use super::*;

    /// A table row: name, old value, new value, the tags expected.
    type Row = (&'static str, Option<AnyRecord>, Option<AnyRecord>, Vec<Tag>);
    /// A change applied to a record set.
    type Mutation = Box<dyn Fn(&mut RecordSet)>;

    fn port(id: &str, dev: DeviceRef, kind: PortKind, mac: [u8; 6], addrs: &[&str]) -> Port {
        Port {
            named_ports: Vec::new(),
            namespace_labels: Default::default(),
            id: id.into(),
            device: dev,
            kind,
            mac: MacAddr(mac),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            tunnel_key: 7,
            inbound_chain: None,
            outbound_chain: None,
            admin_up: true,
            labels: Default::default(),
        }
    }

    fn bport(id: &str, bridge: &str, mac: u8, addr: &str) -> AnyRecord {
        AnyRecord::Port(port(
            id,
            DeviceRef::Bridge(bridge.into()),
            PortKind::Exterior,
            [2, 0, 0, 0, 0, mac],
            &[addr],
        ))
    }

    fn set(tags: Vec<Tag>) -> BTreeSet<Tag> {
        tags.into_iter().collect()
    }

    fn of(old: Option<&AnyRecord>, new: Option<&AnyRecord>) -> BTreeSet<Tag> {
        let mut v = Vec::new();
        tags_of_change(old, new, &mut v);
        set(v)
    }

    fn lb(id: &str, router: Option<&str>, vips: usize) -> AnyRecord {
        AnyRecord::LoadBalancer(LoadBalancer {
            health_check: None,
            id: id.into(),
            name: id.into(),
            router: router.map(Into::into),
            vips: (0..vips)
                .map(|i| nsdb::Vip {
                    member_selector: None,
                    target_port: None,
                    ip: format!("10.96.0.{}", i + 1).parse().unwrap(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    members: vec![Member {
                        ip: "10.0.1.11".parse().unwrap(),
                        port: 8080,
                        weight: 1,
                        healthy: true,
                    }],
                    session_affinity: false,
                    affinity_timeout_s: None,
                })
                .collect(),
        })
    }

    /// A verdict on member 10.0.1.11:8080 of load balancer lb1.
    fn health(healthy: bool) -> AnyRecord {
        AnyRecord::MemberHealth(sim::fixtures::verdict("lb1", "10.0.1.11:8080", healthy))
    }

    /// `r` (a load balancer) with `n` members on each VIP, of weights 1, 2, 3, ...
    fn with_members(mut r: AnyRecord, n: usize) -> AnyRecord {
        let AnyRecord::LoadBalancer(lb) = &mut r else {
            panic!("not a load balancer")
        };
        for v in &mut lb.vips {
            v.members = (0..n)
                .map(|i| Member {
                    ip: format!("10.0.1.{}", 20 + i).parse().unwrap(),
                    port: 8080,
                    weight: i as u32 + 1,
                    healthy: i % 2 == 0,
                })
                .collect();
        }
        r
    }

    /// Each row: a change from the record alone, and exactly the tags it must produce.
    #[test]
    fn table_of_record_changes() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let p_old = bport("p1", "b1", 1, "10.0.1.11/32");
        let p_new = bport("p1", "b1", 9, "10.0.1.11/32");
        let route = AnyRecord::Route(Route {
            id: "rt1".into(),
            router: "r1".into(),
            dst: "10.0.3.0/24".parse().unwrap(),
            next_hop: None,
            port: "r1-b1".into(),
            weight: 1,
        });
        let host = |u: &str| {
            AnyRecord::Host(Host {
                id: "h2".into(),
                underlay_ip: u.parse().unwrap(),
                tunnel: TunnelType::Vxlan,
                tunnel_udp_port: 4789,
                mtu: 1500,
            })
        };
        let chain = |rules: usize| {
            AnyRecord::Chain(Chain {
                pods: None,
                id: "c1".into(),
                name: "c1".into(),
                rules: (0..rules)
                    .map(|i| rule(&format!("r{i}"), RuleAction::Drop))
                    .collect(),
                default_action: RuleAction::Accept,
            })
        };
        let rport = AnyRecord::Port(port(
            "r1-b1",
            DeviceRef::Router("r1".into()),
            PortKind::Interior {
                peer: "b1-r1".into(),
            },
            [2, 0, 0, 0, 1, 1],
            &["10.0.1.1/24"],
        ));
        let lease = AnyRecord::IpLease(nsdb::IpLease {
            bridge: "b1".into(),
            ip: ip("10.0.1.11"),
            owner: "p1".into(),
        });
        let rows: Vec<Row> = vec![
            (
                "bridge port added",
                None,
                Some(p_old.clone()),
                vec![
                    Tag::port("p1"),
                    Tag::device("b1"),
                    Tag::mac("b1", [2, 0, 0, 0, 0, 1]),
                    Tag::ip("b1", ip("10.0.1.11")),
                ],
            ),
            (
                "MAC changed: old and new MAC entries",
                Some(p_old.clone()),
                Some(p_new.clone()),
                vec![
                    Tag::port("p1"),
                    Tag::device("b1"),
                    Tag::mac("b1", [2, 0, 0, 0, 0, 1]),
                    Tag::mac("b1", [2, 0, 0, 0, 0, 9]),
                    Tag::ip("b1", ip("10.0.1.11")),
                ],
            ),
            (
                "router port removed",
                Some(rport.clone()),
                None,
                vec![
                    Tag::port("r1-b1"),
                    Tag::device("r1"),
                    Tag::ip("r1", ip("10.0.1.1")),
                    Tag::port("b1-r1"),
                ],
            ),
            (
                "route added",
                None,
                Some(route.clone()),
                vec![Tag::route("rt1"), Tag::device("r1")],
            ),
            (
                "rule added",
                Some(chain(0)),
                Some(chain(1)),
                vec![Tag::chain("c1")],
            ),
            (
                "host underlay changed",
                Some(host("192.168.0.2")),
                Some(host("192.168.0.9")),
                vec![Tag::host("h2")],
            ),
            (
                "router LB changed",
                Some(lb("lb1", Some("r1"), 1)),
                Some(lb("lb1", Some("r1"), 2)),
                vec![Tag::lb("lb1"), Tag::device("r1")],
            ),
            (
                "global LB changed",
                Some(lb("lb1", None, 1)),
                Some(lb("lb1", None, 2)),
                vec![Tag::lb("lb1"), Tag::global_vips()],
            ),
            (
                "router LB's members changed: only flows that hit its VIPs",
                Some(lb("lb1", Some("r1"), 2)),
                Some(with_members(lb("lb1", Some("r1"), 2), 3)),
                vec![Tag::lb("lb1")],
            ),
            (
                "global LB's members changed: only flows that hit its VIPs",
                Some(lb("lb1", None, 2)),
                Some(with_members(lb("lb1", None, 2), 0)),
                vec![Tag::lb("lb1")],
            ),
            (
                "a member's health verdict written: only flows that hit its load balancer's VIPs",
                None,
                Some(health(true)),
                vec![Tag::lb("lb1")],
            ),
            (
                "a member's health verdict turned down",
                Some(health(true)),
                Some(health(false)),
                vec![Tag::lb("lb1")],
            ),
            (
                "a member's health verdict expired with its host's lease",
                Some(health(false)),
                None,
                vec![Tag::lb("lb1")],
            ),
            (
                "router LB moved to another router",
                Some(lb("lb1", Some("r1"), 1)),
                Some(lb("lb1", Some("r2"), 1)),
                vec![Tag::lb("lb1"), Tag::device("r1"), Tag::device("r2")],
            ),
            (
                "global LB created",
                None,
                Some(lb("lb1", None, 1)),
                vec![Tag::lb("lb1"), Tag::global_vips()],
            ),
            ("IP lease", None, Some(lease.clone()), vec![]),
            (
                "no change",
                Some(p_old.clone()),
                Some(p_old.clone()),
                vec![],
            ),
        ];
        for (name, old, new, want) in rows {
            assert_eq!(of(old.as_ref(), new.as_ref()), set(want), "{name}");
        }
    }

    #[test]
    fn table_of_full_flushes() {
        let router = |dnat: bool| {
            AnyRecord::Router(Router {
                id: "r1".into(),
                name: "r1".into(),
                tunnel_key: 1,
                inbound_chain: None,
                outbound_chain: None,
                snat: None,
                dnat: if dnat {
                    vec![nsdb::DnatRule {
                        external_ip: "1.2.3.4".parse().unwrap(),
                        internal_ip: "10.0.1.11".parse().unwrap(),
                        protocol: None,
                        external_port: None,
                        internal_port: None,
                    }]
                } else {
                    vec![]
                },
            })
        };
        let ct_chain = |ct: bool| {
            AnyRecord::Chain(Chain {
                pods: None,
                id: "c1".into(),
                name: "c1".into(),
                rules: vec![nsdb::Rule {
                    ct_state: ct.then(nsdb::CtMatch::default),
                    ..rule("r", RuleAction::Accept)
                }],
                default_action: RuleAction::Drop,
            })
        };
        let rows: Vec<(&str, Option<AnyRecord>, Option<AnyRecord>, bool)> = vec![
            (
                "first global VIP appears",
                None,
                Some(lb("g", None, 1)),
                true,
            ),
            (
                "global LB gains a VIP",
                Some(lb("g", None, 0)),
                Some(lb("g", None, 1)),
                true,
            ),
            ("last VIP goes", Some(lb("g", Some("r1"), 1)), None, true),
            (
                "router VIP list grows",
                Some(lb("g", Some("r1"), 1)),
                Some(lb("g", Some("r1"), 2)),
                false,
            ),
            (
                "DNAT appears",
                Some(router(false)),
                Some(router(true)),
                true,
            ),
            (
                "router renamed",
                Some(router(false)),
                Some(router(false)),
                false,
            ),
            (
                "chain starts using conntrack",
                Some(ct_chain(false)),
                Some(ct_chain(true)),
                true,
            ),
            (
                "plain rule change",
                Some(ct_chain(true)),
                Some(ct_chain(true)),
                false,
            ),
            (
                "bridge",
                None,
                Some(AnyRecord::Bridge(Bridge {
                    id: "b".into(),
                    name: "b".into(),
                    tunnel_key: 3,
                    subnet_v4: None,
                    subnet_v6: None,
                    gateway_v4: None,
                    gateway_v6: None,
                    mtu: 1450,
                    vlan: None,
                    excluded_ips: vec![],
                    inbound_chain: None,
                    outbound_chain: None,
                    namespaces: vec![],
                })),
                false,
            ),
        ];
        for (name, old, new, want) in rows {
            assert_eq!(needs_full_flush(old.as_ref(), new.as_ref()), want, "{name}");
        }
    }

    fn all_records(rs: &RecordSet) -> BTreeMap<String, AnyRecord> {
        fn add<R: Record>(m: &mut BTreeMap<String, AnyRecord>, v: &[R]) {
            for r in v {
                m.insert(r.key(), r.clone().into_any());
            }
        }
        let mut m = BTreeMap::new();
        add(&mut m, &rs.hosts);
        add(&mut m, &rs.bridges);
        add(&mut m, &rs.routers);
        add(&mut m, &rs.ports);
        add(&mut m, &rs.routes);
        add(&mut m, &rs.chains);
        add(&mut m, &rs.load_balancers);
        add(&mut m, &rs.bindings);
        m
    }

    /// The invalidation of going from `before` to `after`, change by change, as the agent
    /// computes it: tags, and whether everything must go.
    fn invalidation(before: &RecordSet, after: &RecordSet) -> (BTreeSet<Tag>, bool) {
        let (b, a) = (all_records(before), all_records(after));
        let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
        let mut tags = Vec::new();
        let mut flush = false;
        for k in keys {
            let (old, new) = (b.get(k), a.get(k));
            tags_of_change_in(&Both(before, after), old, new, &mut tags);
            flush |= needs_full_flush_in(before, after, old, new);
        }
        (set(tags), flush)
    }

    fn base() -> TopoBuilder {
        Topology::test()
            .bridge("b1")
            .bridge("b2")
            .port("p1", "b1", "10.0.1.11")
            .port("p2", "b1", "10.0.1.12")
            .port_on("p3", "b1", "10.0.1.13", "h2")
            .port("p4", "b2", "10.0.2.14")
            .port_on("p5", "b2", "10.0.2.15", "h2")
            .router("r1")
            .link("r1", "b1", "10.0.1.1/24")
            .link("r1", "b2", "10.0.2.1/24")
            .chain("acl", RuleAction::Accept, vec![])
            .port_chains("p4", Some("acl"), None)
            .vip(
                "lb1",
                Some("r1"),
                "10.96.0.10",
                Protocol::Tcp,
                80,
                &[("10.0.2.14", 8080, 1, true), ("10.0.2.15", 8080, 1, true)],
                false,
            )
    }

    /// Packets of every pass: first pass, tracked pass, tunnel ingress and delivery stage.
    fn packets(b: &TopoBuilder) -> Vec<Fields> {
        let unknown = [2, 0, 0, 0, 0xee, 0xee];
        let (p1, p4) = (b.dp("p1"), b.dp("p4"));
        let mut v = vec![
            pkt::udp(
                p1,
                b.mac("p1"),
                b.mac("p2"),
                "10.0.1.11",
                "10.0.1.12",
                4000,
                53,
            ),
            pkt::udp(
                p1,
                b.mac("p1"),
                b.mac("p3"),
                "10.0.1.11",
                "10.0.1.13",
                4000,
                53,
            ),
            pkt::udp(p1, b.mac("p1"), unknown, "10.0.1.11", "10.0.1.99", 4000, 53),
            pkt::udp(
                p1,
                b.mac("p1"),
                [0xff; 6],
                "10.0.1.11",
                "10.0.1.255",
                4000,
                53,
            ),
            pkt::udp(
                p1,
                b.mac("p1"),
                b.mac("r1-b1"),
                "10.0.1.11",
                "10.0.2.14",
                4000,
                53,
            ),
            pkt::udp(
                p1,
                b.mac("p1"),
                b.mac("r1-b1"),
                "10.0.1.11",
                "10.0.2.15",
                4000,
                53,
            ),
            pkt::udp(
                p4,
                b.mac("p4"),
                b.mac("r1-b2"),
                "10.0.2.14",
                "10.0.1.11",
                53,
                4000,
            ),
            pkt::udp(
                p4,
                b.mac("p4"),
                b.mac("p5"),
                "10.0.2.14",
                "10.0.2.15",
                53,
                4000,
            ),
        ];
        for sp in 40000..40016 {
            v.push(pkt::tcp(
                p1,
                b.mac("p1"),
                b.mac("r1-b1"),
                "10.0.1.11",
                "10.96.0.10",
                sp,
                80,
            ));
        }
        let first = v.clone();
        for f in &first {
            let mut t = *f;
            t.recirc_id = RECIRC_CT;
            t.ct_state = ct::TRACKED | ct::NEW;
            v.push(t);
        }
        // From the tunnel, for each local port, and their delivery stages.
        for p in ["p1", "p2", "p4"] {
            let mut f = pkt::udp(
                TUNNEL_PORT,
                b.mac("p3"),
                b.mac(p),
                "10.0.1.13",
                "10.0.1.11",
                4000,
                53,
            );
            f.tun_id = u64::from(b.key_of(p));
            v.push(f);
            f.recirc_id = RECIRC_DELIVERY | b.key_of(p);
            f.ct_state = ct::TRACKED | ct::NEW;
            v.push(f);
        }
        v
    }

    fn outcome(t: &Topology, f: &Fields, sim: &mut Simulation) -> String {
        let frame = pkt::frame(f);
        sim::simulate_into(t, &PacketContext::with_packet(*f, &frame), sim);
        format!(
            "{} {:?} {:?} {:?}",
            sim.install, sim.actions, sim.verdict, sim.delivery
        )
    }

    fn datapath_after(before: &TopoBuilder, after: &RecordSet) -> LocalDatapath {
        let mut dp = before.datapath();
        let mut next = dp.vports.values().max().copied().unwrap_or(1) + 1;
        for b in &after.bindings {
            if b.host == "h1" && !dp.vports.contains_key(&b.vport) {
                dp.vports.insert(b.vport.clone(), next);
                next += 1;
            }
        }
        dp
    }

    /// Every flow whose result a change alters carries a tag the change invalidates (or
    /// the change asks for a full flush): no stale flow survives.
    #[test]
    fn invalidation_leaves_no_stale_flow_in_the_simulation() {
        let b = base();
        let changes: Vec<(&str, Mutation)> = vec![
            (
                "port added",
                Box::new(|rs| {
                    let extra = Topology::test()
                        .bridge("b1")
                        .port("p6", "b1", "10.0.1.16")
                        .records;
                    let mut p = extra.ports[0].clone();
                    p.tunnel_key = 900;
                    rs.ports.push(p);
                    rs.bindings.push(extra.bindings[0].clone());
                }),
            ),
            (
                "port removed",
                Box::new(|rs| {
                    rs.ports.retain(|p| p.id != "p2");
                    rs.bindings.retain(|p| p.port != "p2");
                }),
            ),
            (
                "MAC changed",
                Box::new(|rs| {
                    let p = rs.ports.iter_mut().find(|p| p.id == "p3").unwrap();
                    p.mac = MacAddr([2, 0, 0, 0, 0x33, 0x33]);
                }),
            ),
            (
                "route added",
                Box::new(|rs| {
                    rs.routes.push(Route {
                        id: "to-p5-via-p4".into(),
                        router: "r1".into(),
                        dst: "10.0.2.15/32".parse().unwrap(),
                        next_hop: Some("10.0.2.14".parse().unwrap()),
                        port: "r1-b2".into(),
                        weight: 1,
                    });
                }),
            ),
            (
                "route removed",
                Box::new(|rs| rs.routes.retain(|r| r.id != "r1-b2-net")),
            ),
            (
                "rule added",
                Box::new(|rs| {
                    let c = rs.chains.iter_mut().find(|c| c.id == "acl").unwrap();
                    c.rules.push(nsdb::Rule {
                        protocol: Some(Protocol::Udp),
                        ..rule("no-udp", RuleAction::Drop)
                    });
                }),
            ),
            (
                "member removed",
                Box::new(|rs| {
                    rs.load_balancers[0].vips[0]
                        .members
                        .retain(|m| m.ip.to_string() != "10.0.2.15");
                }),
            ),
            (
                "host underlay changed",
                Box::new(|rs| {
                    let h = rs.hosts.iter_mut().find(|h| h.id == "h2").unwrap();
                    h.underlay_ip = "192.168.0.99".parse().unwrap();
                }),
            ),
            (
                "port moved to another host",
                Box::new(|rs| {
                    let x = rs.bindings.iter_mut().find(|x| x.port == "p3").unwrap();
                    x.host = "h1".into();
                }),
            ),
            (
                "port down",
                Box::new(|rs| {
                    rs.ports.iter_mut().find(|p| p.id == "p2").unwrap().admin_up = false;
                }),
            ),
        ];
        let pkts = packets(&b);
        for (name, change) in changes {
            let mut after = b.records.clone();
            change(&mut after);
            assert_no_stale_flow(name, &b, &b.records, &after, &pkts, true);
        }
    }

    /// Pods isolated by a NetworkPolicy-style allow-list: p2 admits only pods labelled
    /// `pod: p1`.
    fn with_policy() -> TopoBuilder {
        let mut b = base();
        for p in ["p1", "p2", "p3", "p4", "p5"] {
            b = b.pod_labels(p, "x", &[("pod", p)]);
        }
        b.chain(
            "np",
            RuleAction::Drop,
            vec![nsdb::Rule {
                src_selector: Some(nsdb::PortSelector::in_namespace(
                    "x",
                    nsdb::LabelSelector::label("pod", "p1"),
                )),
                ..rule("from-p1", RuleAction::Accept)
            }],
        )
        .attach(
            "np",
            nsdb::PodDirection::Ingress,
            nsdb::PortSelector::in_namespace("x", nsdb::LabelSelector::label("pod", "p2")),
            nsdb::PodAttachMode::Allow,
        )
    }

    /// A VIP whose members are the pods its selector picks: a pod whose labels make it one
    /// changes the VIP's flows.
    #[test]
    fn pod_selected_vip_members_leave_no_stale_flow() {
        let mut b = base();
        for p in ["p1", "p2", "p3", "p4", "p5"] {
            b = b.pod_labels(p, "x", &[("pod", p)]);
        }
        let vip = &mut b.records.load_balancers[0].vips[0];
        vip.members.clear();
        vip.member_selector = Some(nsdb::PortSelector::in_namespace(
            "x",
            nsdb::LabelSelector {
                match_expressions: vec![nsdb::LabelExpr {
                    key: "pod".into(),
                    op: nsdb::SelectorOp::In,
                    values: vec!["p4".into()],
                }],
                ..Default::default()
            },
        ));
        vip.target_port = Some(8080);
        let mut after = b.records.clone();
        after
            .ports
            .iter_mut()
            .find(|p| p.id == "p5")
            .unwrap()
            .labels
            .insert("pod".into(), "p4".into());
        assert_no_stale_flow(
            "a pod joins a VIP",
            &b,
            &b.records,
            &after,
            &packets(&b),
            true,
        );
    }

    /// Policy changes, and the label changes that move pods in and out of selectors, leave
    /// no stale flow either.
    #[test]
    fn pod_policy_changes_leave_no_stale_flow() {
        let b = with_policy();
        fn port<'a>(rs: &'a mut RecordSet, id: &str) -> &'a mut nsdb::Port {
            rs.ports.iter_mut().find(|p| p.id == id).unwrap()
        }
        let changes: Vec<(&str, Mutation)> = vec![
            (
                "a pod's labels now match a rule's selector",
                Box::new(|rs| {
                    port(rs, "p3").labels.insert("pod".into(), "p1".into());
                }),
            ),
            (
                "a namespace's labels change under a rule's selector",
                Box::new(|rs| {
                    port(rs, "p3")
                        .namespace_labels
                        .insert(nsdb::LABEL_NAMESPACE_NAME.into(), "y".into());
                    let c = rs.chains.iter_mut().find(|c| c.id == "np").unwrap();
                    c.rules[0].src_selector = Some(nsdb::PortSelector {
                        namespaces: Some(nsdb::LabelSelector::label(
                            nsdb::LABEL_NAMESPACE_NAME,
                            "y",
                        )),
                        pods: None,
                    });
                }),
            ),
            (
                "the policy picks another pod",
                Box::new(|rs| {
                    let c = rs.chains.iter_mut().find(|c| c.id == "np").unwrap();
                    c.pods.as_mut().unwrap().selector = nsdb::PortSelector::in_namespace(
                        "x",
                        nsdb::LabelSelector {
                            match_expressions: vec![nsdb::LabelExpr {
                                key: "pod".into(),
                                op: nsdb::SelectorOp::In,
                                values: vec!["p1".into(), "p2".into()],
                            }],
                            ..Default::default()
                        },
                    );
                }),
            ),
            (
                "a policy isolates another pod",
                Box::new(|rs| {
                    rs.chains.push(nsdb::Chain {
                        id: "np-p4".into(),
                        name: "np-p4".into(),
                        rules: vec![],
                        default_action: RuleAction::Drop,
                        pods: Some(nsdb::PodAttachment {
                            direction: nsdb::PodDirection::Egress,
                            selector: nsdb::PortSelector::in_namespace(
                                "x",
                                nsdb::LabelSelector::label("pod", "p4"),
                            ),
                            mode: nsdb::PodAttachMode::Allow,
                        }),
                    });
                }),
            ),
            (
                "the policy goes",
                Box::new(|rs| rs.chains.retain(|c| c.id != "np")),
            ),
        ];
        let pkts = packets(&b);
        for (name, change) in changes {
            let mut after = b.records.clone();
            change(&mut after);
            assert_no_stale_flow(name, &b, &b.records, &after, &pkts, true);
        }
    }

    /// Records that appear after the records that name them: the flows built while they were
    /// missing carry only their referrers' tags.
    #[test]
    fn late_records_invalidate_what_refers_to_them() {
        let b = base();
        let pkts = packets(&b);
        // The host record of h2 expires and comes back (an agent re-registering).
        let mut no_h2 = b.records.clone();
        no_h2.hosts.retain(|h| h.id != "h2");
        assert_no_stale_flow("host expired", &b, &b.records, &no_h2, &pkts, false);
        assert_no_stale_flow("host re-registered", &b, &no_h2, &b.records, &pkts, false);
        // A port names a chain that is created later.
        let mut dangling = b.records.clone();
        dangling
            .ports
            .iter_mut()
            .find(|p| p.id == "p1")
            .unwrap()
            .inbound_chain = Some("late".into());
        let mut created = dangling.clone();
        created.chains.push(nsdb::Chain {
            pods: None,
            id: "late".into(),
            name: "late".into(),
            rules: vec![],
            default_action: RuleAction::Drop,
        });
        assert_no_stale_flow("chain created late", &b, &dangling, &created, &pkts, false);
    }

    /// A pod's vport appearing in the local datapath (its binding already in NSDB) changes
    /// flood flows and flows to the port; the vport's tags cover them.
    #[test]
    fn vport_appearing_invalidates_its_port_and_bridge() {
        let b = base();
        let pkts = packets(&b);
        let mut missing = b.datapath();
        missing.vports.remove("wf-p2");
        let before = Topology::compile(&b.records, "h1", &missing).expect("compiles");
        let after = b.build();
        let tags = tags_of_vport(&b.records, "h1", "wf-p2");
        assert_eq!(
            set(tags.clone()),
            set(vec![Tag::port("p2"), Tag::device("b1")])
        );
        assert!(tags_of_vport(&b.records, "h2", "wf-p2").is_empty());
        let mut sim = Simulation::new();
        let mut changed = 0;
        for f in &pkts {
            let was = outcome(&before, f, &mut sim);
            if !sim.install {
                continue;
            }
            let flow_tags = sim.tags.clone();
            if outcome(&after, f, &mut sim) != was {
                changed += 1;
                assert!(flow_tags.iter().any(|t| tags.contains(t)), "{f:?}: {was}");
            }
        }
        assert!(changed > 0);
    }

    /// Simulates every packet before and after the change; every installed flow whose
    /// result changes must carry an invalidated tag (or the change asks for a full flush),
    /// and at least one flow must change, so the row proves something.
    fn assert_no_stale_flow(
        name: &str,
        b: &TopoBuilder,
        before: &RecordSet,
        after: &RecordSet,
        pkts: &[Fields],
        expect_no_problems: bool,
    ) {
        let mut sim = Simulation::new();
        let dp = datapath_after(b, after);
        let before_topo = Topology::compile(before, "h1", &dp).expect("compiles");
        let after_topo = Topology::compile(after, "h1", &dp).expect("compiles");
        if expect_no_problems {
            assert!(
                after_topo.problems().is_empty(),
                "{name}: {:?}",
                after_topo.problems()
            );
        }
        let (tags, flush) = invalidation(before, after);
        let mut changed = 0;
        for f in pkts {
            let was = outcome(&before_topo, f, &mut sim);
            if !sim.install {
                continue; // never installed, so never stale
            }
            let flow_tags = sim.tags.clone();
            let now = outcome(&after_topo, f, &mut sim);
            if was == now {
                continue;
            }
            changed += 1;
            assert!(
                flush || flow_tags.iter().any(|t| tags.contains(t)),
                "{name}: the flow for {f:?}\n  was {was}\n  now {now}\n  tags {flow_tags:?}\n  \
                 invalidated {tags:?}"
            );
        }
        assert!(changed > 0, "{name}: the change altered no flow");
        assert!(!flush, "{name}: no full flush needed");
    }

    /// A watch update maps to the union of its changes' tags, with old values from the
    /// previous snapshot and references followed through both snapshots.
    #[test]
    fn update_tags_follow_references() {
        let b = base();
        let snap = |rs: &RecordSet, rev: i64| {
            Snapshot::from_records(
                rev,
                all_records(rs).into_values().map(|r| (r, rev)).collect(),
            )
        };
        let prev = snap(&b.records, 10);
        // p3's binding goes away (the port leaves host h2) and h2's record expires.
        let mut after = b.records.clone();
        after.bindings.retain(|x| x.port != "p3");
        after.hosts.retain(|h| h.id != "h2");
        let next = Arc::new(snap(&after, 11));
        let change = |kind: Kind, id: &str| Change {
            key: kind.key(id),
            kind,
            id: id.into(),
            op: ChangeOp::Delete,
            revision: 11,
        };
        let update = Update {
            snapshot: next,
            changes: vec![
                change(Kind::PortBinding, "p3"),
                change(Kind::Host, "h2"),
                change(Kind::Host, "h2"),
            ],
            resync: false,
        };
        let inv = invalidation_of_update(&prev, &update);
        assert!(!inv.full_flush);
        // The binding's bridge comes from the port record; the host's bound ports from
        // the previous snapshot's bindings (p3's binding was deleted in the same update).
        assert_eq!(
            set(inv.tags.clone()),
            set(vec![
                Tag::port("p3"),
                Tag::host("h2"),
                Tag::device("b1"),
                Tag::port("p5"),
            ])
        );
        assert!(
            inv.tags.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert_eq!(tags_of_update(&prev, &update), inv.tags);
        // The first global VIP asks for a full flush; a second one does not.
        let mut with_global = after.clone();
        with_global.load_balancers.push(LoadBalancer {
            health_check: None,
            router: None,
            id: "g1".into(),
            ..with_global.load_balancers[0].clone()
        });
        let g1 = Arc::new(snap(&with_global, 12));
        let put = |id: &str, s: Arc<Snapshot>| Update {
            snapshot: s,
            changes: vec![Change {
                op: ChangeOp::Put,
                ..change(Kind::LoadBalancer, id)
            }],
            resync: false,
        };
        let mut from = (*update.snapshot).clone();
        assert!(update_needs_full_flush(&from, &put("g1", g1.clone())));
        from = (*g1).clone();
        let mut second = with_global.clone();
        second.load_balancers.push(LoadBalancer {
            health_check: None,
            id: "g2".into(),
            ..second.load_balancers[1].clone()
        });
        let g2 = put("g2", Arc::new(snap(&second, 13)));
        assert!(!update_needs_full_flush(&from, &g2));
        assert!(tags_of_update(&from, &g2).contains(&Tag::global_vips()));
    }
}
