//! weft-agent: the node agent. It owns the node's datapath and tunnel port, simulates missed
//! packets through the virtual topology, installs their megaflows, and invalidates them when the
//! topology changes.

pub mod api;
pub mod ctl;
pub mod flowtable;
pub mod host;
pub mod install;
pub mod invalidate;
pub mod mtu;
pub mod ratelimit;
pub mod tags;
