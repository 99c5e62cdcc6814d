//! `lincir`: zero-shot composed image retrieval, as navervision/lincir runs it. A query image
//! becomes a pseudo-word: its embedding, projected by φ into the text encoder's token space,
//! replaces the placeholder `$` of a template around the modification text ("a photo of $ that
//! is blue"); the text encoder's output (its end-of-text state after the text projection,
//! normalised, as the model's manifest says) is matched by cosine against the gallery's
//! normalised image embeddings.
//!
//! - A composed query's reference image is never a hit (as CIRR evaluates): the one named by
//!   `params.reference` (an item id), and every gallery image with the same bytes (matched by a
//!   content hash stored at ingest). An image alone is a plain image search, which finds itself.
//! - Two captions (`params.captions`, FashionIQ's relative captions) are joined both ways,
//!   stripped, "c1 and c2" and "c2 and c1"; the query is the normalised mean of the two
//!   composed embeddings.
//!
//! Config: `text-model` (slot-capable), `image-model`, `projector` (φ), and `template`, which
//! must contain `$` (the placeholder) and `{text}` (the modification).

use quarry_sdk::encoders::{self, SlottedText};
use quarry_sdk::{Context, Descriptor, Error, FieldKind, FieldValue, Hit, Item, Query, Result, Strategy};

const FIELD: &str = "embedding";
/// A 128-bit hash of each image's bytes, as four codes, to find the query's own image.
const IMAGE_HASH: &str = "image-hash";
const DEFAULT_TEMPLATE: &str = "a photo of $ that {text}";

struct Lincir;

/// Per-query parameters.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The id of the query's reference image in the gallery, left out of the hits.
    reference: Option<String>,
    /// Two relative captions (FashionIQ), used instead of the query text.
    captions: Option<Vec<String>>,
}

fn first(mut vectors: Vec<Vec<f32>>, what: &str) -> Result<Vec<f32>> {
    vectors.pop().ok_or_else(|| Error::internal(format!("the host returned no {what}")))
}

/// FNV-1a over 128 bits, as four codes: stable, and enough to tell images apart.
fn image_hash(bytes: &[u8]) -> Vec<u32> {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let hash = bytes.iter().fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    (0..4).map(|i| (hash >> (32 * i)) as u32).collect()
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// What the reference implementation strips from the ends of a FashionIQ caption.
fn strip(caption: &str) -> &str {
    caption.trim().trim_matches(|c: char| matches!(c, '.' | '?' | ',' | ' '))
}

/// The modification texts of a query: its text, or two captions joined both ways.
fn modifications(query: &Query, params: &Params) -> Result<Vec<String>> {
    match (&params.captions, &query.text) {
        (Some(captions), _) => match captions.as_slice() {
            [a, b] => Ok(vec![format!("{} and {}", strip(a), strip(b)), format!("{} and {}", strip(b), strip(a))]),
            other => Err(Error::invalid(format!("`captions` holds {} captions; the two-caption mode takes two", other.len()))),
        },
        (None, Some(text)) => Ok(vec![text.clone()]),
        (None, None) => Ok(Vec::new()),
    }
}

impl Strategy for Lincir {
    fn describe() -> Descriptor {
        Descriptor::new("lincir", env!("CARGO_PKG_VERSION"))
            .description("Composed image retrieval: query image as a pseudo-word in a text template; the reference image is excluded.")
            .model("text-model")
            .model("image-model")
            .model("projector")
            .vector_field(FIELD)
            .field(IMAGE_HASH, FieldKind::Codes)
            .config_schema(serde_json::json!({
                "type": "object",
                "properties": {
                    "text-model": {"type": "string", "description": "slot-capable text encoder"},
                    "image-model": {"type": "string", "description": "image encoder in the text encoder's space"},
                    "projector": {"type": "string", "description": "φ: image embedding to token embedding"},
                    "template": {"type": "string", "default": DEFAULT_TEMPLATE, "description": "contains `$` (the pseudo-word) and `{text}` (the modification)"}
                },
                "required": ["text-model", "image-model", "projector"],
                "additionalProperties": false
            }))
            .query_param("reference", serde_json::json!({"type": "string", "description": "the reference image's id in the gallery, left out of the hits"}))
            .query_param("captions", serde_json::json!({"type": "array", "items": {"type": "string"}, "description": "two relative captions, used instead of the query text"}))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let image_model: String = ctx.param("image-model")?;
        let (ids, images): (Vec<String>, Vec<Vec<u8>>) = items
            .into_iter()
            .map(|i| i.image.map(|image| (i.id.clone(), image)).ok_or_else(|| Error::invalid(format!("`{}` has no image; lincir indexes images", i.id))))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        for ((id, vector), image) in ids.iter().zip(encoders::embed_images(&image_model, &images)?).zip(&images) {
            ctx.collection().put_vector(id, FIELD, vector)?;
            ctx.collection().put_field(id, IMAGE_HASH, &FieldValue::Codes(image_hash(image)))?;
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let text_model: String = ctx.param("text-model")?;
        let image_model: String = ctx.param("image-model")?;
        let params: Params = quarry_sdk::query_params(&query)?;
        let texts = modifications(&query, &params)?;
        let vector = match (&query.image, texts.is_empty()) {
            (Some(image), false) => {
                let template: String = ctx.param_or("template", DEFAULT_TEMPLATE.to_string())?;
                if !template.contains('$') || !template.contains("{text}") {
                    return Err(Error::invalid("`template` must contain `$` and `{text}`"));
                }
                let image_vector = first(encoders::embed_images(&image_model, std::slice::from_ref(image))?, "image embedding")?;
                let pseudo_word = first(encoders::project(&ctx.param::<String>("projector")?, &[image_vector])?, "projection")?;
                let slotted: Vec<SlottedText> = texts.iter().map(|t| SlottedText { template: template.replace("{text}", t), slots: vec![pseudo_word.clone()] }).collect();
                let composed = encoders::embed_texts_with_slots(&text_model, &slotted)?;
                let mut mean = vec![0f32; composed.first().map_or(0, Vec::len)];
                for v in &composed {
                    mean.iter_mut().zip(v).for_each(|(m, x)| *m += x);
                }
                normalize(&mut mean);
                mean
            }
            (Some(image), true) => first(encoders::embed_images(&image_model, std::slice::from_ref(image))?, "image embedding")?,
            (None, false) => encoders::embed_text(&text_model, &texts.join(" and "))?,
            (None, true) => return Err(Error::invalid("a lincir query needs an image, a text, or both")),
        };
        // A composed query's reference image: by name, and every gallery image with its bytes.
        let mut excluded: Vec<String> = params.reference.into_iter().collect();
        if let (Some(image), false) = (&query.image, texts.is_empty()) {
            excluded.extend(ctx.collection().items_with_codes(IMAGE_HASH, &image_hash(image))?);
        }
        let hits = ctx.collection().nearest(FIELD, &vector, query.k.saturating_add(excluded.len() as u32))?;
        Ok(hits.into_iter().filter(|h| !excluded.contains(&h.id)).take(query.k as usize).collect())
    }
}

quarry_sdk::export_strategy!(Lincir);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_hashes_tell_bytes_apart_and_are_stable() {
        assert_eq!(image_hash(b"abc"), image_hash(b"abc"));
        assert_ne!(image_hash(b"abc"), image_hash(b"abd"));
        assert_eq!(image_hash(b"").len(), 4);
    }

    #[test]
    fn two_captions_are_joined_both_ways_and_stripped() {
        let query = Query { text: None, image: None, k: 10, params: "{}".into() };
        let params = Params { reference: None, captions: Some(vec!["is red.".into(), " has a collar? ".into()]) };
        assert_eq!(modifications(&query, &params).unwrap(), ["is red and has a collar", "has a collar and is red"]);
        let params = Params { reference: None, captions: Some(vec!["one".into()]) };
        assert!(modifications(&query, &params).is_err());
    }
}
