//! Test support: a real etcd process on a free loopback port with a temporary data
//! directory, which tests can kill and restart on the same port and directory.
//!
//! Enabled by the `test-util` feature. Missing or broken etcd makes the test panic with a
//! message saying so: NSDB tests never pass quietly without a database.
//!
//! [`Etcd::start_tls`] serves clients over https with `--client-cert-auth`, from the
//! certificates of a [`Pki`] that `openssl` makes for the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Nsdb;
use crate::tls::TlsFiles;

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
    /// With TLS: the server's files, and the plain-http port of /health (the client port
    /// wants a client certificate).
    tls: Option<(ServerTls, u16)>,
    child: Option<Child>,
}

/// The files etcd serves clients with under TLS, and those of a client it accepts.
#[derive(Debug, Clone)]
struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    client: TlsFiles,
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
        Etcd::start_with(None)
    }

    /// Starts etcd serving clients over https with `pki`'s server certificate, and asking
    /// every client for a certificate signed by `pki`'s CA (`--client-cert-auth`); waits
    /// until it is healthy. Connect with [`Pki::client`].
    pub fn start_tls(pki: &Pki) -> Etcd {
        let tls = ServerTls {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            ca: pki.ca(),
            client: pki.client(),
        };
        Etcd::start_with(Some((tls, free_port())))
    }

    fn start_with(tls: Option<(ServerTls, u16)>) -> Etcd {
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
            tls,
            child: None,
        };
        etcd.spawn();
        etcd
    }

    /// `http://127.0.0.1:<port>`, or `https://` when started with TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The endpoint as a one-element list, ready for [`Nsdb::connect`].
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connects a client to this etcd (with TLS: the CA and client certificate of its
    /// [`Pki`]).
    pub async fn client(&self) -> Nsdb {
        let tls = self
            .tls
            .as_ref()
            .map(|(t, _)| t.client.clone())
            .unwrap_or_default();
        Nsdb::connect_with_tls(&self.endpoints(), &tls)
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
        let mut cmd = Command::new(&self.bin);
        if let Some((tls, health_port)) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth")
                .arg(format!(
                    "--listen-metrics-urls=http://127.0.0.1:{health_port}"
                ));
        }
        let child = cmd
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
        let port = self.tls.as_ref().map_or(self.client_port, |(_, p)| *p);
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
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

/// A CA made by `openssl` for one test, in a temporary directory:
/// - `ca.pem`: the CA; `server.pem`/`server.key`: etcd's certificate for `127.0.0.1` and
///   `localhost`; `client.pem`/`client.key`: a client certificate;
/// - `other-ca.pem`: an unrelated CA; `other-client.pem`/`other-client.key`: a client
///   certificate it signed.
///
/// Keys are P-256 in PKCS#8 PEM; certificates are valid for a day.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes the CAs and certificates. Panics, saying why, if `openssl` is missing or fails.
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("weft-pki-")
            .tempdir()
            .expect("cannot create a temporary directory for certificates");
        let pki = Pki { dir };
        pki.make_ca("ca", "weft-test-ca");
        pki.make_ca("other-ca", "weft-other-ca");
        pki.leaf(
            "ca",
            "server",
            "/CN=etcd",
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost",
        );
        pki.leaf("ca", "client", "/CN=weft", "extendedKeyUsage=clientAuth");
        pki.leaf(
            "other-ca",
            "other-client",
            "/CN=weft",
            "extendedKeyUsage=clientAuth",
        );
        pki
    }

    /// A file of this PKI by name (`ca.pem`, `client.key`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed etcd's and the client's certificates.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The CA, client certificate and key that etcd accepts.
    pub fn client(&self) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.ca()),
            cert_file: Some(self.path("client.pem")),
            key_file: Some(self.path("client.key")),
        }
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect(
                "cannot run openssl: TLS tests need the openssl command (apt-get install openssl)",
            );
        assert!(
            out.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn make_ca(&self, name: &str, cn: &str) {
        let (key, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "1",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// A certificate `name.pem` (key `name.key`) signed by CA `ca`, with the extension lines
    /// `ext` besides its basic constraints and key usage.
    fn leaf(&self, ca: &str, name: &str, subj: &str, ext: &str) {
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{}\n",
            ext
        );
        std::fs::write(self.dir.path().join(&extfile), ext)
            .expect("cannot write an extension file");
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subj,
        ]);
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ]);
    }
}
