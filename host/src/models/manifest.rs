//! Model manifests: everything the host needs to run an ONNX export, with no code change.
//! `quarry schema model` prints the JSON Schema.

use anyhow::{Context as _, Result, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Describes one model: its role, files, tensor names, tokenizer or image preprocessing,
/// pooling, batch limits and execution provider. Relative paths are resolved against the
/// manifest's own folder.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ModelManifest {
    /// The name plugins use to call the model, granted per route.
    pub name: String,
    pub role: ModelRole,
    pub files: ModelFiles,
    /// Graph input names; leave an input out if the graph does not take it.
    #[serde(default)]
    pub inputs: InputNames,
    /// The graph output to read.
    pub output: OutputSpec,
    /// The output holding per-token (or per-patch) states `[batch, tokens, dim]`, which
    /// `text-tokens` and `image-tokens` return. Defaults to `output.name` when its kind is `tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_output: Option<String>,
    /// Text models: how to tokenize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerSpec>,
    /// Text models that can take slot vectors in place of a placeholder token's embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<SlotSpec>,
    /// Decoders: how to drive generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<DecoderSpec>,
    /// Image models: how to turn a decoded image into `pixel_values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<ImagePreprocess>,
    /// How token states become one vector (ignored when the output is already pooled).
    #[serde(default)]
    pub pooling: Pooling,
    /// L2-normalise embeddings, so inner product is cosine similarity.
    #[serde(default = "yes")]
    pub normalize: bool,
    #[serde(default)]
    pub batch: BatchLimits,
    #[serde(default)]
    pub execution_provider: ExecutionProvider,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ModelRole {
    /// Texts to embeddings (`embed-texts`, `text-tokens`).
    TextEncoder,
    /// Images to embeddings (`embed-images`, `image-tokens`).
    ImageEncoder,
    /// Vectors to vectors (`project`), e.g. LinCIR's image-embedding-to-token map.
    Projector,
    /// Prompt to next-token log-probabilities, step by step (`decoders.generation`).
    Decoder,
    /// (query, text) pairs to relevance scores (`rankers.cross-score`): the pair is tokenized
    /// as two segments, and the first value of each output row (`[batch, 1]` logits) is the score.
    CrossEncoder,
}

/// How to drive a decoder. Encoder-decoder layouts (`files.encoder` set) encode the prompt once
/// with the encoder and pass its states to every decoder step; decoder-only layouts put the
/// prompt's tokens before each prefix.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecoderSpec {
    /// The decoder's token input `[batch, steps]`.
    pub input_ids: String,
    /// Encoder-decoder: the decoder input taking the encoder's states (the encoder's output is
    /// `output.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_hidden_states: Option<String>,
    /// Encoder-decoder: the decoder input taking the prompt's attention mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_attention_mask: Option<String>,
    /// The decoder output `[batch, steps, vocab]`.
    pub logits: String,
    /// Prepended to every prefix (BOS / decoder start token).
    pub start_token: u32,
    /// The decoder's own attention-mask input `[batch, past + steps]` (decoder-only exports
    /// usually have one); the host feeds ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<String>,
    /// The decoder's position input `[batch, steps]`; the host feeds each token's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_ids: Option<String>,
    /// Exports with past key/values: the host keeps them between steps, so each step runs only
    /// the new token of every beam.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

/// How a decoder's key/value cache is named. Every graph input starting with `past_prefix`
/// (`past_key_values.0.key`, …) is fed from the output named `present_prefix` + the same suffix
/// (`present.0.key`) of the previous step. Cache tensors are f32 `[batch, …, past, …]`: batch
/// first, one dynamic past-length axis, every other axis fixed in the export.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    pub past_prefix: String,
    pub present_prefix: String,
}

/// How a text encoder takes slot vectors in place of placeholder tokens' embeddings. Two export
/// layouts work:
/// - the graph takes the slot vectors and a slot mask next to the token ids (`mask_input`);
/// - the graph takes `inputs_embeds` instead of token ids (`token_embeddings`): the host looks the
///   tokens up with the model's embedding layer, exported as its own graph, and puts the slot
///   vectors at the placeholders.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    /// The placeholder token in templates (for example `$`); it must be one token.
    pub placeholder: String,
    /// Input `[batch, tokens, dim]`: the slot vectors at their positions (with `mask_input`), or
    /// every token's embedding (with `token_embeddings`).
    pub embeds_input: String,
    /// Input `[batch, tokens]` (float), 1 where a slot replaces the token embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_input: Option<String>,
    /// The embedding layer as a graph `[batch, tokens]` token ids → `[batch, tokens, dim]`
    /// (for Hugging Face models, `model.get_input_embeddings()` exported alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_embeddings: Option<PathBuf>,
    /// Length of a slot vector (the model's token-embedding size).
    pub dim: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelFiles {
    /// The `.onnx` graph.
    pub model: PathBuf,
    /// A Hugging Face `tokenizer.json` (text models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Decoders with an encoder-decoder layout: the encoder graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<PathBuf>,
    /// Decoders whose export splits the graph that takes past key/values from the first-step
    /// graph (optimum's `decoder_with_past_model.onnx` next to `decoder_model.onnx`): `model`
    /// runs the first step and full passes and outputs every cache tensor; this one runs the
    /// steps after. Cache tensors it does not output (cross-attention keys/values) are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_with_past: Option<PathBuf>,
    /// SHA-256 (hex) of each of the model's files, by path, recorded by `quarry model add`.
    /// Every host checks its own copies against them before it loads the model, so replicas
    /// provisioned with other files refuse to serve them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sha256: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputNames {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_ids: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type_ids: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_values: Option<String>,
    /// Projectors: the `[batch, dim]` input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<String>,
}

impl Default for InputNames {
    /// The names HF/optimum and sentence-transformers exports use.
    fn default() -> Self {
        InputNames {
            input_ids: Some("input_ids".into()),
            attention_mask: Some("attention_mask".into()),
            token_type_ids: None,
            pixel_values: Some("pixel_values".into()),
            vectors: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Output tensor name, e.g. `text_embeds`, `image_embeds`, `last_hidden_state`.
    pub name: String,
    /// `pooled` for `[batch, dim]`, `tokens` for `[batch, tokens, dim]`.
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Pooled,
    Tokens,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over non-padding tokens (sentence-transformers).
    #[default]
    Mean,
    /// The first token (BERT's `[CLS]`).
    Cls,
    /// The last real token (CLIP's end-of-text).
    Last,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    /// `hf-json` (the default): a Hugging Face tokenizer.json named by `files.tokenizer`.
    /// `clip-bpe`: OpenAI CLIP's BPE, with the bundled vocabulary or the
    /// `bpe_simple_vocab_16e6.txt` named by `files.tokenizer`.
    #[serde(default)]
    pub kind: TokenizerKind,
    /// Longer texts are truncated to this many tokens, special tokens included.
    pub max_length: usize,
    /// Pad every batch to exactly this length (CLIP exports need 77); otherwise pad to the longest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_to: Option<usize>,
    /// Padding token id.
    #[serde(default)]
    pub pad_id: u32,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    #[default]
    HfJson,
    ClipBpe,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocess {
    /// The shorter side is resized to this many pixels (bicubic).
    pub resize: u32,
    /// Then a centred square of this size is cut out.
    pub crop: u32,
    /// Per-channel (RGB) mean and standard deviation, applied to values in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchLimits {
    /// Most inputs per inference run; larger requests are split, concurrent ones merged.
    pub max_batch: usize,
    /// How long a run may wait for more concurrent requests to join it. At 0, requests that
    /// queued while the previous run was busy still run together, and a lone request never waits.
    #[serde(default)]
    pub max_delay_ms: u64,
    /// ONNX Runtime threads per run (intra-op). A run counts as one of the host's compute slots
    /// whatever its threads, so 1 keeps tenants' shares of the CPU exact; raise it when one
    /// large model's latency matters more than sharing.
    #[serde(default = "one")]
    pub threads: usize,
    /// Runs that may go at once, each in its own ONNX Runtime session (so each lane holds its
    /// own copy of the weights). No tenant leads runs in every lane while another tenant's job
    /// waits, so with 2 lanes one tenant's long runs never queue another's short ones behind
    /// them. 1 shares one session between all tenants.
    #[serde(default = "two")]
    pub lanes: usize,
}

fn one() -> usize {
    1
}

fn two() -> usize {
    2
}

/// Most lanes a model may have: each is a session with its own weights.
pub const MAX_LANES: usize = 8;

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { max_batch: 32, max_delay_ms: 0, threads: 1, lanes: 2 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    /// NVIDIA CUDA; needs the `onnxruntime-gpu` build of ONNX Runtime.
    Cuda {
        #[serde(default)]
        device_id: i32,
        /// Cap on the GPU memory arena, in bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory_limit_bytes: Option<usize>,
    },
    /// NVIDIA TensorRT, falling back to CUDA for unsupported nodes; needs `onnxruntime-gpu`.
    Tensorrt {
        #[serde(default)]
        device_id: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory_limit_bytes: Option<usize>,
    },
}

impl ModelManifest {
    /// The output `text-tokens` / `image-tokens` read, if the model has one.
    pub fn token_output(&self) -> Option<&str> {
        self.token_output.as_deref().or((self.output.kind == OutputKind::Tokens).then_some(self.output.name.as_str()))
    }

    /// Read a manifest and resolve its file paths against its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("cannot read model manifest {}", path.display()))?;
        // Absolute, so the copy `quarry model add` registers still points at the files.
        let base = std::path::absolute(path.parent().unwrap_or(Path::new("."))).with_context(|| format!("cannot resolve {}", path.display()))?;
        Self::parse(&text, &base, &path.display().to_string())
    }

    /// A manifest from its JSON, with relative file paths resolved against `base` (for a
    /// manifest kept in the control store: the host's own model folder, where each replica
    /// keeps its copies). `origin` names it in errors.
    pub fn parse(json: &[u8], base: &Path, origin: &str) -> Result<Self> {
        let mut manifest: ModelManifest =
            serde_json::from_slice(json).with_context(|| format!("model manifest {origin} is not valid (see `quarry schema model` for the format)"))?;
        manifest.files.model = absolute(base, &manifest.files.model);
        manifest.files.tokenizer = manifest.files.tokenizer.as_ref().map(|t| absolute(base, t));
        manifest.files.encoder = manifest.files.encoder.as_ref().map(|t| absolute(base, t));
        manifest.files.decoder_with_past = manifest.files.decoder_with_past.as_ref().map(|t| absolute(base, t));
        if let Some(slots) = &mut manifest.slots {
            slots.token_embeddings = slots.token_embeddings.as_ref().map(|t| absolute(base, t));
        }
        manifest.files.sha256 = std::mem::take(&mut manifest.files.sha256).into_iter().map(|(p, h)| (absolute(base, Path::new(&p)).display().to_string(), h)).collect();
        manifest.validate().with_context(|| format!("model manifest {origin}"))?;
        Ok(manifest)
    }

    /// Every file the model reads.
    pub fn file_paths(&self) -> Vec<&Path> {
        let files = &self.files;
        let slots = self.slots.as_ref().and_then(|s| s.token_embeddings.as_deref());
        [Some(files.model.as_path()), files.tokenizer.as_deref(), files.encoder.as_deref(), files.decoder_with_past.as_deref(), slots].into_iter().flatten().collect()
    }

    /// Record the hash of each file as it is now.
    pub fn record_hashes(&mut self) -> Result<()> {
        let hashes = self.file_paths().into_iter().map(|p| Ok((p.display().to_string(), file_sha256(p)?))).collect::<Result<_>>()?;
        self.files.sha256 = hashes;
        Ok(())
    }

    /// Check each file against the hash recorded for it, if any.
    pub fn check_hashes(&self) -> Result<()> {
        for path in self.file_paths() {
            let Some(expected) = self.files.sha256.get(&path.display().to_string()) else { continue };
            let found = file_sha256(path)?;
            if found != *expected {
                bail!(
                    "model `{}`: {} is not the file recorded when the model was added (sha256 {found}, recorded {expected}); \
                     provision the same file on this host, or add the model again",
                    self.name,
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Check that the manifest is complete for its role and its files exist.
    pub fn validate(&self) -> Result<()> {
        crate::store::validate_name("model", &self.name)?;
        let exists = |what: &str, p: &Path| -> Result<()> {
            if !p.is_file() {
                bail!("model `{}`: {what} file {} does not exist; fix `files` or run `bash scripts/setup.sh`", self.name, p.display());
            }
            Ok(())
        };
        exists("model", &self.files.model)?;
        let role = match self.role {
            ModelRole::TextEncoder => "a text encoder",
            ModelRole::Decoder => "a decoder",
            ModelRole::ImageEncoder => "an image encoder",
            ModelRole::Projector => "a projector",
            ModelRole::CrossEncoder => "a cross-encoder",
        };
        match self.role {
            ModelRole::TextEncoder | ModelRole::Decoder | ModelRole::CrossEncoder => {
                let Some(spec) = &self.tokenizer else {
                    bail!("model `{}` is {role}, so it needs a `tokenizer` section with `max_length`", self.name);
                };
                match (&self.files.tokenizer, spec.kind) {
                    (Some(file), _) => exists("tokenizer", file)?,
                    (None, TokenizerKind::ClipBpe) => {}
                    (None, TokenizerKind::HfJson) => {
                        bail!("model `{}` is {role}, so `files.tokenizer` must name its tokenizer.json", self.name)
                    }
                }
                if self.inputs.input_ids.is_none() {
                    bail!("model `{}` is {role}, so `inputs.input_ids` must name the token id input", self.name);
                }
                if self.role == ModelRole::CrossEncoder && spec.kind != TokenizerKind::HfJson {
                    bail!("model `{}` is {role}; pairs of texts need a tokenizer.json (`tokenizer.kind: hf-json`), which defines how segments join", self.name);
                }
            }
            ModelRole::ImageEncoder => {
                if self.preprocess.is_none() {
                    bail!("model `{}` is an image encoder, so it needs a `preprocess` section (resize, crop, mean, std)", self.name);
                }
                if self.inputs.pixel_values.is_none() {
                    bail!("model `{}` is an image encoder, so `inputs.pixel_values` must name the image input", self.name);
                }
            }
            ModelRole::Projector => {
                if self.inputs.vectors.is_none() {
                    bail!("model `{}` is a projector, so `inputs.vectors` must name its `[batch, dim]` input", self.name);
                }
            }
        }
        if self.role == ModelRole::Decoder {
            let Some(spec) = &self.decoder else {
                bail!("model `{}` is a decoder, so it needs a `decoder` section (input_ids, logits, start_token)", self.name);
            };
            if let Some(graph) = &self.files.decoder_with_past {
                exists("decoder_with_past", graph)?;
                if spec.cache.is_none() {
                    bail!("model `{}` names `files.decoder_with_past`, so `decoder.cache` must say how its past and present tensors are named", self.name);
                }
            }
            if let Some(encoder) = &self.files.encoder {
                exists("encoder", encoder)?;
                if spec.encoder_hidden_states.is_none() {
                    bail!("model `{}` has an encoder, so `decoder.encoder_hidden_states` must name the decoder input for its states", self.name);
                }
            }
        }
        if let Some(slots) = &self.slots {
            if self.role != ModelRole::TextEncoder {
                bail!("model `{}`: only text encoders take `slots`", self.name);
            }
            match (&slots.mask_input, &slots.token_embeddings) {
                (Some(_), None) => {}
                (None, Some(graph)) => exists("token embeddings", graph)?,
                _ => bail!(
                    "model `{}`: `slots` needs exactly one of `mask_input` (the graph takes slot vectors and a mask) \
                     or `token_embeddings` (the graph takes inputs_embeds)",
                    self.name
                ),
            }
        }
        if !(1..=MAX_LANES).contains(&self.batch.lanes) {
            bail!("model `{}`: `batch.lanes` is {}; give 1 to {MAX_LANES} (each lane is a session with its own copy of the weights)", self.name, self.batch.lanes);
        }
        if self.batch.max_batch == 0 {
            bail!("model `{}`: `batch.max_batch` must be at least 1", self.name);
        }
        Ok(())
    }
}

/// SHA-256 of a file, hex, read in pieces (model files run to gigabytes).
fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// The JSON Schema of [`ModelManifest`].
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(ModelManifest)).expect("schema serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_transformers_layout_loads_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"x").unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"{"name": "minilm", "role": "text-encoder",
                "files": {"model": "model.onnx", "tokenizer": "tokenizer.json"},
                "output": {"name": "last_hidden_state", "kind": "tokens"},
                "tokenizer": {"max_length": 128}}"#,
        )
        .unwrap();
        let m = ModelManifest::load(&path).unwrap();
        assert_eq!(m.files.model, dir.path().join("model.onnx"));
        assert_eq!(m.pooling, Pooling::Mean);
        assert!(m.normalize);
        assert_eq!(m.execution_provider, ExecutionProvider::Cpu);
        assert_eq!(m.inputs.attention_mask.as_deref(), Some("attention_mask"));
    }

    #[test]
    fn a_manifest_named_by_a_relative_path_resolves_to_absolute_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"x").unwrap();
        std::fs::write(dir.path().join("m.json"), r#"{"name": "p", "role": "projector", "files": {"model": "model.onnx"}, "inputs": {"vectors": "x"}, "output": {"name": "y", "kind": "pooled"}}"#).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = Path::new(&up).join(dir.path().strip_prefix("/").unwrap()).join("m.json");
        let m = ModelManifest::load(&relative).unwrap();
        assert!(m.files.model.is_absolute() && m.files.model.is_file(), "{}", m.files.model.display());
    }

    #[test]
    fn missing_files_and_unknown_keys_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"{"name": "clip", "role": "image-encoder", "files": {"model": "nowhere.onnx"},
                "output": {"name": "image_embeds", "kind": "pooled"},
                "preprocess": {"resize": 224, "crop": 224, "mean": [0.5,0.5,0.5], "std": [0.5,0.5,0.5]}}"#,
        )
        .unwrap();
        let err = format!("{:#}", ModelManifest::load(&path).unwrap_err());
        assert!(err.contains("nowhere.onnx") && err.contains("does not exist"), "{err}");
        std::fs::write(&path, r#"{"name": "x", "rol": "text-encoder"}"#).unwrap();
        let err = format!("{:#}", ModelManifest::load(&path).unwrap_err());
        assert!(err.contains("quarry schema model"), "{err}");
    }

    #[test]
    fn slots_name_exactly_one_layout() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["model.onnx", "tokenizer.json", "lookup.onnx"] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        let path = dir.path().join("m.json");
        let load = |slots: &str| {
            let manifest = format!(
                r#"{{"name": "t", "role": "text-encoder", "files": {{"model": "model.onnx", "tokenizer": "tokenizer.json"}},
                    "output": {{"name": "text_embeds", "kind": "pooled"}}, "tokenizer": {{"max_length": 77}},
                    "slots": {{"placeholder": "$", "embeds_input": "e", "dim": 4{slots}}}}}"#
            );
            std::fs::write(&path, manifest).unwrap();
            ModelManifest::load(&path).map_err(|e| format!("{e:#}"))
        };
        assert!(load(r#", "mask_input": "m""#).is_ok());
        let m = load(r#", "token_embeddings": "lookup.onnx""#).unwrap();
        assert_eq!(m.slots.unwrap().token_embeddings.unwrap(), dir.path().join("lookup.onnx"));
        for bad in ["", r#", "mask_input": "m", "token_embeddings": "lookup.onnx""#] {
            assert!(load(bad).unwrap_err().contains("exactly one of `mask_input`"), "{bad}");
        }
        assert!(load(r#", "token_embeddings": "gone.onnx""#).unwrap_err().contains("gone.onnx does not exist"));
    }

    #[test]
    fn schema_names_every_section() {
        let s = schema().to_string();
        for key in ["files", "inputs", "output", "tokenizer", "preprocess", "pooling", "execution_provider", "max_batch"] {
            assert!(s.contains(key), "schema lacks {key}");
        }
    }
}
