//! The committed CRDs against the examples: every object in examples/ passes the generated
//! schema, its CEL rules and the semantic check, and sets no unsupported field; every file in
//! examples/invalid/ is refused by the check its header names, at the field its header names,
//! and every unsupported field has such a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use api::unsupported::unsupported;
use api::validate::{Kind, Objects, Report, validate};
use api::{AccessControlList, VirtualBridge, VirtualLoadBalancer, VirtualRouter};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The schemas of the committed crds/*.yaml (what users install), by kind.
struct Schemas {
    /// The structural validators, built from the committed manifests.
    structural: api::schema::Schemas,
    /// Each kind's openAPIV3Schema as committed, for its CEL rules.
    by_kind: BTreeMap<String, Value>,
}

impl Schemas {
    fn load() -> Result<Self> {
        let dir = root().join("crds");
        let mut by_kind = BTreeMap::new();
        let mut crds = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with(".weft.dev.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let crd: Value = serde_saphyr::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .ok_or_else(|| anyhow!("{}: no spec.names.kind", path.display()))?
                .to_string();
            let openapi = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
            ensure!(
                openapi.is_object(),
                "{}: no openAPIV3Schema",
                path.display()
            );
            crds.push(serde_json::from_value(crd)?);
            by_kind.insert(kind, openapi);
        }
        for kind in [
            "VirtualBridge",
            "VirtualRouter",
            "VirtualLoadBalancer",
            "AccessControlList",
        ] {
            ensure!(by_kind.contains_key(kind), "crds/ has no CRD for {kind}");
        }
        Ok(Schemas {
            structural: api::schema::Schemas::from_crds(&crds)?,
            by_kind,
        })
    }

    /// The structural (OpenAPI) faults of one object, as (`spec.vips[0].port`, why).
    fn structural(&self, doc: &Value) -> Result<Vec<(String, String)>> {
        Ok(self
            .structural
            .check(doc)?
            .into_iter()
            .map(|i| (i.field, i.reason))
            .collect())
    }

    /// The faults found by the CRD's CEL rules.
    fn cel(&self, doc: &Value) -> Result<Vec<(String, String)>> {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let schema = self
            .by_kind
            .get(kind)
            .ok_or_else(|| anyhow!("no CRD for kind {kind:?}"))?;
        match kube_cel::validate(schema, doc, None) {
            Ok(()) => Ok(Vec::new()),
            Err(errors) => Ok(errors
                .into_vec()
                .into_iter()
                .map(|e| {
                    (
                        e.field_path.clone(),
                        format!("{e} (rule {:?}, {:?})", e.rule, e.kind),
                    )
                })
                .collect()),
        }
    }
}

/// Every object of a set of YAML files, typed, by name.
#[derive(Default, Clone)]
struct Set {
    bridges: BTreeMap<String, VirtualBridge>,
    routers: BTreeMap<String, VirtualRouter>,
    lbs: BTreeMap<String, VirtualLoadBalancer>,
    acls: BTreeMap<String, AccessControlList>,
}

impl Set {
    fn add(&mut self, doc: &Value) -> Result<()> {
        let name = doc["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow!("object without metadata.name"))?
            .to_string();
        let dup = match doc["kind"].as_str().unwrap_or_default() {
            "VirtualBridge" => self
                .bridges
                .insert(name.clone(), serde_json::from_value(doc.clone())?)
                .is_some(),
            "VirtualRouter" => self
                .routers
                .insert(name.clone(), serde_json::from_value(doc.clone())?)
                .is_some(),
            "VirtualLoadBalancer" => self
                .lbs
                .insert(name.clone(), serde_json::from_value(doc.clone())?)
                .is_some(),
            "AccessControlList" => self
                .acls
                .insert(name.clone(), serde_json::from_value(doc.clone())?)
                .is_some(),
            other => bail!("unknown kind {other:?}"),
        };
        ensure!(!dup, "two objects named {name} of one kind");
        Ok(())
    }

    fn objects(&self) -> Objects<'_> {
        Objects {
            bridges: &self.bridges,
            routers: &self.routers,
            load_balancers: &self.lbs,
            acls: &self.acls,
        }
    }

    fn check(&self) -> Report {
        validate(self.objects())
    }

    fn unsupported(&self) -> Report {
        unsupported(self.objects())
    }
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    Ok(files)
}

fn documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Loads examples/, asserting each object passes its schema and CEL rules.
fn load_examples(schemas: &Schemas) -> Result<(Set, Vec<Value>)> {
    let mut set = Set::default();
    let mut all = Vec::new();
    for file in yaml_files(&root().join("examples"))? {
        for doc in documents(&file)? {
            let what = format!("{} {}", file.display(), doc["metadata"]["name"]);
            let structural = schemas.structural(&doc)?;
            ensure!(
                structural.is_empty(),
                "{what}: refused by the schema: {structural:?}"
            );
            let cel = schemas.cel(&doc)?;
            ensure!(cel.is_empty(), "{what}: refused by a CEL rule: {cel:?}");
            set.add(&doc).with_context(|| what.clone())?;
            all.push(doc);
        }
    }
    Ok((set, all))
}

#[test]
fn every_example_passes_schema_cel_and_semantic_checks() -> Result<()> {
    let schemas = Schemas::load()?;
    let (set, docs) = load_examples(&schemas)?;
    // The example is the small topology the README promises.
    assert_eq!(set.bridges.len(), 2, "two bridges");
    assert_eq!(set.routers.len(), 1, "one router");
    assert_eq!(set.lbs.len(), 1, "one load balancer");
    assert_eq!(set.acls.len(), 1, "one ACL");
    let report = set.check();
    assert!(
        report.is_empty(),
        "examples/ refused by the semantic check:\n{report}"
    );
    let unsupported = set.unsupported();
    assert!(
        unsupported.is_empty(),
        "examples/ set fields that are not supported yet:\n{unsupported}"
    );
    // The typed objects serialize back to what the files say (no field silently dropped).
    for doc in docs {
        let back = match doc["kind"].as_str().unwrap_or_default() {
            "VirtualBridge" => {
                serde_json::to_value(serde_json::from_value::<VirtualBridge>(doc.clone())?)?
            }
            "VirtualRouter" => {
                serde_json::to_value(serde_json::from_value::<VirtualRouter>(doc.clone())?)?
            }
            "VirtualLoadBalancer" => {
                serde_json::to_value(serde_json::from_value::<VirtualLoadBalancer>(doc.clone())?)?
            }
            _ => serde_json::to_value(serde_json::from_value::<AccessControlList>(doc.clone())?)?,
        };
        assert_eq!(
            back["spec"], doc["spec"],
            "{} round trip",
            doc["metadata"]["name"]
        );
    }
    Ok(())
}

/// The header of an invalid example.
#[derive(Debug)]
struct Expectation {
    refused_by: String,
    kind: String,
    name: String,
    field: String,
}

fn header(path: &Path) -> Result<Expectation> {
    let text = std::fs::read_to_string(path)?;
    let get = |key: &str| -> Result<String> {
        text.lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.strip_prefix(&format!("# {key}:")))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow!("{}: header has no `# {key}:` line", path.display()))
    };
    let object = get("Object")?;
    let (kind, name) = object
        .split_once(' ')
        .ok_or_else(|| anyhow!("{}: `# Object:` is `<Kind> <name>`", path.display()))?;
    get("Why")?;
    Ok(Expectation {
        refused_by: get("Refused by")?,
        kind: kind.to_string(),
        name: name.to_string(),
        field: get("Field")?,
    })
}

fn kind_of(s: &str) -> Result<Kind> {
    Ok(match s {
        "VirtualBridge" => Kind::VirtualBridge,
        "VirtualRouter" => Kind::VirtualRouter,
        "VirtualLoadBalancer" => Kind::VirtualLoadBalancer,
        "AccessControlList" => Kind::AccessControlList,
        other => bail!("unknown kind {other:?}"),
    })
}

/// Checks one invalid file; returns a description of how it was refused.
fn check_invalid(schemas: &Schemas, examples: &Set, path: &Path) -> Result<String> {
    let exp = header(path)?;
    let docs = documents(path)?;
    ensure!(!docs.is_empty(), "no objects");
    let target = docs
        .iter()
        .find(|d| d["kind"] == exp.kind.as_str() && d["metadata"]["name"] == exp.name.as_str())
        .ok_or_else(|| anyhow!("no {} {} in the file", exp.kind, exp.name))?;
    let structural = schemas.structural(target)?;
    let cel = schemas.cel(target)?;
    let layers: Vec<&str> = exp.refused_by.split('+').collect();
    if layers.contains(&"schema") {
        ensure!(
            structural.iter().any(|(f, _)| *f == exp.field),
            "expected the schema to refuse {}, it said {structural:?}",
            exp.field
        );
        // The fault is the only one: everything else in the object is well-formed.
        ensure!(
            structural.iter().all(|(f, _)| *f == exp.field),
            "the schema refused more than {}: {structural:?}",
            exp.field
        );
        ensure!(cel.is_empty(), "unexpected CEL refusal {cel:?}");
        return Ok(format!("schema: {}", structural[0].1));
    }
    ensure!(
        structural.is_empty(),
        "expected the schema to accept it (the fault is {}), it said {structural:?}",
        exp.refused_by
    );
    // Companion objects in the file are well-formed too.
    for doc in &docs {
        ensure!(
            schemas.structural(doc)?.is_empty(),
            "companion {} refused by the schema",
            doc["metadata"]["name"]
        );
    }
    let mut set = examples.clone();
    for doc in &docs {
        set.add(doc)?;
    }
    if layers == ["unsupported"] {
        ensure!(cel.is_empty(), "unexpected CEL refusal {cel:?}");
        // The object is valid otherwise: only the unsupported field refuses it.
        let report = set.check();
        ensure!(
            report.is_empty(),
            "expected only unsupported fields, the semantic check said:\n{report}"
        );
        let found = set.unsupported();
        let hit = found
            .of(kind_of(&exp.kind)?, &exp.name)
            .iter()
            .find(|f| f.field == exp.field)
            .ok_or_else(|| anyhow!("expected {} to be unsupported, found:\n{found}", exp.field))?;
        return Ok(format!("unsupported: {hit}"));
    }
    let mut out = Vec::new();
    if layers.contains(&"cel") {
        // kube-cel reports the path of the object holding the rule, e.g. spec.rules[0].
        let holder = exp.field.rsplit_once('.').map_or("", |(h, _)| h);
        ensure!(
            cel.iter().any(|(f, _)| f == holder || *f == exp.field),
            "expected a CEL rule to refuse {}, it said {cel:?}",
            exp.field
        );
        out.push(format!("cel: {}", cel[0].1));
    } else {
        ensure!(cel.is_empty(), "unexpected CEL refusal {cel:?}");
    }
    ensure!(
        layers.contains(&"semantic"),
        "unknown `Refused by: {}` (schema, semantic, cel+semantic, unsupported)",
        exp.refused_by
    );
    // Semantic faults are checked together with examples/, whose objects must stay valid.
    let report = set.check();
    let faults = report.of(kind_of(&exp.kind)?, &exp.name);
    let hit = faults
        .iter()
        .find(|f| f.field == exp.field)
        .ok_or_else(|| {
            anyhow!(
                "expected the semantic check to refuse {}, it said:\n{report}",
                exp.field
            )
        })?;
    for (kind, name) in report.faults.keys() {
        let in_file = docs.iter().any(|d| {
            d["kind"] == kind.to_string().as_str() && d["metadata"]["name"] == name.as_str()
        });
        ensure!(in_file, "an object of examples/ was refused too:\n{report}");
    }
    out.push(format!("semantic: {hit}"));
    Ok(out.join("; "))
}

#[test]
fn every_invalid_example_is_refused_at_the_named_field() -> Result<()> {
    let schemas = Schemas::load()?;
    let (examples, _) = load_examples(&schemas)?;
    let files = yaml_files(&root().join("examples/invalid"))?;
    let mut failures = Vec::new();
    let mut layers = BTreeMap::<String, usize>::new();
    for file in &files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        match check_invalid(&schemas, &examples, file) {
            Ok(how) => {
                println!("{name}: refused by {how}");
                *layers.entry(header(file)?.refused_by).or_default() += 1;
            }
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // Both kinds of refusal are covered, and there is a file per fault the issue lists.
    assert!(
        layers.get("schema").copied().unwrap_or(0) >= 4,
        "{layers:?}"
    );
    assert!(
        layers.get("semantic").copied().unwrap_or(0) >= 5,
        "{layers:?}"
    );
    assert!(files.len() >= 9, "only {} invalid examples", files.len());
    // Every field nothing implements yet has its file, at the first list item.
    let mut covered = Vec::new();
    for file in &files {
        let exp = header(file)?;
        if exp.refused_by == "unsupported" {
            covered.push((kind_of(&exp.kind)?, exp.field));
        }
    }
    for (kind, path) in api::unsupported::listed() {
        let field = path.replacen("[]", "[0]", 1);
        assert!(
            covered.iter().any(|(k, f)| *k == kind && *f == field),
            "no file in examples/invalid/ refused by `unsupported` at {kind} {field}"
        );
    }
    Ok(())
}

#[test]
fn every_cel_rule_in_the_crds_compiles_and_stays_in_scope_and_budget() -> Result<()> {
    /// (where, rule, the schema node holding it)
    type Found = Vec<(String, String, Value)>;
    fn walk(v: &Value, at: &str, out: &mut Found) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                    for r in rules {
                        let rule = r["rule"].as_str().unwrap_or_default().to_string();
                        out.push((at.to_string(), rule, v.clone()));
                    }
                }
                for (k, v) in m {
                    walk(v, &format!("{at}/{k}"), out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let schemas = Schemas::load()?;
    let mut rules = Found::new();
    for (kind, openapi) in &schemas.by_kind {
        walk(openapi, kind, &mut rules);
    }
    assert!(
        rules.len() >= 8,
        "expected the CEL rules of the types, found {}",
        rules.len()
    );
    for (at, rule, node) in &rules {
        kube_cel::cel::Program::compile(rule).map_err(|e| anyhow!("{at}: {rule:?}: {e}"))?;
        // Only CRD-scope variables, and no estimated cost over the apiserver's budget.
        let warnings = kube_cel::analyze_rule(
            rule,
            &kube_cel::compile_schema(node),
            kube_cel::ScopeContext::CrdValidation,
        );
        assert!(warnings.is_empty(), "{at}: {rule:?}: {warnings:?}");
    }
    Ok(())
}

#[test]
fn unknown_fields_are_refused_like_kubectl_strict_validation() -> Result<()> {
    let schemas = Schemas::load()?;
    let doc = json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualBridge",
                     "metadata": {"name": "typo"},
                     "spec": {"subnet": "10.10.0.0/24", "gatway": "10.10.0.1"}});
    let structural = schemas.structural(&doc)?;
    assert!(
        structural
            .iter()
            .any(|(f, why)| f == "spec" && why.contains("gatway")),
        "{structural:?}"
    );
    Ok(())
}

#[test]
fn cel_rules_refuse_what_the_semantic_check_refuses() -> Result<()> {
    // Each row: a well-formed object whose fault the CRD's CEL rules catch at apply time.
    let schemas = Schemas::load()?;
    let (examples, _) = load_examples(&schemas)?;
    let rows = [
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AccessControlList",
                   "metadata": {"name": "a"},
                   "spec": {"direction": "Ingress", "rules": [{"action": "Accept", "jumpTo": "b"}]}}),
            "spec.rules[0]",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AccessControlList",
                   "metadata": {"name": "a"},
                   "spec": {"direction": "Ingress", "rules": [{"action": "Accept", "protocol": "ICMP",
                            "destinationPorts": {"from": 80, "to": 80}}]}}),
            "spec.rules[0]",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AccessControlList",
                   "metadata": {"name": "a"},
                   "spec": {"direction": "Ingress", "rules": [{"action": "Accept", "protocol": "TCP",
                            "destinationPorts": {"from": 90, "to": 80}}]}}),
            "spec.rules[0].destinationPorts",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualRouter",
                   "metadata": {"name": "r"},
                   "spec": {"interfaces": [{"bridge": "blue", "ip": "10.10.0.1"}],
                            "routes": [{"destination": "0.0.0.0/0"}]}}),
            "spec.routes[0]",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualLoadBalancer",
                   "metadata": {"name": "l"},
                   "spec": {"vips": [{"ip": "10.96.0.1", "protocol": "TCP", "port": 80}]}}),
            "spec.vips[0]",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualLoadBalancer",
                   "metadata": {"name": "l"},
                   "spec": {"vips": [{"ip": "10.96.0.1", "protocol": "TCP", "port": 80,
                            "members": [{"ip": "10.10.0.5", "port": 80}]}],
                            "healthCheck": {"type": "TCP", "path": "/x"}}}),
            "spec.healthCheck",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualRouter",
                   "metadata": {"name": "r"},
                   "spec": {"interfaces": [{"bridge": "blue", "ip": "10.10.0.254"}],
                            "dnat": [{"externalIp": "192.168.100.20", "internalIp": "10.10.0.20",
                                      "protocol": "TCP", "externalPort": 8080}]}}),
            "spec.dnat[0]",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualLoadBalancer",
                   "metadata": {"name": "l"},
                   "spec": {"vips": [{"ip": "10.96.0.1", "protocol": "TCP", "port": 80,
                            "targetPort": 8080,
                            "members": [{"ip": "10.10.0.5", "port": 80}]}]}}),
            "spec.vips[0]",
        ),
        (
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualRouter",
                   "metadata": {"name": "r"},
                   "spec": {"interfaces": [{"bridge": "blue", "ip": "10.10.0.254"}],
                            "uplink": {"ip": "192.168.100.3/24",
                                       "snatPortRange": {"from": 2000, "to": 1000}}}}),
            "spec.uplink.snatPortRange",
        ),
    ];
    for (doc, field) in rows {
        assert!(
            schemas.structural(&doc)?.is_empty(),
            "{doc}: schema refused it"
        );
        let cel = schemas.cel(&doc)?;
        assert!(
            cel.iter().any(|(f, _)| f == field),
            "{doc}: expected a CEL refusal at {field}, got {cel:?}"
        );
        // The operator refuses the same object at or under the same path, so an object that
        // reaches it without the apiserver's CEL check is still refused.
        let mut set = examples.clone();
        set.add(&doc)?;
        let report = set.check();
        let kind = kind_of(doc["kind"].as_str().unwrap_or_default())?;
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let faults = report.of(kind, name);
        assert!(
            faults.iter().any(|f| f.field.starts_with(field)),
            "{doc}: expected the semantic check to refuse {field}, got {faults:?}"
        );
    }
    Ok(())
}

#[test]
fn the_committed_crds_are_what_crdgen_writes() -> Result<()> {
    let drift = api::crdgen::check(&root().join("crds"))?;
    assert!(
        drift.is_empty(),
        "crds/ is stale; run `cargo run -p api --bin crdgen`:\n{}",
        drift
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // And generation is deterministic.
    assert_eq!(api::crdgen::render()?, api::crdgen::render()?);
    Ok(())
}
