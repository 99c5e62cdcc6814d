//! Text tokenizers: any Hugging Face `tokenizer.json`, or OpenAI CLIP's byte-level BPE (the
//! `instant-clip-tokenizer` crate, with its bundled vocabulary or a `bpe_simple_vocab_16e6.txt`).

use super::manifest::{ModelManifest, TokenizerKind};
use anyhow::{Context as _, Result, anyhow};

/// Bytes of text kept per token of a model's `max_length` before tokenizing. Real text needs
/// far fewer (a token covers a word piece), so truncation still happens in the tokenizer, but
/// a huge text never reaches it whole.
const BYTES_PER_TOKEN: usize = 128;

/// `text` cut to at most `max_bytes`, at a whitespace when one is near the cut, so the last
/// word kept is whole.
fn cut(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let near = end.saturating_sub(256);
    match text[near..end].rfind(char::is_whitespace) {
        Some(at) => &text[..near + at],
        None => &text[..end],
    }
}

/// One text's token ids and attention mask.
pub(crate) type IdsAndMask = (Vec<i64>, Vec<i64>);

pub(crate) enum TextTokenizer {
    Hf { tokenizer: Box<tokenizers::Tokenizer>, max_length: usize },
    Clip { bpe: Box<instant_clip_tokenizer::Tokenizer>, max_length: usize },
}

impl TextTokenizer {
    pub fn open(manifest: &ModelManifest) -> Result<Self> {
        let spec = manifest.tokenizer.as_ref().context("validated: text models have a tokenizer section")?;
        let path = manifest.files.tokenizer.as_ref();
        match spec.kind {
            TokenizerKind::HfJson => {
                // Tokenize on the caller's thread, in its compute slot. By default a batch goes
                // to rayon's global pool: a handoff to another thread and back for every query,
                // and a tenant's 256-text embed computing on every core outside its share.
                tokenizers::utils::parallelism::set_parallelism(false);
                let path = path.context("validated: tokenizer.json models name the file")?;
                let mut t = tokenizers::Tokenizer::from_file(path)
                    .map_err(|e| anyhow!("cannot read tokenizer {} for model `{}`: {e}", path.display(), manifest.name))?;
                t.with_padding(None);
                t.with_truncation(Some(tokenizers::TruncationParams { max_length: spec.max_length, ..Default::default() }))
                    .map_err(|e| anyhow!("tokenizer for model `{}`: {e}", manifest.name))?;
                Ok(TextTokenizer::Hf { tokenizer: Box::new(t), max_length: spec.max_length })
            }
            TokenizerKind::ClipBpe => {
                let bpe = match path {
                    None => instant_clip_tokenizer::Tokenizer::new(),
                    Some(path) => {
                        let file = std::fs::File::open(path).with_context(|| format!("cannot read CLIP vocabulary {}", path.display()))?;
                        instant_clip_tokenizer::Tokenizer::with_vocabulary(std::io::BufReader::new(file), 49408)
                            .with_context(|| format!("{} is not a CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt, unzipped)", path.display()))?
                    }
                };
                Ok(TextTokenizer::Clip { bpe: Box::new(bpe), max_length: spec.max_length })
            }
        }
    }

    /// Token ids and attention mask of each text, special tokens included, truncated, unpadded.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<IdsAndMask>, String> {
        let limit = self.max_bytes();
        match self {
            TextTokenizer::Hf { tokenizer: t, .. } => {
                let texts: Vec<&str> = texts.iter().map(|text| cut(text, limit)).collect();
                let encodings = t.encode_batch(texts, true).map_err(|e| e.to_string())?;
                Ok(encodings
                    .iter()
                    .map(|e| (e.get_ids().iter().map(|&i| i as i64).collect(), e.get_attention_mask().iter().map(|&m| m as i64).collect()))
                    .collect())
            }
            TextTokenizer::Clip { bpe, max_length } => Ok(texts
                .iter()
                .map(|text| {
                    let mut tokens = vec![bpe.start_of_text()];
                    bpe.encode(cut(text, limit), &mut tokens);
                    // Keep room for end-of-text, as CLIP's own tokenizer does when truncating.
                    tokens.truncate(max_length.saturating_sub(1).max(1));
                    tokens.push(bpe.end_of_text());
                    let ids: Vec<i64> = tokens.into_iter().map(|t| i64::from(t.to_u16())).collect();
                    let mask = vec![1; ids.len()];
                    (ids, mask)
                })
                .collect()),
        }
    }

    /// Token ids, attention mask and segment (token type) ids of each pair, joined as the
    /// tokenizer.json's post-processor says (`[CLS] a [SEP] b [SEP]` for BERT), truncated, unpadded.
    pub fn encode_pairs(&self, pairs: &[(String, String)]) -> Result<Vec<[Vec<i64>; 3]>, String> {
        let limit = self.max_bytes();
        let TextTokenizer::Hf { tokenizer: t, .. } = self else { return Err("CLIP BPE does not tokenize pairs of texts".into()) };
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (cut(a, limit), cut(b, limit))).collect();
        let encodings = t.encode_batch(pairs, true).map_err(|e| e.to_string())?;
        let long = |v: &[u32]| v.iter().map(|&i| i64::from(i)).collect();
        Ok(encodings.iter().map(|e| [long(e.get_ids()), long(e.get_attention_mask()), long(e.get_type_ids())]).collect())
    }

    /// Bytes of a text kept before tokenizing.
    fn max_bytes(&self) -> usize {
        let (TextTokenizer::Hf { max_length, .. } | TextTokenizer::Clip { max_length, .. }) = self;
        max_length.saturating_mul(BYTES_PER_TOKEN).max(BYTES_PER_TOKEN)
    }

    /// The id of `token` if it is exactly one token.
    pub fn single_token(&self, token: &str) -> Option<i64> {
        match self {
            TextTokenizer::Hf { tokenizer: t, .. } => t.token_to_id(token).map(i64::from),
            TextTokenizer::Clip { bpe, .. } => {
                let mut tokens = Vec::new();
                bpe.encode(token, &mut tokens);
                match tokens.as_slice() {
                    [one] => Some(i64::from(one.to_u16())),
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::manifest::{ModelFiles, ModelRole, OutputKind, OutputSpec, TokenizerSpec};

    fn clip(max_length: usize) -> TextTokenizer {
        let manifest = ModelManifest {
            name: "clip".into(),
            role: ModelRole::TextEncoder,
            files: ModelFiles { model: "unused.onnx".into(), tokenizer: None, encoder: None, decoder_with_past: None, sha256: Default::default() },
            inputs: Default::default(),
            output: OutputSpec { name: "text_embeds".into(), kind: OutputKind::Pooled },
            token_output: None,
            tokenizer: Some(TokenizerSpec { kind: TokenizerKind::ClipBpe, max_length, pad_to: Some(77), pad_id: 0 }),
            slots: None,
            decoder: None,
            preprocess: None,
            pooling: Default::default(),
            normalize: true,
            batch: Default::default(),
            execution_provider: Default::default(),
        };
        TextTokenizer::open(&manifest).unwrap()
    }

    #[test]
    fn batches_are_tokenized_on_the_callers_thread() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/minilm-l6.json");
        let manifest = ModelManifest::load(&path).expect("run scripts/setup.sh to install the MiniLM model");
        let tokenizer = TextTokenizer::open(&manifest).unwrap();
        let texts: Vec<String> = (0..64).map(|i| format!("text number {i} about cats and windowsills")).collect();
        assert_eq!(tokenizer.encode(&texts).unwrap().len(), 64);
        assert!(!tokenizers::utils::parallelism::has_parallelism_been_used(), "a batch went to rayon's pool");
    }

    #[test]
    fn texts_are_cut_before_tokenizing_at_a_word() {
        assert_eq!(cut("short", 100), "short");
        assert_eq!(cut("one two three", 9), "one two");
        assert_eq!(cut("ééé", 3), "é", "never inside a character");
        // A 20 MB text costs what its first tokens cost.
        let huge = "word ".repeat(4 << 20);
        let t = clip(8);
        let start = std::time::Instant::now();
        let (ids, _) = t.encode(&[huge]).unwrap().remove(0);
        assert_eq!(ids.len(), 8);
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "{:?}", start.elapsed());
    }

    #[test]
    fn clip_bpe_matches_openai_ids() {
        let t = clip(77);
        let (ids, mask) = t.encode(&["a photo of a cat".to_string()]).unwrap().remove(0);
        assert_eq!(ids, [49406, 320, 1125, 539, 320, 2368, 49407]);
        assert_eq!(mask, [1; 7]);
        assert_eq!(t.single_token("$"), Some(259));
        assert_eq!(t.single_token("a photo"), None);
        // Truncation keeps the end-of-text token.
        let (ids, _) = clip(4).encode(&["a photo of a cat".to_string()]).unwrap().remove(0);
        assert_eq!(ids, [49406, 320, 1125, 49407]);
    }
}
