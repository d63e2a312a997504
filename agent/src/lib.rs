//! weft-agent: the node agent. It owns the node's datapath and tunnel port, simulates missed
//! packets through the virtual topology, installs their megaflows, and invalidates them when the
//! topology changes.

pub mod affinity;
pub mod api;
pub mod attachments;
pub mod cni;
pub mod config;
pub mod ctl;
pub mod datapath;
pub mod flows;
pub mod flowtable;
pub mod handler;
pub mod health;
pub mod host;
pub mod install;
pub mod invalidate;
pub mod metrics;
pub mod mtu;
pub mod netdev;
pub mod nodeport;
pub mod podmeta;
pub mod podnet;
pub mod ratelimit;
pub mod revalidate;
pub mod run;
pub mod service;
pub mod tags;
pub mod topo;
