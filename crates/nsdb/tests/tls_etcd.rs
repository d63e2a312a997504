//! NSDB over TLS against a real etcd that serves https on loopback with `--client-cert-auth`:
//! the right CA and client certificate write and read records (and watch them); no client
//! certificate, a client certificate of another CA, or the wrong CA for etcd's certificate each
//! fail the first request within a bound, with rustls' or etcd's reason in the error. Files
//! that cannot work are refused before anything is contacted, naming the flag.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nsdb::testing::{Etcd, Pki};
use nsdb::{Bridge, Nsdb, NsdbError, TlsFiles, WatchCache};

/// How long a refused handshake may take to fail a request: the connect timeout (3 s) plus
/// the TLS handshake timeout (3 s), with room for a slow machine.
const FAIL_WITHIN: Duration = Duration::from_secs(15);

fn chain(err: &NsdbError) -> String {
    nsdb::error::chain(err).to_string()
}

/// Connecting, then the first request, of a client that etcd (or the client) must refuse:
/// the error, shown with its sources, and how long it took. Panics if it succeeds or takes
/// longer than the bound.
async fn refused(endpoints: &[String], tls: &TlsFiles) -> (String, Duration) {
    let started = Instant::now();
    let attempt = async {
        let db = Nsdb::connect_with_tls(endpoints, tls).await?;
        db.get::<Bridge>("b1").await
    };
    let res = tokio::time::timeout(FAIL_WITHIN * 2, attempt)
        .await
        .unwrap_or_else(|_| panic!("connect and get hung for {:?}", FAIL_WITHIN * 2));
    let took = started.elapsed();
    let err = res.expect_err("etcd refuses this client");
    assert!(
        took < FAIL_WITHIN,
        "failing took {took:?}, more than {FAIL_WITHIN:?}"
    );
    (chain(&err), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_writes_reads_and_watches() {
    common::init_logs();
    let pki = Pki::generate();
    let etcd = Etcd::start_tls(&pki);
    assert!(etcd.endpoint().starts_with("https://"));
    let db = Nsdb::connect_with_tls(&etcd.endpoints(), &pki.client())
        .await
        .expect("connect with the client certificate");

    let bridge = common::bridge("b1", "10.0.0.0/24", "10.0.0.1");
    let version = db.create(&bridge).await.expect("create over TLS");
    let read = db
        .get::<Bridge>("b1")
        .await
        .expect("get over TLS")
        .expect("the bridge just written");
    assert_eq!(read.record, bridge);
    assert_eq!(read.version, version);
    // The harness's own client takes the same certificates.
    let other = etcd.client().await.get::<Bridge>("b1").await.expect("get");
    assert_eq!(other.map(|v| v.version), Some(version));

    // The watch stream rides the same TLS channel.
    let cache = WatchCache::start(db.clone()).await;
    let (snapshot, mut updates) = cache.subscribe();
    assert_eq!(snapshot.list::<Bridge>().count(), 1);
    db.create(&common::bridge("b2", "10.0.1.0/24", "10.0.1.1"))
        .await
        .expect("second create");
    let update = tokio::time::timeout(Duration::from_secs(10), updates.recv())
        .await
        .expect("an update within 10 s")
        .expect("the cache is running");
    assert!(
        update.changes.iter().any(|c| c.key.ends_with("/b2")),
        "{update:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_a_client_without_a_certificate() {
    let pki = Pki::generate();
    let etcd = Etcd::start_tls(&pki);
    let ca_only = TlsFiles {
        ca_file: Some(pki.ca()),
        ..TlsFiles::default()
    };
    let (err, took) = refused(&etcd.endpoints(), &ca_only).await;
    eprintln!("without a client certificate, after {took:?}: {err}");
    // Go's TLS server sends `certificate_required`, or `bad_certificate` in older releases
    // (Debian's etcd 3.4 sends that one): either reads as the same advice.
    assert!(
        err.starts_with(&format!(
            "TLS handshake with etcd at {} failed: TLS: received fatal alert: ",
            etcd.endpoint()
        )) && err.ends_with("give --etcd-cert-file and --etcd-key-file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_a_client_certificate_of_another_ca() {
    let pki = Pki::generate();
    let etcd = Etcd::start_tls(&pki);
    let other = TlsFiles {
        ca_file: Some(pki.ca()),
        cert_file: Some(pki.path("other-client.pem")),
        key_file: Some(pki.path("other-client.key")),
    };
    let (err, took) = refused(&etcd.endpoints(), &other).await;
    eprintln!("with another CA's client certificate, after {took:?}: {err}");
    assert!(
        err.starts_with(&format!(
            "TLS handshake with etcd at {} failed: ",
            etcd.endpoint()
        )) && err.contains("etcd refuses the client certificate of --etcd-cert-file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_ca_does_not_trust_etcd() {
    let pki = Pki::generate();
    let etcd = Etcd::start_tls(&pki);
    let wrong_ca = TlsFiles {
        ca_file: Some(pki.path("other-ca.pem")),
        ..pki.client()
    };
    let (err, took) = refused(&etcd.endpoints(), &wrong_ca).await;
    eprintln!("with the wrong CA, after {took:?}: {err}");
    assert_eq!(
        err,
        format!(
            "TLS handshake with etcd at {} failed: TLS: invalid peer certificate: UnknownIssuer: \
             etcd's certificate is not signed by the CA of --etcd-ca-file",
            etcd.endpoint()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_etcd_fails_within_the_bound() {
    let pki = Pki::generate();
    let etcd = Etcd::start_tls(&pki);
    let plain = vec![etcd.endpoint().replacen("https://", "http://", 1)];
    let (err, took) = refused(&plain, &TlsFiles::default()).await;
    eprintln!("plaintext to a TLS port, after {took:?}: {err}");
    assert!(
        err.starts_with("etcd get on /weft/v1/bridges/b1 failed: "),
        "{err}"
    );
}

/// Without `--etcd-ca-file`, etcd's certificate must chain to a root the system trusts; the
/// test CA is none of them. (That the system's roots are used at all is shown by
/// operator/tests/helm.rs, which points `SSL_CERT_FILE` of `weft-operator` at the test CA.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_file_the_system_roots_decide() {
    let pki = Pki::generate();
    let etcd = Etcd::start_tls(&pki);
    let no_ca = TlsFiles {
        ca_file: None,
        ..pki.client()
    };
    let (err, _) = refused(&etcd.endpoints(), &no_ca).await;
    assert_eq!(
        err,
        format!(
            "TLS handshake with etcd at {} failed: TLS: invalid peer certificate: UnknownIssuer: \
             etcd's certificate is not signed by a root the system trusts (no --etcd-ca-file is \
             given)",
            etcd.endpoint()
        )
    );
}

/// Files that cannot work are refused by `connect_with_tls` itself, before any connection,
/// naming the flag (and the path).
#[tokio::test]
async fn files_that_cannot_work_are_refused_naming_the_flag() {
    let pki = Pki::generate();
    let https = ["https://127.0.0.1:1".to_string()];
    let refused = async |endpoints: &[String], tls: TlsFiles| -> String {
        let err = Nsdb::connect_with_tls(endpoints, &tls)
            .await
            .expect_err("refused before connecting");
        chain(&err)
    };

    // A certificate without its key, and a key without its certificate.
    let err = refused(
        &https,
        TlsFiles {
            key_file: None,
            ..pki.client()
        },
    )
    .await;
    assert_eq!(
        err,
        "--etcd-cert-file is given without --etcd-key-file: a client certificate needs its key"
    );
    let err = refused(
        &https,
        TlsFiles {
            cert_file: None,
            ..pki.client()
        },
    )
    .await;
    assert!(
        err.starts_with("--etcd-key-file is given without --etcd-cert-file"),
        "{err}"
    );

    // Unreadable files: the flag, the path and the OS's reason.
    let missing = PathBuf::from("/nonexistent/weft/ca.pem");
    for (tls, flag) in [
        (
            TlsFiles {
                ca_file: Some(missing.clone()),
                ..pki.client()
            },
            "--etcd-ca-file",
        ),
        (
            TlsFiles {
                cert_file: Some(missing.clone()),
                ..pki.client()
            },
            "--etcd-cert-file",
        ),
        (
            TlsFiles {
                key_file: Some(missing.clone()),
                ..pki.client()
            },
            "--etcd-key-file",
        ),
    ] {
        let err = refused(&https, tls).await;
        assert!(
            err.starts_with(&format!("cannot read {flag} {}: ", missing.display()))
                && err.contains("No such file"),
            "{err}"
        );
    }

    // Files that are not what their flag wants: a key as the CA, a certificate as the key.
    let err = refused(
        &https,
        TlsFiles {
            ca_file: Some(pki.path("client.key")),
            ..pki.client()
        },
    )
    .await;
    assert!(
        err.starts_with("--etcd-ca-file ") && err.ends_with("holds no PEM certificate"),
        "{err}"
    );
    let err = refused(
        &https,
        TlsFiles {
            key_file: Some(pki.path("client.pem")),
            ..pki.client()
        },
    )
    .await;
    assert!(
        err.starts_with("--etcd-key-file ") && err.contains("holds no PEM private key"),
        "{err}"
    );

    // A key that is not the certificate's.
    let err = refused(
        &https,
        TlsFiles {
            key_file: Some(pki.path("other-client.key")),
            ..pki.client()
        },
    )
    .await;
    assert!(
        err.starts_with("--etcd-key-file ") && err.contains("is not the key of --etcd-cert-file"),
        "{err}"
    );

    // TLS files with plaintext endpoints, and a mix of http:// and https://.
    let err = refused(&["http://127.0.0.1:1".to_string()], pki.client()).await;
    assert!(
        err.contains("--etcd-ca-file, --etcd-cert-file, --etcd-key-file given")
            && err.contains("not https://"),
        "{err}"
    );
    let err = refused(
        &[
            "https://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".to_string(),
        ],
        TlsFiles::default(),
    )
    .await;
    assert!(
        err.starts_with("etcd endpoint http://127.0.0.1:2:"),
        "{err}"
    );
}
