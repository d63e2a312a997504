//! `weft-operator run`, the built binary, against a real kube-apiserver (e2e/controlplane.sh)
//! and a real etcd as NSDB, checked the way a user would notice: what `kubectl get` shows,
//! what NSDB holds (against the offline translation of the same manifests), the refusal of
//! each file of examples/invalid/ and its recovery, updates and deletes through the finalizer,
//! a delete while the operator is down, leader election across a `kill -9`, /metrics,
//! restarts of the API server and of NSDB's etcd, and NetworkPolicies written as chains.
//!
//! Needs the tools e2e/tools.sh builds (it fails, naming the command, when they are missing):
//!     e2e/tools.sh kube-apiserver kubectl etcd
//!     cargo test -p weft-operator --test controlplane
//!
//! The weft.dev kinds are cluster-scoped and every operator watches all of them, so the tests
//! take turns on the one control plane of this binary: each holds [`SERIAL`], starts from no
//! weft.dev objects, and has its own NSDB etcd and its own leader Lease.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nsdb::AnyRecord;
use serde_json::Value;
use support::controlplane::{ControlPlane, repo};
use support::operator::{KINDS, Operator, not_ready, objects_in};
use support::records::{Db, Snapshot, matches_offline, offline_records};
use weft_operator::controller::FINALIZER;
use weft_operator::{CrKind, ObjectKey};

/// How long the operator may take to make a set of objects Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a change may take to reach NSDB once the operator can see it (after a restart the
/// watches and NSDB calls back off: up to 30 s in kube-runtime's watcher).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a refusal (status and Warning event) may take to appear.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// The leader election of the two-replica test: a lease valid 8 s, renewed 4 s before it
/// expires (so every 4 s).
const LEASE_DURATION: u64 = 8;
const LEASE_GRACE: u64 = 4;

/// `--lease-duration` and `--lease-grace` of [`LEASE_DURATION`] and [`LEASE_GRACE`].
fn lease_flags() -> Vec<String> {
    vec![
        "--lease-duration".into(),
        LEASE_DURATION.to_string(),
        "--lease-grace".into(),
        LEASE_GRACE.to_string(),
    ]
}

/// The kinds, as `/metrics` labels them.
const KIND_NAMES: [&str; 4] = [
    "VirtualBridge",
    "VirtualRouter",
    "VirtualLoadBalancer",
    "AccessControlList",
];

/// One test at a time on the shared control plane.
static SERIAL: Mutex<()> = Mutex::new(());
/// The CRDs and the Lease namespace, once per control plane.
static PREPARED: OnceLock<()> = OnceLock::new();

fn examples() -> PathBuf {
    repo().join("examples")
}

fn prepare(cp: &ControlPlane) {
    cp.prepare_weft();
}

/// Removes every weft.dev object, finalizers and all (no operator runs between tests).
fn remove_all_objects(cp: &ControlPlane) {
    let names = cp.kubectl(&["get", KINDS, "-o", "name"]);
    if names.trim().is_empty() {
        return;
    }
    for name in names.lines().filter(|l| !l.is_empty()) {
        // It may be gone already.
        let _ = cp.kubectl_output(&[
            "patch",
            name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
    cp.kubectl(&["delete", KINDS, "--all", "--wait=true", "--timeout=60s"]);
}

/// Removes every NetworkPolicy: the operator of the next test would translate them.
fn remove_all_network_policies(cp: &ControlPlane) {
    cp.kubectl(&[
        "delete",
        "networkpolicies",
        "--all",
        "--all-namespaces",
        "--wait=true",
        "--timeout=60s",
    ]);
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `probe` until it succeeds, for at most `timeout`, while every operator runs; panics
/// with the last reason and the end of each operator's log.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    ops: &mut [&mut Operator],
    mut probe: impl FnMut(&mut [&mut Operator]) -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        for op in ops.iter_mut() {
            op.assert_running();
        }
        match probe(ops) {
            Ok(v) => return v,
            Err(why) if Instant::now() >= deadline => {
                let logs: Vec<String> = ops
                    .iter()
                    .map(|o| {
                        format!(
                            "weft-operator (pid {}):\n{}",
                            o.pid(),
                            tail(&o.stderr(), 60)
                        )
                    })
                    .collect();
                panic!("{what}: not within {timeout:?}: {why}\n{}", logs.join("\n"));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The `Ready` condition of an object, if it has one.
fn ready(obj: &Value) -> Option<&Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// One test's world: the shared control plane with no weft.dev objects, a fresh NSDB, a
/// directory for manifests and logs, and a Lease of its own.
struct Scenario {
    cp: Arc<ControlPlane>,
    db: Db,
    dir: tempfile::TempDir,
    lease: String,
    // Dropped last: the next test starts once this one's processes are gone.
    _serial: MutexGuard<'static, ()>,
}

impl Scenario {
    fn new(name: &str) -> Scenario {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let cp = ControlPlane::shared();
        PREPARED.get_or_init(|| prepare(&cp));
        remove_all_objects(&cp);
        remove_all_network_policies(&cp);
        Scenario {
            cp,
            db: Db::start(),
            dir: tempfile::Builder::new()
                .prefix(&format!("weft-cp-{name}-"))
                .tempdir()
                .unwrap(),
            lease: format!("weft-{name}"),
            _serial: serial,
        }
    }

    /// Starts `weft-operator run` with this test's Lease, as `identity`.
    fn operator(&self, identity: &str, extra: &[&str]) -> Operator {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let mut args = vec!["--lease-name", &self.lease, "--identity", identity];
        args.extend_from_slice(extra);
        Operator::start(
            self.cp.kubeconfig(),
            &self.db.endpoint(),
            &args,
            &self.dir.path().join(format!("{identity}.{n}.stderr")),
        )
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.cp.kubectl(args)
    }

    fn apply(&self, path: &Path) -> String {
        self.kubectl(&["apply", "-f", path.to_str().unwrap()])
    }

    /// `kubectl get ... -o json`.
    fn get(&self, args: &[&str]) -> Value {
        let mut all = vec!["get", "-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    /// One object, or `None` when it does not exist.
    fn object(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", kind, name, "--ignore-not-found", "-o", "json"]);
        (!out.trim().is_empty()).then(|| serde_json::from_str(&out).unwrap())
    }

    /// A directory holding a copy of examples/*.yaml with each `(file, from, to)` edit made
    /// (`from` occurs exactly once in `file`).
    fn manifests(&self, name: &str, edits: &[(&str, &str, &str)]) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(examples()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
        for (file, from, to) in edits {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                text.matches(from).count(),
                1,
                "{file}: the edit {from:?} must occur exactly once"
            );
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        }
        dir
    }

    /// Waits until the objects the manifests in `dirs` define, and no others, exist and are
    /// Ready=True for their generation.
    fn wait_ready(&self, dirs: &[&Path], ops: &mut [&mut Operator]) -> Value {
        let want: usize = dirs.iter().map(|d| objects_in(d)).sum();
        assert!(want > 0, "{dirs:?} define no objects");
        wait_for(&format!("{want} objects Ready"), READY_TIMEOUT, ops, |_| {
            let list = self.get(&[KINDS]);
            let have = list["items"].as_array().map_or(0, Vec::len);
            let waiting = not_ready(&list);
            if have == want && waiting.is_empty() {
                Ok(list)
            } else {
                Err(format!(
                    "{have} of {want} objects exist and these are not Ready: {waiting:#?}"
                ))
            }
        })
    }

    /// Waits until NSDB holds exactly what the offline translation makes of `paths`.
    fn wait_nsdb(&self, paths: &[PathBuf], ops: &mut [&mut Operator]) -> Snapshot {
        let expected = offline_records(paths);
        wait_for(
            &format!("NSDB holding the offline translation of {paths:?}"),
            CONVERGE_TIMEOUT,
            ops,
            |_| {
                let snap = self.db.try_snapshot()?;
                matches_offline(&snap, &expected)?;
                Ok(snap)
            },
        )
    }
}

/// What differs between two snapshots, key by key, ignoring the revision.
fn differences(before: &Snapshot, after: &Snapshot) -> BTreeSet<String> {
    let keys: BTreeSet<&String> = before.records.keys().chain(after.records.keys()).collect();
    keys.into_iter()
        .filter(|k| before.records.get(*k).map(|(r, _)| r) != after.records.get(*k).map(|(r, _)| r))
        .cloned()
        .collect()
}

/// Asserts that between two snapshots every key was written at most once, and exactly the
/// keys whose content differs were written: nothing lost, nothing written twice, nothing
/// rewritten unchanged.
fn assert_each_change_written_once(db: &Db, before: &Snapshot, after: &Snapshot) {
    let writes = db.writes_between(before.revision, after.revision);
    for (key, w) in &writes {
        assert_eq!(
            w.len(),
            1,
            "{key} was written {} times; every write from revision {} to {}:\n{writes:#?}",
            w.len(),
            before.revision + 1,
            after.revision
        );
    }
    let written: BTreeSet<String> = writes.keys().cloned().collect();
    let changed = differences(before, after);
    assert_eq!(
        written, changed,
        "the keys written (left) are not the keys whose content changed (right)"
    );
    for (key, (r, v)) in &before.records {
        if !changed.contains(key) {
            assert_eq!(
                after.records.get(key),
                Some(&(r.clone(), *v)),
                "{key} must be untouched (same record, same version)"
            );
        }
    }
}

// --- 1. What `kubectl get vbr,vrt,vlb,acl` shows -------------------------------------------

/// A printer column a CRD declares.
#[derive(Debug)]
struct Column {
    name: String,
    json_path: String,
    priority: u64,
}

/// The printer columns of each kind, by the lower-case resource prefix kubectl prints
/// (`virtualbridge.weft.dev`), from crds/.
fn crd_columns() -> BTreeMap<String, Vec<Column>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("crds")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for crd in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .unwrap()
                .to_lowercase();
            let group = crd["spec"]["group"].as_str().unwrap();
            let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
                .as_array()
                .unwrap_or_else(|| panic!("{path:?} declares no printer columns"))
                .iter()
                .map(|c| Column {
                    name: c["name"].as_str().unwrap().to_uppercase(),
                    json_path: c["jsonPath"].as_str().unwrap().to_owned(),
                    priority: c["priority"].as_u64().unwrap_or(0),
                })
                .collect();
            out.insert(format!("{kind}.{group}"), columns);
        }
    }
    assert_eq!(out.len(), 4, "crds/ holds the four kinds: {:?}", out.keys());
    out
}

/// The value of a plain `.a.b.c` path in an object (`None` for any other path).
fn plain_path<'a>(obj: &'a Value, path: &str) -> Option<Option<&'a Value>> {
    if path.contains(['[', '?', '*']) {
        return None;
    }
    let mut v = obj;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        match v.get(part) {
            Some(next) => v = next,
            None => return Some(None),
        }
    }
    Some(Some(v))
}

/// Splits a table row at the offsets where the header's columns start (kubectl aligns
/// columns; an unset value is an empty cell).
fn cells<'a>(line: &'a str, starts: &[usize]) -> Vec<&'a str> {
    starts
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            let to = starts
                .get(i + 1)
                .copied()
                .unwrap_or(line.len())
                .min(line.len());
            line.get(from.min(to)..to).unwrap_or_default().trim()
        })
        .collect()
}

/// Checks one `kubectl get` table against the CRDs' columns: every kind's header is NAME and
/// the columns it declares (those of priority 0, or all with `wide`), and every row of these
/// Ready objects fills every column; with `wide`, a column showing a spec field may be empty
/// only when the object does not set that field. Returns the number of rows.
fn check_table(table: &str, wide: bool, objects: &Value) -> usize {
    let columns = crd_columns();
    let mut rows = 0;
    for block in table.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let header_line = lines.next().unwrap();
        let mut starts = Vec::new();
        let mut header = Vec::new();
        let mut at = 0;
        for word in header_line.split_whitespace() {
            let start = at + header_line[at..].find(word).unwrap();
            starts.push(start);
            header.push(word);
            at = start + word.len();
        }
        let body: Vec<Vec<&str>> = lines.map(|l| cells(l, &starts)).collect();
        let first = body
            .first()
            .unwrap_or_else(|| panic!("a table without rows:\n{block}"));
        let (resource, _) = first[0].split_once('/').unwrap();
        let declared: Vec<&Column> = columns[resource]
            .iter()
            .filter(|c| wide || c.priority == 0)
            .collect();
        let want: Vec<&str> = std::iter::once("NAME")
            .chain(declared.iter().map(|c| c.name.as_str()))
            .collect();
        assert_eq!(header, want, "the columns of {resource}:\n{block}");
        for row in &body {
            let (res, name) = row[0].split_once('/').unwrap();
            assert_eq!(res, resource, "{block}");
            let obj = objects["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| {
                    o["metadata"]["name"] == name
                        && o["kind"].as_str().unwrap().to_lowercase()
                            == resource.split('.').next().unwrap()
                })
                .unwrap_or_else(|| panic!("{} is not among the objects", row[0]));
            for (col, value) in declared.iter().zip(&row[1..]) {
                let unset_spec_field = col.json_path.starts_with(".spec.")
                    && plain_path(obj, &col.json_path) == Some(None);
                let filled = !value.is_empty() && *value != "<none>";
                assert!(
                    filled || (wide && unset_spec_field),
                    "{} shows nothing in column {} ({}):\n{block}",
                    row[0],
                    col.name,
                    col.json_path
                );
                if col.name == "READY" {
                    assert_eq!(*value, "True", "{} is not Ready:\n{block}", row[0]);
                }
            }
            rows += 1;
        }
    }
    rows
}

// --- The tests -----------------------------------------------------------------------------

/// Items 1, 2, 4, 5 and 8 with one operator: examples/ becomes Ready, `kubectl get` fills
/// every printer column, NSDB holds exactly the offline translation, /metrics counts and
/// times the reconciles; a spec update reaches NSDB and bumps observedGeneration; `kubectl
/// delete` removes exactly the object's records.
#[test]
fn examples_are_ready_listed_programmed_and_measured_then_updated_then_deleted() {
    let s = Scenario::new("examples");
    let mut op = s.operator("cp-examples", &[]);
    let ex = examples();
    s.apply(&ex);
    let objects = s.wait_ready(&[&ex], &mut [&mut op]);
    let n = objects_in(&ex);

    // What the user lists.
    let table = s.kubectl(&["get", "vbr,vrt,vlb,acl"]);
    assert_eq!(check_table(&table, false, &objects), n, "{table}");
    let wide = s.kubectl(&["get", "vbr,vrt,vlb,acl", "-o", "wide"]);
    assert_eq!(check_table(&wide, true, &objects), n, "{wide}");

    // What NSDB holds.
    let programmed = s.wait_nsdb(std::slice::from_ref(&ex), &mut [&mut op]);

    // What /metrics says.
    let m = op.metrics();
    for kind in KIND_NAMES {
        let reconciles = m.value(&format!(
            "weft_operator_reconciles_total{{kind=\"{kind}\"}}"
        ));
        let timed = m.value(&format!(
            "weft_operator_reconcile_duration_seconds_count{{kind=\"{kind}\"}}"
        ));
        let seconds = m.value(&format!(
            "weft_operator_reconcile_duration_seconds_sum{{kind=\"{kind}\"}}"
        ));
        assert!(
            reconciles >= 1.0,
            "no reconcile of {kind} counted:\n{}",
            m.0
        );
        assert!(timed >= 1.0, "no reconcile latency of {kind}:\n{}", m.0);
        assert!(seconds > 0.0, "zero reconcile latency of {kind}:\n{}", m.0);
    }
    let topology = programmed
        .records
        .keys()
        .filter(|k| !k.starts_with("/weft/v1/tunnel_keys/"))
        .count();
    assert!(
        m.value("weft_operator_nsdb_records_written_total") >= topology as f64,
        "{topology} records in NSDB but fewer counted as written:\n{}",
        m.0
    );
    assert_eq!(m.get("weft_operator_leader"), Some(1.0), "{}", m.0);

    // A spec update: web's second member weighs 3, green's pods get MTU 1400.
    let updated = s.manifests(
        "updated",
        &[
            ("loadbalancer.yaml", "weight: 2", "weight: 3"),
            (
                "bridges.yaml",
                "subnetV6: fd00:20::/64\n",
                "subnetV6: fd00:20::/64\n  mtu: 1400\n",
            ),
        ],
    );
    s.apply(&updated);
    let objects = s.wait_ready(&[&updated], &mut [&mut op]);
    for o in objects["items"].as_array().unwrap() {
        let name = format!("{}/{}", o["kind"], o["metadata"]["name"]);
        let changed = matches!(
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            ),
            ("VirtualLoadBalancer", "web") | ("VirtualBridge", "green")
        );
        let want = if changed { 2 } else { 1 };
        assert_eq!(o["metadata"]["generation"], want, "{name}: generation");
        assert_eq!(
            o["status"]["observedGeneration"], want,
            "{name}: observedGeneration"
        );
    }
    let after = s.wait_nsdb(std::slice::from_ref(&updated), &mut [&mut op]);
    let changed = differences(&programmed, &after);
    assert!(
        changed.contains("/weft/v1/load_balancers/vlb:web")
            && changed.contains("/weft/v1/bridges/vbr:green"),
        "the update changed {changed:?}"
    );
    assert_each_change_written_once(&s.db, &programmed, &after);

    // `kubectl delete` of the router: its records and tunnel keys go, nothing else moves.
    let before = after;
    let edge = ObjectKey::new(CrKind::VirtualRouter, "edge");
    let owned = before.owned_by(&edge);
    assert_eq!(
        owned.len(),
        16,
        "edge's 10 records and 6 tunnel keys: {owned:?}"
    );
    let router = s.object("vrt", "edge").unwrap();
    assert!(
        router["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER)),
        "edge does not carry the finalizer {FINALIZER}: {}",
        router["metadata"]
    );
    s.kubectl(&["delete", "vrt", "edge", "--wait=true", "--timeout=60s"]);
    assert!(
        s.object("vrt", "edge").is_none(),
        "edge survived its delete"
    );
    let after = wait_for(
        "edge's records removed",
        CONVERGE_TIMEOUT,
        &mut [&mut op],
        |_| {
            let snap = s.db.try_snapshot()?;
            let left: Vec<&String> = owned
                .iter()
                .filter(|k| snap.records.contains_key(*k))
                .collect();
            if left.is_empty() {
                Ok(snap)
            } else {
                Err(format!("still in NSDB: {left:?}"))
            }
        },
    );
    assert_eq!(differences(&before, &after), owned);
    assert_each_change_written_once(&s.db, &before, &after);

    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
}

/// A file of examples/invalid/: its headers and the objects it defines.
struct InvalidFile {
    path: PathBuf,
    text: String,
    /// `Kind name` of the refused object.
    kind: String,
    name: String,
    field: String,
    refused_by: String,
    /// (kind, name) of every object in it.
    objects: Vec<(String, String)>,
}

fn invalid_files() -> Vec<InvalidFile> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples().join("invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let header = |tag: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("# {tag}: ")))
                    .unwrap_or_else(|| panic!("{path:?}: no `# {tag}:` header"))
                    .trim()
                    .to_owned()
            };
            let object = header("Object");
            let (kind, name) = object.split_once(' ').unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
            let objects = docs
                .iter()
                .filter(|d| !d.is_null())
                .map(|d| {
                    (
                        d["kind"].as_str().unwrap().to_owned(),
                        d["metadata"]["name"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            InvalidFile {
                kind: kind.to_owned(),
                name: name.to_owned(),
                field: header("Field"),
                refused_by: header("Refused by"),
                objects,
                path,
                text,
            }
        })
        .collect()
}

/// For each file of examples/invalid/, the corrected version a user would apply: each
/// `(from, to)` replaced (`from` occurs exactly once).
const FIXES: &[(&str, &[(&str, &str)])] = &[
    (
        "bad-cidr.yaml",
        &[("subnet: 10.30.0.0/33", "subnet: 10.30.0.0/24")],
    ),
    ("bad-ip.yaml", &[("ip: 10.10.0.256", "ip: 10.10.0.250")]),
    (
        "duplicate-router-ip.yaml",
        &[("ip: 10.10.0.1\n", "ip: 10.10.0.249\n")],
    ),
    ("duplicate-vip.yaml", &[("port: 80\n", "port: 81\n")]),
    (
        "empty-interfaces.yaml",
        &[(
            "interfaces: []",
            "interfaces:\n    - bridge: blue\n      ip: 10.10.0.248",
        )],
    ),
    (
        "empty-vips.yaml",
        &[(
            "vips: []",
            "vips:\n    - ip: 10.96.0.40\n      protocol: TCP\n      port: 80\n      members:\n        - ip: 10.10.0.14\n          port: 8080",
        )],
    ),
    (
        "gateway-outside-subnet.yaml",
        &[("gateway: 10.31.0.1", "gateway: 10.30.0.1")],
    ),
    (
        "interface-outside-subnet.yaml",
        &[("ip: 10.20.0.254", "ip: 10.10.0.247")],
    ),
    (
        "jump-loop.yaml",
        &[
            (
                "    - action: Jump\n      jumpTo: loop-b\n",
                "    - action: Accept\n",
            ),
            (
                "    - action: Jump\n      jumpTo: loop-a\n",
                "    - action: Drop\n",
            ),
        ],
    ),
    (
        "jump-without-target.yaml",
        &[(
            "    - action: Jump\n",
            "    - action: Jump\n      jumpTo: blue-ingress\n",
        )],
    ),
    (
        "missing-reference.yaml",
        &[(
            "bridge: purple\n      ip: 10.50.0.1",
            "bridge: green\n      ip: 10.20.0.253",
        )],
    ),
    ("mtu-out-of-range.yaml", &[("mtu: 9600", "mtu: 9000")]),
    (
        "overlapping-subnets.yaml",
        &[("    - bridge: orange\n      ip: 10.10.128.1\n", "")],
    ),
    ("port-out-of-range.yaml", &[("port: 70000", "port: 7000")]),
    (
        "unknown-action.yaml",
        &[("action: Allow", "action: Accept")],
    ),
    (
        "unsupported-uplink-host-interface.yaml",
        &[("    hostInterface: eth1\n", "")],
    ),
];

/// Whether a refusal's message names `field` (it lists `field: why` entries joined by `; `).
fn names_field(message: &str, field: &str) -> bool {
    message.starts_with(&format!("{field}:")) || message.contains(&format!("; {field}:"))
}

/// Item 3: each file of examples/invalid/, applied next to examples/, fails at `kubectl
/// apply` naming the field, or is admitted and refused (Ready=False, reason InvalidSpec or
/// Unsupported, the field in the message, a Warning event, nothing in NSDB); the corrected
/// file recovers it to Ready=True, and NSDB then holds the offline translation of examples/
/// and every corrected file.
#[test]
fn invalid_examples_are_refused_naming_the_field_and_recover_when_fixed() {
    let s = Scenario::new("invalid");
    let mut op = s.operator("cp-invalid", &[]);
    let ex = examples();
    s.apply(&ex);
    s.wait_ready(&[&ex], &mut [&mut op]);

    let files = invalid_files();
    let fixed_names: BTreeSet<&str> = FIXES.iter().map(|(f, _)| *f).collect();
    let file_names: BTreeSet<String> = files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        file_names
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        fixed_names,
        "FIXES must give a corrected version of each file of examples/invalid/"
    );
    let fixed_dir = s.dir.path().join("fixed");
    std::fs::create_dir(&fixed_dir).unwrap();

    for f in &files {
        let file = f.path.file_name().unwrap().to_str().unwrap();
        let out =
            s.cp.kubectl_output(&["apply", "-f", f.path.to_str().unwrap()])
                .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match f.refused_by.as_str() {
            "schema" | "cel+semantic" => {
                assert!(!out.status.success(), "{file}: kubectl apply admitted it");
                // A CEL rule on a list item is reported at the item (`spec.rules[0]: Invalid
                // value: jumpTo is required ...`): the item's path and the field's name.
                let (item, leaf) = f.field.rsplit_once('.').unwrap();
                let named = stderr.contains(&f.field)
                    || (f.refused_by == "cel+semantic"
                        && stderr.contains(&format!("{item}: "))
                        && stderr.contains(leaf));
                assert!(
                    named,
                    "{file}: kubectl apply's error does not name {}:\n{stderr}",
                    f.field
                );
                assert!(
                    s.object(&f.kind, &f.name).is_none(),
                    "{file}: {} {} exists after a failed apply",
                    f.kind,
                    f.name
                );
                eprintln!("{file}: kubectl apply refused it: {}", stderr.trim());
            }
            by @ ("semantic" | "unsupported") => {
                assert!(
                    out.status.success(),
                    "{file}: kubectl apply failed:\n{stderr}"
                );
                let reason = if by == "semantic" {
                    "InvalidSpec"
                } else {
                    "Unsupported"
                };
                let obj = wait_for(
                    &format!("{file}: {} {} refused", f.kind, f.name),
                    REFUSAL_TIMEOUT,
                    &mut [&mut op],
                    |_| {
                        let obj = s
                            .object(&f.kind, &f.name)
                            .ok_or_else(|| "it does not exist".to_string())?;
                        let cond = ready(&obj).ok_or("no Ready condition")?;
                        let current =
                            obj["status"]["observedGeneration"] == obj["metadata"]["generation"];
                        let message = cond["message"].as_str().unwrap_or_default();
                        if cond["status"] == "False"
                            && cond["reason"] == reason
                            && current
                            && names_field(message, &f.field)
                        {
                            Ok(obj)
                        } else {
                            Err(format!("its Ready condition: {cond}"))
                        }
                    },
                );
                // The Warning event, as `kubectl get events` shows it.
                let uid = obj["metadata"]["uid"].as_str().unwrap().to_owned();
                wait_for(
                    &format!("{file}: a Warning event for {} {}", f.kind, f.name),
                    REFUSAL_TIMEOUT,
                    &mut [&mut op],
                    |_| {
                        let events = s.get(&["events.events.k8s.io", "-A"]);
                        let mine: Vec<&Value> = events["items"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|e| e["regarding"]["uid"] == uid.as_str())
                            .collect();
                        mine.iter()
                            .find(|e| {
                                e["type"] == "Warning"
                                    && e["reason"] == reason
                                    && e["note"].as_str().is_some_and(|n| names_field(n, &f.field))
                            })
                            .map(|_| ())
                            .ok_or_else(|| format!("its events: {mine:#?}"))
                    },
                );
                let key = ObjectKey::new(CrKind::from_kind_name(&f.kind).unwrap(), &f.name);
                let owned = s.db.snapshot().owned_by(&key);
                assert!(owned.is_empty(), "{file}: refused but in NSDB: {owned:?}");
                eprintln!(
                    "{file}: Ready=False {reason} {:?}, with a Warning event",
                    ready(&obj).unwrap()["message"]
                );
            }
            other => panic!("{file}: unknown `Refused by: {other}`"),
        }

        // The corrected file recovers every object in it.
        let edits = FIXES.iter().find(|(n, _)| *n == file).unwrap().1;
        let mut text = f.text.clone();
        for (from, to) in edits {
            assert_eq!(
                text.matches(from).count(),
                1,
                "{file}: the fix {from:?} must occur exactly once"
            );
            text = text.replacen(from, to, 1);
        }
        let fixed = fixed_dir.join(file);
        std::fs::write(&fixed, &text).unwrap();
        s.apply(&fixed);
        wait_for(
            &format!("{file}: the corrected objects Ready"),
            READY_TIMEOUT,
            &mut [&mut op],
            |_| {
                let mut waiting = Vec::new();
                for (kind, name) in &f.objects {
                    let obj = s
                        .object(kind, name)
                        .ok_or(format!("{kind} {name} is missing"))?;
                    let current =
                        obj["status"]["observedGeneration"] == obj["metadata"]["generation"];
                    let cond = ready(&obj);
                    if !(current && cond.is_some_and(|c| c["status"] == "True")) {
                        waiting.push(format!("{kind} {name}: {cond:?}"));
                    }
                }
                if waiting.is_empty() {
                    Ok(())
                } else {
                    Err(waiting.join("; "))
                }
            },
        );
    }

    // Every object is Ready, and NSDB holds what the offline translation makes of them all.
    s.wait_ready(&[&ex, &fixed_dir], &mut [&mut op]);
    s.wait_nsdb(&[ex, fixed_dir], &mut [&mut op]);
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
}

/// Item 6: an object deleted while the operator is down (killed) waits for its finalizer
/// with its records in place; once an operator is back, the delete completes and exactly
/// its records are gone.
#[test]
fn a_delete_while_the_operator_is_down_completes_once_it_is_back() {
    let s = Scenario::new("down");
    let lease = lease_flags();
    let lease: Vec<&str> = lease.iter().map(String::as_str).collect();
    let mut op = s.operator("replica-1", &lease);
    let ex = examples();
    s.apply(&ex);
    s.wait_ready(&[&ex], &mut [&mut op]);
    let before = s.wait_nsdb(std::slice::from_ref(&ex), &mut [&mut op]);

    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
    s.kubectl(&["delete", "vlb", "web", "--wait=false"]);
    // Without an operator the object stays, marked for deletion, held by the finalizer.
    std::thread::sleep(Duration::from_secs(2));
    let web = s
        .object("vlb", "web")
        .expect("web is held by its finalizer");
    assert!(
        web["metadata"]["deletionTimestamp"].is_string(),
        "web is not being deleted: {web:#}"
    );
    assert!(
        web["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER)),
        "web lacks the finalizer {FINALIZER}: {web:#}"
    );
    assert_eq!(s.db.snapshot(), before, "NSDB changed with no operator");

    // Another replica (a new pod): it takes the lease and completes the delete.
    let mut op = s.operator("replica-2", &lease);
    wait_for("web deleted", READY_TIMEOUT, &mut [&mut op], |_| {
        match s.object("vlb", "web") {
            None => Ok(()),
            Some(o) => Err(format!("still there: {}", o["metadata"])),
        }
    });
    let web = ObjectKey::new(CrKind::VirtualLoadBalancer, "web");
    let owned = before.owned_by(&web);
    assert_eq!(owned.len(), 1, "{owned:?}");
    let after = s.db.snapshot();
    assert_eq!(differences(&before, &after), owned);
    assert_each_change_written_once(&s.db, &before, &after);
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
}

/// The `healthy` field of each member of web's first VIP, by `ip:port` (absent: no verdict).
fn web_member_health(s: &Scenario) -> BTreeMap<String, Option<bool>> {
    let web = s.object("vlb", "web").expect("web exists");
    web["status"]["vips"][0]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                format!("{}:{}", m["ip"].as_str().unwrap_or("?"), m["port"]),
                m["healthy"].as_bool(),
            )
        })
        .collect()
}

/// The events of web, as (type, reason, note).
fn web_events(s: &Scenario, uid: &str) -> Vec<(String, String, String)> {
    let events = s.get(&["events.events.k8s.io", "-A"]);
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["uid"] == uid)
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (f("type"), f("reason"), f("note"))
        })
        .collect()
}

/// A load balancer with a health check shows the agents' verdicts on its members in its
/// status as they are written, changed and expire in NSDB, with an event when a member is
/// found down and when it is found up again. The operator resyncs a programmed object only
/// every 5 minutes: what moves the status within the wait is its watch of the verdicts.
#[test]
fn member_verdicts_in_nsdb_show_in_the_status_as_they_change_with_events() {
    let s = Scenario::new("health");
    let mut op = s.operator("replica-1", &[]);
    let ex = s.manifests(
        "health",
        &[(
            "loadbalancer.yaml",
            "  sessionAffinity: ClientIP\n",
            "  sessionAffinity: ClientIP\n  healthCheck:\n    type: TCP\n    intervalSeconds: 2\n",
        )],
    );
    s.apply(&ex);
    s.wait_ready(&[&ex], &mut [&mut op]);
    let uid = s.object("vlb", "web").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (one, two) = ("10.10.0.11:8080", "10.20.0.11:8080");
    let no_verdicts: BTreeMap<String, Option<bool>> =
        [(one.to_owned(), None), (two.to_owned(), None)].into();
    assert_eq!(web_member_health(&s), no_verdicts, "before any verdict");

    let verdict = |member: &str, healthy: bool| nsdb::MemberHealth {
        lb: "vlb:web".into(),
        member: member.parse().unwrap(),
        healthy,
        host: "node-1".into(),
    };
    let wait_health = |what: &str, op: &mut Operator, want: &[(&str, Option<bool>)]| {
        let want: BTreeMap<String, Option<bool>> =
            want.iter().map(|(m, h)| ((*m).to_owned(), *h)).collect();
        let start = Instant::now();
        wait_for(what, REFUSAL_TIMEOUT, &mut [op], |_| {
            let have = web_member_health(&s);
            (have == want).then_some(()).ok_or(format!("{have:?}"))
        });
        eprintln!(
            "{what}: in the status {:?} after the write",
            start.elapsed()
        );
    };
    let wait_event = |what: &str, op: &mut Operator, type_: &str, reason: &str, member: &str| {
        wait_for(what, REFUSAL_TIMEOUT, &mut [op], |_| {
            let events = web_events(&s, &uid);
            events
                .iter()
                .any(|(t, r, n)| t == type_ && r == reason && n.contains(member))
                .then_some(())
                .ok_or(format!("{events:#?}"))
        });
    };

    s.db.put(&verdict(one, false));
    s.db.put(&verdict(two, true));
    wait_health(
        "one member down, the other up",
        &mut op,
        &[(one, Some(false)), (two, Some(true))],
    );
    wait_event(
        "a Warning event for the member down",
        &mut op,
        "Warning",
        "MemberUnhealthy",
        one,
    );
    // A member found up at its first verdict is no news.
    let events = web_events(&s, &uid);
    assert!(
        !events.iter().any(|(_, _, n)| n.contains(two)),
        "{events:#?}"
    );

    s.db.put(&verdict(one, true));
    wait_health(
        "the member up again",
        &mut op,
        &[(one, Some(true)), (two, Some(true))],
    );
    wait_event(
        "a Normal event for the member up again",
        &mut op,
        "Normal",
        "MemberHealthy",
        one,
    );

    // A verdict that expires with its agent's lease leaves the member without one.
    s.db.delete::<nsdb::MemberHealth>(&nsdb::keys::member_health_id(
        "vlb:web",
        two.parse().unwrap(),
    ));
    wait_health(
        "the expired verdict gone",
        &mut op,
        &[(one, Some(true)), (two, None)],
    );
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
}

/// The chains NSDB holds for the NetworkPolicy `namespace/name`, by id.
fn policy_chains(db: &Db, namespace: &str, name: &str) -> BTreeMap<String, nsdb::Chain> {
    let prefix = format!("knp:{namespace}:{name}:");
    db.snapshot()
        .records
        .into_values()
        .filter_map(|(r, _)| match r {
            AnyRecord::Chain(c) if c.id.starts_with(&prefix) => Some((c.id.clone(), c)),
            _ => None,
        })
        .collect()
}

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: np-x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: np-x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

/// NetworkPolicies applied with kubectl become allow-list chains attached to the pods they
/// select; an edit rewrites them, a delete removes them, and a delete while the operator
/// is down is swept when it is back. Nothing else in NSDB is touched.
#[test]
fn network_policies_become_chains_and_go_with_their_policy() {
    let s = Scenario::new("netpol");
    let out =
        s.cp.kubectl_output(&["create", "namespace", "np-x"])
            .unwrap();
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = s.dir.path().join("policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    s.apply(&file);
    let lease = lease_flags();
    let lease: Vec<&str> = lease.iter().map(String::as_str).collect();
    let mut op = s.operator("replica-1", &lease);

    let chains = |name: &str| policy_chains(&s.db, "np-x", name);
    let attached = |c: &nsdb::Chain| c.pods.clone().map(|a| (a.direction, a.mode));
    wait_for(
        "deny-all and allow-a written",
        CONVERGE_TIMEOUT,
        &mut [&mut op],
        |_| {
            let deny = chains("deny-all");
            let allow = chains("allow-a");
            let mut dirs: Vec<_> = deny.values().filter_map(attached).collect();
            dirs.sort();
            let want = vec![
                (nsdb::PodDirection::Ingress, nsdb::PodAttachMode::Allow),
                (nsdb::PodDirection::Egress, nsdb::PodAttachMode::Allow),
            ];
            if dirs != want || deny.values().any(|c| !c.rules.is_empty()) {
                return Err(format!("deny-all: {deny:#?}"));
            }
            let ingress: Vec<_> = allow.values().filter(|c| c.pods.is_some()).collect();
            match ingress.as_slice() {
                [c] if c.rules.len() == 1 && c.default_action == nsdb::RuleAction::Drop => Ok(()),
                _ => Err(format!("allow-a: {allow:#?}")),
            }
        },
    );

    // An edit: a second port.
    let edited = POLICIES.replace(
        "ports: [{protocol: TCP, port: 80}]",
        "ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 81}]",
    );
    std::fs::write(&file, edited).unwrap();
    s.apply(&file);
    wait_for(
        "allow-a rewritten",
        CONVERGE_TIMEOUT,
        &mut [&mut op],
        |_| {
            let allow = chains("allow-a");
            let rules: usize = allow.values().map(|c| c.rules.len()).sum();
            if rules == 2 {
                Ok(())
            } else {
                Err(format!("allow-a: {allow:#?}"))
            }
        },
    );

    s.kubectl(&["delete", "networkpolicy", "-n", "np-x", "allow-a"]);
    wait_for("allow-a removed", CONVERGE_TIMEOUT, &mut [&mut op], |_| {
        let allow = chains("allow-a");
        if allow.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {:?}", allow.keys()))
        }
    });
    assert_eq!(chains("deny-all").len(), 2, "deny-all untouched");

    // Deleted while no operator runs: swept by the next one.
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:
{stderr}"
    );
    s.kubectl(&["delete", "networkpolicy", "-n", "np-x", "deny-all"]);
    assert_eq!(
        chains("deny-all").len(),
        2,
        "nothing deletes them with no operator"
    );
    let mut op = s.operator("replica-2", &lease);
    wait_for("deny-all swept", CONVERGE_TIMEOUT, &mut [&mut op], |_| {
        let left = chains("deny-all");
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {:?}", left.keys()))
        }
    });
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:
{stderr}"
    );
    s.kubectl(&["delete", "namespace", "np-x", "--wait=false"]);
}

/// The holder of a Lease in weft-system, and the duration it declares.
fn lease_holder(s: &Scenario) -> (Option<String>, Option<u64>) {
    let lease = s.get(&["lease", "-n", "weft-system", &s.lease]);
    (
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned),
        lease["spec"]["leaseDurationSeconds"].as_u64(),
    )
}

fn reconciles(m: &support::operator::Metrics) -> f64 {
    KIND_NAMES
        .iter()
        .map(|k| m.value(&format!("weft_operator_reconciles_total{{kind=\"{k}\"}}")))
        .sum()
}

/// Item 7: two replicas under leader election. Only the leader reconciles and writes; after
/// `kill -9` of the leader the other takes over within the lease's duration (plus its grace
/// as the margin for the takeover's own API calls); what changed while there was no leader
/// is reconciled; NSDB before and after: every change written exactly once, everything else
/// untouched (same records, same versions).
#[test]
fn a_killed_leader_is_replaced_within_the_lease_and_nothing_is_lost_or_written_twice() {
    let s = Scenario::new("leader");
    let lease = lease_flags();
    let lease: Vec<&str> = lease.iter().map(String::as_str).collect();
    let mut a = s.operator("replica-a", &lease);
    wait_for("replica-a leading", READY_TIMEOUT, &mut [&mut a], |ops| {
        let m = ops[0].metrics();
        (m.get("weft_operator_leader") == Some(1.0))
            .then_some(())
            .ok_or_else(|| format!("weft_operator_leader {:?}", m.get("weft_operator_leader")))
    });
    let mut b = s.operator("replica-b", &lease);
    b.metrics_addr();
    let ex = examples();
    s.apply(&ex);
    s.wait_ready(&[&ex], &mut [&mut a, &mut b]);
    let before = s.wait_nsdb(std::slice::from_ref(&ex), &mut [&mut a, &mut b]);

    // Only the leader works.
    let (holder, duration) = lease_holder(&s);
    assert_eq!(holder.as_deref(), Some("replica-a"));
    assert_eq!(duration, Some(LEASE_DURATION), "the Lease's duration");
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!(ma.get("weft_operator_leader"), Some(1.0), "{}", ma.0);
    assert!(reconciles(&ma) > 0.0, "{}", ma.0);
    assert_eq!(mb.get("weft_operator_leader"), Some(0.0), "{}", mb.0);
    assert_eq!(reconciles(&mb), 0.0, "the follower reconciled:\n{}", mb.0);
    assert_eq!(
        mb.value("weft_operator_nsdb_records_written_total")
            + mb.value("weft_operator_nsdb_records_deleted_total"),
        0.0,
        "the follower wrote to NSDB:\n{}",
        mb.0
    );

    // kill -9 the leader; while nobody leads, change web and add a bridge.
    let a_log = a.stop();
    let killed = Instant::now();
    assert!(!a_log.contains("panicked"), "replica-a panicked:\n{a_log}");
    let leaderless = s.manifests(
        "leaderless",
        &[("loadbalancer.yaml", "weight: 2", "weight: 3")],
    );
    std::fs::write(
        leaderless.join("orange.yaml"),
        "apiVersion: weft.dev/v1alpha1\nkind: VirtualBridge\nmetadata:\n  name: orange\n\
         spec:\n  subnet: 10.60.0.0/24\n  gateway: 10.60.0.1\n",
    )
    .unwrap();
    s.apply(&leaderless);
    let mb = b.metrics();
    assert_eq!(
        mb.get("weft_operator_leader"),
        Some(0.0),
        "replica-b led {:?} after the kill, before the changes were applied: the lease must \
         outlive a kubectl apply",
        killed.elapsed()
    );

    // The follower takes over within the lease.
    let bound = Duration::from_secs(LEASE_DURATION + LEASE_GRACE);
    wait_for(
        "replica-b taking over",
        bound.saturating_sub(killed.elapsed()),
        &mut [&mut b],
        |ops| {
            let m = ops[0].metrics();
            let (holder, _) = lease_holder(&s);
            if m.get("weft_operator_leader") == Some(1.0) && holder.as_deref() == Some("replica-b")
            {
                Ok(())
            } else {
                Err(format!(
                    "Lease held by {holder:?}, weft_operator_leader {:?}",
                    m.get("weft_operator_leader")
                ))
            }
        },
    );
    let took = killed.elapsed();
    eprintln!("replica-b took over {took:?} after the kill (bound {bound:?})");

    // What changed meanwhile is reconciled; nothing else is written, nothing twice.
    s.wait_ready(&[&leaderless], &mut [&mut b]);
    let after = s.wait_nsdb(std::slice::from_ref(&leaderless), &mut [&mut b]);
    assert_each_change_written_once(&s.db, &before, &after);
    let changed = differences(&before, &after);
    assert!(
        changed.contains("/weft/v1/load_balancers/vlb:web")
            && changed.contains("/weft/v1/bridges/vbr:orange"),
        "{changed:?}"
    );
    let mb = b.metrics();
    let puts = changed
        .iter()
        .filter(|k| !k.starts_with("/weft/v1/tunnel_keys/"))
        .count();
    assert_eq!(
        mb.value("weft_operator_nsdb_records_written_total"),
        puts as f64,
        "the new leader counts the records it wrote:\n{}",
        mb.0
    );
    let b_log = b.stop();
    assert!(!b_log.contains("panicked"), "replica-b panicked:\n{b_log}");
}

/// Item 9: the operator survives its watches being cut (kube-apiserver restarted) and NSDB's
/// etcd being killed and restarted, and converges: a change made after each restart, and one
/// made while NSDB is down, reaches NSDB; nothing else is rewritten.
#[test]
fn the_operator_survives_apiserver_and_nsdb_restarts_and_converges() {
    let mut s = Scenario::new("restarts");
    let mut op = s.operator("cp-restarts", &[]);
    let pid = op.pid();
    let ex = examples();
    s.apply(&ex);
    s.wait_ready(&[&ex], &mut [&mut op]);
    let mut before = s.wait_nsdb(std::slice::from_ref(&ex), &mut [&mut op]);

    // The API server restarts: every watch and the lease's renewal are cut.
    s.cp.restart_apiserver();
    let v1 = s.manifests(
        "after-apiserver",
        &[("loadbalancer.yaml", "weight: 2", "weight: 3")],
    );
    s.apply(&v1);
    let after = s.wait_nsdb(std::slice::from_ref(&v1), &mut [&mut op]);
    s.wait_ready(&[&v1], &mut [&mut op]);
    assert_eq!(
        differences(&before, &after),
        BTreeSet::from(["/weft/v1/load_balancers/vlb:web".to_owned()])
    );
    assert_each_change_written_once(&s.db, &before, &after);
    before = after;

    // NSDB's etcd is killed and restarted on the same data.
    s.db.restart();
    let v2 = s.manifests(
        "after-etcd",
        &[("loadbalancer.yaml", "weight: 2", "weight: 4")],
    );
    s.apply(&v2);
    let after = s.wait_nsdb(std::slice::from_ref(&v2), &mut [&mut op]);
    s.wait_ready(&[&v2], &mut [&mut op]);
    assert_each_change_written_once(&s.db, &before, &after);
    before = after;

    // A change while NSDB is down: the object says so, and the change lands once it is back.
    s.db.kill();
    let v3 = s.manifests(
        "etcd-down",
        &[("loadbalancer.yaml", "weight: 2", "weight: 5")],
    );
    s.apply(&v3);
    wait_for(
        "web reporting NSDB down",
        CONVERGE_TIMEOUT,
        &mut [&mut op],
        |_| {
            let web = s.object("vlb", "web").ok_or("web is missing")?;
            let cond = ready(&web).ok_or("no Ready condition")?.clone();
            if cond["status"] == "False" && cond["reason"] == "NsdbError" {
                Ok(())
            } else {
                Err(format!("its Ready condition: {cond}"))
            }
        },
    );
    s.db.restart();
    let after = s.wait_nsdb(std::slice::from_ref(&v3), &mut [&mut op]);
    s.wait_ready(&[&v3], &mut [&mut op]);
    assert_each_change_written_once(&s.db, &before, &after);

    assert_eq!(op.pid(), pid);
    op.assert_running();
    let stderr = op.stop();
    assert!(
        !stderr.contains("panicked"),
        "weft-operator panicked:\n{stderr}"
    );
}
