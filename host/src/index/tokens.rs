//! Token sets of one field, and late interaction (MaxSim) over them.

use super::Scored;
use super::flat::inner_products;
use crate::capacity::{Deadline, Expired};
use rayon::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct TokenSets {
    sets: HashMap<String, (usize, Vec<f32>)>,
}

impl TokenSets {
    pub fn upsert(&mut self, id: &str, dim: usize, data: &[f32]) {
        self.sets.insert(id.to_string(), (dim, data.to_vec()));
    }

    pub fn remove(&mut self, id: &str) {
        self.sets.remove(id);
    }

    /// For each candidate with a token set: the sum over query tokens of the best inner product
    /// with any of its tokens. Candidates without a token set are left out; each is scored once.
    /// Best first. Long candidate lists are scored on the thread pool, a candidate per task.
    ///
    /// `budget` bounds the multiply-adds (query tokens x stored tokens x dimension, over all
    /// candidates), checked before any is done, and the time: scoring stops at its deadline.
    pub fn max_sim(&self, dim: usize, query: &[f32], candidates: &[String], budget: MaxSimBudget) -> Result<Vec<Scored>, MaxSimError> {
        let MaxSimBudget { max_work, deadline } = budget;
        if dim == 0 || !query.len().is_multiple_of(dim) {
            return Err(MaxSimError::Invalid(format!("the query token set has {} floats, not a multiple of its dimension {dim}", query.len())));
        }
        let mut seen = std::collections::HashSet::with_capacity(candidates.len());
        let mut found = Vec::with_capacity(candidates.len());
        let mut stored = 0u64;
        for id in candidates {
            let Some((item_dim, tokens)) = self.sets.get(id) else { continue };
            if !seen.insert(id.as_str()) {
                continue;
            }
            if *item_dim != dim {
                return Err(MaxSimError::Invalid(format!("query tokens have dimension {dim} but `{id}`'s tokens have dimension {item_dim}")));
            }
            stored += tokens.len() as u64;
            found.push((id, tokens.as_slice()));
        }
        // stored counts floats (tokens x dim); times query tokens, that is the multiply-adds.
        let work = stored.saturating_mul((query.len() / dim) as u64);
        if work > max_work {
            return Err(MaxSimError::Invalid(format!(
                "late interaction of {} query tokens over {} candidates' tokens is {work} multiply-adds, over the limit of {max_work}; \
                 send fewer candidates or query tokens, or raise `limits.max_maxsim_work`",
                query.len() / dim,
                found.len()
            )));
        }
        let score = |scratch: &mut Vec<f32>, tokens: &[f32]| -> Result<f32, Expired> {
            deadline.check("late interaction")?;
            Ok(max_sim_into(query, tokens, dim, scratch))
        };
        let scores: Vec<f32> = if (work as usize) < PARALLEL_WORK {
            let mut scratch = Vec::new();
            found.iter().map(|(_, tokens)| score(&mut scratch, tokens)).collect::<Result<_, _>>()?
        } else {
            found.par_iter().map_init(Vec::new, |scratch, (_, tokens)| score(scratch, tokens)).collect::<Result<_, _>>()?
        };
        let mut out: Vec<Scored> = found.into_iter().zip(scores).map(|((id, _), score)| Scored { id: id.clone(), score }).collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// What one late-interaction call may cost.
#[derive(Debug, Clone, Copy)]
pub struct MaxSimBudget {
    /// Most multiply-adds.
    pub max_work: u64,
    pub deadline: Deadline,
}

impl MaxSimBudget {
    /// No bound: the host's own use.
    pub const UNBOUNDED: MaxSimBudget = MaxSimBudget { max_work: u64::MAX, deadline: Deadline::NONE };
}

/// Why a late-interaction call failed.
#[derive(Debug, thiserror::Error)]
pub enum MaxSimError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Expired(#[from] Expired),
}

/// Stored tokens scored against the query per block: the score matrix of one block
/// (block x query tokens) is all the scratch a candidate needs, however many tokens it has.
const BLOCK_TOKENS: usize = 256;

/// Multiply-adds (query floats x candidate floats / dim) below which `max_sim` stays on the
/// calling thread: under 100 µs of work, too little for the pool's hand-offs to pay.
#[cfg(not(test))]
const PARALLEL_WORK: usize = 1 << 21;
// Small in tests, so the reference test covers both paths.
#[cfg(test)]
const PARALLEL_WORK: usize = 4096;

/// Sum over query tokens of the max inner product with the document's tokens.
pub fn max_sim(query: &[f32], doc: &[f32], dim: usize) -> f32 {
    max_sim_into(query, doc, dim, &mut Vec::new())
}

/// `max_sim` with the token-by-token score matrix in `scratch`: one matrix multiply (gemm's SIMD
/// kernels) per block of stored tokens instead of a dot product per pair, then a max down each
/// query token's column.
fn max_sim_into(query: &[f32], doc: &[f32], dim: usize, scratch: &mut Vec<f32>) -> f32 {
    let (n_query, n_doc) = (query.len() / dim, doc.len() / dim);
    if n_doc == 0 || n_query == 0 {
        return 0.0;
    }
    let mut best = vec![f32::NEG_INFINITY; n_query];
    for block in doc[..n_doc * dim].chunks(BLOCK_TOKENS * dim) {
        let rows = block.len() / dim;
        scratch.clear();
        scratch.resize(rows * n_query, 0.0);
        // scratch[d * n_query + q] = block[d] . query[q]
        inner_products(block, &query[..n_query * dim], dim, scratch);
        for row in scratch.chunks_exact(n_query) {
            for (b, &s) in best.iter_mut().zip(row) {
                *b = b.max(s);
            }
        }
    }
    best.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(query: &[Vec<f32>], doc: &[Vec<f32>]) -> f32 {
        query
            .iter()
            .map(|q| doc.iter().map(|d| q.iter().zip(d).map(|(a, b)| a * b).sum::<f32>()).fold(f32::NEG_INFINITY, f32::max))
            .sum()
    }

    #[test]
    fn max_sim_equals_a_naive_reference() {
        let mut next = crate::index::uniform(0x243F6A8885A308D3);
        let dim = 19;
        let mut sets = TokenSets::default();
        let mut docs = Vec::new();
        for i in 0..40 {
            let doc: Vec<Vec<f32>> = (0..1 + i % 7).map(|_| (0..dim).map(|_| next()).collect()).collect();
            sets.upsert(&format!("d{i}"), dim, &doc.concat());
            docs.push(doc);
        }
        let candidates: Vec<String> = (0..40).map(|i| format!("d{i}")).chain(["missing".to_string()]).collect();
        // 5 query tokens over every candidate take the thread pool; 1 over a few stays on the caller.
        for (query_tokens, n_candidates) in [(5, 41), (1, 4)] {
            let query: Vec<Vec<f32>> = (0..query_tokens).map(|_| (0..dim).map(|_| next()).collect()).collect();
            let candidates = &candidates[41 - n_candidates..];
            let got = sets.max_sim(dim, &query.concat(), candidates, MaxSimBudget::UNBOUNDED).unwrap();
            assert_eq!(got.len(), n_candidates - 1, "the candidate without tokens is left out");
            for hit in &got {
                let i: usize = hit.id[1..].parse().unwrap();
                let want = naive(&query, &docs[i]);
                assert!((hit.score - want).abs() < 1e-4, "{}: {} vs {want}", hit.id, hit.score);
            }
            assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
        }
        assert_eq!(max_sim(&[1.0, 0.0], &[], 2), 0.0, "an empty token set scores 0");
        assert!(sets.max_sim(dim + 1, &vec![0.0; dim + 1], &candidates, MaxSimBudget::UNBOUNDED).is_err());
    }

    #[test]
    fn long_token_sets_are_scored_in_blocks() {
        let mut next = crate::index::uniform(7);
        let dim = 3;
        let doc: Vec<Vec<f32>> = (0..BLOCK_TOKENS * 2 + 17).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let query: Vec<Vec<f32>> = (0..4).map(|_| (0..dim).map(|_| next()).collect()).collect();
        assert!((max_sim(&query.concat(), &doc.concat(), dim) - naive(&query, &doc)).abs() < 1e-4);
    }

    #[test]
    fn work_over_the_budget_is_refused_before_any_is_done_and_duplicates_count_once() {
        let mut sets = TokenSets::default();
        sets.upsert("a", 2, &[1.0; 2 * 100]);
        let query = vec![1.0; 2 * 10];
        // 10 query tokens x 100 stored tokens x dim 2 = 2000 multiply-adds.
        let twice = ["a".to_string(), "a".to_string()];
        assert_eq!(sets.max_sim(2, &query, &twice, MaxSimBudget { max_work: 2000, deadline: Deadline::NONE }).unwrap().len(), 1);
        let err = sets.max_sim(2, &query, &twice, MaxSimBudget { max_work: 1999, deadline: Deadline::NONE }).unwrap_err().to_string();
        assert!(err.contains("2000 multiply-adds") && err.contains("limits.max_maxsim_work"), "{err}");
        let past = Deadline::at(std::time::Instant::now() - std::time::Duration::from_millis(1));
        assert!(matches!(sets.max_sim(2, &query, &twice, MaxSimBudget { max_work: u64::MAX, deadline: past }), Err(MaxSimError::Expired(_))));
    }
}
