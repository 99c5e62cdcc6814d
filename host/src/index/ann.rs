//! Approximate nearest neighbours for vector fields the operator marks for it: an HNSW graph
//! (Unum's USearch, the `usearch` crate) beside the exact index, which stays the source of truth.
//!
//! The graph holds its own f32 copy of the vectors (f16 fields' rows widened). Deleting marks a
//! node free and the next insert reuses it; once free nodes pile up (more deletes than inserts)
//! the graph is rebuilt from the exact index. Candidates are re-scored exactly.

use super::Scored;
use super::flat::FlatIndex;
use crate::store::{AnnParams, Metric};
use rayon::prelude::*;
use std::collections::HashMap;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind, VectorType};

pub struct AnnIndex {
    params: AnnParams,
    metric: Metric,
    /// `None` until the field has a vector (the graph's dimension comes from the first one), or
    /// after the library failed, when searches answer exactly.
    graph: Option<Index>,
    failed: bool,
    /// Graph key -> item id, for live nodes only.
    items: HashMap<u64, String>,
    /// Item id -> its graph key.
    nodes: HashMap<String, u64>,
    next_node: u64,
    /// Deleted nodes not yet reused by an insert.
    stale: usize,
}

/// Rows widened from f16 and handed to the parallel insert at a time.
const BUILD_CHUNK: usize = 16_384;
/// Rows inserted one at a time before the parallel insert starts. Parallel inserts into a small
/// graph sometimes leave a node that no search reaches (seen with 300 rows on 2 threads); one at a
/// time they do not, and a small field's graph comes out the same on every build.
const SERIAL_ROWS: usize = 2_048;

/// Search contexts the graph keeps: one is taken per concurrent search or insert, and a search
/// that finds none free answers exactly instead. Each costs a few kilobytes.
fn contexts() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores.max(rayon::current_num_threads()) * 4).max(64)
}

impl AnnIndex {
    /// A graph over every vector of `flat`.
    pub fn build(params: AnnParams, metric: Metric, flat: &FlatIndex) -> Self {
        let mut index = AnnIndex {
            params,
            metric,
            graph: None,
            failed: false,
            items: HashMap::new(),
            nodes: HashMap::new(),
            next_node: 0,
            stale: 0,
        };
        if flat.is_empty() {
            return index;
        }
        if let Err(e) = index.fill(flat) {
            index.fail(&e);
        }
        index
    }

    /// Build the graph over `flat`'s rows: node n is row n.
    fn fill(&mut self, flat: &FlatIndex) -> anyhow::Result<()> {
        let graph = self.new_graph(flat.dim(), flat.len())?;
        let dim = flat.dim();
        // f16 rows are widened a chunk at a time rather than into a second copy of the field, and
        // a chunk still keeps every thread busy.
        for start in (0..flat.len()).step_by(BUILD_CHUNK) {
            let rows = start..(start + BUILD_CHUNK).min(flat.len());
            let vectors = flat.row_vectors(rows.clone());
            let serial = SERIAL_ROWS.saturating_sub(start).min(rows.len());
            let (first, rest) = vectors.split_at(serial * dim);
            first.chunks_exact(dim).zip(rows.clone()).try_for_each(|(v, row)| graph.add(row as u64, v))?;
            rest.par_chunks_exact(dim).zip((rows.start + serial..rows.end).into_par_iter()).try_for_each(|(v, row)| graph.add(row as u64, v))?;
        }
        for node in 0..flat.len() {
            self.items.insert(node as u64, flat.id(node).to_string());
            self.nodes.insert(flat.id(node).to_string(), node as u64);
        }
        self.next_node = flat.len() as u64;
        self.graph = Some(graph);
        Ok(())
    }

    fn new_graph(&self, dim: usize, capacity: usize) -> anyhow::Result<Index> {
        let options = IndexOptions {
            dimensions: dim,
            // Inner product and cosine (the exact index stores cosine vectors normalised): the
            // graph orders by 1 - q.v.
            metric: match self.metric {
                Metric::InnerProduct | Metric::Cosine => MetricKind::IP,
                Metric::L2 => MetricKind::L2sq,
            },
            // f32 whatever the field's precision: the metric below takes f32.
            quantization: ScalarKind::F32,
            connectivity: self.params.m,
            expansion_add: self.params.ef_construction,
            // A search asks for ef_search results, and the graph explores max(this, asked).
            expansion_search: 1,
            multi: false,
        };
        let mut graph = Index::new(&options)?;
        // Quarry's own kernels: USearch built without NumKong (whose C kernels take minutes to
        // compile) would use plain loops, and NumKong's f32 inner product sums in f64, at half
        // the speed.
        let l2 = self.metric == Metric::L2;
        <f32 as VectorType>::change_metric(
            &mut graph,
            Box::new(move |a, b| {
                // SAFETY: the graph calls its metric on two of its vectors (or a query), each
                // `dim` floats long.
                let (a, b) = unsafe { (std::slice::from_raw_parts(a, dim), std::slice::from_raw_parts(b, dim)) };
                if l2 { super::simd::l2sq(a, b) } else { 1.0 - super::simd::dot(a, b) }
            }),
        )?;
        graph.reserve_capacity_and_threads(capacity.max(1024), contexts())?;
        Ok(graph)
    }

    /// Leave the field on exact search: the graph library failed.
    fn fail(&mut self, error: &anyhow::Error) {
        eprintln!("warning: the HNSW graph failed ({error:#}); the field answers by exact search until it is rebuilt");
        self.graph = None;
        self.failed = true;
        self.items.clear();
        self.nodes.clear();
    }

    /// Add or replace `id`'s vector, as the exact index stores it.
    pub fn upsert(&mut self, id: &str, stored: &[f32]) {
        if self.failed {
            return;
        }
        if let Err(e) = self.try_upsert(id, stored) {
            self.fail(&e);
        }
    }

    fn try_upsert(&mut self, id: &str, stored: &[f32]) -> anyhow::Result<()> {
        if self.graph.is_none() {
            self.graph = Some(self.new_graph(stored.len(), 1024)?);
        }
        let graph = self.graph.as_ref().expect("graph made just above");
        let node = match self.nodes.get(id) {
            Some(&node) => {
                graph.remove(node)?;
                self.stale += 1;
                node
            }
            None => {
                self.next_node += 1;
                self.next_node - 1
            }
        };
        // An insert takes a free node if there is one, else a new slot.
        if self.stale == 0 && graph.size() >= graph.capacity() {
            graph.reserve_capacity_and_threads(graph.capacity() * 2, contexts())?;
        }
        graph.add(node, stored)?;
        self.stale = self.stale.saturating_sub(1);
        self.items.insert(node, id.to_string());
        self.nodes.insert(id.to_string(), node);
        Ok(())
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(node) = self.nodes.remove(id) {
            self.items.remove(&node);
            if let Some(graph) = &self.graph {
                match graph.remove(node) {
                    Ok(_) => self.stale += 1,
                    Err(e) => self.fail(&e.into()),
                }
            }
        }
    }

    /// Whether deleted nodes have piled up enough to rebuild.
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
        let exact = || flat.search(query, k, None).unwrap_or_default();
        let Some(graph) = &self.graph else {
            return if self.failed { exact() } else { Vec::new() };
        };
        if k == 0 {
            return Vec::new();
        }
        // Prepared once: the graph and the exact re-score both take the query as stored.
        let prepared = flat.prepare_query(query);
        let q_sq = super::flat::dot(&prepared, &prepared);
        // The graph explores max(its expansion, results asked for) candidates and returns them
        // best first; the first k are re-scored exactly.
        let Ok(found) = graph.search(&prepared, ef.max(k)) else {
            return exact();
        };
        let mut hits: Vec<Scored> = found
            .keys
            .iter()
            .filter_map(|n| self.items.get(n))
            .take(k)
            .filter_map(|id| flat.prepared_score(id, &prepared, q_sq).map(|score| Scored { id: id.clone(), score }))
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
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

    #[test]
    fn a_graph_grown_from_empty_takes_inserts_deletes_and_reinserts() {
        let mut flat = FlatIndex::new(Metric::Cosine);
        let mut ann = AnnIndex::build(AnnParams::default(), Metric::Cosine, &flat);
        let vectors = data(1_500, 16, 5);
        // Past the first reservation (1024 nodes), so the graph grows.
        for (i, v) in vectors.iter().enumerate() {
            flat.upsert(&format!("item-{i}"), v).unwrap();
            ann.upsert(&format!("item-{i}"), &flat.stored(&format!("item-{i}")).unwrap());
        }
        for i in 0..500 {
            flat.remove(&format!("item-{i}"));
            ann.remove(&format!("item-{i}"));
        }
        for (i, v) in vectors.iter().enumerate().take(250) {
            flat.upsert(&format!("again-{i}"), v).unwrap();
            ann.upsert(&format!("again-{i}"), &flat.stored(&format!("again-{i}")).unwrap());
        }
        assert!(!ann.failed);
        for (i, v) in vectors.iter().enumerate().step_by(50) {
            let hits = ann.search(&flat, v, 3);
            assert!(hits.iter().all(|h| !(h.id.starts_with("item-") && h.id[5..].parse::<usize>().unwrap() < 500)), "{hits:?}");
            let own = if i < 250 { format!("again-{i}") } else if i < 500 { continue } else { format!("item-{i}") };
            assert_eq!(hits[0].id, own);
        }
    }
}
