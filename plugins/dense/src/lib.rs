//! `dense`: the two-tower baseline. Items and queries are embedded by host encoders into one
//! space; search is nearest neighbours on the `embedding` field.
//!
//! Config: `text-model` embeds texts, `image-model` (optional) embeds images.

use quarry_sdk::{encoders, Context, Descriptor, Error, FieldValue, Hit, Item, Query, Result, Strategy};

const FIELD: &str = "embedding";

struct Dense;

/// Per-query parameters.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Keep only items whose metadata meets this filter, e.g. `{"lang": "en"}`.
    filter: Option<serde_json::Value>,
}

fn image_model(ctx: &Context) -> Result<String> {
    ctx.param::<Option<String>>("image-model")?.ok_or_else(|| {
        Error::invalid("this route has images but no `image-model` in its config; add one that is granted to it")
    })
}

impl Strategy for Dense {
    fn describe() -> Descriptor {
        Descriptor::new("dense", env!("CARGO_PKG_VERSION"))
            .description("Two-tower dense retrieval: one embedding per item, nearest neighbours at query time.")
            .model("text-model")
            .model("image-model")
            .vector_field(FIELD)
            .config_schema(serde_json::json!({
                "type": "object",
                "properties": {
                    "text-model": {"type": "string", "description": "model that embeds texts"},
                    "image-model": {"type": "string", "description": "model that embeds images, in the text model's space"}
                },
                "required": ["text-model"],
                "additionalProperties": false
            }))
            .reranks()
            .query_param("filter", serde_json::json!({"type": "object", "description": "keep only items whose metadata meets this filter, e.g. {\"lang\": \"en\"}"}))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let (with_image, with_text): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| i.image.is_some());
        if !with_text.is_empty() {
            let model: String = ctx.param("text-model")?;
            let texts: Vec<String> = with_text.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
            let vectors = encoders::embed_texts(&model, &texts)?;
            for (item, vector) in with_text.iter().zip(vectors) {
                ctx.collection().put_vector(&item.id, FIELD, vector)?;
            }
        }
        if !with_image.is_empty() {
            let model = image_model(ctx)?;
            let (ids, images): (Vec<String>, Vec<Vec<u8>>) =
                with_image.into_iter().map(|i| (i.id, i.image.unwrap_or_default())).unzip();
            let vectors = encoders::embed_images(&model, &images)?;
            for (id, vector) in ids.iter().zip(vectors) {
                ctx.collection().put_vector(id, FIELD, vector)?;
            }
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let vector = embed_query(ctx, &query)?;
        let params: Params = quarry_sdk::query_params(&query)?;
        match params.filter {
            Some(filter) => ctx.collection().nearest_filtered(FIELD, &vector, query.k, &filter),
            None => ctx.collection().nearest(FIELD, &vector, query.k),
        }
    }

    /// Score candidates by the inner product of their stored embeddings with the query's, as
    /// `nearest` would; candidates without an embedding are left out.
    fn rerank(ctx: &Context, query: Query, candidates: Vec<String>) -> Result<Vec<Hit>> {
        let vector = embed_query(ctx, &query)?;
        let mut hits = Vec::with_capacity(candidates.len());
        for id in candidates {
            if let Some(FieldValue::Vector(stored)) = ctx.collection().get_field(&id, FIELD)? {
                let score = stored.iter().zip(&vector).map(|(a, b)| a * b).sum();
                hits.push(Hit::new(id, score));
            }
        }
        Ok(quarry_sdk::top_k(hits, query.k as usize))
    }
}

fn embed_query(ctx: &Context, query: &Query) -> Result<Vec<f32>> {
    match (&query.text, &query.image) {
        (Some(text), _) => encoders::embed_text(&ctx.param::<String>("text-model")?, text),
        (None, Some(image)) => encoders::embed_images(&image_model(ctx)?, std::slice::from_ref(image))?
            .pop()
            .ok_or_else(|| Error::internal("host returned no image embedding")),
        (None, None) => Err(Error::invalid("a dense query needs text or an image")),
    }
}

quarry_sdk::export_strategy!(Dense);
