//! The four OVS generic netlink families (`ovs_datapath`, `ovs_vport`, `ovs_flow`,
//! `ovs_packet`): their command and attribute numbers from `include/uapi/linux/openvswitch.h`,
//! and the run-time resolution of their family ids and multicast groups through `nlctrl`.

use crate::nla;
use crate::sock::{self, GenlSocket, SockError};

/// `GENL_ID_CTRL`: the fixed id of the `nlctrl` family.
pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_VERSION: u16 = 3;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

/// Size of `struct ovs_header` (`int dp_ifindex`).
pub const OVS_HEADER_LEN: usize = 4;

/// `ovs_datapath` family: name, multicast group, version, commands, attributes.
pub mod dp {
    /// `OVS_DATAPATH_FAMILY`.
    pub const FAMILY: &str = "ovs_datapath";
    /// `OVS_DATAPATH_MCGROUP`.
    pub const MCGROUP: &str = "ovs_datapath";
    /// `OVS_DATAPATH_VERSION`.
    pub const VERSION: u8 = 2;
    /// `OVS_DP_CMD_NEW`.
    pub const CMD_NEW: u8 = 1;
    /// `OVS_DP_CMD_DEL`.
    pub const CMD_DEL: u8 = 2;
    /// `OVS_DP_CMD_GET`.
    pub const CMD_GET: u8 = 3;
    /// `OVS_DP_CMD_SET`.
    pub const CMD_SET: u8 = 4;
    /// `OVS_DP_ATTR_NAME`.
    pub const ATTR_NAME: u16 = 1;
    /// `OVS_DP_ATTR_UPCALL_PID`.
    pub const ATTR_UPCALL_PID: u16 = 2;
    /// `OVS_DP_ATTR_STATS`.
    pub const ATTR_STATS: u16 = 3;
    /// `OVS_DP_ATTR_MEGAFLOW_STATS`.
    pub const ATTR_MEGAFLOW_STATS: u16 = 4;
    /// `OVS_DP_ATTR_USER_FEATURES`.
    pub const ATTR_USER_FEATURES: u16 = 5;
    /// `OVS_DP_ATTR_MASKS_CACHE_SIZE`.
    pub const ATTR_MASKS_CACHE_SIZE: u16 = 7;
    /// `OVS_DP_ATTR_PER_CPU_PIDS`.
    pub const ATTR_PER_CPU_PIDS: u16 = 8;
    /// Highest attribute number read.
    pub const ATTR_MAX: u16 = 9;
    /// `OVS_DP_F_UNALIGNED`.
    pub const F_UNALIGNED: u32 = 1 << 0;
    /// `OVS_DP_F_VPORT_PIDS`.
    pub const F_VPORT_PIDS: u32 = 1 << 1;
    /// `OVS_DP_F_TC_RECIRC_SHARING`.
    pub const F_TC_RECIRC_SHARING: u32 = 1 << 2;
    /// `OVS_DP_F_DISPATCH_UPCALL_PER_CPU`.
    pub const F_DISPATCH_UPCALL_PER_CPU: u32 = 1 << 3;
}

/// `ovs_vport` family.
pub mod vport {
    /// `OVS_VPORT_FAMILY`.
    pub const FAMILY: &str = "ovs_vport";
    /// `OVS_VPORT_MCGROUP`.
    pub const MCGROUP: &str = "ovs_vport";
    /// `OVS_VPORT_VERSION`.
    pub const VERSION: u8 = 1;
    /// `OVS_VPORT_CMD_NEW`.
    pub const CMD_NEW: u8 = 1;
    /// `OVS_VPORT_CMD_DEL`.
    pub const CMD_DEL: u8 = 2;
    /// `OVS_VPORT_CMD_GET`.
    pub const CMD_GET: u8 = 3;
    /// `OVS_VPORT_CMD_SET`.
    pub const CMD_SET: u8 = 4;
    /// `OVS_VPORT_ATTR_PORT_NO`.
    pub const ATTR_PORT_NO: u16 = 1;
    /// `OVS_VPORT_ATTR_TYPE`.
    pub const ATTR_TYPE: u16 = 2;
    /// `OVS_VPORT_ATTR_NAME`.
    pub const ATTR_NAME: u16 = 3;
    /// `OVS_VPORT_ATTR_OPTIONS`.
    pub const ATTR_OPTIONS: u16 = 4;
    /// `OVS_VPORT_ATTR_UPCALL_PID`.
    pub const ATTR_UPCALL_PID: u16 = 5;
    /// `OVS_VPORT_ATTR_STATS`.
    pub const ATTR_STATS: u16 = 6;
    /// `OVS_VPORT_ATTR_IFINDEX`.
    pub const ATTR_IFINDEX: u16 = 8;
    /// `OVS_VPORT_ATTR_NETNSID`.
    pub const ATTR_NETNSID: u16 = 9;
    /// Highest attribute number read.
    pub const ATTR_MAX: u16 = 10;
    /// `OVS_TUNNEL_ATTR_DST_PORT`.
    pub const TUNNEL_ATTR_DST_PORT: u16 = 1;
    /// `OVS_TUNNEL_ATTR_EXTENSION`.
    pub const TUNNEL_ATTR_EXTENSION: u16 = 2;
    /// `OVS_VPORT_TYPE_NETDEV`.
    pub const TYPE_NETDEV: u32 = 1;
    /// `OVS_VPORT_TYPE_INTERNAL`.
    pub const TYPE_INTERNAL: u32 = 2;
    /// `OVS_VPORT_TYPE_GRE`.
    pub const TYPE_GRE: u32 = 3;
    /// `OVS_VPORT_TYPE_VXLAN`.
    pub const TYPE_VXLAN: u32 = 4;
    /// `OVS_VPORT_TYPE_GENEVE`.
    pub const TYPE_GENEVE: u32 = 5;
}

/// `ovs_flow` family.
pub mod flow {
    /// `OVS_FLOW_FAMILY`.
    pub const FAMILY: &str = "ovs_flow";
    /// `OVS_FLOW_MCGROUP`.
    pub const MCGROUP: &str = "ovs_flow";
    /// `OVS_FLOW_VERSION`.
    pub const VERSION: u8 = 1;
    /// `OVS_FLOW_CMD_NEW`.
    pub const CMD_NEW: u8 = 1;
    /// `OVS_FLOW_CMD_DEL`.
    pub const CMD_DEL: u8 = 2;
    /// `OVS_FLOW_CMD_GET`.
    pub const CMD_GET: u8 = 3;
    /// `OVS_FLOW_CMD_SET`.
    pub const CMD_SET: u8 = 4;
    /// `OVS_FLOW_ATTR_KEY`.
    pub const ATTR_KEY: u16 = 1;
    /// `OVS_FLOW_ATTR_ACTIONS`.
    pub const ATTR_ACTIONS: u16 = 2;
    /// `OVS_FLOW_ATTR_STATS`.
    pub const ATTR_STATS: u16 = 3;
    /// `OVS_FLOW_ATTR_TCP_FLAGS`.
    pub const ATTR_TCP_FLAGS: u16 = 4;
    /// `OVS_FLOW_ATTR_USED`.
    pub const ATTR_USED: u16 = 5;
    /// `OVS_FLOW_ATTR_CLEAR`.
    pub const ATTR_CLEAR: u16 = 6;
    /// `OVS_FLOW_ATTR_MASK`.
    pub const ATTR_MASK: u16 = 7;
    /// `OVS_FLOW_ATTR_PROBE`.
    pub const ATTR_PROBE: u16 = 8;
    /// `OVS_FLOW_ATTR_UFID`.
    pub const ATTR_UFID: u16 = 9;
    /// `OVS_FLOW_ATTR_UFID_FLAGS`.
    pub const ATTR_UFID_FLAGS: u16 = 10;
    /// Highest attribute number read.
    pub const ATTR_MAX: u16 = 11;
    /// `OVS_UFID_F_OMIT_KEY`.
    pub const UFID_F_OMIT_KEY: u32 = 1 << 0;
    /// `OVS_UFID_F_OMIT_MASK`.
    pub const UFID_F_OMIT_MASK: u32 = 1 << 1;
    /// `OVS_UFID_F_OMIT_ACTIONS`.
    pub const UFID_F_OMIT_ACTIONS: u32 = 1 << 2;
}

/// `ovs_packet` family.
pub mod packet {
    /// `OVS_PACKET_FAMILY`.
    pub const FAMILY: &str = "ovs_packet";
    /// `OVS_PACKET_VERSION`.
    pub const VERSION: u8 = 1;
    /// `OVS_PACKET_CMD_MISS`.
    pub const CMD_MISS: u8 = 1;
    /// `OVS_PACKET_CMD_ACTION`.
    pub const CMD_ACTION: u8 = 2;
    /// `OVS_PACKET_CMD_EXECUTE`.
    pub const CMD_EXECUTE: u8 = 3;
    /// `OVS_PACKET_ATTR_PACKET`.
    pub const ATTR_PACKET: u16 = 1;
    /// `OVS_PACKET_ATTR_KEY`.
    pub const ATTR_KEY: u16 = 2;
    /// `OVS_PACKET_ATTR_ACTIONS`.
    pub const ATTR_ACTIONS: u16 = 3;
    /// `OVS_PACKET_ATTR_USERDATA`.
    pub const ATTR_USERDATA: u16 = 4;
    /// `OVS_PACKET_ATTR_EGRESS_TUN_KEY`.
    pub const ATTR_EGRESS_TUN_KEY: u16 = 5;
    /// `OVS_PACKET_ATTR_PROBE`.
    pub const ATTR_PROBE: u16 = 8;
    /// `OVS_PACKET_ATTR_MRU`.
    pub const ATTR_MRU: u16 = 9;
    /// `OVS_PACKET_ATTR_LEN`.
    pub const ATTR_LEN: u16 = 10;
    /// `OVS_PACKET_ATTR_HASH`.
    pub const ATTR_HASH: u16 = 11;
    /// Highest attribute number read.
    pub const ATTR_MAX: u16 = 11;
}

/// One resolved generic netlink family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Its name.
    pub name: String,
    /// The id the kernel assigned (the `nlmsg_type` of its messages).
    pub id: u16,
    /// The version the kernel reports.
    pub version: u32,
    /// Its multicast groups as `(name, id)`.
    pub groups: Vec<(String, u32)>,
}

impl Family {
    /// The id of a multicast group by name.
    pub fn group(&self, name: &str) -> Result<u32, SockError> {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .ok_or_else(|| SockError::NoGroup {
                family: self.name.clone(),
                group: name.to_string(),
            })
    }
}

/// The four OVS families, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsFamilies {
    /// `ovs_datapath`.
    pub datapath: Family,
    /// `ovs_vport`.
    pub vport: Family,
    /// `ovs_flow`.
    pub flow: Family,
    /// `ovs_packet`.
    pub packet: Family,
}

impl OvsFamilies {
    /// Resolves all four families over `sock`. Looking a family up makes the kernel load
    /// `openvswitch.ko` on demand (it has a `net-pf-16-proto-16-family-ovs_*` alias).
    pub fn resolve(sock: &mut GenlSocket) -> Result<Self, SockError> {
        Ok(OvsFamilies {
            datapath: resolve_family(sock, dp::FAMILY)?,
            vport: resolve_family(sock, vport::FAMILY)?,
            flow: resolve_family(sock, flow::FAMILY)?,
            packet: resolve_family(sock, packet::FAMILY)?,
        })
    }
}

/// Resolves one generic netlink family by name through `nlctrl`.
pub fn resolve_family(sock: &mut GenlSocket, name: &str) -> Result<Family, SockError> {
    let attrs = nla::build(&[], |w| w.string(CTRL_ATTR_FAMILY_NAME, name))?;
    let replies = match sock.request(
        "CTRL_CMD_GETFAMILY",
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        2,
        0,
        &attrs,
    ) {
        Ok(r) => r,
        Err(SockError::Kernel { errno, .. }) if errno == libc::ENOENT => {
            return Err(SockError::NoFamily {
                family: name.to_string(),
            });
        }
        Err(e) => return Err(e),
    };
    let reply = replies.first().ok_or_else(|| SockError::NoFamily {
        family: name.to_string(),
    })?;
    parse_family(name, &reply.payload)
}

/// Decodes a `CTRL_CMD_NEWFAMILY` payload (the attributes after `genlmsghdr`).
pub fn parse_family(name: &str, payload: &[u8]) -> Result<Family, SockError> {
    let t = sock::attr_table(payload, CTRL_ATTR_MCAST_GROUPS)?;
    let id = t[usize::from(CTRL_ATTR_FAMILY_ID)]
        .ok_or_else(|| SockError::Malformed(format!("nlctrl reply for {name} has no id")))
        .and_then(|d| sock::get_u16("CTRL_ATTR_FAMILY_ID", d))?;
    let version = match t[usize::from(CTRL_ATTR_VERSION)] {
        Some(d) => sock::get_u32("CTRL_ATTR_VERSION", d)?,
        None => 0,
    };
    let mut groups = Vec::new();
    if let Some(g) = t[usize::from(CTRL_ATTR_MCAST_GROUPS)] {
        for item in sock::attrs(g) {
            let (_, nested) = item?;
            let gt = sock::attr_table(nested, CTRL_ATTR_MCAST_GRP_ID)?;
            if let (Some(n), Some(i)) = (
                gt[usize::from(CTRL_ATTR_MCAST_GRP_NAME)],
                gt[usize::from(CTRL_ATTR_MCAST_GRP_ID)],
            ) {
                groups.push((
                    sock::get_str("CTRL_ATTR_MCAST_GRP_NAME", n)?,
                    sock::get_u32("CTRL_ATTR_MCAST_GRP_ID", i)?,
                ));
            }
        }
    }
    Ok(Family {
        name: name.to_string(),
        id,
        version,
        groups,
    })
}

/// Builds the `ovs_header` that starts every OVS request.
pub fn ovs_header(dp_ifindex: i32) -> [u8; OVS_HEADER_LEN] {
    dp_ifindex.to_ne_bytes()
}

/// Splits an OVS reply payload into its `dp_ifindex` and its attributes.
pub fn split_ovs_header(payload: &[u8]) -> Result<(i32, &[u8]), SockError> {
    if payload.len() < OVS_HEADER_LEN {
        return Err(SockError::Malformed(format!(
            "OVS message of {} bytes has no ovs_header",
            payload.len()
        )));
    }
    let ifindex = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    Ok((ifindex, &payload[OVS_HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_family_reply_with_groups() {
        let grp = nla::build(&[], |w| {
            w.u32(CTRL_ATTR_MCAST_GRP_ID, 11)?;
            w.string(CTRL_ATTR_MCAST_GRP_NAME, "ovs_flow")
        })
        .unwrap();
        let groups = nla::build(&[], |w| w.nested(1, &grp)).unwrap();
        let b = nla::build(&[], |w| {
            w.string(CTRL_ATTR_FAMILY_NAME, "ovs_flow")?;
            w.u16(CTRL_ATTR_FAMILY_ID, 0x22)?;
            w.u32(CTRL_ATTR_VERSION, 1)?;
            w.nested(CTRL_ATTR_MCAST_GROUPS, &groups)
        })
        .unwrap();
        let f = parse_family("ovs_flow", &b).unwrap();
        assert_eq!(f.id, 0x22);
        assert_eq!(f.version, 1);
        assert_eq!(f.group("ovs_flow").unwrap(), 11);
        assert!(f.group("nope").is_err());
    }

    #[test]
    fn family_reply_without_id_is_an_error() {
        let b = nla::build(&[], |w| w.string(CTRL_ATTR_FAMILY_NAME, "ovs_flow")).unwrap();
        assert!(parse_family("ovs_flow", &b).is_err());
    }
}
