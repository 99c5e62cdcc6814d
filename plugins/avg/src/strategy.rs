//! The AVG strategy plugin.
//!
//! - **ingest** embeds each item's image (`image-model`) into field `embedding`; once a
//!   codebook exists, it also writes the item's identifier (field `identifier`).
//! - **build** learns the shared residual codebook from a bounded sample of the collection's
//!   embeddings (read page by page with `scan`), stores it as blob `avg-codebook`, and writes
//!   every item's identifier. Run it after ingest, and again to re-learn.
//! - **search** runs a trie-constrained beam search over the stored identifiers (the host's
//!   `next-codes`), scored by a decoder when the route configures one (`decoder`), else zero-shot:
//!   the query text's embedding against the codebook's reconstruction of each prefix plus each
//!   allowed code. Every item of each returned identifier is returned, identifiers in beam
//!   order, items within one by their embedding's similarity to the query.
//! - **top-up**: when the beams yield fewer than `k` items, the rest are the query's nearest
//!   neighbours on `embedding` that the beams did not return, ranked after every beam item.
//!
//! Scores order hits as described: `2 * (sequences - group) + similarity` for beam items
//! (similarity of normalised embeddings lies in [-1, 1]), `similarity - 2` for top-ups. Hit
//! features: `group` (the identifier's rank, from 0), `sequence-score` (the scorer's score of
//! the identifier), `similarity`, and `decoder` or `zero-shot` (1) naming the scorer; top-ups
//! carry `top-up`.

use crate::beam::{self, DecoderScorer, Scorer, Trie, ZeroShotScorer};
use crate::codebook::{self, Codebook, LearnConfig, Reservoir};
use quarry_sdk::{encoders, Collection, Context, Descriptor, Error, FieldKind, FieldValue, Hit, Item, Metric, Query, Result, Strategy};
use serde::Deserialize;

const EMBEDDING: &str = "embedding";
const IDENTIFIER: &str = "identifier";
const CODEBOOK: &str = "avg-codebook";
/// Values per `scan` page while building.
const PAGE: u32 = 512;
/// Bounds on the config, so a typo is an error rather than a build that cannot finish.
const MAX_K: usize = 65_536;
const MAX_BEAM: usize = 1_000;
const MAX_SAMPLE: usize = 1 << 20;
const MAX_ITERATIONS: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    image_model: String,
    /// Embeds query texts into the image model's space (zero-shot scoring, ranking in groups).
    text_model: String,
    /// A decoder generating identifiers from the query text; zero-shot scoring without one.
    decoder: Option<String>,
    /// The decoder's token for code 0 (codes follow the base vocabulary, as in AVG).
    #[serde(default)]
    decoder_offset: u32,
    #[serde(default = "levels")]
    levels: usize,
    #[serde(default = "k")]
    k: usize,
    #[serde(default = "ten")]
    beam: usize,
    /// Identifiers the beam search returns.
    #[serde(default = "ten")]
    sequences: usize,
    /// Embeddings the codebook is learned from (a uniform sample of the collection).
    #[serde(default = "sample")]
    sample: usize,
    #[serde(default = "ten")]
    iterations: usize,
}

fn levels() -> usize {
    4
}
fn k() -> usize {
    1024
}
fn ten() -> usize {
    10
}
fn sample() -> usize {
    4096
}

fn config(ctx: &Context) -> Result<Config> {
    let config: Config = serde_json::from_value(ctx.config().clone()).map_err(|e| Error::invalid(format!("route config: {e}")))?;
    let within = |value: usize, max: usize| (1..=max).contains(&value);
    if !within(config.levels, codebook::MAX_LEVELS)
        || !within(config.k, MAX_K)
        || !within(config.beam, MAX_BEAM)
        || !within(config.sequences, MAX_BEAM)
        || !within(config.sample, MAX_SAMPLE)
        || config.iterations > MAX_ITERATIONS
    {
        return Err(Error::invalid(format!(
            "route config: `levels` must be 1-{}, `k` 1-{MAX_K}, `beam` and `sequences` 1-{MAX_BEAM}, `sample` 1-{MAX_SAMPLE} \
             and `iterations` 0-{MAX_ITERATIONS}",
            codebook::MAX_LEVELS
        )));
    }
    Ok(config)
}

fn codebook_error(e: codebook::CodebookError) -> Error {
    Error::internal(format!("codebook: {e}"))
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn stored_codebook(c: &Collection) -> Result<Option<Codebook>> {
    c.get_blob(CODEBOOK)?.map(|bytes| Codebook::from_bytes(&bytes).map_err(codebook_error)).transpose()
}

/// The identifier trie, in the host.
struct HostTrie<'a>(&'a Collection);

impl Trie for HostTrie<'_> {
    type Error = Error;
    fn next_codes(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        self.0.next_codes(IDENTIFIER, prefixes)
    }
}

fn search_with<S: Scorer>(c: &Collection, scorer: &mut S, config: &Config) -> Result<beam::Ranked>
where
    S::Error: std::fmt::Display,
{
    beam::beam_search(&mut HostTrie(c), scorer, config.levels, config.beam, config.sequences).map_err(|e| match e {
        beam::BeamError::Trie(e) => e,
        other => Error::internal(format!("beam search: {other}")),
    })
}

pub(crate) struct Avg;

impl Strategy for Avg {
    fn describe() -> Descriptor {
        Descriptor::new("avg", env!("CARGO_PKG_VERSION"))
            .description(
                "Generative retrieval with visual-token identifiers (AVG): a shared residual codebook over image embeddings, \
                 trie-constrained beam search scored by a decoder (`decoder`) or zero-shot by the codebook; hits say which.",
            )
            .model("image-model")
            .model("text-model")
            .model("decoder")
            .vector_field_with(EMBEDDING, Metric::InnerProduct)
            .field(IDENTIFIER, FieldKind::Codes)
            .config_schema(serde_json::json!({
                "type": "object",
                "properties": {
                    "image-model": {"type": "string", "description": "embeds gallery images"},
                    "text-model": {"type": "string", "description": "embeds query texts into the image model's space"},
                    "decoder": {"type": "string", "description": "generates identifiers from the query text; zero-shot scoring without one"},
                    "decoder-offset": {"type": "integer", "minimum": 0, "default": 0, "description": "the decoder's token for code 0"},
                    "levels": {"type": "integer", "minimum": 1, "maximum": codebook::MAX_LEVELS, "default": 4, "description": "codes per identifier (L)"},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 1024, "description": "codewords (K), fewer for small collections"},
                    "beam": {"type": "integer", "minimum": 1, "maximum": MAX_BEAM, "default": 10},
                    "sequences": {"type": "integer", "minimum": 1, "maximum": MAX_BEAM, "default": 10, "description": "identifiers a search returns"},
                    "sample": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLE, "default": 4096, "description": "embeddings the codebook is learned from"},
                    "iterations": {"type": "integer", "minimum": 0, "maximum": MAX_ITERATIONS, "default": 10, "description": "Lloyd iterations per stage"}
                },
                "required": ["image-model", "text-model"],
                "additionalProperties": false
            }))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let config = config(ctx)?;
        let c = ctx.collection();
        let (ids, images): (Vec<String>, Vec<Vec<u8>>) = items
            .into_iter()
            .map(|i| i.image.map(|image| (i.id.clone(), image)).ok_or_else(|| Error::invalid(format!("`{}` has no image; avg indexes images", i.id))))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let codebook = stored_codebook(c)?;
        for (id, vector) in ids.iter().zip(encoders::embed_images(&config.image_model, &images)?) {
            let vector = normalized(vector);
            if let Some(codebook) = &codebook {
                c.put_field(id, IDENTIFIER, &FieldValue::Codes(codebook.encode(&vector).map_err(codebook_error)?))?;
            }
            c.put_vector(id, EMBEDDING, vector)?;
        }
        Ok(())
    }

    fn build(ctx: &Context) -> Result<()> {
        let config = config(ctx)?;
        let c = ctx.collection();
        let mut reservoir: Option<Reservoir> = None;
        for entry in c.scan_all(EMBEDDING, PAGE) {
            let FieldValue::Vector(v) = entry?.value else { continue };
            let sample = match &mut reservoir {
                Some(r) => r,
                None => reservoir.insert(Reservoir::new(v.len(), config.sample, 0x5EED_A7C0_DE00_0001).map_err(codebook_error)?),
            };
            sample.push(&v).map_err(codebook_error)?;
        }
        let Some(sample) = reservoir.filter(|r| !r.is_empty()) else {
            return Err(Error::invalid("the collection has no embeddings yet; ingest images before building"));
        };
        let dim = sample.as_slice().len() / sample.len();
        let learn = LearnConfig { k: config.k, levels: config.levels, iterations: config.iterations, max_sample: config.sample, ..LearnConfig::default() };
        let codebook = codebook::learn(sample.as_slice(), dim, &learn).map_err(codebook_error)?;
        c.put_blob(CODEBOOK, &codebook.to_bytes())?;
        quarry_sdk::log::info(&format!("avg: learned {} codewords x {} levels from {} embeddings", codebook.k(), codebook.levels(), sample.len()));
        for entry in c.scan_all(EMBEDDING, PAGE) {
            let entry = entry?;
            let FieldValue::Vector(v) = entry.value else { continue };
            c.put_field(&entry.id, IDENTIFIER, &FieldValue::Codes(codebook.encode(&v).map_err(codebook_error)?))?;
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let config = config(ctx)?;
        let c = ctx.collection();
        let k = query.k as usize;
        let text = query.text.as_deref().filter(|t| !t.trim().is_empty());
        let q = match (text, &query.image) {
            (Some(text), _) => normalized(encoders::embed_text(&config.text_model, text)?),
            (None, Some(image)) => normalized(
                encoders::embed_images(&config.image_model, std::slice::from_ref(image))?.pop().ok_or_else(|| Error::internal("the host returned no image embedding"))?,
            ),
            (None, None) => return Err(Error::invalid("an avg query needs a text or an image")),
        };
        let codebook = stored_codebook(c)?.ok_or_else(|| Error::invalid(format!("this collection has no codebook yet; run `quarry build {}` after ingest", c.name())))?;
        let (ranked, scorer) = match (&config.decoder, text) {
            (Some(decoder), Some(text)) => {
                let generation = quarry_sdk::decoders::Generation::start(decoder, text)?;
                let mut scorer = DecoderScorer::new(|prefixes: &[Vec<u32>]| generation.next_logprobs(prefixes), config.decoder_offset);
                (search_with(c, &mut scorer, &config)?, "decoder")
            }
            _ => {
                let mut scorer = ZeroShotScorer::new(&codebook, &q).map_err(codebook_error)?;
                (search_with(c, &mut scorer, &config)?, "zero-shot")
            }
        };
        let groups = ranked.len();
        let mut hits = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (group, (identifier, sequence_score)) in ranked.iter().enumerate() {
            let mut members: Vec<(String, f32)> = Vec::new();
            for id in c.items_with_codes(IDENTIFIER, identifier)? {
                if let Some(FieldValue::Vector(e)) = c.get_field(&id, EMBEDDING)? {
                    members.push((id, dot(&q, &e)));
                }
            }
            members.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            for (id, similarity) in members {
                seen.insert(id.clone());
                let score = 2.0 * (groups - group) as f32 + similarity;
                hits.push(
                    Hit::new(id, score)
                        .with_feature("group", group as f32)
                        .with_feature("sequence-score", *sequence_score)
                        .with_feature("similarity", similarity)
                        .with_feature(scorer, 1.0),
                );
            }
        }
        if hits.len() < k {
            let wanted = (k - hits.len() + seen.len()) as u32;
            for near in c.nearest(EMBEDDING, &q, wanted)? {
                if hits.len() >= k {
                    break;
                }
                if !seen.contains(&near.id) {
                    hits.push(Hit::new(near.id, near.score - 2.0).with_feature("similarity", near.score).with_feature("top-up", 1.0));
                }
            }
        }
        Ok(hits)
    }
}

quarry_sdk::export_strategy!(Avg);
