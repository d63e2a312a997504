//! Shared fixtures for the NSDB integration tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use nsdb::*;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "nsdb=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn bridge(id: &str, subnet: &str, gateway: &str) -> Bridge {
    Bridge {
        id: id.into(),
        name: id.into(),
        tunnel_key: 1,
        subnet_v4: Some(subnet.parse().unwrap()),
        subnet_v6: Some("fd00:1::/112".parse().unwrap()),
        gateway_v4: Some(gateway.parse().unwrap()),
        gateway_v6: None,
        mtu: 1450,
        vlan: None,
        excluded_ips: vec![],
        inbound_chain: None,
        outbound_chain: None,
        namespaces: vec![],
    }
}

pub fn port(id: &str, n: u32) -> Port {
    Port {
        named_ports: Vec::new(),
        namespace_labels: Default::default(),
        id: id.into(),
        device: DeviceRef::Bridge("b1".into()),
        kind: PortKind::Exterior,
        mac: MacAddr::local_from_name(id),
        addresses: vec![
            format!("10.0.{}.{}/32", n / 250, n % 250 + 2)
                .parse()
                .unwrap(),
        ],
        tunnel_key: n,
        inbound_chain: None,
        outbound_chain: None,
        admin_up: true,
        labels: BTreeMap::from([("n".to_owned(), n.to_string())]),
    }
}

/// A TCP relay in front of etcd whose connections can be cut and restored, so one
/// client loses etcd while others keep writing to it.
pub struct Relay {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays a loopback port to `upstream` (`http://127.0.0.1:<port>`).
    pub async fn start(upstream: &str) -> Relay {
        use std::sync::atomic::Ordering;
        let upstream = upstream
            .trim_start_matches("http://")
            .parse::<std::net::SocketAddr>()
            .expect("etcd endpoint is http://ip:port");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the relay");
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (open, conns) = (open.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Relay {
            addr,
            open,
            conns,
            accept,
        }
    }

    /// The relay's endpoint, for [`Nsdb::connect`].
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every relayed connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A port whose `pad` label makes its JSON about `bytes` long.
pub fn padded_port(id: &str, n: u32, bytes: usize) -> Port {
    let mut p = port(id, n);
    p.labels.insert("pad".to_owned(), "x".repeat(bytes));
    p
}
