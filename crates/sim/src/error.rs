//! The errors of compiling a topology snapshot.

use thiserror::Error;

/// A problem found while compiling NSDB records into a [`crate::Topology`].
///
/// Only [`SimError::UnknownLocalHost`] fails the compile. The others name a record that
/// refers to something missing or malformed; that record is left out of the snapshot and
/// the error is kept in [`crate::Topology::problems`], because NSDB is written record by
/// record and a snapshot may be caught between two writes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SimError {
    /// The local host id is not among the host records.
    #[error("local host {host} has no host record")]
    UnknownLocalHost {
        /// The host id.
        host: String,
    },
    /// A port refers to a device that does not exist.
    #[error("port {port} refers to missing device {device}")]
    PortDeviceMissing {
        /// The port id.
        port: String,
        /// The device id.
        device: String,
    },
    /// An interior port's peer is missing or does not point back.
    #[error("interior port {port} has a bad peer {peer}: {reason}")]
    BadPeer {
        /// The port id.
        port: String,
        /// The peer port id.
        peer: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A chain reference (from a port, device or jump rule) names no chain.
    #[error("{owner} refers to missing chain {chain}")]
    ChainMissing {
        /// The object holding the reference.
        owner: String,
        /// The chain id.
        chain: String,
    },
    /// A route's router or egress port is missing or not on that router.
    #[error("route {route} is unusable: {reason}")]
    BadRoute {
        /// The route id.
        route: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A binding names a host or port that does not exist.
    #[error("binding of port {port} to host {host} is unusable: {reason}")]
    BadBinding {
        /// The port id.
        port: String,
        /// The host id.
        host: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two or more ports are bound to the same vport of one host. None of them is taken as
    /// bound: the vport's traffic cannot tell them apart.
    #[error("vport {vport} of host {host} is bound to several ports: {ports:?}")]
    DuplicateBinding {
        /// The host id.
        host: String,
        /// The vport name.
        vport: String,
        /// The ports bound to it, sorted.
        ports: Vec<String>,
    },
    /// Two ports share a tunnel key.
    #[error("tunnel key {key:#x} is used by both {first} and {second}")]
    DuplicateTunnelKey {
        /// The key.
        key: u32,
        /// The port that keeps it.
        first: String,
        /// The port left out.
        second: String,
    },
    /// A feature the simulation does not model (for example IPv6 DNAT rules).
    #[error("{object}: {what} is not supported")]
    Unsupported {
        /// The object id.
        object: String,
        /// What is unsupported.
        what: &'static str,
    },
}

impl SimError {
    /// A short stable name of the kind of problem, for metric labels.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SimError::UnknownLocalHost { .. } => "unknown_local_host",
            SimError::PortDeviceMissing { .. } => "port_device_missing",
            SimError::BadPeer { .. } => "bad_peer",
            SimError::ChainMissing { .. } => "chain_missing",
            SimError::BadRoute { .. } => "bad_route",
            SimError::BadBinding { .. } => "bad_binding",
            SimError::DuplicateBinding { .. } => "duplicate_binding",
            SimError::DuplicateTunnelKey { .. } => "duplicate_tunnel_key",
            SimError::Unsupported { .. } => "unsupported",
        }
    }
}
