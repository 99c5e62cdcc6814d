//! Generation sessions: a prompt encoded once, then next-token log-probabilities for batches of
//! beam prefixes, with the prompt's state kept in the host between steps.
//!
//! Supported layouts: encoder-decoder (the encoder runs once per session; each step feeds its
//! states to the decoder) and decoder-only (each step feeds prompt + prefix). Steps re-run the
//! decoder over the whole prefix; exports with past-key-value inputs are not wired yet.

use super::ModelError;
use super::manifest::{DecoderSpec, ModelManifest};
use anyhow::anyhow;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A decoder's sessions, shared by every generation on it.
pub(crate) struct DecoderRuntime {
    pub encoder: Option<Mutex<Session>>,
    pub decoder: Mutex<Session>,
    pub live: Arc<AtomicUsize>,
}

/// What a generation keeps of its prompt.
enum Prompt {
    /// Encoder states `[1, tokens, dim]` and the prompt's attention mask.
    Encoded { states: Vec<f32>, tokens: usize, dim: usize, mask: Vec<i64> },
    /// The prompt's token ids, placed before every prefix.
    Tokens(Vec<i64>),
}

/// One generation session. Dropping it frees its state.
pub struct Generation {
    runtime: Arc<DecoderRuntime>,
    spec: DecoderSpec,
    model: String,
    prompt: Prompt,
    /// How many beams the last step scored; `reorder` indexes into them.
    beams: usize,
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.runtime.live.fetch_sub(1, Ordering::Relaxed);
    }
}

type Feed = Vec<(Cow<'static, str>, SessionInputValue<'static>)>;

fn tensor<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(shape: Vec<i64>, data: Vec<T>) -> Result<Tensor<T>, ModelError> {
    Tensor::from_array((shape, data)).map_err(|e| ModelError::Runtime(anyhow!("{e}")))
}

impl Generation {
    /// Open a session: encode `prompt_ids` once (encoder-decoder) or keep them (decoder-only).
    pub(crate) fn start(runtime: Arc<DecoderRuntime>, manifest: &ModelManifest, prompt_ids: Vec<i64>) -> Result<Self, ModelError> {
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
                let mut encoder = encoder.lock().unwrap();
                let outputs = encoder.run(feed).map_err(|e| anyhow!("the encoder of `{}` failed: {e}", manifest.name))?;
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
        Ok(Generation { runtime, spec, model: manifest.name.clone(), prompt, beams: 0 })
    }

    /// Log-probabilities over the vocabulary of the token after each prefix.
    pub fn next_logprobs(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let rows = self.run(prefixes)?;
        self.beams = prefixes.len();
        Ok(rows.into_iter().zip(prefixes).map(|(steps, prefix)| steps[prefix.len()].clone()).collect())
    }

    /// Log-probabilities at every position of one full forward pass over `prefix`: row `t` is the
    /// distribution of the token after `prefix[..t]`.
    pub fn full_logprobs(&mut self, prefix: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(self.run(std::slice::from_ref(&prefix.to_vec()))?.remove(0)[..=prefix.len()].to_vec())
    }

    /// Keep the beams at these indices of the last step, in this order. Sessions without a
    /// key-value cache keep nothing per beam, so this only checks the indices.
    pub fn reorder(&mut self, beams: &[u32]) -> Result<(), ModelError> {
        if let Some(bad) = beams.iter().find(|&&b| b as usize >= self.beams) {
            return Err(ModelError::InvalidInput(format!("reorder: beam {bad} does not exist; the last step scored {} beam(s)", self.beams)));
        }
        Ok(())
    }

    /// Run the decoder over `[start] + prefix` for each prefix (right-padded); returns per prefix
    /// the log-softmax at every position.
    fn run(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        if prefixes.is_empty() {
            return Ok(Vec::new());
        }
        let n = prefixes.len();
        let prompt_len = match &self.prompt {
            Prompt::Tokens(ids) => ids.len(),
            Prompt::Encoded { .. } => 0,
        };
        let steps = prompt_len + 1 + prefixes.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![self.spec.start_token as i64; n * steps];
        for (row, prefix) in prefixes.iter().enumerate() {
            let line = &mut ids[row * steps..(row + 1) * steps];
            if let Prompt::Tokens(prompt) = &self.prompt {
                line[..prompt_len].copy_from_slice(prompt);
            }
            line[prompt_len] = self.spec.start_token as i64;
            for (i, &code) in prefix.iter().enumerate() {
                line[prompt_len + 1 + i] = code as i64;
            }
        }
        let mut feed: Feed = vec![(self.spec.input_ids.clone().into(), tensor(vec![n as i64, steps as i64], ids)?.into())];
        if let Prompt::Encoded { states, tokens, dim, mask } = &self.prompt {
            let states: Vec<f32> = (0..n).flat_map(|_| states.iter().copied()).collect();
            let name = self.spec.encoder_hidden_states.clone().expect("validated: encoder layouts name the states input");
            feed.push((name.into(), tensor(vec![n as i64, *tokens as i64, *dim as i64], states)?.into()));
            if let Some(name) = &self.spec.encoder_attention_mask {
                let mask: Vec<i64> = (0..n).flat_map(|_| mask.iter().copied()).collect();
                feed.push((name.clone().into(), tensor(vec![n as i64, *tokens as i64], mask)?.into()));
            }
        }
        let mut decoder = self.runtime.decoder.lock().unwrap();
        let outputs = decoder.run(feed).map_err(|e| anyhow!("the decoder of `{}` failed: {e}", self.model))?;
        let value = outputs.get(self.spec.logits.as_str()).ok_or_else(|| anyhow!("the decoder of `{}` has no output `{}`", self.model, self.spec.logits))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| anyhow!("logits are not f32: {e}"))?;
        let &[rows, got_steps, vocab] = &shape[..] else {
            return Err(ModelError::Runtime(anyhow!("`{}` returned logits of shape {shape:?}, not [batch, steps, vocab]", self.model)));
        };
        let (got_steps, vocab) = (got_steps as usize, vocab as usize);
        if rows as usize != n || got_steps != steps {
            return Err(ModelError::Runtime(anyhow!("`{}` returned logits {shape:?} for {n} prefixes of {steps} steps", self.model)));
        }
        if let Some(bad) = prefixes.iter().flatten().find(|&&c| c as usize >= vocab) {
            return Err(ModelError::InvalidInput(format!("token {bad} is outside the decoder's vocabulary of {vocab}")));
        }
        Ok((0..n)
            .map(|row| {
                (prompt_len..steps)
                    .map(|t| log_softmax(&data[(row * steps + t) * vocab..(row * steps + t + 1) * vocab]))
                    .collect()
            })
            .collect())
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|x| (x - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|x| x - log_sum).collect()
}
