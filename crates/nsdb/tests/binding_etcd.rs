//! Port bindings by transaction against a real etcd: a bound port is never taken over by
//! another host or vport, racing binders get exactly one winner, and unbinding removes
//! only the caller's own binding.

mod common;

use nsdb::testing::Etcd;
use nsdb::*;

fn binding(port: &str, host: &str, vport: &str) -> PortBinding {
    PortBinding {
        port: port.into(),
        host: host.into(),
        vport: vport.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_port_is_refused_to_another_host_or_vport_and_kept() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let mine = binding("p1", "h1", "wf-p1");

    let v = match db.bind_port(&mine).await.unwrap() {
        Bind::Created(v) => v,
        other => panic!("first bind: {other:?}"),
    };
    assert_eq!(
        db.bind_port(&mine).await.unwrap(),
        Bind::Unchanged(v),
        "binding the same port to the same vport again changes nothing"
    );
    for other in [
        binding("p1", "h2", "wf-p1"),
        binding("p1", "h1", "wf-other"),
    ] {
        match db.bind_port(&other).await {
            Err(NsdbError::PortAlreadyBound { port, host, vport }) => {
                assert_eq!(
                    (port.as_str(), host.as_str(), vport.as_str()),
                    ("p1", "h1", "wf-p1")
                );
            }
            r => panic!("binding {other:?} over {mine:?} was not refused: {r:?}"),
        }
    }
    let e = db.bind_port(&binding("p1", "h2", "x")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "port p1 is already bound to vport wf-p1 on host h1"
    );
    let stored = db.get::<PortBinding>("p1").await.unwrap().unwrap();
    assert_eq!(stored.record, mine, "the first binding is kept");
    assert_eq!(stored.version, v, "and was never rewritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_hosts_binding_one_port_get_exactly_one_winner() {
    common::init_logs();
    let etcd = Etcd::start();
    for round in 0..20 {
        let port = format!("p{round}");
        let mut tasks = Vec::new();
        for h in 0..4 {
            let db = etcd.client().await;
            let b = binding(&port, &format!("h{h}"), "wf");
            tasks.push(tokio::spawn(
                async move { (b.clone(), db.bind_port(&b).await) },
            ));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (b, Ok(Bind::Created(_))) => winners.push(b),
                (_, Err(NsdbError::PortAlreadyBound { .. })) => {}
                (b, r) => panic!("{b:?}: {r:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let db = etcd.client().await;
        let stored = db.get::<PortBinding>(&port).await.unwrap().unwrap().record;
        assert_eq!(
            stored, winners[0],
            "round {round}: NSDB holds the winner's binding"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_removes_only_the_callers_own_binding() {
    common::init_logs();
    let etcd = Etcd::start();
    let db = etcd.client().await;
    let theirs = binding("p1", "h2", "wf-p1");
    db.bind_port(&theirs).await.unwrap();

    assert_eq!(
        db.unbind_port("p1", "h1", None).await.unwrap(),
        Unbind::NotOurs(theirs.clone()),
        "another host's binding is not ours to remove"
    );
    assert_eq!(
        db.unbind_port("p1", "h2", Some("wf-other")).await.unwrap(),
        Unbind::NotOurs(theirs.clone()),
        "nor is a binding to another vport"
    );
    assert_eq!(
        db.get::<PortBinding>("p1").await.unwrap().map(|v| v.record),
        Some(theirs.clone())
    );
    assert_eq!(
        db.unbind_port("p1", "h2", Some("wf-p1")).await.unwrap(),
        Unbind::Removed(theirs)
    );
    assert_eq!(db.get::<PortBinding>("p1").await.unwrap(), None);
    assert_eq!(
        db.unbind_port("p1", "h2", Some("wf-p1")).await.unwrap(),
        Unbind::Absent,
        "unbinding twice is not an error"
    );
}
