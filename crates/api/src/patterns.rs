//! Regular expressions the CRD schemas carry for addresses, prefixes and names.
//!
//! The apiserver does not enforce most `format` values, so every address field carries a
//! `pattern` as well. The patterns use only the syntax shared by Go's RE2 (the apiserver),
//! ECMA-262 and Rust's `regex`: no look-around, no back-references.

/// One decimal IPv4 octet, 0-255, without leading zeros.
macro_rules! octet {
    () => {
        "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    };
}

/// A dotted-quad IPv4 address.
macro_rules! ipv4 {
    () => {
        concat!("(", octet!(), "\\.){3}", octet!())
    };
}

/// An IPv6 address in any of its compressed forms, including an embedded IPv4 tail
/// (`::ffff:10.0.0.1`, `64:ff9b::10.0.0.1`); no zone index.
macro_rules! ipv6 {
    () => {
        concat!(
            "(",
            // Six groups before the IPv4 tail, "::" standing for one or more of them.
            "([0-9a-fA-F]{1,4}:){6}",
            ipv4!(),
            "|::([0-9a-fA-F]{1,4}:){0,5}",
            ipv4!(),
            "|[0-9a-fA-F]{1,4}::([0-9a-fA-F]{1,4}:){0,4}",
            ipv4!(),
            "|([0-9a-fA-F]{1,4}:){2}:([0-9a-fA-F]{1,4}:){0,3}",
            ipv4!(),
            "|([0-9a-fA-F]{1,4}:){3}:([0-9a-fA-F]{1,4}:){0,2}",
            ipv4!(),
            "|([0-9a-fA-F]{1,4}:){4}:([0-9a-fA-F]{1,4}:)?",
            ipv4!(),
            "|([0-9a-fA-F]{1,4}:){5}:",
            ipv4!(),
            // Eight groups, "::" standing for one or more zero groups.
            "|",
            "([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}",
            "|([0-9a-fA-F]{1,4}:){1,7}:",
            "|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
            "|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}",
            "|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
            "|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}",
            "|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
            "|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}",
            "|:((:[0-9a-fA-F]{1,4}){1,7}|:)",
            ")"
        )
    };
}

macro_rules! v4_prefix_len {
    () => {
        "(3[0-2]|[12]?[0-9])"
    };
}

macro_rules! v6_prefix_len {
    () => {
        "(12[0-8]|1[01][0-9]|[1-9]?[0-9])"
    };
}

/// An IPv4 address, e.g. `10.10.0.1`.
pub const IPV4: &str = concat!("^", ipv4!(), "$");
/// An IPv6 address, e.g. `fd00::1`.
pub const IPV6: &str = concat!("^", ipv6!(), "$");
/// An IPv4 or IPv6 address.
pub const IP: &str = concat!("^(", ipv4!(), "|", ipv6!(), ")$");
/// An IPv4 prefix or interface address with its prefix length, e.g. `10.10.0.0/24`.
pub const IPV4_CIDR: &str = concat!("^", ipv4!(), "/", v4_prefix_len!(), "$");
/// An IPv6 prefix, e.g. `fd00:10::/64`.
pub const IPV6_CIDR: &str = concat!("^", ipv6!(), "/", v6_prefix_len!(), "$");
/// An IPv4 or IPv6 prefix.
pub const CIDR: &str = concat!(
    "^(",
    ipv4!(),
    "/",
    v4_prefix_len!(),
    "|",
    ipv6!(),
    "/",
    v6_prefix_len!(),
    ")$"
);
/// An Ethernet MAC address, colon separated, e.g. `02:00:0a:0a:00:01`.
pub const MAC: &str = "^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$";
/// The name of a Kubernetes object (RFC 1123 subdomain), used for references between objects.
pub const OBJECT_NAME: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An HTTP request path for health checks.
pub const HTTP_PATH: &str = "^/[^\\s]*$";

#[cfg(test)]
mod tests {
    //! The patterns must accept exactly what the semantic check's parsers accept, so that the
    //! schema and the operator never disagree about a well-formed address.
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    /// Compiled once per pattern: the IPv6 patterns are large.
    fn re(p: &'static str) -> Regex {
        static CACHE: std::sync::Mutex<Vec<(&str, Regex)>> = std::sync::Mutex::new(Vec::new());
        let mut cache = CACHE.lock().unwrap();
        if let Some((_, r)) = cache.iter().find(|(k, _)| *k == p) {
            return r.clone();
        }
        let r = Regex::new(p).unwrap();
        cache.push((p, r.clone()));
        r
    }

    #[test]
    fn address_and_prefix_tables() {
        let rows: &[(&str, &str, bool)] = &[
            (IPV4, "10.10.0.1", true),
            (IPV4, "0.0.0.0", true),
            (IPV4, "255.255.255.255", true),
            (IPV4, "10.10.0.256", false),
            (IPV4, "10.10.0", false),
            (IPV4, "010.10.0.1", false),
            (IPV4, "10.10.0.1 ", false),
            (IPV4, "10.10.0.1/24", false),
            (IPV6, "fd00::1", true),
            (IPV6, "::", true),
            (IPV6, "::1", true),
            (IPV6, "1:2:3:4:5:6:7:8", true),
            (IPV6, "1:2:3:4:5:6:7::", true),
            (IPV6, "::ffff:10.0.0.1", true),
            (IPV6, "64:ff9b::192.0.2.1", true),
            (IPV6, "1:2:3:4:5:6:7:8:9", false),
            (IPV6, "1::2::3", false),
            (IPV6, "fd00::g", false),
            (IPV6, "1:2:3:4:5:6:7::1.2.3.4", false),
            (IPV6, "fe80::1%eth0", false),
            (IP, "10.0.0.1", true),
            (IP, "fd00::1", true),
            (IP, "localhost", false),
            (IPV4_CIDR, "10.10.0.0/24", true),
            (IPV4_CIDR, "0.0.0.0/0", true),
            (IPV4_CIDR, "10.10.0.0/32", true),
            (IPV4_CIDR, "10.10.0.0/33", false),
            (IPV4_CIDR, "10.10.0.0", false),
            (IPV4_CIDR, "10.10.0.0/024", false),
            (IPV6_CIDR, "fd00:10::/64", true),
            (IPV6_CIDR, "::/0", true),
            (IPV6_CIDR, "fd00::/128", true),
            (IPV6_CIDR, "fd00::/129", false),
            (CIDR, "0.0.0.0/0", true),
            (CIDR, "::/0", true),
            (CIDR, "10.0.0.0/129", false),
            (MAC, "02:00:0a:0a:00:01", true),
            (MAC, "02-00-0a-0a-00-01", false),
            (MAC, "02:00:0a:0a:00", false),
            (OBJECT_NAME, "blue", true),
            (OBJECT_NAME, "blue-ingress.team-a", true),
            (OBJECT_NAME, "Blue", false),
            (OBJECT_NAME, "-blue", false),
            (OBJECT_NAME, "", false),
            (HTTP_PATH, "/healthz", true),
            (HTTP_PATH, "healthz", false),
            (HTTP_PATH, "/health z", false),
        ];
        for (pattern, input, ok) in rows {
            assert_eq!(
                re(pattern).is_match(input),
                *ok,
                "{input:?} against {pattern}"
            );
        }
    }

    proptest! {
        #[test]
        fn every_ipv4_address_matches(a in any::<u32>()) {
            let s = Ipv4Addr::from(a).to_string();
            prop_assert!(re(IPV4).is_match(&s), "{}", s);
            prop_assert!(re(IP).is_match(&s), "{}", s);
        }

        #[test]
        fn every_ipv6_address_matches(a in any::<u128>(), zeros in 0u32..8, at in 0u32..8) {
            // Runs of zero groups exercise the "::" forms; 0xffff in group 5 the embedded IPv4.
            let mut a = a;
            for g in at..(at + zeros).min(8) {
                a &= !(0xffffu128 << (16 * (7 - g)));
            }
            let s = Ipv6Addr::from(a).to_string();
            prop_assert!(re(IPV6).is_match(&s), "{}", s);
            let mapped = Ipv6Addr::from(a & 0xffff_ffff | 0xffff_0000_0000).to_string();
            prop_assert!(re(IPV6).is_match(&mapped), "{}", mapped);
        }

        #[test]
        fn whatever_an_address_pattern_accepts_parses(s in "[0-9a-f:.]{1,40}") {
            if re(IPV4).is_match(&s) {
                prop_assert!(Ipv4Addr::from_str(&s).is_ok(), "{}", s);
            }
            if re(IPV6).is_match(&s) {
                prop_assert!(Ipv6Addr::from_str(&s).is_ok(), "{}", s);
            }
            if re(IP).is_match(&s) {
                prop_assert!(IpAddr::from_str(&s).is_ok(), "{}", s);
            }
        }

        #[test]
        fn whatever_a_prefix_pattern_accepts_parses(s in "[0-9a-f:.]{1,30}/[0-9]{1,3}") {
            if re(IPV4_CIDR).is_match(&s) {
                prop_assert!(ipnet::Ipv4Net::from_str(&s).is_ok(), "{}", s);
            }
            if re(IPV6_CIDR).is_match(&s) {
                prop_assert!(ipnet::Ipv6Net::from_str(&s).is_ok(), "{}", s);
            }
            if re(CIDR).is_match(&s) {
                prop_assert!(ipnet::IpNet::from_str(&s).is_ok(), "{}", s);
            }
        }
    }
}
