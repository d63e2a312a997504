//! A pod's interface: a veth pair whose pod end is created straight in the pod's network
//! namespace, named as the runtime asks, with the port's MAC, addresses, MTU and default
//! route; the host end stays in the agent's namespace for the datapath. All of it over
//! rtnetlink: the pod's side from a short-lived thread that enters the pod's namespace, so
//! no thread of the agent's runtime ever changes namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// `ENODEV`, `ENOENT`: no such device or entry.
const ENODEV: i32 = 19;

/// What the pod's end of the veth gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// Its name inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    pub mac: [u8; 6],
    /// Address and prefix length of the pod's subnet, one per family.
    pub addresses: Vec<IpNet>,
    /// The default routes' next hops, one per family.
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    pub mtu: u32,
}

/// An interface as it is now (for CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<IpNet>,
    /// The next hops of the default routes through it.
    pub default_gateways: Vec<IpAddr>,
}

/// Why the pod's network namespace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("the network namespace {path} does not exist")]
    Missing { path: String },
    #[error("cannot open the network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns {
        path: String,
        #[source]
        source: nix::Error,
    },
}

/// Opens a netns path (`/var/run/netns/x`, `/proc/<pid>/ns/net`).
pub fn open_netns(path: &str) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            NetnsError::Missing {
                path: path.to_owned(),
            }
        } else {
            NetnsError::Open {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Runs `f` with an rtnetlink handle inside the network namespace `ns`, on a thread of its
/// own that ends with it.
async fn in_netns<T, F, Fut>(ns: &File, path: &str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let ns = ns.try_clone()?;
    let path = path.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            let r = (|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::NotNetns {
                    path: path.clone(),
                    source,
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let (conn, handle, _) = rtnetlink::new_connection()?;
                    let conn = tokio::spawn(conn);
                    let r = f(handle).await;
                    conn.abort();
                    r
                })
            })();
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the netns thread ended without an answer"))?
}

/// Runs `f` with an rtnetlink handle in the agent's own namespace.
async fn here<T, Fut>(f: impl FnOnce(Handle) -> Fut) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let conn = tokio::spawn(conn);
    let r = f(handle).await;
    conn.abort();
    r
}

fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.is_some_and(|c| c.get() == -ENODEV))
}

async fn link_by_name(h: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(e) if is_enodev(&e) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading link {name}"))),
    }
}

/// The host end's ifindex and MAC, if it exists.
pub async fn host_link(host_end: &str) -> anyhow::Result<Option<(u32, [u8; 6])>> {
    let name = host_end.to_owned();
    here(|h| async move {
        Ok(link_by_name(&h, &name)
            .await?
            .map(|l| (l.header.index, mac_of(&l))))
    })
    .await
}

/// Creates the veth: `host_end` (up, MTU `pod.mtu`) here, and the pod's end in `netns`,
/// configured as `pod` says. A host end left by an earlier, unfinished attempt is removed
/// first. On failure the veth is removed again. Returns the host end's ifindex and MAC.
pub async fn plumb(
    host_end: &str,
    netns: &File,
    netns_path: &str,
    pod: &PodInterface,
) -> anyhow::Result<(u32, [u8; 6])> {
    unplumb(host_end).await?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod.ifname.clone())
        .address(pod.mac.to_vec())
        .mtu(pod.mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new(host_end, &pod.ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(pod.mtu)
        .up()
        .build();
    let name = host_end.to_owned();
    let made = here(|h| async move {
        h.link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("creating the veth {name}")))?;
        link_by_name(&h, &name)
            .await?
            .map(|l| (l.header.index, mac_of(&l)))
            .ok_or_else(|| anyhow::anyhow!("the veth {name} vanished after it was created"))
    })
    .await?;
    let p = pod.clone();
    let configured = in_netns(netns, netns_path, move |h| async move {
        let link = link_by_name(&h, &p.ifname)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{} did not appear in the pod's namespace", p.ifname))?;
        let index = link.header.index;
        for a in &p.addresses {
            let mut add = h.address().add(index, a.addr(), a.prefix_len());
            // The address is the pod's by its lease: no duplicate address detection, which
            // would leave it unusable for a second or more after the pod starts.
            if a.addr().is_ipv6() {
                add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            add.execute()
                .await
                .map_err(|e| anyhow::Error::new(e).context(format!("adding {a}")))?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("setting {} up", p.ifname)))?;
        // The pod's loopback, which nothing else in a bare sandbox brings up.
        if let Some(lo) = link_by_name(&h, "lo").await? {
            let _ = h
                .link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await;
        }
        let routes = [
            p.gateway_v4.map(|gw| {
                let r = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw);
                (IpAddr::V4(gw), r.output_interface(index).build())
            }),
            p.gateway_v6.map(|gw| {
                let r = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw);
                (IpAddr::V6(gw), r.output_interface(index).build())
            }),
        ];
        for (gw, route) in routes.into_iter().flatten() {
            h.route().add(route).execute().await.map_err(|e| {
                anyhow::Error::new(e).context(format!("adding the default route via {gw}"))
            })?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = configured {
        return Err(match unplumb(host_end).await {
            Ok(_) => e.context(format!("configuring {} in {netns_path}", pod.ifname)),
            Err(re) => e.context(format!(
                "configuring {} in {netns_path} (and removing {host_end} failed: {re:#})",
                pod.ifname
            )),
        });
    }
    Ok(made)
}

/// Deletes the veth by its host end (the pod's end goes with it). False if it was not there.
pub async fn unplumb(host_end: &str) -> anyhow::Result<bool> {
    let name = host_end.to_owned();
    here(|h| async move {
        let Some(l) = link_by_name(&h, &name).await? else {
            return Ok(false);
        };
        match h.link().del(l.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_enodev(&e) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context(format!("deleting {name}"))),
        }
    })
    .await
}

/// The pod's interface `ifname` in `netns` as it is now; `None` if there is no such
/// interface.
pub async fn observe(
    netns: &File,
    netns_path: &str,
    ifname: &str,
) -> anyhow::Result<Option<Observed>> {
    let name = ifname.to_owned();
    in_netns(netns, netns_path, move |h| async move {
        let Some(link) = link_by_name(&h, &name).await? else {
            return Ok(None);
        };
        let index = link.header.index;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(0);
        let up = link
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up);
        let mut addresses = Vec::new();
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        while let Some(a) = addrs.try_next().await? {
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && let Ok(n) = IpNet::new(*ip, a.header.prefix_len)
                {
                    addresses.push(n);
                }
            }
        }
        let mut default_gateways = Vec::new();
        let families = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for family in families {
            let mut routes = h.route().get(family).execute();
            while let Some(r) = routes.try_next().await? {
                let via_us = r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                if r.header.destination_prefix_length != 0 || !via_us {
                    continue;
                }
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                            default_gateways.push(IpAddr::V4(*gw))
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => {
                            default_gateways.push(IpAddr::V6(*gw))
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Some(Observed {
            mac: mac_of(&link),
            mtu,
            up,
            addresses,
            default_gateways,
        }))
    })
    .await
}

fn mac_of(l: &LinkMessage) -> [u8; 6] {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => {
                let mut o = [0u8; 6];
                o.copy_from_slice(m);
                Some(o)
            }
            _ => None,
        })
        .unwrap_or([0; 6])
}

/// The node's interface (the device of the node port's internal vport), as
/// [`configure_node_interface`] makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInterface {
    pub name: String,
    pub mac: [u8; 6],
    pub address: Ipv4Net,
    pub mtu: u32,
    /// The routes through it: destination subnet and next hop.
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
}

/// Makes the node's interface in the agent's namespace what `want` says: its MAC and MTU,
/// up, its one IPv4 address, and exactly `want.routes` through it (others through it go; the
/// kernel's route to its own subnet stays). Changes only what differs.
pub async fn configure_node_interface(want: &NodeInterface) -> anyhow::Result<()> {
    let w = want.clone();
    here(|h| async move {
        let link = link_by_name(&h, &w.name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no interface {}", w.name))?;
        let index = link.header.index;
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        let up = link
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up);
        if mac_of(&link) != w.mac || mtu != Some(w.mtu) || !up {
            let set = LinkUnspec::new_with_index(index)
                .address(w.mac.to_vec())
                .mtu(w.mtu)
                .up()
                .build();
            h.link().set(set).execute().await.map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("setting the MAC, MTU and state of {}", w.name))
            })?;
        }
        let mut has = false;
        let mut stale = Vec::new();
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        while let Some(a) = addrs.try_next().await? {
            let v4 = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            match v4 {
                Some(ip)
                    if ip == w.address.addr() && a.header.prefix_len == w.address.prefix_len() =>
                {
                    has = true;
                }
                Some(_) => stale.push(a),
                None => {}
            }
        }
        for a in stale {
            h.address().del(a).execute().await.map_err(|e| {
                anyhow::Error::new(e).context(format!("removing a stale address of {}", w.name))
            })?;
        }
        if !has {
            h.address()
                .add(index, IpAddr::V4(w.address.addr()), w.address.prefix_len())
                .execute()
                .await
                .map_err(|e| {
                    anyhow::Error::new(e).context(format!("adding {} to {}", w.address, w.name))
                })?;
        }
        let mut present = BTreeSet::new();
        let mut stale = Vec::new();
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = routes.try_next().await? {
            let via_us = r
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            if !via_us
                || r.header.protocol == RouteProtocol::Kernel
                || r.header.table != RT_TABLE_MAIN
            {
                continue;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                    Ipv4Net::new(*d, r.header.destination_prefix_length).ok()
                }
                _ => None,
            });
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            match (dst, gw) {
                (Some(d), Some(g)) if w.routes.get(&d) == Some(&g) => {
                    present.insert(d);
                }
                _ => stale.push(r),
            }
        }
        for r in stale {
            h.route().del(r).execute().await.map_err(|e| {
                anyhow::Error::new(e).context(format!("removing a stale route via {}", w.name))
            })?;
        }
        for (dst, gw) in w.routes.iter().filter(|(d, _)| !present.contains(*d)) {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len())
                .gateway(*gw)
                .output_interface(index)
                .build();
            h.route().add(route).execute().await.map_err(|e| {
                anyhow::Error::new(e).context(format!("adding the route to {dst} via {gw}"))
            })?;
        }
        Ok(())
    })
    .await
}

/// The main routing table (`RT_TABLE_MAIN`).
const RT_TABLE_MAIN: u8 = 254;

/// Whether a netns path exists (DEL and GC may find it gone).
pub fn netns_exists(path: &str) -> bool {
    Path::new(path).exists()
}
