//! The NSDB key layout: every record lives at `/weft/v1/<kind>/<id>`.
//!
//! Kinds are plural path segments. Ids are strings without `/`, except IP leases,
//! whose id is `<bridge>/<ip>` so that all leases of one bridge share a prefix, and
//! member health verdicts, whose id is `<load balancer>/<ip:port>`, and
//! tunnel keys, whose id is the key zero-padded to 8 decimal digits so that keys sort
//! numerically.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::error::NsdbError;

/// The prefix of every NSDB key.
pub const ROOT: &str = "/weft/v1/";

/// The kinds of record stored in NSDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Host,
    Bridge,
    Router,
    Port,
    Route,
    Chain,
    LoadBalancer,
    PortBinding,
    IpLease,
    TunnelKey,
    MemberHealth,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 11] = [
        Kind::Host,
        Kind::Bridge,
        Kind::Router,
        Kind::Port,
        Kind::Route,
        Kind::Chain,
        Kind::LoadBalancer,
        Kind::PortBinding,
        Kind::IpLease,
        Kind::TunnelKey,
        Kind::MemberHealth,
    ];

    /// The path segment of this kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "hosts",
            Kind::Bridge => "bridges",
            Kind::Router => "routers",
            Kind::Port => "ports",
            Kind::Route => "routes",
            Kind::Chain => "chains",
            Kind::LoadBalancer => "load_balancers",
            Kind::PortBinding => "port_bindings",
            Kind::IpLease => "leases",
            Kind::TunnelKey => "tunnel_keys",
            Kind::MemberHealth => "member_health",
        }
    }

    /// `/weft/v1/<kind>/`: the prefix that lists every record of this kind.
    pub fn prefix(self) -> String {
        format!("{ROOT}{}/", self.as_str())
    }

    /// `/weft/v1/<kind>/<id>`.
    pub fn key(self, id: &str) -> String {
        format!("{ROOT}{}/{id}", self.as_str())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = NsdbError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| NsdbError::InvalidKey { key: s.to_owned() })
    }
}

/// Splits a full key into its kind and id. Fails for keys outside the layout.
pub fn parse(key: &str) -> Result<(Kind, &str), NsdbError> {
    let invalid = || NsdbError::InvalidKey {
        key: key.to_owned(),
    };
    let rest = key.strip_prefix(ROOT).ok_or_else(invalid)?;
    let (kind, id) = rest.split_once('/').ok_or_else(invalid)?;
    let kind: Kind = kind.parse().map_err(|_| invalid())?;
    if id.is_empty() {
        return Err(invalid());
    }
    Ok((kind, id))
}

/// Checks that an id can be used as one path segment.
pub fn validate_id(kind: Kind, id: &str) -> Result<(), NsdbError> {
    let ok = match kind {
        Kind::IpLease => id
            .split_once('/')
            .is_some_and(|(b, ip)| segment_ok(b) && ip.parse::<IpAddr>().is_ok()),
        Kind::MemberHealth => id
            .split_once('/')
            .is_some_and(|(lb, m)| segment_ok(lb) && m.parse::<SocketAddr>().is_ok()),
        _ => segment_ok(id),
    };
    if ok {
        Ok(())
    } else {
        Err(NsdbError::InvalidKey { key: kind.key(id) })
    }
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_control)
}

/// The id of an IP lease: `<bridge>/<ip>`.
pub fn lease_id(bridge: &str, ip: IpAddr) -> String {
    format!("{bridge}/{ip}")
}

/// `/weft/v1/leases/<bridge>/`: every lease of one bridge.
pub fn lease_prefix(bridge: &str) -> String {
    format!("{}{bridge}/", Kind::IpLease.prefix())
}

/// The id of a member's health verdict: `<load balancer>/<ip:port>` (`[v6]:port`), so that
/// all verdicts on one load balancer share a prefix.
pub fn member_health_id(lb: &str, member: SocketAddr) -> String {
    format!("{lb}/{member}")
}

/// The id of an allocated tunnel key: 8 zero-padded decimal digits.
pub fn tunnel_key_id(key: u32) -> String {
    format!("{key:08}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(Kind::Bridge.key("b1"), "/weft/v1/bridges/b1");
        assert_eq!(Kind::IpLease.prefix(), "/weft/v1/leases/");
        assert_eq!(
            Kind::IpLease.key(&lease_id("b1", "10.0.0.5".parse().unwrap())),
            "/weft/v1/leases/b1/10.0.0.5"
        );
        assert_eq!(lease_prefix("b1"), "/weft/v1/leases/b1/");
        assert_eq!(
            Kind::TunnelKey.key(&tunnel_key_id(42)),
            "/weft/v1/tunnel_keys/00000042"
        );
    }

    #[test]
    fn parse_keys() {
        assert_eq!(parse("/weft/v1/ports/p1").unwrap(), (Kind::Port, "p1"));
        assert_eq!(
            parse("/weft/v1/leases/b1/fd00::5").unwrap(),
            (Kind::IpLease, "b1/fd00::5")
        );
        for bad in [
            "/weft/v1/ports/",
            "/weft/v1/nothing/x",
            "/weft/v2/ports/p1",
            "ports/p1",
            "/weft/v1/ports",
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
        }
    }

    #[test]
    fn ids() {
        assert!(validate_id(Kind::Bridge, "b1").is_ok());
        assert!(validate_id(Kind::Bridge, "b/1").is_err());
        assert!(validate_id(Kind::Bridge, "").is_err());
        assert!(validate_id(Kind::IpLease, "b1/10.0.0.1").is_ok());
        assert!(validate_id(Kind::IpLease, "b1/not-an-ip").is_err());
        assert!(validate_id(Kind::IpLease, "b1").is_err());
        let v6 = member_health_id("web", "[fd00::6]:8080".parse().unwrap());
        assert_eq!(v6, "web/[fd00::6]:8080");
        assert!(validate_id(Kind::MemberHealth, &v6).is_ok());
        assert!(validate_id(Kind::MemberHealth, "web/10.0.0.6:80").is_ok());
        assert!(validate_id(Kind::MemberHealth, "web/10.0.0.6").is_err());
        assert!(validate_id(Kind::MemberHealth, "web").is_err());
    }
}
