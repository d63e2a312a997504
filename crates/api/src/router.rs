//! `VirtualRouter` (vrt): an L3 router joining bridges, with static routes, an uplink, SNAT and DNAT.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{L4Protocol, PortRange, conditions_schema};
use crate::patterns;

/// The value of `routes[].interface` that names the uplink instead of a bridge.
pub const UPLINK: &str = "uplink";

/// A virtual router. Each interface is a port on a bridge with an address in that bridge's
/// subnet; the uplink carries traffic to and from outside the virtual network.
// clippy reads the repeated `printcolumn(...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "VirtualRouter",
    plural = "virtualrouters",
    shortname = "vrt",
    category = "weft",
    status = "VirtualRouterStatus",
    derive = "PartialEq",
    doc = "A virtual L3 router joining bridges, with static routes, an uplink, SNAT and DNAT.",
    printcolumn(
        name = "Interfaces",
        type_ = "string",
        json_path = ".spec.interfaces[*].bridge"
    ),
    printcolumn(name = "Uplink", type_ = "string", json_path = ".spec.uplink.ip"),
    printcolumn(name = "SNAT", type_ = "boolean", json_path = ".spec.uplink.snat"),
    printcolumn(
        name = "Tunnel-Key",
        type_ = "integer",
        json_path = ".status.tunnelKey"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualRouterSpec {
    /// The bridges the router is attached to, one interface each.
    #[schemars(length(min = 1, max = 64), extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["bridge"]
    ))]
    pub interfaces: Vec<RouterInterface>,
    /// Static routes. Several routes to the same destination share traffic (ECMP) by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub routes: Vec<StaticRoute>,
    /// The port towards the outside world.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<Uplink>,
    /// Destination NAT (floating IP and port forwarding) rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub dnat: Vec<DnatRule>,
}

/// A router port on a bridge.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterInterface {
    /// Name of the `VirtualBridge`.
    #[schemars(pattern(patterns::OBJECT_NAME), length(min = 1, max = 253))]
    pub bridge: String,
    /// The router's IPv4 address on that bridge; it must lie in the bridge's subnet and is
    /// normally the bridge's gateway.
    #[schemars(pattern(patterns::IPV4))]
    pub ip: String,
    /// The router's IPv6 address on that bridge; it must lie in the bridge's `subnetV6` and is
    /// normally the bridge's `gatewayV6`. Without it the router does not route IPv6 for the
    /// bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::IPV6))]
    pub ip_v6: Option<String>,
    /// MAC address of the port; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::MAC))]
    pub mac: Option<String>,
}

/// A static route: a destination prefix to a next hop and/or an interface.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.nextHop) || has(self.interface)",
     "message": "a route needs a nextHop or an interface"}
]))]
pub struct StaticRoute {
    /// Destination prefix, e.g. `0.0.0.0/0`.
    #[schemars(pattern(patterns::CIDR))]
    pub destination: String,
    /// Next-hop address; it must be on one of the router's connected subnets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::IP))]
    pub next_hop: Option<String>,
    /// Egress interface: the name of an attached bridge, or `uplink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::OBJECT_NAME), length(min = 1, max = 253))]
    pub interface: Option<String>,
    /// ECMP weight among routes to the same destination; defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub weight: Option<u32>,
}

/// The router's port to the outside world.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Uplink {
    /// The router's address and prefix on the external network, e.g. `192.168.100.2/24`.
    #[schemars(pattern(patterns::IPV4_CIDR))]
    pub ip: String,
    /// The external gateway; traffic with no better route goes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::IPV4))]
    pub gateway: Option<String>,
    /// Host interface the uplink is bound to on the gateway node(s).
    /// Not supported yet: the operator refuses an object that sets it (reason `Unsupported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub host_interface: Option<String>,
    /// Masquerade traffic leaving through the uplink behind the SNAT addresses.
    #[serde(default)]
    pub snat: bool,
    /// Source addresses for SNAT; defaults to the uplink address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(pattern(patterns::IPV4)))]
    pub snat_addresses: Vec<String>,
    /// Source ports SNAT may use; defaults to 1024-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_port_range: Option<PortRange>,
}

/// A destination NAT rule. Without ports it is a floating IP (all traffic to `externalIp`
/// goes to `internalIp`); with ports it forwards one port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.externalPort) == has(self.internalPort)",
     "message": "externalPort and internalPort go together"},
    {"rule": "!has(self.externalPort) || has(self.protocol)",
     "message": "port forwarding needs a protocol"}
]))]
pub struct DnatRule {
    /// The address clients connect to.
    #[schemars(pattern(patterns::IP))]
    pub external_ip: String,
    /// The address it is translated to.
    #[schemars(pattern(patterns::IP))]
    pub internal_ip: String,
    /// Protocol, for port forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<L4Protocol>,
    /// External port, for port forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub external_port: Option<u16>,
    /// Internal port, for port forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub internal_port: Option<u16>,
}

/// What the operator reports about a router.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualRouterStatus {
    /// `Ready` with reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The 24-bit tunnel key allocated to the router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_key: Option<u32>,
    /// The router's ports as programmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<RouterPortStatus>,
}

/// One programmed router port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterPortStatus {
    /// The bridge name, or `uplink`.
    pub interface: String,
    /// Address and prefix, e.g. `10.10.0.1/24`.
    pub address: String,
    /// MAC address of the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The port's tunnel key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_key: Option<u32>,
    /// The NSDB port id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
}
