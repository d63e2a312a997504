//! odp: the Open vSwitch kernel datapath protocol: pure types for flow keys, masks and
//! actions, their netlink wire codec, and the `ovs-dpctl` text form.
//!
//! The pure part does no I/O:
//! - [`key`]: [`FlowKey`] (also the mask, [`FlowMask`]) with one optional value per
//!   `OVS_KEY_ATTR_*`; [`action`]: [`Action`] (an empty list is drop); [`flow`]: [`Flow`].
//! - [`codec`]: [`encode_key`]/[`decode_key`] and [`encode_actions`]/[`decode_actions`]
//!   between those types and netlink attribute streams; [`msg`]: the one reader and writer
//!   of whole `ovs_datapath`, `ovs_vport`, `ovs_flow` and `ovs_packet` payloads (replies,
//!   upcalls, flow and execute requests); [`nla`]: attribute framing and the kernel's
//!   constants. Every decode or encode failure is an [`enum@Error`].
//! - [`text`]: `Display` in the exact form of `ovs-dpctl dump-flows`; [`parse`]: the same
//!   syntax (and `ovs-dpctl add-flow`'s) back into values.
//!
//! The socket layer lives in its own modules, behind the `netlink` feature (on by default),
//! and sends the messages built here.

pub mod action;
pub mod codec;
pub mod error;
pub mod flow;
pub mod key;
pub mod msg;
pub mod nla;
pub mod parse;
pub mod text;

pub use action::{Action, Ct, Nat, NatKind, SetKey, Userspace};
pub use codec::{decode_actions, decode_key, encode_actions, encode_key};
pub use error::{Error, Result};
pub use flow::{ActionsDisplay, Flow, FlowStats, MatchDisplay};
pub use key::{
    CtTupleIpv4, CtTupleIpv6, FlowKey, FlowMask, GeneveOpts, KeyArp, KeyEthernet, KeyIcmp, KeyIpv4,
    KeyIpv6, KeyNd, KeyPorts, Mac, RawAttr, TunnelKey,
};
pub use parse::{parse_actions, parse_flow, parse_match};

#[cfg(feature = "netlink")]
pub mod dpif;
#[cfg(feature = "netlink")]
pub mod families;
#[cfg(feature = "netlink")]
pub mod sock;
#[cfg(feature = "netlink")]
pub mod upcall;
