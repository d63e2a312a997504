//! Allocators for IP addresses on a bridge and for 24-bit tunnel keys.
//!
//! Uniqueness comes from etcd alone: an allocation is a transaction that creates the
//! lease key only if it does not exist. A per-process cache of used slots (filled by
//! one list on first use, refreshed when a pool looks full or keeps losing races)
//! keeps tasks of one process from trying the same slot, so they rarely conflict.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracing::debug;

use crate::client::{Nsdb, Txn};
use crate::error::{NsdbError, Result};
use crate::keys::{self, Kind};
use crate::records::{Bridge, IpLease, Record, TunnelKeyAlloc};
use crate::tunnel_key;

/// How many lost races an allocation tolerates before it gives up.
pub(crate) const MAX_ATTEMPTS: u32 = 10_000;
/// Lost races in a row after which the used-slot cache is re-read from etcd.
pub(crate) const RELOAD_AFTER_CONFLICTS: u32 = 8;

/// Address family to allocate from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

/// The per-process view of one pool.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    loaded: bool,
    used: BTreeSet<u128>,
    next: u128,
}

/// An address range: `size` offsets from `base`, minus reserved offsets.
#[derive(Debug, Clone)]
pub(crate) struct Space {
    /// The pool's name, as errors and the per-process cache name it.
    pub(crate) name: String,
    base: u128,
    size: u128,
    reserved: BTreeSet<u128>,
}

impl Space {
    pub(crate) fn for_bridge(bridge: &Bridge, family: IpFamily) -> Result<Space> {
        let name = format!("leases/{}/{family:?}", bridge.id);
        let mut reserved = BTreeSet::new();
        let (base, size, v4) = match family {
            IpFamily::V4 => {
                let net = bridge.subnet_v4.ok_or_else(|| NsdbError::NoSubnet {
                    bridge: bridge.id.clone(),
                    family: "IPv4",
                })?;
                let size = 1u128 << (32 - u32::from(net.prefix_len()));
                if net.prefix_len() <= 30 {
                    reserved.insert(0);
                    reserved.insert(size - 1);
                }
                (u128::from(u32::from(net.network())), size, true)
            }
            IpFamily::V6 => {
                let net = bridge.subnet_v6.ok_or_else(|| NsdbError::NoSubnet {
                    bridge: bridge.id.clone(),
                    family: "IPv6",
                })?;
                let bits = 128 - u32::from(net.prefix_len());
                let size = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
                // The subnet-router anycast address.
                reserved.insert(0);
                (u128::from(net.network()), size, false)
            }
        };
        let mut space = Space {
            name,
            base,
            size,
            reserved,
        };
        let mut skip: Vec<IpAddr> = bridge.excluded_ips.clone();
        if v4 {
            skip.extend(bridge.gateway_v4.map(IpAddr::V4));
        } else {
            skip.extend(bridge.gateway_v6.map(IpAddr::V6));
        }
        for ip in skip {
            if let Some(off) = space.offset_of(ip) {
                space.reserved.insert(off);
            }
        }
        Ok(space)
    }

    fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        let n = match ip {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let off = n.checked_sub(self.base)?;
        (off < self.size).then_some(off)
    }

    pub(crate) fn ip_at(&self, off: u128, family: IpFamily) -> IpAddr {
        let n = self.base + off;
        match family {
            // The v4 space never exceeds 32 bits, so the truncation is exact.
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    pub(crate) fn tunnel_keys(ty: u32) -> Space {
        Space {
            name: format!("tunnel_keys/{ty}"),
            base: u128::from(ty) << tunnel_key::INDEX_BITS,
            size: u128::from(tunnel_key::MAX_INDEX) + 1,
            // Index 0 is never handed out, so a zero key always means "unset".
            reserved: BTreeSet::from([0]),
        }
    }
}

/// Where a pool's used slots are read from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PoolSource<'a> {
    /// The leases of a bridge.
    Leases(&'a str),
    /// The tunnel keys of a type.
    TunnelKeys(u32),
}

enum Pick {
    Offset(u128),
    NeedLoad,
    Full,
}

impl Nsdb {
    fn pick(&self, space: &Space) -> Pick {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let st = pools.entry(space.name.clone()).or_default();
        if !st.loaded {
            return Pick::NeedLoad;
        }
        // Among |used ∪ reserved| + 1 consecutive offsets at least one is free, if any is.
        let steps = (st.used.len() as u128 + space.reserved.len() as u128 + 1).min(space.size);
        let mut off = st.next % space.size;
        for _ in 0..steps {
            if !st.used.contains(&off) && !space.reserved.contains(&off) {
                st.used.insert(off);
                st.next = (off + 1) % space.size;
                return Pick::Offset(off);
            }
            off = (off + 1) % space.size;
        }
        Pick::Full
    }

    /// After losing `off` to another process, jump a random distance ahead so that
    /// racing allocators spread out instead of walking the same sequence in lockstep.
    pub(crate) fn skip_ahead(&self, space: &Space, off: u128) {
        use std::hash::{BuildHasher, Hasher};
        let jitter = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % 64;
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = pools.get_mut(&space.name) {
            st.next = (off + 1 + u128::from(jitter)) % space.size;
        }
    }

    pub(crate) fn unpick(&self, space: &Space, off: u128) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = pools.get_mut(&space.name) {
            st.used.remove(&off);
        }
    }

    fn store_used(&self, space: &Space, used: BTreeSet<u128>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let st = pools.entry(space.name.clone()).or_default();
        st.used = used;
        st.loaded = true;
    }

    async fn load_leases(&self, space: &Space, bridge: &str) -> Result<()> {
        let raw = self.list_raw(&keys::lease_prefix(bridge)).await?;
        let used = raw
            .kvs
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                let ip: IpAddr = key.rsplit('/').next()?.parse().ok()?;
                space.offset_of(ip)
            })
            .collect();
        self.store_used(space, used);
        Ok(())
    }

    async fn load_tunnel_keys(&self, space: &Space, ty: u32) -> Result<()> {
        let raw = self.list_raw(&Kind::TunnelKey.prefix()).await?;
        let used = raw
            .kvs
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                let k: u32 = key.rsplit('/').next()?.parse().ok()?;
                (tunnel_key::key_type(k) == ty).then_some(u128::from(tunnel_key::index(k)))
            })
            .collect();
        self.store_used(space, used);
        Ok(())
    }

    /// A free offset of `space`, reading the pool's used slots from `source` when the cache
    /// is cold, and once more when the pool looks full: others may have released slots
    /// since. Errors with [`NsdbError::Exhausted`] when it is full.
    pub(crate) async fn pick_free(
        &self,
        space: &Space,
        source: PoolSource<'_>,
        reloaded_when_full: &mut bool,
    ) -> Result<u128> {
        loop {
            match self.pick(space) {
                Pick::Offset(off) => return Ok(off),
                Pick::Full if *reloaded_when_full => {
                    return Err(NsdbError::Exhausted {
                        pool: space.name.clone(),
                    });
                }
                full_or_cold => {
                    *reloaded_when_full |= matches!(full_or_cold, Pick::Full);
                    self.load_pool(space, source).await?;
                }
            }
        }
    }

    /// Reads the used slots of a pool into the cache.
    pub(crate) async fn load_pool(&self, space: &Space, source: PoolSource<'_>) -> Result<()> {
        match source {
            PoolSource::Leases(bridge) => self.load_leases(space, bridge).await,
            PoolSource::TunnelKeys(ty) => self.load_tunnel_keys(space, ty).await,
        }
    }

    /// Forgets the cached leases of `bridge`, so the next allocation lists them again.
    pub(crate) fn forget_leases(&self, bridge: &str) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        for fam in [IpFamily::V4, IpFamily::V6] {
            if let Some(st) = pools.get_mut(&format!("leases/{bridge}/{fam:?}")) {
                // Offsets are relative to the subnet, which is not re-read here.
                st.loaded = false;
            }
        }
    }

    /// Leases a free address of `family` on `bridge` to `owner` (a port id). Skips the
    /// network and broadcast addresses, the gateway and the bridge's excluded IPs.
    pub async fn allocate_ip(
        &self,
        bridge: &str,
        owner: &str,
        family: IpFamily,
    ) -> Result<IpLease> {
        self.allocate_ip_with(bridge, owner, family, |_, txn| txn)
            .await
    }

    /// Like [`Nsdb::allocate_ip`], and adds the operations `extra` builds for the
    /// chosen address to the same transaction (for example the port and its binding),
    /// so the lease and those writes happen together or not at all. If `extra`'s own
    /// conditions fail, the result is [`NsdbError::TxnConditionFailed`] and nothing is
    /// leased.
    pub async fn allocate_ip_with<F>(
        &self,
        bridge: &str,
        owner: &str,
        family: IpFamily,
        extra: F,
    ) -> Result<IpLease>
    where
        F: Fn(IpAddr, Txn) -> Txn,
    {
        let b = self
            .get::<Bridge>(bridge)
            .await?
            .ok_or_else(|| NsdbError::BridgeNotFound {
                bridge: bridge.to_owned(),
            })?
            .record;
        let space = Space::for_bridge(&b, family)?;
        let mut conflicts = 0u32;
        let mut reloaded_when_full = false;
        for _ in 0..MAX_ATTEMPTS {
            let off = self
                .pick_free(&space, PoolSource::Leases(bridge), &mut reloaded_when_full)
                .await?;
            let ip = space.ip_at(off, family);
            let lease = IpLease {
                bridge: bridge.to_owned(),
                ip,
                owner: owner.to_owned(),
            };
            let txn = extra(ip, self.txn().create(&lease));
            let extra_conditions = txn.condition_count() > 1;
            match txn.commit().await {
                Ok(_) => return Ok(lease),
                Err(NsdbError::TxnConditionFailed { keys }) => {
                    // Lost the address to someone else, or `extra`'s condition failed.
                    if extra_conditions && self.get::<IpLease>(&lease.id()).await?.is_none() {
                        self.unpick(&space, off);
                        return Err(NsdbError::TxnConditionFailed { keys });
                    }
                    debug!(%ip, bridge, "address taken meanwhile, trying another");
                    self.skip_ahead(&space, off);
                    conflicts += 1;
                    if conflicts.is_multiple_of(RELOAD_AFTER_CONFLICTS) {
                        self.load_pool(&space, PoolSource::Leases(bridge)).await?;
                    }
                }
                Err(e) => {
                    self.unpick(&space, off);
                    return Err(e);
                }
            }
        }
        Err(NsdbError::Contended {
            pool: space.name,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Every lease on one bridge (for example to find the address a port already holds
    /// before allocating another). Corrupt values are skipped and counted.
    pub async fn leases(&self, bridge: &str) -> Result<Vec<IpLease>> {
        keys::validate_id(Kind::Bridge, bridge)?;
        let raw = self.list_raw(&keys::lease_prefix(bridge)).await?;
        Ok(raw
            .kvs
            .iter()
            .filter_map(crate::client::decode_kv)
            .filter_map(|(r, _)| match r {
                crate::records::AnyRecord::IpLease(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Releases a lease held by `owner`. Returns false if there was no lease;
    /// fails with [`NsdbError::NotOwner`] if someone else holds it.
    pub async fn release_ip(&self, bridge: &str, ip: IpAddr, owner: &str) -> Result<bool> {
        let id = keys::lease_id(bridge, ip);
        let Some(cur) = self.get::<IpLease>(&id).await? else {
            return Ok(false);
        };
        if cur.record.owner != owner {
            return Err(NsdbError::NotOwner {
                key: Kind::IpLease.key(&id),
                holder: cur.record.owner,
                owner: owner.to_owned(),
            });
        }
        self.delete_if_version::<IpLease>(&id, cur.version).await?;
        self.forget_leases(bridge);
        Ok(true)
    }

    /// Allocates a free tunnel key of type `ty` (see [`crate::tunnel_key`]) to `owner`.
    pub async fn allocate_tunnel_key(&self, owner: &str, ty: u32) -> Result<u32> {
        if ty > tunnel_key::MAX_TYPE {
            return Err(NsdbError::TunnelKeyOutOfRange { ty, index: 0 });
        }
        let space = Space::tunnel_keys(ty);
        let mut conflicts = 0u32;
        let mut reloaded_when_full = false;
        for _ in 0..MAX_ATTEMPTS {
            let off = self
                .pick_free(&space, PoolSource::TunnelKeys(ty), &mut reloaded_when_full)
                .await?;
            // off <= MAX_INDEX, so it fits a u32.
            let key = tunnel_key::compose(ty, off as u32)?;
            let alloc = TunnelKeyAlloc {
                key,
                owner: owner.to_owned(),
            };
            match self.create(&alloc).await {
                Ok(_) => return Ok(key),
                Err(NsdbError::VersionConflict { .. }) => {
                    debug!(key, "tunnel key taken meanwhile, trying another");
                    self.skip_ahead(&space, off);
                    conflicts += 1;
                    if conflicts.is_multiple_of(RELOAD_AFTER_CONFLICTS) {
                        self.load_pool(&space, PoolSource::TunnelKeys(ty)).await?;
                    }
                }
                Err(e) => {
                    self.unpick(&space, off);
                    return Err(e);
                }
            }
        }
        Err(NsdbError::Contended {
            pool: space.name,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Releases a tunnel key held by `owner`. Returns false if it was not allocated.
    pub async fn release_tunnel_key(&self, key: u32, owner: &str) -> Result<bool> {
        let id = keys::tunnel_key_id(key);
        let Some(cur) = self.get::<TunnelKeyAlloc>(&id).await? else {
            return Ok(false);
        };
        if cur.record.owner != owner {
            return Err(NsdbError::NotOwner {
                key: Kind::TunnelKey.key(&id),
                holder: cur.record.owner,
                owner: owner.to_owned(),
            });
        }
        self.delete_if_version::<TunnelKeyAlloc>(&id, cur.version)
            .await?;
        let space = Space::tunnel_keys(tunnel_key::key_type(key));
        self.unpick(&space, u128::from(tunnel_key::index(key)));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(subnet: &str, gw: Option<&str>, excluded: &[&str]) -> Bridge {
        Bridge {
            id: "b1".into(),
            name: "b1".into(),
            tunnel_key: 1,
            subnet_v4: Some(subnet.parse().unwrap()),
            subnet_v6: Some("fd00::/120".parse().unwrap()),
            gateway_v4: gw.map(|g| g.parse().unwrap()),
            gateway_v6: None,
            mtu: 1500,
            vlan: None,
            excluded_ips: excluded.iter().map(|e| e.parse().unwrap()).collect(),
            inbound_chain: None,
            outbound_chain: None,
            namespaces: vec![],
        }
    }

    #[test]
    fn v4_space_skips_network_broadcast_gateway_and_excluded() {
        let b = bridge(
            "10.0.0.0/29",
            Some("10.0.0.1"),
            &["10.0.0.3", "192.168.0.1"],
        );
        let s = Space::for_bridge(&b, IpFamily::V4).unwrap();
        assert_eq!(s.size, 8);
        let free: Vec<IpAddr> = (0..s.size)
            .filter(|o| !s.reserved.contains(o))
            .map(|o| s.ip_at(o, IpFamily::V4))
            .collect();
        let want: Vec<IpAddr> = ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(free, want);
    }

    #[test]
    fn point_to_point_subnets_use_both_addresses() {
        let s = Space::for_bridge(&bridge("10.0.0.0/31", None, &[]), IpFamily::V4).unwrap();
        assert!(s.reserved.is_empty());
        assert_eq!(s.size, 2);
    }

    #[test]
    fn v6_space_skips_the_anycast_address_the_gateway_and_excluded() {
        let mut b = bridge("10.0.0.0/24", None, &["fd00::5"]);
        b.gateway_v6 = Some("fd00::1".parse().unwrap());
        let s = Space::for_bridge(&b, IpFamily::V6).unwrap();
        assert_eq!(s.size, 256);
        assert_eq!(s.reserved, BTreeSet::from([0, 1, 5]));
        assert_eq!(
            s.ip_at(2, IpFamily::V6),
            "fd00::2".parse::<IpAddr>().unwrap()
        );
        let mut nb = b.clone();
        nb.subnet_v6 = None;
        assert!(matches!(
            Space::for_bridge(&nb, IpFamily::V6),
            Err(NsdbError::NoSubnet { family: "IPv6", .. })
        ));
    }

    #[test]
    fn tunnel_key_space() {
        let s = Space::tunnel_keys(tunnel_key::TYPE_LOCAL);
        assert_eq!(s.base, 0x100000);
        assert_eq!(s.size, 0x100000);
        assert!(s.reserved.contains(&0));
    }
}
