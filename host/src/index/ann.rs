//! Approximate nearest neighbours for vector fields the operator marks for it: an HNSW graph
//! (Unum's USearch, the `usearch` crate) beside the exact index, which stays the source of truth.
//!
//! The graph holds its own f32 copy of the vectors (f16 fields' rows widened), each under its row
//! in the exact index as key, so a hit's id and exact score are read by row with no lookup by id.
//! Deleting marks a node free and the next insert reuses it; once free nodes pile up (more deletes
//! than inserts) the graph is rebuilt from the exact index. Candidates are re-scored exactly.

use super::Scored;
use super::flat::{FlatIndex, RemovedRow};
use crate::store::{AnnParams, Metric};
use rayon::prelude::*;
use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

pub struct AnnIndex {
    params: AnnParams,
    metric: Metric,
    /// `None` until the field has a vector (the graph's dimension comes from the first one), or
    /// after the library failed, when searches answer exactly.
    graph: Option<Index>,
    failed: bool,
    /// Deleted nodes not yet reused by an insert.
    stale: usize,
    /// Whether the graph is as last saved (or loaded), so a shutdown need not write it again.
    saved: bool,
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
            stale: 0,
            saved: false,
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
        self.graph = Some(graph);
        Ok(())
    }

    fn new_graph(&self, dim: usize, capacity: usize) -> anyhow::Result<Index> {
        let mut graph = Index::new(&self.options(dim))?;
        self.use_kernels(&mut graph, dim)?;
        graph.reserve_capacity_and_threads(capacity.max(1024), contexts())?;
        Ok(graph)
    }

    /// Distances through Quarry's AVX2/FMA kernels rather than USearch's own: USearch built
    /// without NumKong (whose C kernels take minutes to compile) has only portable SSE2 loops with
    /// one accumulator. Measured on the ann bench once searches prefetch their vectors (see
    /// third_party/usearch/PATCHED.md): 15.4k / 9.6k / 6.6k queries/s at ef 16 / 32 / 64 with
    /// these kernels, 11.6k / 8.0k / 5.3k with USearch's, despite the call through a pointer.
    /// The graph calls them as plain functions with the dimension as state (no closure between),
    /// and searches measure a node's neighbours four at a time.
    fn use_kernels(&self, graph: &mut Index, dim: usize) -> anyhow::Result<()> {
        // SAFETY: `distance` and `distances` read `dim` floats behind each vector pointer, and the
        // graph calls them on its own vectors and the query, each `dim` long; the state is `dim`.
        unsafe {
            if self.metric == Metric::L2 {
                graph.change_metric_f32_batched(distance::<true>, distances::<true>, dim)?;
            } else {
                graph.change_metric_f32_batched(distance::<false>, distances::<false>, dim)?;
            }
        }
        Ok(())
    }

    fn options(&self, dim: usize) -> IndexOptions {
        IndexOptions {
            dimensions: dim,
            // Inner product and cosine (the exact index stores cosine vectors normalised): the
            // graph orders by 1 - q.v.
            metric: match self.metric {
                Metric::InnerProduct | Metric::Cosine => MetricKind::IP,
                Metric::L2 => MetricKind::L2sq,
            },
            // f32 whatever the field's precision (f16 rows are widened on the way in).
            quantization: ScalarKind::F32,
            connectivity: self.params.m,
            expansion_add: self.params.ef_construction,
            // A search asks for ef_search results, and the graph explores max(this, asked).
            expansion_search: 1,
            multi: false,
        }
    }

    /// Leave the field on exact search: the graph library failed.
    fn fail(&mut self, error: &anyhow::Error) {
        eprintln!("warning: the HNSW graph failed ({error:#}); the field answers by exact search until it is rebuilt");
        self.graph = None;
        self.failed = true;
    }

    /// Add or replace `id`'s vector, as `flat` (which `id` was just written to) stores it.
    pub fn upsert(&mut self, flat: &FlatIndex, id: &str) {
        let Some(row) = flat.row_of(id) else { return };
        if self.failed {
            return;
        }
        if let Err(e) = self.try_upsert(row as u64, &flat.row_vectors(row..row + 1)) {
            self.fail(&e);
        }
    }

    fn try_upsert(&mut self, row: u64, stored: &[f32]) -> anyhow::Result<()> {
        self.saved = false;
        if self.graph.is_none() {
            self.graph = Some(self.new_graph(stored.len(), 1024)?);
        }
        let graph = self.graph.as_ref().expect("graph made just above");
        if graph.remove(row)? > 0 {
            self.stale += 1;
        }
        // An insert takes a free node if there is one, else a new slot.
        if self.stale == 0 && graph.size() >= graph.capacity() {
            graph.reserve_capacity_and_threads(graph.capacity() * 2, contexts())?;
        }
        graph.add(row, stored)?;
        self.stale = self.stale.saturating_sub(1);
        Ok(())
    }

    /// Follow what `FlatIndex::remove` did: drop the removed row's node, and re-key the row that
    /// moved into its place.
    pub fn remove(&mut self, removed: RemovedRow) {
        let Some(graph) = &self.graph else { return };
        self.saved = false;
        let step = || -> anyhow::Result<usize> {
            let removed_nodes = graph.remove(removed.row as u64)?;
            if let Some(from) = removed.moved_from {
                graph.rename(from as u64, removed.row as u64)?;
            }
            Ok(removed_nodes)
        };
        match step() {
            Ok(removed_nodes) => self.stale += removed_nodes,
            Err(e) => self.fail(&e),
        }
    }

    /// Whether deleted nodes have piled up enough to rebuild.
    pub fn needs_rebuild(&self) -> bool {
        self.stale > 1024.max(self.graph.as_ref().map_or(0, |g| g.size()) / 4)
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
            .map(|&row| row as usize)
            .filter(|&row| row < flat.len())
            .take(k)
            .map(|row| Scored { id: flat.id(row).to_string(), score: flat.row_score(row, &prepared, q_sq) })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        hits
    }
}

/// The graph's distance between two `dim`-float vectors: squared L2, or 1 - a.b (inner product,
/// and cosine over the normalised vectors the exact index stores).
///
/// # Safety
///
/// `a` and `b` each point to `dim` floats.
unsafe extern "C" fn distance<const L2: bool>(a: *const f32, b: *const f32, dim: usize) -> f32 {
    // SAFETY: the caller's promise.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, dim), std::slice::from_raw_parts(b, dim)) };
    if L2 { super::simd::l2sq(a, b) } else { 1.0 - super::simd::dot(a, b) }
}

/// `distance` from `query` to each of `count` vectors (at most 4), into `out`.
///
/// # Safety
///
/// `query` and each of `vectors[..count]` point to `dim` floats, and `out` to room for `count`.
unsafe extern "C" fn distances<const L2: bool>(query: *const f32, vectors: *const *const f32, count: usize, out: *mut f32, dim: usize) {
    // SAFETY: the caller's promise.
    let (q, vectors, out) = unsafe {
        (std::slice::from_raw_parts(query, dim), std::slice::from_raw_parts(vectors, count), std::slice::from_raw_parts_mut(out, count))
    };
    let Some(&last) = vectors.last() else { return };
    if let [only] = *vectors {
        // SAFETY: as below.
        out[0] = unsafe { distance::<L2>(query, only, dim) };
        return;
    }
    // Two or three vectors go through the four-vector kernel too (the last one repeated): their
    // loads overlap, and the query is read once.
    let four = [0, 1, 2, 3].map(|i| vectors.get(i).copied().unwrap_or(last));
    // SAFETY: each vector is `dim` floats (the caller's promise).
    let rows = unsafe { four.map(|v| std::slice::from_raw_parts(v, dim)) };
    let all = if L2 { super::simd::l2sq4(q, rows) } else { super::simd::dot4(q, rows).map(|d| 1.0 - d) };
    out.copy_from_slice(&all[..count]);
}

/// A saved graph: [`MAGIC`], [`FORMAT`], what the graph was built for (field, metric, dimension,
/// M, efConstruction), its free nodes and live items, the item id of each key (key k's first),
/// USearch's own serialisation, then a SHA-256 of everything before it. All integers
/// little-endian.
const MAGIC: &[u8; 8] = b"QRYHNSW\0";
/// 2: keys are the exact index's rows (1 had its own node numbers).
const FORMAT: u32 = 2;
/// Keys are moved through this offset when a loaded graph is re-keyed to the rows of the exact
/// index, so no key is taken twice on the way; rows stay far below it.
const REKEY_OFFSET: u64 = 1 << 48;

fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::Cosine => 0,
        Metric::InnerProduct => 1,
        Metric::L2 => 2,
    }
}

/// Bounds-checked reads over a saved graph: a short file is an error, never a panic or a
/// huge allocation.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        ensure!(n <= self.0.len(), "the file ends early");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn str(&mut self) -> anyhow::Result<&'a str> {
        let len = self.u32()? as usize;
        Ok(std::str::from_utf8(self.take(len)?)?)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

impl AnnIndex {
    /// Whether the graph changed since it was last saved or loaded.
    pub fn unsaved(&self) -> bool {
        !self.saved && self.graph.is_some()
    }

    /// Write the graph and its id map to `path` (through a temporary file and a rename, so a
    /// crash leaves the old file or the new one). `field` names what it indexes, checked at load.
    pub fn save(&mut self, flat: &FlatIndex, path: &Path, field: &str) -> anyhow::Result<()> {
        let Some(graph) = &self.graph else { bail!("the field has no graph to save") };
        ensure!(graph.size() == flat.len(), "the graph holds {} items, the exact index {}", graph.size(), flat.len());
        let mut out = Vec::with_capacity(graph.serialized_length() + 64 + flat.len() * 40);
        out.extend(MAGIC);
        out.extend(FORMAT.to_le_bytes());
        put_str(&mut out, field);
        out.push(metric_code(self.metric));
        for n in [graph.dimensions(), self.params.m, self.params.ef_construction, self.stale, flat.len()] {
            out.extend((n as u64).to_le_bytes());
        }
        for row in 0..flat.len() {
            put_str(&mut out, flat.id(row));
        }
        let len = graph.serialized_length();
        out.extend((len as u64).to_le_bytes());
        let at = out.len();
        out.resize(at + len, 0);
        graph.save_to_buffer(&mut out[at..])?;
        let digest = Sha256::digest(&out);
        out.extend(digest);

        let dir = path.parent().context("a graph path needs a folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(&out)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        self.saved = true;
        Ok(())
    }

    /// The graph saved at `path`, if it is whole and matches `flat` exactly: the same field,
    /// metric, dimension and build parameters, every item of `flat` and no other, each with the
    /// vector `flat` holds. Anything else (damage, a crash between a store commit and the save, a
    /// changed setting) is an error and the caller rebuilds: a loaded graph never answers for
    /// data it was not built from.
    pub fn load(params: AnnParams, metric: Metric, flat: &FlatIndex, path: &Path, field: &str) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(bytes.len() >= MAGIC.len() + 32, "the file is truncated ({} bytes)", bytes.len());
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        ensure!(Sha256::digest(body).as_slice() == digest, "the checksum does not match: the file is damaged or truncated");
        let mut r = Reader(body);
        ensure!(r.take(MAGIC.len())? == MAGIC, "not a Quarry graph file");
        let format = r.u32()?;
        ensure!(format == FORMAT, "graph file format {format}, this build reads {FORMAT}");
        let saved_field = r.str()?;
        ensure!(saved_field == field, "the file holds the graph of `{saved_field}`, not `{field}`");
        ensure!(r.take(1)?[0] == metric_code(metric), "the graph was built for another metric");
        let dim = r.u64()?;
        ensure!(dim == flat.dim() as u64, "the graph holds {dim}-dimensional vectors, the field {}", flat.dim());
        let (m, ef_construction) = (r.u64()?, r.u64()?);
        ensure!(
            (m, ef_construction) == (params.m as u64, params.ef_construction as u64),
            "the graph was built with M {m}, efConstruction {ef_construction}; the field asks for {}, {}",
            params.m,
            params.ef_construction
        );
        let (stale, count) = (r.u64()?, r.u64()?);
        ensure!(count == flat.len() as u64, "the graph holds {count} items, the store {}", flat.len());
        let mut index = AnnIndex { params, metric, graph: None, failed: false, stale: stale as usize, saved: true };
        // Key k was the row of the k-th id when the graph was saved; `rows[k]` is its row now
        // (the exact index is rebuilt from the store at a start, in another order).
        let mut rows = Vec::with_capacity(flat.len());
        let mut seen = vec![false; flat.len()];
        for _ in 0..count {
            let id = r.str()?;
            let row = flat.row_of(id).with_context(|| format!("item `{id}` is in the graph but not in the store"))?;
            ensure!(!std::mem::replace(&mut seen[row], true), "item `{id}` appears twice");
            rows.push(row);
        }
        let len = r.u64()?;
        ensure!(len == r.0.len() as u64, "the graph's length ({len}) does not match the file");
        let blob = r.0;
        // USearch trusts its own header, so check it before handing it the bytes: vector rows
        // of exactly `dim` f32s, as many as the live and deleted nodes.
        let mut head = Reader(blob);
        let (slots, row_bytes) = (head.u32()? as u64, head.u32()? as u64);
        ensure!(
            // USearch's 64-byte header follows the rows.
            row_bytes == dim * 4 && slots <= count.saturating_add(stale) && slots.saturating_mul(row_bytes).saturating_add(64) < head.0.len() as u64,
            "the graph's header does not match the field ({slots} rows of {row_bytes} bytes)"
        );
        let meta = Index::metadata_from_buffer(blob)?;
        ensure!(
            meta.dimensions == dim
                && meta.quantization == ScalarKind::F32
                && !meta.multi
                && meta.count_present == count
                && slots == meta.count_present + meta.count_deleted,
            "the graph's header does not match the field ({} live and {} deleted of {slots} rows)",
            meta.count_present,
            meta.count_deleted
        );
        let mut graph = Index::new(&index.options(dim as usize))?;
        graph.load_from_buffer(blob)?;
        // Loading puts back USearch's own metric, named in the file.
        index.use_kernels(&mut graph, dim as usize)?;
        ensure!(graph.size() as u64 == count && graph.dimensions() as u64 == dim, "the loaded graph does not hold the saved items");
        graph.change_expansion_add(params.ef_construction);
        graph.change_expansion_search(1);
        // The store is the source of truth: every node must hold the vector the exact index holds.
        let mut vector = vec![0f32; dim as usize];
        for (key, &row) in rows.iter().enumerate() {
            let id = flat.id(row);
            ensure!(graph.get(key as u64, &mut vector)? == 1, "`{id}` is missing from the graph");
            ensure!(
                vector.iter().zip(flat.row_vectors(row..row + 1).iter()).all(|(a, b)| a.to_bits() == b.to_bits()),
                "the vector of `{id}` changed since the graph was saved"
            );
        }
        let moved: Vec<(u64, u64)> = rows.iter().enumerate().map(|(key, &row)| (key as u64, row as u64)).filter(|(key, row)| key != row).collect();
        for &(key, row) in &moved {
            ensure!(graph.rename(key, REKEY_OFFSET + row)? == 1, "key {key} cannot be moved");
        }
        for &(_, row) in &moved {
            ensure!(graph.rename(REKEY_OFFSET + row, row)? == 1, "row {row} cannot be keyed");
        }
        graph.reserve_capacity_and_threads(graph.capacity().max(1024), contexts())?;
        index.graph = Some(graph);
        Ok(index)
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
        ann.upsert(&flat, "item-0");
        ann.remove(flat.remove("item-1").unwrap());
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
            ann.upsert(&flat, &format!("item-{i}"));
        }
        for i in 0..500 {
            ann.remove(flat.remove(&format!("item-{i}")).unwrap());
        }
        for (i, v) in vectors.iter().enumerate().take(250) {
            flat.upsert(&format!("again-{i}"), v).unwrap();
            ann.upsert(&flat, &format!("again-{i}"));
        }
        assert!(!ann.failed);
        for (i, v) in vectors.iter().enumerate().step_by(50) {
            let hits = ann.search(&flat, v, 3);
            assert!(hits.iter().all(|h| !(h.id.starts_with("item-") && h.id[5..].parse::<usize>().unwrap() < 500)), "{hits:?}");
            let own = if i < 250 { format!("again-{i}") } else if i < 500 { continue } else { format!("item-{i}") };
            assert_eq!(hits[0].id, own);
        }
    }
    /// The vectors `flat_of` writes, in order.
    fn inputs(metric: Metric, n: usize, dim: usize) -> Vec<Vec<f32>> {
        let vectors = data(n, dim, 11).into_iter().enumerate();
        // Not unit length for inner product and L2, so the metrics order differently.
        let scale = |i: usize| if metric == Metric::Cosine { 1.0 } else { 1.0 + (i % 7) as f32 * 0.3 };
        vectors.map(|(i, v)| v.iter().map(|x| x * scale(i)).collect()).collect()
    }

    fn flat_of(metric: Metric, n: usize, dim: usize) -> FlatIndex {
        let mut flat = FlatIndex::new(metric);
        for (i, v) in inputs(metric, n, dim).iter().enumerate() {
            flat.upsert(&format!("item-{i}"), v).unwrap();
        }
        flat
    }

    fn top_ids(hits: &[Scored]) -> Vec<String> {
        hits.iter().map(|h| h.id.clone()).collect()
    }

    #[test]
    fn each_metric_answers_the_exact_top_k_on_small_data() {
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let flat = flat_of(metric, 300, 16);
            // ef past the item count: the graph search visits everything reachable.
            let ann = AnnIndex::build(AnnParams { ef_search: 400, ..AnnParams::default() }, metric, &flat);
            for q in data(20, 16, 123) {
                let exact = flat.search(&q, 10, None).unwrap();
                let approx = ann.search(&flat, &q, 10);
                assert_eq!(top_ids(&approx), top_ids(&exact), "{metric:?}");
                for (a, e) in approx.iter().zip(&exact) {
                    assert!((a.score - e.score).abs() < 1e-5, "{metric:?}: {} vs {}", a.score, e.score);
                }
            }
        }
    }

    #[test]
    fn a_saved_graph_loads_and_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let path = dir.path().join(format!("{metric:?}.hnsw"));
            let mut flat = flat_of(metric, 3_000, 24);
            let mut ann = AnnIndex::build(AnnParams::default(), metric, &flat);
            // Free nodes and a replaced vector travel too.
            for i in 0..50 {
                ann.remove(flat.remove(&format!("item-{i}")).unwrap());
            }
            let moved = flat.stored("item-60").unwrap().into_owned();
            flat.upsert("item-61", &moved).unwrap();
            ann.upsert(&flat, "item-61");
            ann.save(&flat, &path, "t/c/emb").unwrap();
            assert!(!ann.unsaved());

            let loaded = AnnIndex::load(AnnParams::default(), metric, &flat, &path, "t/c/emb").unwrap();
            assert_eq!((loaded.graph.as_ref().unwrap().size(), loaded.stale), (ann.graph.as_ref().unwrap().size(), ann.stale));
            for q in data(50, 24, 77) {
                assert_eq!(ann.search(&flat, &q, 10), loaded.search(&flat, &q, 10), "{metric:?}");
            }
            // A start rebuilds the exact index from the store, in another row order: the loaded
            // graph is re-keyed to it and answers the same.
            let written = inputs(metric, 3_000, 24);
            let mut reordered = FlatIndex::new(metric);
            for row in (0..flat.len()).rev() {
                let id = flat.id(row);
                let input = if id == "item-61" { &moved } else { &written[id[5..].parse::<usize>().unwrap()] };
                reordered.upsert(id, input).unwrap();
            }
            let mut loaded = AnnIndex::load(AnnParams::default(), metric, &reordered, &path, "t/c/emb").unwrap();
            for q in data(50, 24, 77) {
                assert_eq!(ann.search(&flat, &q, 10), loaded.search(&reordered, &q, 10), "{metric:?}");
            }
            let mut flat = reordered;
            // The loaded graph keeps taking writes.
            // Long enough to be its own nearest neighbour under inner product too.
            let v: Vec<f32> = data(1, 24, 999)[0].iter().map(|x| x * 10.0).collect();
            flat.upsert("new", &v).unwrap();
            loaded.upsert(&flat, "new");
            assert!(loaded.unsaved());
            assert_eq!(loaded.search(&flat, &v, 1)[0].id, "new");
            // Past its free nodes and its capacity: the loaded vectors move to a larger matrix.
            let grown: Vec<Vec<f32>> = data(4_000, 24, 4242).into_iter().map(|v| v.iter().map(|x| x * 10.0).collect()).collect();
            for (i, v) in grown.iter().enumerate() {
                flat.upsert(&format!("grow-{i}"), v).unwrap();
                loaded.upsert(&flat, &format!("grow-{i}"));
            }
            assert!(!loaded.failed);
            for (i, v) in grown.iter().enumerate().step_by(97) {
                assert_eq!(loaded.search(&flat, v, 1)[0].id, format!("grow-{i}"), "{metric:?}");
            }
            assert_eq!(loaded.search(&flat, &v, 1)[0].id, "new");
        }
    }

    #[test]
    fn a_saved_graph_that_no_longer_matches_the_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        let metric = Metric::InnerProduct;
        let flat = flat_of(metric, 500, 8);
        let mut ann = AnnIndex::build(AnnParams::default(), metric, &flat);
        ann.save(&flat, &path, "t/c/emb").unwrap();
        let load = |flat: &FlatIndex| AnnIndex::load(AnnParams::default(), metric, flat, &path, "t/c/emb").map(|_| ()).unwrap_err().to_string();

        // A commit after the save (a crash before the next one): one more item, one changed, one gone.
        let mut more = flat_of(metric, 500, 8);
        more.upsert("extra", &[0.5; 8]).unwrap();
        assert!(load(&more).contains("501"), "{}", load(&more));
        let mut changed = flat_of(metric, 500, 8);
        changed.upsert("item-7", &[0.25; 8]).unwrap();
        assert!(load(&changed).contains("item-7"), "{}", load(&changed));
        let mut swapped = flat_of(metric, 500, 8);
        swapped.remove("item-3");
        swapped.upsert("other", &[0.5; 8]).unwrap();
        assert!(load(&swapped).contains("item-3"), "{}", load(&swapped));
        // Another field, metric, dimension or M.
        assert!(AnnIndex::load(AnnParams::default(), metric, &flat, &path, "t/c/other").is_err());
        assert!(AnnIndex::load(AnnParams::default(), Metric::L2, &flat, &path, "t/c/emb").is_err());
        assert!(load(&flat_of(metric, 500, 9)).contains("dimensional"));
        assert!(AnnIndex::load(AnnParams { m: 8, ..AnnParams::default() }, metric, &flat, &path, "t/c/emb").is_err());
        // Unchanged, it loads.
        assert!(AnnIndex::load(AnnParams::default(), metric, &flat, &path, "t/c/emb").is_ok());
    }

    #[test]
    fn a_damaged_or_forged_graph_file_is_refused_without_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        let metric = Metric::L2;
        let flat = flat_of(metric, 400, 8);
        let mut ann = AnnIndex::build(AnnParams::default(), metric, &flat);
        ann.save(&flat, &path, "f").unwrap();
        let good = std::fs::read(&path).unwrap();
        let try_bytes = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            AnnIndex::load(AnnParams::default(), metric, &flat, &path, "f").map(|_| ()).unwrap_err().to_string()
        };
        assert!(try_bytes(&good[..good.len() / 2]).contains("checksum"));
        assert!(try_bytes(&good[..10]).contains("truncated"));
        assert!(try_bytes(b"").contains("truncated"));
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        assert!(try_bytes(&flipped).contains("checksum"));
        // A forged file with a valid checksum: huge counts and lengths, or a USearch header that
        // claims rows shorter than the field's vectors, are refused before anything trusts them.
        let reseal = |mut body: Vec<u8>| {
            body.truncate(body.len() - 32);
            let digest = Sha256::digest(&body);
            body.extend(digest);
            body
        };
        // Offsets: magic 8, format 4, field (4 + 1), metric 1, then dim, m, efc, stale, count.
        let count_at = 8 + 4 + 5 + 1 + 4 * 8;
        let mut huge = good.clone();
        huge[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(try_bytes(&reseal(huge)).contains("items"));
        let mut long_id = good.clone();
        long_id[count_at + 8..count_at + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(try_bytes(&reseal(long_id)).contains("ends early"));
        let blob_at = good.len() - 32 - ann.graph.as_ref().unwrap().serialized_length();
        let mut short_rows = good.clone();
        short_rows[blob_at + 4..blob_at + 8].copy_from_slice(&4u32.to_le_bytes());
        let err = try_bytes(&reseal(short_rows));
        assert!(err.contains("header"), "{err}");
        let mut graph_len = good.clone();
        graph_len[blob_at - 8..blob_at].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(try_bytes(&reseal(graph_len)).contains("length"));
        // The good file still loads.
        std::fs::write(&path, &good).unwrap();
        assert!(AnnIndex::load(AnnParams::default(), metric, &flat, &path, "f").is_ok());
    }
}
