//! The spec's Result: the agent's [`CniResult`] rendered in the layout the configuration's
//! version asks for (1.1.0 and 1.0.0 share one; 0.4.0 has its own, with `version` on each
//! IP), and a runtime's cached prevResult turned into the facts CHECK sends the agent.

use agent_api::proto::{CniDns, CniInterface, CniIp, CniResult, CniRoute};
use rscni_types::error::Error;
use rscni_types::legacy;
use rscni_types::types::{self, CNIResultWithVersion, Dns};
use rscni_types::version::SpecVersion;

/// The code of an answer from the agent that is not what the protocol promises (a
/// plugin-specific code: the spec reserves 0-99).
pub const BAD_AGENT_ANSWER: u32 = 101;

/// Renders an ADD result under `version`; `conf_dns` is the configuration's `dns`, given
/// back when the agent has none.
pub fn render_add(
    version: SpecVersion,
    r: CniResult,
    conf_dns: Option<Dns>,
) -> Result<String, Error> {
    check(&r)?;
    let dns = if is_empty(&r.dns) {
        conf_dns
    } else {
        Some(Dns {
            nameservers: r.dns.nameservers.iter().map(ToString::to_string).collect(),
            domain: r.dns.domain,
            search: Some(r.dns.search).filter(|s| !s.is_empty()),
            options: Some(r.dns.options).filter(|s| !s.is_empty()),
        })
    };
    let result = types::CNIResult {
        interfaces: r
            .interfaces
            .into_iter()
            .map(|i| types::Interface {
                name: i.name,
                mac: i.mac,
                mtu: i.mtu,
                sandbox: i.sandbox,
                socket_path: None,
                pci_id: None,
            })
            .collect(),
        ips: r
            .ips
            .into_iter()
            .map(|ip| types::IpConfig {
                interface: ip.interface,
                address: ip.address,
                gateway: ip.gateway,
            })
            .collect(),
        routes: r
            .routes
            .into_iter()
            .map(|rt| types::Route {
                dst: rt.dst,
                gw: rt.gw,
                mtu: rt.mtu,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            })
            .collect(),
        dns,
    };
    let json = if version.is_legacy() {
        serde_json::to_string(&legacy::CNIResult::new(version, result))
    } else {
        serde_json::to_string(&CNIResultWithVersion::new(version, result))
    };
    json.map_err(|e| Error::IOFailure(format!("cannot encode the result: {e}")))
}

/// Refuses a result that would mislead the runtime: no interface in the pod, no address,
/// or an address on an interface that is not listed.
fn check(r: &CniResult) -> Result<(), Error> {
    let bad = |why: String| {
        Err(Error::Custom(
            BAD_AGENT_ANSWER,
            "Invalid answer from the weft agent".into(),
            why,
        ))
    };
    if !r.interfaces.iter().any(|i| i.sandbox.is_some()) {
        return bad("the ADD result has no interface in the pod's netns".into());
    }
    if r.ips.is_empty() {
        return bad("the ADD result has no address".into());
    }
    for ip in &r.ips {
        match ip.interface {
            Some(i) if usize::try_from(i).is_ok_and(|i| i < r.interfaces.len()) => {}
            Some(i) => {
                return bad(format!(
                    "address {} is on interface {i}, but the result lists {} interfaces",
                    ip.address,
                    r.interfaces.len()
                ));
            }
            None => {}
        }
    }
    Ok(())
}

fn is_empty(d: &CniDns) -> bool {
    d.nameservers.is_empty() && d.domain.is_none() && d.search.is_empty() && d.options.is_empty()
}

/// The facts of a runtime's cached result that CHECK asks the agent to verify. A
/// nameserver that is not an IP address is an invalid prevResult (code 7).
pub fn prev_facts(prev: &types::CNIResult) -> Result<CniResult, Error> {
    let dns = match &prev.dns {
        None => CniDns::default(),
        Some(d) => CniDns {
            nameservers: d
                .nameservers
                .iter()
                .map(|n| {
                    n.parse().map_err(|_| {
                        Error::InvalidNetworkConfig(format!(
                            "prevResult.dns.nameservers: {n:?} is not an IP address"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
            domain: d.domain.clone(),
            search: d.search.clone().unwrap_or_default(),
            options: d.options.clone().unwrap_or_default(),
        },
    };
    Ok(CniResult {
        interfaces: prev
            .interfaces
            .iter()
            .map(|i| CniInterface {
                name: i.name.clone(),
                mac: i.mac.clone(),
                mtu: i.mtu,
                sandbox: i.sandbox.clone(),
            })
            .collect(),
        ips: prev
            .ips
            .iter()
            .map(|ip| CniIp {
                address: ip.address,
                gateway: ip.gateway,
                interface: ip.interface,
            })
            .collect(),
        routes: prev
            .routes
            .iter()
            .map(|r| CniRoute {
                dst: r.dst,
                gw: r.gw,
                mtu: r.mtu,
            })
            .collect(),
        dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn agent_result() -> CniResult {
        CniResult {
            interfaces: vec![
                CniInterface {
                    name: "wf1a2b3c4d".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                CniInterface {
                    name: "eth0".into(),
                    mac: "02:00:0a:0a:00:0b".into(),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p1".into()),
                },
            ],
            ips: vec![CniIp {
                address: "10.10.0.11/24".parse().unwrap(),
                gateway: Some("10.10.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![CniRoute {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.10.0.1".parse().unwrap()),
                mtu: None,
            }],
            dns: CniDns::default(),
        }
    }

    #[test]
    fn the_layout_follows_the_version() {
        let current: Value = serde_json::from_str(
            &render_add(SpecVersion::new(1, 1, 0), agent_result(), None).unwrap(),
        )
        .unwrap();
        assert_eq!(
            current,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "wf1a2b3c4d", "mac": "02:00:00:00:00:01", "mtu": 1450},
                    {"name": "eth0", "mac": "02:00:0a:0a:00:0b", "mtu": 1450, "sandbox": "/run/netns/p1"}
                ],
                "ips": [{"interface": 1, "address": "10.10.0.11/24", "gateway": "10.10.0.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.10.0.1"}]
            })
        );
        let old: Value = serde_json::from_str(
            &render_add(SpecVersion::new(0, 4, 0), agent_result(), None).unwrap(),
        )
        .unwrap();
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["interfaces"][1].get("mtu"), None, "{old}");
    }

    #[test]
    fn a_result_without_a_pod_interface_or_with_a_dangling_index_is_refused() {
        let mut r = agent_result();
        r.ips[0].interface = Some(2);
        let e = render_add(SpecVersion::CURRENT, r, None).unwrap_err();
        assert_eq!(u32::from(&e), BAD_AGENT_ANSWER);
        assert!(e.details().contains("interface 2"), "{e}");
        let mut r = agent_result();
        r.interfaces.pop();
        assert!(render_add(SpecVersion::CURRENT, r, None).is_err());
    }
}
