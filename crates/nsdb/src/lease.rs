//! etcd leases for records that must vanish with their writer (a host's registration):
//! grant, attach to puts, keep alive in the background, revoke.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::PutOptions;
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::client::{Nsdb, Txn};
use crate::codec;
use crate::error::{NsdbError, Result};
use crate::keys;
use crate::records::Record;

/// A lease kept alive by a background task until dropped. Dropping it stops the
/// refreshes; the lease then expires after its TTL (or revoke it at once).
#[derive(Debug)]
pub struct KeptLease {
    id: i64,
    alive: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl KeptLease {
    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// False once etcd has said the lease no longer exists (expired or revoked): the
    /// records attached to it are gone and must be written again under a new lease.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Nsdb {
    /// Grants a lease of `ttl_secs` seconds. Returns its id.
    pub async fn grant_lease(&self, ttl_secs: i64) -> Result<i64> {
        let resp = self
            .etcd()
            .lease_grant(ttl_secs, None)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "lease grant",
                key: format!("ttl {ttl_secs}s"),
                source,
            })?;
        Ok(resp.id())
    }

    /// Revokes a lease: every key attached to it is deleted at once.
    pub async fn revoke_lease(&self, lease: i64) -> Result<()> {
        self.etcd()
            .lease_revoke(lease)
            .await
            .map_err(|source| NsdbError::Etcd {
                op: "lease revoke",
                key: format!("lease {lease:x}"),
                source,
            })?;
        Ok(())
    }

    /// Refreshes `lease` every third of `ttl_secs` in the background, riding out etcd
    /// restarts, until the returned handle is dropped or etcd reports the lease gone.
    pub fn keep_lease_alive(&self, lease: i64, ttl_secs: i64) -> KeptLease {
        let alive = Arc::new(AtomicBool::new(true));
        let period = Duration::from_millis((ttl_secs.max(1) as u64) * 1000 / 3);
        let task = tokio::spawn(keep_alive(self.clone(), lease, period, alive.clone()));
        KeptLease {
            id: lease,
            alive,
            task,
        }
    }
}

async fn keep_alive(db: Nsdb, lease: i64, period: Duration, alive: Arc<AtomicBool>) {
    loop {
        match db.etcd().lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                if let Err(err) = keeper.keep_alive().await {
                    warn!(lease, %err, "lease refresh failed, reconnecting");
                    break;
                }
                match stream.message().await {
                    Ok(Some(resp)) if resp.ttl() <= 0 => {
                        error!(lease, "lease expired or revoked; its records are gone");
                        alive.store(false, Ordering::SeqCst);
                        return;
                    }
                    Ok(Some(_)) => tokio::time::sleep(period).await,
                    Ok(None) => {
                        warn!(lease, "lease refresh stream closed, reconnecting");
                        break;
                    }
                    Err(err) => {
                        warn!(lease, %err, "lease refresh failed, reconnecting");
                        break;
                    }
                }
            },
            Err(err) => warn!(lease, %err, "cannot refresh lease, retrying"),
        }
        tokio::time::sleep(period.min(Duration::from_secs(1))).await;
    }
}

impl Txn {
    /// Puts a record attached to `lease`: it is deleted when the lease ends.
    pub fn put_with_lease<R: Record>(self, record: &R, lease: i64) -> Self {
        if let Err(e) = keys::validate_id(R::KIND, &record.id()) {
            return self.fail(e);
        }
        match codec::encode(record) {
            Ok(v) => self.push_put(record.key(), v, Some(PutOptions::new().with_lease(lease))),
            Err(e) => self.fail(e),
        }
    }
}
