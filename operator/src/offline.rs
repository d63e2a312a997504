//! The offline path: reading Weft objects from YAML manifests and programming them into NSDB
//! exactly as the controllers do (`weft-operator translate`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use api::{AccessControlList, VirtualBridge, VirtualLoadBalancer, VirtualRouter};
use kube::ResourceExt;
use nsdb::Nsdb;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::ids::{CrKind, ObjectKey};
use crate::program;
use crate::store::{self, Applied};
use crate::translate::{Inventory, Translation};

/// An object the CRD schema refuses, as `kubectl apply` would: it never reaches the
/// inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub key: ObjectKey,
    pub path: PathBuf,
    /// Each refused field, `spec.vips[0].port: ...`, joined by `; `.
    pub message: String,
}

/// The objects read from manifests, the file each came from, and those the schema refused.
#[derive(Debug, Default)]
pub struct Loaded {
    pub inventory: Inventory,
    pub sources: BTreeMap<ObjectKey, PathBuf>,
    pub refused: Vec<Refusal>,
    schemas: Option<api::schema::Schemas>,
}

/// The files a path names: itself, or the `*.yaml`/`*.yml` files directly in a directory
/// (not its subdirectories), sorted.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn decode<T: DeserializeOwned>(
    path: &Path,
    index: usize,
    doc: serde_json::Value,
) -> Result<T, Error> {
    serde_json::from_value(doc).map_err(|source| Error::Decode {
        path: path.to_owned(),
        index,
        source,
    })
}

impl Loaded {
    /// Reads every Weft object in the given files and directories.
    pub fn from_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Loaded, Error> {
        let mut loaded = Loaded::default();
        for p in paths {
            for file in manifest_files(p.as_ref())? {
                let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
                    path: file.clone(),
                    source,
                })?;
                loaded.add_documents(&file, &text)?;
            }
        }
        Ok(loaded)
    }

    /// Adds the objects of one multi-document YAML text.
    pub fn add_documents(&mut self, path: &Path, text: &str) -> Result<(), Error> {
        if self.schemas.is_none() {
            self.schemas =
                Some(api::schema::Schemas::generated().map_err(|source| Error::Schema { source })?);
        }
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(text).map_err(|source| Error::Yaml {
                path: path.to_owned(),
                index: 0,
                source: Box::new(source),
            })?;
        for (index, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let field = |f: &str| doc.get(f).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            let (api_version, kind) = (field("apiVersion"), field("kind"));
            let cr_kind = (api_version == format!("{}/{}", api::GROUP, api::VERSION))
                .then(|| CrKind::from_kind_name(&kind))
                .flatten()
                .ok_or_else(|| Error::UnknownKind {
                    path: path.to_owned(),
                    index,
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                })?;
            let meta_name = doc
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let schemas = self.schemas.as_ref().ok_or(Error::MissingMetadata {
                kind: cr_kind.as_str(),
                field: "schema",
            })?;
            let faults = schemas
                .check(&doc)
                .map_err(|source| Error::Schema { source })?;
            if !faults.is_empty() {
                self.refused.push(Refusal {
                    key: ObjectKey::new(cr_kind, meta_name),
                    path: path.to_owned(),
                    message: faults
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
                continue;
            }
            let name = match cr_kind {
                CrKind::VirtualBridge => {
                    let o: VirtualBridge = decode(path, index, doc)?;
                    let n = o.name_any();
                    self.inventory.add_bridge(o);
                    n
                }
                CrKind::VirtualRouter => {
                    let o: VirtualRouter = decode(path, index, doc)?;
                    let n = o.name_any();
                    self.inventory.add_router(o);
                    n
                }
                CrKind::VirtualLoadBalancer => {
                    let o: VirtualLoadBalancer = decode(path, index, doc)?;
                    let n = o.name_any();
                    self.inventory.add_load_balancer(o);
                    n
                }
                CrKind::AccessControlList => {
                    let o: AccessControlList = decode(path, index, doc)?;
                    let n = o.name_any();
                    self.inventory.add_acl(o);
                    n
                }
            };
            if name.is_empty() {
                return Err(Error::MissingMetadata {
                    kind: cr_kind.as_str(),
                    field: "metadata.name",
                });
            }
            let key = ObjectKey::new(cr_kind, name);
            if let Some(first) = self.sources.insert(key.clone(), path.to_owned()) {
                return Err(Error::Duplicate {
                    kind: cr_kind.as_str(),
                    name: key.name,
                    first,
                    second: path.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// What became of one object.
#[derive(Debug)]
pub enum Outcome {
    /// Written to NSDB.
    Programmed(Applied),
    /// Checked and translated only (`--dry-run`).
    Checked(Translation),
    /// Refused: nothing of it was written.
    Refused(Error),
}

impl Outcome {
    /// Whether the object was refused.
    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::Refused(_))
    }
}

/// Checks, translates and (unless `nsdb` is `None`) writes every object of the inventory,
/// in dependency order. A refused object does not stop the others. Transient NSDB failures
/// are returned as errors.
pub async fn program_all(
    nsdb: Option<&Nsdb>,
    inv: &Inventory,
) -> Result<Vec<(ObjectKey, Outcome)>, Error> {
    let mut out = Vec::new();
    let report = crate::validate::report(inv);
    for key in inv.keys() {
        let outcome = match nsdb {
            None => match program::check_with(&key, inv, &report) {
                Ok(t) => Outcome::Checked(t),
                Err(e) => Outcome::Refused(e),
            },
            Some(db) => match program::program_with(db, &key, inv, &report).await {
                Ok(a) => Outcome::Programmed(a),
                Err(e @ (Error::InvalidSpec { .. } | Error::Unsupported { .. })) => {
                    Outcome::Refused(e)
                }
                Err(e) => return Err(e),
            },
        };
        out.push((key, outcome));
    }
    Ok(out)
}

/// Deletes the records of every operator-owned object in NSDB that is not in `inv`.
/// Returns the objects removed.
pub async fn prune(nsdb: &Nsdb, inv: &Inventory) -> Result<Vec<ObjectKey>, Error> {
    let mut removed = Vec::new();
    for owner in store::stored_owners(nsdb).await? {
        if !inv.contains(&owner) {
            store::cleanup(nsdb, &owner).await?;
            removed.push(owner);
        }
    }
    Ok(removed)
}

/// One line per schema refusal, for the command's output.
pub fn describe_refusal(r: &Refusal) -> String {
    format!("{}: refused by the CRD schema: {}", r.key, r.message)
}

/// One line per object, for the command's output.
pub fn describe(key: &ObjectKey, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Programmed(a) => format!(
            "{key}: programmed, {} records ({} written, {} deleted, {} unchanged)",
            a.records.len(),
            a.written,
            a.deleted,
            a.unchanged
        ),
        Outcome::Checked(t) => format!(
            "{key}: valid, {} records (dry run, nothing written)",
            t.records.len()
        ),
        Outcome::Refused(Error::InvalidSpec { message, .. }) => {
            format!("{key}: refused, {}: {message}", api::reason::INVALID_SPEC)
        }
        Outcome::Refused(Error::Unsupported { message, .. }) => {
            format!("{key}: refused, {}: {message}", api::reason::UNSUPPORTED)
        }
        Outcome::Refused(e) => format!("{key}: refused: {e}"),
    }
}
