//! Weft's Kubernetes API: the four CRD kinds of group `weft.dev/v1alpha1`, their status
//! conditions, CRD manifest generation, and the semantic validation the operator applies.

pub mod acl;
pub mod bridge;
pub mod common;
pub mod crdgen;
pub mod error;
pub mod loadbalancer;
pub mod patterns;
pub mod router;
pub mod schema;
pub mod validate;

pub use acl::{
    AccessControlList, AccessControlListSpec, AccessControlListStatus, AclRule, Action, Attachment,
    ConnectionState, DefaultAction, Direction,
};
pub use bridge::{NamespaceSelection, VirtualBridge, VirtualBridgeSpec, VirtualBridgeStatus};
pub use common::{
    L4Protocol, PodSelector, PortRange, Protocol, READY, find_condition, invalid_spec_condition,
    ready_condition, reason, set_condition,
};
pub use error::Error;
pub use loadbalancer::{
    HealthCheck, HealthCheckType, Member, MemberStatus, SessionAffinity, Vip, VipStatus,
    VirtualLoadBalancer, VirtualLoadBalancerSpec, VirtualLoadBalancerStatus,
};
pub use router::{
    DnatRule, RouterInterface, RouterPortStatus, StaticRoute, UPLINK, Uplink, VirtualRouter,
    VirtualRouterSpec, VirtualRouterStatus,
};
pub use validate::Invalid;

/// The API group of every Weft kind.
pub const GROUP: &str = "weft.dev";
/// The API version of every Weft kind.
pub const VERSION: &str = "v1alpha1";
