//! Exact top-k over all vectors of one field, under the field's metric, with the vectors held in
//! f32 or, when the operator chooses it, in f16 (half the memory and the memory traffic), or in
//! f32 beside an int8 copy that single-query scans read first (see [`super::quantized`]).

use super::Scored;
use super::quantized::{self, Sq8};
pub use super::simd::dot;
use super::simd::dot_f16;
use crate::store::{Metric, Precision};
use anyhow::{Result, bail};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::borrow::Cow;
use std::cmp::Ordering;
use ahash::HashMap;
use std::collections::BinaryHeap;
use std::ops::Range;

/// Rows one task scans in `search`. Smaller indexes are scanned on the calling thread, where
/// handing the work to the thread pool would cost more than it saves.
#[cfg(not(test))]
const SCAN_ROWS: usize = 8192;
/// Rows per matrix multiply in `search_batch`: a block's scores for a query group stay in L2.
#[cfg(not(test))]
const BATCH_ROWS: usize = 1024;
/// Queries per pass over the data in `search_batch`, bounding each task's scores to
/// `QUERY_GROUP * BATCH_ROWS` floats (1 MiB) however many queries come.
#[cfg(not(test))]
const QUERY_GROUP: usize = 256;
// Tiny sizes in tests, so a few hundred rows cross every chunk, block and group boundary.
#[cfg(test)]
const SCAN_ROWS: usize = 64;
#[cfg(test)]
const BATCH_ROWS: usize = 50;
#[cfg(test)]
const QUERY_GROUP: usize = 7;

/// All vectors of one field, row-major. Cosine fields store normalised vectors; L2 fields keep
/// each row's squared norm, so every metric is one inner product per row.
#[derive(Debug)]
pub struct FlatIndex {
    metric: Metric,
    dim: usize,
    ids: Vec<String>,
    rows: HashMap<String, usize>,
    data: Rows,
    sq_norms: Vec<f32>,
    /// Rows to make room for once the first vector fixes the dimension (see `reserve`).
    reserved_rows: usize,
}

/// The vectors at the field's precision. f16 rows are widened to f32 as they are read.
#[derive(Debug)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// f32 rows and their int8 codes. The f32 rows stay in memory for the exact re-score: a few
    /// dozen rows per query, but at random places, and reading them from the store instead would
    /// put B-tree lookups and a read transaction inside every scan and leave the f32 rows that
    /// batches (gemm), HNSW graphs and re-rankers (`written_vector`) read from this index with
    /// no source. The price is a quarter more memory than f32: this precision buys scan speed;
    /// f16 is the one that saves memory.
    Int8(Vec<f32>, Sq8),
}

impl Rows {
    fn bytes(&self) -> usize {
        match self {
            Rows::F32(v) => v.capacity() * size_of::<f32>(),
            Rows::F16(v) => v.capacity() * size_of::<f16>(),
            Rows::Int8(v, codes) => v.capacity() * size_of::<f32>() + codes.bytes(),
        }
    }

    fn reserve_exact(&mut self, values: usize) {
        match self {
            Rows::F32(v) => v.reserve_exact(values),
            Rows::F16(v) => v.reserve_exact(values),
            Rows::Int8(v, codes) => {
                v.reserve_exact(values);
                codes.reserve_exact(values);
            }
        }
    }

    fn shrink_to_fit(&mut self) {
        match self {
            Rows::F32(v) => v.shrink_to_fit(),
            Rows::F16(v) => v.shrink_to_fit(),
            Rows::Int8(v, codes) => {
                v.shrink_to_fit();
                codes.shrink_to_fit();
            }
        }
    }

    /// Append a row already checked to fit the precision.
    fn push(&mut self, row: &[f32]) {
        match self {
            Rows::F32(v) => {
                grow(v, row.len());
                v.extend_from_slice(row);
            }
            Rows::F16(v) => {
                grow(v, row.len());
                let start = v.len();
                v.resize(start + row.len(), f16::ZERO);
                v[start..].convert_from_f32_slice(row);
            }
            Rows::Int8(v, codes) => {
                grow(v, row.len());
                v.extend_from_slice(row);
                codes.push(row);
            }
        }
    }

    fn set(&mut self, at: Range<usize>, row: &[f32]) {
        match self {
            Rows::F32(v) => v[at].copy_from_slice(row),
            Rows::F16(v) => v[at].convert_from_f32_slice(row),
            Rows::Int8(v, codes) => {
                v[at.clone()].copy_from_slice(row);
                codes.set(at, row);
            }
        }
    }

    fn copy_within(&mut self, from: Range<usize>, to: usize) {
        match self {
            Rows::F32(v) => v.copy_within(from, to),
            Rows::F16(v) => v.copy_within(from, to),
            Rows::Int8(v, codes) => {
                v.copy_within(from.clone(), to);
                codes.copy_within(from, to);
            }
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Rows::F32(v) => v.truncate(len),
            Rows::F16(v) => v.truncate(len),
            Rows::Int8(v, codes) => {
                v.truncate(len);
                codes.truncate(len);
            }
        }
    }

    /// Values `at` as f32: borrowed from f32 rows, widened from f16 rows.
    fn get(&self, at: Range<usize>) -> Cow<'_, [f32]> {
        match self {
            Rows::F32(v) | Rows::Int8(v, _) => Cow::Borrowed(&v[at]),
            Rows::F16(v) => {
                let mut out = vec![0f32; at.len()];
                v[at].convert_to_f32_slice(&mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Values `at` as f32, widened into `scratch` if need be (the batched path's gemm takes f32).
    fn get_into<'a>(&'a self, at: Range<usize>, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Rows::F32(v) | Rows::Int8(v, _) => &v[at],
            Rows::F16(v) => {
                scratch.resize(at.len(), 0.0);
                v[at].convert_to_f32_slice(scratch);
                scratch
            }
        }
    }

    fn dot(&self, query: &[f32], at: Range<usize>) -> f32 {
        match self {
            Rows::F32(v) | Rows::Int8(v, _) => dot(query, &v[at]),
            Rows::F16(v) => dot_f16(query, &v[at]),
        }
    }
}

/// Make room for `extra` more values, growing by an eighth instead of doubling, so at most about
/// an eighth of a large index is slack. Large allocations grow by remapping pages (glibc's
/// realloc uses mremap), so the smaller steps do not mean copying the data more often.
pub(super) fn grow<T>(v: &mut Vec<T>, extra: usize) {
    if v.capacity() - v.len() < extra {
        v.reserve_exact(extra.max(v.len() / 8).max(16));
    }
}

/// The largest magnitude an f16 field accepts: larger values round to infinity.
const F16_LIMIT: f32 = 65504.0;

impl FlatIndex {
    /// An empty f32 index.
    pub fn new(metric: Metric) -> Self {
        FlatIndex::with_precision(metric, Precision::F32)
    }

    pub fn with_precision(metric: Metric, precision: Precision) -> Self {
        let data = match precision {
            Precision::F32 => Rows::F32(Vec::new()),
            Precision::F16 => Rows::F16(Vec::new()),
            Precision::Int8 => Rows::Int8(Vec::new(), Sq8::new()),
        };
        FlatIndex { metric, dim: 0, ids: Vec::new(), rows: HashMap::default(), data, sq_norms: Vec::new(), reserved_rows: 0 }
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
    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn precision(&self) -> Precision {
        match self.data {
            Rows::F32(_) => Precision::F32,
            Rows::F16(_) => Precision::F16,
            Rows::Int8(..) => Precision::Int8,
        }
    }

    /// The dimension a new vector must have, if the field has any vectors.
    pub fn expected_dim(&self) -> Option<usize> {
        (!self.is_empty()).then_some(self.dim)
    }

    /// Make room for `rows` more vectors at once, so a bulk load (whose size is known) leaves no
    /// slack. Before the first vector the dimension is unknown, so the vectors' room is made then.
    pub fn reserve(&mut self, rows: usize) {
        self.ids.reserve_exact(rows);
        self.sq_norms.reserve_exact(rows);
        self.rows.reserve(rows);
        if self.is_empty() {
            self.reserved_rows = rows;
        } else {
            self.data.reserve_exact(rows * self.dim);
        }
        if let Rows::Int8(_, codes) = &mut self.data {
            codes.train_when(self.ids.len().saturating_add(rows));
        }
    }

    /// Train an int8 field's codes on the rows held, unless they were trained on exactly these:
    /// after a bulk load, in case it held fewer rows than `reserve` was told.
    pub fn train(&mut self) {
        if let Rows::Int8(v, codes) = &mut self.data
            && !self.ids.is_empty()
            && !codes.is_current(self.ids.len())
        {
            codes.train(v, self.dim);
        }
    }

    /// Give back slack: after a bulk insert whose size was not known up front.
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.sq_norms.shrink_to_fit();
        self.rows.shrink_to_fit();
        self.data.shrink_to_fit();
    }

    /// Bytes held on the heap, estimated from capacities (allocator overhead aside): the vectors,
    /// the norms, the ids, and the id-to-row map with its own copy of each id.
    pub fn heap_bytes(&self) -> usize {
        let id_text: usize = self.ids.iter().chain(self.rows.keys()).map(String::capacity).sum();
        // The map keeps an eighth of its buckets free, each bucket with one control byte.
        let map_buckets = self.rows.capacity() * 8 / 7;
        self.data.bytes()
            + self.sq_norms.capacity() * size_of::<f32>()
            + self.ids.capacity() * size_of::<String>()
            + map_buckets * (size_of::<(String, usize)>() + 1)
            + id_text
    }

    /// Fail if `vector` cannot be held at this index's precision (f16 tops out at ±65504).
    pub fn check_range(&self, id: &str, vector: &[f32]) -> Result<()> {
        // Cosine vectors are stored normalised, within ±1.
        if self.precision() == Precision::F16
            && self.metric != Metric::Cosine
            && let Some(x) = vector.iter().find(|x| x.abs() > F16_LIMIT)
        {
            bail!(
                "vector for `{id}` holds {x}, beyond the ±{F16_LIMIT} that this f16 field can hold; \
                 store the field in f32 (`quarry index <collection> <field> --f32`) or scale the vectors"
            );
        }
        Ok(())
    }

    /// Insert or replace `id`'s vector. The first vector fixes the field's dimension.
    pub fn upsert(&mut self, id: &str, vector: &[f32]) -> Result<()> {
        if vector.is_empty() {
            bail!("vector for `{id}` is empty");
        }
        if self.ids.is_empty() {
            self.dim = vector.len();
            self.data.reserve_exact(std::mem::take(&mut self.reserved_rows) * self.dim);
        } else if vector.len() != self.dim {
            bail!("vector for `{id}` has {} dimensions but the field holds {}-dimensional vectors", vector.len(), self.dim);
        }
        self.check_range(id, vector)?;
        let vector = match self.metric {
            Metric::Cosine => Cow::Owned(normalized(vector)),
            Metric::InnerProduct | Metric::L2 => Cow::Borrowed(vector),
        };
        let row = match self.rows.get(id) {
            Some(&row) => {
                self.data.set(row * self.dim..(row + 1) * self.dim, &vector);
                row
            }
            None => {
                let row = self.ids.len();
                self.rows.insert(id.to_string(), row);
                grow(&mut self.ids, 1);
                self.ids.push(id.to_string());
                self.data.push(&vector);
                grow(&mut self.sq_norms, 1);
                self.sq_norms.push(0.0);
                row
            }
        };
        // The norm of the row as stored (rounded, in f16), so L2 scores are exact for it.
        let stored = self.data.get(row * self.dim..(row + 1) * self.dim);
        self.sq_norms[row] = dot(&stored, &stored);
        if let Rows::Int8(v, codes) = &mut self.data
            && codes.wants_training(self.ids.len())
        {
            codes.train(v, self.dim);
        }
        Ok(())
    }

    /// Remove `id`'s vector, if present (the last row moves into its place).
    /// Forget `id`. The last row moves into its place, as the answer says, so rows stay dense.
    pub fn remove(&mut self, id: &str) -> Option<RemovedRow> {
        let row = self.rows.remove(id)?;
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
        Some(RemovedRow { row, moved_from: (row != last).then_some(last) })
    }

    /// The `k` nearest rows to `query` that `accept` lets through, best first, ties by id.
    /// Large indexes are scanned in parallel chunks whose top-k are merged.
    pub fn search(&self, query: &[f32], k: usize, accept: Option<&dyn Fn(&str) -> bool>) -> Result<Vec<Scored>> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        if query.len() != self.dim {
            bail!("query has {} dimensions but the field holds {}-dimensional vectors; is the query embedded with the same model?", query.len(), self.dim);
        }
        let query = self.prepared(query);
        let q_sq = dot(&query, &query);
        let top = match &self.data {
            // The int8 scan keeps `candidates` rows, re-scored here exactly as an f32 scan scores
            // them, so the scores are f32's to the bit. Worth it only when it rules rows out.
            Rows::Int8(exact, codes) if codes.is_trained() && quantized::candidates(k) < self.len() => {
                let candidates = quantized::candidates(k);
                let quantized_query = codes.query(&query);
                // Rows outside the trained range are left to the exact pass below.
                let outside = codes.outside();
                let rough = self.scan_rows(candidates, accept, |rows, keep| {
                    let mut top = TopK::new(candidates, &self.ids);
                    for row in rows.filter(|&row| keep.get(row) && outside.is_none_or(|outside| !outside[row])) {
                        let ip = codes.inner_product(&quantized_query, row * self.dim..(row + 1) * self.dim);
                        top.push(self.score(ip, row, q_sq), row);
                    }
                    top
                });
                let mut top = TopK::new(k, &self.ids);
                let exactly = |row: usize| self.score(dot(&query, &exact[row * self.dim..(row + 1) * self.dim]), row, q_sq);
                for hit in rough.heap {
                    top.push(exactly(hit.row), hit.row);
                }
                let outside_rows = outside.into_iter().flat_map(|outside| outside.iter().enumerate().filter(|(_, o)| **o).map(|(row, _)| row));
                for row in outside_rows.filter(|&row| accept.is_none_or(|accept| accept(&self.ids[row]))) {
                    top.push(exactly(row), row);
                }
                top
            }
            _ => self.scan_rows(k, accept, |rows, keep| self.scan(&query, q_sq, k, rows, keep)),
        };
        Ok(top.into_sorted())
    }

    /// The top `k` of what `scan` finds in each chunk of the rows `accept` lets through: on the
    /// calling thread for small indexes, else chunks in parallel whose top-k are merged.
    fn scan_rows<'a>(&'a self, k: usize, accept: Option<&dyn Fn(&str) -> bool>, scan: impl Fn(Range<usize>, Keep<'_>) -> TopK<'a> + Sync) -> TopK<'a> {
        if self.len() <= SCAN_ROWS {
            scan(0..self.len(), accept.map_or(Keep::All, |accept| Keep::Ask(accept, &self.ids)))
        } else {
            // `accept` need not be thread-safe, so it is asked about every row up front.
            let keep: Option<Vec<bool>> = accept.map(|accept| self.ids.iter().map(|id| accept(id)).collect());
            (0..self.len().div_ceil(SCAN_ROWS))
                .into_par_iter()
                .map(|chunk| {
                    let rows = chunk * SCAN_ROWS..((chunk + 1) * SCAN_ROWS).min(self.len());
                    scan(rows, keep.as_deref().map_or(Keep::All, Keep::Rows))
                })
                .reduce(|| TopK::new(k, &self.ids), TopK::merge)
        }
    }

    /// `search` for every row of `queries` (`n x dim`, row-major) at once, the same filter for
    /// all. Scores come from one matrix multiply per block of rows and query group, so the data is
    /// read once per group instead of once per query. Hits equal `search`'s up to float rounding.
    /// An empty index has no dimension to split `queries` by, so it returns no lists at all.
    pub fn search_batch(&self, queries: &[f32], k: usize, accept: Option<&(dyn Fn(&str) -> bool + Sync)>) -> Result<Vec<Vec<Scored>>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        if !queries.len().is_multiple_of(self.dim) {
            bail!(
                "queries hold {} values, which is not a whole number of the field's {}-dimensional vectors; are they embedded with the same model?",
                queries.len(),
                self.dim
            );
        }
        if k == 0 {
            return Ok(vec![Vec::new(); queries.len() / self.dim]);
        }
        let queries = self.prepared(queries);
        let keep: Option<Vec<bool>> = accept.map(|accept| self.ids.par_iter().map(|id| accept(id)).collect());
        let mut hits = Vec::with_capacity(queries.len() / self.dim);
        for group in queries.chunks(QUERY_GROUP * self.dim) {
            hits.extend(self.search_group(group, k, keep.as_deref()).into_iter().map(TopK::into_sorted));
        }
        Ok(hits)
    }

    /// Top-k of each query of `group` over the rows `keep` lets through, blocks of rows in parallel.
    fn search_group(&self, group: &[f32], k: usize, keep: Option<&[bool]>) -> Vec<TopK<'_>> {
        let n = group.len() / self.dim;
        let q_sq: Vec<f32> = group.chunks_exact(self.dim).map(|q| dot(q, q)).collect();
        let fresh = || (0..n).map(|_| TopK::new(k, &self.ids)).collect::<Vec<_>>();
        let kept = |row: usize| keep.is_none_or(|keep| keep[row]);
        (0..self.len().div_ceil(BATCH_ROWS))
            .into_par_iter()
            .fold(
                // Per task: the block's scores, room to widen f16 rows, and the top-k so far.
                || (vec![0f32; BATCH_ROWS * n], Vec::new(), fresh()),
                |(mut scores, mut widened, mut tops), block| {
                    let first = block * BATCH_ROWS;
                    let count = BATCH_ROWS.min(self.len() - first);
                    if (first..first + count).any(kept) {
                        let rows = self.data.get_into(first * self.dim..(first + count) * self.dim, &mut widened);
                        let block_scores = &mut scores[..count * n];
                        inner_products(rows, group, self.dim, block_scores);
                        for (offset, ips) in block_scores.chunks_exact(n).enumerate() {
                            let row = first + offset;
                            if kept(row) {
                                for ((top, &ip), &q_sq) in tops.iter_mut().zip(ips).zip(&q_sq) {
                                    top.push(self.score(ip, row, q_sq), row);
                                }
                            }
                        }
                    }
                    (scores, widened, tops)
                },
            )
            .map(|(_, _, tops)| tops)
            .reduce(fresh, |a, b| a.into_iter().zip(b).map(|(a, b)| a.merge(b)).collect())
    }

    /// Top-k of one query over `rows`, exactly.
    fn scan(&self, query: &[f32], q_sq: f32, k: usize, rows: Range<usize>, keep: Keep<'_>) -> TopK<'_> {
        let mut top = TopK::new(k, &self.ids);
        let dim = self.dim;
        // One loop per precision, so the kernel is chosen once per scan rather than per row.
        match &self.data {
            Rows::F32(data) | Rows::Int8(data, _) => {
                for row in rows.filter(|&row| keep.get(row)) {
                    top.push(self.score(dot(query, &data[row * dim..(row + 1) * dim]), row, q_sq), row);
                }
            }
            Rows::F16(data) => {
                for row in rows.filter(|&row| keep.get(row)) {
                    top.push(self.score(dot_f16(query, &data[row * dim..(row + 1) * dim]), row, q_sq), row);
                }
            }
        }
        top
    }

    /// Queries as the index stores vectors: normalised one by one for cosine fields.
    fn prepared<'q>(&self, queries: &'q [f32]) -> Cow<'q, [f32]> {
        match self.metric {
            Metric::Cosine => queries.chunks_exact(self.dim).flat_map(normalized).collect(),
            Metric::InnerProduct | Metric::L2 => Cow::Borrowed(queries),
        }
    }

    /// A row's score from its inner product with a query whose squared norm is `q_sq`.
    fn score(&self, ip: f32, row: usize, q_sq: f32) -> f32 {
        // -(|q - v|^2) = 2 q.v - |v|^2 - |q|^2
        if self.metric == Metric::L2 { 2.0 * ip - self.sq_norms[row] - q_sq } else { ip }
    }

    /// The id of row `row`.
    pub fn id(&self, row: usize) -> &str {
        &self.ids[row]
    }

    /// Rows `rows` as stored (normalised, for cosine fields), as f32, row-major.
    pub fn row_vectors(&self, rows: Range<usize>) -> Cow<'_, [f32]> {
        self.data.get(rows.start * self.dim..rows.end * self.dim)
    }

    /// A query as the stored vectors are (normalised, for cosine fields).
    pub fn prepare_query(&self, query: &[f32]) -> Vec<f32> {
        self.prepared(query).into_owned()
    }

    /// `id`'s stored vector (normalised, for cosine fields; rounded, for f16 fields) as f32.
    pub fn stored(&self, id: &str) -> Option<Cow<'_, [f32]>> {
        let row = self.row_of(id)?;
        Some(self.row_vectors(row..row + 1))
    }

    /// The row holding `id`.
    pub fn row_of(&self, id: &str) -> Option<usize> {
        self.rows.get(id).copied()
    }

    /// The exact score of row `row` (below `len()`), for a query as `prepare_query` returns it,
    /// whose squared norm is `q_sq`.
    pub fn row_score(&self, row: usize, prepared: &[f32], q_sq: f32) -> f32 {
        let ip = self.data.dot(prepared, row * self.dim..(row + 1) * self.dim);
        self.score(ip, row, q_sq)
    }
}

/// What `FlatIndex::remove` did to the rows: `row` is gone, and the last row, if another, moved
/// from `moved_from` into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemovedRow {
    pub row: usize,
    pub moved_from: Option<usize>,
}

/// Which rows a scan scores: a match per row instead of a call through a pointer, so the
/// unfiltered case costs a predicted branch.
#[derive(Clone, Copy)]
enum Keep<'a> {
    All,
    Rows(&'a [bool]),
    Ask(&'a dyn Fn(&str) -> bool, &'a [String]),
}

impl Keep<'_> {
    #[inline]
    fn get(self, row: usize) -> bool {
        match self {
            Keep::All => true,
            Keep::Rows(keep) => keep[row],
            Keep::Ask(accept, ids) => accept(&ids[row]),
        }
    }
}

/// `out[r * n + q] = rows[r] . queries[q]` for `rows` (`m x dim`) and `queries` (`n x dim`),
/// both row-major: rows by query-columns is the orientation gemm runs fastest here.
pub(super) fn inner_products(rows: &[f32], queries: &[f32], dim: usize, out: &mut [f32]) {
    let (m, n) = (rows.len() / dim, queries.len() / dim);
    assert_eq!(out.len(), m * n);
    // SAFETY: `rows` is read as m x dim (row stride dim), `queries` as its transpose dim x n
    // (column stride dim), `out` is written as m x n (row stride n); all lie within their slices,
    // and `out` is exclusively borrowed. With read_dst false, out = 1.0 * rows * queries^T.
    unsafe {
        gemm::gemm(
            m,
            n,
            dim,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            rows.as_ptr(),
            1,
            dim as isize,
            queries.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The best `k` hits seen so far: a heap whose top is the worst kept hit, and that hit's score,
/// which turns most rows away with a single comparison.
struct TopK<'a> {
    k: usize,
    ids: &'a [String],
    heap: BinaryHeap<Worst<'a>>,
    /// Rows scoring below this cannot get in: the worst kept score once `k` hits are kept.
    floor: f32,
}

impl<'a> TopK<'a> {
    fn new(k: usize, ids: &'a [String]) -> Self {
        // Room for at most every row, however large a k is asked for.
        TopK { k, ids, heap: BinaryHeap::with_capacity(k.min(ids.len()) + 1), floor: f32::NEG_INFINITY }
    }

    fn push(&mut self, score: f32, row: usize) {
        if score < self.floor {
            return;
        }
        let hit = Worst { score, row, ids: self.ids };
        if self.heap.len() < self.k {
            self.heap.push(hit);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && hit < *worst
        {
            *worst = hit;
        }
        if self.heap.len() == self.k
            && let Some(worst) = self.heap.peek()
        {
            self.floor = worst.score;
        }
    }

    fn merge(mut self, other: Self) -> Self {
        for hit in other.heap {
            self.push(hit.score, hit.row);
        }
        self
    }

    /// Best first; ties by id, as `Worst` orders them.
    fn into_sorted(self) -> Vec<Scored> {
        self.heap.into_sorted_vec().into_iter().map(|hit| Scored { id: self.ids[hit.row].clone(), score: hit.score }).collect()
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
        // 37 dims to exercise the dot-product tail.
        let mut next = crate::index::uniform(0x2545F4914F6CDD1D);
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
        assert!(FlatIndex::new(Metric::L2).upsert("empty", &[]).is_err(), "an empty vector would fix the dimension at 0");
    }

    #[test]
    fn batch_equals_search_per_query() {
        // 500 rows cross the test-sized scan chunks and row blocks, 20 queries the query groups.
        let (rows, dim, n_queries) = (500, 37, 20);
        // Coarse data holds whole numbers whose products and sums are exact in f32 in any order,
        // so scores tie exactly and both paths must break the ties by id.
        // Whole numbers up to 3 are exact in f16 too.
        let cases = [(Metric::InnerProduct, false), (Metric::Cosine, false), (Metric::L2, false), (Metric::InnerProduct, true), (Metric::L2, true)];
        for (precision, (metric, coarse)) in [Precision::F32, Precision::F16].into_iter().flat_map(|p| cases.map(|c| (p, c))) {
            let mut state = 0x9E3779B97F4A7C15u64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if coarse { (state % 7) as f32 - 3.0 } else { (state % 2000) as f32 / 1000.0 - 1.0 }
            };
            let mut index = FlatIndex::with_precision(metric, precision);
            for i in 0..rows {
                index.upsert(&format!("item-{i}"), &(0..dim).map(|_| next()).collect::<Vec<_>>()).unwrap();
            }
            let queries: Vec<f32> = (0..n_queries * dim).map(|_| next()).collect();
            let even = |id: &str| id.trim_start_matches("item-").parse::<u32>().unwrap() % 2 == 0;
            for accept in [None, Some(&even as &(dyn Fn(&str) -> bool + Sync))] {
                for k in [1, 10, rows + 3] {
                    let batch = index.search_batch(&queries, k, accept).unwrap();
                    assert_eq!(batch.len(), n_queries);
                    for (query, got) in queries.chunks_exact(dim).zip(&batch) {
                        let want = index.search(query, k, accept.map(|a| a as &dyn Fn(&str) -> bool)).unwrap();
                        let ids = |hits: &[Scored]| hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
                        assert_eq!(ids(got), ids(&want), "{precision:?} {metric:?}, coarse {coarse}, k {k}, filtered {}", accept.is_some());
                        for (g, w) in got.iter().zip(&want) {
                            assert!((g.score - w.score).abs() <= 1e-3 * w.score.abs().max(1.0), "{metric:?}: {} vs {}", g.score, w.score);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn batch_checks_dimensions_and_handles_edges() {
        let mut index = FlatIndex::new(Metric::InnerProduct);
        assert!(index.search_batch(&[1.0, 2.0], 3, None).unwrap().is_empty());
        index.upsert("a", &[1.0, 0.0]).unwrap();
        index.upsert("b", &[0.0, 1.0]).unwrap();
        assert!(index.search_batch(&[1.0, 2.0, 3.0], 3, None).is_err());
        assert_eq!(index.search_batch(&[1.0, 0.0, 0.0, 1.0], 0, None).unwrap(), vec![Vec::<Scored>::new(); 2]);
        assert!(index.search_batch(&[], 3, None).unwrap().is_empty());
        let hits = index.search_batch(&[1.0, 0.0, 0.0, 1.0], 1, None).unwrap();
        assert_eq!(hits.iter().map(|h| h[0].id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn f16_top_k_matches_f32_exact_top_k() {
        let (dim, n) = (48, 1000);
        let mut next = crate::index::uniform(0xD1B54A32D192ED03);
        let data: Vec<(String, Vec<f32>)> = (0..n).map(|i| (format!("item-{i}"), (0..dim).map(|_| next()).collect())).collect();
        let (mut shared, mut total) = (0, 0);
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let mut exact = FlatIndex::new(metric);
            let mut half = FlatIndex::with_precision(metric, Precision::F16);
            for (id, v) in &data {
                exact.upsert(id, v).unwrap();
                half.upsert(id, v).unwrap();
            }
            for round in 0..20 {
                let q: Vec<f32> = (0..dim).map(|_| next()).collect();
                // Odd rounds filter to even-numbered items.
                let keep = |id: &str| round % 2 == 0 || id.trim_start_matches("item-").parse::<u32>().unwrap() % 2 == 0;
                let want = exact.search(&q, 10, Some(&keep)).unwrap();
                let got = half.search(&q, 10, Some(&keep)).unwrap();
                assert!(got.iter().all(|h| keep(&h.id)), "the filter holds");
                assert_eq!(got.len(), 10);
                shared += got.iter().filter(|g| want.iter().any(|w| w.id == g.id)).count();
                total += want.len();
                // Every f16 score is the f32 score up to f16 rounding: at most 2^-11 of each
                // stored value, so within 2^-11 * sum |q_i v_i| (+ |v|^2 for L2's norm term).
                let q_prepared = exact.prepare_query(&q);
                for hit in &got {
                    let v = exact.stored(&hit.id).unwrap();
                    let ip_bound: f32 = q_prepared.iter().zip(v.iter()).map(|(a, b)| (a * b).abs()).sum();
                    let bound = (if metric == Metric::L2 { 2.0 * (ip_bound + dot(&v, &v)) } else { ip_bound }) / 2048.0 + 1e-4;
                    let reference = exact.row_score(exact.row_of(&hit.id).unwrap(), &q_prepared, dot(&q_prepared, &q_prepared));
                    assert!((hit.score - reference).abs() <= bound, "{metric:?}: {} vs {reference} (bound {bound})", hit.score);
                }
                assert_eq!(half.search_batch(&q, 10, Some(&keep)).unwrap()[0].iter().map(|h| &h.id).collect::<Vec<_>>(), got.iter().map(|h| &h.id).collect::<Vec<_>>());
            }
        }
        let recall = shared as f32 / total as f32;
        assert!(recall >= 0.98, "f16 recall@10 against f32 exact search: {recall}");
    }

    #[test]
    fn f16_refuses_what_it_cannot_hold_and_keeps_cosine_rows_normalised() {
        let mut index = FlatIndex::with_precision(Metric::InnerProduct, Precision::F16);
        index.upsert("a", &[1.0, 2.0]).unwrap();
        let err = index.upsert("b", &[70_000.0, 0.0]).unwrap_err().to_string();
        assert!(err.contains("70000") && err.contains("--f32"), "{err}");
        assert_eq!(index.len(), 1, "the refused vector left nothing behind");
        // Cosine rows are normalised before rounding, so large inputs fit.
        let mut cosine = FlatIndex::with_precision(Metric::Cosine, Precision::F16);
        cosine.upsert("big", &[3e5, 4e5]).unwrap();
        let stored = cosine.stored("big").unwrap();
        assert!((stored[0] - 0.6).abs() < 1e-3 && (stored[1] - 0.8).abs() < 1e-3, "{stored:?}");
        // Replacing and removing move f16 rows like f32 rows.
        index.upsert("b", &[0.5, 0.5]).unwrap();
        index.upsert("c", &[-1.0, 0.25]).unwrap();
        index.upsert("a", &[0.0, 1.0]).unwrap();
        index.remove("b");
        let hits = index.search(&[0.0, 1.0], 5, None).unwrap();
        assert_eq!(hits.iter().map(|h| (h.id.as_str(), h.score)).collect::<Vec<_>>(), [("a", 1.0), ("c", 0.25)]);
    }

    /// `n` rows around `clusters` centres in [-1, 1)^dim, each centre's rows within `spread`.
    fn clustered(seed: u64, n: usize, dim: usize, clusters: usize, spread: f32) -> Vec<(String, Vec<f32>)> {
        let mut next = crate::index::uniform(seed);
        let centres: Vec<Vec<f32>> = (0..clusters).map(|_| (0..dim).map(|_| next()).collect()).collect();
        (0..n).map(|i| (format!("item-{i}"), centres[i % clusters].iter().map(|c| c + spread * next()).collect())).collect()
    }

    fn hit_ids(hits: &[Scored]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn int8_top_k_is_f32_exact_top_k_with_f32_scores() {
        // 3000 rows cross many test-sized scan chunks; close clusters make near ties.
        let (dim, n) = (48, 3000);
        let data = clustered(0x9E3779B97F4A7C15, n, dim, 30, 0.2);
        let mut next = crate::index::uniform(0xD1B54A32D192ED03);
        for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
            let mut exact = FlatIndex::new(metric);
            let mut int8 = FlatIndex::with_precision(metric, Precision::Int8);
            for (id, v) in &data {
                exact.upsert(id, v).unwrap();
                int8.upsert(id, v).unwrap();
            }
            let (mut shared, mut total) = (0, 0);
            for round in 0..40 {
                // Queries near a stored row, so the top-k sit in one tight cluster.
                let q: Vec<f32> = data[(round * 37) % n].1.iter().map(|x| x + 0.05 * next()).collect();
                let keep = |id: &str| round % 2 == 0 || id.trim_start_matches("item-").parse::<u32>().unwrap() % 2 == 0;
                for k in [1, 10, 50] {
                    let want = exact.search(&q, k, Some(&keep)).unwrap();
                    let got = int8.search(&q, k, Some(&keep)).unwrap();
                    assert_eq!(got.len(), k);
                    assert!(got.iter().all(|h| keep(&h.id)), "the filter holds");
                    shared += got.iter().filter(|g| want.iter().any(|w| w.id == g.id)).count();
                    total += k;
                    // Re-scored from the f32 rows by the f32 scan's own arithmetic: equal to the bit.
                    let (q_prepared, q_sq) = (exact.prepare_query(&q), dot(&exact.prepare_query(&q), &exact.prepare_query(&q)));
                    for hit in &got {
                        assert_eq!(hit.score, exact.row_score(exact.row_of(&hit.id).unwrap(), &q_prepared, q_sq), "{metric:?}");
                    }
                    if hit_ids(&got) == hit_ids(&want) {
                        assert_eq!(got, want, "{metric:?}");
                    }
                }
            }
            let recall = shared as f64 / total as f64;
            assert!(recall >= 0.99, "{metric:?}: int8 recall against f32 exact search: {recall}");
            // Batches read the f32 rows, as an f32 index's do.
            let queries: Vec<f32> = data[..5].iter().flat_map(|(_, v)| v.clone()).collect();
            let batch = int8.search_batch(&queries, 10, None).unwrap();
            assert_eq!(batch, exact.search_batch(&queries, 10, None).unwrap(), "{metric:?}");
        }
    }

    #[test]
    fn int8_handles_constant_dimensions_out_of_range_writes_deletes_and_any_k() {
        // Dimension 0 is the same in every row; dimension 1 decides the order.
        let mut index = FlatIndex::with_precision(Metric::L2, Precision::Int8);
        let mut exact = FlatIndex::new(Metric::L2);
        let rows: Vec<(String, Vec<f32>)> = (0..400).map(|i| (format!("r{i:03}"), vec![7.0, i as f32 / 400.0, (i % 5) as f32])).collect();
        index.reserve(rows.len());
        for (id, v) in &rows {
            index.upsert(id, v).unwrap();
            exact.upsert(id, v).unwrap();
        }
        let Rows::Int8(_, codes) = &index.data else { panic!("int8 rows") };
        assert!(codes.is_current(400), "a reserved load trains once, at its last row");
        assert_eq!(codes.range(0), (7.0, 7.0));
        assert!(codes.outside().is_none());
        assert!(codes.codes().iter().step_by(3).all(|&c| c == 0), "a constant dimension encodes as 0");
        let check = |index: &FlatIndex, exact: &FlatIndex, q: &[f32], k: usize| {
            assert_eq!(index.search(q, k, None).unwrap(), exact.search(q, k, None).unwrap(), "query {q:?}, k {k}");
        };
        check(&index, &exact, &[7.0, 0.5, 2.0], 10);
        // Out of the trained range, in the constant dimension and in the others: clamped codes,
        // exact scores, and the outliers found.
        for (id, v) in [("far", vec![-50.0, 30.0, 2.0]), ("r005", vec![7.5, 0.5, 9.0]), ("near", vec![7.0, 0.5001, 2.0])] {
            index.upsert(id, &v).unwrap();
            exact.upsert(id, &v).unwrap();
        }
        let Rows::Int8(_, codes) = &index.data else { panic!("int8 rows") };
        assert_eq!(codes.outside().map(|o| o.iter().filter(|o| **o).count()), Some(2), "`far` and the new `r005` are scored exactly");
        check(&index, &exact, &[7.0, 0.5, 2.0], 10);
        check(&index, &exact, &[-50.0, 30.0, 2.0], 1);
        check(&index, &exact, &[7.5, 0.5, 9.0], 3);
        let odd = |id: &str| id.ends_with(['1', '3', '5', '7', '9']);
        assert_eq!(index.search(&[7.5, 0.5, 9.0], 3, Some(&odd)).unwrap(), exact.search(&[7.5, 0.5, 9.0], 3, Some(&odd)).unwrap());
        let not_far = |id: &str| id != "far";
        assert_eq!(index.search(&[-50.0, 30.0, 2.0], 3, Some(&not_far)).unwrap(), exact.search(&[-50.0, 30.0, 2.0], 3, Some(&not_far)).unwrap());
        // Deletes move the last row's codes with its f32 row.
        for id in ["near", "r200", "r000", "missing", "r399"] {
            index.remove(id);
            exact.remove(id);
        }
        assert_eq!(index.len(), exact.len());
        for q in [[7.0, 0.5, 2.0], [7.0, 0.0, 0.0], [7.0, 1.0, 4.0]] {
            check(&index, &exact, &q, 10);
        }
        let Rows::Int8(v, codes) = &index.data else { panic!("int8 rows") };
        assert_eq!(codes.codes().len(), v.len(), "one code per value");
        // k past the rows: every row, exactly, with no room made for k.
        check(&index, &exact, &[7.0, 0.5, 2.0], index.len() + 5);
        check(&index, &exact, &[7.0, 0.5, 2.0], usize::MAX);
        assert!(index.search(&[7.0, 0.5, 2.0], 0, None).unwrap().is_empty());
    }

    #[test]
    fn int8_retrains_as_a_field_grows_and_on_demand() {
        let mut index = FlatIndex::with_precision(Metric::InnerProduct, Precision::Int8);
        index.upsert("a", &[0.0, 1.0]).unwrap();
        // The trained range of dimension 0 (to float rounding), and whether it covers every row.
        let trained = |index: &FlatIndex| match &index.data {
            Rows::Int8(_, codes) => {
                let (lo, hi) = codes.range(0);
                ((lo * 1000.0).round() / 1000.0, (hi * 1000.0).round() / 1000.0, codes.is_current(index.len()))
            }
            _ => unreachable!(),
        };
        assert_eq!(trained(&index), (0.0, 0.0, true), "the first row trains");
        index.upsert("b", &[4.0, 1.0]).unwrap();
        assert_eq!(trained(&index), (0.0, 4.0, true), "doubling the rows trains again");
        index.upsert("c", &[4.1, 1.0]).unwrap();
        assert_eq!(trained(&index), (0.0, 4.0, false), "a little past the range: clamped, kept until 4 rows");
        index.upsert("d", &[1.0, 1.0]).unwrap();
        assert_eq!(trained(&index), (0.0, 4.1, true));
        // Far outside the range: too many such rows (here, one) train again at once.
        index.upsert("e", &[9.0, 1.0]).unwrap();
        assert_eq!(trained(&index), (0.0, 9.0, true));
        assert_eq!(index.search(&[1.0, 0.0], 1, None).unwrap()[0].id, "e");
        // A reserve postpones training to the end of a bulk load, which `train` covers if short.
        index.reserve(1000);
        for i in 0..10 {
            index.upsert(&format!("bulk-{i}"), &[-(i as f32), 0.0]).unwrap();
        }
        assert_eq!(trained(&index), (0.0, 9.0, false));
        index.train();
        assert_eq!(trained(&index), (-9.0, 9.0, true));
    }

    #[test]
    fn reserved_indexes_hold_no_slack_and_grown_ones_little() {
        let (dim, n) = (24, 5000);
        let mut next = crate::index::uniform(7);
        let vectors: Vec<Vec<f32>> = (0..n).map(|_| (0..dim).map(|_| next()).collect()).collect();
        for precision in [Precision::F32, Precision::F16, Precision::Int8] {
            let mut reserved = FlatIndex::with_precision(Metric::L2, precision);
            reserved.reserve(n);
            let mut grown = FlatIndex::with_precision(Metric::L2, precision);
            for (i, v) in vectors.iter().enumerate() {
                reserved.upsert(&i.to_string(), v).unwrap();
                grown.upsert(&i.to_string(), v).unwrap();
            }
            // int8: f32 rows, their codes and a mark per row, and each dimension's min, step and
            // reciprocal step.
            let row_bytes = match precision {
                Precision::F32 => 4 * dim,
                Precision::F16 => 2 * dim,
                Precision::Int8 => 5 * dim + 1,
            };
            let fixed = if precision == Precision::Int8 { 3 * dim * 4 } else { 0 };
            assert_eq!(reserved.data.bytes() - fixed, n * row_bytes, "{precision:?}");
            assert_eq!(reserved.ids.capacity(), n);
            assert!(grown.data.bytes() - fixed <= n * row_bytes * 9 / 8 + row_bytes, "{precision:?}: {} bytes", grown.data.bytes());
            grown.shrink_to_fit();
            assert_eq!(grown.data.bytes() - fixed, n * row_bytes);
            assert_eq!(grown.search(&vectors[17], 1, None).unwrap()[0].id, "17");
        }
    }
}
