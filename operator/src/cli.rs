//! The `weft-operator` command line: `run`, `translate` and `nsdb-dump`, configured by flags
//! with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kube_lease_manager::LeaseManagerBuilder;
use nsdb::Nsdb;
use tracing::{info, warn};

use crate::error::Error;
use crate::kuryr::namespaces;
use crate::metrics::Metrics;
use crate::offline::{self, Loaded};
use crate::{controller, dump, http, store};

/// Weft's operator: reconciles weft.dev objects into the network state database (NSDB).
#[derive(Debug, Parser)]
#[command(name = "weft-operator", version)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Where NSDB lives, and how to speak TLS to it.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd endpoints of NSDB, comma-separated. `https://` endpoints speak TLS: etcd's
    /// certificate is checked against --etcd-ca-file, or the system's trusted roots without it.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
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
}

impl EtcdArgs {
    /// The TLS files of the flags.
    pub fn tls(&self) -> nsdb::TlsFiles {
        nsdb::TlsFiles {
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
        }
    }

    async fn connect(&self) -> anyhow::Result<Nsdb> {
        Nsdb::connect_with_tls(&self.etcd_endpoints, &self.tls())
            .await
            .with_context(|| format!("connecting to NSDB at {}", self.etcd_endpoints.join(",")))
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers (with leader election) and serve /metrics.
    Run(RunArgs),
    /// Validate and translate weft.dev YAML manifests and write them to NSDB, as the
    /// controllers would.
    Translate(TranslateArgs),
    /// Print what NSDB holds, grouped by kind.
    NsdbDump(DumpArgs),
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "WEFT_LEASE_NAME", default_value = "weft-operator")]
    pub lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, env = "WEFT_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds before expiry at which the holder renews.
    #[arg(long, env = "WEFT_LEASE_GRACE", default_value_t = 5)]
    pub lease_grace: u64,
    /// What the pods of a namespace that no VirtualBridge serves attach to: `shared`, the
    /// agents' --default-bridge; `per-namespace`, a bridge of the namespace's own, with a
    /// subnet from --namespace-pool, attached to --cluster-router.
    #[arg(
        long,
        env = "WEFT_NAMESPACE_MODE",
        value_enum,
        default_value_t = namespaces::Mode::Shared
    )]
    pub namespace_mode: namespaces::Mode,
    /// The IPv4 prefix the per-namespace subnets are carved from, e.g. 10.240.0.0/12.
    #[arg(
        long,
        env = "WEFT_NAMESPACE_POOL",
        value_name = "CIDR",
        required_if_eq("namespace_mode", "per-namespace")
    )]
    pub namespace_pool: Option<ipnet::Ipv4Net>,
    /// The prefix length of each namespace's subnet.
    #[arg(long, env = "WEFT_NAMESPACE_PREFIX_LEN", default_value_t = 24)]
    pub namespace_prefix_len: u8,
    /// The VirtualRouter (by name) every per-namespace bridge is attached to.
    #[arg(
        long,
        env = "WEFT_CLUSTER_ROUTER",
        value_name = "NAME",
        required_if_eq("namespace_mode", "per-namespace")
    )]
    pub cluster_router: Option<String>,
}

impl RunArgs {
    /// The namespace networks the flags ask for, checked.
    pub fn namespaces(&self) -> anyhow::Result<namespaces::Config> {
        Ok(match self.namespace_mode {
            namespaces::Mode::Shared => namespaces::Config::Shared,
            namespaces::Mode::PerNamespace => {
                let (Some(pool), Some(router)) = (self.namespace_pool, &self.cluster_router) else {
                    anyhow::bail!(
                        "--namespace-mode per-namespace needs --namespace-pool and --cluster-router"
                    );
                };
                namespaces::Config::PerNamespace(namespaces::PerNamespace::new(
                    pool,
                    self.namespace_prefix_len,
                    router.clone(),
                )?)
            }
        })
    }
}

/// `translate` options.
#[derive(Debug, Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Check and translate only; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the records of objects that NSDB holds but the manifests no longer define.
    #[arg(long)]
    pub prune: bool,
    /// YAML files, or directories whose *.yaml files are read (not recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `nsdb-dump` options.
#[derive(Debug, Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the command line; returns the process exit code.
pub async fn main(cli: Cli) -> anyhow::Result<i32> {
    init_logging(&cli.log_format);
    nsdb::tls::install_crypto_provider();
    match cli.command {
        Command::Run(a) => run(a).await.map(|()| 0),
        Command::Translate(a) => translate(a).await,
        Command::NsdbDump(a) => {
            let nsdb = a.etcd.connect().await?;
            let (rev, records) = nsdb.list_all().await.context("listing NSDB")?;
            print!("{}", dump::render(rev, &records));
            Ok(0)
        }
    }
}

async fn translate(a: TranslateArgs) -> anyhow::Result<i32> {
    let loaded = Loaded::from_paths(&a.paths)?;
    let nsdb = if a.dry_run {
        None
    } else {
        Some(a.etcd.connect().await?)
    };
    if let Some(db) = &nsdb {
        let swept = store::sweep_orphan_tunnel_keys(db).await?;
        if swept > 0 {
            info!(swept, "released orphan tunnel keys");
        }
    }
    let outcomes = offline::program_all(nsdb.as_ref(), &loaded.inventory).await?;
    let mut refused = loaded.refused.len();
    for r in &loaded.refused {
        println!("{}", offline::describe_refusal(r));
    }
    for (key, outcome) in &outcomes {
        println!("{}", offline::describe(key, outcome));
        refused += usize::from(outcome.is_refused());
    }
    if a.prune
        && let Some(db) = &nsdb
    {
        for key in offline::prune(db, &loaded.inventory).await? {
            println!("{key}: removed (no longer defined)");
        }
    }
    let total = outcomes.len() + loaded.refused.len();
    println!(
        "{total} objects, {} {}, {refused} refused",
        total - refused,
        if a.dry_run {
            "valid (dry run)"
        } else {
            "programmed"
        }
    );
    Ok(if refused > 0 { 2 } else { 0 })
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    // TLS files and namespace settings that cannot work stop the replica before it serves or
    // campaigns.
    a.etcd.tls().check(&a.etcd.etcd_endpoints)?;
    let namespaces = a.namespaces()?;
    let metrics = Arc::new(Metrics::new());
    let (addr, serve) = http::bind(a.metrics_addr, metrics.clone()).await?;
    info!(%addr, "serving /metrics");
    let server = tokio::spawn(serve);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let nsdb = a.etcd.connect().await?;

    let identity = a.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("weft-operator-{}", std::process::id()))
    });
    let lease_err = |source| Error::Lease {
        lease: a.lease_name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &a.lease_name)
        .with_namespace(&a.lease_namespace)
        .with_identity(&identity)
        .with_duration(a.lease_duration)
        .with_grace(a.lease_grace)
        .build()
        .await
        .map_err(lease_err)?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(lease = %a.lease_name, %identity, "waiting for the leader lease");
    while !*leader.borrow_and_update() {
        leader.changed().await.map_err(|_| Error::LostLeadership {
            lease: a.lease_name.clone(),
        })?;
    }
    metrics.set_leader(true);
    info!(%identity, "leading");
    // No apply is in flight before the controllers start.
    let swept = store::sweep_orphan_tunnel_keys(&nsdb).await?;
    if swept > 0 {
        info!(swept, "released orphan tunnel keys");
    }
    let lost = async {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                return;
            }
        }
    };
    let result = tokio::select! {
        r = controller::run(client, nsdb, metrics.clone(), namespaces) => r.map_err(anyhow::Error::from),
        () = lost => Err(Error::LostLeadership { lease: a.lease_name.clone() }.into()),
        r = server => match r {
            Ok(Err(e)) => Err(e.into()),
            _ => Err(anyhow::anyhow!("the metrics server stopped")),
        },
    };
    metrics.set_leader(false);
    // Dropping the channel ends the lease task, which releases the lease.
    drop(leader);
    match lease_task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(err = %e, "releasing the lease failed"),
        Err(e) => warn!(err = %e, "lease task failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec![
            "weft-operator",
            "run",
            "--etcd-endpoints",
            "http://etcd:2379",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Run(a) => a,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn namespace_flags_make_the_namespace_config() {
        assert_eq!(
            run_args(&[]).unwrap().namespaces().unwrap(),
            namespaces::Config::Shared
        );
        let a = run_args(&[
            "--namespace-mode",
            "per-namespace",
            "--namespace-pool",
            "10.240.0.0/12",
            "--namespace-prefix-len",
            "26",
            "--cluster-router",
            "cluster",
        ])
        .unwrap();
        assert_eq!(
            a.namespaces().unwrap(),
            namespaces::Config::PerNamespace(namespaces::PerNamespace {
                pool: "10.240.0.0/12".parse().unwrap(),
                prefix_len: 26,
                router: "cluster".into(),
            })
        );
        // The pool and the router are needed in that mode, and only there.
        let err = run_args(&["--namespace-mode", "per-namespace", "--cluster-router", "c"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--namespace-pool"), "{err}");
        let err = run_args(&[
            "--namespace-mode",
            "per-namespace",
            "--namespace-pool",
            "10.240.0.0/12",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--cluster-router"), "{err}");
        assert!(run_args(&["--namespace-mode", "isolated"]).is_err());
        // A prefix length outside the pool is refused when the config is built.
        let a = run_args(&[
            "--namespace-mode",
            "per-namespace",
            "--namespace-pool",
            "10.240.0.0/16",
            "--namespace-prefix-len",
            "12",
            "--cluster-router",
            "cluster",
        ])
        .unwrap();
        let err = a.namespaces().unwrap_err().to_string();
        assert!(err.contains("--namespace-prefix-len 12"), "{err}");
    }
}
