//! The invocation's environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH`, parsed and checked against what each command
//! requires. Every failure is the spec's code 4 and names the variable.

use std::ffi::OsString;
use std::path::PathBuf;

use rscni_types::error::Error;
use rscni_types::types::{
    CNI_ARGS, CNI_COMMAND, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNI_PATH, Cmd, ContainerId,
    InterfaceName,
};

/// `CNI_ARGS` keys weft-cni reads.
const K8S_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
const K8S_POD_NAME: &str = "K8S_POD_NAME";
/// `CNI_ARGS` keys runtimes set that weft-cni accepts and does not need.
const KNOWN_UNUSED: [&str; 2] = ["K8S_POD_UID", "K8S_POD_INFRA_CONTAINER_ID"];
/// libcni's convention: with `IgnoreUnknown=1` a plugin ignores `CNI_ARGS` keys it does
/// not know instead of refusing them.
const IGNORE_UNKNOWN: &str = "IgnoreUnknown";

/// The environment of one invocation, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Cmd,
    /// Set for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// Set for ADD and CHECK; DEL may lack it (the namespace can be gone already).
    pub netns: Option<String>,
    /// Set for ADD, DEL and CHECK.
    pub ifname: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// `CNI_PATH`, split; weft-cni runs no other plugin, so it is only checked.
    pub path: Vec<PathBuf>,
}

/// Reads the command alone: the rest of the environment is checked after stdin, so that
/// an error can carry the configuration's `cniVersion`.
pub fn command(get: &dyn Fn(&str) -> Option<OsString>) -> Result<Cmd, Error> {
    match var(get, CNI_COMMAND)? {
        None => Err(Error::missing_env(&[CNI_COMMAND])),
        Some(c) => c.parse(),
    }
}

/// Parses the environment `get` gives for `command`.
pub fn parse(command: Cmd, get: &dyn Fn(&str) -> Option<OsString>) -> Result<Invocation, Error> {
    let mut inv = Invocation {
        command,
        container_id: None,
        netns: None,
        ifname: None,
        pod_namespace: None,
        pod_name: None,
        path: Vec::new(),
    };
    if let Some(p) = var(get, CNI_PATH)? {
        inv.path = std::env::split_paths(&p).collect();
    }
    if !matches!(command, Cmd::Add | Cmd::Del | Cmd::Check) {
        return Ok(inv);
    }
    let mut missing = Vec::new();
    match var(get, CNI_CONTAINERID)? {
        Some(id) => {
            let id = ContainerId::try_from(id).map_err(|e| named(CNI_CONTAINERID, &e))?;
            inv.container_id = Some(id.to_string());
        }
        None => missing.push(CNI_CONTAINERID),
    }
    match var(get, CNI_NETNS)? {
        Some(ns) if !ns.starts_with('/') => {
            return Err(Error::InvalidEnvValue(format!(
                "{CNI_NETNS} must be an absolute path, got {ns:?}"
            )));
        }
        Some(ns) => inv.netns = Some(ns),
        None if command == Cmd::Del => {}
        None => missing.push(CNI_NETNS),
    }
    match var(get, CNI_IFNAME)? {
        Some(name) => {
            let name = InterfaceName::try_from(name).map_err(|e| named(CNI_IFNAME, &e))?;
            inv.ifname = Some(name.to_string());
        }
        None => missing.push(CNI_IFNAME),
    }
    if !missing.is_empty() {
        return Err(Error::missing_env(&missing));
    }
    if let Some(args) = var(get, CNI_ARGS)? {
        let (ns, name) = pod_args(&args)?;
        inv.pod_namespace = ns;
        inv.pod_name = name;
    }
    Ok(inv)
}

/// One variable: unset and empty are the same (as libcni's skeleton treats them), and a
/// value that is not UTF-8 is refused.
fn var(get: &dyn Fn(&str) -> Option<OsString>, name: &str) -> Result<Option<String>, Error> {
    match get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|v| Error::InvalidEnvValue(format!("{name} is not UTF-8: {v:?}"))),
    }
}

/// Prefixes a validation error with the variable it is about.
fn named(var: &str, e: &Error) -> Error {
    Error::InvalidEnvValue(format!("{var}: {}", e.details()))
}

/// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS` (`K=V;K=V`). A malformed pair
/// is refused, and so is a key nobody defined unless `IgnoreUnknown` is set.
fn pod_args(args: &str) -> Result<(Option<String>, Option<String>), Error> {
    let mut pairs = Vec::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::InvalidEnvValue(format!(
                "{CNI_ARGS}: {pair:?} is not KEY=VALUE"
            )));
        };
        if k.is_empty() {
            return Err(Error::InvalidEnvValue(format!(
                "{CNI_ARGS}: {pair:?} has an empty key"
            )));
        }
        pairs.push((k, v));
    }
    let ignore_unknown = pairs
        .iter()
        .any(|(k, v)| *k == IGNORE_UNKNOWN && (*v == "1" || v.eq_ignore_ascii_case("true")));
    let (mut ns, mut name) = (None, None);
    for (k, v) in pairs {
        match k {
            K8S_POD_NAMESPACE => ns = Some(v.to_string()).filter(|v| !v.is_empty()),
            K8S_POD_NAME => name = Some(v.to_string()).filter(|v| !v.is_empty()),
            IGNORE_UNKNOWN => {}
            k if KNOWN_UNUSED.contains(&k) || ignore_unknown => {}
            k => {
                return Err(Error::InvalidEnvValue(format!(
                    "{CNI_ARGS}: unknown key {k:?} (set {IGNORE_UNKNOWN}=1 to ignore it)"
                )));
            }
        }
    }
    Ok((ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn pod_names_come_from_cni_args() {
        let mut vars = ADD.to_vec();
        vars.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=blue;K8S_POD_NAME=web-0;K8S_POD_UID=u;X=y",
        ));
        let inv = parse(Cmd::Add, &env(&vars)).expect("valid");
        assert_eq!(inv.pod_namespace.as_deref(), Some("blue"));
        assert_eq!(inv.pod_name.as_deref(), Some("web-0"));
        assert_eq!(inv.container_id.as_deref(), Some("c1"));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value, says) in [
            ("CNI_ARGS", "K8S_POD_NAME", "is not KEY=VALUE"),
            ("CNI_ARGS", "FOO=1", "unknown key \"FOO\""),
            ("CNI_ARGS", "=1", "empty key"),
            (
                "CNI_IFNAME",
                "a-very-long-ifname0",
                "CNI_IFNAME: interface name is too long",
            ),
            ("CNI_IFNAME", "eth/0", "CNI_IFNAME"),
            (
                "CNI_CONTAINERID",
                "-c1",
                "CNI_CONTAINERID: invalid characters",
            ),
            ("CNI_NETNS", "run/netns/p1", "must be an absolute path"),
        ] {
            let mut vars: Vec<_> = ADD.iter().filter(|(k, _)| *k != var).copied().collect();
            vars.push((var, value));
            let e = parse(Cmd::Add, &env(&vars)).expect_err(value);
            assert_eq!(u32::from(&e), 4, "{e}");
            assert!(e.details().contains(says), "{var}={value}: {e}");
        }
    }

    #[test]
    fn del_needs_no_netns_but_add_does() {
        let vars: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        assert!(parse(Cmd::Del, &env(&vars)).is_ok());
        let e = parse(Cmd::Add, &env(&vars)).expect_err("ADD needs CNI_NETNS");
        assert!(e.details().contains("CNI_NETNS"), "{e}");
        let inv = parse(Cmd::Status, &env(&[])).expect("STATUS needs nothing");
        assert_eq!(inv.container_id, None);
    }
}
