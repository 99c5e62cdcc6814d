//! The int8 copy of a vector field (the `int8` precision): per dimension, values from the trained
//! minimum to maximum map linearly onto codes 0..=255, as faiss's `QT_8bit` does. A scan scores
//! the codes against a query quantized to small integers, so most of its work is a quarter of
//! f32's memory traffic in integer multiply-adds; the best candidates are then re-scored exactly
//! in f32 (see `FlatIndex::search`), so quantization can only cost recall, never exactness.

use super::simd::{I8_QUERY_MAX, dot_u8_i8};
use rayon::prelude::*;

/// Candidates re-scored in f32 per hit asked for: the int8 scores' errors are far smaller than
/// the gaps between the k-th and the 4k-th best score on any data the tests and bench hold.
pub const OVERSAMPLE: usize = 4;
/// At least this many extra candidates, so a small k still has a margin.
const MIN_EXTRA: usize = 32;
/// At most this many extra candidates, so a large k does not turn into a second f32 scan.
const MAX_EXTRA: usize = 4096;
/// Rows per task while training.
const TRAIN_ROWS: usize = 4096;
/// Steps beyond either end of the trained range (1/16 of it) that a value may lie and still be
/// encoded as that end; a row with a value further out is scored exactly by every search instead.
const SLACK: f32 = 16.0;
/// Train again once more than one row in this many lies outside the range, and the writes since
/// training reach one in `WRITES_SHARE` of the rows trained on: a stream that keeps leaving the
/// range then costs at most that many re-encodes per write.
const OUTSIDE_SHARE: usize = 64;
const WRITES_SHARE: usize = 8;

/// How many candidates to keep from the int8 scan for a top-`k`.
pub fn candidates(k: usize) -> usize {
    k.saturating_add((k.saturating_mul(OVERSAMPLE - 1)).clamp(MIN_EXTRA, MAX_EXTRA))
}

/// Codes row-major, one byte per value, at the same offsets as the f32 rows they encode.
#[derive(Debug)]
pub(super) struct Sq8 {
    /// Per dimension: the smallest trained value, and the step between codes ((max - min) / 255;
    /// 0 for a dimension that held one value only). Empty until trained.
    min: Vec<f32>,
    step: Vec<f32>,
    /// 1 / step, or 0 where step is 0, so encoding multiplies.
    inv_step: Vec<f32>,
    codes: Vec<u8>,
    /// Rows with a value beyond the trained range by more than `SLACK` steps, whose codes would
    /// misplace them: searches score them exactly instead, until training covers them.
    outside: Vec<bool>,
    outside_rows: usize,
    /// Rows the field held when last trained, and rows written since.
    trained_rows: usize,
    writes: usize,
    /// No training before the field holds this many rows (a bulk load is under way).
    hold_until: usize,
    /// Train again once the field holds this many rows: doubling keeps training's cost linear in
    /// the rows written, and a field filled write by write gets a range that covers its data.
    train_at: usize,
}

/// A query as the codes are scored: `offset + scale * (values . codes)` approximates its inner
/// product with a row.
pub(super) struct QuantizedQuery {
    values: Vec<i8>,
    scale: f32,
    offset: f32,
}

impl Sq8 {
    pub fn new() -> Self {
        Sq8 { min: Vec::new(), step: Vec::new(), inv_step: Vec::new(), codes: Vec::new(), outside: Vec::new(), outside_rows: 0, trained_rows: 0, writes: 0, hold_until: 0, train_at: 1 }
    }

    pub fn is_trained(&self) -> bool {
        !self.min.is_empty()
    }

    /// Whether the codes are out of date for a field of `rows` rows: it doubled since training,
    /// or too many of its rows lie outside the trained range.
    pub fn wants_training(&self, rows: usize) -> bool {
        let outside = self.outside_rows.saturating_mul(OUTSIDE_SHARE) > rows && self.writes.saturating_mul(WRITES_SHARE) >= self.trained_rows;
        rows > 0 && rows >= self.hold_until && (rows >= self.train_at || outside)
    }

    /// Per row, whether it lies outside the trained range; `None` when no row does.
    pub fn outside(&self) -> Option<&[bool]> {
        (self.outside_rows > 0).then_some(&self.outside)
    }

    /// Put off automatic training until `rows` rows are held: a bulk load of known size trains
    /// once, on all of its data.
    pub fn train_when(&mut self, rows: usize) {
        self.hold_until = rows;
        self.train_at = self.train_at.max(rows);
    }

    /// Whether the codes were trained on exactly the `rows` rows held (no bulk load pending).
    pub fn is_current(&self, rows: usize) -> bool {
        self.is_trained() && self.trained_rows == rows
    }

    pub fn bytes(&self) -> usize {
        self.codes.capacity() + self.outside.capacity() + (self.min.capacity() + self.step.capacity() + self.inv_step.capacity()) * size_of::<f32>()
    }

    /// Room for `values` more codes, once training has fixed the dimension (before, training
    /// makes the room).
    pub fn reserve_exact(&mut self, values: usize) {
        if self.is_trained() {
            self.codes.reserve_exact(values);
            self.outside.reserve_exact(values / self.dim());
        }
    }

    pub fn shrink_to_fit(&mut self) {
        self.codes.shrink_to_fit();
        self.outside.shrink_to_fit();
    }

    /// Learn each dimension's range from `data` (`dim`-wide rows) and encode every row.
    pub fn train(&mut self, data: &[f32], dim: usize) {
        let rows = data.len() / dim;
        let (lo, hi) = data
            .par_chunks(TRAIN_ROWS * dim)
            .map(|block| {
                let (mut lo, mut hi) = (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
                for row in block.chunks_exact(dim) {
                    // Comparisons rather than f32::min, which vectorise (values are never NaN).
                    for ((lo, hi), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                        *lo = if x < *lo { x } else { *lo };
                        *hi = if x > *hi { x } else { *hi };
                    }
                }
                (lo, hi)
            })
            .reduce(
                || (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]),
                |(mut lo, mut hi), (lo2, hi2)| {
                    lo.iter_mut().zip(lo2).for_each(|(a, b)| *a = a.min(b));
                    hi.iter_mut().zip(hi2).for_each(|(a, b)| *a = a.max(b));
                    (lo, hi)
                },
            );
        // Divided before subtracting, so a range near f32's limits does not overflow to infinity.
        self.step = lo.iter().zip(&hi).map(|(&lo, &hi)| hi / 255.0 - lo / 255.0).collect();
        // A range too small to invert (a constant or nearly constant dimension) encodes as 0:
        // the minimum stands for every value, and re-scoring restores the difference.
        self.inv_step = self.step.iter().map(|&s| if s > 0.0 && (1.0 / s).is_finite() { 1.0 / s } else { 0.0 }).collect();
        self.step.iter_mut().zip(&self.inv_step).for_each(|(s, &inv)| *s = if inv == 0.0 { 0.0 } else { *s });
        self.min = lo;
        self.codes.clear();
        // Exactly the rows held, as `grow` keeps the f32 rows: no doubling.
        self.codes.reserve_exact(data.len());
        self.codes.resize(data.len(), 0);
        self.outside.clear();
        self.outside.reserve_exact(rows);
        self.outside.resize(rows, false);
        self.outside_rows = 0;
        let mut codes = std::mem::take(&mut self.codes);
        let this = &*self;
        // Trained on these rows, none lies outside the range.
        codes.par_chunks_mut(TRAIN_ROWS * dim).zip(data.par_chunks(TRAIN_ROWS * dim)).for_each(|(out, rows)| {
            for (out, row) in out.chunks_exact_mut(dim).zip(rows.chunks_exact(dim)) {
                this.encode(row, out);
            }
        });
        self.codes = codes;
        self.trained_rows = rows;
        self.writes = 0;
        self.hold_until = 0;
        self.train_at = rows.saturating_mul(2);
    }

    /// Values outside the trained range take the nearest end (re-scoring is exact regardless).
    /// Returns whether any lay more than `SLACK` steps beyond it.
    fn encode(&self, row: &[f32], out: &mut [u8]) -> bool {
        let mut outside = false;
        for (((out, &x), &min), &inv) in out.iter_mut().zip(row).zip(&self.min).zip(&self.inv_step) {
            // Scaled before subtracting, so values near f32's limits do not overflow.
            let at = x * inv - min * inv;
            // A constant dimension has no steps: any other value is outside.
            outside |= !(-SLACK..=255.0 + SLACK).contains(&at) || (inv == 0.0 && x != min);
            // Rounds to nearest (the clamped value is never negative) and vectorises, unlike
            // f32::round; `as` would map a NaN to 0.
            *out = (at.clamp(0.0, 255.0) + 0.5) as u8;
        }
        outside
    }

    fn dim(&self) -> usize {
        self.min.len()
    }

    fn mark(&mut self, row: usize, outside: bool) {
        if self.outside[row] != outside {
            self.outside[row] = outside;
            if outside { self.outside_rows += 1 } else { self.outside_rows -= 1 }
        }
    }

    /// Append the codes of a row (nothing until trained: training encodes every row).
    pub fn push(&mut self, row: &[f32]) {
        if self.is_trained() {
            super::flat::grow(&mut self.codes, row.len());
            let start = self.codes.len();
            self.codes.resize(start + row.len(), 0);
            let mut codes = std::mem::take(&mut self.codes);
            let outside = self.encode(row, &mut codes[start..]);
            self.codes = codes;
            super::flat::grow(&mut self.outside, 1);
            self.outside.push(false);
            self.writes += 1;
            self.mark(start / row.len(), outside);
        }
    }

    pub fn set(&mut self, at: std::ops::Range<usize>, row: &[f32]) {
        if self.is_trained() {
            let mut codes = std::mem::take(&mut self.codes);
            let outside = self.encode(row, &mut codes[at.clone()]);
            self.codes = codes;
            self.writes += 1;
            self.mark(at.start / self.dim(), outside);
        }
    }

    pub fn copy_within(&mut self, from: std::ops::Range<usize>, to: usize) {
        if self.is_trained() {
            let (dim, moved) = (self.dim(), self.outside[from.start / self.dim()]);
            self.codes.copy_within(from, to);
            self.mark(to / dim, moved);
        }
    }

    pub fn truncate(&mut self, len: usize) {
        if self.is_trained() {
            self.codes.truncate(len);
            for row in len / self.dim()..self.outside.len() {
                self.mark(row, false);
            }
            self.outside.truncate(len / self.dim());
        }
    }

    /// `q . x` for a row `x` as decoded, is `sum q_d min_d + sum (q_d step_d) code_d`: the first
    /// term is the same for every row, the weights `q_d step_d` are rounded to integers within
    /// ±I8_QUERY_MAX, so the second is one integer inner product per row.
    pub fn query(&self, query: &[f32]) -> QuantizedQuery {
        let weights: Vec<f32> = query.iter().zip(&self.step).map(|(q, s)| q * s).collect();
        let largest = weights.iter().fold(0f32, |m, w| m.max(w.abs()));
        let scale = largest / I8_QUERY_MAX as f32;
        let values = if scale > 0.0 && scale.is_finite() {
            weights.iter().map(|w| (w / scale).round().clamp(-(I8_QUERY_MAX as f32), I8_QUERY_MAX as f32) as i8).collect()
        } else {
            vec![0; weights.len()]
        };
        let offset = query.iter().zip(&self.min).map(|(&q, &m)| q as f64 * m as f64).sum::<f64>() as f32;
        QuantizedQuery { values, scale: if scale.is_finite() { scale } else { 0.0 }, offset }
    }

    /// The approximate inner product of `query` with the row of codes at `at`.
    #[inline]
    pub fn inner_product(&self, query: &QuantizedQuery, at: std::ops::Range<usize>) -> f32 {
        query.offset + query.scale * dot_u8_i8(&self.codes[at], &query.values) as f32
    }

    #[cfg(test)]
    pub fn range(&self, dim: usize) -> (f32, f32) {
        (self.min[dim], self.min[dim] + self.step[dim] * 255.0)
    }

    #[cfg(test)]
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_cover_the_trained_range_clamp_outside_it_and_constant_dimensions_encode_as_zero() {
        // Dimension 0 runs from -1 to 1, dimension 1 is constant, dimension 2 spans f32's extremes.
        let half = f32::MAX / 2.0;
        let data = [-1.0, 5.0, -f32::MAX, 1.0, 5.0, f32::MAX, 0.5, 5.0, half];
        let mut sq = Sq8::new();
        sq.train(&data, 3);
        assert_eq!(sq.codes(), [0, 0, 0, 255, 0, 255, 191, 0, 191]);
        assert_eq!(sq.range(0), (-1.0, 1.0));
        assert_eq!(sq.step[1], 0.0, "a constant dimension has no step");
        assert!(sq.outside().is_none());
        sq.push(&[3.0, 7.0, half]);
        sq.push(&[-3.0, -7.0, half]);
        assert_eq!(&sq.codes()[9..], [255, 0, 191, 0, 0, 191], "values outside the range take its ends");
        assert_eq!(sq.outside(), Some(&[false, false, false, true, true][..]));
        // Slightly past an end is not outside; a constant dimension has no slack.
        sq.push(&[1.05, 5.0, 0.0]);
        sq.push(&[0.0, 5.0001, 0.0]);
        assert_eq!(sq.outside().unwrap()[5..], [false, true]);
        sq.set(3 * 3..3 * 4, &[0.0, 5.0, 0.0]);
        assert_eq!(sq.outside().unwrap()[3..], [false, true, false, true], "a rewrite inside the range clears the mark");
        // As a delete of row 3 does: the last row moves into its place.
        sq.copy_within(3 * 6..3 * 7, 3 * 3);
        sq.truncate(3 * 6);
        assert_eq!(sq.outside(), Some(&[false, false, false, true, true, false][..]), "marks move with the codes");
        sq.truncate(3 * 3);
        assert_eq!(sq.outside(), None);
        assert_eq!(sq.codes().len(), 9);
        // The estimate of q . x decodes codes as min + step * code.
        let q = sq.query(&[1.0, 2.0, 0.0]);
        let ip = sq.inner_product(&q, 3..6);
        assert!((ip - (1.0 + 10.0)).abs() < 1e-2, "{ip}");
    }

    #[test]
    fn candidates_oversample_within_bounds() {
        assert_eq!(candidates(1), 1 + MIN_EXTRA);
        assert_eq!(candidates(10), 10 + MIN_EXTRA);
        assert_eq!(candidates(100), 400);
        assert_eq!(candidates(1_000_000), 1_000_000 + MAX_EXTRA);
        assert_eq!(candidates(usize::MAX), usize::MAX);
    }
}
