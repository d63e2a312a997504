//! Programming one object: the semantic check, the translation, and the NSDB write, in that
//! order. The controllers and the offline `translate` command both go through here, so they
//! write exactly the same records.

use nsdb::Nsdb;

use crate::error::Error;
use crate::ids::ObjectKey;
use crate::store::{self, Applied};
use crate::translate::{self, Inventory, Translation};
use crate::validate::{self, Checks};

/// Checks an object against the inventory and translates it. Pure: no I/O.
///
/// A refused object yields [`Error::Unsupported`] or [`Error::InvalidSpec`], whose message
/// names each refused field.
pub fn check(key: &ObjectKey, inv: &Inventory) -> Result<Translation, Error> {
    check_with(key, inv, &validate::report(inv))
}

/// [`check`] with the checks of the inventory already computed (they cover every object at
/// once, so a caller programming many objects computes them once).
pub fn check_with(key: &ObjectKey, inv: &Inventory, checks: &Checks) -> Result<Translation, Error> {
    validate::faults_of(checks, key)?;
    translate::translate(key, inv)
}

/// Checks, translates and writes one object. When the check fails NSDB is not touched, so
/// the object's last good records (and everything else) stay as they are.
pub async fn program(nsdb: &Nsdb, key: &ObjectKey, inv: &Inventory) -> Result<Applied, Error> {
    program_with(nsdb, key, inv, &validate::report(inv)).await
}

/// [`program`] with the checks already computed.
pub async fn program_with(
    nsdb: &Nsdb,
    key: &ObjectKey,
    inv: &Inventory,
    checks: &Checks,
) -> Result<Applied, Error> {
    let t = check_with(key, inv, checks)?;
    store::apply(nsdb, t).await
}
