//! The agent's start-up and shutdown.
//!
//! The start runs in an order that keeps the node's traffic safe:
//! 1. **The single-instance lock**: an exclusive `flock(2)` on `<api socket>.lock`. A second
//!    agent on the node stops here, before it touches NSDB or the datapath, and says which
//!    process holds the lock.
//! 2. **The API socket and the metrics endpoint** are bound, and answer from now on. Until
//!    the agent is ready, `Status` says `ready: false`, every other request is refused, and
//!    `/readyz` answers 503 with what the agent waits for (`/healthz` stays ok: restarting a
//!    waiting agent would not bring etcd back).
//! 3. **NSDB**: the host registration, then the first list of every record (the watch
//!    cache's start), each retried with an exponential backoff capped at [`RETRY_MAX`] for
//!    as long as etcd is unreachable, logging each failure with its cause and the next delay.
//!    The datapath is not touched yet: the flows a previous agent left in the kernel keep
//!    carrying the established traffic while this one waits. Repointing the upcalls or
//!    revalidating flows needs the topology, so neither happens before it is known.
//! 4. **The datapath**: created, or adopted with its vports and flows; its upcalls pointed at
//!    this agent's handler sockets; its tunnel vport made sure of.
//! 5. **The topology**, compiled from the first snapshot and the datapath's vports; an
//!    adopted datapath's flows are revalidated against it and only stale ones deleted.
//! 6. **The flow manager, the handler threads and the topology watcher** (which applies the
//!    NSDB updates queued since the first list); then the API serves the running agent and
//!    the agent is ready. With a Kubernetes client (`--kubeconfig`, or in-cluster), the
//!    watcher of this node's pods and of the namespaces ([`crate::podmeta`]) starts too.
//!
//! On SIGTERM or SIGINT, also while it waits for NSDB, the agent stops its threads and leaves
//! the datapath and its flows in place, so established traffic keeps flowing until the next
//! agent adopts them.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use nsdb::{Host, Nsdb, Snapshot, Update, WatchCache};
use odp::dpif::Dpif;
use odp::upcall::UpcallSocket;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::affinity::Affinity;
use crate::api::proto::{ErrorCode, Reply, Request, Response, Status};
use crate::api::server::Deferred;
use crate::config::{Config, Settings, tunnel_vport_name};
use crate::datapath;
use crate::flows::FlowManager;
use crate::handler::{Handler, HandlerCtx};
use crate::host::{HostRegistration, register_host};
use crate::metrics::Metrics;
use crate::ratelimit::SharedLimiter;
use crate::revalidate;
use crate::service::Agent;
use crate::topo::{LocalPorts, TopologyWatcher};

/// The first delay before an NSDB call of the start is tried again.
pub const RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest delay between two tries: the backoff doubles up to it and stays there.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the agent until a termination signal.
pub fn run(cfg: Config, settings: Settings) -> anyhow::Result<()> {
    // rustls' process-wide provider (ring, the workspace's only one) before any TLS to etcd.
    nsdb::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("weft-agent-rt")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cfg, settings))
}

/// The path of the single-instance lock of the agent serving `api_socket`.
pub fn lock_path(api_socket: &Path) -> PathBuf {
    let mut p = api_socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the node's single-instance lock for the agent serving `api_socket`: an exclusive
/// `flock(2)` on [`lock_path`], which holds this process's id. The lock lasts as long as the
/// returned file is open; the kernel releases it when the process ends, however it ends, so
/// a crashed agent leaves no lock behind. Fails, naming the holder, if another process has it.
pub fn take_instance_lock(api_socket: &Path) -> anyhow::Result<File> {
    let path = lock_path(api_socket);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating the directory of {}", path.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            anyhow::bail!(
                "another weft-agent ({holder}) holds {}: it runs this node's datapath and API; \
                 this one exits without touching either",
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing this process's id to {}", path.display()))?;
    Ok(file)
}

/// Calls `f` until it succeeds, waiting [`RETRY_MIN`], then twice as long each time up to
/// [`RETRY_MAX`]. Each failure is logged with its full error chain and the next delay, and
/// shown as what the agent waits for (in `/readyz`).
async fn until_ok<T, E>(
    what: &str,
    metrics: &Metrics,
    mut f: impl AsyncFnMut() -> Result<T, E>,
) -> T
where
    E: Into<anyhow::Error>,
{
    metrics.set_waiting(format!("waiting for NSDB: {what}"));
    let mut delay = RETRY_MIN;
    let mut attempt: u32 = 1;
    loop {
        match f().await {
            Ok(v) => {
                if attempt > 1 {
                    info!(
                        attempts = attempt,
                        "{what}: done after NSDB became reachable"
                    );
                }
                return v;
            }
            Err(e) => {
                let cause = format!("{:#}", e.into());
                warn!(attempt, error = %cause, "{what} failed; retrying in {delay:?}");
                metrics.set_waiting(format!(
                    "waiting for NSDB: {what} failed {attempt} times, last: {cause}"
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// What the start takes from NSDB: the live registration and the watch cache, with the
/// first snapshot and the updates since.
struct NsdbStart {
    nsdb: Nsdb,
    registration: HostRegistration,
    cache: WatchCache,
    first: Arc<Snapshot>,
    updates: mpsc::UnboundedReceiver<Arc<Update>>,
}

/// Step 3: registers the host and lists NSDB, retrying each until etcd answers.
async fn wait_for_nsdb(cfg: &Config, settings: &Settings, metrics: &Metrics) -> NsdbStart {
    let endpoints = cfg.etcd_endpoints.join(",");
    let nsdb = until_ok(
        &format!("connecting to etcd at {endpoints}"),
        metrics,
        async || Nsdb::connect_with_tls(&cfg.etcd_endpoints, &settings.etcd_tls).await,
    )
    .await;
    let host = Host {
        id: settings.host.clone(),
        underlay_ip: settings.underlay_ip,
        tunnel: settings.tunnel.nsdb(),
        tunnel_udp_port: settings.tunnel_udp_port,
        mtu: settings.pod_mtu,
    };
    let registration = until_ok("registering the host", metrics, async || {
        register_host(&nsdb, host.clone(), cfg.lease_ttl_secs).await
    })
    .await;
    let (revision, records) = until_ok("listing the topology", metrics, async || {
        nsdb.list_all().await
    })
    .await;
    let snapshot = Snapshot::from_records(revision, records);
    let first = Arc::new(snapshot.clone());
    let (cache, updates) = WatchCache::start_from(nsdb.clone(), nsdb::keys::ROOT, snapshot);
    let _ = metrics.nsdb_watch.set(cache.health());
    info!(revision, records = first.len(), "NSDB loaded");
    NsdbStart {
        nsdb,
        registration,
        cache,
        first,
        updates,
    }
}

/// The API's answers until the agent is ready: `Status` with `ready: false`, and a refusal
/// of everything else, saying what the agent waits for.
struct Starting {
    status: Status,
    metrics: Arc<Metrics>,
}

impl crate::api::Handler for Starting {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => Response::Ok {
                reply: Reply::Status(self.status.clone()),
            },
            _ => {
                // A CNI STATUS answers "not ready" (50); any other request may be retried (11).
                let code = if matches!(req, Request::CniStatus { .. }) {
                    ErrorCode::NotReady
                } else {
                    ErrorCode::TryAgainLater
                };
                Response::error_with(
                    code,
                    format!(
                        "the agent is not ready ({}); nothing was changed, try again later",
                        self.metrics.readiness().err().unwrap_or_default()
                    ),
                )
            }
        }
    }
}

async fn run_async(cfg: Config, mut settings: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());

    // The Kubernetes client (no request yet): a configuration that cannot work stops here.
    settings.kube = crate::podmeta::Kube::connect(&settings.kube_source).await?;
    match &settings.kube {
        Some(k) => info!(
            source = k.source(),
            "pod and namespace labels are read from the Kubernetes API server"
        ),
        None => warn!(
            "no Kubernetes API server (no --kubeconfig, no KUBERNETES_SERVICE_HOST): pod labels \
             and named ports are not read; pod ports get only their namespace's name, and \
             NetworkPolicies that select pods by label do not apply to them"
        ),
    }

    // 1. The lock, held until the process ends.
    let _lock = take_instance_lock(&cfg.api_socket)?;
    // What this agent attached, before anything else touches the node: a bad record stops it.
    let attachments = crate::attachments::Attachments::load(&cfg.state_dir)?;

    // 2. The API and the metrics endpoint.
    let listener = crate::api::bind(&cfg.api_socket)
        .with_context(|| format!("binding the API socket {}", cfg.api_socket.display()))?;
    if let Some(addr) = settings.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        let app = crate::metrics::router(metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let handler = Arc::new(Deferred::new(Starting {
        status: Status {
            host: settings.host.clone(),
            ready: false,
            datapath: cfg.datapath.clone(),
            dp_ifindex: 0,
            tunnel: tunnel_vport_name(settings.tunnel).to_string(),
            tunnel_port_no: 0,
            tunnel_udp_port: settings.tunnel_udp_port,
            pod_mtu: settings.pod_mtu,
            generation: 0,
            flows: 0,
            handlers: settings.handlers,
            ports: Vec::new(),
        },
        metrics: metrics.clone(),
    }));
    let (stop_api_tx, stop_api_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(listener, handler.clone(), async move {
        let _ = stop_api_rx.await;
    }));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    // 3. NSDB, or a signal while waiting for it.
    let NsdbStart {
        nsdb,
        mut registration,
        cache,
        first,
        updates,
    } = tokio::select! {
        s = wait_for_nsdb(&cfg, &settings, &metrics) => s,
        _ = term.recv() => return stop_before_ready(stop_api_tx, api).await,
        _ = tokio::signal::ctrl_c() => return stop_before_ready(stop_api_tx, api).await,
    };

    // 4. The datapath, with every handler's socket as an upcall target.
    let mut d = Dpif::open().context("opening the OVS datapath netlink family")?;
    let mut sockets = Vec::with_capacity(settings.handlers);
    for _ in 0..settings.handlers {
        sockets.push(UpcallSocket::open(d.families()).context("opening an upcall socket")?);
    }
    let pids: Vec<u32> = sockets.iter().map(UpcallSocket::pid).collect();
    let dp = datapath::setup(
        &mut d,
        &cfg.datapath,
        settings.tunnel,
        settings.tunnel_udp_port,
        &pids,
    )?;
    let ports = Arc::new(LocalPorts::default());
    for (name, no) in &dp.vports {
        ports.insert(name, *no);
    }

    // 5. The topology, and the adopted datapath's flows that are still valid.
    let shared = TopologyWatcher::initial(
        &settings.host,
        dp.tunnel_port_no,
        settings.member_choice,
        first,
        &ports,
    )?;
    metrics.generation.set(1);
    let (flows_tx, flows_rx) = crate::flows::channel();
    let affinity = Arc::new(Affinity::default());
    let mut manager = FlowManager::new(
        Dpif::open()?,
        dp.info.ifindex,
        cfg.max_flows,
        settings.timeouts,
        settings.expiry_interval,
        1,
        metrics.clone(),
        affinity.clone(),
    );
    if dp.adopted {
        let r = revalidate::revalidate(
            &mut d,
            dp.info.ifindex,
            &shared.load(),
            cfg.trace_flows,
            &affinity,
        )?;
        metrics.deleted("stale", r.deleted);
        for f in r.kept {
            manager.adopt(f);
        }
    }

    // 6. The flow manager, the handlers and the watcher.
    let manager = std::thread::Builder::new()
        .name("weft-flows".into())
        .spawn(move || manager.run(flows_rx))?;
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = HandlerCtx {
        dp_ifindex: dp.info.ifindex,
        topo: shared.clone(),
        flows: flows_tx.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        limiter: SharedLimiter::new(cfg.upcall_rate, cfg.upcall_burst),
        trace: cfg.trace_flows,
        affinity: affinity.clone(),
        batch: usize::from(cfg.upcall_batch),
    };
    let mut threads = Vec::new();
    for (i, up) in sockets.into_iter().enumerate() {
        let h = Handler::new(up, Dpif::open()?, ctx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("weft-handler-{i}"))
                .spawn(move || h.run())?,
        );
    }
    drop(ctx);
    let (local_tx, local_rx) = mpsc::unbounded_channel();
    let watcher = TopologyWatcher {
        host: settings.host.clone(),
        tunnel_port: dp.tunnel_port_no,
        member_choice: settings.member_choice,
        shared: shared.clone(),
        ports: ports.clone(),
        flows: flows_tx.clone(),
        metrics: metrics.clone(),
        pending_full_flush: false,
        known_hosts: Default::default(),
    };
    let watcher = tokio::spawn(watcher.run(updates, local_rx));

    // Ready: the API serves the running agent.
    let agent = Arc::new(Agent {
        settings: settings.clone(),
        datapath: cfg.datapath.clone(),
        dp_ifindex: dp.info.ifindex,
        tunnel_port_no: dp.tunnel_port_no,
        pids,
        nsdb: nsdb.clone(),
        topo: shared.clone(),
        ports: ports.clone(),
        local: local_tx,
        flows: flows_tx,
        affinity,
        attachments,
    });
    handler.set(agent.clone());
    let lease = Arc::new(std::sync::atomic::AtomicI64::new(registration.lease_id()));
    let prober = tokio::spawn(
        crate::health::Prober {
            host: settings.host.clone(),
            nsdb: nsdb.clone(),
            topo: shared.clone(),
            metrics: metrics.clone(),
            lease: lease.clone(),
            node_port: settings.node_bridge.is_some(),
        }
        .run(),
    );
    let node_port = settings
        .node_bridge
        .clone()
        .map(|b| tokio::spawn(crate::nodeport::run(agent, b)));
    let pod_meta = settings.kube.as_ref().map(|k| {
        tokio::spawn(crate::podmeta::run(
            k.client().clone(),
            nsdb.clone(),
            settings.host.clone(),
            cache.subscribe(),
        ))
    });
    metrics.set_ready();
    info!(
        host = %settings.host,
        datapath = %cfg.datapath,
        handlers = settings.handlers,
        pod_mtu = settings.pod_mtu,
        socket = %cfg.api_socket.display(),
        "ready"
    );

    // Keep the registration while running.
    let ttl = Duration::from_secs(cfg.lease_ttl_secs.max(2) as u64);
    let mut tick = tokio::time::interval(ttl / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = registration.ensure().await {
                    warn!(error = %nsdb::error::chain(&e), "cannot check the host registration");
                }
                lease.store(registration.lease_id(), Ordering::Relaxed);
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("stopping; the datapath and its flows stay");
    let _ = stop_api_tx.send(());
    let _ = api.await;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    watcher.abort();
    prober.abort();
    if let Some(t) = node_port {
        t.abort();
    }
    if let Some(t) = pod_meta {
        t.abort();
    }
    drop(cache);
    let _ = manager;
    Ok(())
}

/// Stops the API of an agent that was still waiting for NSDB; nothing else was started.
async fn stop_before_ready(
    stop_api: tokio::sync::oneshot::Sender<()>,
    api: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    info!("stopping before NSDB was reached; the datapath was not touched");
    let _ = stop_api.send(());
    let _ = api.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_instance_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/agent.sock");
        let held = take_instance_lock(&socket).expect("first lock");
        assert_eq!(lock_path(&socket), dir.path().join("run/agent.sock.lock"));
        let e = take_instance_lock(&socket).expect_err("second lock refused");
        let msg = format!("{e:#}");
        assert!(msg.contains("another weft-agent"), "{msg}");
        assert!(
            msg.contains(&format!("process {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        take_instance_lock(&socket).expect("the lock is free again once its holder closed it");
    }
}
