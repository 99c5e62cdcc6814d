//! Approximate nearest neighbours for vector fields the operator marks for it: an HNSW graph
//! (the `hnsw_rs` crate) beside the exact index, which stays the source of truth.
//!
//! The graph cannot delete, so replaced and deleted vectors become stale nodes that searches skip;
//! once a quarter of the nodes are stale the graph is rebuilt from the exact index.

use super::Scored;
use super::flat::FlatIndex;
use crate::store::{AnnParams, Metric};
use anndists::dist::{DistL2, Distance};
use hnsw_rs::hnsw::Hnsw;
use std::collections::HashMap;

enum Graph {
    /// Inner product and cosine (the exact index stores cosine vectors normalised).
    Dot(Hnsw<'static, f32, UnitDot>),
    L2(Hnsw<'static, f32, DistL2>),
}

/// `1 - q.v`, floored at 0 (the graph requires distances >= 0; rounding can push unit vectors'
/// products past 1). A metric for unit-length vectors, as sentence and CLIP embeddings are; on
/// longer vectors an inner-product field's graph is a rougher guide, and hits are re-scored
/// exactly either way.
#[derive(Clone, Copy, Default)]
struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - super::flat::dot(a, b)).max(0.0)
    }
}

pub struct AnnIndex {
    params: AnnParams,
    metric: Metric,
    graph: Graph,
    /// Graph node id -> item id, for live nodes only.
    items: HashMap<usize, String>,
    /// Item id -> its live node.
    nodes: HashMap<String, usize>,
    next_node: usize,
    stale: usize,
}

/// HNSW layers; 16 covers billions of points at the usual M.
const MAX_LAYERS: usize = 16;
/// Rows handed to the graph's parallel insert at a time.
const BUILD_CHUNK: usize = 16_384;

impl AnnIndex {
    /// A graph over every vector of `flat`.
    pub fn build(params: AnnParams, metric: Metric, flat: &FlatIndex) -> Self {
        let capacity = flat.len().max(1024);
        let graph = match metric {
            Metric::InnerProduct | Metric::Cosine => Graph::Dot(Hnsw::new(params.m, capacity, MAX_LAYERS, params.ef_construction, UnitDot)),
            Metric::L2 => Graph::L2(Hnsw::new(params.m, capacity, MAX_LAYERS, params.ef_construction, DistL2)),
        };
        let mut index = AnnIndex { params, metric, graph, items: HashMap::new(), nodes: HashMap::new(), next_node: 0, stale: 0 };
        // Node n is row n. Rows go in by chunks: f16 rows are widened a chunk at a time rather
        // than into a second copy of the field, and a chunk still keeps every thread busy.
        for start in (0..flat.len()).step_by(BUILD_CHUNK) {
            let rows = start..(start + BUILD_CHUNK).min(flat.len());
            let vectors = flat.row_vectors(rows.clone());
            let nodes: Vec<(&[f32], usize)> = vectors.chunks_exact(flat.dim()).zip(rows).collect();
            match &index.graph {
                Graph::Dot(g) => g.parallel_insert_slice(&nodes),
                Graph::L2(g) => g.parallel_insert_slice(&nodes),
            }
        }
        for node in 0..flat.len() {
            index.items.insert(node, flat.id(node).to_string());
            index.nodes.insert(flat.id(node).to_string(), node);
        }
        index.next_node = flat.len();
        index
    }

    /// Add or replace `id`'s vector, as the exact index stores it.
    pub fn upsert(&mut self, id: &str, stored: &[f32]) {
        self.remove(id);
        let node = self.next_node;
        self.next_node += 1;
        match &self.graph {
            Graph::Dot(g) => g.insert_slice((stored, node)),
            Graph::L2(g) => g.insert_slice((stored, node)),
        }
        self.items.insert(node, id.to_string());
        self.nodes.insert(id.to_string(), node);
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(node) = self.nodes.remove(id) {
            self.items.remove(&node);
            self.stale += 1;
        }
    }

    /// Whether stale nodes have piled up enough to rebuild.
    pub fn needs_rebuild(&self) -> bool {
        self.stale > 1024.max(self.items.len() / 4)
    }

    pub fn params(&self) -> &AnnParams {
        &self.params
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// About `k` nearest items, best first, with the exact index's scores.
    pub fn search(&self, flat: &FlatIndex, query: &[f32], k: usize) -> Vec<Scored> {
        self.search_ef(flat, query, k, self.params.ef_search)
    }

    /// `search` with `ef` candidates instead of the field's `ef_search` (for tuning and benches).
    pub fn search_ef(&self, flat: &FlatIndex, query: &[f32], k: usize, ef: usize) -> Vec<Scored> {
        // Ask for extra neighbours to make up for stale ones.
        let want = k + self.stale.min(k * 4);
        let ef = ef.max(want);
        // Prepared once: the graph and the exact re-score both take the query as stored.
        let prepared = flat.prepare_query(query);
        let q_sq = super::flat::dot(&prepared, &prepared);
        let neighbours = match &self.graph {
            Graph::Dot(g) => g.search(&prepared, want, ef),
            Graph::L2(g) => g.search(&prepared, want, ef),
        };
        let mut hits: Vec<Scored> = neighbours
            .into_iter()
            .filter_map(|n| self.items.get(&n.d_id))
            .filter_map(|id| flat.prepared_score(id, &prepared, q_sq).map(|score| Scored { id: id.clone(), score }))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        hits.truncate(k);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clustered random unit vectors: ANN's realistic case (embeddings cluster by topic).
    fn data(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 20_000) as f32 / 10_000.0 - 1.0
        };
        let centres: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| next()).collect()).collect();
        (0..n)
            .map(|i| {
                let v: Vec<f32> = centres[i % 20].iter().map(|c| c + 0.4 * next()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn recall(metric: Metric) -> f32 {
        let dim = 32;
        let mut flat = FlatIndex::new(metric);
        for (i, v) in data(4_000, dim, 7).iter().enumerate() {
            flat.upsert(&format!("item-{i}"), v).unwrap();
        }
        let ann = AnnIndex::build(AnnParams::default(), metric, &flat);
        let queries = data(100, dim, 99);
        let mut found = 0;
        for q in &queries {
            let exact: Vec<String> = flat.search(q, 10, None).unwrap().into_iter().map(|s| s.id).collect();
            found += ann.search(&flat, q, 10).iter().filter(|s| exact.contains(&s.id)).count();
        }
        found as f32 / (queries.len() * 10) as f32
    }

    #[test]
    fn recall_at_10_against_exact_search() {
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let recall = recall(metric);
            eprintln!("HNSW recall@10 vs exact, {metric:?}: {recall:.3}");
            assert!(recall >= 0.9, "{metric:?}: recall@10 {recall}");
        }
    }

    #[test]
    fn replaced_and_deleted_items_are_not_returned() {
        let mut flat = FlatIndex::new(Metric::InnerProduct);
        let vectors = data(500, 16, 3);
        for (i, v) in vectors.iter().enumerate() {
            flat.upsert(&format!("item-{i}"), v).unwrap();
        }
        let mut ann = AnnIndex::build(AnnParams::default(), Metric::InnerProduct, &flat);
        // item-0 moves to where item-1 was; item-1 is deleted.
        flat.upsert("item-0", &vectors[1]).unwrap();
        ann.upsert("item-0", &vectors[1]);
        flat.remove("item-1");
        ann.remove("item-1");
        let hits = ann.search(&flat, &vectors[1], 5);
        assert_eq!(hits[0].id, "item-0");
        assert!(hits.iter().all(|h| h.id != "item-1"));
        assert!((hits[0].score - 1.0).abs() < 1e-4, "scores are exact: {}", hits[0].score);
    }
}
