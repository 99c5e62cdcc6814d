//! Generation sessions: a prompt encoded once, then next-token log-probabilities for batches of
//! beam prefixes, with the prompt's state (and, for exports with past key/values, every beam's
//! key/value cache) kept in the host between steps.
//!
//! Layouts: encoder-decoder (the encoder runs once per session; each step feeds its states to the
//! decoder) and decoder-only (the prompt's tokens come before every prefix), each with or without
//! a key/value cache. Without one, every step re-runs the decoder over whole prefixes. With one,
//! a step whose prefixes each extend a prefix of the previous step runs only the new tokens,
//! against the previous step's cache rows gathered into the new beam order; any other request
//! falls back to a full pass, so answers never depend on the order of calls.
//!
//! Exports come as one graph taking an (at first empty) cache, or split in two as optimum writes
//! them: a first-step graph without cache inputs and a graph with them.
//!
//! Cache tensors go through ONNX Runtime's I/O binding and are bound to the execution provider's
//! memory, so on a GPU they stay there from step to step; only a reorder that changes which beam
//! sits in which row copies them to the host.

use super::ModelError;
use super::manifest::{CacheSpec, DecoderSpec, ExecutionProvider, ModelManifest};
use super::watchdog::Watched;
use crate::capacity::{Caller, Expired};
use anyhow::{Result, anyhow, bail};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;

/// A decoder's sessions, shared by every generation on it.
pub(crate) struct DecoderRuntime {
    pub encoder: Option<Mutex<Session>>,
    /// Full passes (and, in a split export, the first step).
    pub decoder: Mutex<Session>,
    /// Split exports: the graph that takes past key/values.
    pub with_past: Option<Mutex<Session>>,
    pub live: Arc<AtomicUsize>,
    pub cache: Option<CacheLayout>,
    /// The vocabulary size, when the export fixes the logits' last axis; lets a step refuse an
    /// unknown token before running.
    pub vocab: Option<i64>,
}

/// The vocabulary size `session` declares on its logits output, if fixed.
pub(crate) fn declared_vocab(session: &Session, logits: &str) -> Option<i64> {
    session.outputs().iter().find(|o| o.name() == logits).and_then(|o| match o.dtype() {
        ValueType::Tensor { shape, .. } => shape.last().copied().filter(|&v| v > 0),
        _ => None,
    })
}

/// The key/value cache tensors of a decoder export, found from its inputs and outputs.
pub(crate) struct CacheLayout {
    entries: Vec<CacheEntry>,
    /// The CUDA device the cache stays on, or `None` for host memory.
    cuda_device: Option<i32>,
}

struct CacheEntry {
    past: String,
    present: String,
    /// Single-graph exports: the past input's shape and its past-length axis, to make the empty
    /// cache a full pass starts from.
    empty: Option<(Vec<i64>, usize)>,
    /// Whether cached steps output this tensor anew; if not (cross-attention keys and values of
    /// split exports), it is carried from step to step.
    stepped: bool,
}

impl CacheLayout {
    /// Pair every `past_prefix*` input of the graph that takes the cache (`with_past`, or the
    /// decoder itself) with its `present_prefix*` output.
    pub fn discover(model: &str, decoder: &Session, with_past: Option<&Session>, spec: &CacheSpec, provider: &ExecutionProvider) -> Result<Self> {
        let step = with_past.unwrap_or(decoder);
        let outputs = |s: &Session| s.outputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let mut entries = Vec::new();
        for input in step.inputs().iter().filter(|i| i.name().starts_with(&spec.past_prefix)) {
            let suffix = &input.name()[spec.past_prefix.len()..];
            let present = format!("{}{suffix}", spec.present_prefix);
            if !outputs(decoder).contains(&present) {
                bail!(
                    "model `{model}`: cache input `{}` has no matching output `{present}` in {} (its outputs are: {}); fix `decoder.cache` in its manifest",
                    input.name(),
                    if with_past.is_some() { "the first-step graph `files.model`" } else { "the decoder" },
                    outputs(decoder).join(", ")
                );
            }
            let ValueType::Tensor { ty, shape, .. } = input.dtype() else { bail!("model `{model}`: cache input `{}` is not a tensor", input.name()) };
            if *ty != TensorElementType::Float32 {
                bail!("model `{model}`: cache input `{}` holds {ty:?}; the host keeps f32 caches, so export the decoder with a float32 cache", input.name());
            }
            let empty = if with_past.is_some() {
                None
            } else {
                let dynamic: Vec<usize> = (1..shape.len()).filter(|&axis| shape[axis] < 0).collect();
                let [past_axis] = dynamic[..] else {
                    bail!(
                        "model `{model}`: cache input `{}` has shape {:?}; the host needs batch first and exactly one other dynamic axis \
                         (the past length), so export it with fixed head counts and sizes",
                        input.name(),
                        &shape[..]
                    );
                };
                Some((shape.to_vec(), past_axis))
            };
            let stepped = outputs(step).contains(&present);
            entries.push(CacheEntry { past: input.name().to_string(), present, empty, stepped });
        }
        if entries.is_empty() {
            bail!("model `{model}`: no graph input starts with `{}`, so it has no cache; fix `decoder.cache.past_prefix` or remove `cache`", spec.past_prefix);
        }
        if !entries.iter().any(|e| e.stepped) {
            bail!("model `{model}`: the graph taking past key/values outputs none of the `{}*` tensors; fix `decoder.cache.present_prefix`", spec.present_prefix);
        }
        let cuda_device = match provider {
            ExecutionProvider::Cpu => None,
            ExecutionProvider::Cuda { device_id, .. } | ExecutionProvider::Tensorrt { device_id, .. } => Some(*device_id),
        };
        Ok(CacheLayout { entries, cuda_device })
    }

    fn memory(&self) -> Result<MemoryInfo<'static>, ModelError> {
        let (device, id) = match self.cuda_device {
            Some(id) => (AllocationDevice::CUDA, id),
            None => (AllocationDevice::CPU, 0),
        };
        MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default).map_err(|e| ModelError::Runtime(anyhow!("cache memory: {e}")))
    }
}

/// What a generation keeps of its prompt.
enum Prompt {
    /// Encoder states `[1, tokens, dim]` and the prompt's attention mask.
    Encoded { states: Vec<f32>, tokens: usize, dim: usize, mask: Vec<i64> },
    /// The prompt's token ids, placed before every prefix.
    Tokens(Vec<i64>),
}

/// Cache rows of one run: row `i` holds the keys/values of the start token and `prefixes[i]`.
struct CachedRows {
    prefixes: Vec<Vec<u32>>,
    /// One tensor per cache entry, `prefixes.len()` rows each.
    values: Vec<DynTensor>,
}

/// How a session's steps ran, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Decoder runs over whole prefixes.
    pub full_runs: usize,
    /// Decoder runs over only the new tokens, against the cache.
    pub cached_runs: usize,
    /// Cached runs whose beams had to be regathered (copied through host memory).
    pub regathers: usize,
}

/// One generation session. Dropping it frees its state.
pub struct Generation {
    runtime: Arc<DecoderRuntime>,
    spec: DecoderSpec,
    model: String,
    prompt: Prompt,
    /// How many beams the last step scored; `reorder` indexes into them.
    beams: usize,
    /// The last step's cache rows, grouped by run (rows of a run share a past length)...
    cache: Vec<CachedRows>,
    /// ...and where beam `i` of the last step sits in them: `(run, row)`.
    order: Vec<(usize, usize)>,
    stats: GenerationStats,
    /// Whose deadline and compute slot the steps run under.
    caller: Caller,
    budget: DecoderBudget,
    /// The vocabulary size, once known (declared by the export, or seen in a first run).
    vocab: Option<usize>,
}

/// What one step may cost; see `limits.max_decoder_tokens` and `limits.max_payload_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderBudget {
    /// Most tokens (prompt and prefix, over all prefixes) one step may run.
    pub max_tokens: usize,
    /// Most bytes of logits one run may produce, and one step may return.
    pub max_logit_bytes: usize,
}

impl Default for DecoderBudget {
    fn default() -> Self {
        DecoderBudget { max_tokens: 65_536, max_logit_bytes: 64 << 20 }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.runtime.live.fetch_sub(1, Ordering::Relaxed);
    }
}

type Feed = Vec<(Cow<'static, str>, SessionInputValue<'static>)>;

fn tensor<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(shape: Vec<i64>, data: Vec<T>) -> Result<DynValue, ModelError> {
    Tensor::from_array((shape, data)).map(Tensor::into_dyn).map_err(|e| ModelError::Runtime(anyhow!("{e}")))
}

impl Generation {
    /// Open a session: encode `prompt_ids` once (encoder-decoder) or keep them (decoder-only).
    pub(crate) fn start(runtime: Arc<DecoderRuntime>, manifest: &ModelManifest, prompt_ids: Vec<i64>, caller: &Caller) -> Result<Self, ModelError> {
        let spec = manifest.decoder.clone().expect("validated: decoders have a decoder section");
        let prompt = match &runtime.encoder {
            Some(encoder) => {
                let n = prompt_ids.len() as i64;
                let mask = vec![1i64; prompt_ids.len()];
                let mut feed: Feed = Vec::new();
                let inputs = &manifest.inputs;
                feed.push((inputs.input_ids.clone().expect("validated").into(), tensor(vec![1, n], prompt_ids)?.into()));
                if let Some(name) = &inputs.attention_mask {
                    feed.push((name.clone().into(), tensor(vec![1, n], mask.clone())?.into()));
                }
                let mut encoder = lock(encoder, caller)?;
                let watched = Watched::new(caller.deadline)?;
                let outputs = encoder.run_with_options(feed, watched.options()).map_err(|e| watched.explain(e, &format!("the encoder of `{}`", manifest.name)))?;
                let value = outputs.get(manifest.output.name.as_str()).ok_or_else(|| anyhow!("the encoder of `{}` has no output `{}`", manifest.name, manifest.output.name))?;
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| anyhow!("encoder output is not f32: {e}"))?;
                let &[1, tokens, dim] = &shape[..] else {
                    return Err(ModelError::Runtime(anyhow!("the encoder of `{}` returned shape {shape:?}, not [1, tokens, dim]", manifest.name)));
                };
                Prompt::Encoded { states: data.to_vec(), tokens: tokens as usize, dim: dim as usize, mask }
            }
            None => Prompt::Tokens(prompt_ids),
        };
        runtime.live.fetch_add(1, Ordering::Relaxed);
        let vocab = runtime.vocab.map(|v| v as usize);
        Ok(Generation {
            runtime,
            spec,
            model: manifest.name.clone(),
            prompt,
            beams: 0,
            cache: Vec::new(),
            order: Vec::new(),
            stats: GenerationStats::default(),
            caller: caller.clone(),
            budget: DecoderBudget::default(),
            vocab,
        })
    }

    /// Bound what each step may cost.
    pub fn set_budget(&mut self, budget: DecoderBudget) {
        self.budget = budget;
    }

    pub fn stats(&self) -> GenerationStats {
        self.stats
    }

    /// Log-probabilities over the vocabulary of the token after each prefix.
    pub fn next_logprobs(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        if prefixes.is_empty() {
            self.beams = 0;
            return Ok(Vec::new());
        }
        self.check_work(prefixes)?;
        let rows = if self.runtime.cache.is_none() {
            let mut rows = Vec::with_capacity(prefixes.len());
            for chunk in prefixes.chunks(self.chunk_rows(prefixes)?) {
                rows.extend(self.run_full(chunk, None, &|last, _| last..=last)?.into_iter().flatten());
            }
            rows
        } else if let Some(parents) = self.parents(prefixes) {
            self.step_cached(prefixes, &parents)?
        } else {
            self.full_cached(prefixes)?
        };
        self.beams = prefixes.len();
        Ok(rows)
    }

    /// Log-probabilities at every position of one full forward pass over `prefix`: row `t` is the
    /// distribution of the token after `prefix[..t]`.
    pub fn full_logprobs(&mut self, prefix: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        let prefixes = [prefix.to_vec()];
        self.check_work(&prefixes)?;
        self.chunk_rows(&prefixes)?;
        Ok(self.run_full(&prefixes, None, &|last, len| last - len..=last)?.remove(0))
    }

    /// Refuse a step whose prefixes (with the prompt before each, or the encoder states each
    /// row is fed) exceed the token budget.
    fn check_work(&self, prefixes: &[Vec<u32>]) -> Result<(), ModelError> {
        let lead = match &self.prompt {
            Prompt::Encoded { tokens, .. } => self.lead() + tokens,
            Prompt::Tokens(_) => self.lead(),
        };
        let tokens = prefixes.iter().map(|p| lead.saturating_add(p.len())).fold(0usize, usize::saturating_add);
        if tokens > self.budget.max_tokens {
            return Err(ModelError::InvalidInput(format!(
                "a decoder step over {} prefix(es) runs {tokens} tokens (prompt included), over the limit of {}; \
                 send fewer or shorter prefixes, or raise `limits.max_decoder_tokens`",
                prefixes.len(),
                self.budget.max_tokens
            )));
        }
        if let Some(vocab) = self.vocab {
            let bytes = prefixes.len().saturating_mul(vocab).saturating_mul(4);
            if bytes > self.budget.max_logit_bytes {
                return Err(ModelError::InvalidInput(format!(
                    "a decoder step over {} prefix(es) returns {bytes} bytes of log-probabilities (vocabulary {vocab}), over the limit of {}; \
                     send fewer prefixes or raise `limits.max_payload_bytes`",
                    prefixes.len(),
                    self.budget.max_logit_bytes
                )));
            }
        }
        Ok(())
    }

    /// How many of these prefixes one full pass may take, so its logits (rows x steps x
    /// vocabulary) stay within the budget. Until the vocabulary is known, one.
    fn chunk_rows(&self, prefixes: &[Vec<u32>]) -> Result<usize, ModelError> {
        let Some(vocab) = self.vocab else { return Ok(1) };
        let steps = self.lead() + prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let per_row = steps.saturating_mul(vocab).saturating_mul(4);
        if per_row > self.budget.max_logit_bytes {
            return Err(ModelError::InvalidInput(format!(
                "a full decoder pass over a prefix of {steps} tokens (prompt included) makes {per_row} bytes of logits \
                 (vocabulary {vocab}), over the limit of {}; use shorter prefixes or raise `limits.max_payload_bytes`",
                self.budget.max_logit_bytes
            )));
        }
        Ok((self.budget.max_logit_bytes / per_row.max(1)).max(1))
    }

    /// Keep the beams at these indices of the last step, in this order (an index may repeat).
    /// With a cache, the cache rows follow, so the next step extends them in place.
    pub fn reorder(&mut self, beams: &[u32]) -> Result<(), ModelError> {
        if let Some(bad) = beams.iter().find(|&&b| b as usize >= self.beams) {
            return Err(ModelError::InvalidInput(format!("reorder: beam {bad} does not exist; the last step scored {} beam(s)", self.beams)));
        }
        if self.order.len() != self.beams {
            // A failed step left no usable cache; the next step runs in full.
            self.cache.clear();
            self.order.clear();
        }
        if !self.cache.is_empty() {
            // Rows of one run share a past length, so each run's picked rows are gathered apart.
            let picked: Vec<(usize, usize)> = beams.iter().map(|&b| self.order[b as usize]).collect();
            let mut runs: Vec<usize> = picked.iter().map(|&(g, _)| g).collect();
            runs.sort_unstable();
            runs.dedup();
            let mut cache = Vec::with_capacity(runs.len());
            for &g in &runs {
                let rows: Vec<(usize, usize)> = picked.iter().copied().filter(|&(run, _)| run == g).collect();
                let prefixes = rows.iter().map(|&(g, r)| self.cache[g].prefixes[r].clone()).collect();
                cache.push(CachedRows { prefixes, values: self.gather(&rows)? });
            }
            let mut next_row = vec![0usize; runs.len()];
            self.order = picked
                .iter()
                .map(|&(g, _)| {
                    let run = runs.binary_search(&g).expect("every picked run was gathered");
                    next_row[run] += 1;
                    (run, next_row[run] - 1)
                })
                .collect();
            self.cache = cache;
        }
        self.beams = beams.len();
        Ok(())
    }

    /// For each prefix, the cache row holding all of it but its last token, if every prefix has
    /// one and all have the same length (one cached run covers them all).
    fn parents(&self, prefixes: &[Vec<u32>]) -> Option<Vec<(usize, usize)>> {
        let len = prefixes[0].len();
        if len == 0 || prefixes.iter().any(|p| p.len() != len) {
            return None;
        }
        let order = &self.order;
        let rows: HashMap<&[u32], (usize, usize)> = order.iter().map(|&(g, r)| (self.cache[g].prefixes[r].as_slice(), (g, r))).collect();
        // Prefer the row at the same index (beams extended in place), else any row that fits.
        prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let parent = &p[..len - 1];
                order.get(i).filter(|&&(g, r)| self.cache[g].prefixes[r] == parent).or_else(|| rows.get(parent)).copied()
            })
            .collect()
    }

    /// Tokens before the first prefix token: the prompt (decoder-only) and the start token.
    fn lead(&self) -> usize {
        match &self.prompt {
            Prompt::Tokens(ids) => ids.len() + 1,
            Prompt::Encoded { .. } => 1,
        }
    }

    /// One step against the cache: run only each prefix's last token.
    fn step_cached(&mut self, prefixes: &[Vec<u32>], parents: &[(usize, usize)]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check_tokens(prefixes)?;
        let n = prefixes.len();
        let in_place = self.cache.len() == 1 && self.cache[0].prefixes.len() == n && parents.iter().enumerate().all(|(i, &p)| p == (0, i));
        let past = if in_place {
            self.cache.remove(0).values
        } else {
            self.stats.regathers += 1;
            self.gather(parents)?
        };
        self.cache.clear();
        self.order.clear();
        let past_len = self.lead() + prefixes[0].len() - 1;
        let ids = prefixes.iter().map(|p| i64::from(*p.last().expect("parents() only matches non-empty prefixes"))).collect();
        let (logprobs, presents) = self.run_bound(ids, n, 1, past_len, Some(past), &[], &|_, _| 0..=0)?;
        self.stats.cached_runs += 1;
        self.cache.push(CachedRows { prefixes: prefixes.to_vec(), values: presents });
        self.order = (0..n).map(|r| (0, r)).collect();
        Ok(logprobs.into_iter().flatten().collect())
    }

    /// Full passes for prefixes the cache cannot extend, one run per prefix length (rows of one
    /// run must share the past length of the cache they leave behind).
    fn full_cached(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut by_length: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, p) in prefixes.iter().enumerate() {
            match by_length.iter_mut().find(|(len, _)| *len == p.len()) {
                Some((_, rows)) => rows.push(i),
                None => by_length.push((p.len(), vec![i])),
            }
        }
        self.cache.clear();
        self.order.clear();
        let mut out = vec![Vec::new(); prefixes.len()];
        for (_, rows) in by_length {
            let group: Vec<Vec<u32>> = rows.iter().map(|&i| prefixes[i].clone()).collect();
            let chunk = self.chunk_rows(&group)?;
            for (group, rows) in group.chunks(chunk).zip(rows.chunks(chunk)) {
                let mut presents = Vec::new();
                let logprobs = self.run_full(group, Some(&mut presents), &|last, _| last..=last)?;
                for (&i, mut row) in rows.iter().zip(logprobs) {
                    out[i] = row.remove(0);
                }
                self.cache.push(CachedRows { prefixes: group.to_vec(), values: presents });
            }
        }
        self.order = prefixes.iter().map(|p| self.cache.iter().enumerate().find_map(|(g, c)| c.prefixes.iter().position(|q| q == p).map(|r| (g, r))).expect("every prefix was run")).collect();
        Ok(out)
    }

    fn check_tokens(&self, prefixes: &[Vec<u32>]) -> Result<(), ModelError> {
        if let Some(vocab) = self.runtime.vocab
            && let Some(bad) = prefixes.iter().flatten().find(|&&c| i64::from(c) >= vocab)
        {
            return Err(ModelError::InvalidInput(format!("token {bad} is outside the decoder's vocabulary of {vocab}")));
        }
        Ok(())
    }

    /// Cache rows `(run, row)` of the last step, copied into one tensor per cache entry.
    fn gather(&self, picked: &[(usize, usize)]) -> Result<Vec<DynTensor>, ModelError> {
        let layout = self.runtime.cache.as_ref().expect("gather runs only with a cache");
        let fail = |e: ort::Error| ModelError::Runtime(anyhow!("cache of `{}`: {e}", self.model));
        let mut out = Vec::with_capacity(layout.entries.len());
        for e in 0..layout.entries.len() {
            // Bring each run's tensor to host memory once (nothing to copy on CPU).
            let mut copies: HashMap<usize, DynTensor> = HashMap::new();
            for &(g, _) in picked {
                let value = &self.cache[g].values[e];
                if !value.memory_info().is_cpu_accessible() && !copies.contains_key(&g) {
                    copies.insert(g, value.to(AllocationDevice::CPU, 0).map_err(fail)?);
                }
            }
            let mut data = Vec::new();
            let mut shape = Vec::new();
            for &(g, r) in picked {
                let value = copies.get(&g).unwrap_or(&self.cache[g].values[e]);
                let (s, values) = value.try_extract_tensor::<f32>().map_err(fail)?;
                let row = values.len() / s[0] as usize;
                data.extend_from_slice(&values[r * row..(r + 1) * row]);
                shape = s.to_vec();
            }
            shape[0] = picked.len() as i64;
            out.push(Tensor::from_array((shape, data)).map_err(fail)?.upcast());
        }
        Ok(out)
    }

    /// Run the decoder over lead + prefix for each prefix (right-padded) and return, per prefix,
    /// the log-probabilities at the steps `keep(last, len)` names, where `last` is the step
    /// predicting the token after the prefix and `len` the prefix's length. With a cache, the
    /// run starts from an empty one and `presents` receives the cache it leaves.
    fn run_full(&mut self, prefixes: &[Vec<u32>], presents: Option<&mut Vec<DynTensor>>, keep: &Keep<'_>) -> Result<LogProbs, ModelError> {
        self.check_tokens(prefixes)?;
        let n = prefixes.len();
        let lead = self.lead();
        let steps = lead + prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![self.spec.start_token as i64; n * steps];
        for (row, prefix) in prefixes.iter().enumerate() {
            let line = &mut ids[row * steps..(row + 1) * steps];
            if let Prompt::Tokens(prompt) = &self.prompt {
                line[..prompt.len()].copy_from_slice(prompt);
            }
            for (i, &code) in prefix.iter().enumerate() {
                line[lead + i] = code as i64;
            }
        }
        let picks: Vec<(usize, usize)> = prefixes.iter().map(|p| (lead - 1 + p.len(), p.len())).collect();
        self.stats.full_runs += 1;
        if self.runtime.cache.is_some() {
            let (logprobs, values) = self.run_bound(ids, n, steps, 0, None, prefixes, &|row, _| keep(picks[row].0, picks[row].1))?;
            if let Some(presents) = presents {
                *presents = values;
            }
            return Ok(logprobs);
        }
        let mut feed: Feed = vec![(self.spec.input_ids.clone().into(), tensor(vec![n as i64, steps as i64], ids)?.into())];
        for (name, value) in self.extra_inputs(n, steps, 0)? {
            feed.push((name.into(), value.into()));
        }
        let runtime = self.runtime.clone();
        let mut decoder = lock(&runtime.decoder, &self.caller)?;
        let watched = Watched::new(self.caller.deadline)?;
        let outputs = decoder.run_with_options(feed, watched.options()).map_err(|e| watched.explain(e, &format!("the decoder of `{}`", self.model)))?;
        let value = outputs.get(self.spec.logits.as_str()).ok_or_else(|| anyhow!("the decoder of `{}` has no output `{}`", self.model, self.spec.logits))?;
        self.logprobs(value, n, steps, prefixes, &|row, _| keep(picks[row].0, picks[row].1))
    }

    /// Run the decoder with I/O binding: `past` (or, for a full pass, none) in, logits to the host
    /// and the new cache left in the cache's memory.
    #[allow(clippy::too_many_arguments)]
    fn run_bound(
        &mut self,
        ids: Vec<i64>,
        n: usize,
        steps: usize,
        past_len: usize,
        past: Option<Vec<DynTensor>>,
        prefixes: &[Vec<u32>],
        keep: &Keep<'_>,
    ) -> Result<(LogProbs, Vec<DynTensor>), ModelError> {
        let runtime = self.runtime.clone();
        let layout = runtime.cache.as_ref().expect("bound runs only with a cache");
        let model = self.model.clone();
        let fail = |e: ort::Error| ModelError::Runtime(anyhow!("the decoder of `{model}` failed: {e}"));
        let stepping = past.is_some();
        // Split exports start from no cache at all; single graphs from an empty one.
        let past: Option<Vec<DynTensor>> = match past {
            Some(past) => Some(past),
            None if self.runtime.with_past.is_some() => None,
            None => Some(
                layout
                    .entries
                    .iter()
                    .map(|entry| {
                        let (mut shape, past_axis) = entry.empty.clone().expect("single-graph cache entries know their empty shape");
                        shape[0] = n as i64;
                        shape[past_axis] = 0;
                        Tensor::<f32>::from_array((shape, Vec::new())).map(Tensor::upcast).map_err(fail)
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let graph = match (&runtime.with_past, stepping) {
            (Some(with_past), true) => with_past,
            _ => &runtime.decoder,
        };
        let mut session = lock(graph, &self.caller)?;
        let takes = |name: &str| session.inputs().iter().any(|i| i.name() == name);
        let mut binding = session.create_binding().map_err(fail)?;
        binding.bind_input(self.spec.input_ids.clone(), &tensor(vec![n as i64, steps as i64], ids)?).map_err(fail)?;
        for (name, value) in self.extra_inputs(n, steps, past_len)? {
            // A split export's step graph may read the encoder through its cache instead.
            if takes(&name) {
                binding.bind_input(name, &value).map_err(fail)?;
            }
        }
        for (entry, value) in layout.entries.iter().zip(past.iter().flatten()) {
            binding.bind_input(entry.past.clone(), value).map_err(fail)?;
        }
        let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default).map_err(fail)?;
        binding.bind_output_to_device(self.spec.logits.clone(), &host).map_err(fail)?;
        let device = layout.memory()?;
        let produced = |entry: &CacheEntry| !stepping || entry.stepped;
        for entry in layout.entries.iter().filter(|e| produced(e)) {
            binding.bind_output_to_device(entry.present.clone(), &device).map_err(fail)?;
        }
        let watched = Watched::new(self.caller.deadline)?;
        let mut outputs = session.run_binding_with_options(&binding, watched.options()).map_err(|e| watched.explain(e, &format!("the decoder of `{}`", self.model)))?;
        let value = outputs.remove(self.spec.logits.as_str()).ok_or_else(|| anyhow!("the decoder of `{}` has no output `{}`", self.model, self.spec.logits))?;
        let logprobs = self.logprobs(&value, n, steps, prefixes, keep)?;
        let mut carried = past.into_iter().flatten();
        let mut presents = Vec::with_capacity(layout.entries.len());
        for entry in &layout.entries {
            let kept = carried.next();
            if !produced(entry) {
                presents.push(kept.expect("a step feeds every cache entry"));
                continue;
            }
            let value = outputs.remove(entry.present.as_str()).ok_or_else(|| anyhow!("the decoder of `{}` returned no `{}`", self.model, entry.present))?;
            let value = value.downcast::<DynTensorValueType>().map_err(|e| anyhow!("`{}` of `{}` is not a tensor: {e}", entry.present, self.model))?;
            let got = value.shape();
            let rows_ok = got.first() == Some(&(n as i64)) && entry.empty.as_ref().is_none_or(|(_, axis)| got.get(*axis) == Some(&((past_len + steps) as i64)));
            if !rows_ok {
                return Err(anyhow!("`{}` of `{}` has shape {got:?}; expected {n} rows and a past length of {}", entry.present, self.model, past_len + steps).into());
            }
            presents.push(value);
        }
        Ok((logprobs, presents))
    }

    /// Inputs besides the token ids: encoder states and mask, the decoder's attention mask and
    /// positions, for `n` rows of `steps` new tokens after `past_len` cached ones.
    fn extra_inputs(&self, n: usize, steps: usize, past_len: usize) -> Result<Vec<(String, DynValue)>, ModelError> {
        let mut extra = Vec::new();
        if let Prompt::Encoded { states, tokens, dim, mask } = &self.prompt {
            let states: Vec<f32> = (0..n).flat_map(|_| states.iter().copied()).collect();
            let name = self.spec.encoder_hidden_states.clone().expect("validated: encoder layouts name the states input");
            extra.push((name, tensor(vec![n as i64, *tokens as i64, *dim as i64], states)?));
            if let Some(name) = &self.spec.encoder_attention_mask {
                let mask: Vec<i64> = (0..n).flat_map(|_| mask.iter().copied()).collect();
                extra.push((name.clone(), tensor(vec![n as i64, *tokens as i64], mask)?));
            }
        }
        if let Some(name) = &self.spec.attention_mask {
            let total = past_len + steps;
            extra.push((name.clone(), tensor(vec![n as i64, total as i64], vec![1i64; n * total])?));
        }
        if let Some(name) = &self.spec.position_ids {
            let positions: Vec<i64> = (0..n).flat_map(|_| (past_len..past_len + steps).map(|p| p as i64)).collect();
            extra.push((name.clone(), tensor(vec![n as i64, steps as i64], positions)?));
        }
        Ok(extra)
    }

    /// Check the logits' shape and return, per row, the log-softmax of the steps `keep(row,
    /// steps)` names (never the whole `[rows, steps, vocab]`); `prefixes`' tokens must be in the
    /// vocabulary. Learns the vocabulary size.
    fn logprobs(&mut self, value: &DynValue, n: usize, steps: usize, prefixes: &[Vec<u32>], keep: &Keep<'_>) -> Result<LogProbs, ModelError> {
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| anyhow!("logits of `{}` are not f32: {e}", self.model))?;
        let &[rows, got_steps, vocab] = &shape[..] else {
            return Err(ModelError::Runtime(anyhow!("`{}` returned logits of shape {shape:?}, not [batch, steps, vocab]", self.model)));
        };
        if rows as usize != n || got_steps as usize != steps || vocab <= 0 {
            return Err(ModelError::Runtime(anyhow!("`{}` returned logits {shape:?} for {n} prefixes of {steps} steps", self.model)));
        }
        let vocab = vocab as usize;
        self.vocab = Some(vocab);
        if let Some(bad) = prefixes.iter().flatten().find(|&&c| c as usize >= vocab) {
            return Err(ModelError::InvalidInput(format!("token {bad} is outside the decoder's vocabulary of {vocab}")));
        }
        Ok((0..n)
            .map(|row| {
                keep(row, steps)
                    .map(|step| {
                        let at = (row * steps + step) * vocab;
                        log_softmax(&data[at..at + vocab])
                    })
                    .collect()
            })
            .collect())
    }
}

/// Log-probabilities per row, per kept step, over the vocabulary.
type LogProbs = Vec<Vec<Vec<f32>>>;

/// Which steps of a row's logits to keep: `(row or last step, prefix length or steps)` to steps.
type Keep<'a> = dyn Fn(usize, usize) -> std::ops::RangeInclusive<usize> + 'a;

/// Lock a session, waiting (with the caller's compute slot released) no longer than its deadline.
fn lock<'a>(session: &'a Mutex<Session>, caller: &Caller) -> Result<MutexGuard<'a, Session>, ModelError> {
    if let Some(guard) = session.try_lock() {
        return Ok(guard);
    }
    let guard = caller.waiting(|| match caller.deadline.remaining() {
        None => Some(session.lock()),
        Some(left) => session.try_lock_for(left),
    })?;
    guard.ok_or_else(|| ModelError::Expired(Expired("a wait for a decoder".into())))
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|x| (x - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|x| x - log_sum).collect()
}
