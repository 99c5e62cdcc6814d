//! `tgdt`: coarse-to-fine two-stage retrieval. A global embedding picks candidates by nearest
//! neighbours; per-token features re-rank them by late interaction (MaxSim), computed in the
//! host over the token sets stored at ingest.
//!
//! Config: `text-model` (must expose per-token features), `candidates` (default 100).

use quarry_sdk::{encoders, rankers, top_k, Context, Descriptor, Error, FieldKind, FieldValue, Hit, Item, Query, Result, Strategy};

const GLOBAL: &str = "global";
const TOKENS: &str = "tokens";

struct Tgdt;

impl Strategy for Tgdt {
    fn describe() -> Descriptor {
        Descriptor::new("tgdt", env!("CARGO_PKG_VERSION"))
            .description("Coarse-to-fine: global nearest neighbours, then a token-level MaxSim re-rank.")
            .model("text-model")
            .vector_field(GLOBAL)
            .field(TOKENS, FieldKind::Tokens)
            .config_schema(serde_json::json!({
                "type": "object",
                "properties": {
                    "text-model": {"type": "string", "description": "text encoder with a per-token output"},
                    "candidates": {"type": "integer", "minimum": 1, "default": 100, "description": "how many global neighbours the fine stage re-ranks"}
                },
                "required": ["text-model"]
            }))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let model: String = ctx.param("text-model")?;
        if items.iter().any(|i| i.text.is_none()) {
            return Err(Error::invalid("tgdt indexes texts; every item needs text"));
        }
        let texts: Vec<String> = items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
        let globals = encoders::embed_texts(&model, &texts)?;
        let tokens = encoders::text_tokens(&model, &texts)?;
        for ((item, global), tokens) in items.iter().zip(globals).zip(tokens) {
            ctx.collection().put_vector(&item.id, GLOBAL, global)?;
            ctx.collection().put_field(&item.id, TOKENS, &FieldValue::Tokens(tokens))?;
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let model: String = ctx.param("text-model")?;
        let candidates: u32 = ctx.param_or("candidates", 100)?;
        let text = query.text.clone().ok_or_else(|| Error::invalid("a tgdt query needs text"))?;
        let coarse = ctx.collection().nearest(GLOBAL, &encoders::embed_text(&model, &text)?, candidates.max(query.k))?;
        let query_tokens = encoders::text_tokens(&model, std::slice::from_ref(&text))?
            .pop()
            .ok_or_else(|| Error::internal("host returned no query tokens"))?;
        let ids: Vec<String> = coarse.into_iter().map(|h| h.id).collect();
        let fine = rankers::late_interaction(ctx.collection().name(), TOKENS, &query_tokens, &ids)?;
        Ok(top_k(fine, query.k as usize))
    }
}

quarry_sdk::export_strategy!(Tgdt);
