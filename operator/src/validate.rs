//! The semantic check: `api::validate` over the whole inventory, narrowed to one object and
//! turned into [`Error::InvalidSpec`] naming each refused field.

use api::validate::{self as v, Objects, Report};

use crate::error::Error;
use crate::ids::{CrKind, ObjectKey};
use crate::translate::Inventory;

/// Checks every object of the inventory against the others.
pub fn report(inv: &Inventory) -> Report {
    v::validate(Objects {
        bridges: &inv.bridges,
        routers: &inv.routers,
        load_balancers: &inv.load_balancers,
        acls: &inv.acls,
    })
}

fn api_kind(kind: CrKind) -> v::Kind {
    match kind {
        CrKind::VirtualBridge => v::Kind::VirtualBridge,
        CrKind::VirtualRouter => v::Kind::VirtualRouter,
        CrKind::VirtualLoadBalancer => v::Kind::VirtualLoadBalancer,
        CrKind::AccessControlList => v::Kind::AccessControlList,
    }
}

/// The faults a report holds for one object, as an error.
pub fn faults_of(report: &Report, key: &ObjectKey) -> Result<(), Error> {
    let faults = report.of(api_kind(key.kind), &key.name);
    if faults.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidSpec {
        kind: key.kind.as_str(),
        name: key.name.clone(),
        message: faults
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Refuses an object whose spec is inconsistent on its own or with the inventory.
pub fn validate(key: &ObjectKey, inv: &Inventory) -> Result<(), Error> {
    faults_of(&report(inv), key)
}
