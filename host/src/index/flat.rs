//! Exact top-k over all vectors of one field, under the field's metric.

use super::Scored;
use crate::store::Metric;
use anyhow::{Result, bail};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// All vectors of one field, row-major. Cosine fields store normalised vectors; L2 fields keep
/// each row's squared norm, so every metric is one inner product per row.
#[derive(Debug, Default)]
pub struct FlatIndex {
    metric: Metric,
    dim: usize,
    ids: Vec<String>,
    rows: HashMap<String, usize>,
    data: Vec<f32>,
    sq_norms: Vec<f32>,
}

impl FlatIndex {
    pub fn new(metric: Metric) -> Self {
        FlatIndex { metric, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The dimension a new vector must have, if the field has any vectors.
    pub fn expected_dim(&self) -> Option<usize> {
        (!self.is_empty()).then_some(self.dim)
    }

    /// Insert or replace `id`'s vector. The first vector fixes the field's dimension.
    pub fn upsert(&mut self, id: &str, vector: &[f32]) -> Result<()> {
        if self.ids.is_empty() {
            self.dim = vector.len();
        } else if vector.len() != self.dim {
            bail!("vector for `{id}` has {} dimensions but the field holds {}-dimensional vectors", vector.len(), self.dim);
        }
        let vector = match self.metric {
            Metric::Cosine => normalized(vector),
            Metric::InnerProduct | Metric::L2 => vector.to_vec(),
        };
        let sq_norm = dot(&vector, &vector);
        if let Some(&row) = self.rows.get(id) {
            self.data[row * self.dim..(row + 1) * self.dim].copy_from_slice(&vector);
            self.sq_norms[row] = sq_norm;
        } else {
            self.rows.insert(id.to_string(), self.ids.len());
            self.ids.push(id.to_string());
            self.data.extend_from_slice(&vector);
            self.sq_norms.push(sq_norm);
        }
        Ok(())
    }

    /// Remove `id`'s vector, if present (the last row moves into its place).
    pub fn remove(&mut self, id: &str) {
        let Some(row) = self.rows.remove(id) else { return };
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last].clone();
            self.data.copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.sq_norms[row] = self.sq_norms[last];
            self.ids[row] = moved.clone();
            self.rows.insert(moved, row);
        }
        self.ids.pop();
        self.sq_norms.pop();
        self.data.truncate(last * self.dim);
    }

    /// The `k` nearest rows to `query` that `accept` lets through, best first, ties by id.
    pub fn search(&self, query: &[f32], k: usize, accept: Option<&dyn Fn(&str) -> bool>) -> Result<Vec<Scored>> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        if query.len() != self.dim {
            bail!("query has {} dimensions but the field holds {}-dimensional vectors; is the query embedded with the same model?", query.len(), self.dim);
        }
        let query = match self.metric {
            Metric::Cosine => normalized(query),
            Metric::InnerProduct | Metric::L2 => query.to_vec(),
        };
        let q_sq = dot(&query, &query);
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
        for (row, vector) in self.data.chunks_exact(self.dim).enumerate() {
            if let Some(accept) = accept
                && !accept(&self.ids[row])
            {
                continue;
            }
            let ip = dot(&query, vector);
            // -(|q - v|^2) = 2 q.v - |v|^2 - |q|^2
            let score = if self.metric == Metric::L2 { 2.0 * ip - self.sq_norms[row] - q_sq } else { ip };
            if heap.len() < k {
                heap.push(Worst { score, row, ids: &self.ids });
            } else if let Some(top) = heap.peek()
                && (Worst { score, row, ids: &self.ids }) < *top
            {
                heap.pop();
                heap.push(Worst { score, row, ids: &self.ids });
            }
        }
        let mut out: Vec<Scored> = heap.into_iter().map(|w| Scored { id: self.ids[w.row].clone(), score: w.score }).collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// Heap entry whose maximum is the worst kept hit (lowest score, then largest id).
struct Worst<'a> {
    score: f32,
    row: usize,
    ids: &'a [String],
}
impl PartialEq for Worst<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst<'_> {}
impl PartialOrd for Worst<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.score.total_cmp(&self.score).then_with(|| self.ids[self.row].cmp(&other.ids[other.row]))
    }
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 { v.iter().map(|x| x / norm).collect() } else { v.to_vec() }
}

/// Inner product, written with independent accumulators so the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(data: &[(String, Vec<f32>)], q: &[f32], k: usize, metric: Metric) -> Vec<Scored> {
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let score = |v: &[f32]| -> f32 {
            match metric {
                Metric::InnerProduct => v.iter().zip(q).map(|(a, b)| a * b).sum(),
                Metric::Cosine => v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() / (norm(v) * norm(q)),
                Metric::L2 => -v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
            }
        };
        let mut all: Vec<Scored> = data.iter().map(|(id, v)| Scored { id: id.clone(), score: score(v) }).collect();
        all.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        all.truncate(k);
        all
    }

    #[test]
    fn exact_search_equals_brute_force() {
        // Deterministic pseudo-random data (xorshift), 37 dims to exercise the dot-product tail.
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        };
        let data: Vec<(String, Vec<f32>)> = (0..500).map(|i| (format!("item-{i}"), (0..37).map(|_| next()).collect())).collect();
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let mut index = FlatIndex::new(metric);
            for (id, v) in &data {
                index.upsert(id, v).unwrap();
            }
            for round in 0..10 {
                let q: Vec<f32> = (0..37).map(|_| next()).collect();
                // Odd rounds filter to even-numbered items.
                let keep = |id: &str| round % 2 == 0 || id.trim_start_matches("item-").parse::<u32>().unwrap() % 2 == 0;
                let got = index.search(&q, 10, Some(&keep)).unwrap();
                let subset: Vec<_> = data.iter().filter(|(id, _)| keep(id)).cloned().collect();
                let want = brute_force(&subset, &q, 10, metric);
                assert_eq!(got.iter().map(|s| &s.id).collect::<Vec<_>>(), want.iter().map(|s| &s.id).collect::<Vec<_>>(), "{metric:?}");
                for (g, w) in got.iter().zip(&want) {
                    assert!((g.score - w.score).abs() < 1e-3, "{metric:?}: {} vs {}", g.score, w.score);
                }
            }
        }
    }

    #[test]
    fn upsert_replaces_remove_compacts_and_dimensions_are_checked() {
        let mut index = FlatIndex::new(Metric::InnerProduct);
        index.upsert("a", &[1.0, 0.0]).unwrap();
        index.upsert("b", &[0.0, 1.0]).unwrap();
        index.upsert("a", &[0.0, 0.5]).unwrap();
        index.upsert("c", &[0.0, 0.25]).unwrap();
        assert_eq!(index.len(), 3);
        let hits = index.search(&[0.0, 1.0], 5, None).unwrap();
        assert_eq!(hits.iter().map(|h| (h.id.as_str(), h.score)).collect::<Vec<_>>(), [("b", 1.0), ("a", 0.5), ("c", 0.25)]);
        index.remove("a");
        index.remove("missing");
        let hits = index.search(&[0.0, 1.0], 5, None).unwrap();
        assert_eq!(hits.iter().map(|h| (h.id.as_str(), h.score)).collect::<Vec<_>>(), [("b", 1.0), ("c", 0.25)]);
        assert!(index.upsert("d", &[1.0]).is_err());
        assert!(index.search(&[1.0, 2.0, 3.0], 1, None).is_err());
    }
}
