//! Small, dependency-free building blocks that retrieval strategies keep needing.

use crate::Hit;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// Total order on scores that puts NaN last, so a bad score never outranks a real one.
fn by_score_desc(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

struct MinByScore(Hit);

impl PartialEq for MinByScore {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for MinByScore {}
impl PartialOrd for MinByScore {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MinByScore {
    // The heap's top is the worst kept hit: lowest score, then the larger id.
    fn cmp(&self, other: &Self) -> Ordering {
        by_score_desc(self.0.score, other.0.score).then_with(|| self.0.id.cmp(&other.0.id))
    }
}

/// The `k` best hits, best first; ties broken by id so results are deterministic.
/// Runs in O(n log k), and never reserves room for more hits than it is given: any `k` is safe,
/// `usize::MAX` included.
pub fn top_k(hits: impl IntoIterator<Item = Hit>, k: usize) -> Vec<Hit> {
    if k == 0 {
        return Vec::new();
    }
    let hits = hits.into_iter();
    let mut heap = BinaryHeap::with_capacity(hits.size_hint().0.min(k));
    for hit in hits {
        if heap.len() < k {
            heap.push(MinByScore(hit));
        } else if let Some(mut worst) = heap.peek_mut() {
            // Replace the worst kept hit when the new one ranks before it.
            let candidate = MinByScore(hit);
            if candidate < *worst {
                *worst = candidate;
            }
        }
    }
    let mut out: Vec<Hit> = heap.into_vec().into_iter().map(|h| h.0).collect();
    sort_hits(&mut out);
    out
}

/// Sort hits best first (NaN scores last), ties by id.
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| by_score_desc(a.score, b.score).then_with(|| a.id.cmp(&b.id)));
}

/// Rescale scores to [0, 1]. All-equal scores become 1.
pub fn normalize_min_max(hits: &mut [Hit]) {
    let (lo, hi) = hits
        .iter()
        .map(|h| h.score)
        .filter(|s| s.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| (lo.min(s), hi.max(s)));
    for hit in hits.iter_mut() {
        hit.score = if hi > lo { (hit.score - lo) / (hi - lo) } else { 1.0 };
    }
}

/// Standardise scores to zero mean and unit variance. All-equal scores become 0.
pub fn normalize_z(hits: &mut [Hit]) {
    if hits.is_empty() {
        return;
    }
    let n = hits.len() as f32;
    let mean = hits.iter().map(|h| h.score).sum::<f32>() / n;
    let var = hits.iter().map(|h| (h.score - mean).powi(2)).sum::<f32>() / n;
    let std = var.sqrt();
    for hit in hits.iter_mut() {
        hit.score = if std > 0.0 { (hit.score - mean) / std } else { 0.0 };
    }
}

/// Reciprocal-rank fusion: each list adds `1 / (c + rank)` (rank from 1) to an id's score.
/// `c = 60` is the value from Cormack et al. Returns the fused hits best first.
///
/// Equal fused scores are ordered by the lists, never by id: the hit ranked higher in the first
/// list goes first (a hit a list lacks ranks after every hit it holds), then the second list
/// decides, and so on. Pass the list you trust most first.
pub fn reciprocal_rank_fusion(lists: &[Vec<Hit>], c: f32) -> Vec<Hit> {
    // Per id: the fused score and its rank in each list (usize::MAX where absent).
    let mut fused: HashMap<&str, (f32, Vec<usize>)> = HashMap::new();
    for (l, list) in lists.iter().enumerate() {
        for (rank, hit) in list.iter().enumerate() {
            let entry = fused.entry(hit.id.as_str()).or_insert_with(|| (0.0, vec![usize::MAX; lists.len()]));
            entry.0 += 1.0 / (c + rank as f32 + 1.0);
            entry.1[l] = entry.1[l].min(rank);
        }
    }
    let mut out: Vec<(&str, (f32, Vec<usize>))> = fused.into_iter().collect();
    out.sort_by(|(a_id, (a, a_ranks)), (b_id, (b, b_ranks))| {
        by_score_desc(*a, *b).then_with(|| a_ranks.cmp(b_ranks)).then_with(|| a_id.cmp(b_id))
    });
    out.into_iter().map(|(id, (score, _))| Hit::new(id, score)).collect()
}

/// One finished or running beam: its token sequence and summed log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Beam {
    /// The tokens chosen, first step first.
    pub tokens: Vec<u32>,
    /// The sum of their log-probabilities.
    pub logprob: f32,
}

/// Beam search over `steps` tokens.
///
/// `step` receives the current prefixes and returns, for each, the candidate next tokens with
/// their log-probabilities (for constrained decoding, only the allowed ones). A prefix with no
/// candidates is dropped. Returns up to `width` beams, best first.
pub fn beam_search<E>(
    width: usize,
    steps: usize,
    mut step: impl FnMut(&[Vec<u32>]) -> Result<Vec<Vec<(u32, f32)>>, E>,
) -> Result<Vec<Beam>, E> {
    let mut beams = vec![Beam { tokens: Vec::new(), logprob: 0.0 }];
    for _ in 0..steps {
        if beams.is_empty() || width == 0 {
            break;
        }
        let prefixes: Vec<Vec<u32>> = beams.iter().map(|b| b.tokens.clone()).collect();
        let candidates = step(&prefixes)?;
        let mut next: Vec<Beam> = Vec::new();
        for (beam, options) in beams.iter().zip(candidates) {
            for (token, logprob) in options {
                let mut tokens = beam.tokens.clone();
                tokens.push(token);
                next.push(Beam { tokens, logprob: beam.logprob + logprob });
            }
        }
        next.sort_by(|a, b| by_score_desc(a.logprob, b.logprob).then_with(|| a.tokens.cmp(&b.tokens)));
        next.truncate(width);
        beams = next;
    }
    Ok(beams)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, score: f32) -> Hit {
        Hit::new(id, score)
    }
    fn ids(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn top_k_matches_full_sort_and_breaks_ties_by_id() {
        let hits: Vec<Hit> = (0..100).map(|i| hit(&format!("{i:03}"), ((i * 37) % 11) as f32)).collect();
        let mut sorted = hits.clone();
        sort_hits(&mut sorted);
        assert_eq!(top_k(hits, 7), sorted[..7].to_vec());
        assert_eq!(ids(&top_k(vec![hit("b", 1.0), hit("a", 1.0)], 1)), ["a"]);
    }

    #[test]
    fn top_k_ranks_nan_last() {
        let out = top_k(vec![hit("nan", f32::NAN), hit("low", -5.0), hit("high", 2.0)], 3);
        assert_eq!(ids(&out), ["high", "low", "nan"]);
        assert!(top_k(vec![hit("x", 1.0)], 0).is_empty());
    }

    #[test]
    fn min_max_and_z_normalisation() {
        let mut hits = vec![hit("a", 2.0), hit("b", 4.0), hit("c", 6.0)];
        normalize_min_max(&mut hits);
        assert_eq!(hits.iter().map(|h| h.score).collect::<Vec<_>>(), [0.0, 0.5, 1.0]);
        let mut hits = vec![hit("a", 2.0), hit("b", 4.0), hit("c", 6.0)];
        normalize_z(&mut hits);
        let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
        assert!((scores[0] + 1.2247449).abs() < 1e-5 && scores[1].abs() < 1e-6, "{scores:?}");
        let mut flat = vec![hit("a", 3.0), hit("b", 3.0)];
        normalize_min_max(&mut flat);
        assert_eq!(flat[0].score, 1.0);
    }

    #[test]
    fn top_k_never_reserves_more_than_it_returns() {
        let hits = vec![hit("a", 1.0), hit("b", 3.0), hit("c", 2.0)];
        let out = top_k(hits.clone(), usize::MAX);
        assert_eq!(ids(&out), ["b", "c", "a"]);
        assert_eq!(out.capacity(), 3, "room for the hits given, not for k");
        // An iterator that cannot say its length up front.
        let out = top_k(hits.iter().filter(|h| h.id != "c").cloned(), u32::MAX as usize);
        assert_eq!(ids(&out), ["b", "a"]);
        assert!(out.capacity() <= 4, "capacity {}", out.capacity());
        assert_eq!(ids(&top_k(hits, 2)), ["b", "c"]);
    }

    #[test]
    fn rrf_breaks_ties_by_the_first_list_not_by_id() {
        // z and a tie on fused score (each first in one list); the first list ranks z first.
        let dense = vec![hit("z", 0.9), hit("a", 0.8)];
        let keyword = vec![hit("a", 2.0), hit("z", 1.0)];
        assert_eq!(ids(&reciprocal_rank_fusion(&[dense.clone(), keyword.clone()], 60.0)), ["z", "a"]);
        assert_eq!(ids(&reciprocal_rank_fusion(&[keyword, dense], 60.0)), ["a", "z"]);
        // Hits only the second list holds, tied, keep that list's order.
        let only = reciprocal_rank_fusion(&[vec![], vec![hit("y", 1.0)], vec![hit("b", 1.0)]], 60.0);
        assert_eq!(ids(&only), ["y", "b"], "y is in the earlier list");
    }

    #[test]
    fn rrf_rewards_agreement() {
        let a = vec![hit("x", 9.0), hit("y", 8.0), hit("z", 7.0)];
        let b = vec![hit("y", 0.9), hit("z", 0.8), hit("w", 0.1)];
        let fused = reciprocal_rank_fusion(&[a, b], 60.0);
        assert_eq!(ids(&fused), ["y", "z", "x", "w"]);
        assert!((fused[0].score - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-7);
    }

    #[test]
    fn beam_search_finds_the_best_constrained_sequence() {
        // Greedy picks token 1 first (-0.1) but 1 leads only to a bad token (-5);
        // 2 (-0.7) leads to a good one (-0.1). Width 2 keeps both and finds [2, 0].
        let result = beam_search::<()>(2, 2, |prefixes| {
            Ok(prefixes
                .iter()
                .map(|p| match p.as_slice() {
                    [] => vec![(1, -0.1), (2, -0.7), (3, -3.0)],
                    [1] => vec![(0, -5.0)],
                    [2] => vec![(0, -0.1)],
                    _ => vec![],
                })
                .collect())
        })
        .unwrap();
        assert_eq!(result[0].tokens, [2, 0]);
        assert!((result[0].logprob + 0.8).abs() < 1e-6);
        assert_eq!(result.len(), 2);
        let greedy = beam_search::<()>(1, 2, |p| Ok(p.iter().map(|p| if p.is_empty() { vec![(1, -0.1), (2, -0.7)] } else if p[0] == 1 { vec![(0, -5.0)] } else { vec![(0, -0.1)] }).collect())).unwrap();
        assert_eq!(greedy[0].tokens, [1, 0]);
    }
}
