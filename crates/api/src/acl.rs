//! `AccessControlList` (acl): an ordered rule chain attached to bridges, routers or pod ports.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{PodSelector, PortRange, Protocol, conditions_schema};
use crate::patterns;

/// An ordered list of rules, evaluated first to last; the first rule that matches decides,
/// and `defaultAction` applies when none does. `Jump` continues in another ACL, whose
/// `Return` (or end) comes back to the next rule here.
// clippy reads the repeated `printcolumn(...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "AccessControlList",
    plural = "accesscontrollists",
    shortname = "acl",
    category = "weft",
    status = "AccessControlListStatus",
    derive = "PartialEq",
    doc = "An ordered rule chain attached to bridges, routers or pod ports, in one direction.",
    printcolumn(name = "Direction", type_ = "string", json_path = ".spec.direction"),
    printcolumn(name = "Default", type_ = "string", json_path = ".spec.defaultAction"),
    printcolumn(name = "Rules", type_ = "integer", json_path = ".status.rules"),
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
pub struct AccessControlListSpec {
    /// Which traffic the ACL sees, from the point of view of what it is attached to:
    /// `Ingress` is traffic entering the device or pod, `Egress` traffic leaving it.
    pub direction: Direction,
    /// What the ACL is attached to. An ACL attached to nothing is only reached by `Jump`.
    #[serde(default)]
    pub attach_to: Attachment,
    /// The rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub rules: Vec<AclRule>,
    /// The action when no rule matches.
    #[serde(default)]
    pub default_action: DefaultAction,
}

/// Traffic direction.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Direction {
    /// Traffic entering the device or pod.
    #[default]
    Ingress,
    /// Traffic leaving the device or pod.
    Egress,
}

/// What an ACL applies to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `VirtualBridge` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(patterns::OBJECT_NAME)))]
    pub bridges: Vec<String>,
    /// `VirtualRouter` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(patterns::OBJECT_NAME)))]
    pub routers: Vec<String>,
    /// Pod ports, by label: the ACL filters the traffic they receive (`Ingress`) or send
    /// (`Egress`); its `Drop` and `Reject` decide, and `Accept` lets the packet on to the
    /// pod's other filters and NetworkPolicies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodSelector>,
}

/// A rule's verdict.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Action {
    /// Let the packet through.
    Accept,
    /// Discard the packet silently.
    Drop,
    /// Discard the packet and answer with a TCP reset or an ICMP unreachable.
    Reject,
    /// Continue in the ACL named by `jumpTo`.
    Jump,
    /// Go back to the ACL that jumped here (accept when this ACL was not jumped to).
    Return,
}

/// The verdict when no rule matches.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DefaultAction {
    /// Let the packet through.
    #[default]
    Accept,
    /// Discard the packet silently.
    Drop,
    /// Discard the packet and answer with a TCP reset or an ICMP unreachable.
    Reject,
    /// Go back to the ACL that jumped here.
    Return,
}

/// Connection-tracking state to match. Each field left out matches either way.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionState {
    /// The first packet of a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<bool>,
    /// A packet of a connection seen in both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established: Option<bool>,
    /// A packet related to a known connection (ICMP errors, FTP data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<bool>,
}

/// One rule: every given match must hold.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.action == 'Jump') == has(self.jumpTo)",
     "message": "jumpTo is required with action Jump and only allowed with it"},
    {"rule": "!(has(self.sourcePorts) || has(self.destinationPorts)) || (has(self.protocol) && self.protocol in ['TCP', 'UDP', 'SCTP'])",
     "message": "port ranges need protocol TCP, UDP or SCTP"},
    {"rule": "!(has(self.icmpType) || has(self.icmpCode)) || (has(self.protocol) && self.protocol in ['ICMP', 'ICMPv6'])",
     "message": "icmpType and icmpCode need protocol ICMP or ICMPv6"},
    {"rule": "!has(self.icmpCode) || has(self.icmpType)", "message": "icmpCode needs icmpType"}
]))]
pub struct AclRule {
    /// A label for logs and traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// Source prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::CIDR))]
    pub source: Option<String>,
    /// Match sources outside `source` instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_source: bool,
    /// Destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::CIDR))]
    pub destination: Option<String>,
    /// Match destinations outside `destination` instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_destination: bool,
    /// Protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Source ports (TCP, UDP, SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ports: Option<PortRange>,
    /// Destination ports (TCP, UDP, SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_ports: Option<PortRange>,
    /// ICMP type (ICMP, ICMPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP code (ICMP, ICMPv6); needs `icmpType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// Connection-tracking state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    /// The verdict when the rule matches.
    pub action: Action,
    /// The ACL to continue in, with action `Jump`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::OBJECT_NAME), length(min = 1, max = 253))]
    pub jump_to: Option<String>,
}

impl AclRule {
    /// A rule that matches everything and applies `action`.
    pub fn new(action: Action) -> Self {
        AclRule {
            name: None,
            source: None,
            invert_source: false,
            destination: None,
            invert_destination: false,
            protocol: None,
            source_ports: None,
            destination_ports: None,
            icmp_type: None,
            icmp_code: None,
            connection_state: None,
            action,
            jump_to: None,
        }
    }
}

/// What the operator reports about an ACL.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessControlListStatus {
    /// `Ready` with reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The NSDB chain id the rules were written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Number of programmed rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<u32>,
}
