//! Test support: a real etcd process on a free loopback port with a temporary data
//! directory, which tests can kill and restart on the same port and directory.
//!
//! Enabled by the `test-util` feature. Missing or broken etcd makes the test panic with a
//! message saying so: NSDB tests never pass quietly without a database.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Nsdb;

/// The etcd binary used unless `WEFT_ETCD_BIN` names another.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

/// How long to wait for etcd to report healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A single-member etcd for tests. Killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port for etcd");
    l.local_addr()
        .expect("loopback listener has an address")
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it is healthy. Panics, saying why, if the binary is
    /// missing or etcd does not come up.
    pub fn start() -> Etcd {
        let bin = std::env::var_os("WEFT_ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN));
        assert!(
            bin.is_file(),
            "etcd binary {} not found: NSDB tests need a real etcd \
             (apt-get install etcd-server, or set WEFT_ETCD_BIN)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-")
            .tempdir()
            .expect("cannot create a temporary directory for etcd");
        let mut etcd = Etcd {
            bin,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.spawn();
        etcd
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The endpoint as a one-element list, ready for [`Nsdb::connect`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects a client to this etcd.
    pub async fn client(&self) -> Nsdb {
        Nsdb::connect(&self.endpoints())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test etcd at {}: {e}", self.endpoint()))
    }

    /// The process id of the running etcd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills etcd with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same port and data directory, and waits until healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts a new, empty etcd on the same port: the data directory is wiped, as when
    /// a member is replaced or the store is restored to an older state.
    pub fn restart_empty(&mut self) {
        self.kill();
        let data = self.dir.path().join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .unwrap_or_else(|e| panic!("cannot wipe etcd data {}: {e}", data.display()));
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("cannot open etcd log file");
        let log2 = log.try_clone().expect("cannot duplicate etcd log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.bin)
            .arg("--name=weft-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.healthy() {
                return;
            }
            if !self.is_running() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("etcd exited during startup; its log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "etcd on {} not healthy after {READY_TIMEOUT:?}; log in {}",
                self.endpoint(),
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
