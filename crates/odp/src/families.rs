//! The four OVS generic netlink families (`ovs_datapath`, `ovs_vport`, `ovs_flow`,
//! `ovs_packet`): their names and versions, and the run-time resolution of their family ids
//! and multicast groups through `nlctrl`. Their commands and attributes are in
//! [`crate::msg`] and [`crate::nla`].

use crate::error::Error;
use crate::nla;
use crate::sock::{GenlSocket, SockError};

/// `GENL_ID_CTRL`: the fixed id of the `nlctrl` family.
pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_VERSION: u16 = 3;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

/// `ovs_datapath`: family name, multicast group and version.
pub mod dp {
    /// Family name.
    pub const FAMILY: &str = "ovs_datapath";
    /// Multicast group.
    pub const MCGROUP: &str = "ovs_datapath";
    /// `OVS_DATAPATH_VERSION`.
    pub const VERSION: u8 = 2;
}

/// `ovs_vport`: family name, multicast group and version.
pub mod vport {
    /// Family name.
    pub const FAMILY: &str = "ovs_vport";
    /// Multicast group.
    pub const MCGROUP: &str = "ovs_vport";
    /// `OVS_VPORT_VERSION`.
    pub const VERSION: u8 = 1;
}

/// `ovs_flow`: family name, multicast group and version.
pub mod flow {
    /// Family name.
    pub const FAMILY: &str = "ovs_flow";
    /// Multicast group.
    pub const MCGROUP: &str = "ovs_flow";
    /// `OVS_FLOW_VERSION`.
    pub const VERSION: u8 = 1;
}

/// `ovs_packet`: family name and version.
pub mod packet {
    /// Family name.
    pub const FAMILY: &str = "ovs_packet";
    /// `OVS_PACKET_VERSION`.
    pub const VERSION: u8 = 1;
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
    Ok(parse_family(name, &reply.payload)?)
}

/// Decodes a `CTRL_CMD_NEWFAMILY` payload (the attributes after `genlmsghdr`).
pub fn parse_family(name: &str, payload: &[u8]) -> Result<Family, Error> {
    let t = nla::table::<{ CTRL_ATTR_MCAST_GROUPS as usize + 1 }>(payload, "CTRL_ATTR")?;
    let id = t[usize::from(CTRL_ATTR_FAMILY_ID)]
        .ok_or_else(|| Error::missing("CTRL_ATTR_FAMILY_ID", "nlctrl reply"))
        .and_then(|d| nla::get_u16("CTRL_ATTR_FAMILY_ID", d))?;
    let version = match t[usize::from(CTRL_ATTR_VERSION)] {
        Some(d) => nla::get_u32("CTRL_ATTR_VERSION", d)?,
        None => 0,
    };
    let mut groups = Vec::new();
    if let Some(g) = t[usize::from(CTRL_ATTR_MCAST_GROUPS)] {
        for item in nla::attrs(g, "CTRL_ATTR_MCAST_GROUPS") {
            let gt = nla::table::<{ CTRL_ATTR_MCAST_GRP_ID as usize + 1 }>(
                item?.data,
                "CTRL_ATTR_MCAST_GRP",
            )?;
            if let (Some(n), Some(i)) = (
                gt[usize::from(CTRL_ATTR_MCAST_GRP_NAME)],
                gt[usize::from(CTRL_ATTR_MCAST_GRP_ID)],
            ) {
                groups.push((
                    nla::get_str("CTRL_ATTR_MCAST_GRP_NAME", n)?,
                    nla::get_u32("CTRL_ATTR_MCAST_GRP_ID", i)?,
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
