//! This host's registration in NSDB: the `Host` record written under an etcd lease that the
//! agent keeps alive, so a dead agent's host disappears once the lease expires.

use nsdb::{Host, KeptLease, Nsdb, Result};
use tracing::{info, warn};

/// A live registration: the host record and the lease that keeps it.
///
/// Dropping it stops the refreshes: the record then disappears within `ttl` seconds, which
/// is what happens when the agent dies. [`HostRegistration::deregister`] removes it at once.
#[derive(Debug)]
pub struct HostRegistration {
    nsdb: Nsdb,
    host: Host,
    ttl_secs: i64,
    lease: KeptLease,
}

/// Writes `host` under a new lease of `ttl_secs` seconds, in one transaction, and keeps the
/// lease alive in the background. An existing record of the same host (from a previous run
/// whose lease has not yet expired) is replaced and attached to the new lease.
pub async fn register_host(nsdb: &Nsdb, host: Host, ttl_secs: i64) -> Result<HostRegistration> {
    let lease = write_under_new_lease(nsdb, &host, ttl_secs).await?;
    info!(host = %host.id, lease = format_args!("{lease:x}"), ttl_secs, "host registered");
    Ok(HostRegistration {
        nsdb: nsdb.clone(),
        lease: nsdb.keep_lease_alive(lease, ttl_secs),
        host,
        ttl_secs,
    })
}

async fn write_under_new_lease(nsdb: &Nsdb, host: &Host, ttl_secs: i64) -> Result<i64> {
    let lease = nsdb.grant_lease(ttl_secs).await?;
    if let Err(err) = nsdb.txn().put_with_lease(host, lease).commit().await {
        // Do not leave an unused lease behind; its TTL would end it anyway.
        if let Err(revoke) = nsdb.revoke_lease(lease).await {
            warn!(host = %host.id, error = %nsdb::error::chain(&revoke), "cannot revoke the unused lease");
        }
        return Err(err);
    }
    Ok(lease)
}

impl HostRegistration {
    /// The registered record.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The etcd lease the record is attached to.
    pub fn lease_id(&self) -> i64 {
        self.lease.id()
    }

    /// False once etcd reported the lease gone (it expired while etcd was unreachable, or
    /// etcd lost its data): the record is gone too, and [`Self::ensure`] writes it again.
    pub fn is_alive(&self) -> bool {
        self.lease.is_alive()
    }

    /// Re-registers under a new lease when the current one is gone or the record is missing
    /// (etcd restored from an empty or older store keeps no lease to report as gone).
    /// Returns whether it wrote the record again. Call it periodically and after etcd
    /// reconnects.
    pub async fn ensure(&mut self) -> Result<bool> {
        if self.lease.is_alive() && self.nsdb.get::<Host>(&self.host.id).await?.is_some() {
            return Ok(false);
        }
        let lease = write_under_new_lease(&self.nsdb, &self.host, self.ttl_secs).await?;
        warn!(host = %self.host.id, lease = format_args!("{lease:x}"), "lease was lost; host registered again");
        self.lease = self.nsdb.keep_lease_alive(lease, self.ttl_secs);
        Ok(true)
    }

    /// Removes the registration now: revoking the lease deletes the host record.
    pub async fn deregister(self) -> Result<()> {
        let HostRegistration {
            nsdb, host, lease, ..
        } = self;
        let id = lease.id();
        drop(lease);
        nsdb.revoke_lease(id).await?;
        info!(host = %host.id, "host deregistered");
        Ok(())
    }
}
