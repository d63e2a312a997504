//! TLS to etcd: the CA bundle that verifies etcd's certificate, and the client certificate and
//! key that etcd's `--client-cert-auth` asks for, read from PEM files and checked before the
//! first connection.
//!
//! The rules, the same in every Weft binary (the errors name their flags):
//! - `http://` endpoints speak plaintext; giving any TLS file with them is refused, and so is
//!   a list that mixes `http://` and `https://`.
//! - `https://` endpoints verify etcd's certificate against `--etcd-ca-file` when it is given,
//!   otherwise against the system's trusted roots (`/etc/ssl/certs` and the like, found by
//!   `rustls-native-certs`, or `SSL_CERT_FILE`; the image ships Debian's `ca-certificates`).
//!   A system without any trusted root is refused.
//! - `--etcd-cert-file` and `--etcd-key-file` go together: one without the other is refused.
//! - A file that cannot be read, or holds no PEM certificate (no PEM private key), is refused
//!   with its flag and path.
//!
//! Under TLS 1.3 a server checks the client's certificate after the client considers the
//! handshake done, so a client certificate etcd refuses (or none) reaches the gRPC client only
//! as "connection closed". [`probe`] therefore makes one handshake of its own and reads etcd's
//! first answer, which is either HTTP/2 or the alert saying why: that reason is what the
//! connect error shows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{NsdbError, Result};

/// The flag of the CA bundle in both Weft binaries (`WEFT_ETCD_CA_FILE`).
pub const CA_FLAG: &str = "--etcd-ca-file";
/// The flag of the client certificate in both Weft binaries (`WEFT_ETCD_CERT_FILE`).
pub const CERT_FLAG: &str = "--etcd-cert-file";
/// The flag of the client certificate's key in both Weft binaries (`WEFT_ETCD_KEY_FILE`).
pub const KEY_FLAG: &str = "--etcd-key-file";

/// How long the TCP connect, and then the TLS handshake, with one etcd member may take. A
/// member that accepts TCP but never answers the handshake fails the request after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The PEM files of a TLS connection to etcd. All empty: no TLS files (plain `http://`, or
/// `https://` verified by the system's roots, without a client certificate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM, one or more) that etcd's serving certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// The client certificate (PEM, with its intermediates if any) shown to etcd.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// The TLS settings of a connection, read and checked: what etcd-client is given, and the
/// same as a rustls configuration for [`probe`].
pub(crate) struct Loaded {
    pub options: TlsOptions,
    pub config: Arc<ClientConfig>,
    /// Whether a client certificate is shown.
    pub identity: bool,
    /// Whether etcd's certificate is checked against `--etcd-ca-file` (else the system's).
    pub ca_file: bool,
}

impl TlsFiles {
    /// Whether no file is given.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// Checks the files against the endpoints and reads them, without contacting anything:
    /// what [`crate::Nsdb::connect_with_tls`] would refuse before connecting.
    pub fn check<E: AsRef<str>>(&self, endpoints: &[E]) -> Result<()> {
        self.load(endpoints).map(|_| ())
    }

    /// The TLS settings of a connection to `endpoints`, or `None` for plaintext.
    pub(crate) fn load<E: AsRef<str>>(&self, endpoints: &[E]) -> Result<Option<Loaded>> {
        let https = endpoints
            .iter()
            .filter(|e| e.as_ref().starts_with("https://"))
            .count();
        if https > 0 && https < endpoints.len() {
            let plain = endpoints
                .iter()
                .map(AsRef::as_ref)
                .find(|e| !e.starts_with("https://"))
                .unwrap_or_default();
            return Err(NsdbError::TlsEndpoint {
                endpoint: plain.to_owned(),
                reason: "the other endpoints are https://: use https:// for every member".into(),
            });
        }
        let pair = match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(NsdbError::TlsIncomplete {
                    given: CERT_FLAG,
                    missing: KEY_FLAG,
                });
            }
            (None, Some(_)) => {
                return Err(NsdbError::TlsIncomplete {
                    given: KEY_FLAG,
                    missing: CERT_FLAG,
                });
            }
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
        };
        if https == 0 {
            if self.is_empty() {
                return Ok(None);
            }
            let flags: Vec<&str> = [
                (CA_FLAG, self.ca_file.is_some()),
                (CERT_FLAG, self.cert_file.is_some()),
                (KEY_FLAG, self.key_file.is_some()),
            ]
            .into_iter()
            .filter_map(|(f, given)| given.then_some(f))
            .collect();
            return Err(NsdbError::TlsEndpoint {
                endpoint: endpoints
                    .first()
                    .map(|e| e.as_ref().to_owned())
                    .unwrap_or_default(),
                reason: format!(
                    "{} given, but the endpoint is not https://: TLS needs https:// endpoints",
                    flags.join(", ")
                ),
            });
        }

        let mut options = TlsOptions::new().timeout(HANDSHAKE_TIMEOUT);
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let pem = read(CA_FLAG, path)?;
                // tonic skips a CA certificate it cannot parse without a word, which would
                // leave an empty trust store and a handshake failure that hides why.
                for cert in certificates(CA_FLAG, path, &pem)? {
                    roots.add(cert).map_err(|e| NsdbError::TlsPem {
                        flag: CA_FLAG,
                        path: path.clone(),
                        reason: format!("holds a certificate unusable as a CA: {e}"),
                    })?;
                }
                options = options.ca_certificate(Certificate::from_pem(&pem));
            }
            None => {
                // No CA bundle: etcd's certificate must chain to a root the system trusts.
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err(NsdbError::TlsNoRoots {
                        reason: native
                            .errors
                            .first()
                            .map_or_else(|| "none found".to_owned(), ToString::to_string),
                    });
                }
                options = options.with_native_roots();
            }
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots);
        let mut config = match pair {
            Some((cert_path, key_path)) => {
                let cert_pem = read(CERT_FLAG, cert_path)?;
                let chain = certificates(CERT_FLAG, cert_path, &cert_pem)?;
                let key_pem = read(KEY_FLAG, key_path)?;
                let key =
                    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| NsdbError::TlsPem {
                        flag: KEY_FLAG,
                        path: key_path.clone(),
                        reason: format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
                    })?;
                let config =
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| NsdbError::TlsPem {
                            flag: KEY_FLAG,
                            path: key_path.clone(),
                            reason: format!(
                                "is not the key of {CERT_FLAG} {}: {e}",
                                cert_path.display()
                            ),
                        })?;
                options = options.identity(Identity::from_pem(cert_pem, key_pem));
                config
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Loaded {
            options,
            config: Arc::new(config),
            identity: pair.is_some(),
            ca_file: self.ca_file.is_some(),
        }))
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| NsdbError::TlsFile {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file; none, or one that does not parse, is an error.
fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>> {
    let invalid = |reason: String| NsdbError::TlsPem {
        flag,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// What one handshake with an etcd member showed.
#[derive(Debug)]
pub(crate) enum Probe {
    /// The handshake completed and etcd answered (or at least did not refuse in time).
    Accepted,
    /// No TCP connection: etcd is not there (yet). Not a TLS matter.
    Unreachable,
    /// The handshake failed, or etcd closed the connection with an alert: why, in words.
    Refused(String),
}

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// One TLS handshake with `endpoint` (an `https://` URL) under `tls`, then the first bytes
/// etcd answers with, to learn whether (and why) it refuses this client.
pub(crate) async fn probe(endpoint: &str, tls: &Loaded) -> Probe {
    let Some((host, port)) = host_port(endpoint) else {
        // etcd-client refuses the URL itself, with its own message.
        return Probe::Accepted;
    };
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return Probe::Refused(format!("{host:?} is not a valid TLS server name"));
    };
    let tcp = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect((host, port))).await
    {
        Ok(Ok(tcp)) => tcp,
        _ => return Probe::Unreachable,
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let exchange = async {
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(H2_PREFACE).await?;
        stream.flush().await?;
        let mut buf = [0u8; 64];
        stream.read(&mut buf).await
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
        // etcd's HTTP/2 settings: it took this client.
        Ok(Ok(n)) if n > 0 => Probe::Accepted,
        // No refusal in time: nothing to explain; the gRPC client has its own timeouts.
        Err(_) => Probe::Accepted,
        Ok(Ok(_)) => Probe::Refused(
            "etcd closed the connection after the handshake without a reason".to_owned(),
        ),
        Ok(Err(e)) => Probe::Refused(explain(&e, tls)),
    }
}

/// rustls' reason for a failed handshake, and what it usually means here.
fn explain(err: &std::io::Error, tls: &Loaded) -> String {
    let Some(rustls_err) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return err.to_string();
    };
    let roots = if tls.ca_file {
        format!("the CA of {CA_FLAG}")
    } else {
        format!("a root the system trusts (no {CA_FLAG} is given)")
    };
    let hint = match rustls_err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("etcd's certificate is not signed by {roots}")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "etcd's certificate does not name the endpoint's host".to_owned(),
        rustls::Error::InvalidCertificate(_) => "etcd's certificate is not valid".to_owned(),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            format!("etcd asks for a client certificate: give {CERT_FLAG} and {KEY_FLAG}")
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => {
            if tls.identity {
                format!(
                    "etcd refuses the client certificate of {CERT_FLAG}: is it signed by a CA in \
                     etcd's --trusted-ca-file, and valid for client authentication?"
                )
            } else {
                // Older Go TLS servers (Debian's etcd 3.4) answer bad_certificate here.
                format!(
                    "etcd refuses a client without a certificate: give {CERT_FLAG} and {KEY_FLAG}"
                )
            }
        }
        _ => return format!("TLS: {rustls_err}"),
    };
    format!("TLS: {rustls_err}: {hint}")
}

/// The host and port of an `https://host:port/...` URL (`[v6]` brackets removed; port 2379
/// when none is given, as etcd's default client port).
fn host_port(endpoint: &str) -> Option<(&str, u16)> {
    let rest = endpoint.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 2379,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, 2379)),
    }
}

/// Installs ring as rustls' process-wide crypto provider; a provider already installed stays.
///
/// Clients (etcd's, kube's) build their rustls config from the process default. rustls picks
/// that default by itself only when exactly one of its `ring` and `aws-lc-rs` features is on,
/// and feature unification across a build can leave none (kube without default features) or
/// both: the client then panics on its first connection. The workspace builds rustls with
/// ring only, and every binary that talks TLS calls this before its first connection;
/// [`crate::Nsdb::connect_with_tls`] also calls it before a TLS connection.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_endpoints() {
        assert_eq!(
            host_port("https://127.0.0.1:2379"),
            Some(("127.0.0.1", 2379))
        );
        assert_eq!(
            host_port("https://etcd-0.etcd.weft-system.svc:2379/"),
            Some(("etcd-0.etcd.weft-system.svc", 2379))
        );
        assert_eq!(host_port("https://[::1]:12379"), Some(("::1", 12379)));
        assert_eq!(host_port("https://etcd"), Some(("etcd", 2379)));
        assert_eq!(host_port("http://etcd:2379"), None);
        assert_eq!(host_port("https://etcd:port"), None);
    }
}
