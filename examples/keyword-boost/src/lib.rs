//! A strategy written the way a third party would: one file, only `quarry-sdk`.
//!
//! Ingest stores a dense embedding and the item's hashed words. Search takes the dense
//! nearest neighbours as candidates, ranks them again by how many query words they contain,
//! and fuses both rankings with reciprocal-rank fusion, so exact terms (names, codes) the
//! embedding blurs still count.

use quarry_sdk::serde_json::json;
use quarry_sdk::{encoders, reciprocal_rank_fusion, top_k, Context, Descriptor, FieldKind, FieldValue, Hit, Item, Query, Result, Strategy};

const EMBEDDING: &str = "embedding";
const TERMS: &str = "terms";

struct KeywordBoost;

/// Lower-cased words of at least three letters, hashed (FNV-1a) to codes.
fn terms(text: &str) -> Vec<u32> {
    let mut codes: Vec<u32> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 3)
        .map(|w| w.to_lowercase().bytes().fold(0x811c9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x01000193)))
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

impl Strategy for KeywordBoost {
    fn describe() -> Descriptor {
        Descriptor::new("keyword-boost", env!("CARGO_PKG_VERSION"))
            .description("Dense candidates re-ranked by keyword overlap, fused with RRF.")
            .model("text-model")
            .vector_field(EMBEDDING)
            .field(TERMS, FieldKind::Codes)
            .config_schema(json!({
                "type": "object",
                "properties": {
                    "text-model": {"type": "string"},
                    "candidates": {"type": "integer", "minimum": 1, "default": 50}
                },
                "required": ["text-model"]
            }))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let model: String = ctx.param("text-model")?;
        let texts: Vec<String> = items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
        let vectors = encoders::embed_texts(&model, &texts)?;
        for ((item, text), vector) in items.iter().zip(&texts).zip(vectors) {
            ctx.collection().put_vector(&item.id, EMBEDDING, vector)?;
            ctx.collection().put_field(&item.id, TERMS, &FieldValue::Codes(terms(text)))?;
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let model: String = ctx.param("text-model")?;
        let candidates: u32 = ctx.param_or("candidates", 50)?;
        let text = query.text.clone().unwrap_or_default();
        let dense = ctx.collection().nearest(EMBEDDING, &encoders::embed_text(&model, &text)?, candidates.max(query.k))?;
        let wanted = terms(&text);
        let mut keyword = Vec::with_capacity(dense.len());
        for hit in &dense {
            let overlap = match ctx.collection().get_field(&hit.id, TERMS)? {
                Some(FieldValue::Codes(codes)) => wanted.iter().filter(|t| codes.binary_search(t).is_ok()).count(),
                _ => 0,
            };
            keyword.push(Hit::new(hit.id.clone(), overlap as f32));
        }
        let keyword = top_k(keyword, dense.len());
        Ok(top_k(reciprocal_rank_fusion(&[dense, keyword], 60.0), query.k as usize))
    }
}

quarry_sdk::export_strategy!(KeywordBoost);
