//! Programming one object: the semantic check, the translation, and the NSDB write, in that
//! order. The controllers and the offline `translate` command both go through here, so they
//! write exactly the same records.

use api::validate::Report;
use nsdb::Nsdb;

use crate::error::Error;
use crate::ids::ObjectKey;
use crate::store::{self, Applied};
use crate::translate::{self, Inventory, Translation};
use crate::validate;

/// Checks an object against the inventory and translates it. Pure: no I/O.
///
/// A refused object yields [`Error::InvalidSpec`] whose message names each refused field.
pub fn check(key: &ObjectKey, inv: &Inventory) -> Result<Translation, Error> {
    check_with(key, inv, &validate::report(inv))
}

/// [`check`] with the semantic report of the inventory already computed (it covers every
/// object at once, so a caller programming many objects computes it once).
pub fn check_with(key: &ObjectKey, inv: &Inventory, report: &Report) -> Result<Translation, Error> {
    validate::faults_of(report, key)?;
    translate::translate(key, inv)
}

/// Checks, translates and writes one object. When the check fails NSDB is not touched, so
/// the object's last good records (and everything else) stay as they are.
pub async fn program(nsdb: &Nsdb, key: &ObjectKey, inv: &Inventory) -> Result<Applied, Error> {
    program_with(nsdb, key, inv, &validate::report(inv)).await
}

/// [`program`] with the semantic report already computed.
pub async fn program_with(
    nsdb: &Nsdb,
    key: &ObjectKey,
    inv: &Inventory,
    report: &Report,
) -> Result<Applied, Error> {
    let t = check_with(key, inv, report)?;
    store::apply(nsdb, t).await
}
