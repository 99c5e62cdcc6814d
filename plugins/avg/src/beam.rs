//! Trie-constrained beam search over code sequences, independent of where the trie lives.
//!
//! The reference (HongruCai/AVG, `utils.py` `Trie` and `prefix_allowed_tokens_fn`, used by
//! `model.generate(num_beams=10, num_return_sequences=10, prefix_allowed_tokens_fn=...)`)
//! restricts every decoding step to the tokens the identifier trie allows after the prefix.
//! Identical identifiers collapse into one leaf (`load_codes` deduplicates them before
//! building the trie). Here each step makes exactly two batched calls:
//! 1. [`Trie::next_codes`] for all beam prefixes (a host call in the plugin);
//! 2. [`Scorer::score`] for all allowed extensions of the prefixes that have any.
//!
//! Then the best `max(beam, returned)` extensions are kept.
//!
//! Scores are whole-sequence scores: a scorer returns the score of `prefix + code` itself,
//! not an increment. That lets an additive scorer (log-probabilities, inner products) and a
//! non-additive one share one search. Ties break towards the lexicographically smaller
//! sequence, so results are deterministic.

#![forbid(unsafe_code)]

use std::cmp::Ordering;
use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;

use crate::codebook::{Codebook, CodebookError};

/// Where the identifier trie lives: answers "which codes may follow each of these prefixes".
pub trait Trie {
    /// Why a lookup failed (a host error in the plugin).
    type Error;

    /// For every prefix, in order, the codes that extend it towards at least one stored
    /// identifier; empty for a prefix that is a leaf or not in the trie. Order and duplicates
    /// do not matter.
    fn next_codes(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, Self::Error>;
}

/// Scores candidate extensions of the beam, one batch per step.
pub trait Scorer {
    /// Why scoring failed.
    type Error;

    /// For every prefix `i` and every code `allowed[i][j]`, the score of the sequence
    /// `prefixes[i] + [allowed[i][j]]` (higher is better), as `out[i][j]`. `prefix_scores[i]`
    /// is what this scorer returned for `prefixes[i]` at the previous step (0 at the root),
    /// for scorers that accumulate. NaN is not a score; `-inf` is allowed.
    fn score(
        &mut self,
        prefixes: &[Vec<u32>],
        prefix_scores: &[f32],
        allowed: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, Self::Error>;
}

/// Why [`beam_search`] failed.
#[derive(Debug, Clone, PartialEq)]
pub enum BeamError<T, S> {
    /// The trie failed.
    Trie(T),
    /// The scorer failed.
    Scorer(S),
    /// The trie or the scorer broke its contract: wrong number of rows, or a NaN score.
    Malformed(String),
}

impl<T: fmt::Display, S: fmt::Display> fmt::Display for BeamError<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trie(e) => write!(f, "trie lookup failed: {e}"),
            Self::Scorer(e) => write!(f, "scoring failed: {e}"),
            Self::Malformed(what) => write!(f, "malformed answer: {what}"),
        }
    }
}

impl<T: fmt::Debug + fmt::Display, S: fmt::Debug + fmt::Display> std::error::Error
    for BeamError<T, S>
{
}

/// Complete code sequences with their scores, best first.
pub type Ranked = Vec<(Vec<u32>, f32)>;

/// Finds the best complete sequences of `levels` codes allowed by `trie`, best first.
///
/// Every step keeps `max(beam, returned)` prefixes, so asking for more results widens the
/// beam. It returns at most `returned` sequences, all of length `levels` and all reached
/// through the trie. A prefix the trie cannot extend is dropped. The search stops early,
/// with no result, once no prefix can be extended. With a width at least the number of
/// stored sequences the search is exhaustive. `levels == 0` or `returned == 0` gives an
/// empty result.
pub fn beam_search<T: Trie, S: Scorer>(
    trie: &mut T,
    scorer: &mut S,
    levels: usize,
    beam: usize,
    returned: usize,
) -> Result<Ranked, BeamError<T::Error, S::Error>> {
    if levels == 0 || returned == 0 {
        return Ok(Vec::new());
    }
    let width = beam.max(returned);
    let mut prefixes: Vec<Vec<u32>> = vec![Vec::new()];
    let mut scores: Vec<f32> = vec![0.0];
    for step in 0..levels {
        let allowed = trie.next_codes(&prefixes).map_err(BeamError::Trie)?;
        if allowed.len() != prefixes.len() {
            return Err(BeamError::Malformed(format!(
                "trie answered {} rows for {} prefixes",
                allowed.len(),
                prefixes.len()
            )));
        }
        let (mut live, mut live_scores, mut live_allowed) = (Vec::new(), Vec::new(), Vec::new());
        for ((prefix, score), mut codes) in prefixes.into_iter().zip(scores).zip(allowed) {
            codes.sort_unstable();
            codes.dedup();
            if !codes.is_empty() {
                live.push(prefix);
                live_scores.push(score);
                live_allowed.push(codes);
            }
        }
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let rows = scorer
            .score(&live, &live_scores, &live_allowed)
            .map_err(BeamError::Scorer)?;
        if rows.len() != live.len() {
            return Err(BeamError::Malformed(format!(
                "scorer answered {} rows for {} prefixes at step {step}",
                rows.len(),
                live.len()
            )));
        }
        let order = |a: &(f32, usize, u32), b: &(f32, usize, u32)| -> Ordering {
            b.0.total_cmp(&a.0)
                .then_with(|| live[a.1].cmp(&live[b.1]))
                .then(a.2.cmp(&b.2))
        };
        // The best `width` so far, in order: most candidates lose to the worst kept at one
        // comparison, so a step costs about one comparison per allowed code.
        let mut candidates: Vec<(f32, usize, u32)> = Vec::with_capacity(width + 1);
        for (i, (row, codes)) in rows.iter().zip(&live_allowed).enumerate() {
            if row.len() != codes.len() {
                return Err(BeamError::Malformed(format!(
                    "scorer answered {} scores for {} codes at step {step}",
                    row.len(),
                    codes.len()
                )));
            }
            for (&s, &code) in row.iter().zip(codes) {
                if s.is_nan() {
                    return Err(BeamError::Malformed(format!("NaN score at step {step}")));
                }
                // + 0.0 turns -0.0 into 0.0 so that total_cmp sees them as the tie they are.
                let candidate = (s + 0.0, i, code);
                if candidates.len() == width && order(&candidate, &candidates[width - 1]) != Ordering::Less {
                    continue;
                }
                let at = candidates.partition_point(|kept| order(kept, &candidate) == Ordering::Less);
                candidates.insert(at, candidate);
                candidates.truncate(width);
            }
        }
        prefixes = candidates
            .iter()
            .map(|&(_, i, code)| {
                let mut p = Vec::with_capacity(step + 1);
                p.extend_from_slice(&live[i]);
                p.push(code);
                p
            })
            .collect();
        scores = candidates.iter().map(|c| c.0).collect();
    }
    Ok(prefixes.into_iter().zip(scores).take(returned).collect())
}

/// An in-memory trie over a sorted, deduplicated list of sequences: for tests, for checking
/// a host trie, and for collections small enough to hold in the sandbox. Building it from
/// identifiers that several items share stores each identifier once: one leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortedTrie {
    sequences: Vec<Vec<u32>>,
}

impl SortedTrie {
    /// Builds the trie; duplicate sequences collapse into one.
    pub fn new<I: IntoIterator<Item = Vec<u32>>>(sequences: I) -> Self {
        let mut sequences: Vec<Vec<u32>> = sequences.into_iter().collect();
        sequences.sort_unstable();
        sequences.dedup();
        Self { sequences }
    }

    /// Distinct sequences stored.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Whether `sequence` is stored.
    pub fn contains(&self, sequence: &[u32]) -> bool {
        self.sequences
            .binary_search_by(|s| s.as_slice().cmp(sequence))
            .is_ok()
    }

    /// The stored sequences, sorted.
    pub fn sequences(&self) -> &[Vec<u32>] {
        &self.sequences
    }

    /// Codes that follow `prefix`, ascending, found by binary search in O(children · log n).
    pub fn children(&self, prefix: &[u32]) -> Vec<u32> {
        let depth = prefix.len();
        let start = self.sequences.partition_point(|s| s.as_slice() < prefix);
        let rest = &self.sequences[start..];
        // Sequences starting with `prefix` form a contiguous run; `prefix` itself sorts first.
        let mut block = &rest[..rest.partition_point(|s| s.starts_with(prefix))];
        let mut out = Vec::new();
        while let Some(pos) = block.iter().position(|s| s.len() > depth) {
            let code = block[pos][depth];
            out.push(code);
            block = &block[pos..];
            block = &block[block.partition_point(|s| s[depth] <= code)..];
        }
        out
    }
}

impl Trie for SortedTrie {
    type Error = Infallible;

    fn next_codes(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, Infallible> {
        Ok(prefixes.iter().map(|p| self.children(p)).collect())
    }
}

/// Why one of the shipped scorers failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreError<E> {
    /// The decoder closure failed.
    Source(E),
    /// A code has no codeword, or its vocabulary index is outside the decoder's row.
    CodeOutOfRange {
        /// The code.
        code: u32,
        /// Codewords, or the length of the decoder row.
        limit: usize,
    },
    /// The decoder returned a different number of rows than prefixes.
    Rows {
        /// Prefixes sent.
        expected: usize,
        /// Rows returned.
        got: usize,
    },
}

impl<E: fmt::Display> fmt::Display for ScoreError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(e) => write!(f, "decoder failed: {e}"),
            Self::CodeOutOfRange { code, limit } => write!(f, "code {code} out of range ({limit})"),
            Self::Rows { expected, got } => {
                write!(f, "decoder returned {got} rows for {expected} prefixes")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ScoreError<E> {}

/// Zero-shot scoring without a trained decoder: a sequence scores `q · reconstruct(codes)`,
/// the inner product of the query with the sum of its codewords. A prefix scores its partial
/// reconstruction, so `score(prefix + c) = q · (reconstruct(prefix) + codeword(c))`.
///
/// Inner product, not cosine: it is linear in the codewords, so a sequence's score is the
/// sum of per-code terms `q · codeword`. Those terms are computed once per query (K dot
/// products), and each candidate then costs O(L). A beam ranks complete identifiers exactly
/// by their final reconstruction score. Cosine would divide by `|reconstruct(prefix)|`, which
/// changes as a prefix grows. Normalise `q`, and learn the codebook on normalised
/// embeddings; reconstructions then approximate unit vectors, and the score approximates
/// the cosine of query and item.
#[derive(Debug, Clone, PartialEq)]
pub struct ZeroShotScorer {
    per_code: Vec<f32>,
}

impl ZeroShotScorer {
    /// Prepares the per-code terms `q · codeword(c)` for the query `q`.
    pub fn new(codebook: &Codebook, query: &[f32]) -> Result<Self, CodebookError> {
        if query.len() != codebook.dim() {
            return Err(CodebookError::DimMismatch {
                expected: codebook.dim(),
                got: query.len(),
            });
        }
        if let Some(index) = query.iter().position(|x| !x.is_finite()) {
            return Err(CodebookError::NonFinite { index });
        }
        let per_code = codebook
            .codewords()
            .chunks_exact(codebook.dim())
            .map(|w| w.iter().zip(query).map(|(a, b)| a * b).sum())
            .collect();
        Ok(Self { per_code })
    }

    /// `q · reconstruct(codes)` for any sequence or prefix, summed in code order: the
    /// same arithmetic the search uses, so a brute-force ranking agrees with it exactly.
    pub fn sequence_score(&self, codes: &[u32]) -> Result<f32, ScoreError<Infallible>> {
        codes
            .iter()
            .try_fold(0.0f32, |acc, &c| Ok(acc + self.term(c)?))
    }

    fn term(&self, code: u32) -> Result<f32, ScoreError<Infallible>> {
        self.per_code
            .get(code as usize)
            .copied()
            .ok_or(ScoreError::CodeOutOfRange {
                code,
                limit: self.per_code.len(),
            })
    }
}

impl Scorer for ZeroShotScorer {
    type Error = ScoreError<Infallible>;

    /// Recomputes each prefix's score from its codes rather than trusting `prefix_scores`,
    /// so the result is the definition above whatever the caller passes.
    fn score(
        &mut self,
        prefixes: &[Vec<u32>],
        _prefix_scores: &[f32],
        allowed: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, Self::Error> {
        prefixes
            .iter()
            .zip(allowed)
            .map(|(prefix, codes)| {
                let base = self.sequence_score(prefix)?;
                codes.iter().map(|&c| Ok(base + self.term(c)?)).collect()
            })
            .collect()
    }
}

/// Adapts an autoregressive decoder to [`Scorer`]. The closure gets the beam prefixes as
/// vocabulary tokens (`code + vocab_offset`, matching the reference, which appends the K
/// code tokens after the base vocabulary). It returns, per prefix, the log-probabilities
/// of the next token over the whole vocabulary. A sequence scores the sum of its tokens'
/// log-probabilities, unrenormalised over the allowed codes, as in Hugging Face's
/// constrained beam search the reference uses. The decoder's own start token and prompt
/// are the closure's business.
pub struct DecoderScorer<F, E> {
    step: F,
    vocab_offset: u32,
    _error: PhantomData<fn() -> E>,
}

impl<F, E> DecoderScorer<F, E>
where
    F: FnMut(&[Vec<u32>]) -> Result<Vec<Vec<f32>>, E>,
{
    /// Wraps `step`, which maps token prefixes to next-token log-probability rows.
    pub fn new(step: F, vocab_offset: u32) -> Self {
        Self {
            step,
            vocab_offset,
            _error: PhantomData,
        }
    }

    fn token(&self, code: u32) -> Result<u32, ScoreError<E>> {
        code.checked_add(self.vocab_offset)
            .ok_or(ScoreError::CodeOutOfRange {
                code,
                limit: u32::MAX as usize,
            })
    }
}

impl<F, E> Scorer for DecoderScorer<F, E>
where
    F: FnMut(&[Vec<u32>]) -> Result<Vec<Vec<f32>>, E>,
{
    type Error = ScoreError<E>;

    fn score(
        &mut self,
        prefixes: &[Vec<u32>],
        prefix_scores: &[f32],
        allowed: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, Self::Error> {
        let tokens = prefixes
            .iter()
            .map(|p| {
                p.iter()
                    .map(|&c| self.token(c))
                    .collect::<Result<Vec<u32>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows = (self.step)(&tokens).map_err(ScoreError::Source)?;
        if rows.len() != prefixes.len() {
            return Err(ScoreError::Rows {
                expected: prefixes.len(),
                got: rows.len(),
            });
        }
        rows.iter()
            .zip(prefix_scores)
            .zip(allowed)
            .map(|((row, &base), codes)| {
                codes
                    .iter()
                    .map(|&c| {
                        let logp =
                            row.get(self.token(c)? as usize)
                                .ok_or(ScoreError::CodeOutOfRange {
                                    code: c,
                                    limit: row.len(),
                                })?;
                        Ok(base + logp)
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook::{LearnConfig, SplitMix64, learn};

    /// A scorer that is NOT additive: every (partial) sequence gets an unrelated
    /// pseudo-random score, so only an exhaustive search can be sure to find the best.
    struct HashScorer {
        calls: usize,
    }

    fn hash_score(seq: &[u32]) -> f32 {
        let mut h = SplitMix64::new(0xC0FFEE);
        let mut x = h.next_u64();
        for &c in seq {
            x = SplitMix64::new(x ^ u64::from(c)).next_u64();
        }
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    impl Scorer for HashScorer {
        type Error = Infallible;
        fn score(
            &mut self,
            prefixes: &[Vec<u32>],
            _: &[f32],
            allowed: &[Vec<u32>],
        ) -> Result<Vec<Vec<f32>>, Infallible> {
            self.calls += 1;
            Ok(prefixes
                .iter()
                .zip(allowed)
                .map(|(p, codes)| {
                    codes
                        .iter()
                        .map(|&c| {
                            let mut s = p.clone();
                            s.push(c);
                            hash_score(&s)
                        })
                        .collect()
                })
                .collect())
        }
    }

    /// Counts batched calls so the tests can check one call per step.
    struct CountingTrie {
        inner: SortedTrie,
        calls: usize,
    }

    impl Trie for CountingTrie {
        type Error = Infallible;
        fn next_codes(&mut self, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, Infallible> {
            self.calls += 1;
            self.inner.next_codes(prefixes)
        }
    }

    fn random_trie(rng: &mut SplitMix64, n: usize, levels: usize, alphabet: u64) -> SortedTrie {
        SortedTrie::new((0..n).map(|_| (0..levels).map(|_| rng.below(alphabet) as u32).collect()))
    }

    /// All stored sequences of length `levels`, scored and sorted as the search sorts.
    fn exhaustive(
        trie: &SortedTrie,
        levels: usize,
        score: impl Fn(&[u32]) -> f32,
    ) -> Vec<(Vec<u32>, f32)> {
        let mut all: Vec<(Vec<u32>, f32)> = trie
            .sequences()
            .iter()
            .filter(|s| s.len() == levels)
            .map(|s| (s.clone(), score(s) + 0.0))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all
    }

    #[test]
    fn sorted_trie_children() {
        let trie = SortedTrie::new(vec![
            vec![1, 2, 3],
            vec![1, 2, 4],
            vec![1, 5, 0],
            vec![2, 0, 0],
            vec![1, 2, 3],
            vec![1],
        ]);
        assert_eq!(trie.len(), 5);
        assert_eq!(trie.children(&[]), vec![1, 2]);
        assert_eq!(trie.children(&[1]), vec![2, 5]);
        assert_eq!(trie.children(&[1, 2]), vec![3, 4]);
        assert_eq!(trie.children(&[1, 2, 3]), Vec::<u32>::new());
        assert_eq!(trie.children(&[3]), Vec::<u32>::new());
        assert!(trie.contains(&[1, 5, 0]) && !trie.contains(&[1, 5]));
    }

    #[test]
    fn wide_beam_matches_exhaustive_search() {
        let mut rng = SplitMix64::new(42);
        for round in 0..20 {
            let levels = 1 + round % 4;
            let trie = random_trie(&mut rng, 60, levels, 5);
            let expect = exhaustive(&trie, levels, hash_score);
            for returned in [1, 3, 10, expect.len()] {
                let mut t = CountingTrie {
                    inner: trie.clone(),
                    calls: 0,
                };
                let mut s = HashScorer { calls: 0 };
                let got = beam_search(&mut t, &mut s, levels, trie.len(), returned).unwrap();
                assert_eq!(
                    got,
                    expect[..returned.min(expect.len())].to_vec(),
                    "round {round}"
                );
                // One batched trie call and one batched scorer call per step.
                assert_eq!((t.calls, s.calls), (levels, levels));
            }
        }
    }

    #[test]
    fn narrow_beam_returns_only_stored_complete_sequences() {
        let mut rng = SplitMix64::new(7);
        for round in 0..30 {
            let levels = 4;
            // Mix in shorter sequences: dead ends the search must drop.
            let mut seqs: Vec<Vec<u32>> = random_trie(&mut rng, 40, levels, 4).sequences().to_vec();
            seqs.extend(
                (0..10).map(|_| (0..1 + rng.below(3)).map(|_| rng.below(6) as u32).collect()),
            );
            let trie = SortedTrie::new(seqs);
            let got = beam_search(
                &mut trie.clone(),
                &mut HashScorer { calls: 0 },
                levels,
                2,
                5,
            )
            .unwrap();
            assert!(got.len() <= 5);
            for (seq, score) in &got {
                assert_eq!(seq.len(), levels, "round {round}");
                assert!(trie.contains(seq), "round {round}: {seq:?} not stored");
                assert_eq!(*score, hash_score(seq));
            }
            for pair in got.windows(2) {
                assert!(pair[0].1 >= pair[1].1 && pair[0].0 != pair[1].0);
            }
        }
    }

    #[test]
    fn dead_ends_stop_the_search() {
        let trie = SortedTrie::new(vec![vec![1, 2], vec![3]]);
        let got = beam_search(&mut trie.clone(), &mut HashScorer { calls: 0 }, 3, 10, 10).unwrap();
        assert!(got.is_empty());
        let mut t = CountingTrie {
            inner: SortedTrie::new(vec![vec![1]]),
            calls: 0,
        };
        assert!(
            beam_search(&mut t, &mut HashScorer { calls: 0 }, 4, 10, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(t.calls, 2, "stops as soon as nothing can be extended");
        assert!(
            beam_search(
                &mut SortedTrie::default(),
                &mut HashScorer { calls: 0 },
                2,
                3,
                3
            )
            .unwrap()
            .is_empty()
        );
        assert!(
            beam_search(&mut trie.clone(), &mut HashScorer { calls: 0 }, 0, 3, 3)
                .unwrap()
                .is_empty()
        );
        assert!(
            beam_search(&mut trie.clone(), &mut HashScorer { calls: 0 }, 2, 3, 0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn shared_identifiers_are_one_leaf() {
        // Five items, three identifiers.
        let items = [vec![0, 1], vec![0, 1], vec![2, 2], vec![0, 1], vec![2, 2]];
        let trie = SortedTrie::new(items.iter().cloned().chain([vec![1, 0]]));
        assert_eq!(trie.len(), 3);
        let got = beam_search(&mut trie.clone(), &mut HashScorer { calls: 0 }, 2, 10, 10).unwrap();
        let mut seqs: Vec<Vec<u32>> = got.into_iter().map(|(s, _)| s).collect();
        seqs.sort();
        assert_eq!(seqs, vec![vec![0, 1], vec![1, 0], vec![2, 2]]);
    }

    #[test]
    fn ties_break_towards_the_smaller_sequence() {
        struct Flat;
        impl Scorer for Flat {
            type Error = Infallible;
            fn score(
                &mut self,
                _: &[Vec<u32>],
                _: &[f32],
                allowed: &[Vec<u32>],
            ) -> Result<Vec<Vec<f32>>, Infallible> {
                Ok(allowed
                    .iter()
                    .map(|a| a.iter().map(|_| 0.0).collect())
                    .collect())
            }
        }
        let trie = SortedTrie::new(vec![vec![3, 1], vec![0, 2], vec![0, 1], vec![2, 0]]);
        let got = beam_search(&mut trie.clone(), &mut Flat, 2, 2, 2).unwrap();
        assert_eq!(got, vec![(vec![0, 1], 0.0), (vec![0, 2], 0.0)]);
    }

    #[test]
    fn broken_answers_are_errors() {
        struct Short;
        impl Trie for Short {
            type Error = &'static str;
            fn next_codes(&mut self, _: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, &'static str> {
                Ok(Vec::new())
            }
        }
        struct Failing;
        impl Trie for Failing {
            type Error = &'static str;
            fn next_codes(&mut self, _: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, &'static str> {
                Err("host down")
            }
        }
        struct Nan;
        impl Scorer for Nan {
            type Error = Infallible;
            fn score(
                &mut self,
                _: &[Vec<u32>],
                _: &[f32],
                allowed: &[Vec<u32>],
            ) -> Result<Vec<Vec<f32>>, Infallible> {
                Ok(allowed
                    .iter()
                    .map(|a| a.iter().map(|_| f32::NAN).collect())
                    .collect())
            }
        }
        struct Ragged;
        impl Scorer for Ragged {
            type Error = Infallible;
            fn score(
                &mut self,
                p: &[Vec<u32>],
                _: &[f32],
                _: &[Vec<u32>],
            ) -> Result<Vec<Vec<f32>>, Infallible> {
                Ok(p.iter().map(|_| Vec::new()).collect())
            }
        }
        let trie = SortedTrie::new(vec![vec![1, 2]]);
        assert!(matches!(
            beam_search(&mut Short, &mut Nan, 2, 2, 2),
            Err(BeamError::Malformed(_))
        ));
        assert_eq!(
            beam_search(&mut Failing, &mut Nan, 2, 2, 2),
            Err(BeamError::Trie("host down"))
        );
        assert!(matches!(
            beam_search(&mut trie.clone(), &mut Nan, 2, 2, 2),
            Err(BeamError::Malformed(_))
        ));
        assert!(matches!(
            beam_search(&mut trie.clone(), &mut Ragged, 2, 2, 2),
            Err(BeamError::Malformed(_))
        ));
    }

    #[test]
    fn zero_shot_scores_the_reconstruction() {
        let mut rng = SplitMix64::new(3);
        let dim = 6;
        let words: Vec<f32> = (0..8 * dim).map(|_| rng.unit() as f32 - 0.5).collect();
        let cb = Codebook::new(dim, 3, words).unwrap();
        let q: Vec<f32> = (0..dim).map(|_| rng.unit() as f32 - 0.5).collect();
        let scorer = ZeroShotScorer::new(&cb, &q).unwrap();
        let trie = random_trie(&mut rng, 120, 3, 8);
        for seq in trie.sequences() {
            let rec = cb.reconstruct(seq).unwrap();
            let direct: f32 = rec.iter().zip(&q).map(|(a, b)| a * b).sum();
            assert!((scorer.sequence_score(seq).unwrap() - direct).abs() < 1e-5);
        }
        let expect = exhaustive(&trie, 3, |s| scorer.sequence_score(s).unwrap());
        let got = beam_search(&mut trie.clone(), &mut scorer.clone(), 3, trie.len(), 10).unwrap();
        assert_eq!(got, expect[..10].to_vec());

        assert!(ZeroShotScorer::new(&cb, &q[..2]).is_err());
        let bad = SortedTrie::new(vec![vec![9, 0, 0]]);
        assert_eq!(
            beam_search(&mut bad.clone(), &mut scorer.clone(), 3, 2, 2),
            Err(BeamError::Scorer(ScoreError::CodeOutOfRange {
                code: 9,
                limit: 8
            }))
        );
    }

    #[test]
    fn zero_shot_finds_the_item_itself() {
        // Unit vectors spread over the sphere (items an identifier can tell apart); the query
        // is an indexed item.
        let mut rng = SplitMix64::new(5);
        let dim = 8;
        let mut data = Vec::new();
        for _ in 0..200 {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| (0..4).map(|_| rng.unit() as f32).sum::<f32>() - 2.0)
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            data.extend(v);
        }
        let cb = learn(
            &data,
            dim,
            &LearnConfig {
                k: 48,
                levels: 3,
                iterations: 10,
                max_sample: 1000,
                seed: 1,
            },
        )
        .unwrap();
        let ids: Vec<Vec<u32>> = data
            .chunks_exact(dim)
            .map(|v| cb.encode(v).unwrap())
            .collect();
        let trie = SortedTrie::new(ids.clone());
        let mut hits = 0;
        for (v, id) in data.chunks_exact(dim).zip(&ids).take(50) {
            let mut scorer = ZeroShotScorer::new(&cb, v).unwrap();
            let got = beam_search(&mut trie.clone(), &mut scorer, 3, 10, 10).unwrap();
            hits += usize::from(got.iter().any(|(s, _)| s == id));
        }
        assert!(
            hits >= 45,
            "only {hits}/50 items found among their own top 10"
        );
    }

    /// A toy decoder: log-softmax of logits that depend on the token prefix.
    fn toy_log_probs(prefix: &[u32], vocab: usize) -> Vec<f32> {
        let logits: Vec<f32> = (0..vocab)
            .map(|t| hash_score(&[prefix, &[t as u32]].concat()) * 4.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        logits.iter().map(|l| l - lse).collect()
    }

    #[test]
    fn decoder_scores_accumulate_log_probs() {
        let (offset, k, levels) = (5u32, 6usize, 3);
        let vocab = offset as usize + k;
        let mut rng = SplitMix64::new(11);
        let trie = random_trie(&mut rng, 50, levels, k as u64);
        let mut batches = Vec::new();
        let got = {
            let mut scorer = DecoderScorer::new(
                |prefixes: &[Vec<u32>]| -> Result<Vec<Vec<f32>>, String> {
                    batches.push(prefixes.len());
                    assert!(
                        prefixes.iter().flatten().all(|&t| t >= offset),
                        "codes must arrive as tokens"
                    );
                    Ok(prefixes.iter().map(|p| toy_log_probs(p, vocab)).collect())
                },
                offset,
            );
            beam_search(&mut trie.clone(), &mut scorer, levels, trie.len(), 10).unwrap()
        };
        let expect = exhaustive(&trie, levels, |s| {
            let tokens: Vec<u32> = s.iter().map(|c| c + offset).collect();
            (0..levels).fold(0.0f32, |acc, t| {
                acc + toy_log_probs(&tokens[..t], vocab)[tokens[t] as usize]
            })
        });
        assert_eq!(got, expect[..10].to_vec());
        assert_eq!(batches.len(), levels, "one decoder call per step");
    }

    #[test]
    fn decoder_failures_are_errors() {
        let trie = SortedTrie::new(vec![vec![0, 1], vec![3, 0]]);
        let mut failing = DecoderScorer::new(
            |_: &[Vec<u32>]| -> Result<Vec<Vec<f32>>, String> { Err("oom".into()) },
            0,
        );
        assert_eq!(
            beam_search(&mut trie.clone(), &mut failing, 2, 2, 2),
            Err(BeamError::Scorer(ScoreError::Source("oom".to_string())))
        );
        let mut few = DecoderScorer::new(
            |_: &[Vec<u32>]| -> Result<Vec<Vec<f32>>, String> { Ok(Vec::new()) },
            0,
        );
        assert_eq!(
            beam_search(&mut trie.clone(), &mut few, 2, 2, 2),
            Err(BeamError::Scorer(ScoreError::Rows {
                expected: 1,
                got: 0
            }))
        );
        // A row too short for code 3 at offset 2.
        let mut short = DecoderScorer::new(
            |p: &[Vec<u32>]| -> Result<Vec<Vec<f32>>, String> {
                Ok(p.iter().map(|_| vec![0.0; 4]).collect())
            },
            2,
        );
        assert_eq!(
            beam_search(&mut trie.clone(), &mut short, 2, 2, 2),
            Err(BeamError::Scorer(ScoreError::CodeOutOfRange {
                code: 3,
                limit: 4
            }))
        );
        let mut overflow = DecoderScorer::new(
            |p: &[Vec<u32>]| -> Result<Vec<Vec<f32>>, String> {
                Ok(p.iter().map(|_| vec![0.0]).collect())
            },
            u32::MAX,
        );
        assert!(matches!(
            beam_search(
                &mut SortedTrie::new(vec![vec![3, 0]]),
                &mut overflow,
                2,
                2,
                2
            ),
            Err(BeamError::Scorer(ScoreError::CodeOutOfRange {
                code: 3,
                ..
            }))
        ));
    }
}
