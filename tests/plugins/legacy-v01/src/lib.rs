//! A strategy built against the frozen `quarry:retrieval@0.1.0` with wit-bindgen directly (no
//! SDK), as plugins were before 0.2: hosts must keep loading it, with the same grants enforced.
//!
//! Config: `text-model`. Ingest embeds each text into field `embedding`; search answers the
//! nearest items, or, for the query text `ungranted`, calls a model the route does not grant.

wit_bindgen::generate!({ path: "../../../wit/v0.1", world: "plugin" });

use exports::quarry::retrieval::strategy::{Context, Descriptor, FieldSpec, Guest, Item, Query};
use quarry::retrieval::types::{Error, FieldKind, Hit, Metric};
use quarry::retrieval::{collections, encoders};

struct Legacy;

/// The route config's `text-model`, read without a JSON library: `{"text-model": "name"}`.
fn text_model(ctx: &Context) -> Result<String, Error> {
    let rest = ctx.config.split("\"text-model\"").nth(1).ok_or_else(|| Error::InvalidInput("route config is missing `text-model`".into()))?;
    let value = rest.split('"').nth(1).ok_or_else(|| Error::InvalidInput("`text-model` must be a string".into()))?;
    Ok(value.to_string())
}

impl Guest for Legacy {
    fn describe() -> Descriptor {
        Descriptor {
            name: "legacy".into(),
            version: "0.1.0".into(),
            description: "built against quarry:retrieval@0.1.0 without the SDK".into(),
            models: vec!["text-model".into()],
            fields: vec![FieldSpec { name: "embedding".into(), kind: FieldKind::Vector, metric: Some(Metric::Cosine) }],
            config_schema: r#"{"type": "object", "properties": {"text-model": {"type": "string"}}, "required": ["text-model"]}"#.into(),
        }
    }

    fn ingest(ctx: Context, items: Vec<Item>) -> Result<(), Error> {
        let model = text_model(&ctx)?;
        let texts: Vec<String> = items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
        for (item, vector) in items.iter().zip(encoders::embed_texts(&model, &texts)?) {
            collections::put_field(&ctx.collection, &item.id, "embedding", &collections::FieldValue::Vector(vector))?;
        }
        Ok(())
    }

    fn build(_ctx: Context) -> Result<(), Error> {
        Ok(())
    }

    fn search(ctx: Context, query: Query) -> Result<Vec<Hit>, Error> {
        let text = query.text.unwrap_or_default();
        let model = if text == "ungranted" { "not-granted-model".to_string() } else { text_model(&ctx)? };
        let vector = encoders::embed_texts(&model, &[text])?.pop().ok_or_else(|| Error::Internal("no embedding".into()))?;
        collections::nearest(&ctx.collection, "embedding", &vector, query.k, None)
    }
}

export!(Legacy);
