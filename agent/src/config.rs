//! The agent's command line and what it derives from it: the tunnel, the pod MTU, the
//! handler count. A configuration that cannot work (an MTU too small for the
//! encapsulation, no handler thread, an empty host name) is refused before anything is
//! touched.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::flowtable::IdleTimeouts;
use crate::mtu::{self, Encap};

/// The tunnel type of this host's single tunnel vport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TunnelKind {
    Vxlan,
    Geneve,
}

impl TunnelKind {
    /// The IANA UDP port of the encapsulation.
    pub fn default_udp_port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => 4789,
            TunnelKind::Geneve => 6081,
        }
    }

    /// The NSDB spelling.
    pub fn nsdb(self) -> nsdb::TunnelType {
        match self {
            TunnelKind::Vxlan => nsdb::TunnelType::Vxlan,
            TunnelKind::Geneve => nsdb::TunnelType::Geneve,
        }
    }
}

/// Where a Service VIP's member is chosen for a new connection (`--lb-member-choice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemberChoiceArg {
    /// In the kernel: `hash(l4(0))` and one flow per bucket; new connections do not upcall.
    Datapath,
    /// In the simulation: one upcall and one flow per connection.
    Simulation,
}

impl MemberChoiceArg {
    /// The simulation's spelling.
    pub fn sim(self) -> sim::MemberChoice {
        match self {
            MemberChoiceArg::Datapath => sim::MemberChoice::Datapath,
            MemberChoiceArg::Simulation => sim::MemberChoice::Simulation,
        }
    }
}

/// weft-agent: the Weft node agent. Owns this node's OVS kernel datapath and tunnel port,
/// simulates each new flow through the virtual topology read from NSDB, and installs it.
#[derive(Debug, Clone, Parser)]
#[command(name = "weft-agent", version, about)]
pub struct Config {
    /// This host's id in NSDB (the Kubernetes node name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The underlay address other hosts' tunnels send to.
    #[arg(long, env = "WEFT_UNDERLAY_IP")]
    pub underlay_ip: IpAddr,
    /// The underlay MTU; pods get it less the encapsulation overhead.
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
    /// The tunnel encapsulation.
    #[arg(long, value_enum, default_value = "vxlan")]
    pub tunnel: TunnelKind,
    /// The tunnel's UDP port (default: 4789 for VXLAN, 6081 for Geneve).
    #[arg(long)]
    pub tunnel_udp_port: Option<u16>,
    /// etcd endpoints of NSDB, comma-separated. `https://` endpoints speak TLS: etcd's
    /// certificate is checked against --etcd-ca-file, or the system's trusted roots without it.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// CA certificates (PEM) that etcd's certificate must be signed by.
    #[arg(long, env = "WEFT_ETCD_CA_FILE", value_name = "PEM")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) shown to etcd (its --client-cert-auth); needs --etcd-key-file.
    #[arg(long, env = "WEFT_ETCD_CERT_FILE", value_name = "PEM")]
    pub etcd_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --etcd-cert-file.
    #[arg(long, env = "WEFT_ETCD_KEY_FILE", value_name = "PEM")]
    pub etcd_key_file: Option<PathBuf>,
    /// The datapath to create or adopt.
    #[arg(long, default_value = "weft")]
    pub datapath: String,
    /// Upcall handler threads (default: the number of cores).
    #[arg(long)]
    pub handlers: Option<usize>,
    /// The local API socket (root only).
    #[arg(long, env = "WEFT_AGENT_SOCKET", default_value = crate::api::proto::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// What outlives the agent: the record of the ports it attached.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/run/weft")]
    pub state_dir: PathBuf,
    /// Where to serve /metrics, /healthz and /readyz; `off` disables it.
    #[arg(long, default_value = "0.0.0.0:9478")]
    pub metrics_addr: String,
    /// The most flows the agent keeps installed; the least recently used go first.
    #[arg(long, default_value_t = 200_000)]
    pub max_flows: usize,
    /// Seconds a normal flow may stay unused before it is deleted.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Seconds of the host registration's lease.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_secs: i64,
    /// Upcalls admitted per second per datapath port, whichever handler they reach: the
    /// token rate.
    #[arg(long, default_value_t = 2_000)]
    pub upcall_rate: u64,
    /// Token bucket depth of the per-port upcall limit.
    #[arg(long, default_value_t = 4_000)]
    pub upcall_burst: u64,
    /// The most upcalls a handler takes from its socket before it installs their flows and
    /// executes their packets in one exchange with the kernel; 1 handles each on its own.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upcall_batch: u16,
    /// Keep the simulation trace of each installed flow (shown by `weftctl flows --trace`).
    /// Off by default: tracing makes each simulation several times slower, and
    /// `weftctl trace` simulates any flow key with its trace on demand.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub trace_flows: bool,
    /// Where the member of a VIP without session affinity is chosen for a new connection:
    /// `datapath` hashes the connection in the kernel and matches the hash's bucket, so
    /// that, once each bucket's flow is installed, new connections never reach the agent;
    /// `simulation` takes one upcall and installs one flow per connection.
    #[arg(long, value_enum, default_value_t = MemberChoiceArg::Datapath)]
    pub lb_member_choice: MemberChoiceArg,
    /// The bridge (its NSDB id, `vbr:<VirtualBridge name>`) that pods of a namespace no
    /// bridge serves attach to; without it their ADD fails.
    #[arg(long, env = "WEFT_DEFAULT_BRIDGE")]
    pub default_bridge: Option<String>,
    /// The bridge (NSDB id or name) of the nodes' own ports: the agent gives this host a port
    /// on it through an internal vport, `weft-node`, with host routes to the subnets of the
    /// bridges its router joins and a route back to this host's underlay address, so that
    /// the node reaches its pods (kubelet probes) and pods reach their node. Unset: no port.
    #[arg(long, env = "WEFT_NODE_BRIDGE")]
    pub node_bridge: Option<String>,
    /// A kubeconfig file (one path) for the Kubernetes API server, from which the agent reads
    /// the labels and named ports of this node's Pods and the labels of the Namespaces, for
    /// NetworkPolicy. Without it: the in-cluster configuration when KUBERNETES_SERVICE_HOST is
    /// set, otherwise none, and pods get only their namespace's name as a namespace label.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// Where the agent reads Pods and Namespaces from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSource {
    /// `--kubeconfig`.
    Kubeconfig(PathBuf),
    /// The pod's ServiceAccount token and the API server of `KUBERNETES_SERVICE_HOST`.
    InCluster,
    /// No API server: pod labels are not read.
    None,
}

/// What the agent runs with, derived from [`Config`] and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub underlay_ip: IpAddr,
    pub tunnel: TunnelKind,
    pub tunnel_udp_port: u16,
    pub pod_mtu: u16,
    pub handlers: usize,
    pub metrics_addr: Option<SocketAddr>,
    pub timeouts: IdleTimeouts,
    /// How often the flow manager reads the kernel's `used` statistics.
    pub expiry_interval: Duration,
    /// The bridge of pods whose namespace no bridge serves.
    pub default_bridge: Option<String>,
    /// The bridge of the node's own port (`--node-bridge`).
    pub node_bridge: Option<String>,
    /// Where VIP members are chosen (`--lb-member-choice`).
    pub member_choice: sim::MemberChoice,
    /// TLS to etcd (`--etcd-ca-file`, `--etcd-cert-file`, `--etcd-key-file`), checked.
    pub etcd_tls: nsdb::TlsFiles,
    /// Where the Kubernetes client comes from (`--kubeconfig`, or in-cluster).
    pub kube_source: KubeSource,
    /// The Kubernetes client made from `kube_source`: the start connects it (it needs the
    /// async runtime); `None` before, and without a source.
    pub kube: Option<crate::podmeta::Kube>,
}

/// The tunnel vport's name for a tunnel type.
pub fn tunnel_vport_name(kind: TunnelKind) -> &'static str {
    match kind {
        TunnelKind::Vxlan => "weft-vxlan",
        TunnelKind::Geneve => "weft-geneve",
    }
}

impl Config {
    /// Checks the configuration and derives the settings; the error names the flag.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        use anyhow::{bail, ensure};
        let host = self.node_name.trim();
        ensure!(
            !host.is_empty(),
            "--node-name (NODE_NAME) is empty: the host needs an id in NSDB"
        );
        ensure!(
            !host.contains('/'),
            "--node-name {host:?} contains '/', which NSDB keys cannot hold"
        );
        ensure!(
            !self.underlay_ip.is_unspecified() && !self.underlay_ip.is_multicast(),
            "--underlay-ip {} cannot be a tunnel endpoint",
            self.underlay_ip
        );
        let encap = match self.tunnel {
            TunnelKind::Vxlan => Encap::Vxlan,
            TunnelKind::Geneve => Encap::Geneve { options: 0 },
        };
        let pod_mtu = mtu::pod_mtu(self.underlay_mtu, encap, self.underlay_ip.is_ipv6())
            .map_err(|e| anyhow::anyhow!("--underlay-mtu {}: {e}", self.underlay_mtu))?;
        let tunnel_udp_port = self
            .tunnel_udp_port
            .unwrap_or_else(|| self.tunnel.default_udp_port());
        ensure!(tunnel_udp_port != 0, "--tunnel-udp-port cannot be 0");
        let handlers = match self.handlers {
            Some(0) => bail!("--handlers 0: at least one upcall handler thread is needed"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        ensure!(self.max_flows > 0, "--max-flows must be at least 1");
        ensure!(
            self.idle_timeout_secs > 0,
            "--idle-timeout-secs must be at least 1"
        );
        ensure!(
            self.lease_ttl_secs >= 2,
            "--lease-ttl-secs must be at least 2"
        );
        ensure!(
            self.upcall_rate > 0 && self.upcall_burst > 0,
            "--upcall-rate and --upcall-burst must be positive"
        );
        ensure!(
            !self.etcd_endpoints.is_empty() && self.etcd_endpoints.iter().all(|e| !e.is_empty()),
            "--etcd-endpoints is empty"
        );
        // Files that cannot work are refused here, naming the flag, rather than retried at
        // every connect while the agent waits for NSDB.
        let etcd_tls = nsdb::TlsFiles {
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
        };
        etcd_tls.check(&self.etcd_endpoints)?;
        ensure!(
            !self.datapath.is_empty() && self.datapath.len() < 16,
            "--datapath {:?} must be 1-15 characters (it names a network device)",
            self.datapath
        );
        let metrics_addr = match self.metrics_addr.as_str() {
            "off" | "" => None,
            a => Some(
                a.parse()
                    .map_err(|e| anyhow::anyhow!("--metrics-addr {a:?}: {e}"))?,
            ),
        };
        let bridge_flag = |flag: &str, v: &Option<String>| match v.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(b) if b.contains('/') => {
                bail!("{flag} {b:?} contains '/', which NSDB ids cannot hold")
            }
            Some(b) => Ok(Some(b.to_owned())),
        };
        let default_bridge = bridge_flag("--default-bridge", &self.default_bridge)?;
        let node_bridge = bridge_flag("--node-bridge", &self.node_bridge)?;
        let kube_source = match &self.kubeconfig {
            Some(p) if p.as_os_str().is_empty() => KubeSource::None,
            Some(p) => {
                ensure!(
                    p.is_file(),
                    "--kubeconfig (KUBECONFIG) {}: no such file (one path, not a list)",
                    p.display()
                );
                KubeSource::Kubeconfig(p.clone())
            }
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()) => {
                KubeSource::InCluster
            }
            None => KubeSource::None,
        };
        let normal_ms = self.idle_timeout_secs * 1000;
        let timeouts = IdleTimeouts {
            normal_ms,
            tunnel_ms: normal_ms * 5,
            error_ms: (normal_ms / 12).max(1000),
        };
        Ok(Settings {
            host: host.to_string(),
            underlay_ip: self.underlay_ip,
            tunnel: self.tunnel,
            tunnel_udp_port,
            pod_mtu: u16::try_from(pod_mtu).unwrap_or(u16::MAX),
            handlers,
            metrics_addr,
            timeouts,
            expiry_interval: Duration::from_millis((normal_ms / 10).clamp(200, 5_000)),
            default_bridge,
            node_bridge,
            member_choice: self.lb_member_choice.sim(),
            etcd_tls,
            kube_source,
            kube: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut v = vec![
            "weft-agent",
            "--node-name",
            "n1",
            "--underlay-ip",
            "192.0.2.1",
        ];
        v.extend_from_slice(args);
        Config::try_parse_from(v)
    }

    fn parse(args: &[&str]) -> Config {
        try_parse(args).expect("parses")
    }

    #[test]
    fn defaults_give_vxlan_on_4789_and_a_pod_mtu_of_1450() {
        let s = parse(&[]).settings().expect("valid");
        assert_eq!(s.tunnel, TunnelKind::Vxlan);
        assert_eq!(s.tunnel_udp_port, 4789);
        assert_eq!(s.pod_mtu, 1450);
        assert!(s.handlers >= 1);
        assert_eq!(s.timeouts.normal_ms, 60_000);
        assert_eq!(s.member_choice, sim::MemberChoice::Datapath);
    }

    #[test]
    fn the_member_choice_is_the_datapath_or_the_simulation() {
        let s = parse(&["--lb-member-choice", "simulation"])
            .settings()
            .unwrap();
        assert_eq!(s.member_choice, sim::MemberChoice::Simulation);
        let e = Config::try_parse_from([
            "weft-agent",
            "--node-name",
            "n",
            "--underlay-ip",
            "192.0.2.1",
            "--lb-member-choice",
            "random",
        ])
        .expect_err("refused by the parser");
        assert!(e.to_string().contains("--lb-member-choice"), "{e}");
    }

    #[test]
    fn a_kubeconfig_file_is_the_kubernetes_source() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let path = f.path().to_str().unwrap();
        let s = parse(&["--kubeconfig", path]).settings().unwrap();
        assert_eq!(s.kube_source, KubeSource::Kubeconfig(f.path().to_owned()));
        assert!(s.kube.is_none(), "connected by the start, not here");
    }

    #[test]
    fn geneve_and_its_port_and_a_custom_port() {
        let s = parse(&["--tunnel", "geneve"]).settings().unwrap();
        assert_eq!(s.tunnel_udp_port, 6081);
        let s = parse(&["--tunnel", "geneve", "--tunnel-udp-port", "7000"])
            .settings()
            .unwrap();
        assert_eq!(s.tunnel_udp_port, 7000);
    }

    #[test]
    fn an_upcall_batch_outside_1_to_64_is_refused_naming_the_flag() {
        assert_eq!(parse(&[]).upcall_batch, 64);
        assert_eq!(parse(&["--upcall-batch", "1"]).upcall_batch, 1);
        for bad in ["0", "65", "many"] {
            let e = try_parse(&["--upcall-batch", bad])
                .expect_err("refused")
                .to_string();
            assert!(e.contains("--upcall-batch"), "{bad}: {e}");
        }
    }

    #[test]
    fn configurations_that_cannot_work_are_refused_naming_the_flag() {
        for (args, flag) in [
            (&["--underlay-mtu", "1300"][..], "--underlay-mtu"),
            (&["--handlers", "0"][..], "--handlers"),
            (&["--max-flows", "0"][..], "--max-flows"),
            (&["--metrics-addr", "nowhere"][..], "--metrics-addr"),
            (&["--datapath", "a-name-far-too-long"][..], "--datapath"),
            (&["--tunnel-udp-port", "0"][..], "--tunnel-udp-port"),
            (
                &["--kubeconfig", "/nonexistent/weft-kubeconfig"][..],
                "--kubeconfig",
            ),
        ] {
            let e = parse(args).settings().expect_err("refused").to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        for (args, flag) in [
            (
                &[
                    "--etcd-endpoints=https://etcd:2379",
                    "--etcd-cert-file=/c.pem",
                ][..],
                "--etcd-cert-file is given without --etcd-key-file",
            ),
            (
                &[
                    "--etcd-endpoints=https://etcd:2379",
                    "--etcd-key-file=/k.pem",
                ][..],
                "--etcd-key-file is given without --etcd-cert-file",
            ),
            (
                &[
                    "--etcd-endpoints=https://etcd:2379",
                    "--etcd-ca-file=/nonexistent/weft-ca.pem",
                ][..],
                "cannot read --etcd-ca-file /nonexistent/weft-ca.pem",
            ),
            (
                &["--etcd-ca-file=/nonexistent/weft-ca.pem"][..],
                "not https://",
            ),
        ] {
            let e = format!("{:#}", parse(args).settings().expect_err("refused"));
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        let e = Config::try_parse_from(["weft-agent", "--node-name", "n", "--underlay-ip", "x"])
            .expect_err("bad IP refused by the parser");
        assert!(e.to_string().contains("--underlay-ip"), "{e}");
    }
}
