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

/// An IPv6 address in any of its compressed forms (no zone, no embedded IPv4).
macro_rules! ipv6 {
    () => {
        concat!(
            "(",
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
