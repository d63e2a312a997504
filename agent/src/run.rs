//! The agent's start-up and shutdown: NSDB, host registration, datapath, topology,
//! flow manager, handler threads, the local API and the metrics endpoint, in that order.
//! On SIGTERM or SIGINT the agent stops its threads and leaves the datapath and its flows
//! in place, so established traffic keeps flowing until the next agent adopts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use nsdb::{Host, Nsdb, WatchCache};
use odp::dpif::Dpif;
use odp::upcall::UpcallSocket;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Config, Settings};
use crate::datapath;
use crate::flows::FlowManager;
use crate::handler::{Handler, HandlerCtx};
use crate::host::register_host;
use crate::metrics::Metrics;
use crate::revalidate;
use crate::service::Agent;
use crate::topo::{LocalPorts, TopologyWatcher};

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("weft-agent-rt")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cfg, settings))
}

async fn connect(endpoints: &[String]) -> Nsdb {
    let mut delay = Duration::from_millis(200);
    loop {
        match Nsdb::connect(endpoints).await {
            Ok(n) => return n,
            Err(e) => {
                warn!(error = %nsdb::error::chain(&e), ?endpoints, "NSDB unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run_async(cfg: Config, settings: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let attachments = crate::attachments::Attachments::load(&cfg.state_dir)?;
    let nsdb = connect(&cfg.etcd_endpoints).await;
    let mut registration = register_host(
        &nsdb,
        Host {
            id: settings.host.clone(),
            underlay_ip: settings.underlay_ip,
            tunnel: settings.tunnel.nsdb(),
            tunnel_udp_port: settings.tunnel_udp_port,
            mtu: settings.pod_mtu,
        },
        cfg.lease_ttl_secs,
    )
    .await
    .context("registering the host in NSDB")?;

    // The datapath, with every handler's socket as an upcall target.
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

    // The topology.
    let cache = WatchCache::start(nsdb.clone()).await;
    let _ = metrics.nsdb_watch.set(cache.health());
    let (first, updates) = cache.subscribe();
    let shared = TopologyWatcher::initial(&settings.host, dp.tunnel_port_no, first, &ports)?;
    metrics.generation.set(1);

    // The flow manager, with the adopted datapath's valid flows.
    let (flows_tx, flows_rx) = std::sync::mpsc::channel();
    let mut manager = FlowManager::new(
        Dpif::open()?,
        dp.info.ifindex,
        cfg.max_flows,
        settings.timeouts,
        settings.expiry_interval,
        1,
        metrics.clone(),
    );
    if dp.adopted {
        let r = revalidate::revalidate(&mut d, dp.info.ifindex, &shared.load(), cfg.trace_flows)?;
        metrics.deleted("stale", r.deleted);
        for f in r.kept {
            manager.adopt(f);
        }
    }
    let manager = std::thread::Builder::new()
        .name("weft-flows".into())
        .spawn(move || manager.run(flows_rx))?;

    // Handlers.
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = HandlerCtx {
        dp_ifindex: dp.info.ifindex,
        topo: shared.clone(),
        flows: flows_tx.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        rate: cfg.upcall_rate,
        burst: cfg.upcall_burst,
        trace: cfg.trace_flows,
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

    // The watcher.
    let (local_tx, local_rx) = mpsc::unbounded_channel();
    let watcher = TopologyWatcher {
        host: settings.host.clone(),
        tunnel_port: dp.tunnel_port_no,
        shared: shared.clone(),
        ports: ports.clone(),
        flows: flows_tx.clone(),
        metrics: metrics.clone(),
        pending_full_flush: false,
        known_hosts: Default::default(),
    };
    let watcher = tokio::spawn(watcher.run(updates, local_rx));

    // Metrics.
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

    // The local API.
    let listener = crate::api::bind(&cfg.api_socket)
        .with_context(|| format!("binding the API socket {}", cfg.api_socket.display()))?;
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
        attachments,
    });
    let (stop_api_tx, stop_api_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(listener, agent, async move {
        let _ = stop_api_rx.await;
    }));
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = registration.ensure().await {
                    warn!(error = %nsdb::error::chain(&e), "cannot check the host registration");
                }
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
    drop(cache);
    let _ = manager;
    Ok(())
}
