//! Types shared by the four kinds: protocols, port ranges, pod selectors and status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::patterns;

/// The condition type every Weft object reports.
pub const READY: &str = "Ready";

/// Reasons used in the `Ready` condition.
pub mod reason {
    /// The object is translated and written to the network state database.
    pub const PROGRAMMED: &str = "Programmed";
    /// The spec is refused by the semantic check; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The spec sets a field nothing implements yet ([`crate::unsupported`]); the message
    /// names the field.
    pub const UNSUPPORTED: &str = "Unsupported";
    /// The object refers to something that is not programmed yet (not an error in the spec).
    pub const WAITING: &str = "Waiting";
    /// Writing to the network state database failed; it will be retried.
    pub const NSDB_ERROR: &str = "NsdbError";
}

/// A layer-4 protocol a load-balancer VIP or a DNAT rule can carry.
#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    JsonSchema,
)]
pub enum L4Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

/// A protocol an ACL rule can match.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    #[serde(rename = "ICMP")]
    Icmp,
    #[serde(rename = "ICMPv6")]
    Icmpv6,
}

impl From<L4Protocol> for Protocol {
    fn from(p: L4Protocol) -> Self {
        match p {
            L4Protocol::Tcp => Protocol::Tcp,
            L4Protocol::Udp => Protocol::Udp,
            L4Protocol::Sctp => Protocol::Sctp,
        }
    }
}

impl std::fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Protocol::from(*self).fmt(f)
    }
}

impl std::fmt::Display for Protocol {
    /// The name used in the CRDs: `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        })
    }
}

impl Protocol {
    /// Whether the protocol has source and destination ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }
}

/// An inclusive range of transport ports, `from <= to`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.from <= self.to", "message": "from must not be greater than to"}
]))]
pub struct PortRange {
    /// First port of the range.
    #[schemars(range(min = 1, max = 65535))]
    pub from: u16,
    /// Last port of the range (inclusive).
    #[schemars(range(min = 1, max = 65535))]
    pub to: u16,
}

/// Pods chosen by label, optionally only in some namespaces.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    /// Namespaces to look in; empty means every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(patterns::OBJECT_NAME)))]
    pub namespaces: Vec<String>,
    /// Labels the pods must carry.
    #[serde(flatten)]
    pub selector: LabelSelector,
}

/// Builds a `Ready` condition. The caller passes the clock in, so this stays pure.
pub fn ready_condition(
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: READY.to_string(),
        status: if ready { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Builds `Ready=False, reason InvalidSpec` with a message naming every refused field.
pub fn invalid_spec_condition(
    invalid: &[crate::validate::Invalid],
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    let message = invalid
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    ready_condition(
        false,
        reason::INVALID_SPEC,
        message,
        observed_generation,
        now,
    )
}

/// Finds the condition of the given type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Inserts or replaces the condition of `new.type_`, keeping the old `lastTransitionTime` when
/// the status did not change (the Kubernetes convention). Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            if *old == new {
                return false;
            }
            *old = new;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Schema attribute helper: conditions are a list map keyed by type, as in core Kubernetes.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = Vec::new();
        assert!(set_condition(
            &mut conds,
            ready_condition(true, reason::PROGRAMMED, "ok", Some(1), at(10))
        ));
        assert!(set_condition(
            &mut conds,
            ready_condition(true, reason::PROGRAMMED, "ok", Some(2), at(20))
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].observed_generation, Some(2));
        // Same again: nothing to write.
        assert!(!set_condition(
            &mut conds,
            ready_condition(true, reason::PROGRAMMED, "ok", Some(2), at(30))
        ));
    }

    #[test]
    fn set_condition_moves_transition_time_when_status_flips() {
        let mut conds = vec![ready_condition(
            true,
            reason::PROGRAMMED,
            "",
            Some(1),
            at(10),
        )];
        assert!(set_condition(
            &mut conds,
            ready_condition(
                false,
                reason::INVALID_SPEC,
                "spec.subnet: bad",
                Some(2),
                at(20)
            )
        ));
        let ready = find_condition(&conds, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "InvalidSpec");
        assert_eq!(ready.last_transition_time, at(20));
    }
}
