//! Inner-product and squared-distance kernels, picked at run time from what the CPU offers (std caches the checks).

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Inner product over the shorter of the two slices: AVX2 and FMA where the CPU has them, else
/// AVX through the compiler's vectorisation, else portable code.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { x86::dot_fma(a, b) };
        }
        if is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX, checked just above.
            return unsafe { x86::dot_avx(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Squared Euclidean distance over the shorter of the two slices: AVX2 and FMA where the CPU
/// has them, else portable code.
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { x86::l2sq_fma(a, b) };
    }
    l2sq_portable(a, b)
}

/// `dot` of one query with four vectors, over the shortest of the five slices: each query chunk
/// is loaded once and the four vectors' loads are in flight together (the HNSW search measures a
/// node's neighbours four at a time).
#[inline]
pub fn dot4(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { x86::dot4_fma(q, v) };
    }
    v.map(|v| dot(q, v))
}

/// `l2sq` of one query with four vectors, as `dot4`.
#[inline]
pub fn l2sq4(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { x86::l2sq4_fma(q, v) };
    }
    v.map(|v| l2sq(q, v))
}

/// As `dot_portable`, with 32 independent accumulators.
#[inline(always)]
fn l2sq_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Inner product of an f32 query with half-precision values, over the shorter of the two: F16C
/// converts 8 values per instruction where the CPU has it (with AVX2 and FMA).
#[inline]
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU has AVX2, FMA and F16C, checked just above.
        return unsafe { x86::dot_f16c(a, b) };
    }
    dot_f16_portable(a, b)
}

/// Converts a stack buffer's worth at a time, then takes the f32 inner product.
fn dot_f16_portable(a: &[f32], b: &[f16]) -> f32 {
    let mut buf = [0f32; 64];
    a.chunks(64)
        .zip(b.chunks(64))
        .map(|(a, b)| {
            let n = a.len().min(b.len());
            b[..n].convert_to_f32_slice(&mut buf[..n]);
            dot(&a[..n], &buf[..n])
        })
        .sum()
}

/// The largest query magnitude `dot_u8_i8` takes. With codes up to 255 a pair of products stays
/// within i16 (2 * 255 * 63 = 32130), which AVX2's pairwise multiply-add would saturate beyond.
pub const I8_QUERY_MAX: i8 = 63;

/// Values per call of the kernels below: their i32 lanes then cannot overflow
/// (65536 * 255 * 63 < 2^31), however long the vectors.
const U8_BLOCK: usize = 1 << 16;

/// Integer inner product of int8 codes (0..=255) with a query quantized to within
/// ±[`I8_QUERY_MAX`], over the shorter of the two: AVX2 multiplies 32 pairs per instruction
/// where the CPU has it. Exact, so every kernel returns the same sum.
#[inline]
pub fn dot_u8_i8(codes: &[u8], query: &[i8]) -> i64 {
    if codes.len().min(query.len()) <= U8_BLOCK {
        return dot_u8_i8_block(codes, query) as i64;
    }
    codes.chunks(U8_BLOCK).zip(query.chunks(U8_BLOCK)).map(|(c, q)| dot_u8_i8_block(c, q) as i64).sum()
}

#[inline]
fn dot_u8_i8_block(codes: &[u8], query: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { x86::dot_u8_i8_avx2(codes, query) };
    }
    dot_u8_i8_portable(codes, query)
}

/// As `dot_portable`, in i32: the compiler turns it into widening multiply-adds.
#[inline(always)]
fn dot_u8_i8_portable(codes: &[u8], query: &[i8]) -> i32 {
    let mut acc = [0i32; 32];
    let (ca, cb) = (codes.chunks_exact(32), query.chunks_exact(32));
    let tail: i32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x as i32 * y as i32).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] as i32 * y[i] as i32;
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// Written with 32 independent accumulators so the compiler vectorises it over several
/// registers and the additions need not wait on each other.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx")]
    pub fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
        super::dot_portable(a, b)
    }

    /// Four 8-lane accumulators, so four fused multiply-adds are in flight at once.
    #[target_feature(enable = "avx2,fma")]
    pub fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats starting at i + offset, and i + offset + 8 <= n, so
        // all reads lie within both slices.
        unsafe {
            while i + 32 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
                i += 8;
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
        hsum(sum) + tail
    }

    /// `dot_fma` against four vectors, one accumulator each, over the shortest of the five.
    #[target_feature(enable = "avx2,fma")]
    pub fn dot4_fma(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
        let n = v.iter().fold(q.len(), |n, v| n.min(v.len()));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats starting at i, and i + 8 <= n, within all five slices.
        unsafe {
            while i + 8 <= n {
                let x = _mm256_loadu_ps(q.as_ptr().add(i));
                for (acc, v) in acc.iter_mut().zip(&v) {
                    *acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(v.as_ptr().add(i)), *acc);
                }
                i += 8;
            }
        }
        let mut out = [0f32; 4];
        for ((out, acc), v) in out.iter_mut().zip(acc).zip(&v) {
            *out = hsum(acc) + q[i..n].iter().zip(&v[i..n]).map(|(x, y)| x * y).sum::<f32>();
        }
        out
    }

    /// `l2sq_fma` against four vectors, as `dot4_fma`.
    #[target_feature(enable = "avx2,fma")]
    pub fn l2sq4_fma(q: &[f32], v: [&[f32]; 4]) -> [f32; 4] {
        let n = v.iter().fold(q.len(), |n, v| n.min(v.len()));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: as in `dot4_fma`: each load reads 8 floats starting at i, with i + 8 <= n.
        unsafe {
            while i + 8 <= n {
                let x = _mm256_loadu_ps(q.as_ptr().add(i));
                for (acc, v) in acc.iter_mut().zip(&v) {
                    let d = _mm256_sub_ps(x, _mm256_loadu_ps(v.as_ptr().add(i)));
                    *acc = _mm256_fmadd_ps(d, d, *acc);
                }
                i += 8;
            }
        }
        let mut out = [0f32; 4];
        for ((out, acc), v) in out.iter_mut().zip(acc).zip(&v) {
            *out = hsum(acc) + q[i..n].iter().zip(&v[i..n]).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
        }
        out
    }

    /// `dot_fma` on the differences: the sum of their squares.
    #[target_feature(enable = "avx2,fma")]
    pub fn l2sq_fma(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: as in `dot_fma`: each load reads 8 floats starting at i + offset, with
        // i + offset + 8 <= n, within both slices.
        unsafe {
            while i + 32 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)));
                    *acc = _mm256_fmadd_ps(d, d, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
                i += 8;
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| (x - y) * (x - y)).sum();
        hsum(sum) + tail
    }

    /// `dot_fma` with 8 half-precision values widened by one F16C instruction per load.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_f16c(a: &[f32], b: &[super::f16]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: as in `dot_fma`: each load reads 8 values (floats, or 16-bit halves) starting at
        // i + offset, with i + offset + 8 <= n, within both slices.
        unsafe {
            while i + 32 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let half = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8 * j).cast()));
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), half, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let half = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast()));
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), half, acc[0]);
                i += 8;
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y.to_f32()).sum();
        hsum(sum) + tail
    }

    /// 32 code-query pairs per step: `maddubs` multiplies unsigned codes by signed query values
    /// and adds neighbours into i16 (no saturation, as the query is within ±63), and `madd` with
    /// ones widens those sums into i32 lanes. Two accumulators keep two steps in flight.
    #[target_feature(enable = "avx2")]
    pub fn dot_u8_i8_avx2(codes: &[u8], query: &[i8]) -> i32 {
        let n = codes.len().min(query.len());
        let (pa, pb) = (codes.as_ptr(), query.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 2];
        let mut i = 0;
        // SAFETY: every load reads 32 bytes starting at i + offset, and i + offset + 32 <= n, so
        // all reads lie within both slices.
        unsafe {
            while i + 64 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let pairs = _mm256_maddubs_epi16(_mm256_loadu_si256(pa.add(i + 32 * j).cast()), _mm256_loadu_si256(pb.add(i + 32 * j).cast()));
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
                }
                i += 64;
            }
            while i + 32 <= n {
                let pairs = _mm256_maddubs_epi16(_mm256_loadu_si256(pa.add(i).cast()), _mm256_loadu_si256(pb.add(i).cast()));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(pairs, ones));
                i += 32;
            }
        }
        let sum = _mm256_add_epi32(acc[0], acc[1]);
        let s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        let tail: i32 = codes[i..n].iter().zip(&query[i..n]).map(|(&x, &y)| x as i32 * y as i32).sum();
        _mm_cvtsi128_si32(s) + tail
    }

    /// The sum of a register's 8 lanes.
    #[target_feature(enable = "avx")]
    pub fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_vector_kernels_equal_four_single_ones() {
        let mut next = crate::index::uniform(0x9E3779B97F4A7C15);
        // Lengths around the 8-float step, and one vector shorter than the rest (all are cut to it).
        for (len_q, len_v) in [(0, 0), (7, 7), (8, 8), (33, 33), (128, 128), (40, 37)] {
            let q: Vec<f32> = (0..len_q).map(|_| next()).collect();
            let rows: Vec<Vec<f32>> = (0..4).map(|i| (0..if i == 2 { len_v } else { len_q }).map(|_| next()).collect()).collect();
            let v = [&rows[0][..], &rows[1], &rows[2], &rows[3]];
            let n = len_q.min(len_v);
            for (i, (d, l)) in dot4(&q, v).into_iter().zip(l2sq4(&q, v)).enumerate() {
                assert!((d - dot(&q[..n], &v[i][..n])).abs() < 1e-4, "dot4, lengths {len_q}/{len_v}, vector {i}");
                assert!((l - l2sq(&q[..n], &v[i][..n])).abs() < 1e-3, "l2sq4, lengths {len_q}/{len_v}, vector {i}");
            }
        }
    }

    #[test]
    fn every_kernel_equals_a_plain_sum() {
        let mut next = crate::index::uniform(0x2545F4914F6CDD1D);
        // Lengths around the 8- and 32-float steps, and slices of unequal length.
        for (len_a, len_b) in [(0, 0), (1, 1), (7, 7), (8, 8), (31, 31), (32, 32), (33, 33), (75, 75), (128, 128), (513, 513), (40, 37)] {
            let a: Vec<f32> = (0..len_a).map(|_| next()).collect();
            let b: Vec<f32> = (0..len_b).map(|_| next()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let mut got = vec![dot(&a, &b), dot_portable(&a, &b)];
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx") {
                    got.push(unsafe { x86::dot_avx(&a, &b) });
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    got.push(unsafe { x86::dot_fma(&a, &b) });
                }
            }
            for g in got {
                assert!((g as f64 - want).abs() < 1e-4, "lengths {len_a}/{len_b}: {g} vs {want}");
            }
            let want: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
            let mut got = vec![l2sq(&a, &b), l2sq_portable(&a, &b)];
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                got.push(unsafe { x86::l2sq_fma(&a, &b) });
            }
            for g in got {
                assert!((g as f64 - want).abs() < 1e-3, "l2sq, lengths {len_a}/{len_b}: {g} vs {want}");
            }
            // Half precision: the reference takes the same rounded values.
            let halves: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let want: f64 = a.iter().zip(&halves).map(|(x, y)| *x as f64 * y.to_f64()).sum();
            let mut got = vec![dot_f16(&a, &halves), dot_f16_portable(&a, &halves)];
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                got.push(unsafe { x86::dot_f16c(&a, &halves) });
            }
            for g in got {
                assert!((g as f64 - want).abs() < 1e-4, "f16, lengths {len_a}/{len_b}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn integer_kernels_equal_a_plain_sum_at_the_extremes() {
        let mut state = 0x9E3779B97F4A7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let q_max = I8_QUERY_MAX as u64;
        for (len_a, len_b) in [(0, 0), (1, 1), (31, 31), (32, 32), (33, 33), (63, 63), (64, 64), (65, 65), (512, 512), (1000, 997)] {
            // Random values, then all at the extremes: 255 by +-63 is where saturation would show.
            for extreme in [false, true] {
                let codes: Vec<u8> = (0..len_a).map(|_| if extreme { 255 } else { next() as u8 }).collect();
                let query: Vec<i8> = (0..len_b).map(|i| if extreme { if i % 3 == 0 { -I8_QUERY_MAX } else { I8_QUERY_MAX } } else { (next() % (2 * q_max + 1)) as i8 - I8_QUERY_MAX }).collect();
                let want: i64 = codes.iter().zip(&query).map(|(&x, &y)| x as i64 * y as i64).sum();
                let mut got = vec![dot_u8_i8(&codes, &query), dot_u8_i8_portable(&codes, &query) as i64];
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2") {
                    got.push(unsafe { x86::dot_u8_i8_avx2(&codes, &query) } as i64);
                }
                assert!(got.iter().all(|&g| g == want), "lengths {len_a}/{len_b}, extreme {extreme}: {got:?} vs {want}");
            }
        }
        // Past one block the sum is taken in i64: 200k dims at the extremes overflow i32.
        let (codes, query) = (vec![255u8; 200_000], vec![I8_QUERY_MAX; 200_000]);
        assert_eq!(dot_u8_i8(&codes, &query), 200_000 * 255 * 63);
    }
}
