//! Token sets of one field, and late interaction (MaxSim) over them.

use super::Scored;
use super::flat::inner_products;
use anyhow::{Result, bail};
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
    /// with any of its tokens. Candidates without a token set are left out. Best first.
    /// Long candidate lists are scored on the thread pool, a candidate per task.
    pub fn max_sim(&self, dim: usize, query: &[f32], candidates: &[String]) -> Result<Vec<Scored>> {
        if dim == 0 || !query.len().is_multiple_of(dim) {
            bail!("the query token set has {} floats, not a multiple of its dimension {dim}", query.len());
        }
        let mut found = Vec::with_capacity(candidates.len());
        for id in candidates {
            let Some((item_dim, tokens)) = self.sets.get(id) else { continue };
            if *item_dim != dim {
                bail!("query tokens have dimension {dim} but `{id}`'s tokens have dimension {item_dim}");
            }
            found.push((id, tokens.as_slice()));
        }
        let work: usize = found.iter().map(|(_, tokens)| tokens.len()).sum::<usize>() * (query.len() / dim);
        let scores: Vec<f32> = if work < PARALLEL_WORK {
            let mut scratch = Vec::new();
            found.iter().map(|(_, tokens)| max_sim_into(query, tokens, dim, &mut scratch)).collect()
        } else {
            found.par_iter().map_init(Vec::new, |scratch, (_, tokens)| max_sim_into(query, tokens, dim, scratch)).collect()
        };
        let mut out: Vec<Scored> = found.into_iter().zip(scores).map(|((id, _), score)| Scored { id: id.clone(), score }).collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

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
/// kernels) instead of a dot product per pair, then a max down each query token's column.
fn max_sim_into(query: &[f32], doc: &[f32], dim: usize, scratch: &mut Vec<f32>) -> f32 {
    let (n_query, n_doc) = (query.len() / dim, doc.len() / dim);
    if n_doc == 0 {
        return 0.0;
    }
    scratch.clear();
    scratch.resize(n_doc * n_query, 0.0);
    // scratch[d * n_query + q] = doc[d] . query[q]
    inner_products(&doc[..n_doc * dim], &query[..n_query * dim], dim, scratch);
    let mut best = vec![f32::NEG_INFINITY; n_query];
    for row in scratch.chunks_exact(n_query) {
        for (b, &s) in best.iter_mut().zip(row) {
            *b = b.max(s);
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
            let got = sets.max_sim(dim, &query.concat(), candidates).unwrap();
            assert_eq!(got.len(), n_candidates - 1, "the candidate without tokens is left out");
            for hit in &got {
                let i: usize = hit.id[1..].parse().unwrap();
                let want = naive(&query, &docs[i]);
                assert!((hit.score - want).abs() < 1e-4, "{}: {} vs {want}", hit.id, hit.score);
            }
            assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
        }
        assert_eq!(max_sim(&[1.0, 0.0], &[], 2), 0.0, "an empty token set scores 0");
        assert!(sets.max_sim(dim + 1, &vec![0.0; dim + 1], &candidates).is_err());
    }
}
