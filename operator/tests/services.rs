//! Kubernetes Services as Weft load balancers: `weft-operator run`, the built binary, against a
//! real kube-apiserver (e2e/controlplane.sh) and a real etcd as NSDB. Services and
//! EndpointSlices are applied with kubectl (no endpoint controller runs here, so the slices are
//! written by hand, labelled `kubernetes.io/service-name` as the EndpointSlice controller
//! labels them), and NSDB is read back.
//!
//! Needs the tools e2e/tools.sh builds (it fails, naming the command, when they are missing):
//!     e2e/tools.sh kube-apiserver kubectl etcd
//!     cargo test -p weft-operator --test services

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nsdb::{AnyRecord, LoadBalancer};
use support::controlplane::ControlPlane;
use support::operator::{Operator, wait_for};
use support::records::Db;

/// How long a change may take to reach NSDB once the operator can see it (including the
/// operator's start: the leader Lease, then both initial lists).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// A short Lease, so that the replica started after a killed one leads within seconds.
const LEASE: [&str; 6] = [
    "--lease-name",
    "weft-services",
    "--lease-duration",
    "8",
    "--lease-grace",
    "4",
];
const NAMESPACE: &str = "svc-x";

/// What the operator needs, and the test's namespace.
fn prepare(cp: &ControlPlane) {
    cp.prepare_weft();
    cp.create_namespace(NAMESPACE);
}

/// Every load balancer in NSDB, by id.
fn load_balancers(db: &Db) -> Result<BTreeMap<String, LoadBalancer>, String> {
    Ok(db
        .try_snapshot()?
        .records
        .into_values()
        .filter_map(|(r, _)| match r {
            AnyRecord::LoadBalancer(lb) => Some((lb.id.clone(), lb)),
            _ => None,
        })
        .collect())
}

/// The VIPs of a load balancer as text, one per VIP: `ip proto:port -> member:port, ...`.
fn vips(lb: &LoadBalancer) -> Vec<String> {
    lb.vips
        .iter()
        .map(|v| {
            let members: Vec<String> = v
                .members
                .iter()
                .map(|m| {
                    assert_eq!((m.weight, m.healthy), (1, true), "{v:?}");
                    format!("{}:{}", m.ip, m.port)
                })
                .collect();
            format!(
                "{} {:?}:{} -> {}",
                v.ip,
                v.protocol,
                v.port,
                members.join(", ")
            )
        })
        .collect()
}

/// Waits until the load balancer `id` has exactly these VIPs.
fn wait_vips(db: &Db, op: &mut Operator, id: &str, want: &[&str]) -> LoadBalancer {
    wait_for(
        &format!("{id} with VIPs {want:#?}"),
        CONVERGE_TIMEOUT,
        op,
        || {
            let lbs = load_balancers(db)?;
            match lbs.get(id) {
                Some(lb) if vips(lb) == want => Ok(lb.clone()),
                Some(lb) => Err(format!("VIPs {:#?}", vips(lb))),
                None => Err(format!("absent; load balancers: {:?}", lbs.keys())),
            }
        },
    )
}

fn stop(op: Operator) {
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
    assert!(
        !stderr.contains("forbidden"),
        "weft-operator was refused something:\n{stderr}"
    );
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: svc-x}
spec:
  clusterIP: 10.96.10.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9090}
"#;

/// Two slices of web, as the EndpointSlice controller would write them: the named targetPort
/// `web` resolved to the pods' 8080. `{six}` is the readiness of 10.1.0.6.
const WEB_SLICES: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: svc-x
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: metrics, port: 9090, protocol: TCP}
endpoints:
- addresses: [10.1.0.5]
  conditions: {ready: true}
- addresses: [10.1.0.6]
  conditions: {ready: {six}}
- addresses: [10.1.0.7]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-2
  namespace: svc-x
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: metrics, port: 9090, protocol: TCP}
endpoints:
- addresses: [10.1.0.8]
"#;

const WEB_HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: svc-x}
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web}
"#;

/// A Service without selector, its slice made by hand; UDP, with client-IP session affinity
/// remembered for ten minutes.
const DNS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: svc-x}
spec:
  clusterIP: 10.96.10.53
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports:
  - {port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-manual
  namespace: svc-x
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports:
- {port: 1053, protocol: UDP}
endpoints:
- addresses: [192.168.50.7]
"#;

fn apply(cp: &ControlPlane, dir: &Path, name: &str, yaml: &str) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    cp.kubectl(&["apply", "-f", path.to_str().unwrap()]);
}

/// A Service with two ports (one a named targetPort) and two hand-written slices becomes a
/// global load balancer with a VIP per port whose members are the ready endpoints at the
/// slices' port numbers; the members follow the slices; a Service that becomes headless loses
/// its load balancer; one deleted while no operator runs is swept by the next.
#[test]
fn services_become_load_balancers_that_follow_their_endpoint_slices() {
    let started = Instant::now();
    let cp = ControlPlane::shared();
    prepare(&cp);
    let db = Db::start();
    let dir = tempfile::Builder::new()
        .prefix("weft-services-")
        .tempdir()
        .unwrap();
    let operator = |n: usize| {
        let identity = format!("replica-{n}");
        let mut args = LEASE.to_vec();
        args.extend(["--identity", identity.as_str()]);
        Operator::start(
            cp.kubeconfig(),
            &db.endpoint(),
            &args,
            &dir.path().join(format!("{identity}.stderr")),
        )
    };

    apply(&cp, dir.path(), "web", WEB);
    apply(
        &cp,
        dir.path(),
        "web-slices",
        &WEB_SLICES.replace("{six}", "true"),
    );
    apply(&cp, dir.path(), "dns", DNS);
    let mut op = operator(1);

    let web = wait_vips(
        &db,
        &mut op,
        "ksvc:svc-x:web",
        &[
            "10.96.10.10 Tcp:80 -> 10.1.0.5:8080, 10.1.0.6:8080, 10.1.0.8:8080",
            "10.96.10.10 Tcp:9090 -> 10.1.0.5:9090, 10.1.0.6:9090, 10.1.0.8:9090",
        ],
    );
    assert_eq!(web.name, "svc-x/web");
    assert_eq!(web.router, None, "a global load balancer");
    assert!(
        web.vips
            .iter()
            .all(|v| !v.session_affinity && v.member_selector.is_none() && v.target_port.is_none())
    );
    let dns = wait_vips(
        &db,
        &mut op,
        "ksvc:svc-x:dns",
        &["10.96.10.53 Udp:53 -> 192.168.50.7:1053"],
    );
    assert!(
        dns.vips
            .iter()
            .all(|v| v.session_affinity && v.affinity_timeout_s == Some(600)),
        "ClientIP affinity and its timeout reach the VIP: {:?}",
        dns.vips
    );
    // The API server's own Service, like any other (its members are whatever the API
    // server's endpoint reconciler wrote).
    wait_for(
        "the kubernetes Service's VIP",
        CONVERGE_TIMEOUT,
        &mut op,
        || {
            let lbs = load_balancers(&db)?;
            let lb = lbs
                .get("ksvc:default:kubernetes")
                .ok_or_else(|| format!("absent; load balancers: {:?}", lbs.keys()))?;
            match lb.vips.as_slice() {
                [v] if v.ip.to_string() == "10.96.0.1" && v.port == 443 => Ok(()),
                _ => Err(format!("{lb:?}")),
            }
        },
    );
    // Nothing but the Services' load balancers.
    let others: Vec<String> = db
        .snapshot()
        .records
        .into_values()
        .filter(|(r, _)| !matches!(r, AnyRecord::LoadBalancer(lb) if lb.id.starts_with("ksvc:")))
        .map(|(r, _)| r.key())
        .collect();
    assert!(others.is_empty(), "other records written: {others:?}");

    // 10.1.0.6 fails its readiness probe: new connections stop going to it.
    apply(
        &cp,
        dir.path(),
        "web-slices",
        &WEB_SLICES.replace("{six}", "false"),
    );
    wait_vips(
        &db,
        &mut op,
        "ksvc:svc-x:web",
        &[
            "10.96.10.10 Tcp:80 -> 10.1.0.5:8080, 10.1.0.8:8080",
            "10.96.10.10 Tcp:9090 -> 10.1.0.5:9090, 10.1.0.8:9090",
        ],
    );

    // No endpoints left: the VIPs stay, with no members (the simulation rejects).
    cp.kubectl(&[
        "delete",
        "endpointslices",
        "-n",
        NAMESPACE,
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    wait_vips(
        &db,
        &mut op,
        "ksvc:svc-x:web",
        &["10.96.10.10 Tcp:80 -> ", "10.96.10.10 Tcp:9090 -> "],
    );

    // Headless (clusterIP cannot change in place: delete and create again), with endpoints:
    // no load balancer. A Service created after it is a barrier: once its load balancer is
    // written, the headless web has been seen.
    cp.kubectl(&["delete", "service", "-n", NAMESPACE, "web"]);
    apply(&cp, dir.path(), "web-headless", WEB_HEADLESS);
    apply(
        &cp,
        dir.path(),
        "web-slices",
        &WEB_SLICES.replace("{six}", "true"),
    );
    apply(
        &cp,
        dir.path(),
        "api",
        &WEB.replace("name: web", "name: api")
            .replace("10.96.10.10", "10.96.10.20"),
    );
    wait_vips(
        &db,
        &mut op,
        "ksvc:svc-x:api",
        &["10.96.10.20 Tcp:80 -> ", "10.96.10.20 Tcp:9090 -> "],
    );
    wait_for(
        "web's load balancer gone",
        CONVERGE_TIMEOUT,
        &mut op,
        || match load_balancers(&db)?.get("ksvc:svc-x:web") {
            None => Ok(()),
            Some(lb) => Err(format!("still there: {lb:?}")),
        },
    );
    // Its slices change: still none.
    cp.kubectl(&["delete", "endpointslice", "-n", NAMESPACE, "web-2"]);
    apply(
        &cp,
        dir.path(),
        "dns-2",
        &DNS.replace("192.168.50.7", "192.168.50.8"),
    );
    wait_vips(
        &db,
        &mut op,
        "ksvc:svc-x:dns",
        &["10.96.10.53 Udp:53 -> 192.168.50.8:1053"],
    );
    assert!(
        !load_balancers(&db).unwrap().contains_key("ksvc:svc-x:web"),
        "a headless Service has no load balancer"
    );
    stop(op);

    // Deleted while no operator runs: nothing removes it then, the next operator sweeps it.
    cp.kubectl(&["delete", "service", "-n", NAMESPACE, "api"]);
    std::thread::sleep(Duration::from_secs(1));
    let before = load_balancers(&db).unwrap();
    assert!(before.contains_key("ksvc:svc-x:api"), "{:?}", before.keys());
    let mut op = operator(2);
    wait_for(
        "api's load balancer swept",
        CONVERGE_TIMEOUT,
        &mut op,
        || {
            let lbs = load_balancers(&db)?;
            if lbs.contains_key("ksvc:svc-x:api") {
                Err(format!("still there; load balancers: {:?}", lbs.keys()))
            } else {
                Ok(())
            }
        },
    );
    let after = load_balancers(&db).unwrap();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["ksvc:default:kubernetes", "ksvc:svc-x:dns"],
        "only api's load balancer is gone"
    );
    assert_eq!(after["ksvc:svc-x:dns"], before["ksvc:svc-x:dns"]);
    stop(op);
    cp.kubectl(&["delete", "namespace", NAMESPACE, "--wait=false"]);
    eprintln!("took {:?}", started.elapsed());
}
