//! weft-cni, the CNI plugin (spec 1.1.0; 1.0.0 and 0.4.0 configurations too) that a
//! container runtime runs for ADD, DEL, CHECK, STATUS, GC and VERSION. It is thin: it
//! checks its environment ([`args`]) and its stdin ([`conf`]), sends one request to the
//! weft agent's local socket, and prints the spec's result ([`result`]) or error JSON on
//! stdout, exiting non-zero on error. It never prints a panic, and every step is bounded
//! in time ([`guard`]).
//!
//! The spec's types come from rscni-types, the types half of rscni-plugin 0.5. Its driver,
//! `rscni_plugin::cni::Plugin::run`, is not used, because what it does itself cannot be
//! changed from outside and falls short here: it reads stdin with `read_to_string` through
//! a private seam (no size bound, no time bound); its error JSON carries the plugin's own
//! version instead of the configuration's; VERSION answers the plugin's version instead of
//! echoing the input's; GC reads only `cni.dev/valid-attachments`, not the spec-v1.1.0
//! tag's `cni.dev/attachments`; and it has no deadline on the call it wraps. The driver
//! here is those parts, written against the same types.

pub mod args;
pub mod conf;
pub mod guard;
pub mod result;

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use agent_api::proto::{CniAttachmentId, ErrorCode, Reply, Request, Response};
use agent_api::{ApiError, Client};
use rscni_types::error::Error;
use rscni_types::types::Cmd;

use crate::args::Invocation;
use crate::conf::WeftConf;
use crate::guard::Watchdog;

/// How long the runtime has to write and close stdin.
pub const STDIN_DEADLINE: Duration = Duration::from_secs(5);

/// What the watchdog allows beyond the agent timeout for connecting and for an answer
/// that trickles in.
pub const AGENT_GRACE: Duration = Duration::from_secs(1);

/// The code of a failure the agent reported without a class (plugin-specific).
pub const AGENT_ERROR: u32 = 100;

/// The process: reads the command, then stdin, runs the command, prints its answer.
pub fn main() -> ExitCode {
    guard::install_panic_hook();
    let get = |k: &str| std::env::var_os(k);
    // The command first: a bare invocation from a shell is told what is missing at once
    // instead of waiting for a stdin that never comes.
    let outcome = args::command(&get).and_then(|cmd| {
        let dog = Watchdog::start();
        dog.arm(
            STDIN_DEADLINE,
            Error::IOFailure(format!(
                "stdin was not closed within {STDIN_DEADLINE:?}: the runtime must write the \
                 network configuration and close stdin"
            )),
        );
        let stdin = read_stdin(&mut io::stdin().lock(), conf::MAX_STDIN_BYTES);
        dog.disarm();
        let bytes = stdin?;
        guard::set_error_version(conf::declared_version(&bytes).as_deref());
        run(cmd, &get, &bytes, &dog)
    });
    match outcome {
        Ok(text) => {
            guard::emit(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            guard::emit(&guard::error_json(&e));
            ExitCode::FAILURE
        }
    }
}

/// Reads at most `max` bytes of stdin: more is code 6, a read failure code 5.
pub fn read_stdin(r: &mut dyn Read, max: usize) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| Error::IOFailure(format!("reading stdin: {e}")))?;
    if buf.len() > max {
        return Err(Error::FailedToDecode(format!(
            "stdin holds more than {max} bytes; a network configuration is far smaller"
        )));
    }
    Ok(buf)
}

/// Runs `cmd` with the rest of the environment `get` gives and configuration `stdin`, and
/// returns what to print on success.
pub fn run(
    cmd: Cmd,
    get: &dyn Fn(&str) -> Option<OsString>,
    stdin: &[u8],
    dog: &Watchdog,
) -> Result<String, Error> {
    if cmd == Cmd::Version {
        return conf::version_reply(stdin);
    }
    let inv = args::parse(cmd, get)?;
    let conf = conf::parse(stdin, cmd)?;
    let req = request(&inv, &conf)?;
    dog.arm(
        conf.agent_timeout + AGENT_GRACE,
        unreachable(
            cmd,
            format!(
                "the weft agent at {} did not answer within {:?}",
                conf.agent_socket.display(),
                conf.agent_timeout + AGENT_GRACE
            ),
        ),
    );
    let resp = call(&conf.agent_socket, conf.agent_timeout, &req);
    dog.disarm();
    answer(cmd, conf, &req, resp)
}

/// The one request `inv` and `conf` make.
fn request(inv: &Invocation, conf: &WeftConf) -> Result<Request, Error> {
    // args::parse guarantees these for ADD, DEL and CHECK.
    let need = |v: &Option<String>, var: &str| v.clone().ok_or_else(|| Error::missing_env(&[var]));
    let network = conf.name.clone();
    Ok(match inv.command {
        Cmd::Add => Request::CniAdd {
            container_id: need(&inv.container_id, "CNI_CONTAINERID")?,
            ifname: need(&inv.ifname, "CNI_IFNAME")?,
            netns: need(&inv.netns, "CNI_NETNS")?,
            network,
            pod_namespace: inv.pod_namespace.clone(),
            pod_name: inv.pod_name.clone(),
        },
        Cmd::Del => Request::CniDel {
            container_id: need(&inv.container_id, "CNI_CONTAINERID")?,
            ifname: need(&inv.ifname, "CNI_IFNAME")?,
            netns: inv.netns.clone(),
            network,
        },
        Cmd::Check => {
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                Error::InvalidNetworkConfig(
                    "CHECK needs prevResult: the result ADD returned, as the runtime cached it"
                        .into(),
                )
            })?;
            Request::CniCheck {
                container_id: need(&inv.container_id, "CNI_CONTAINERID")?,
                ifname: need(&inv.ifname, "CNI_IFNAME")?,
                netns: need(&inv.netns, "CNI_NETNS")?,
                network,
                prev_result: result::prev_facts(prev)?,
            }
        }
        Cmd::Gc => Request::CniGc {
            network,
            valid: conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| CniAttachmentId {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect(),
        },
        Cmd::Status => Request::CniStatus { network },
        Cmd::Version => {
            return Err(Error::InvalidEnvValue(
                "VERSION is answered without the agent".into(),
            ));
        }
    })
}

/// One exchange with the agent, each read and write bounded by `timeout`.
fn call(socket: &Path, timeout: Duration, req: &Request) -> Result<Response, ApiError> {
    let mut c = Client::connect(socket)?;
    c.set_timeout(timeout)?;
    c.call_raw(req)
}

/// The agent could not be asked: STATUS says the plugin is not available (50); the other
/// commands ask the runtime to try again later (11).
fn unreachable(cmd: Cmd, details: String) -> Error {
    if cmd == Cmd::Status {
        Error::PluginNotAvailable(details)
    } else {
        Error::TryAgainLater(details)
    }
}

/// Turns the agent's response into what the plugin prints.
fn answer(
    cmd: Cmd,
    conf: WeftConf,
    req: &Request,
    resp: Result<Response, ApiError>,
) -> Result<String, Error> {
    let reply = match resp {
        Err(ApiError::PermissionDenied { path, source }) => {
            return Err(Error::IOFailure(format!(
                "permission denied connecting to the weft agent at {} (the socket is \
                 root-only): {source}",
                path.display()
            )));
        }
        Err(e @ (ApiError::BadResponse { .. } | ApiError::ResponseTooLong { .. })) => {
            return Err(bad_answer(e.to_string()));
        }
        Err(e) => return Err(unreachable(cmd, e.to_string())),
        Ok(Response::Error { message, code }) => return Err(agent_error(cmd, message, code)),
        Ok(Response::Ok { reply }) => reply,
    };
    match (cmd, reply) {
        (Cmd::Add, Reply::CniAdded(r)) => result::render_add(conf.version, r, conf.dns),
        (Cmd::Del, Reply::CniDeleted { .. })
        | (Cmd::Check, Reply::CniChecked)
        | (Cmd::Gc, Reply::CniCollected { .. })
        | (Cmd::Status, Reply::CniReady) => Ok(String::new()),
        (_, other) => {
            let kind = serde_json::to_value(&other)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                .unwrap_or_default();
            Err(bad_answer(format!(
                "the weft agent answered {kind:?} to {}",
                req.op()
            )))
        }
    }
}

fn bad_answer(details: String) -> Error {
    Error::Custom(
        result::BAD_AGENT_ANSWER,
        "Invalid answer from the weft agent".into(),
        details,
    )
}

/// The agent's refusal, under the spec's code for its class. STATUS reports any
/// unclassed failure as "not available"; other commands as a plugin-specific code.
fn agent_error(cmd: Cmd, message: String, code: Option<ErrorCode>) -> Error {
    let message = format!("the weft agent answered: {message}");
    match code {
        Some(ErrorCode::Unsupported) => Error::UnsupportedNetworkConfiguration(message),
        Some(ErrorCode::UnknownContainer) => Error::NotExist(message),
        Some(ErrorCode::Io) => Error::IOFailure(message),
        Some(ErrorCode::Invalid) => Error::InvalidNetworkConfig(message),
        Some(ErrorCode::TryAgainLater) => Error::TryAgainLater(message),
        Some(ErrorCode::NotReady) => Error::PluginNotAvailable(message),
        Some(ErrorCode::NotReadyLimitedConnectivity) => {
            Error::PluginNotAvailableLimitedConnectivity(message)
        }
        Some(other) => Error::Custom(other.cni_code(), "Weft agent error".into(), message),
        None if cmd == Cmd::Status => Error::PluginNotAvailable(message),
        None => Error::Custom(AGENT_ERROR, "Weft agent error".into(), message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_read_up_to_its_bound() {
        let mut small: &[u8] = b"{}";
        assert_eq!(read_stdin(&mut small, 2).unwrap(), b"{}");
        let mut big: &[u8] = b"{} ";
        let e = read_stdin(&mut big, 2).unwrap_err();
        assert_eq!(u32::from(&e), 6, "{e}");
        assert!(e.details().contains("more than 2 bytes"), "{e}");
    }

    #[test]
    fn a_panic_becomes_code_999_json() {
        let caught = std::sync::Arc::new(std::sync::Mutex::new(None));
        let c = std::sync::Arc::clone(&caught);
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            *c.lock().unwrap() = Some(guard::error_json(&guard::panic_error(info)));
        }));
        let r = std::panic::catch_unwind(|| panic!("index out of range"));
        std::panic::set_hook(prev);
        assert!(r.is_err());
        let json = caught.lock().unwrap().take().expect("the hook ran");
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["code"], 999, "{v}");
        assert_eq!(v["msg"], "weft-cni failed unexpectedly");
        assert!(
            v["details"]
                .as_str()
                .is_some_and(|d| d.contains("index out of range") && d.contains("lib.rs")),
            "{v}"
        );
    }
}
