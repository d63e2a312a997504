//! What a pod attachment can be: the host end of a pod's veth, and never one of the node's
//! own devices. The underlay NIC (the device holding `--underlay-ip`), the device of a
//! default route and Weft's own `weft-*` devices are refused, as is anything that is not a
//! veth: adding the uplink to the datapath cut the node off from etcd and its tunnels.
//! Links, addresses and routes are read over rtnetlink in the agent's network namespace.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The prefix of Weft's own devices (the tunnel port, the datapath's local port).
pub const RESERVED_PREFIX: &str = "weft-";

/// `ENODEV`: no such device.
const ENODEV: i32 = 19;

/// Why an interface cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    #[error("interface name {0:?} is not a valid Linux interface name")]
    BadName(String),
    #[error("{0} is one of Weft's own devices (weft-*), not a pod's veth")]
    Reserved(String),
    #[error("{name} is the datapath's own device, not a pod's veth")]
    Datapath { name: String },
    #[error("no interface {0} in the agent's network namespace")]
    Missing(String),
    #[error("{name} is a {kind} device; only the host end of a pod's veth can be attached")]
    NotVeth { name: String, kind: String },
    #[error("{name} holds the underlay address {ip}: it is the node's uplink, not a pod's veth")]
    Underlay { name: String, ip: IpAddr },
    #[error("{name} carries a default route: it is the node's uplink, not a pod's veth")]
    DefaultRoute { name: String },
    #[error("reading {what} over rtnetlink")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening an rtnetlink socket")]
    Socket(#[source] std::io::Error),
}

/// Whether `name` is a valid Linux interface name: 1-15 bytes, not `.` or `..`, no `/`,
/// `:`, NUL, whitespace or control characters.
pub fn valid_name(name: &str) -> bool {
    !(name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.contains(['/', ':', '\0'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control()))
}

/// Checks a name before any lookup: a valid interface name, and none of Weft's own.
pub fn check_name(ifname: &str, datapath: &str) -> Result<(), NetdevError> {
    if !valid_name(ifname) {
        return Err(NetdevError::BadName(ifname.to_owned()));
    }
    if ifname.starts_with(RESERVED_PREFIX) {
        return Err(NetdevError::Reserved(ifname.to_owned()));
    }
    if ifname == datapath || ifname == "ovs-system" {
        return Err(NetdevError::Datapath {
            name: ifname.to_owned(),
        });
    }
    Ok(())
}

/// Checks that `ifname` exists and is a veth that holds neither `underlay_ip` nor a default
/// route. Returns its ifindex.
pub async fn check_attachable(
    ifname: &str,
    datapath: &str,
    underlay_ip: IpAddr,
) -> Result<u32, NetdevError> {
    check_name(ifname, datapath)?;
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetdevError::Socket)?;
    let conn = tokio::spawn(conn);
    let r = check_link(&handle, ifname, underlay_ip).await;
    conn.abort();
    r
}

fn netlink(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetdevError + '_ {
    move |source| NetdevError::Netlink {
        what: what.to_owned(),
        source,
    }
}

async fn check_link(h: &Handle, ifname: &str, underlay_ip: IpAddr) -> Result<u32, NetdevError> {
    let mut links = h.link().get().match_name(ifname.to_owned()).execute();
    let link = match links.try_next().await {
        Ok(Some(l)) => l,
        Ok(None) => return Err(NetdevError::Missing(ifname.to_owned())),
        Err(rtnetlink::Error::NetlinkError(m)) if m.code.is_some_and(|c| c.get() == -ENODEV) => {
            return Err(NetdevError::Missing(ifname.to_owned()));
        }
        Err(e) => return Err(netlink(&format!("link {ifname}"))(e)),
    };
    let index = link.header.index;
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    });
    match kind {
        Some(InfoKind::Veth) => {}
        Some(k) => {
            return Err(NetdevError::NotVeth {
                name: ifname.to_owned(),
                kind: k.to_string(),
            });
        }
        // Physical NICs carry no link kind.
        None => {
            return Err(NetdevError::NotVeth {
                name: ifname.to_owned(),
                kind: "physical (or kindless)".to_owned(),
            });
        }
    }
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(netlink(&format!("the addresses of {ifname}")))?
    {
        let holds = a.attributes.iter().any(|x| {
            matches!(x, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == underlay_ip)
        });
        if holds {
            return Err(NetdevError::Underlay {
                name: ifname.to_owned(),
                ip: underlay_ip,
            });
        }
    }
    for msg in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut routes = h.route().get(msg).execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(netlink("the routing table"))?
        {
            if is_default(&r) && route_devices(&r).any(|i| i == index) {
                return Err(NetdevError::DefaultRoute {
                    name: ifname.to_owned(),
                });
            }
        }
    }
    Ok(index)
}

/// The kernel's `local` routing table (`RT_TABLE_LOCAL`), which holds no default route.
const RT_TABLE_LOCAL: u8 = 255;

/// A default route of any table but the local one.
fn is_default(r: &RouteMessage) -> bool {
    r.header.destination_prefix_length == 0 && r.header.table != RT_TABLE_LOCAL
}

/// The output devices of a route, its multipath next hops' included.
fn route_devices(r: &RouteMessage) -> impl Iterator<Item = u32> + '_ {
    r.attributes.iter().flat_map(|a| match a {
        RouteAttribute::Oif(i) => vec![*i],
        RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
        _ => vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weft_names_the_datapath_and_bad_names_are_refused_before_any_lookup() {
        for (name, want) in [
            ("weft-vxlan", "one of Weft's own devices"),
            ("weft-geneve", "one of Weft's own devices"),
            ("weft-anything", "one of Weft's own devices"),
            ("weft", "the datapath's own device"),
            ("ovs-system", "the datapath's own device"),
            ("", "not a valid Linux interface name"),
            ("a-name-far-too-long", "not a valid Linux interface name"),
            ("a/b", "not a valid Linux interface name"),
            ("a b", "not a valid Linux interface name"),
        ] {
            let e = check_name(name, "weft").expect_err(name).to_string();
            assert!(e.contains(want), "{name:?}: {e}");
        }
        check_name("wf-p1", "weft").expect("a pod's veth name");
        check_name("vethab12cd", "weft").expect("a veth name");
    }
}
