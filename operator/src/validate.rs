//! The checks before translation: the fields nothing implements yet (`api::unsupported`) and
//! the semantic check (`api::validate`), over the whole inventory, narrowed to one object and
//! turned into [`Error::Unsupported`] or [`Error::InvalidSpec`] naming each refused field.

use api::validate::{self as v, Invalid, Objects, Report};

use crate::error::Error;
use crate::ids::{CrKind, ObjectKey};
use crate::translate::Inventory;

/// What the checks found in an inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    /// The fields each object sets that nothing implements yet.
    pub unsupported: Report,
    /// The semantic faults of each object, against the others.
    pub invalid: Report,
}

fn objects(inv: &Inventory) -> Objects<'_> {
    Objects {
        bridges: &inv.bridges,
        routers: &inv.routers,
        load_balancers: &inv.load_balancers,
        acls: &inv.acls,
    }
}

/// Checks every object of the inventory, on its own and against the others.
pub fn report(inv: &Inventory) -> Checks {
    Checks {
        unsupported: api::unsupported::unsupported(objects(inv)),
        invalid: v::validate(objects(inv)),
    }
}

fn api_kind(kind: CrKind) -> v::Kind {
    match kind {
        CrKind::VirtualBridge => v::Kind::VirtualBridge,
        CrKind::VirtualRouter => v::Kind::VirtualRouter,
        CrKind::VirtualLoadBalancer => v::Kind::VirtualLoadBalancer,
        CrKind::AccessControlList => v::Kind::AccessControlList,
    }
}

fn joined(faults: &[Invalid]) -> String {
    faults
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The faults the checks hold for one object, as an error. An unsupported field comes first:
/// correcting the rest of the spec would not make the object do what it says.
pub fn faults_of(checks: &Checks, key: &ObjectKey) -> Result<(), Error> {
    let (kind, name) = (api_kind(key.kind), key.name.as_str());
    let unsupported = checks.unsupported.of(kind, name);
    if !unsupported.is_empty() {
        return Err(Error::Unsupported {
            kind: key.kind.as_str(),
            name: key.name.clone(),
            message: joined(unsupported),
        });
    }
    let invalid = checks.invalid.of(kind, name);
    if !invalid.is_empty() {
        return Err(Error::InvalidSpec {
            kind: key.kind.as_str(),
            name: key.name.clone(),
            message: joined(invalid),
        });
    }
    Ok(())
}

/// Refuses an object that sets an unsupported field or whose spec is inconsistent on its own
/// or with the inventory.
pub fn validate(key: &ObjectKey, inv: &Inventory) -> Result<(), Error> {
    faults_of(&report(inv), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_field_is_refused_before_the_semantic_check() {
        let mut inv = crate::fixtures::topology();
        // edge's uplink is to be bound to a host interface; the rest of it is valid.
        let edge = ObjectKey::new(CrKind::VirtualRouter, "edge");
        crate::fixtures::uplink_host_interface(&mut inv, "edge", Some("eth1"));
        let Err(Error::Unsupported { message, .. }) = validate(&edge, &inv) else {
            panic!("{:?}", validate(&edge, &inv))
        };
        assert!(
            message.starts_with("spec.uplink.hostInterface: not supported yet"),
            "{message}"
        );

        // Also invalid: still reported as unsupported, naming only that field.
        inv.routers.get_mut("edge").unwrap().spec.interfaces[0].bridge = "nope".into();
        let Err(Error::Unsupported { message, .. }) = validate(&edge, &inv) else {
            panic!("{:?}", validate(&edge, &inv))
        };
        assert!(!message.contains("spec.interfaces"), "{message}");

        // Without the field, the semantic fault shows.
        crate::fixtures::uplink_host_interface(&mut inv, "edge", None);
        let Err(Error::InvalidSpec { message, .. }) = validate(&edge, &inv) else {
            panic!("{:?}", validate(&edge, &inv))
        };
        assert!(message.starts_with("spec.interfaces[0]"), "{message}");

        // A health check is supported: web with one is valid.
        let web = ObjectKey::new(CrKind::VirtualLoadBalancer, "web");
        inv.load_balancers.get_mut("web").unwrap().spec.health_check =
            serde_json::from_value(serde_json::json!({"type": "TCP"})).unwrap();
        assert!(validate(&web, &inv).is_ok(), "{:?}", validate(&web, &inv));

        // An object that sets none and is valid passes.
        let blue = ObjectKey::new(CrKind::VirtualBridge, "blue");
        assert!(validate(&blue, &inv).is_ok());
    }

    #[test]
    fn a_bridge_choosing_namespaces_by_label_passes() {
        let mut inv = crate::fixtures::topology();
        let red = ObjectKey::new(CrKind::VirtualBridge, "red");
        inv.bridges.get_mut("red").unwrap().spec.namespaces = Some(api::NamespaceSelection {
            names: vec![],
            selector: Some(Default::default()),
        });
        assert!(validate(&red, &inv).is_ok());
    }
}
