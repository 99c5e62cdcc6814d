//! `tgdt`: coarse-to-fine retrieval as LCFractal/TGDT runs it, in both directions.
//!
//! - **Coarse**: the gallery's global embeddings nearest the query's (cosine, for normalised
//!   embeddings): the top 100 images for a text query, the top 50 texts for an image query.
//! - **Fine**: late interaction over token sets, computed in the host: for each candidate,
//!   `local` = the sum over the query's tokens of the best cosine with the candidate's tokens.
//! - **Score**: `final = w_g * global + w_l * local`, 1 and 10 by default as in the reference.
//!   Each hit carries `global` and `local` as features.
//!
//! Items are indexed by what they hold: an image into `image-global` and `image-tokens` (its
//! patches), a text into `text-global` and `text-tokens` (its words). Some token positions carry
//! no content and are left out, per model: the reference drops the image's CLS slot, and the
//! text's `[CLS]`, last word-piece and `[SEP]` (`exclude`, counted from either end).
//!
//! A query searches the gallery the route names (`gallery`: `images` or `texts`; by default
//! images when an `image-model` is configured, else texts), or `params.gallery`.

use quarry_sdk::{encoders, rankers, Context, Descriptor, Error, FieldKind, FieldValue, Hit, Item, Query, Result, Strategy, TokenSet};
use serde::Deserialize;

struct Tgdt;

/// Token positions to leave out at each end of a token set.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trim {
    #[serde(default)]
    first: usize,
    #[serde(default)]
    last: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Exclude {
    text: Trim,
    image: Trim,
}

impl Default for Exclude {
    /// The reference's: a BERT text's `[CLS]`, last word-piece and `[SEP]`; a ViT image's CLS.
    fn default() -> Self {
        Exclude { text: Trim { first: 1, last: 2 }, image: Trim { first: 1, last: 0 } }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Candidates {
    images: u32,
    texts: u32,
}

impl Default for Candidates {
    fn default() -> Self {
        Candidates { images: 100, texts: 50 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Weights {
    global: f32,
    local: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { global: 1.0, local: 10.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Gallery {
    Images,
    Texts,
}

impl Gallery {
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Gallery::Images => ("image-global", "image-tokens"),
            Gallery::Texts => ("text-global", "text-tokens"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    text_model: Option<String>,
    image_model: Option<String>,
    gallery: Option<Gallery>,
    #[serde(default)]
    candidates: Candidates,
    #[serde(default)]
    weights: Weights,
    #[serde(default)]
    exclude: Exclude,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    gallery: Option<Gallery>,
}

fn config(ctx: &Context) -> Result<Config> {
    let config: Config = serde_json::from_value(ctx.config().clone()).map_err(|e| Error::invalid(format!("route config: {e}")))?;
    if config.text_model.is_none() && config.image_model.is_none() {
        return Err(Error::invalid("route config needs `text-model`, `image-model`, or both"));
    }
    Ok(config)
}

impl Config {
    fn model(&self, images: bool) -> Result<&str> {
        let (model, key) = if images { (&self.image_model, "image-model") } else { (&self.text_model, "text-model") };
        model.as_deref().ok_or_else(|| Error::invalid(format!("route config has no `{key}` for this query or item")))
    }
}

/// The token set without `trim`'s positions (none left when the set is that short).
fn trimmed(set: TokenSet, trim: Trim) -> TokenSet {
    let dim = set.dim.max(1) as usize;
    let count = set.data.len() / dim;
    let keep = trim.first.min(count)..count.saturating_sub(trim.last).max(trim.first.min(count));
    TokenSet { dim: set.dim, data: set.data[keep.start * dim..keep.end * dim].to_vec() }
}

fn one<T>(mut values: Vec<T>, what: &str) -> Result<T> {
    values.pop().ok_or_else(|| Error::internal(format!("the host returned no {what}")))
}

impl Strategy for Tgdt {
    fn describe() -> Descriptor {
        Descriptor::new("tgdt", env!("CARGO_PKG_VERSION"))
            .description("Coarse-to-fine: global nearest neighbours, re-ranked by global + 10 x token-level MaxSim; texts and images, both directions.")
            .model("text-model")
            .model("image-model")
            .vector_field("image-global")
            .field("image-tokens", FieldKind::Tokens)
            .vector_field("text-global")
            .field("text-tokens", FieldKind::Tokens)
            .config_schema(serde_json::json!({
                "type": "object",
                "properties": {
                    "text-model": {"type": "string", "description": "text encoder with a per-token output"},
                    "image-model": {"type": "string", "description": "image encoder with a per-patch output, in the text encoder's space"},
                    "gallery": {"enum": ["images", "texts"], "description": "what queries search (default: images if there is an image-model)"},
                    "candidates": {
                        "type": "object",
                        "properties": {"images": {"type": "integer", "minimum": 1, "default": 100}, "texts": {"type": "integer", "minimum": 1, "default": 50}},
                        "additionalProperties": false,
                        "description": "how many global neighbours the fine stage re-ranks, per gallery"
                    },
                    "weights": {
                        "type": "object",
                        "properties": {"global": {"type": "number", "default": 1.0}, "local": {"type": "number", "default": 10.0}},
                        "additionalProperties": false
                    },
                    "exclude": {
                        "type": "object",
                        "description": "token positions with no content, left out at each end",
                        "properties": {
                            "text": {"type": "object", "properties": {"first": {"type": "integer", "minimum": 0}, "last": {"type": "integer", "minimum": 0}}, "additionalProperties": false, "default": {"first": 1, "last": 2}},
                            "image": {"type": "object", "properties": {"first": {"type": "integer", "minimum": 0}, "last": {"type": "integer", "minimum": 0}}, "additionalProperties": false, "default": {"first": 1, "last": 0}}
                        },
                        "additionalProperties": false
                    }
                },
                "additionalProperties": false
            }))
            .query_param("gallery", serde_json::json!({"enum": ["images", "texts"], "description": "what this query searches"}))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let config = config(ctx)?;
        let c = ctx.collection();
        let (ids, texts): (Vec<String>, Vec<String>) = items.iter().filter_map(|i| i.text.clone().map(|t| (i.id.clone(), t))).unzip();
        if !texts.is_empty() && config.text_model.is_some() {
            let model = config.model(false)?;
            let globals = encoders::embed_texts(model, &texts)?;
            let tokens = encoders::text_tokens(model, &texts)?;
            for ((id, global), tokens) in ids.iter().zip(globals).zip(tokens) {
                c.put_vector(id, "text-global", global)?;
                c.put_field(id, "text-tokens", &FieldValue::Tokens(trimmed(tokens, config.exclude.text)))?;
            }
        }
        let (ids, images): (Vec<String>, Vec<Vec<u8>>) = items.iter().filter_map(|i| i.image.clone().map(|m| (i.id.clone(), m))).unzip();
        if !images.is_empty() {
            let model = config.model(true)?;
            let globals = encoders::embed_images(model, &images)?;
            let tokens = encoders::image_tokens(model, &images)?;
            for ((id, global), tokens) in ids.iter().zip(globals).zip(tokens) {
                c.put_vector(id, "image-global", global)?;
                c.put_field(id, "image-tokens", &FieldValue::Tokens(trimmed(tokens, config.exclude.image)))?;
            }
        }
        if items.iter().all(|i| i.text.is_none() && i.image.is_none()) {
            return Err(Error::invalid("tgdt indexes texts and images; these items have neither"));
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let config = config(ctx)?;
        let params: Params = quarry_sdk::query_params(&query)?;
        let gallery = params.gallery.or(config.gallery).unwrap_or(if config.image_model.is_some() { Gallery::Images } else { Gallery::Texts });
        // The query's global embedding and its content tokens.
        let (global, tokens) = match (&query.text, &query.image) {
            (Some(text), _) => {
                let model = config.model(false)?;
                let texts = std::slice::from_ref(text);
                (one(encoders::embed_texts(model, texts)?, "text embedding")?, trimmed(one(encoders::text_tokens(model, texts)?, "text tokens")?, config.exclude.text))
            }
            (None, Some(image)) => {
                let model = config.model(true)?;
                let images = std::slice::from_ref(image);
                (one(encoders::embed_images(model, images)?, "image embedding")?, trimmed(one(encoders::image_tokens(model, images)?, "image tokens")?, config.exclude.image))
            }
            (None, None) => return Err(Error::invalid("a tgdt query needs a text or an image")),
        };
        let (global_field, token_field) = gallery.fields();
        let k = match gallery {
            Gallery::Images => config.candidates.images,
            Gallery::Texts => config.candidates.texts,
        };
        let coarse = ctx.collection().nearest(global_field, &global, k.max(query.k))?;
        let ids: Vec<String> = coarse.iter().map(|h| h.id.clone()).collect();
        let local: std::collections::HashMap<String, f32> =
            rankers::late_interaction(ctx.collection().name(), token_field, &tokens, &ids)?.into_iter().map(|h| (h.id, h.score)).collect();
        let Weights { global: w_g, local: w_l } = config.weights;
        let hits = coarse.into_iter().map(|h| {
            // A candidate without tokens (none stored) scores on its global part alone.
            let local = local.get(&h.id).copied().unwrap_or(0.0);
            Hit::new(h.id, w_g * h.score + w_l * local).with_feature("global", h.score).with_feature("local", local)
        });
        Ok(quarry_sdk::top_k(hits, query.k as usize))
    }
}

quarry_sdk::export_strategy!(Tgdt);

#[cfg(test)]
mod tests {
    use super::*;

    fn set(count: usize) -> TokenSet {
        TokenSet { dim: 2, data: (0..count * 2).map(|x| x as f32).collect() }
    }

    #[test]
    fn trimming_leaves_out_positions_at_both_ends_and_never_underflows() {
        let t = trimmed(set(5), Trim { first: 1, last: 2 });
        assert_eq!(t.data, [2.0, 3.0, 4.0, 5.0]);
        assert!(trimmed(set(2), Trim { first: 1, last: 2 }).data.is_empty());
        assert!(trimmed(set(0), Trim { first: 1, last: 0 }).data.is_empty());
        assert_eq!(trimmed(set(3), Trim { first: 0, last: 0 }).data.len(), 6);
    }

    #[test]
    fn the_defaults_are_the_references() {
        let config: Config = serde_json::from_value(serde_json::json!({"text-model": "t"})).unwrap();
        assert_eq!((config.candidates.images, config.candidates.texts), (100, 50));
        assert_eq!((config.weights.global, config.weights.local), (1.0, 10.0));
        assert_eq!((config.exclude.text.first, config.exclude.text.last, config.exclude.image.first), (1, 2, 1));
        assert!(serde_json::from_value::<Config>(serde_json::json!({"text-modle": "t"})).is_err(), "misspelt keys are refused");
    }
}
