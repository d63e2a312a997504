//! `VirtualBridge` (vbr): a virtual L2 segment with its subnet, the Kuryr network of namespaces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::conditions_schema;
use crate::patterns;

/// A virtual L2 bridge with an IPv4 subnet (and optionally IPv6). Pods of the namespaces it
/// serves get a port on it and an address from its subnet.
// clippy reads the repeated `printcolumn(...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "VirtualBridge",
    plural = "virtualbridges",
    shortname = "vbr",
    category = "weft",
    status = "VirtualBridgeStatus",
    derive = "PartialEq",
    doc = "A virtual L2 bridge with its subnet; the network of the namespaces it serves.",
    printcolumn(name = "Subnet", type_ = "string", json_path = ".spec.subnet"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".spec.gateway"),
    printcolumn(
        name = "VLAN",
        type_ = "integer",
        json_path = ".spec.vlan",
        priority = 1
    ),
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
pub struct VirtualBridgeSpec {
    /// IPv4 subnet in CIDR form, e.g. `10.10.0.0/24`. Pod addresses come from it.
    #[schemars(pattern(patterns::IPV4_CIDR))]
    pub subnet: String,
    /// Optional IPv6 subnet, e.g. `fd00:10::/64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::IPV6_CIDR))]
    pub subnet_v6: Option<String>,
    /// Gateway address inside `subnet`; defaults to the first host address of the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::IPV4))]
    pub gateway: Option<String>,
    /// IPv6 gateway address inside `subnetV6`, the next hop of the pods' IPv6 default route;
    /// defaults to the subnet's first address after the network address (`::1`). A router
    /// reaches the bridge over IPv6 by an interface with `ipV6` at this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::IPV6))]
    pub gateway_v6: Option<String>,
    /// MTU of the pod interfaces. Without it each node's agent gives its pods the largest
    /// MTU its underlay carries with the encapsulation; an MTU larger than that is refused
    /// at attach time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<u16>,
    /// Addresses never handed to pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096), inner(pattern(patterns::IP)))]
    pub excluded_ips: Vec<String>,
    /// The namespaces whose pods attach to this bridge. A namespace is served by one bridge
    /// at most; pods of a namespace no bridge serves attach to the agents' default bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceSelection>,
    /// Optional 802.1Q VLAN id of the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4094))]
    pub vlan: Option<u16>,
}

/// Namespaces chosen by name and/or by label; a namespace matching either is served.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelection {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(patterns::OBJECT_NAME)))]
    pub names: Vec<String>,
    /// Namespaces by label. A namespace that `names` lists belongs to that bridge; one that only
    /// selectors match goes to the matching bridge whose name sorts first, and the others
    /// report it in their Ready message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// What the operator and agents report about a bridge.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualBridgeStatus {
    /// `Ready` with reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The 24-bit tunnel key allocated to the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_key: Option<u32>,
}
