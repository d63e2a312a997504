//! `VirtualLoadBalancer` (vlb): L4 VIPs with member pools, health checks and session affinity.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{L4Protocol, PodSelector, conditions_schema};
use crate::patterns;

/// An L4 load balancer: each VIP spreads connections over a pool of members, listed or
/// selected by pod labels.
// clippy reads the repeated `printcolumn(...)` arguments as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "VirtualLoadBalancer",
    plural = "virtualloadbalancers",
    shortname = "vlb",
    category = "weft",
    status = "VirtualLoadBalancerStatus",
    derive = "PartialEq",
    doc = "An L4 load balancer: VIPs with pools of members, health checks and session affinity.",
    printcolumn(name = "VIPs", type_ = "string", json_path = ".spec.vips[*].ip"),
    printcolumn(name = "Router", type_ = "string", json_path = ".spec.router"),
    printcolumn(
        name = "Affinity",
        type_ = "string",
        json_path = ".spec.sessionAffinity",
        priority = 1
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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.sessionAffinityTimeoutSeconds) || (has(self.sessionAffinity) && self.sessionAffinity == 'ClientIP')",
     "message": "sessionAffinityTimeoutSeconds needs sessionAffinity ClientIP"}
]))]
pub struct VirtualLoadBalancerSpec {
    /// The `VirtualRouter` whose networks reach the VIPs; absent means every router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::OBJECT_NAME), length(min = 1, max = 253))]
    pub router: Option<String>,
    /// The virtual IPs served.
    #[schemars(length(min = 1, max = 1024))]
    pub vips: Vec<Vip>,
    /// How members are probed. The agent of each member's node probes it from the node's
    /// port into the virtual network, and a member that fails `unhealthyThreshold` probes in
    /// a row gets no new connection until it passes `healthyThreshold` in a row. Without it
    /// every member counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// `ClientIP` keeps a client on the same member.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// With `ClientIP`: how long a client's member is remembered after the client's last new
    /// connection. Past it, the client's next connection picks a member afresh. Default
    /// 10800 (three hours, as Kubernetes Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub session_affinity_timeout_seconds: Option<u32>,
}

/// One virtual IP, protocol and port, with its pool.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.members) && size(self.members) > 0) != has(self.pods)",
     "message": "give either members or pods, not both"},
    {"rule": "!has(self.targetPort) || has(self.pods)",
     "message": "targetPort is only used with pods"}
]))]
pub struct Vip {
    /// The virtual address.
    #[schemars(pattern(patterns::IP))]
    pub ip: String,
    /// The transport protocol.
    pub protocol: L4Protocol,
    /// The virtual port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Listed pool members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub members: Vec<Member>,
    /// Pods selected as members instead of a list: every address of each matching pod's
    /// port, weight 1, as pods come and go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodSelector>,
    /// The port on the selected pods; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<u16>,
}

fn default_weight() -> u32 {
    1
}

/// A pool member.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Member address.
    #[schemars(pattern(patterns::IP))]
    pub ip: String,
    /// Member port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Relative share of new connections.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 256))]
    pub weight: u32,
}

/// Source-IP session affinity.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SessionAffinity {
    /// Every connection picks a member afresh.
    #[default]
    None,
    /// Connections from one client address go to the same member, for as long as the client
    /// opens a new one within `sessionAffinityTimeoutSeconds` of the last.
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// Health-check protocol.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HealthCheckType {
    /// A TCP connect.
    #[serde(rename = "TCP")]
    Tcp,
    /// An HTTP GET expecting a 2xx or 3xx answer.
    #[serde(rename = "HTTP")]
    Http,
}

fn default_interval() -> u32 {
    5
}
fn default_timeout() -> u32 {
    2
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    3
}

/// How members are probed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type == 'HTTP' || !has(self.path)", "message": "path is only used by HTTP checks"},
    {"rule": "self.timeoutSeconds <= self.intervalSeconds",
     "message": "timeoutSeconds must not exceed intervalSeconds"}
]))]
pub struct HealthCheck {
    /// TCP connect or HTTP GET.
    #[serde(rename = "type")]
    pub kind: HealthCheckType,
    /// Path for HTTP checks; defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(patterns::HTTP_PATH), length(max = 1024))]
    pub path: Option<String>,
    /// Seconds between probes.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
    /// Seconds before a probe counts as failed.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
    /// Consecutive successes that make a member healthy.
    #[serde(default = "default_healthy")]
    #[schemars(range(min = 1, max = 10))]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a member unhealthy.
    #[serde(default = "default_unhealthy")]
    #[schemars(range(min = 1, max = 10))]
    pub unhealthy_threshold: u32,
}

/// What the operator reports about a load balancer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualLoadBalancerStatus {
    /// `Ready` with reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Each VIP with its programmed members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipStatus>,
}

/// A VIP and its programmed members.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VipStatus {
    /// The virtual address.
    pub ip: String,
    /// The transport protocol.
    pub protocol: L4Protocol,
    /// The virtual port.
    pub port: u16,
    /// The members, as listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
}

/// A programmed member, with its health when the load balancer has a health check.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member address.
    pub ip: String,
    /// Member port.
    pub port: u16,
    /// The verdict of the member's health check, as its node's agent last wrote it; absent
    /// without a health check, before the first verdict, or once the verdict expired with
    /// its agent (the member then takes traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}
