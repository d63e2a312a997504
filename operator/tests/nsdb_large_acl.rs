//! The largest ACL the CRD allows (4,096 rules with every match filled in), ten times,
//! through the operator's own translation into a real etcd: written, listed (as the
//! leader's orphan sweep lists everything) and seen by watch caches. With every match
//! filled in, each chain encodes to about 1.3 MB (just under etcd's 1.5 MiB request
//! limit), so the ten pass gRPC's default 4 MiB message size three times over.

use std::time::Duration;

use api::{AccessControlList, AccessControlListSpec, AclRule, Action, ConnectionState, Direction};
use api::{PortRange, Protocol};
use nsdb::testing::Etcd;
use nsdb::{AnyRecord, Chain, WatchCache};
use weft_operator::offline::{self, Outcome};
use weft_operator::{Inventory, store};

/// The most rules `AccessControlList.spec.rules` accepts (`maxItems` in the CRD).
const MAX_RULES: usize = 4096;
const ACLS: usize = 10;

/// A rule with every match set, at its longest: IPv6 prefixes, both port ranges, a
/// connection state and a 63-character name.
fn widest_rule(i: usize) -> AclRule {
    AclRule {
        name: Some(format!("{i:04}-{}", "r".repeat(58))),
        source: Some(format!("fd00:1234:5678:9abc:def0:{:x}:0:0/96", i)),
        invert_source: true,
        destination: Some(format!("fd00:ffff:eeee:dddd:cccc:{:x}:0:0/96", i)),
        invert_destination: true,
        protocol: Some(Protocol::Tcp),
        source_ports: Some(PortRange {
            from: 10000,
            to: 65535,
        }),
        destination_ports: Some(PortRange {
            from: 1 + (i % 60000) as u16,
            to: 65535,
        }),
        icmp_type: None,
        icmp_code: None,
        connection_state: Some(ConnectionState {
            new: Some(true),
            established: Some(false),
            related: Some(false),
        }),
        action: if i.is_multiple_of(2) {
            Action::Accept
        } else {
            Action::Drop
        },
        jump_to: None,
    }
}

fn largest_acl(name: &str) -> AccessControlList {
    AccessControlList::new(
        name,
        AccessControlListSpec {
            direction: Direction::Ingress,
            rules: (0..MAX_RULES).map(widest_rule).collect(),
            ..Default::default()
        },
    )
}

fn chains(records: &[(AnyRecord, i64)]) -> Vec<&Chain> {
    records
        .iter()
        .filter_map(|(r, _)| match r {
            AnyRecord::Chain(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_of_the_largest_acl_are_written_listed_and_watched() {
    let etcd = Etcd::start();
    let db = etcd.client().await;
    // One cache follows the writes by watch, from an empty store.
    let watching = WatchCache::start(etcd.client().await).await;

    let mut inv = Inventory::default();
    for i in 0..ACLS {
        inv.add_acl(largest_acl(&format!("largest-{i}")));
    }
    let outcomes = offline::program_all(Some(&db), &inv)
        .await
        .expect("ten of the largest ACL are written");
    assert_eq!(outcomes.len(), ACLS);
    let mut last = 0;
    for (key, o) in &outcomes {
        match o {
            Outcome::Programmed(a) => last = last.max(a.revision.expect("written")),
            other => panic!("{key}: {other:?}"),
        }
    }

    // Each chain is as large as one ACL can make it: over 1 MB.
    let one = nsdb::codec::encode_any(&AnyRecord::Chain(
        chains(&db.list_all().await.expect("list of everything").1)[0].clone(),
    ))
    .unwrap()
    .len();
    assert!(
        one > 1_000_000,
        "the largest ACL's chain is only {one} bytes"
    );

    // Listed: by kind, everything, and by the leader's orphan sweep.
    let listed = db.list::<Chain>().await.expect("chains listed");
    assert_eq!(listed.records.len(), ACLS);
    assert!(
        listed
            .records
            .iter()
            .all(|c| c.record.rules.len() == MAX_RULES)
    );
    let (rev, all) = db.list_all().await.expect("everything listed");
    assert_eq!(chains(&all).len(), ACLS);
    store::sweep_orphan_tunnel_keys(&db)
        .await
        .expect("the orphan sweep lists everything");

    // Seen by the cache that watched the writes, and by one that starts now by a list.
    let snap = tokio::time::timeout(Duration::from_secs(60), watching.wait_for_revision(last))
        .await
        .expect("the watching cache saw every ACL within 60 s")
        .unwrap();
    let fresh = nsdb::Snapshot::from_records(rev, all);
    assert!(
        snap.same_records(&fresh),
        "watched cache differs from a list"
    );
    let loaded = tokio::time::timeout(Duration::from_secs(60), WatchCache::start(db.clone()))
        .await
        .expect("a new cache loaded every ACL within 60 s");
    assert!(loaded.snapshot().same_records(&fresh));
    assert_eq!(
        loaded
            .snapshot()
            .get::<Chain>("acl:largest-9")
            .map(|c| c.rules.len()),
        Some(MAX_RULES)
    );

    // Programming again reads each object's records back and changes nothing.
    for (key, o) in offline::program_all(Some(&db), &inv).await.unwrap() {
        match o {
            Outcome::Programmed(a) => assert_eq!((a.written, a.deleted), (0, 0), "{key}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    eprintln!("one chain of {MAX_RULES} rules encodes to {one} bytes; {ACLS} of them listed");
}
