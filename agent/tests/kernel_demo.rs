//! The examples, end to end, on three hosts in the kernel guest: examples/*.yaml translated
//! into NSDB by the operator's code, four pods of namespaces blue and green attached the way a
//! container runtime attaches them (libcni's `cnitool` running `weft-cni` against each host's
//! agent), and the reachability matrix a user would draw: ping
//! between every pair, TCP to the web port (8080) and to another port (9090) that the
//! `blue-ingress` ACL keeps green out of, and connections to the `web` VIP. `make demo` runs
//! it to print the matrix; `make test` runs it as a test of the examples.

mod hosts_support;
mod kernel_support;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use hosts_support::{Cluster, EchoServer, TcpError};
use sim::RecordSet;
use weft_operator::offline::{self, Loaded};

/// Pods: (name, Kubernetes namespace, the address it must get, host). The first pod of each
/// bridge gets the pool's first free address (.11), which the `web` VIP names as a member;
/// the others get whatever their bridge hands out.
const PODS: [(&str, &str, Option<&str>, &str); 4] = [
    ("blue-a", "blue", Some("10.10.0.11"), "h1"),
    ("blue-b", "blue", None, "h2"),
    ("green-a", "green", Some("10.20.0.11"), "h3"),
    ("green-b", "green", None, "h2"),
];

const VIP: &str = "10.96.0.10";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("demo address")
}

fn is_green(p: &str) -> bool {
    p.starts_with("green")
}

/// What the examples promise: everyone pings everyone and reaches port 8080; port 9090 of a
/// blue pod is closed to green pods by `blue-ingress`.
fn expected_tcp(from: &str, to: &str, port: u16) -> bool {
    !(port == 9090 && is_green(from) && !is_green(to))
}

fn translate_examples(c: &Cluster) -> RecordSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let loaded = Loaded::from_paths(&[&dir]).expect("examples load");
    let outcomes = c
        .block_on(offline::program_all(Some(c.db()), &loaded.inventory))
        .expect("examples translate");
    for (key, outcome) in &outcomes {
        eprintln!("demo: {}", offline::describe(key, outcome));
        assert!(!outcome.is_refused(), "an example was refused");
    }
    let (_, all) = c.block_on(c.db().list_all()).expect("read NSDB");
    RecordSet::from_records(all.iter().map(|(r, _)| r))
}

fn cell(r: &Result<(), TcpError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(TcpError::ConnectTimeout) => "blocked",
        Err(TcpError::Refused) => "refused",
        Err(_) => "error",
    }
}

#[test]
#[ignore = "needs the OVS kernel datapath: run by e2e/kernel-tests.sh or make demo inside the guest"]
fn examples_reachability_matrix() {
    let mut c = Cluster::start("demo", 3, 900);
    let records = translate_examples(&c);
    c.write_topology(&records);
    for (id, ns, addr, host) in PODS {
        let p = c.cni_add(id, host, ns);
        eprintln!(
            "demo: cnitool add {id} (namespace {ns}) on {host}: {} {}",
            p.ip, p.mac
        );
        if let Some(want) = addr {
            assert_eq!(
                p.ip,
                ip(want),
                "{id} did not get its bridge's first free address"
            );
        }
    }
    // Every pod reaches its gateway once the other agents have seen the new bindings.
    for (id, bridge, _, _) in PODS {
        let gw = if bridge == "blue" {
            "10.10.0.1"
        } else {
            "10.20.0.1"
        };
        c.wait_reachable(id, ip(gw), 30);
    }

    let mut servers: Vec<(String, u16, EchoServer)> = Vec::new();
    for (id, _, _, _) in PODS {
        for port in [8080u16, 9090] {
            servers.push((id.into(), port, c.echo_server(id, port)));
        }
    }

    let names: Vec<&str> = PODS.iter().map(|p| p.0).collect();
    let mut out = String::new();
    let mut wrong = Vec::new();
    let header = |out: &mut String, title: &str| {
        let _ = write!(out, "\n{title:<28}");
        for n in &names {
            let _ = write!(out, "{n:>9}");
        }
        out.push('\n');
    };

    header(&mut out, "ping (from \\ to)");
    for (from, _, _, host) in PODS {
        let addr = c.pod(from).ip;
        let _ = write!(out, "{:<28}", format!("{from} ({addr}, {host})"));
        for (to, _, _, _) in PODS {
            let to_addr = c.pod(to).ip;
            if from == to {
                let _ = write!(out, "{:>9}", "-");
                continue;
            }
            let p = c.ping(from, to_addr, 2);
            let ok = p.ok && p.received > 0;
            let _ = write!(out, "{:>9}", if ok { "ok" } else { "FAIL" });
            if !ok {
                wrong.push(format!("ping {from} -> {to} failed:\n{}", p.out));
            }
        }
        out.push('\n');
    }

    for port in [8080u16, 9090] {
        header(&mut out, &format!("TCP :{port} (from \\ to)"));
        for (from, _, _, host) in PODS {
            let addr = c.pod(from).ip;
            let _ = write!(out, "{:<28}", format!("{from} ({addr}, {host})"));
            for (to, _, _, _) in PODS {
                let to_addr = c.pod(to).ip;
                if from == to {
                    let _ = write!(out, "{:>9}", "-");
                    continue;
                }
                let r = c.tcp_echo(from, SocketAddr::new(IpAddr::V4(to_addr), port), 2000);
                let _ = write!(out, "{:>9}", cell(&r));
                if r.is_ok() != expected_tcp(from, to, port) {
                    wrong.push(format!(
                        "TCP {from} -> {to}:{port}: {r:?}, expected {}",
                        if expected_tcp(from, to, port) {
                            "a connection"
                        } else {
                            "blocked by blue-ingress"
                        }
                    ));
                }
            }
            out.push('\n');
        }
    }

    let _ = writeln!(
        out,
        "\nVIP {VIP}:80 (web: blue-a:8080, green-a:8080, ClientIP affinity)"
    );
    for (from, _, _, _) in PODS {
        let before: Vec<u64> = servers.iter().map(|(_, _, s)| s.accepted()).collect();
        let mut ok = 0;
        for _ in 0..4 {
            if c.tcp_echo(from, SocketAddr::new(IpAddr::V4(ip(VIP)), 80), 500)
                .is_ok()
            {
                ok += 1;
            }
        }
        let served: Vec<String> = servers
            .iter()
            .zip(&before)
            .filter(|((_, p, s), b)| *p == 8080 && s.accepted() > **b)
            .map(|((id, _, s), b)| format!("{id} x{}", s.accepted() - b))
            .collect();
        let _ = writeln!(
            out,
            "  from {from:<8} {ok}/4 answered, served by {}",
            served.join(", ")
        );
        if ok != 4 || served.is_empty() {
            wrong.push(format!(
                "VIP from {from}: {ok}/4 answered, served by {served:?}"
            ));
        }
    }
    println!("{out}");
    assert!(
        wrong.is_empty(),
        "the examples do not behave as documented:\n{}\n{}",
        wrong.join("\n"),
        c.diag()
    );
}
