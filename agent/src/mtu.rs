//! The pod MTU: the underlay MTU less the encapsulation overhead of the node's tunnel. The
//! datapath does not fragment a packet that grows too large for the underlay after
//! encapsulation, so a wrong MTU silently drops large packets; a setting that cannot work is
//! refused at start instead.

use std::fmt;

/// The tunnel encapsulation of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    Vxlan,
    /// Geneve with this many bytes of options.
    Geneve {
        options: u16,
    },
}

/// Why no pod MTU can be derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuError {
    pub underlay_mtu: u32,
    pub overhead: u32,
    pub minimum: u32,
}

impl fmt::Display for MtuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "underlay MTU {} less {} bytes of encapsulation leaves less than the minimum pod MTU {}",
            self.underlay_mtu, self.overhead, self.minimum
        )
    }
}

impl std::error::Error for MtuError {}

/// Smallest pod MTU accepted: IPv6's minimum link MTU, so dual-stack pods work.
pub const MIN_POD_MTU: u32 = 1280;

/// Encapsulation overhead in bytes: outer Ethernet (14) + outer IP (20 or 40) + UDP (8) +
/// the VXLAN header (8) or the Geneve header (8) and its options.
pub fn overhead(encap: Encap, ipv6_underlay: bool) -> u32 {
    let ip = if ipv6_underlay { 40 } else { 20 };
    let tunnel = match encap {
        Encap::Vxlan => 8,
        Encap::Geneve { options } => 8 + u32::from(options),
    };
    14 + ip + 8 + tunnel
}

/// The pod MTU for an underlay MTU, or an error when it would be below [`MIN_POD_MTU`].
pub fn pod_mtu(underlay_mtu: u32, encap: Encap, ipv6_underlay: bool) -> Result<u32, MtuError> {
    let overhead = overhead(encap, ipv6_underlay);
    let mtu = underlay_mtu.saturating_sub(overhead);
    if mtu < MIN_POD_MTU {
        return Err(MtuError {
            underlay_mtu,
            overhead,
            minimum: MIN_POD_MTU,
        });
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_underlays() {
        assert_eq!(pod_mtu(1500, Encap::Vxlan, false), Ok(1450));
        assert_eq!(pod_mtu(1500, Encap::Vxlan, true), Ok(1430));
        assert_eq!(pod_mtu(9000, Encap::Geneve { options: 0 }, false), Ok(8950));
        assert_eq!(pod_mtu(1500, Encap::Geneve { options: 8 }, false), Ok(1442));
    }

    #[test]
    fn an_underlay_too_small_is_refused() {
        let err = pod_mtu(1300, Encap::Vxlan, false).unwrap_err();
        assert_eq!(err.overhead, 50);
        assert!(err.to_string().contains("1300"));
        assert!(pod_mtu(0, Encap::Vxlan, true).is_err());
    }
}
