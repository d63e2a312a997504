//! Structural validation of Weft objects against their CRD schemas, as the apiserver does it
//! at apply time: patterns, bounds, enums, required fields, minItems and unknown fields.
//!
//! This lets tools that read manifests without a cluster (the operator's offline `translate`,
//! tests) refuse what `kubectl apply` would refuse, naming the field the same way the
//! semantic check does. CEL rules (`x-kubernetes-validations`) are not evaluated here.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use crate::error::Error;
use crate::patterns;
use crate::validate::Invalid;

/// Validators for the Weft kinds, by kind name.
#[derive(Debug)]
pub struct Schemas {
    by_kind: BTreeMap<String, jsonschema::Validator>,
}

impl Schemas {
    /// The schemas of the CRDs this crate generates.
    pub fn generated() -> Result<Self, Error> {
        Self::from_crds(&crate::crdgen::crds())
    }

    /// The schemas of the given CRDs (for example, the manifests read from crds/).
    pub fn from_crds(crds: &[CustomResourceDefinition]) -> Result<Self, Error> {
        let mut by_kind = BTreeMap::new();
        for crd in crds {
            let kind = crd.spec.names.kind.clone();
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .ok_or_else(|| Error::Schema {
                    kind: kind.clone(),
                    reason: "no openAPIV3Schema".into(),
                })?;
            let openapi = serde_json::to_value(schema).map_err(|e| Error::Schema {
                kind: kind.clone(),
                reason: e.to_string(),
            })?;
            let validator = compile(&openapi).map_err(|reason| Error::Schema {
                kind: kind.clone(),
                reason,
            })?;
            by_kind.insert(kind, validator);
        }
        Ok(Schemas { by_kind })
    }

    /// The structural faults of one object (a whole manifest: apiVersion, kind, metadata,
    /// spec), each naming its field as `spec.vips[0].port`. Empty when the object is valid.
    pub fn check(&self, object: &Value) -> Result<Vec<Invalid>, Error> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let validator = (api_version == format!("{}/{}", crate::GROUP, crate::VERSION))
            .then(|| self.by_kind.get(kind))
            .flatten()
            .ok_or_else(|| Error::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            })?;
        let mut out: Vec<Invalid> = validator
            .iter_errors(object)
            .map(|e| {
                let field = field_path(&e.instance_path().to_string());
                let reason = match e.kind() {
                    jsonschema::error::ValidationErrorKind::Pattern { pattern } => {
                        format!("{} is not {}", e.instance(), describe_pattern(pattern))
                    }
                    _ => e.to_string(),
                };
                Invalid { field, reason }
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Compiles a CRD's openAPIV3Schema as JSON Schema with the apiserver's strictness.
pub fn compile(openapi: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        // The apiserver matches patterns with Go's RE2; the `regex` crate takes the same syntax
        // (no look-around, no back-references), so a pattern RE2 would refuse fails here too.
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .should_validate_formats(false)
        .build(&to_json_schema(openapi, true))
        .map_err(|e| e.to_string())
}

/// Turns an openAPIV3Schema into plain JSON Schema: `nullable` becomes a `null` type, objects
/// with listed properties refuse unknown fields (as `kubectl apply` does with its default
/// strict field validation), and the root accepts the fields every object has.
pub fn to_json_schema(schema: &Value, is_root: bool) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        let v = match k.as_str() {
            "properties" => Value::Object(
                v.as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| (name.clone(), to_json_schema(s, false)))
                    .collect(),
            ),
            "items" | "additionalProperties" | "not" => to_json_schema(v, false),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| to_json_schema(s, false))
                    .collect(),
            ),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    if out.remove("nullable") == Some(Value::Bool(true))
        && let Some(Value::String(t)) = out.get("type").cloned()
    {
        out.insert("type".into(), json!([t, "null"]));
    }
    if is_root
        && let Value::Object(props) = out
            .entry("properties")
            .or_insert_with(|| Value::Object(Default::default()))
    {
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert("metadata".into(), json!({"type": "object"}));
    }
    let preserve = out.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if out.contains_key("properties") && !out.contains_key("additionalProperties") && !preserve {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// `/spec/vips/0/port` -> `spec.vips[0].port`.
pub fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if part.bytes().all(|c| c.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part.replace("~1", "/").replace("~0", "~"));
        }
    }
    out
}

/// What a schema pattern stands for, in words.
fn describe_pattern(pattern: &str) -> String {
    let known = [
        (patterns::IPV4, "an IPv4 address"),
        (patterns::IPV6, "an IPv6 address"),
        (patterns::IP, "an IP address"),
        (patterns::IPV4_CIDR, "an IPv4 prefix (a.b.c.d/0-32)"),
        (patterns::IPV6_CIDR, "an IPv6 prefix (x::/0-128)"),
        (patterns::CIDR, "an IP prefix (address/length)"),
        (patterns::MAC, "a MAC address (aa:bb:cc:dd:ee:ff)"),
        (
            patterns::OBJECT_NAME,
            "an object name (lower-case RFC 1123)",
        ),
        (patterns::HTTP_PATH, "an HTTP path starting with /"),
    ];
    known
        .iter()
        .find(|(p, _)| *p == pattern)
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| format!("matched by {pattern:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_read_like_the_semantic_check() {
        assert_eq!(field_path("/spec/vips/0/port"), "spec.vips[0].port");
        assert_eq!(field_path("/spec/interfaces"), "spec.interfaces");
        assert_eq!(field_path(""), "");
        assert_eq!(field_path("/metadata/labels/a~1b"), "metadata.labels.a/b");
    }

    #[test]
    fn generated_schemas_refuse_with_named_fields_and_plain_words() {
        let schemas = Schemas::generated().unwrap();
        let bad = json!({"apiVersion": "weft.dev/v1alpha1", "kind": "VirtualBridge",
                         "metadata": {"name": "b"},
                         "spec": {"subnet": "10.0.0.0/33", "mtu": 100, "colour": "red"}});
        let faults = schemas.check(&bad).unwrap();
        let text: Vec<String> = faults.iter().map(ToString::to_string).collect();
        assert_eq!(faults.len(), 3, "{text:?}");
        assert!(text.contains(
            &"spec.subnet: \"10.0.0.0/33\" is not an IPv4 prefix (a.b.c.d/0-32)".to_string()
        ));
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec.mtu: 100 is less than"))
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("spec: ") && t.contains("colour"))
        );
    }

    #[test]
    fn unknown_kinds_are_an_error_not_a_pass() {
        let schemas = Schemas::generated().unwrap();
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert!(matches!(
            schemas.check(&other),
            Err(Error::UnknownKind { .. })
        ));
    }
}
