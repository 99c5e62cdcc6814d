//! A strategy that exposes the host's field indexes through `search`, to test them end to end.
//!
//! Ingest reads each item's metadata: `point` (a vector, L2), `codes` (a code sequence),
//! `tokens` (a list of token vectors). `search` runs the operation named in `params.op`;
//! `rerank` scores candidates by L2 distance from `params.vector` to their `point`.

use quarry_sdk::serde_json::{self, Value};
use quarry_sdk::{Context, Descriptor, Error, FieldKind, FieldValue, Hit, Item, Metric, Query, Result, Strategy, TokenSet};

struct Fields;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect()).unwrap_or_default()
}

fn codes(v: &Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect()).unwrap_or_default()
}

fn token_set(v: &Value) -> TokenSet {
    let rows: Vec<Vec<f32>> = v.as_array().map(|a| a.iter().map(floats).collect()).unwrap_or_default();
    TokenSet { dim: rows.first().map_or(0, |r| r.len() as u32), data: rows.concat() }
}

impl Strategy for Fields {
    fn describe() -> Descriptor {
        Descriptor::new("fields", "0.1.0")
            .description("exposes vector, code and token fields")
            .vector_field_with("point", Metric::L2)
            .field("codes", FieldKind::Codes)
            .field("tokens", FieldKind::Tokens)
            .reranks()
            // Takes any query parameters: each test sends its own operation.
            .query_params(serde_json::json!({"type": "object", "additionalProperties": true}))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        for item in items {
            let meta: Value = serde_json::from_str(&item.metadata).map_err(|e| Error::invalid(e.to_string()))?;
            let c = ctx.collection();
            if let Some(p) = meta.get("point") {
                c.put_vector(&item.id, "point", floats(p))?;
            }
            if let Some(v) = meta.get("codes") {
                c.put_field(&item.id, "codes", &FieldValue::Codes(codes(v)))?;
            }
            if let Some(v) = meta.get("tokens") {
                c.put_field(&item.id, "tokens", &FieldValue::Tokens(token_set(v)))?;
            }
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let p: Value = serde_json::from_str(&query.params).map_err(|e| Error::invalid(e.to_string()))?;
        let c = ctx.collection();
        match p["op"].as_str().unwrap_or_default() {
            "nearest" => match p.get("filter") {
                Some(filter) => c.nearest_filtered("point", &floats(&p["vector"]), query.k, filter),
                None => c.nearest("point", &floats(&p["vector"]), query.k),
            },
            // One hit per prefix: the following codes, comma-separated.
            "next-codes" => {
                let prefixes: Vec<Vec<u32>> = p["prefixes"].as_array().map(|a| a.iter().map(codes).collect()).unwrap_or_default();
                let next = c.next_codes("codes", &prefixes)?;
                Ok(next.into_iter().enumerate().map(|(i, n)| Hit::new(n.iter().map(u32::to_string).collect::<Vec<_>>().join(","), i as f32)).collect())
            }
            "items-with-codes" => Ok(c.items_with_codes("codes", &codes(&p["codes"]))?.into_iter().map(|id| Hit::new(id, 1.0)).collect()),
            "late-interaction" => {
                let candidates: Vec<String> = p["candidates"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default();
                quarry_sdk::rankers::late_interaction(c.name(), "tokens", &token_set(&p["tokens"]), &candidates)
            }
            // Cross-encoder scores of `texts` against the query text, one hit per text.
            "cross-score" => {
                let texts: Vec<String> = p["texts"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default();
                let scores = quarry_sdk::rankers::cross_score(p["model"].as_str().unwrap_or_default(), query.text.as_deref().unwrap_or_default(), &texts)?;
                Ok(texts.into_iter().zip(scores).map(|(id, score)| Hit::new(id, score)).collect())
            }
            // Generative retrieval: decode code sequences from the query with beam search,
            // constrained to sequences that exist in the `codes` trie; answer their items.
            "generate" => {
                let model = p["model"].as_str().unwrap_or_default();
                let steps = p["steps"].as_u64().unwrap_or(2) as usize;
                let generation = quarry_sdk::decoders::Generation::start(model, query.text.as_deref().unwrap_or_default())?;
                let beams = quarry_sdk::beam_search(3, steps, |prefixes| {
                    let logprobs = generation.next_logprobs(prefixes)?;
                    let allowed = c.next_codes("codes", prefixes)?;
                    Ok::<_, Error>(allowed.iter().zip(&logprobs).map(|(codes, lp)| codes.iter().map(|&code| (code, lp[code as usize])).collect()).collect())
                })?;
                let mut hits = Vec::new();
                for beam in beams {
                    for id in c.items_with_codes("codes", &beam.tokens)? {
                        hits.push(Hit::new(id, beam.logprob));
                    }
                }
                Ok(hits)
            }
            // Every item with a code field, page by page; the score is its first code.
            "scan" => {
                let page = p["page"].as_u64().unwrap_or(2) as u32;
                let mut hits = Vec::new();
                for entry in c.scan_all("codes", page) {
                    let entry = entry?;
                    let first = match entry.value {
                        FieldValue::Codes(codes) => codes.first().copied().unwrap_or(0),
                        _ => return Err(Error::internal("a code field held another kind")),
                    };
                    hits.push(Hit::new(entry.id, first as f32));
                }
                Ok(hits)
            }
            // Stored items by id; the score is the length of the item's text, and a feature
            // says whether its metadata has a `lang`.
            "get-items" => {
                let ids: Vec<String> = p["ids"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default();
                let mut hits = Vec::new();
                for item in c.get_items(&ids)?.into_iter().flatten() {
                    let meta: Value = serde_json::from_str(&item.metadata).map_err(|e| Error::internal(e.to_string()))?;
                    let score = item.text.as_deref().map_or(0, str::len) as f32;
                    hits.push(Hit::new(item.id, score).with_feature("has-lang", if meta.get("lang").is_some() { 1.0 } else { 0.0 }));
                }
                Ok(hits)
            }
            "count" => Ok(vec![Hit::new("count", c.count()? as f32)]),
            "call-strategy" => Ok(quarry_sdk::strategies::search("dense@0.3.0", c.name(), &query)?),
            other => Err(Error::invalid(format!("unknown op `{other}`"))),
        }
    }

    fn rerank(ctx: &Context, query: Query, candidates: Vec<String>) -> Result<Vec<Hit>> {
        let p: Value = serde_json::from_str(&query.params).map_err(|e| Error::invalid(e.to_string()))?;
        let target = floats(&p["vector"]);
        let mut hits = Vec::new();
        for id in candidates {
            if let Some(FieldValue::Vector(point)) = ctx.collection().get_field(&id, "point")? {
                let distance: f32 = point.iter().zip(&target).map(|(a, b)| (a - b) * (a - b)).sum();
                hits.push(Hit::new(id, -distance).with_feature("distance", distance));
            }
        }
        Ok(quarry_sdk::top_k(hits, query.k as usize))
    }
}

quarry_sdk::export_strategy!(Fields);
