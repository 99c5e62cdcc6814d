//! Metadata predicates for filtered search: `{"lang": "en", "year": {"gte": 2020}}`.

use anyhow::{Result, bail};
use serde_json::Value;
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
}

/// All clauses must hold. A key may be a dotted path into nested objects.
#[derive(Debug, Clone)]
pub struct Filter {
    clauses: Vec<(Vec<String>, Op, Value)>,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("filter is not JSON: {e}"))?;
        let Value::Object(map) = value else { bail!("a filter is a JSON object of field predicates, like {{\"lang\": \"en\"}}") };
        let mut clauses = Vec::new();
        for (key, predicate) in map {
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            match predicate {
                Value::Object(ops) => {
                    for (op, operand) in ops {
                        let op = match op.as_str() {
                            "eq" => Op::Eq,
                            "ne" => Op::Ne,
                            "gt" => Op::Gt,
                            "gte" => Op::Gte,
                            "lt" => Op::Lt,
                            "lte" => Op::Lte,
                            "in" => Op::In,
                            other => bail!("filter on `{key}`: unknown operator `{other}` (use eq, ne, gt, gte, lt, lte, in)"),
                        };
                        if op == Op::In && !operand.is_array() {
                            bail!("filter on `{key}`: `in` takes a list");
                        }
                        clauses.push((path.clone(), op, operand));
                    }
                }
                other => clauses.push((path, Op::Eq, other)),
            }
        }
        Ok(Filter { clauses })
    }

    pub fn matches(&self, metadata: &Value) -> bool {
        self.clauses.iter().all(|(path, op, operand)| {
            let value = path.iter().try_fold(metadata, |v, key| v.get(key));
            let Some(value) = value else { return *op == Op::Ne };
            match op {
                Op::Eq => value == operand,
                Op::Ne => value != operand,
                Op::In => operand.as_array().is_some_and(|list| list.contains(value)),
                Op::Gt => compare(value, operand) == Some(Ordering::Greater),
                Op::Gte => matches!(compare(value, operand), Some(Ordering::Greater | Ordering::Equal)),
                Op::Lt => compare(value, operand) == Some(Ordering::Less),
                Op::Lte => matches!(compare(value, operand), Some(Ordering::Less | Ordering::Equal)),
            }
        })
    }
}

/// Numbers compare as numbers, strings as strings; anything else does not compare.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predicates() {
        let doc = json!({"lang": "en", "year": 2021, "tags": "news", "source": {"site": "a.org"}});
        let yes = |f: &str| Filter::parse(f).unwrap().matches(&doc);
        assert!(yes(r#"{"lang": "en"}"#));
        assert!(!yes(r#"{"lang": "de"}"#));
        assert!(yes(r#"{"year": {"gte": 2020, "lt": 2022}}"#));
        assert!(!yes(r#"{"year": {"gt": 2021}}"#));
        assert!(yes(r#"{"lang": {"in": ["de", "en"]}}"#));
        assert!(yes(r#"{"source.site": "a.org"}"#));
        assert!(yes(r#"{"missing": {"ne": 1}}"#));
        assert!(!yes(r#"{"missing": 1}"#));
        assert!(!yes(r#"{"lang": {"gt": 3}}"#), "a string does not compare with a number");
    }

    #[test]
    fn bad_filters_are_explained() {
        assert!(Filter::parse("[1]").unwrap_err().to_string().contains("JSON object"));
        assert!(Filter::parse(r#"{"a": {"like": 1}}"#).unwrap_err().to_string().contains("unknown operator `like`"));
        assert!(Filter::parse(r#"{"a": {"in": 1}}"#).unwrap_err().to_string().contains("takes a list"));
    }
}
