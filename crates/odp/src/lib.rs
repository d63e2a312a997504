//! odp: the Open vSwitch kernel datapath protocol: pure types for flow keys, masks and
//! actions, their netlink wire codec, and the `ovs-dpctl` text form.
//!
//! The pure part (this file's modules) does no I/O. The socket layer lives in its own
//! modules and sends the messages built here.

pub mod action;
pub mod error;
pub mod flow;
pub mod key;
pub mod text;

pub use action::{Action, Ct, Nat, NatKind, SetKey, Userspace};
pub use error::{Error, Result};
pub use flow::{ActionsDisplay, Flow, FlowStats, MatchDisplay};
pub use key::{
    CtTupleIpv4, CtTupleIpv6, FlowKey, FlowMask, GeneveOpts, KeyArp, KeyEthernet, KeyIcmp,
    KeyIpv4, KeyIpv6, KeyNd, KeyPorts, Mac, RawAttr, TunnelKey,
};

pub mod dpif;
pub mod families;
pub mod sock;
pub mod upcall;
