//! The network configuration on stdin: one plugin's configuration, as libcni passes it for
//! a single `.conf` and for each plugin of a `.conflist` (with `name` and `cniVersion`
//! injected, and `prevResult` for CHECK and DEL). Decoding failures are code 6, a version
//! weft-cni does not speak is code 1, a field it does not support is code 2, and an
//! invalid value is code 7.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rscni_types::error::Error;
use rscni_types::types::{CNIResult, Cmd, Dns, GcAttachment, NetConf};
use rscni_types::version::{PluginInfo, SpecVersion};
use serde_json::{Map, Value};

/// The longest stdin accepted. A configuration with its prevResult is a few KiB.
pub const MAX_STDIN_BYTES: usize = 1 << 20;

/// How long the agent has to answer unless `agentTimeoutMs` says otherwise.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `agentTimeoutMs` accepted: a runtime's own CNI timeout is a few minutes.
pub const MAX_AGENT_TIMEOUT: Duration = Duration::from_secs(300);

/// The GC list's key in the current spec, and the one the spec-v1.1.0 tag named. libcni
/// sends both; either is read.
pub const GC_KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];

/// weft-cni's own keys.
pub const AGENT_SOCKET: &str = "agentSocket";
pub const AGENT_TIMEOUT_MS: &str = "agentTimeoutMs";

/// The spec's keys of a plugin configuration.
const SPEC_KEYS: [&str; 10] = [
    "cniVersion",
    "name",
    "type",
    "runtimeConfig",
    "capabilities",
    "ipMasq",
    "ipam",
    "dns",
    "args",
    "prevResult",
];

/// The versions weft-cni speaks: 1.1.0, and 1.0.0 and 0.4.0 configurations.
pub fn plugin_info() -> PluginInfo {
    PluginInfo::new(
        SpecVersion::CURRENT,
        vec![
            SpecVersion::new(0, 4, 0),
            SpecVersion::new(1, 0, 0),
            SpecVersion::new(1, 1, 0),
        ],
    )
}

/// A configuration weft-cni can act on.
#[derive(Debug, Clone)]
pub struct WeftConf {
    /// The negotiated version: the layout of an ADD result.
    pub version: SpecVersion,
    /// The network's name.
    pub name: String,
    /// The agent's socket.
    pub agent_socket: PathBuf,
    /// How long the agent has to answer.
    pub agent_timeout: Duration,
    /// The runtime's cached result (CHECK, DEL).
    pub prev_result: Option<CNIResult>,
    /// GC's valid attachments, from either key; `None` when neither is given.
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// The configuration's `dns`, given back when the agent has none.
    pub dns: Option<Dns>,
}

/// The configuration's `cniVersion`, as written, when stdin is an object that has one: an
/// error is reported under it.
pub fn declared_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Decodes stdin into a JSON object (code 6 when it is not one).
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>, Error> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::FailedToDecode(
            "stdin is empty: expected the network configuration as JSON".into(),
        ));
    }
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::FailedToDecode(format!(
            "the network configuration must be a JSON object, got {}",
            kind(&other)
        ))),
        Err(e) => Err(Error::FailedToDecode(format!(
            "the network configuration on stdin is not valid JSON: {e}"
        ))),
    }
}

/// The VERSION command's answer: the input's `cniVersion` echoed (the current version when
/// stdin is empty or names none), and the versions weft-cni speaks.
pub fn version_reply(stdin: &[u8]) -> Result<String, Error> {
    let declared = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match decode(stdin)?.get("cniVersion") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(SpecVersion::from_str(s)?),
            Some(other) => {
                return Err(Error::FailedToDecode(format!(
                    "cniVersion must be a string, got {}",
                    kind(other)
                )));
            }
        }
    };
    let info = plugin_info();
    let supported: Vec<String> = info
        .supported_versions()
        .iter()
        .map(ToString::to_string)
        .collect();
    let out = serde_json::json!({
        "cniVersion": declared.unwrap_or(info.cni_version()).to_string(),
        "supportedVersions": supported,
    });
    Ok(out.to_string())
}

/// Parses and checks the configuration for `cmd`.
pub fn parse(stdin: &[u8], cmd: Cmd) -> Result<WeftConf, Error> {
    let mut obj = decode(stdin)?;
    let version = negotiate(&obj, cmd)?;
    if obj.contains_key("plugins") {
        return Err(Error::InvalidNetworkConfig(
            "got a configuration list (it has \"plugins\"): the runtime passes one plugin's \
             configuration, with the list's name and cniVersion"
                .into(),
        ));
    }
    let valid_attachments = gc_list(&mut obj)?;
    let agent_socket = match obj.remove(AGENT_SOCKET) {
        None | Some(Value::Null) => PathBuf::from(agent_api::proto::DEFAULT_SOCKET),
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => {
            return Err(Error::InvalidNetworkConfig(format!(
                "{AGENT_SOCKET} must be an absolute path, got {}",
                shown(&other)
            )));
        }
    };
    let agent_timeout = match obj.remove(AGENT_TIMEOUT_MS) {
        None | Some(Value::Null) => DEFAULT_AGENT_TIMEOUT,
        Some(v) => match v.as_u64().map(Duration::from_millis) {
            Some(d) if !d.is_zero() && d <= MAX_AGENT_TIMEOUT => d,
            _ => {
                return Err(Error::InvalidNetworkConfig(format!(
                    "{AGENT_TIMEOUT_MS} must be a whole number of milliseconds from 1 to {}, \
                     got {}",
                    MAX_AGENT_TIMEOUT.as_millis(),
                    shown(&v)
                )));
            }
        },
    };
    if let Some((k, v)) = obj.iter().find(|(k, _)| !SPEC_KEYS.contains(&k.as_str())) {
        return Err(Error::UnsupportedNetworkConfiguration(format!(
            "unsupported field {k:?}: {} (weft-cni reads {AGENT_SOCKET} and \
             {AGENT_TIMEOUT_MS} besides the spec's keys)",
            shown(v)
        )));
    }
    if let Some(v) = obj.get("ipam") {
        return Err(Error::UnsupportedNetworkConfiguration(format!(
            "unsupported field \"ipam\": {} (weft allocates pod addresses from the bridge's \
             subnet in NSDB; remove ipam)",
            shown(v)
        )));
    }
    if obj.get("ipMasq") == Some(&Value::Bool(true)) {
        return Err(Error::UnsupportedNetworkConfiguration(
            "unsupported field \"ipMasq\": true (outbound NAT is the virtual router's SNAT \
             rule, not the plugin's)"
                .into(),
        ));
    }
    let conf: NetConf = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        Error::InvalidNetworkConfig(format!(
            "invalid network configuration: {}",
            clip(e.to_string())
        ))
    })?;
    if let Some(caps) = &conf.capabilities {
        let mut on: Vec<&String> = caps.iter().filter(|(_, on)| **on).map(|(k, _)| k).collect();
        on.sort();
        if let Some(cap) = on.first() {
            return Err(Error::UnsupportedNetworkConfiguration(format!(
                "unsupported field \"capabilities\": {cap:?}: true (weft-cni supports no \
                 runtime capability)"
            )));
        }
    }
    if conf.r#type.is_empty() {
        return Err(Error::InvalidNetworkConfig("missing plugin type".into()));
    }
    conf.validate_name()?;
    Ok(WeftConf {
        version,
        name: conf.name,
        agent_socket,
        agent_timeout,
        prev_result: conf.prev_result,
        valid_attachments,
        dns: conf.dns,
    })
}

/// The configuration's version, checked against the versions weft-cni speaks and the
/// version that introduced `cmd` (CHECK in 0.4.0, GC and STATUS in 1.1.0).
fn negotiate(obj: &Map<String, Value>, cmd: Cmd) -> Result<SpecVersion, Error> {
    let declared = match obj.get("cniVersion") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(Error::InvalidNetworkConfig(format!(
                "cniVersion must be a string, got {}",
                shown(other)
            )));
        }
    };
    let version = if declared.is_empty() {
        // The spec's rule: a configuration without cniVersion is 0.1.0.
        SpecVersion::new(0, 1, 0)
    } else {
        SpecVersion::from_str(declared)?
    };
    version.allows(cmd)?;
    plugin_info().validate(version)?;
    Ok(version)
}

/// Takes GC's list out of `obj`, from either key (their union when both are given). A
/// list that does not parse is refused, never read as empty.
fn gc_list(obj: &mut Map<String, Value>) -> Result<Option<Vec<GcAttachment>>, Error> {
    let mut found: Option<BTreeSet<(String, String)>> = None;
    for key in GC_KEYS {
        let Some(v) = obj.remove(key) else { continue };
        let list: Vec<GcAttachment> = serde_json::from_value(v.clone()).map_err(|e| {
            Error::InvalidNetworkConfig(format!(
                "{key:?} is not a list of {{\"containerID\", \"ifname\"}}: {}: {}",
                clip(e.to_string()),
                shown(&v)
            ))
        })?;
        found
            .get_or_insert_with(BTreeSet::new)
            .extend(list.into_iter().map(|a| (a.container_id, a.ifname)));
    }
    Ok(found.map(|set| {
        set.into_iter()
            .map(|(container_id, ifname)| GcAttachment {
                container_id,
                ifname,
            })
            .collect()
    }))
}

/// A value as an error message shows it: its JSON, cut at 200 bytes.
fn shown(v: &Value) -> String {
    clip(v.to_string())
}

/// `s` cut at 200 bytes: the input is the runtime's, and an error repeats it.
fn clip(s: String) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<WeftConf, Error>) -> (u32, String) {
        let e = r.expect_err("refused");
        (u32::from(&e), e.details().to_string())
    }

    #[test]
    fn a_plain_configuration_gets_the_defaults() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}"#,
            Cmd::Add,
        )
        .expect("valid");
        assert_eq!(
            c.agent_socket,
            PathBuf::from(agent_api::proto::DEFAULT_SOCKET)
        );
        assert_eq!(c.agent_timeout, DEFAULT_AGENT_TIMEOUT);
        assert_eq!(c.version, SpecVersion::new(1, 1, 0));
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn gc_reads_both_keys_and_refuses_a_bad_list() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni",
                "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}],
                "cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"},{"containerID":"a","ifname":"eth0"}]}"#,
            Cmd::Gc,
        )
        .expect("valid");
        let ids: Vec<_> = c
            .valid_attachments
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let (n, msg) = code(parse(
            br#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","cni.dev/attachments":{"containerID":"a"}}"#,
            Cmd::Gc,
        ));
        assert_eq!(n, 7, "{msg}");
        assert!(msg.contains("cni.dev/attachments"), "{msg}");
    }

    #[test]
    fn versions_outside_the_supported_set_are_code_1() {
        for (conf, cmd, says) in [
            (
                r#"{"cniVersion":"0.3.1","name":"w","type":"t"}"#,
                Cmd::Add,
                "0.3.1",
            ),
            (
                r#"{"cniVersion":"2.0.0","name":"w","type":"t"}"#,
                Cmd::Add,
                "2.0.0",
            ),
            (r#"{"name":"w","type":"t"}"#, Cmd::Add, "0.1.0"),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"t"}"#,
                Cmd::Gc,
                "GC",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","type":"t"}"#,
                Cmd::Status,
                "STATUS",
            ),
        ] {
            let (n, msg) = code(parse(conf.as_bytes(), cmd));
            assert_eq!(n, 1, "{conf}: {msg}");
            assert!(msg.contains(says), "{conf}: {msg}");
        }
    }

    #[test]
    fn version_echoes_its_input() {
        let v: Value =
            serde_json::from_str(&version_reply(br#"{"cniVersion":"0.4.0"}"#).unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
        let v: Value = serde_json::from_str(&version_reply(b"").unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}
