//! The model runtime: manifests, ONNX Runtime sessions, tokenizers and image preprocessing.
//!
//! ONNX Runtime is loaded at run time (`ort` with `load-dynamic`) from the library that
//! `scripts/setup.sh` unpacks from the PyPI `onnxruntime` wheel; see [`locate_onnxruntime`].

mod batcher;
pub mod decoder;
pub mod manifest;
pub mod preprocess;
mod tokenize;
mod watchdog;

pub use manifest::{ModelManifest, ModelRole, OutputKind, Pooling};

use crate::capacity::{Caller, Expired, FairShare};
use anyhow::{Result, anyhow, bail};
use batcher::{Batcher, Inputs, Output, TextRow};
use decoder::{DecoderRuntime, Generation};
use tokenize::TextTokenizer;
use ort::session::Session;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Why a model call failed, in terms the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no model named `{0}` is registered; add its manifest with `quarry model add <manifest.json>`")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error(transparent)]
    Expired(#[from] Expired),
    #[error(transparent)]
    OverBudget(#[from] crate::capacity::OverBudget),
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for ModelError {
    fn from(e: anyhow::Error) -> Self {
        ModelError::Runtime(e)
    }
}

/// The ONNX Runtime version the host is built for (`ort` rc.15 with `api-31`).
pub const ORT_VERSION: &str = "1.31.1";

/// Find `libonnxruntime.so`: `ORT_DYLIB_PATH` if set, else next to the executable, else the
/// repository's `vendor/onnxruntime/` that `scripts/setup.sh` fills.
pub fn locate_onnxruntime() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "ONNX Runtime library not found: ORT_DYLIB_PATH is {}, which does not exist. \
                 Point it at libonnxruntime.so.{ORT_VERSION} or unset it and run `bash scripts/setup.sh`",
                path.display()
            );
        }
        return Ok(path);
    }
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        dirs.push(dir.join("../../vendor/onnxruntime"));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/onnxruntime"));
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
            .collect();
        found.sort();
        if let Some(path) = found.pop() {
            return Ok(path);
        }
    }
    bail!(
        "ONNX Runtime library not found (looked in {}). Run `bash scripts/setup.sh` to install \
         libonnxruntime.so.{ORT_VERSION} from the PyPI onnxruntime wheel, or set ORT_DYLIB_PATH to it",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// The process's ONNX Runtime environment, loaded on first use; for callers that open their own
/// sessions next to the host's (benchmarks comparing against ONNX Runtime directly).
pub fn environment() -> Result<&'static ort::environment::Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = locate_onnxruntime()?;
    let builder = ort::init_from(&path).map_err(|e| {
        anyhow!("cannot load ONNX Runtime from {}: {e}. It must be version {ORT_VERSION}; `bash scripts/setup.sh` installs it", path.display())
    })?;
    let env = builder.with_name("quarry").build().map_err(|e| anyhow!("cannot start ONNX Runtime: {e}"))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// A model whose session is open.
struct LoadedModel {
    manifest: ModelManifest,
    runtime: Runtime,
    tokenizer: Option<TextTokenizer>,
}

/// Encoders and projectors share batched runs; decoders hold per-session state.
enum Runtime {
    Batched(Batcher),
    Decoder(Arc<DecoderRuntime>),
}

/// The registered models, opened lazily on first use.
pub struct Models {
    manifests: RwLock<HashMap<String, ModelManifest>>,
    loaded: Mutex<HashMap<String, Arc<LoadedModel>>>,
    /// Every model run takes one of these slots, fairly between tenants.
    compute: Arc<FairShare>,
}

impl Default for Models {
    /// Models whose runs share one compute slot per CPU core.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Models::new(FairShare::compute(cores))
    }
}

impl Models {
    /// Models whose runs take slots of `compute` (shared with plugin calls).
    pub fn new(compute: Arc<FairShare>) -> Self {
        Models { manifests: Default::default(), loaded: Default::default(), compute }
    }

    /// Register (or replace) a model. Its files are checked now; the session opens on first use.
    pub fn register(&self, manifest: ModelManifest) -> Result<()> {
        manifest.validate()?;
        let name = manifest.name.clone();
        let mut manifests = self.manifests.write().unwrap();
        // The same manifest again (a replica's echo) keeps the open session.
        if manifests.get(&name) == Some(&manifest) {
            return Ok(());
        }
        self.loaded.lock().unwrap().remove(&name);
        manifests.insert(name, manifest);
        Ok(())
    }

    pub fn manifests(&self) -> Vec<ModelManifest> {
        let mut all: Vec<_> = self.manifests.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn contains(&self, name: &str) -> bool {
        self.manifests.read().unwrap().contains_key(name)
    }

    /// Open a model's session now, so the first call that uses it is not billed for loading it.
    pub fn warm(&self, name: &str) -> Result<(), ModelError> {
        let role = self.manifests.read().unwrap().get(name).map(|m| m.role).ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        self.get(name, role).map(|_| ())
    }

    fn get(&self, name: &str, role: ModelRole) -> Result<Arc<LoadedModel>, ModelError> {
        let manifest = self.manifests.read().unwrap().get(name).cloned().ok_or_else(|| ModelError::NotFound(name.to_string()))?;
        if manifest.role != role {
            return Err(ModelError::InvalidInput(format!("model `{name}` is a {:?}, not a {role:?}", manifest.role)));
        }
        let mut loaded = self.loaded.lock().unwrap();
        if let Some(model) = loaded.get(name) {
            return Ok(model.clone());
        }
        let model = Arc::new(open(manifest, &self.compute)?);
        loaded.insert(name.to_string(), model.clone());
        Ok(model)
    }

    /// Pooled (and, per manifest, normalised) embeddings of `texts`.
    pub fn embed_texts(&self, model: &str, texts: &[String], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        let model = self.get(model, ModelRole::TextEncoder)?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(model.manifest.batch.max_batch) {
            out.extend(model.embed_texts(chunk, caller)?);
        }
        Ok(out)
    }

    /// How many inference runs a model has made, and over how many inputs in all (None if the
    /// model is not open). More inputs than runs means concurrent requests were batched.
    pub fn run_stats(&self, model: &str) -> Option<(u64, u64)> {
        self.loaded.lock().unwrap().get(model).and_then(|m| m.batcher().ok().map(Batcher::stats))
    }

    /// How many jobs (a request's parts) reached a run of a model, and how long they waited in
    /// its queue in all (None if the model is not open).
    pub fn queue_stats(&self, model: &str) -> Option<(u64, std::time::Duration)> {
        self.loaded.lock().unwrap().get(model).and_then(|m| m.batcher().ok().map(Batcher::queue_stats))
    }

    /// Embeddings of templates whose placeholder tokens take the given slot vectors.
    pub fn embed_texts_with_slots(&self, model: &str, texts: &[(String, Vec<Vec<f32>>)], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        let model = self.get(model, ModelRole::TextEncoder)?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(model.manifest.batch.max_batch) {
            out.extend(model.embed_texts_with_slots(chunk, caller)?);
        }
        Ok(out)
    }

    /// Open a generation session on a decoder: the prompt is tokenized and encoded once.
    /// Steps run under `caller`'s deadline and compute slot.
    pub fn start_generation(&self, model: &str, prompt: &str, caller: &Caller) -> Result<Generation, ModelError> {
        let model = self.get(model, ModelRole::Decoder)?;
        let Runtime::Decoder(runtime) = &model.runtime else { unreachable!("decoders have a decoder runtime") };
        let Inputs::Text(mut rows) = model.text_inputs(&[prompt.to_string()])? else { unreachable!("text_inputs makes text rows") };
        Generation::start(runtime.clone(), &model.manifest, rows.remove(0).ids, caller)
    }

    /// Relevance of each text to `query`, by a cross-encoder, in input order.
    pub fn cross_score(&self, model: &str, query: &str, texts: &[String], caller: &Caller) -> Result<Vec<f32>, ModelError> {
        let model = self.get(model, ModelRole::CrossEncoder)?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(model.manifest.batch.max_batch) {
            out.extend(model.cross_score(query, chunk, caller)?);
        }
        Ok(out)
    }

    /// Generation sessions open on a decoder.
    pub fn live_generations(&self, model: &str) -> usize {
        match self.loaded.lock().unwrap().get(model).map(|m| &m.runtime) {
            Some(Runtime::Decoder(runtime)) => runtime.live.load(std::sync::atomic::Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Run a projector over vectors.
    pub fn project(&self, model: &str, vectors: &[Vec<f32>], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        let model = self.get(model, ModelRole::Projector)?;
        let mut out = Vec::with_capacity(vectors.len());
        for chunk in vectors.chunks(model.manifest.batch.max_batch) {
            out.extend(model.project(chunk, caller)?);
        }
        Ok(out)
    }

    /// Per-token features of each text, padding removed: (dim, floats).
    pub fn text_tokens(&self, model: &str, texts: &[String], caller: &Caller) -> Result<Vec<(usize, Vec<f32>)>, ModelError> {
        let model = self.get(model, ModelRole::TextEncoder)?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(model.manifest.batch.max_batch) {
            out.extend(model.text_tokens(chunk, caller)?);
        }
        Ok(out)
    }

    /// Per-patch features of each image: (dim, floats).
    pub fn image_tokens(&self, model: &str, images: &[Vec<u8>], caller: &Caller) -> Result<Vec<(usize, Vec<f32>)>, ModelError> {
        let model = self.get(model, ModelRole::ImageEncoder)?;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(model.manifest.batch.max_batch) {
            out.extend(model.image_tokens(chunk, caller)?);
        }
        Ok(out)
    }

    /// Embeddings of encoded images (PNG, JPEG).
    pub fn embed_images(&self, model: &str, images: &[Vec<u8>], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        let model = self.get(model, ModelRole::ImageEncoder)?;
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(model.manifest.batch.max_batch) {
            out.extend(model.embed_images(chunk, caller)?);
        }
        Ok(out)
    }
}

/// The execution providers a manifest asks for, in order of preference, or why it cannot have them.
fn execution_providers(manifest: &ModelManifest) -> Result<Vec<ort::ep::ExecutionProviderDispatch>> {
    use ort::ep::{CUDA, ExecutionProvider as _, TensorRT};
    use manifest::ExecutionProvider as Ep;
    let missing = |provider: &str| {
        anyhow!(
            "model `{}` asks for the {provider} execution provider, but the loaded ONNX Runtime was built without it. \
             Install the GPU build (PyPI `onnxruntime-gpu=={ORT_VERSION}`, with the CUDA 13 and cuDNN 9 `nvidia-*` wheels) \
             and point ORT_DYLIB_PATH at its libonnxruntime.so, or set `execution_provider` to {{\"kind\": \"cpu\"}}",
            manifest.name
        )
    };
    let cuda = |device_id: i32, limit: Option<usize>| -> Result<ort::ep::ExecutionProviderDispatch> {
        if !CUDA::is_available().unwrap_or(false) {
            return Err(missing("CUDA"));
        }
        let mut ep = CUDA::default().with_device_id(device_id);
        if let Some(limit) = limit {
            ep = ep.with_memory_limit(limit);
        }
        Ok(ep.build().error_on_failure())
    };
    Ok(match manifest.execution_provider {
        Ep::Cpu => Vec::new(),
        Ep::Cuda { device_id, memory_limit_bytes } => vec![cuda(device_id, memory_limit_bytes)?],
        Ep::Tensorrt { device_id, memory_limit_bytes } => {
            if !TensorRT::is_available().unwrap_or(false) {
                return Err(missing("TensorRT"));
            }
            vec![TensorRT::default().with_device_id(device_id).build().error_on_failure(), cuda(device_id, memory_limit_bytes)?]
        }
    })
}

/// Open one graph of a model with the manifest's execution providers.
fn session(manifest: &ModelManifest, path: &Path) -> Result<Session> {
    let env = environment()?;
    let providers = execution_providers(manifest)?;
    // Idle ORT workers would otherwise spin after every run, taking cores from other callers
    // (plugins, tenants, the other models) on a shared host.
    Session::builder(env)
        .and_then(|b| b.with_intra_threads(manifest.batch.threads.max(1)).map_err(Into::into))
        .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
        .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
        .and_then(|b| b.with_inter_op_spinning(false).map_err(Into::into))
        .and_then(|b| b.with_execution_providers(providers).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| anyhow!("cannot open model `{}` from {}: {e}", manifest.name, path.display()))
}

/// Check that a graph has the inputs and outputs the manifest names.
fn check_io(model: &str, session: &Session, inputs: &[&String], outputs: &[&String]) -> Result<()> {
    for name in inputs {
        if !session.inputs().iter().any(|i| i.name() == name.as_str()) {
            bail!(
                "model `{model}` has no input named `{name}` (its inputs are: {}); fix its manifest",
                session.inputs().iter().map(|i| i.name().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    for name in outputs {
        if !session.outputs().iter().any(|o| o.name() == name.as_str()) {
            bail!(
                "model `{model}` has no output named `{name}` (its outputs are: {}); fix its manifest",
                session.outputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(())
}

fn open(manifest: ModelManifest, compute: &Arc<FairShare>) -> Result<LoadedModel> {
    manifest.check_hashes()?;
    let text_inputs: Vec<&String> =
        [&manifest.inputs.input_ids, &manifest.inputs.attention_mask, &manifest.inputs.token_type_ids].into_iter().flatten().collect();
    let runtime = match manifest.role {
        ModelRole::Decoder => {
            let spec = manifest.decoder.as_ref().expect("validated: decoders have a decoder section");
            let decoder = session(&manifest, &manifest.files.model)?;
            let inputs: Vec<&String> = [Some(&spec.input_ids), spec.encoder_hidden_states.as_ref(), spec.encoder_attention_mask.as_ref(), spec.attention_mask.as_ref(), spec.position_ids.as_ref()]
                .into_iter()
                .flatten()
                .collect();
            check_io(&manifest.name, &decoder, &inputs, &[&spec.logits])?;
            let with_past = match &manifest.files.decoder_with_past {
                Some(path) => {
                    let with_past = session(&manifest, path)?;
                    check_io(&manifest.name, &with_past, &[&spec.input_ids], &[&spec.logits])?;
                    Some(with_past)
                }
                None => None,
            };
            let cache = match &spec.cache {
                Some(cache) => Some(decoder::CacheLayout::discover(&manifest.name, &decoder, with_past.as_ref(), cache, &manifest.execution_provider)?),
                None => None,
            };
            let encoder = match &manifest.files.encoder {
                Some(path) => {
                    let encoder = session(&manifest, path)?;
                    check_io(&manifest.name, &encoder, &text_inputs, &[&manifest.output.name])?;
                    Some(parking_lot::Mutex::new(encoder))
                }
                None => None,
            };
            let vocab = decoder::declared_vocab(&decoder, &spec.logits);
            Runtime::Decoder(Arc::new(DecoderRuntime { encoder, decoder: parking_lot::Mutex::new(decoder), with_past: with_past.map(parking_lot::Mutex::new), live: Default::default(), cache, vocab }))
        }
        role => {
            let main = session(&manifest, &manifest.files.model)?;
            let mut inputs: Vec<&String> = match role {
                ModelRole::ImageEncoder => manifest.inputs.pixel_values.iter().collect(),
                ModelRole::Projector => manifest.inputs.vectors.iter().collect(),
                _ => text_inputs,
            };
            let mut token_embeddings = None;
            if let Some(slots) = &manifest.slots {
                inputs.push(&slots.embeds_input);
                inputs.extend(&slots.mask_input);
                if let Some(path) = &slots.token_embeddings {
                    // An inputs_embeds graph takes embeddings instead of token ids.
                    inputs.retain(|name| Some(*name) != manifest.inputs.input_ids.as_ref());
                    let lookup = session(&manifest, path)?;
                    if lookup.inputs().len() != 1 || lookup.outputs().is_empty() {
                        bail!(
                            "model `{}`: the token-embeddings graph {} must take one input (token ids) and output their embeddings",
                            manifest.name,
                            path.display()
                        );
                    }
                    token_embeddings = Some(lookup);
                }
            }
            let mut outputs = vec![&manifest.output.name];
            outputs.extend(manifest.token_output.as_ref());
            check_io(&manifest.name, &main, &inputs, &outputs)?;
            // The other lanes' sessions: the same graphs, checked once above.
            let mut lanes = vec![(main, token_embeddings)];
            for _ in 1..manifest.batch.lanes {
                let main = session(&manifest, &manifest.files.model)?;
                let lookup = manifest.slots.as_ref().and_then(|s| s.token_embeddings.as_ref()).map(|path| session(&manifest, path)).transpose()?;
                lanes.push((main, lookup));
            }
            Runtime::Batched(Batcher::start(lanes, &manifest, compute.clone())?)
        }
    };
    let tokenizer = match manifest.role {
        ModelRole::TextEncoder | ModelRole::Decoder | ModelRole::CrossEncoder => Some(TextTokenizer::open(&manifest)?),
        ModelRole::ImageEncoder | ModelRole::Projector => None,
    };
    Ok(LoadedModel { manifest, runtime, tokenizer })
}

impl LoadedModel {
    fn batcher(&self) -> Result<&Batcher, ModelError> {
        match &self.runtime {
            Runtime::Batched(batcher) => Ok(batcher),
            Runtime::Decoder(_) => Err(ModelError::InvalidInput(format!("model `{}` is a decoder; use a generation session", self.manifest.name))),
        }
    }

    /// Tokenize a batch (truncated per the manifest, unpadded).
    fn text_inputs(&self, texts: &[String]) -> Result<Inputs, ModelError> {
        let tokenizer = self.tokenizer.as_ref().expect("validated: text encoders have a tokenizer");
        let encoded = tokenizer.encode(texts).map_err(|e| ModelError::InvalidInput(format!("cannot tokenize: {e}")))?;
        Ok(Inputs::Text(encoded.into_iter().map(|(ids, mask)| TextRow { ids, mask, ..Default::default() }).collect()))
    }

    /// Tokenize templates and place each template's slot vectors at its placeholder tokens.
    fn slotted_inputs(&self, texts: &[(String, Vec<Vec<f32>>)]) -> Result<Inputs, ModelError> {
        let spec = self.manifest.slots.as_ref().ok_or_else(|| {
            ModelError::InvalidInput(format!("model `{}` takes no slots; its manifest needs a `slots` section", self.manifest.name))
        })?;
        let tokenizer = self.tokenizer.as_ref().expect("validated: text encoders have a tokenizer");
        let placeholder = tokenizer.single_token(&spec.placeholder).ok_or_else(|| {
            ModelError::Runtime(anyhow!("model `{}`: placeholder `{}` is not one token of its tokenizer", self.manifest.name, spec.placeholder))
        })?;
        let templates: Vec<String> = texts.iter().map(|(t, _)| t.clone()).collect();
        let Inputs::Text(mut rows) = self.text_inputs(&templates)? else { unreachable!("text_inputs makes text rows") };
        for (i, (row, (template, slots))) in rows.iter_mut().zip(texts).enumerate() {
            let positions: Vec<usize> = row.ids.iter().enumerate().filter(|(_, id)| **id == placeholder).map(|(p, _)| p).collect();
            if positions.len() != slots.len() {
                return Err(ModelError::InvalidInput(format!(
                    "text {i} ({template:?}) has {} `{}` placeholder(s) but {} slot vector(s)",
                    positions.len(),
                    spec.placeholder,
                    slots.len()
                )));
            }
            if let Some(bad) = slots.iter().find(|v| v.len() != spec.dim) {
                return Err(ModelError::InvalidInput(format!("text {i}: a slot vector has {} values, the model takes {}", bad.len(), spec.dim)));
            }
            row.slots = positions.into_iter().zip(slots.iter().cloned()).collect();
        }
        Ok(Inputs::Text(rows))
    }

    /// Decode and preprocess a batch of images.
    fn image_inputs(&self, images: &[Vec<u8>]) -> Result<Inputs, ModelError> {
        let p = self.manifest.preprocess.as_ref().expect("validated: image encoders have a preprocess section");
        let rows = images
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let img = preprocess::decode(bytes).map_err(|e| ModelError::InvalidInput(format!("image {i}: {e:#}")))?;
                Ok(preprocess::to_pixel_values(&img, p))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Inputs::Pixels { side: p.crop as usize, rows })
    }

    /// Run `inputs` in parts of at most the manifest's `max_batch` rows (see
    /// [`Batcher::run_parts`]) and turn each part's output into its rows' results with `rows`.
    fn run_rows<T>(&self, inputs: Inputs, output: &str, caller: &Caller, rows: impl Fn(Output, usize) -> Result<Vec<T>, ModelError>) -> Result<Vec<T>, ModelError> {
        let parts = inputs.split(self.manifest.batch.max_batch.max(1));
        let sizes: Vec<usize> = parts.iter().map(Inputs::len).collect();
        let outputs = self.batcher()?.run_parts(parts, output, caller)?;
        let mut all = Vec::with_capacity(sizes.iter().sum());
        for (out, n) in outputs.into_iter().zip(sizes) {
            all.extend(rows(out, n)?);
        }
        Ok(all)
    }

    fn pooled(&self, out: Output, n: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        self.pool((out.shape, out.data), n, out.mask.as_ref().map(|(m, seq)| (m.as_slice(), *seq)))
    }

    fn embed_texts(&self, texts: &[String], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        self.run_rows(self.text_inputs(texts)?, &self.manifest.output.name, caller, |out, n| self.pooled(out, n))
    }

    fn embed_images(&self, images: &[Vec<u8>], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        self.run_rows(self.image_inputs(images)?, &self.manifest.output.name, caller, |out, n| self.pooled(out, n))
    }

    fn embed_texts_with_slots(&self, texts: &[(String, Vec<Vec<f32>>)], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        self.run_rows(self.slotted_inputs(texts)?, &self.manifest.output.name, caller, |out, n| self.pooled(out, n))
    }

    fn cross_score(&self, query: &str, texts: &[String], caller: &Caller) -> Result<Vec<f32>, ModelError> {
        let tokenizer = self.tokenizer.as_ref().expect("validated: cross-encoders have a tokenizer");
        let pairs: Vec<(String, String)> = texts.iter().map(|t| (query.to_string(), t.clone())).collect();
        let encoded = tokenizer.encode_pairs(&pairs).map_err(|e| ModelError::InvalidInput(format!("cannot tokenize: {e}")))?;
        let rows = encoded.into_iter().map(|[ids, mask, type_ids]| TextRow { ids, mask, type_ids, ..Default::default() }).collect();
        self.run_rows(Inputs::Text(rows), &self.manifest.output.name, caller, |out, n| {
            if out.shape.first() != Some(&(n as i64)) || out.data.len() < n {
                return Err(ModelError::Runtime(anyhow!("cross-encoder `{}` returned {:?} for {n} pairs", self.manifest.name, out.shape)));
            }
            let per_row = out.data.len() / n;
            Ok(out.data.chunks_exact(per_row).map(|row| row[0]).collect())
        })
    }

    fn project(&self, vectors: &[Vec<f32>], caller: &Caller) -> Result<Vec<Vec<f32>>, ModelError> {
        let dim = vectors.first().map_or(0, Vec::len);
        if let Some((i, v)) = vectors.iter().enumerate().find(|(_, v)| v.len() != dim) {
            return Err(ModelError::InvalidInput(format!("vector {i} has {} values but vector 0 has {dim}", v.len())));
        }
        self.run_rows(Inputs::Vectors { dim, rows: vectors.to_vec() }, &self.manifest.output.name, caller, |out, n| self.pooled(out, n))
    }

    fn token_output(&self) -> Result<&str, ModelError> {
        self.manifest.token_output().ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "model `{}` has no per-token output; name one with `token_output` in its manifest",
                self.manifest.name
            ))
        })
    }

    /// Per-token states of each text, padding removed: (dim, tokens * dim floats).
    fn text_tokens(&self, texts: &[String], caller: &Caller) -> Result<Vec<(usize, Vec<f32>)>, ModelError> {
        self.run_rows(self.text_inputs(texts)?, self.token_output()?, caller, |out, n| {
            self.split_tokens((out.shape, out.data), n, out.mask.as_ref().map(|(m, seq)| (m.as_slice(), *seq)))
        })
    }

    /// Per-patch states of each image: (dim, patches * dim floats).
    fn image_tokens(&self, images: &[Vec<u8>], caller: &Caller) -> Result<Vec<(usize, Vec<f32>)>, ModelError> {
        self.run_rows(self.image_inputs(images)?, self.token_output()?, caller, |out, n| self.split_tokens((out.shape, out.data), n, None))
    }

    fn split_tokens(&self, (shape, data): (Vec<i64>, Vec<f32>), n: usize, mask: Option<(&[i64], usize)>) -> Result<Vec<(usize, Vec<f32>)>, ModelError> {
        let &[rows, tokens, dim] = shape.as_slice() else {
            return Err(ModelError::Runtime(anyhow!("model `{}` token output has shape {shape:?}, not [batch, tokens, dim]", self.manifest.name)));
        };
        let (tokens, dim) = (tokens as usize, dim as usize);
        if rows as usize != n {
            return Err(ModelError::Runtime(anyhow!("model `{}` returned {rows} rows for {n} inputs", self.manifest.name)));
        }
        Ok((0..n)
            .map(|row| {
                let states = &data[row * tokens * dim..(row + 1) * tokens * dim];
                let mut kept = Vec::with_capacity(tokens * dim);
                for (t, state) in states.chunks_exact(dim).enumerate() {
                    if mask.is_none_or(|(m, seq)| t < seq && m[row * seq + t] != 0) {
                        kept.extend_from_slice(state);
                        if self.manifest.normalize {
                            let start = kept.len() - dim;
                            normalize(&mut kept[start..]);
                        }
                    }
                }
                (dim, kept)
            })
            .collect())
    }

    /// Turn the raw output into one vector per input, pooling token states when needed.
    fn pool(&self, (shape, data): (Vec<i64>, Vec<f32>), n: usize, mask: Option<(&[i64], usize)>) -> Result<Vec<Vec<f32>>, ModelError> {
        let name = &self.manifest.name;
        let mut out: Vec<Vec<f32>> = match (self.manifest.output.kind, shape.as_slice()) {
            (OutputKind::Pooled, &[rows, dim]) if rows as usize == n => data.chunks_exact(dim as usize).map(<[f32]>::to_vec).collect(),
            (OutputKind::Tokens, &[rows, tokens, dim]) if rows as usize == n => {
                let (tokens, dim) = (tokens as usize, dim as usize);
                (0..n)
                    .map(|row| {
                        let states = &data[row * tokens * dim..(row + 1) * tokens * dim];
                        match self.manifest.pooling {
                            Pooling::Cls => states[..dim].to_vec(),
                            Pooling::Last => {
                                let last = mask.map_or(tokens, |(m, seq)| m[row * seq..(row + 1) * seq].iter().filter(|&&x| x != 0).count());
                                states[last.saturating_sub(1) * dim..last.max(1) * dim].to_vec()
                            }
                            Pooling::Mean => {
                                let mut sum = vec![0f32; dim];
                                let mut count = 0f32;
                                for (t, state) in states.chunks_exact(dim).enumerate() {
                                    let keep = mask.is_none_or(|(m, seq)| t < seq && m[row * seq + t] != 0);
                                    if keep {
                                        sum.iter_mut().zip(state).for_each(|(s, x)| *s += x);
                                        count += 1.0;
                                    }
                                }
                                sum.iter_mut().for_each(|s| *s /= count.max(1.0));
                                sum
                            }
                        }
                    })
                    .collect()
            }
            (kind, other) => {
                return Err(ModelError::Runtime(anyhow!(
                    "model `{name}` output has shape {other:?}, which does not fit `output.kind` {kind:?} for {n} inputs"
                )));
            }
        };
        if self.manifest.normalize {
            out.iter_mut().for_each(|v| normalize(v));
        }
        Ok(out)
    }
}

fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
