//! Weft's Kubernetes API: the four CRD kinds of group `weft.dev/v1alpha1`, their status
//! conditions, CRD manifest generation, the semantic validation the operator applies, and the
//! list of fields it refuses because nothing implements them yet ([`unsupported`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use api::validate::{Kind, Objects, validate};
//! use api::{VirtualBridge, VirtualBridgeSpec, invalid_spec_condition};
//!
//! let bridge = VirtualBridge::new("blue", VirtualBridgeSpec {
//!     subnet: "10.10.0.0/24".into(),
//!     gateway: Some("10.20.0.1".into()),
//!     ..Default::default()
//! });
//! let bridges = BTreeMap::from([("blue".to_string(), bridge)]);
//! let (routers, lbs, acls) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
//! let report = validate(Objects { bridges: &bridges, routers: &routers, load_balancers: &lbs, acls: &acls });
//! let faults = report.of(Kind::VirtualBridge, "blue");
//! assert_eq!(faults[0].field, "spec.gateway");
//!
//! // What the operator writes to the object's status.
//! let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
//! let ready = invalid_spec_condition(faults, Some(1), now);
//! assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
//! assert_eq!(ready.message, "spec.gateway: 10.20.0.1 is outside the subnet 10.10.0.0/24");
//! ```

pub mod acl;
pub mod bridge;
pub mod common;
pub mod crdgen;
pub mod error;
pub mod loadbalancer;
pub mod patterns;
pub mod router;
pub mod schema;
pub mod unsupported;
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
