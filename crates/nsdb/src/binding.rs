//! Port bindings written by transaction: a port is bound to one vport of one host at a
//! time. Binding a port that is already bound elsewhere is refused instead of overwriting
//! the other binding (the last writer used to win, even across hosts), and unbinding
//! deletes only the caller's own binding, at the version it read.

use tracing::debug;

use crate::client::{Nsdb, Versioned};
use crate::error::{NsdbError, Result};
use crate::records::PortBinding;

/// Reads and conditional writes a binding retries when another writer got between them.
const MAX_ATTEMPTS: u32 = 8;

/// What [`Nsdb::bind_port`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The binding was created at this version.
    Created(i64),
    /// The same binding was there already, at this version (a repeated attach).
    Unchanged(i64),
}

/// What [`Nsdb::unbind_port`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unbind {
    /// The caller's binding was deleted.
    Removed(PortBinding),
    /// The port had no binding.
    Absent,
    /// The port is bound to another host, or to another vport, and was left alone.
    NotOurs(PortBinding),
}

impl Nsdb {
    /// Binds a port: creates `binding` if the port has none, succeeds without writing if
    /// the port has exactly this binding, and otherwise fails with
    /// [`NsdbError::PortAlreadyBound`] naming the binding that holds it. The write is a
    /// transaction conditional on the key being absent, so of two hosts binding the same
    /// port at once exactly one wins.
    pub async fn bind_port(&self, binding: &PortBinding) -> Result<Bind> {
        for _ in 0..MAX_ATTEMPTS {
            match self.get::<PortBinding>(&binding.port).await? {
                Some(Versioned { record, version }) if record == *binding => {
                    return Ok(Bind::Unchanged(version));
                }
                Some(Versioned { record, .. }) => {
                    return Err(NsdbError::PortAlreadyBound {
                        port: record.port,
                        host: record.host,
                        vport: record.vport,
                    });
                }
                None => match self.txn().create(binding).commit().await {
                    Ok(version) => return Ok(Bind::Created(version)),
                    Err(NsdbError::TxnConditionFailed { .. }) => {
                        debug!(port = %binding.port, "binding written meanwhile, reading it again");
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        Err(NsdbError::Contended {
            pool: format!("binding of {}", binding.port),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Unbinds a port from `host`: deletes its binding only if the binding names `host`
    /// (and `vport`, when given), with a delete conditional on the version read, so a
    /// binding another host wrote meanwhile is never removed.
    pub async fn unbind_port(&self, port: &str, host: &str, vport: Option<&str>) -> Result<Unbind> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(cur) = self.get::<PortBinding>(port).await? else {
                return Ok(Unbind::Absent);
            };
            if cur.record.host != host || vport.is_some_and(|v| v != cur.record.vport) {
                return Ok(Unbind::NotOurs(cur.record));
            }
            match self
                .txn()
                .delete_if_version::<PortBinding>(port, cur.version)
                .commit()
                .await
            {
                Ok(_) => return Ok(Unbind::Removed(cur.record)),
                Err(NsdbError::TxnConditionFailed { .. }) => {
                    debug!(port, "binding changed meanwhile, reading it again");
                }
                Err(e) => return Err(e),
            }
        }
        Err(NsdbError::Contended {
            pool: format!("binding of {port}"),
            attempts: MAX_ATTEMPTS,
        })
    }
}
