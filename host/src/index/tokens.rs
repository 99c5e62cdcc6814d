//! Token sets of one field, and late interaction (MaxSim) over them.

use super::flat::dot;
use super::Scored;
use anyhow::{Result, bail};
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
    pub fn max_sim(&self, dim: usize, query: &[f32], candidates: &[String]) -> Result<Vec<Scored>> {
        if dim == 0 || query.len() % dim != 0 {
            bail!("the query token set has {} floats, not a multiple of its dimension {dim}", query.len());
        }
        let mut out = Vec::with_capacity(candidates.len());
        for id in candidates {
            let Some((item_dim, tokens)) = self.sets.get(id) else { continue };
            if *item_dim != dim {
                bail!("query tokens have dimension {dim} but `{id}`'s tokens have dimension {item_dim}");
            }
            let score = max_sim(query, tokens, dim);
            out.push(Scored { id: id.clone(), score });
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// Sum over query tokens of the max inner product with the document's tokens.
pub fn max_sim(query: &[f32], doc: &[f32], dim: usize) -> f32 {
    if doc.is_empty() {
        return 0.0;
    }
    query
        .chunks_exact(dim)
        .map(|q| doc.chunks_exact(dim).map(|d| dot(q, d)).fold(f32::NEG_INFINITY, f32::max))
        .sum()
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
        let mut state = 0x243F6A8885A308D3u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        };
        let dim = 19;
        let mut sets = TokenSets::default();
        let mut docs = Vec::new();
        for i in 0..40 {
            let doc: Vec<Vec<f32>> = (0..1 + i % 7).map(|_| (0..dim).map(|_| next()).collect()).collect();
            sets.upsert(&format!("d{i}"), dim, &doc.concat());
            docs.push(doc);
        }
        let query: Vec<Vec<f32>> = (0..5).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let candidates: Vec<String> = (0..40).map(|i| format!("d{i}")).chain(["missing".to_string()]).collect();
        let got = sets.max_sim(dim, &query.concat(), &candidates).unwrap();
        assert_eq!(got.len(), 40, "the candidate without tokens is left out");
        for hit in &got {
            let i: usize = hit.id[1..].parse().unwrap();
            assert!((hit.score - naive(&query, &docs[i])).abs() < 1e-4);
        }
        assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(sets.max_sim(dim + 1, &vec![0.0; dim + 1], &candidates).is_err());
    }
}
