//! Datapath actions (`OVS_ACTION_ATTR_*`) as plain values.
//!
//! A flow's actions are a `Vec<Action>`; an empty list drops the packet (kernel 6.1 has no
//! explicit drop action). The common actions (output, set of eth/ipv4/tunnel, ct with zone,
//! commit and nat, recirc) hold no heap data, so a caller that clears and reuses its
//! `Vec<Action>` builds actions without allocating.

use std::net::IpAddr;

use crate::key::{KeyEthernet, KeyIpv4, KeyIpv6, KeyPorts, RawAttr, TunnelKey};

/// `ETH_P_8021Q`, the default TPID of `push_vlan`.
pub const ETH_P_8021Q: u16 = 0x8100;

/// `OVS_HASH_ALG_L4`.
pub const HASH_ALG_L4: u32 = 0;
/// `OVS_HASH_ALG_SYM_L4`.
pub const HASH_ALG_SYM_L4: u32 = 1;

/// One key attribute written by `set` / `set_masked`.
// The tunnel variant is the large one (addresses, ports and flags inline, Geneve options
// boxed): building `set(tunnel(..))` for a flow must not allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SetKey {
    /// `OVS_KEY_ATTR_PRIORITY`.
    Priority(u32),
    /// `OVS_KEY_ATTR_SKB_MARK`.
    SkbMark(u32),
    /// `OVS_KEY_ATTR_ETHERNET`.
    Ethernet(KeyEthernet),
    /// `OVS_KEY_ATTR_IPV4`.
    Ipv4(KeyIpv4),
    /// `OVS_KEY_ATTR_IPV6`.
    Ipv6(KeyIpv6),
    /// `OVS_KEY_ATTR_TCP`.
    Tcp(KeyPorts),
    /// `OVS_KEY_ATTR_UDP`.
    Udp(KeyPorts),
    /// `OVS_KEY_ATTR_SCTP`.
    Sctp(KeyPorts),
    /// `OVS_KEY_ATTR_TUNNEL` (only with `set`, never `set_masked`).
    Tunnel(TunnelKey),
    /// Any other key attribute, verbatim.
    Other(RawAttr),
}

/// `OVS_ACTION_ATTR_USERSPACE`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Userspace {
    /// `OVS_USERSPACE_ATTR_PID`: netlink port id that receives the upcall.
    pub pid: u32,
    /// `OVS_USERSPACE_ATTR_USERDATA`: opaque cookie copied into the upcall.
    pub userdata: Option<Vec<u8>>,
    /// `OVS_USERSPACE_ATTR_EGRESS_TUN_PORT`.
    pub egress_tun_port: Option<u32>,
    /// `OVS_USERSPACE_ATTR_ACTIONS`: ask for the actions in the upcall.
    pub actions: bool,
}

/// NAT direction of `ct(nat(..))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// `OVS_NAT_ATTR_SRC`.
    Src,
    /// `OVS_NAT_ATTR_DST`.
    Dst,
}

/// `OVS_CT_ATTR_NAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Nat {
    /// `src` or `dst`; `None` applies the reverse of an existing NAT only.
    pub kind: Option<NatKind>,
    /// `OVS_NAT_ATTR_IP_MIN`.
    pub ip_min: Option<IpAddr>,
    /// `OVS_NAT_ATTR_IP_MAX`.
    pub ip_max: Option<IpAddr>,
    /// `OVS_NAT_ATTR_PROTO_MIN`.
    pub proto_min: Option<u16>,
    /// `OVS_NAT_ATTR_PROTO_MAX`.
    pub proto_max: Option<u16>,
    /// `OVS_NAT_ATTR_PERSISTENT`.
    pub persistent: bool,
    /// `OVS_NAT_ATTR_PROTO_HASH`.
    pub hash: bool,
    /// `OVS_NAT_ATTR_PROTO_RANDOM`.
    pub random: bool,
}

/// `OVS_ACTION_ATTR_CT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Ct {
    /// `OVS_CT_ATTR_COMMIT`.
    pub commit: bool,
    /// `OVS_CT_ATTR_FORCE_COMMIT`.
    pub force_commit: bool,
    /// `OVS_CT_ATTR_ZONE`.
    pub zone: Option<u16>,
    /// `OVS_CT_ATTR_MARK`: (value, mask).
    pub mark: Option<(u32, u32)>,
    /// `OVS_CT_ATTR_LABELS`: (value, mask). Boxed: 32 bytes, aligned to 16, that Weft
    /// never sets, which would otherwise make every action that much larger.
    pub labels: Option<Box<(u128, u128)>>,
    /// `OVS_CT_ATTR_HELPER`, e.g. `ftp`.
    pub helper: Option<String>,
    /// `OVS_CT_ATTR_TIMEOUT`: name of a timeout policy.
    pub timeout: Option<String>,
    /// `OVS_CT_ATTR_NAT`.
    pub nat: Option<Nat>,
    /// `OVS_CT_ATTR_EVENTMASK`.
    pub eventmask: Option<u32>,
    /// Conntrack attributes this crate does not model, kept verbatim.
    pub other: Vec<RawAttr>,
}

/// One datapath action.
// `SetMasked` (two keys) is the largest, on purpose (see `SetKey`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// `OVS_ACTION_ATTR_OUTPUT`: send to a datapath port.
    Output(u32),
    /// `OVS_ACTION_ATTR_USERSPACE`: send to userspace as `OVS_PACKET_CMD_ACTION`.
    Userspace(Userspace),
    /// `OVS_ACTION_ATTR_SET`: overwrite one key attribute.
    Set(SetKey),
    /// `OVS_ACTION_ATTR_SET_MASKED`: (value, mask); both must be the same variant.
    SetMasked(SetKey, SetKey),
    /// `OVS_ACTION_ATTR_PUSH_VLAN`.
    PushVlan {
        /// Tag protocol id (normally 0x8100).
        tpid: u16,
        /// TCI; the kernel requires [`crate::key::VLAN_CFI`] set.
        tci: u16,
    },
    /// `OVS_ACTION_ATTR_POP_VLAN`.
    PopVlan,
    /// `OVS_ACTION_ATTR_RECIRC`.
    Recirc(u32),
    /// `OVS_ACTION_ATTR_HASH`.
    Hash {
        /// `HASH_ALG_L4` or `HASH_ALG_SYM_L4`.
        alg: u32,
        /// Hash basis.
        basis: u32,
    },
    /// `OVS_ACTION_ATTR_CT`.
    Ct(Ct),
    /// `OVS_ACTION_ATTR_CT_CLEAR`.
    CtClear,
    /// `OVS_ACTION_ATTR_TRUNC`: truncate to at most this many bytes.
    Trunc(u32),
    /// `OVS_ACTION_ATTR_SAMPLE`.
    Sample {
        /// Fraction of packets out of `u32::MAX`.
        probability: u32,
        /// Actions run on sampled packets.
        actions: Vec<Action>,
    },
    /// `OVS_ACTION_ATTR_CLONE`.
    Clone(Vec<Action>),
    /// `OVS_ACTION_ATTR_CHECK_PKT_LEN`.
    CheckPktLen {
        /// Length to compare against.
        len: u16,
        /// Actions if the packet is longer.
        greater: Vec<Action>,
        /// Actions if the packet is shorter or equal.
        less_equal: Vec<Action>,
    },
    /// `OVS_ACTION_ATTR_METER`.
    Meter(u32),
    /// Any other action, verbatim (type, payload).
    Other(u16, Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flows are built as `Vec<Action>` on every upcall: an action stays small. What is
    /// rare and large (Geneve options, conntrack labels) is boxed; the largest action left
    /// is a masked set of two keys, which holds no heap data.
    #[test]
    fn an_action_is_small_and_its_common_forms_hold_no_heap_data() {
        assert!(
            std::mem::size_of::<Action>() <= 256,
            "{}",
            std::mem::size_of::<Action>()
        );
        assert!(
            std::mem::size_of::<Ct>() <= 160,
            "{}",
            std::mem::size_of::<Ct>()
        );
        assert_eq!(
            std::mem::size_of::<Action>(),
            std::mem::size_of::<(SetKey, SetKey)>(),
            "the masked set is the largest action"
        );
    }
}
