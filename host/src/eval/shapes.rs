//! The shapes world as a built-in benchmark (`quarry eval shapes WORLD`): three splits, each
//! testing one thing, and the strategies each split compares.
//!
//! - **fine**: five scenes per group differ only in a small shape's colour. `dense` (one global
//!   embedding, dominated by the large shape) against `tgdt` (token-level matching).
//! - **composed**: a reference image plus a one- or two-attribute modification. `lincir` against
//!   the image alone and the text alone (`dense`), the reference left out of every ranking.
//! - **generative**: every combination drawn four times, so AVG identifiers collide. `dense`
//!   exact search against `avg` with its zero-shot scorer (a decoder needs a model made from
//!   the learned codebook; see tests/models/avg_decoder.py).

use super::{EvalSet, QueryParam, QueryParts, StrategySpec, jsonl};
use crate::api::Quarry;
use anyhow::{Context as _, Result, bail};
use std::path::Path;

/// The splits, in the order they run.
pub const SPLITS: [&str; 3] = ["fine", "composed", "generative"];

/// The world's models every split's strategies use.
pub const MODELS: [&str; 4] = ["shapes-image", "shapes-text", "shapes-text-slots", "shapes-phi"];

/// The plugins the built-in strategies name.
pub const PLUGINS: [&str; 4] = ["dense@0.3.0", "tgdt@0.2.0", "lincir@0.2.0", "avg@0.1.0"];

/// Register the world's models with `host`, unless models of those names are there already.
pub fn register_models(host: &Quarry, world: &Path) -> Result<()> {
    for model in MODELS {
        if !host.models().contains(model) {
            let manifest = world.join(format!("{model}.json"));
            host.add_model_file(&manifest).with_context(|| format!("cannot register the shapes world's model {}", manifest.display()))?;
        }
    }
    Ok(())
}

/// Split `split` of the world in `world`.
pub fn split(world: &Path, split: &str) -> Result<EvalSet> {
    if !SPLITS.contains(&split) {
        bail!("the shapes world has no split `{}`; its splits are {}", crate::printable::printable(split, 40), SPLITS.join(", "));
    }
    let folder = world.join("splits").join(split);
    if !folder.join("queries.jsonl").is_file() {
        bail!(
            "{} has no shapes world splits; generate the world with `vendor/venv/bin/python tests/models/shapes_world.py {} --seed 7 \
             --clip-vocab vendor/models/clip-bpe/bpe_simple_vocab_16e6.txt.gz`",
            world.display(),
            world.display()
        );
    }
    jsonl::load(&format!("shapes {split}"), &format!("shapes-{split}"), world, &folder)
}

fn spec(name: &str, strategy: &str, models: &[&str], config: serde_json::Value) -> StrategySpec {
    StrategySpec {
        name: name.into(),
        strategy: strategy.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        config,
        params: serde_json::json!({}),
        query: QueryParts::Both,
        build: false,
        query_params: Vec::new(),
    }
}

/// The strategies `split` compares.
pub fn strategies(split: &str) -> Vec<StrategySpec> {
    let dense = || spec("dense", "dense@0.3.0", &["shapes-text", "shapes-image"], serde_json::json!({"text-model": "shapes-text", "image-model": "shapes-image"}));
    match split {
        "fine" => vec![
            dense(),
            spec(
                "tgdt",
                "tgdt@0.2.0",
                &["shapes-text", "shapes-image"],
                // shapes-text's first and last rows are its start and end tokens; the image's
                // patch tokens have no CLS slot.
                serde_json::json!({"text-model": "shapes-text", "image-model": "shapes-image",
                                   "exclude": {"text": {"first": 1, "last": 1}, "image": {"first": 0, "last": 0}}}),
            ),
        ],
        "composed" => vec![
            StrategySpec {
                query_params: vec![QueryParam::Reference],
                ..spec(
                    "lincir",
                    "lincir@0.2.0",
                    &["shapes-text-slots", "shapes-image", "shapes-phi"],
                    serde_json::json!({"text-model": "shapes-text-slots", "image-model": "shapes-image", "projector": "shapes-phi"}),
                )
            },
            StrategySpec { name: "image-only".into(), query: QueryParts::Image, ..dense() },
            StrategySpec { name: "text-only".into(), query: QueryParts::Text, ..dense() },
        ],
        "generative" => vec![
            dense(),
            StrategySpec {
                build: true,
                // 256 codewords for 720 drawings of 180 scenes: a scene's drawings share one
                // identifier, as AVG's do when a gallery outgrows its codebook.
                ..spec("avg", "avg@0.1.0", &["shapes-image", "shapes-text"], serde_json::json!({"image-model": "shapes-image", "text-model": "shapes-text", "k": 256}))
            },
        ],
        _ => Vec::new(),
    }
}
