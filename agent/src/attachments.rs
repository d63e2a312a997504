//! The local record of what this agent attached: which port it bound to which vport of the
//! datapath. Detach goes through it (never through whatever name an NSDB binding holds), and
//! it survives an agent restart: a JSON file in the state directory (`--state-dir`), replaced
//! atomically (a temporary file, fsync, rename, fsync of the directory) on every change.
//!
//! Attach and detach hold the record's lock from their first check to their last write, so
//! two requests for one vport or one port are decided one after the other.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard};

/// The record file's name in the state directory.
pub const FILE_NAME: &str = "attachments.json";

/// The schema version this build writes and reads.
const VERSION: u32 = 1;

/// What can go wrong with the record file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create the state directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the attachment record {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the attachment record {path} is not valid: move it away to start without it")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the attachment record {path} has version {found}; this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write the attachment record {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One port this agent attached. The CNI plugin's attachments extend it with the container,
/// its interface name and its network namespace (new optional fields, so older files still
/// read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The NSDB port id.
    pub port: String,
    /// The datapath vport (the host end of the pod's veth).
    pub vport: String,
    /// Set when the CNI plugin made the attachment: whose interface it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
}

/// The container side of an attachment the CNI plugin made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    pub container_id: String,
    /// The interface name inside the container (`CNI_IFNAME`).
    pub ifname: String,
    /// The network namespace path at ADD.
    pub netns: String,
    /// The network configuration's name.
    pub network: String,
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    /// By port id.
    pub attachments: BTreeMap<String, Attachment>,
}

impl Record {
    /// The attachment of `port`.
    pub fn get(&self, port: &str) -> Option<&Attachment> {
        self.attachments.get(port)
    }

    /// The CNI attachment of `container_id`'s interface `ifname`.
    pub fn by_container(&self, container_id: &str, ifname: &str) -> Option<&Attachment> {
        self.attachments.values().find(|a| {
            a.cni
                .as_ref()
                .is_some_and(|c| c.container_id == container_id && c.ifname == ifname)
        })
    }

    /// The attachment that holds `vport`.
    pub fn by_vport(&self, vport: &str) -> Option<&Attachment> {
        self.attachments.values().find(|a| a.vport == vport)
    }
}

/// The record and its file.
#[derive(Debug)]
pub struct Attachments {
    path: PathBuf,
    record: Mutex<Record>,
}

/// The locked record: changes are written to the file before they return.
#[derive(Debug)]
pub struct Locked<'a> {
    path: &'a Path,
    record: MutexGuard<'a, Record>,
}

impl Attachments {
    /// Reads the record in `state_dir` (created if missing); no file is an empty record.
    pub fn load(state_dir: &Path) -> Result<Attachments, RecordError> {
        std::fs::create_dir_all(state_dir).map_err(|source| RecordError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(FILE_NAME);
        let record = match std::fs::read(&path) {
            Ok(bytes) => {
                let r: Record =
                    serde_json::from_slice(&bytes).map_err(|source| RecordError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if r.version != VERSION {
                    return Err(RecordError::Version {
                        path,
                        found: r.version,
                    });
                }
                r
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record {
                version: VERSION,
                attachments: BTreeMap::new(),
            },
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        Ok(Attachments {
            path,
            record: Mutex::new(record),
        })
    }

    /// The file this record is kept in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Locks the record until the guard is dropped.
    pub async fn lock(&self) -> Locked<'_> {
        Locked {
            path: &self.path,
            record: self.record.lock().await,
        }
    }
}

impl Locked<'_> {
    /// The record as it is now.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Adds (or replaces) the attachment of `a.port` and writes the file.
    pub fn insert(&mut self, a: Attachment) -> Result<(), RecordError> {
        let mut next = self.record.clone();
        next.attachments.insert(a.port.clone(), a);
        self.commit(next)
    }

    /// Removes the attachment of `port` and writes the file; returns it.
    pub fn remove(&mut self, port: &str) -> Result<Option<Attachment>, RecordError> {
        let mut next = self.record.clone();
        let gone = next.attachments.remove(port);
        if gone.is_some() {
            self.commit(next)?;
        }
        Ok(gone)
    }

    /// Writes `next` to the file, then makes it the record: a failed write changes neither.
    fn commit(&mut self, next: Record) -> Result<(), RecordError> {
        write_atomically(self.path, &next).map_err(|source| RecordError::Write {
            path: self.path.to_owned(),
            source,
        })?;
        *self.record = next;
        Ok(())
    }
}

fn write_atomically(path: &Path, record: &Record) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(port: &str, vport: &str) -> Attachment {
        Attachment {
            cni: None,
            port: port.into(),
            vport: vport.into(),
        }
    }

    #[tokio::test]
    async fn the_record_survives_a_reload_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let a = Attachments::load(dir.path()).unwrap();
        {
            let mut l = a.lock().await;
            assert!(l.record().attachments.is_empty());
            l.insert(att("p1", "wf-p1")).unwrap();
            l.insert(att("p2", "wf-p2")).unwrap();
            assert_eq!(l.remove("p2").unwrap(), Some(att("p2", "wf-p2")));
            assert_eq!(l.remove("p2").unwrap(), None, "removing twice is no error");
        }
        let again = Attachments::load(dir.path()).unwrap();
        let l = again.lock().await;
        assert_eq!(l.record().get("p1"), Some(&att("p1", "wf-p1")));
        assert_eq!(l.record().by_vport("wf-p1"), Some(&att("p1", "wf-p1")));
        assert_eq!(l.record().get("p2"), None);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![FILE_NAME.to_string()], "no temporary file left");
    }

    #[tokio::test]
    async fn a_corrupt_or_newer_record_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"{\"version\":1,\"attach").unwrap();
        let e = Attachments::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        std::fs::write(&path, b"{\"version\":7,\"attachments\":{}}").unwrap();
        let e = Attachments::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 7"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Attachments::load(dir.path()).unwrap();
        let mut l = a.lock().await;
        l.insert(att("p1", "wf-p1")).unwrap();
        // A directory where the temporary file goes makes the write fail.
        std::fs::create_dir(dir.path().join("attachments.json.tmp")).unwrap();
        assert!(l.insert(att("p2", "wf-p2")).is_err());
        assert_eq!(l.record().get("p2"), None);
        assert!(l.remove("p1").is_err());
        assert_eq!(l.record().get("p1"), Some(&att("p1", "wf-p1")));
    }
}
