//! Fusing several ranked lists into one.

use std::collections::HashMap;

/// One fused hit: the fused score, and each input list's own score for the id (`None` where
/// that list did not return it).
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub id: String,
    pub score: f64,
    pub parts: Vec<Option<f32>>,
}

/// Reciprocal-rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): each list adds
/// `weight / (k + rank)` for every id it returns, ranks counted from 1. Lists are best first;
/// an id repeated within a list counts at its first rank. Ties in the fused score go to the
/// smaller id, so the order is a function of the inputs alone.
pub fn reciprocal_rank(lists: &[Vec<(String, f32)>], k: f64, weights: &[f64]) -> Vec<Fused> {
    fuse(lists, |index, position, _| weights[index] / (k + (position + 1) as f64))
}

/// Weighted sum of min–max normalised scores: each list's scores are mapped to [0, 1] (all to 1
/// when a list's scores are equal), multiplied by the list's weight and summed; a list that did
/// not return an id adds 0.
pub fn weighted_scores(lists: &[Vec<(String, f32)>], weights: &[f64]) -> Vec<Fused> {
    let ranges: Vec<(f64, f64)> = lists
        .iter()
        .map(|list| {
            let (lo, hi) = list.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, s)| (lo.min(f64::from(*s)), hi.max(f64::from(*s))));
            (lo, hi)
        })
        .collect();
    fuse(lists, |index, _, score| {
        let (lo, hi) = ranges[index];
        let normalised = if hi > lo { (f64::from(score) - lo) / (hi - lo) } else { 1.0 };
        weights[index] * normalised
    })
}

fn fuse(lists: &[Vec<(String, f32)>], contribution: impl Fn(usize, usize, f32) -> f64) -> Vec<Fused> {
    let mut fused: HashMap<&str, Fused> = HashMap::new();
    for (index, list) in lists.iter().enumerate() {
        for (position, (id, score)) in list.iter().enumerate() {
            let entry = fused.entry(id.as_str()).or_insert_with(|| Fused { id: id.clone(), score: 0.0, parts: vec![None; lists.len()] });
            if entry.parts[index].is_some() {
                continue;
            }
            entry.parts[index] = Some(*score);
            entry.score += contribution(index, position, *score);
        }
    }
    let mut out: Vec<Fused> = fused.into_values().collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[(&str, f32)]) -> Vec<(String, f32)> {
        ids.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    #[test]
    fn rrf_sums_reciprocal_ranks_and_breaks_ties_by_id() {
        let a = list(&[("x", 0.9), ("y", 0.8), ("z", 0.1)]);
        let b = list(&[("y", 5.0), ("w", 4.0)]);
        let fused = reciprocal_rank(&[a, b], 60.0, &[1.0, 1.0]);
        let ids: Vec<&str> = fused.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["y", "x", "w", "z"]);
        assert!((fused[0].score - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-12);
        assert_eq!(fused[0].parts, [Some(0.8), Some(5.0)]);
        assert!((fused[1].score - 1.0 / 61.0).abs() < 1e-12);
        assert_eq!(fused[2].parts, [None, Some(4.0)]);
    }

    #[test]
    fn rrf_ties_go_to_the_smaller_id_and_repeats_count_once() {
        let fused = reciprocal_rank(&[list(&[("b", 1.0), ("b", 0.5)]), list(&[("a", 1.0)])], 60.0, &[1.0, 1.0]);
        assert_eq!(fused.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!((fused[1].score - 1.0 / 61.0).abs() < 1e-12);
    }

    #[test]
    fn weighted_normalises_each_list_then_weighs_it() {
        let a = list(&[("x", 10.0), ("y", 5.0), ("z", 0.0)]);
        let b = list(&[("z", 0.3), ("y", 0.2)]);
        let fused = weighted_scores(&[a, b], &[1.0, 3.0]);
        let score = |id: &str| fused.iter().find(|f| f.id == id).unwrap().score;
        assert!((score("x") - 1.0).abs() < 1e-9);
        assert!((score("y") - (0.5 + 0.0)).abs() < 1e-9);
        assert!((score("z") - (0.0 + 3.0)).abs() < 1e-9);
        assert_eq!(fused[0].id, "z");
        // A list whose scores are all equal counts each of its ids fully.
        let flat = weighted_scores(&[list(&[("p", 2.0), ("q", 2.0)])], &[1.0]);
        assert!(flat.iter().all(|f| (f.score - 1.0).abs() < 1e-12));
    }
}
