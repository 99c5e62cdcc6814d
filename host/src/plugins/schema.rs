//! A strategy's config schema, as its `describe` returned it: untrusted, so bounded before it is
//! compiled, and then used to check a route's config (at `route set`) and a query's parameters
//! (at search).
//!
//! Query parameters are declared inside the config schema, under [`QUERY_PARAMS_KEY`]: a JSON
//! Schema for the query's `params` object. A strategy that declares none takes none, and a key
//! the declaration does not list under `properties` is refused unless it says
//! `"additionalProperties"` (anything but `false`) or has `patternProperties`. So a parameter a
//! strategy would silently ignore (`filter` on a strategy that does not filter) is an error that
//! names it.

use anyhow::{Result, bail};
use serde_json::Value;

/// The config-schema key under which a strategy declares the query parameters it reads.
pub const QUERY_PARAMS_KEY: &str = "x-quarry-query-params";

/// Deepest nesting of arrays and objects a schema may have.
pub const MAX_SCHEMA_DEPTH: usize = 32;

/// Most JSON values (objects, arrays, scalars) a schema may hold.
pub const MAX_SCHEMA_NODES: usize = 20_000;

/// Most problems one error message lists.
const MAX_LISTED: usize = 8;

/// External references are never fetched: a schema is what the plugin returned, nothing more.
struct NoRetrieval;

impl jsonschema::Retrieve for NoRetrieval {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("`{uri}` is outside the schema; config schemas must be self-contained (local `#/...` references only)").into())
    }
}

/// A strategy's compiled config schema and query-parameter declaration.
pub struct Schemas {
    config: jsonschema::Validator,
    params: Option<Params>,
}

struct Params {
    validator: jsonschema::Validator,
    /// The keys listed under `properties`.
    declared: Vec<String>,
    /// Whether keys beyond `declared` may appear.
    open: bool,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas").field("params", &self.params.as_ref().map(|p| &p.declared)).finish()
    }
}

/// Check a schema's size and shape, and compile it and its query-parameter declaration.
pub fn compile(schema: &Value) -> Result<Schemas> {
    check_bounds(schema)?;
    match schema.as_object() {
        Some(object) if object.get("type").is_none_or(|t| t == "object") => {}
        Some(_) => bail!("the config schema's `type` is not \"object\"; a route's config is a JSON object"),
        None => bail!("the config schema is not a JSON Schema object (`{{\"type\": \"object\", ...}}`)"),
    }
    let config = build(schema).map_err(|e| anyhow::anyhow!("the config schema is not a valid JSON Schema: {e}"))?;
    let params = match schema.get(QUERY_PARAMS_KEY) {
        None => None,
        Some(declared) => {
            let object = match declared.as_object() {
                Some(o) if o.get("type").is_none_or(|t| t == "object") => o,
                _ => bail!("the config schema's `{QUERY_PARAMS_KEY}` is not an object schema (`{{\"type\": \"object\", \"properties\": {{...}}}}`)"),
            };
            let validator = build(declared).map_err(|e| anyhow::anyhow!("the config schema's `{QUERY_PARAMS_KEY}` is not a valid JSON Schema: {e}"))?;
            let declared_keys = object.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default();
            let open = object.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false)) || object.contains_key("patternProperties");
            Some(Params { validator, declared: declared_keys, open })
        }
    };
    Ok(Schemas { config, params })
}

fn build(schema: &Value) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
    jsonschema::options().with_retriever(NoRetrieval).build(schema)
}

/// Refuse schemas too deep or too large to compile safely (the compiler recurses).
fn check_bounds(schema: &Value) -> Result<()> {
    let mut nodes = 0usize;
    let mut stack = vec![(schema, 1usize)];
    while let Some((value, depth)) = stack.pop() {
        nodes += 1;
        if nodes > MAX_SCHEMA_NODES {
            bail!("the config schema holds more than {MAX_SCHEMA_NODES} values; keep it smaller");
        }
        if depth > MAX_SCHEMA_DEPTH {
            bail!("the config schema nests deeper than {MAX_SCHEMA_DEPTH} levels; keep it flatter");
        }
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

impl Schemas {
    /// Check a route's config; the error lists each problem with the key it is at.
    pub fn check_config(&self, config: &Value) -> Result<(), String> {
        problems(&self.config, config)
    }

    /// Check a query's parameters (a JSON object) against the declaration; the error names each
    /// undeclared key, and each problem with the key it is at.
    pub fn check_params(&self, params: &Value) -> Result<(), String> {
        let Some(object) = params.as_object() else { return Err("query parameters must be a JSON object".into()) };
        if object.is_empty() {
            return Ok(());
        }
        let Some(declared) = &self.params else {
            let keys: Vec<String> = object.keys().map(|k| format!("`{}`", crate::printable::printable(k, 64))).collect();
            return Err(format!("query parameter {} is not one this strategy reads (it declares none)", keys.join(", ")));
        };
        if !declared.open {
            let undeclared: Vec<String> =
                object.keys().filter(|k| !declared.declared.contains(k)).map(|k| format!("`{}`", crate::printable::printable(k, 64))).collect();
            if !undeclared.is_empty() {
                let known = declared.declared.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                return Err(format!(
                    "query parameter {} is not one this strategy reads (it reads: {})",
                    undeclared.join(", "),
                    if known.is_empty() { "none".to_string() } else { known }
                ));
            }
        }
        problems(&declared.validator, params)
    }
}

/// The problems `validator` finds in `instance`, one per line-part: `` `/key`: what is wrong ``.
fn problems(validator: &jsonschema::Validator, instance: &Value) -> Result<(), String> {
    let mut found = Vec::new();
    let mut more = 0;
    for error in validator.iter_errors(instance) {
        if found.len() == MAX_LISTED {
            more += 1;
            continue;
        }
        let at = error.instance_path().as_str();
        let line = match error.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
                .iter()
                .map(|key| format!("`{at}/{}`: not a key the schema allows", crate::printable::printable(key, 64)))
                .collect::<Vec<_>>()
                .join("; "),
            _ => format!("`{}`: {}", if at.is_empty() { "/" } else { at }, crate::printable::printable(&error.to_string(), 300)),
        };
        found.push(line);
    }
    if found.is_empty() {
        return Ok(());
    }
    if more > 0 {
        found.push(format!("and {more} more"));
    }
    Err(found.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dense_like() -> Value {
        json!({
            "type": "object",
            "properties": {"text-model": {"type": "string"}, "candidates": {"type": "integer", "minimum": 1}},
            "required": ["text-model"],
            "additionalProperties": false,
            QUERY_PARAMS_KEY: {"type": "object", "properties": {"filter": {"type": "object"}}}
        })
    }

    #[test]
    fn config_problems_name_the_key() {
        let s = compile(&dense_like()).unwrap();
        assert!(s.check_config(&json!({"text-model": "m", "candidates": 5})).is_ok());
        let err = s.check_config(&json!({"text-model": "m", "text-modle": "m"})).unwrap_err();
        assert!(err.contains("`/text-modle`: not a key the schema allows"), "{err}");
        let err = s.check_config(&json!({"text-model": "m", "candidates": "5"})).unwrap_err();
        assert!(err.starts_with("`/candidates`:") && err.contains("integer"), "{err}");
        let err = s.check_config(&json!({})).unwrap_err();
        assert!(err.contains("text-model"), "{err}");
    }

    #[test]
    fn undeclared_query_params_are_refused_by_name() {
        let s = compile(&dense_like()).unwrap();
        assert!(s.check_params(&json!({})).is_ok());
        assert!(s.check_params(&json!({"filter": {"lang": "en"}})).is_ok());
        let err = s.check_params(&json!({"filter": {}, "fitler": 1})).unwrap_err();
        assert!(err.contains("`fitler`") && err.contains("reads: `filter`"), "{err}");
        let err = s.check_params(&json!({"filter": "en"})).unwrap_err();
        assert!(err.starts_with("`/filter`:"), "{err}");
        let none = compile(&json!({"type": "object"})).unwrap();
        let err = none.check_params(&json!({"filter": {}})).unwrap_err();
        assert!(err.contains("`filter`") && err.contains("declares none"), "{err}");
        let open = compile(&json!({QUERY_PARAMS_KEY: {"type": "object", "additionalProperties": true}})).unwrap();
        assert!(open.check_params(&json!({"anything": 1})).is_ok());
    }

    #[test]
    fn hostile_schemas_are_errors_not_panics() {
        let mut deep = json!({"type": "object"});
        for _ in 0..100 {
            deep = json!({"type": "object", "properties": {"a": deep}});
        }
        assert!(format!("{:#}", compile(&deep).unwrap_err()).contains("deeper than"));
        let wide: serde_json::Map<String, Value> = (0..MAX_SCHEMA_NODES).map(|i| (format!("k{i}"), json!({"type": "string"}))).collect();
        assert!(format!("{:#}", compile(&json!({"type": "object", "properties": wide})).unwrap_err()).contains("more than"));
        let err = format!("{:#}", compile(&json!({"type": "object", "properties": {"a": {"type": "strnig"}}})).unwrap_err());
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        let err = format!("{:#}", compile(&json!({"type": "object", "properties": {"a": {"pattern": "(unclosed"}}})).unwrap_err());
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        let err = format!("{:#}", compile(&json!({"type": "object", "$ref": "https://example.com/s.json"})).unwrap_err());
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        let err = format!("{:#}", compile(&json!({"type": "object", "$ref": "file:///etc/passwd"})).unwrap_err());
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        assert!(compile(&json!({"type": "string"})).is_err());
        assert!(compile(&json!({QUERY_PARAMS_KEY: {"type": "array"}})).is_err());
        // A local reference is fine.
        let local = json!({"type": "object", "$defs": {"m": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/m"}}});
        assert!(compile(&local).unwrap().check_config(&json!({"a": 1})).is_err());
    }
}
