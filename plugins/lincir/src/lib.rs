//! `lincir`: zero-shot composed image retrieval. A query image becomes a pseudo-word: its
//! embedding, projected by φ into the text encoder's token space, fills the placeholder of a
//! template around the modification text ("a photo of $ that is blue"). The composed text
//! embedding is then matched against the gallery's image embeddings.
//!
//! Config: `text-model` (slot-capable), `image-model`, `projector` (φ), and `template`, which
//! must contain `$` (the placeholder) and `{text}` (the modification).

use quarry_sdk::encoders::{self, SlottedText};
use quarry_sdk::{Context, Descriptor, Error, Hit, Item, Query, Result, Strategy};

const FIELD: &str = "embedding";
const DEFAULT_TEMPLATE: &str = "a photo of $ that {text}";

struct Lincir;

fn first(mut vectors: Vec<Vec<f32>>, what: &str) -> Result<Vec<f32>> {
    vectors.pop().ok_or_else(|| Error::internal(format!("the host returned no {what}")))
}

impl Strategy for Lincir {
    fn describe() -> Descriptor {
        Descriptor::new("lincir", env!("CARGO_PKG_VERSION"))
            .description("Composed image retrieval: query image as a pseudo-word in a text template.")
            .model("text-model")
            .model("image-model")
            .model("projector")
            .vector_field(FIELD)
            .config_schema(serde_json::json!({
                "type": "object",
                "properties": {
                    "text-model": {"type": "string", "description": "slot-capable text encoder"},
                    "image-model": {"type": "string", "description": "image encoder in the text encoder's space"},
                    "projector": {"type": "string", "description": "φ: image embedding to token embedding"},
                    "template": {"type": "string", "default": DEFAULT_TEMPLATE}
                },
                "required": ["text-model", "image-model", "projector"]
            }))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let image_model: String = ctx.param("image-model")?;
        let (ids, images): (Vec<String>, Vec<Vec<u8>>) = items
            .into_iter()
            .map(|i| i.image.map(|image| (i.id.clone(), image)).ok_or_else(|| Error::invalid(format!("`{}` has no image; lincir indexes images", i.id))))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        for (id, vector) in ids.iter().zip(encoders::embed_images(&image_model, &images)?) {
            ctx.collection().put_vector(id, FIELD, vector)?;
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let text_model: String = ctx.param("text-model")?;
        let image_model: String = ctx.param("image-model")?;
        let vector = match (&query.image, &query.text) {
            (Some(image), Some(text)) => {
                let template: String = ctx.param_or("template", DEFAULT_TEMPLATE.to_string())?;
                if !template.contains('$') || !template.contains("{text}") {
                    return Err(Error::invalid("`template` must contain `$` and `{text}`"));
                }
                let image_vector = first(encoders::embed_images(&image_model, std::slice::from_ref(image))?, "image embedding")?;
                let pseudo_word = first(encoders::project(&ctx.param::<String>("projector")?, &[image_vector])?, "projection")?;
                let slotted = SlottedText { template: template.replace("{text}", text), slots: vec![pseudo_word] };
                first(encoders::embed_texts_with_slots(&text_model, &[slotted])?, "composed embedding")?
            }
            (Some(image), None) => first(encoders::embed_images(&image_model, std::slice::from_ref(image))?, "image embedding")?,
            (None, Some(text)) => encoders::embed_text(&text_model, text)?,
            (None, None) => return Err(Error::invalid("a lincir query needs an image, a text, or both")),
        };
        ctx.collection().nearest(FIELD, &vector, query.k)
    }
}

quarry_sdk::export_strategy!(Lincir);
