//! The operator's translation written to a real etcd: the examples produce the expected
//! records, re-running changes nothing, deleting an object removes exactly its records, and
//! an invalid object, or one that sets a field nothing implements yet, is refused without
//! touching anything while fixing it recovers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nsdb::testing::Etcd;
use nsdb::{AnyRecord, Nsdb, PortKind};
use weft_operator::offline::{self, Loaded, Outcome};
use weft_operator::{CrKind, Error, Inventory, ObjectKey, store};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn load_examples() -> Inventory {
    Loaded::from_paths(&[examples()]).unwrap().inventory
}

/// key -> (record, version) of everything in NSDB.
async fn snapshot(db: &Nsdb) -> (i64, BTreeMap<String, (AnyRecord, i64)>) {
    let (rev, all) = db.list_all().await.unwrap();
    (
        rev,
        all.into_iter().map(|(r, v)| (r.key(), (r, v))).collect(),
    )
}

async fn program_all(db: &Nsdb, inv: &Inventory) -> Vec<(ObjectKey, Outcome)> {
    offline::program_all(Some(db), inv).await.unwrap()
}

fn assert_all_programmed(outcomes: &[(ObjectKey, Outcome)]) {
    for (key, o) in outcomes {
        assert!(matches!(o, Outcome::Programmed(_)), "{key}: {o:?}");
    }
}

const EXPECTED_KEYS: &[&str] = &[
    "/weft/v1/bridges/vbr:blue",
    "/weft/v1/bridges/vbr:green",
    "/weft/v1/chains/acl:blue-ingress",
    "/weft/v1/chains/vbr:blue:in",
    "/weft/v1/load_balancers/vlb:web",
    "/weft/v1/ports/vrt:edge:peer:blue",
    "/weft/v1/ports/vrt:edge:peer:green",
    "/weft/v1/ports/vrt:edge:port:blue",
    "/weft/v1/ports/vrt:edge:port:green",
    "/weft/v1/ports/vrt:edge:uplink",
    "/weft/v1/routers/vrt:edge",
    "/weft/v1/routes/vrt:edge:port:blue:connected",
    "/weft/v1/routes/vrt:edge:port:green:connected",
    "/weft/v1/routes/vrt:edge:route:0",
    "/weft/v1/routes/vrt:edge:uplink:connected",
];

#[tokio::test]
async fn examples_write_the_expected_records() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let outcomes = program_all(&db, &load_examples()).await;
    assert_eq!(outcomes.len(), 5);
    assert_all_programmed(&outcomes);

    let (_, all) = snapshot(&db).await;
    let topology: Vec<&str> = all
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with("/weft/v1/tunnel_keys/"))
        .collect();
    assert_eq!(topology, EXPECTED_KEYS);

    // One tunnel key per bridge, router and port, all distinct, each allocated to its record.
    let mut carried = BTreeMap::new();
    for (r, _) in all.values() {
        let (id, key) = match r {
            AnyRecord::Bridge(b) => (b.id.clone(), b.tunnel_key),
            AnyRecord::Router(x) => (x.id.clone(), x.tunnel_key),
            AnyRecord::Port(p) => (p.id.clone(), p.tunnel_key),
            _ => continue,
        };
        assert_ne!(key, 0, "{id} has no tunnel key");
        assert!(
            carried.insert(key, id).is_none(),
            "tunnel key {key} used twice"
        );
    }
    assert_eq!(carried.len(), 8);
    let allocated: BTreeMap<u32, String> = all
        .values()
        .filter_map(|(r, _)| match r {
            AnyRecord::TunnelKey(t) => Some((t.key, t.owner.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(allocated, carried);

    // The router's ports and their bridge-side peers point at each other.
    let port = |id: &str| match &all[&format!("/weft/v1/ports/{id}")].0 {
        AnyRecord::Port(p) => p.clone(),
        other => panic!("{other:?}"),
    };
    for bridge in ["blue", "green"] {
        let rp = port(&format!("vrt:edge:port:{bridge}"));
        let bp = port(&format!("vrt:edge:peer:{bridge}"));
        assert_eq!(
            rp.kind,
            PortKind::Interior {
                peer: bp.id.clone()
            }
        );
        assert_eq!(
            bp.kind,
            PortKind::Interior {
                peer: rp.id.clone()
            }
        );
        assert_eq!(bp.device, nsdb::DeviceRef::Bridge(format!("vbr:{bridge}")));
        assert_eq!(rp.mac, bp.mac);
    }
    // The MAC given in the spec is kept.
    assert_eq!(
        port("vrt:edge:port:green").mac.to_string(),
        "02:00:0a:14:00:01"
    );
}

#[tokio::test]
async fn rerunning_changes_nothing() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let inv = load_examples();
    assert_all_programmed(&program_all(&db, &inv).await);
    let (rev1, before) = snapshot(&db).await;

    let again = program_all(&db, &inv).await;
    for (key, o) in &again {
        let Outcome::Programmed(a) = o else {
            panic!("{key}: {o:?}")
        };
        assert_eq!((a.written, a.deleted), (0, 0), "{key} wrote again");
        assert!(a.unchanged > 0);
    }
    let (rev2, after) = snapshot(&db).await;
    assert_eq!(rev1, rev2, "a second run must not write to etcd");
    assert_eq!(before, after);

    // A fresh loader (a new process) also finds nothing to do.
    let inv2 = Loaded::from_paths(&[examples()]).unwrap().inventory;
    program_all(&db, &inv2).await;
    assert_eq!(snapshot(&db).await.0, rev1);
}

#[tokio::test]
async fn deleting_an_object_removes_exactly_its_records() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mut inv = load_examples();
    assert_all_programmed(&program_all(&db, &inv).await);
    let (_, before) = snapshot(&db).await;

    let edge = ObjectKey::new(CrKind::VirtualRouter, "edge");
    assert!(inv.remove(&edge));
    let removed = offline::prune(&db, &inv).await.unwrap();
    assert_eq!(removed, vec![edge.clone()]);

    let (_, after) = snapshot(&db).await;
    let edge_keys: BTreeSet<u32> = before
        .values()
        .filter(|(r, _)| edge.owns(&r.id()))
        .filter_map(|(r, _)| weft_operator::translate::tunnel_key_of(r))
        .collect();
    assert_eq!(edge_keys.len(), 6, "router and five ports");
    for (key, (r, v)) in &before {
        let gone =
            edge.owns(&r.id()) || matches!(r, AnyRecord::TunnelKey(t) if edge.owns(&t.owner));
        if gone {
            assert!(!after.contains_key(key), "{key} should be gone");
        } else {
            assert_eq!(
                after.get(key),
                Some(&(r.clone(), *v)),
                "{key} must be untouched"
            );
        }
    }
    // Cleaning up again is a no-op that succeeds.
    assert_eq!(store::cleanup(&db, &edge).await.unwrap(), 0);
    assert_eq!(snapshot(&db).await.1, after);
}

#[tokio::test]
async fn a_changed_object_drops_what_it_no_longer_produces() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mut inv = load_examples();
    assert_all_programmed(&program_all(&db, &inv).await);
    let (_, before) = snapshot(&db).await;
    let green_port_key = match &before["/weft/v1/ports/vrt:edge:port:green"].0 {
        AnyRecord::Port(p) => p.tunnel_key,
        _ => unreachable!(),
    };

    // Detach the router from green.
    inv.routers
        .get_mut("edge")
        .unwrap()
        .spec
        .interfaces
        .retain(|i| i.bridge != "green");
    let edge = ObjectKey::new(CrKind::VirtualRouter, "edge");
    let a = weft_operator::program::program(&db, &edge, &inv)
        .await
        .unwrap();
    assert_eq!(a.deleted, 3, "port, peer and connected route on green");
    let (_, after) = snapshot(&db).await;
    for gone in [
        "/weft/v1/ports/vrt:edge:port:green",
        "/weft/v1/ports/vrt:edge:peer:green",
        "/weft/v1/routes/vrt:edge:port:green:connected",
    ] {
        assert!(!after.contains_key(gone), "{gone}");
    }
    assert!(
        !after.contains_key(&nsdb::Kind::TunnelKey.key(&nsdb::keys::tunnel_key_id(green_port_key))),
        "the port's tunnel key is released"
    );
    // The ports that stay keep their tunnel keys.
    assert_eq!(
        after["/weft/v1/ports/vrt:edge:port:blue"].0,
        before["/weft/v1/ports/vrt:edge:port:blue"].0
    );
}

#[tokio::test]
async fn an_invalid_object_is_refused_alone_and_fixing_it_recovers() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mut inv = load_examples();
    assert_all_programmed(&program_all(&db, &inv).await);
    let (rev, before) = snapshot(&db).await;

    // Break green's gateway and add a router that names a missing bridge.
    inv.bridges.get_mut("green").unwrap().spec.gateway = Some("10.99.0.1".into());
    let mut bad = inv.routers["edge"].clone();
    bad.metadata.name = Some("lost".into());
    bad.spec.interfaces[0].bridge = "purple".into();
    bad.spec.uplink = None;
    bad.spec.routes.clear();
    bad.spec.dnat.clear();
    inv.add_router(bad);

    let outcomes: BTreeMap<ObjectKey, Outcome> = program_all(&db, &inv).await.into_iter().collect();
    let message = |kind, name: &str| match &outcomes[&ObjectKey::new(kind, name)] {
        Outcome::Refused(Error::InvalidSpec { message, .. }) => message.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(message(CrKind::VirtualBridge, "green").contains("spec.gateway"));
    assert!(message(CrKind::VirtualRouter, "lost").contains("spec.interfaces[0].bridge"));
    let refused = outcomes.values().filter(|o| o.is_refused()).count();
    assert_eq!(refused, 2, "{outcomes:?}");
    let (rev2, after) = snapshot(&db).await;
    assert_eq!(rev, rev2, "nothing of the topology is touched");
    assert_eq!(before, after);

    // Fixing green recovers it; the refused router still has nothing in NSDB.
    inv.bridges.get_mut("green").unwrap().spec.gateway = Some("10.20.0.254".into());
    let outcomes: BTreeMap<ObjectKey, Outcome> = program_all(&db, &inv).await.into_iter().collect();
    let Outcome::Programmed(a) = &outcomes[&ObjectKey::new(CrKind::VirtualBridge, "green")] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(a.written, 1);
    let (_, after) = snapshot(&db).await;
    let AnyRecord::Bridge(g) = &after["/weft/v1/bridges/vbr:green"].0 else {
        panic!()
    };
    assert_eq!(g.gateway_v4, Some("10.20.0.254".parse().unwrap()));
    assert!(
        !after.keys().any(|k| k.contains("vrt:lost")),
        "a refused object writes nothing"
    );
}

#[tokio::test]
async fn the_command_translates_and_dumps() {
    let etcd = Etcd::start();
    let bin = env!("CARGO_BIN_EXE_weft-operator");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
    };
    let ep = etcd.endpoint();
    let ex = examples();
    let ex = ex.to_str().unwrap();
    let out = run(&["translate", "--etcd-endpoints", &ep, ex]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("5 objects, 5 programmed, 0 refused"),
        "{stdout}"
    );
    assert!(
        stdout.contains("VirtualRouter edge: programmed, 10 records (10 written"),
        "{stdout}"
    );

    let out = run(&["nsdb-dump", "--etcd-endpoints", &ep]);
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(dump.contains("\nbridges (2)\n"), "{dump}");
    assert!(dump.contains("\nports (5)\n"), "{dump}");
    assert!(
        dump.contains("vip 10.96.0.10 tcp/80 client-ip -> 10.10.0.11:8080 w1, 10.20.0.11:8080 w2"),
        "{dump}"
    );

    // A refused object makes the command fail, naming the field, and writes nothing.
    let bad = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/invalid/gateway-outside-subnet.yaml");
    let out = run(&[
        "translate",
        "--etcd-endpoints",
        &ep,
        ex,
        bad.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("refused, InvalidSpec: spec.gateway"),
        "{stdout}"
    );
    assert!(stdout.contains("0 written, 0 deleted"), "{stdout}");
}

#[tokio::test]
async fn an_unsupported_field_is_refused_and_nsdb_keeps_the_last_programmed_spec() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mut inv = load_examples();
    assert_all_programmed(&program_all(&db, &inv).await);
    let (rev, before) = snapshot(&db).await;

    // A host interface on the programmed router's uplink.
    inv.routers
        .get_mut("edge")
        .unwrap()
        .spec
        .uplink
        .as_mut()
        .unwrap()
        .host_interface = Some("eth1".into());

    let outcomes: BTreeMap<ObjectKey, Outcome> = program_all(&db, &inv).await.into_iter().collect();
    let message = |kind, name: &str| match &outcomes[&ObjectKey::new(kind, name)] {
        Outcome::Refused(Error::Unsupported { message, .. }) => message.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(
        message(CrKind::VirtualRouter, "edge")
            .starts_with("spec.uplink.hostInterface: not supported")
    );
    assert_eq!(outcomes.values().filter(|o| o.is_refused()).count(), 1);
    // edge keeps the records of its last programmed spec.
    let (rev2, after) = snapshot(&db).await;
    assert_eq!(rev, rev2, "nothing of the topology is touched");
    assert_eq!(before, after);

    // Taking the field out programs it again, with nothing to change.
    inv.routers
        .get_mut("edge")
        .unwrap()
        .spec
        .uplink
        .as_mut()
        .unwrap()
        .host_interface = None;
    let outcomes: BTreeMap<ObjectKey, Outcome> = program_all(&db, &inv).await.into_iter().collect();
    let Outcome::Programmed(a) = &outcomes[&ObjectKey::new(CrKind::VirtualRouter, "edge")] else {
        panic!("{outcomes:?}")
    };
    assert_eq!((a.written, a.deleted), (0, 0));
}

#[tokio::test]
async fn the_command_refuses_an_unsupported_field_naming_it() {
    let etcd = Etcd::start();
    let bin = env!("CARGO_BIN_EXE_weft-operator");
    let ex = examples();
    let bad = ex.join("invalid/unsupported-uplink-host-interface.yaml");
    let ep = etcd.endpoint();
    let out = std::process::Command::new(bin)
        .args(["translate", "--etcd-endpoints", ep.as_str()])
        .arg(&ex)
        .arg(&bad)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(
            "VirtualRouter uplink-host-interface: refused, Unsupported: spec.uplink.hostInterface: not supported yet"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("6 objects, 5 programmed, 1 refused"),
        "{stdout}"
    );
    let (_, all) = etcd.client().await.list_all().await.unwrap();
    assert!(
        !all.iter()
            .any(|(r, _)| r.key().contains("vrt:uplink-host-interface")),
        "a refused object writes nothing"
    );
}
