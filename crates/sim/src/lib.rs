//! sim: the pure simulation of Weft's virtual topology. Given a compiled topology snapshot
//! and one packet entering at a port, it walks ports, bridges, routers, load balancers and
//! rule chains, and returns the datapath actions, the megaflow mask of exactly the header
//! bits it read, the tags of what it touched, the packets to generate, and a trace.
//!
//! No I/O, no clock, no randomness: the same snapshot and packet give the same result.
//!
//! ```text
//! let topo = Topology::compile(&records, "node-1", &local_datapath)?;
//! let mut sim = Simulation::new();            // once per thread
//! simulate_into(&topo, &PacketContext::new(Fields::from_key(&upcall_key)), &mut sim);
//! // install sim.actions with sim.mask (if sim.install), execute the packet, send sim.emit
//! ```
//!
//! See [`walk`] for the pass structure (conntrack and recirculation) and the flooding policy.

pub mod acl;
pub mod affinity;
pub mod buckets;
pub mod error;
pub mod fields;
pub mod fixtures;
pub mod hash;
pub mod lpm;
mod odpconv;
pub mod packets;
pub mod result;
pub mod tag;
pub mod topology;
pub mod walk;

pub use affinity::{AffinityChoice, AffinityKey, AffinityMemory};
pub use error::SimError;
pub use fields::{Fields, PacketContext};
pub use result::{Delivery, DropReason, Emit, Simulation, Verdict};
pub use tag::{Tag, TagKind};
pub use topology::{
    LABEL_NEXT_HOP_MAC, LocalDatapath, MemberChoice, RecordSet, Topology, hairpin_zone, zone_of_key,
};
pub use walk::{
    MAX_DEVICES, MAX_JUMPS, MAX_RULE_STEPS, RECIRC_CT, RECIRC_DELIVERY, RECIRC_LB, RECIRC_NAT,
    RECIRC_VIP, simulate, simulate_into, vip_recirc,
};
