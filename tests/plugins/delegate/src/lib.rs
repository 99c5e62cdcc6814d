//! A strategy that answers by calling another through the host (`strategies.search`), to test
//! strategy-to-strategy calls. Config: `callee` (`name@version`) and `collection` (its own by
//! default). Each hit keeps the callee's score as feature `callee` and scores it plus one.

use quarry_sdk::{Context, Descriptor, Hit, Item, Query, Result, Strategy, strategies};

struct Delegate;

impl Strategy for Delegate {
    fn describe() -> Descriptor {
        Descriptor::new("delegate", "1.0.0").description("answers with another strategy's hits").config_schema(serde_json::json!({
            "type": "object",
            "properties": {"callee": {"type": "string"}, "collection": {"type": "string"}},
            "required": ["callee"],
            "additionalProperties": false
        }))
    }

    fn ingest(_ctx: &Context, _items: Vec<Item>) -> Result<()> {
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let callee: String = ctx.param("callee")?;
        let collection = ctx.param_or("collection", ctx.collection().name().to_string())?;
        let hits = strategies::search(&callee, &collection, &query)?;
        Ok(hits.into_iter().map(|h| Hit::new(h.id.clone(), h.score + 1.0).with_feature("callee", h.score)).collect())
    }
}

quarry_sdk::export_strategy!(Delegate);
