//! The apiserver's structural-schema rules, checked on the committed CRDs. A CRD that breaks
//! them is refused by `kubectl apply` (or loses pruning and defaulting), and no apiserver runs
//! in unit tests, so the rules that matter for these types are checked here.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

fn crds() -> Result<Vec<(String, Value)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".weft.dev.yaml") {
            continue;
        }
        let crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {name}"))?;
        out.push((name, crd));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    anyhow::ensure!(
        out.len() == 4,
        "expected 4 CRDs in crds/, found {}",
        out.len()
    );
    Ok(out)
}

const JUNCTORS: [&str; 4] = ["allOf", "anyOf", "oneOf", "not"];

/// Walks one schema node; `in_junctor` is true under allOf/anyOf/oneOf/not.
fn walk(node: &Value, at: &str, in_junctor: bool, faults: &mut Vec<String>) {
    let Some(m) = node.as_object() else {
        faults.push(format!("{at}: schema is not an object"));
        return;
    };
    let mut fault = |what: String| faults.push(format!("{at}: {what}"));
    for forbidden in [
        "$ref",
        "definitions",
        "$defs",
        "$schema",
        "id",
        "uniqueItems",
    ] {
        if m.contains_key(forbidden) {
            fault(format!("`{forbidden}` is not allowed"));
        }
    }
    let typ = m.get("type").and_then(Value::as_str);
    let escapes = m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if in_junctor {
        for forbidden in [
            "type",
            "description",
            "default",
            "nullable",
            "additionalProperties",
        ] {
            if m.contains_key(forbidden) {
                fault(format!("`{forbidden}` inside a logical junctor"));
            }
        }
    } else if typ.is_none() && !escapes {
        fault("no `type`".into());
    }
    if m.get("type").is_some_and(|t| !t.is_string()) {
        fault("`type` must be a single string".into());
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        fault("`properties` and `additionalProperties` together".into());
    }
    if let Some(Value::Array(values)) = m.get("enum") {
        let nullable = m.get("nullable") == Some(&Value::Bool(true));
        for v in values {
            let ok = match (typ, v) {
                (_, Value::Null) => nullable,
                (Some("string"), Value::String(_)) => true,
                (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
                (Some("number"), Value::Number(_)) => true,
                (Some("boolean"), Value::Bool(_)) => true,
                _ => false,
            };
            if !ok {
                fault(format!("enum value {v} does not fit type {typ:?}"));
            }
        }
    }
    if let Some(d) = m.get("default") {
        let ok = matches!(
            (typ, d),
            (Some("string"), Value::String(_))
                | (Some("boolean"), Value::Bool(_))
                | (Some("object"), Value::Object(_))
                | (Some("array"), Value::Array(_))
                | (Some("integer" | "number"), Value::Number(_))
        );
        if !ok {
            fault(format!("default {d} does not fit type {typ:?}"));
        }
    }
    if m.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let item = &m["items"];
        let required: Vec<&str> = item["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for key in m["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = key.as_str().unwrap_or_default();
            let prop = &item["properties"][key];
            if prop.is_null() {
                fault(format!("list-map key {key} is not a property of the items"));
            } else if !required.contains(&key) && prop.get("default").is_none() {
                fault(format!("list-map key {key} must be required or defaulted"));
            } else if !matches!(
                prop["type"].as_str(),
                Some("string" | "integer" | "boolean")
            ) {
                fault(format!("list-map key {key} must be a scalar"));
            }
        }
    }
    if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
        for r in rules {
            if !r["rule"].is_string() || r["message"].as_str().is_none_or(str::is_empty) {
                fault(format!("validation {r} needs a rule and a message"));
            }
        }
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        for (k, v) in props {
            walk(v, &format!("{at}.{k}"), in_junctor, faults);
        }
    }
    if let Some(items) = m.get("items") {
        walk(items, &format!("{at}[]"), in_junctor, faults);
    }
    if let Some(ap @ Value::Object(_)) = m.get("additionalProperties") {
        walk(ap, &format!("{at}{{}}"), in_junctor, faults);
    }
    for j in JUNCTORS {
        match m.get(j) {
            Some(Value::Array(subs)) => {
                for (i, s) in subs.iter().enumerate() {
                    walk(s, &format!("{at}/{j}[{i}]"), true, faults);
                }
            }
            Some(s @ Value::Object(_)) => walk(s, &format!("{at}/{j}"), true, faults),
            _ => {}
        }
    }
}

#[test]
fn the_crds_have_structural_schemas() -> Result<()> {
    let mut faults = Vec::new();
    for (name, crd) in crds()? {
        let versions = crd["spec"]["versions"]
            .as_array()
            .ok_or_else(|| anyhow!("{name}: no versions"))?;
        for v in versions {
            let schema = &v["schema"]["openAPIV3Schema"];
            walk(schema, &format!("{name}:"), false, &mut faults);
            // The root may not describe metadata beyond name/generateName; ours leave it alone.
            if schema["properties"].get("metadata").is_some() {
                faults.push(format!("{name}: root describes metadata"));
            }
        }
    }
    assert!(faults.is_empty(), "\n{}", faults.join("\n"));
    Ok(())
}

#[test]
fn the_crds_are_cluster_scoped_with_status_short_names_and_ready_columns() -> Result<()> {
    let expect = [
        (
            "accesscontrollists.weft.dev.yaml",
            "AccessControlList",
            "acl",
        ),
        ("virtualbridges.weft.dev.yaml", "VirtualBridge", "vbr"),
        (
            "virtualloadbalancers.weft.dev.yaml",
            "VirtualLoadBalancer",
            "vlb",
        ),
        ("virtualrouters.weft.dev.yaml", "VirtualRouter", "vrt"),
    ];
    for ((name, crd), (file, kind, short)) in crds()?.iter().zip(expect) {
        assert_eq!(name, file);
        let spec = &crd["spec"];
        assert_eq!(spec["group"], "weft.dev");
        assert_eq!(spec["scope"], "Cluster", "{name}");
        assert_eq!(spec["names"]["kind"], kind);
        assert_eq!(spec["names"]["shortNames"], serde_json::json!([short]));
        assert_eq!(spec["names"]["categories"], serde_json::json!(["weft"]));
        let v = &spec["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert_eq!(v["served"], true);
        assert_eq!(v["storage"], true);
        assert!(
            v["subresources"]["status"].is_object(),
            "{name}: no status subresource"
        );
        let columns: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Age"),
            "{name}: {columns:?}"
        );
        let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        for field in ["conditions", "observedGeneration"] {
            assert!(status.get(field).is_some(), "{name}: status has no {field}");
        }
    }
    Ok(())
}

#[test]
fn the_checker_catches_non_structural_schemas() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"description": "no type"},
            "b": {"type": "string", "enum": ["x", null]},
            "c": {"type": "array", "x-kubernetes-list-type": "map",
                  "x-kubernetes-list-map-keys": ["k"],
                  "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "d": {"type": "object", "anyOf": [{"type": "string"}]},
            "e": {"$ref": "#/definitions/x", "type": "object"}
        }
    });
    let mut faults = Vec::new();
    walk(&bad, "bad:", false, &mut faults);
    let text = faults.join("\n");
    for expected in [
        "bad:.a: no `type`",
        "bad:.b: enum value null",
        "bad:.c: list-map key k must be required or defaulted",
        "bad:.d/anyOf[0]: `type` inside a logical junctor",
        "bad:.e: `$ref` is not allowed",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}
