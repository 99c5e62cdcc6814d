//! Retrieval metrics as the benchmark papers define them.
//!
//! Every metric works on one [`Ranked`] list per query: the gallery ids, best first, that a
//! strategy returned. Conventions shared by all of them:
//!
//! - **Duplicates count once.** A ranked list is read with each id at its first position only,
//!   so `[x, x, a]` puts `a` at rank 2. Repeating an id can neither earn a second hit nor push a
//!   relevant id down.
//! - **Absent means missed.** A ground-truth id that is not in the ranked list is never a hit at
//!   any K. (The TGDT reference evaluator scores stage-1 misses as rank 0, which counts them as
//!   hits; that is not repeated here.)
//! - **Strict pairing.** Every query with ground truth needs exactly one ranked list and every
//!   ranked list needs ground truth; anything else is an error rather than a silently skipped
//!   query, because skipping queries inflates scores.
//! - Scores are fractions in `[0, 1]`; reports print them as percentages like the papers do.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clip;

/// The K values most papers report Recall@K at (Flickr30K, COCO, CIRR).
pub const RECALL_KS: [usize; 4] = [1, 5, 10, 50];
/// The K values CIRR reports Recall_subset@K at.
pub const CIRR_SUBSET_KS: [usize; 3] = [1, 2, 3];
/// The K values CIRCO reports mAP@K at.
pub const CIRCO_MAP_KS: [usize; 4] = [5, 10, 25, 50];
/// The K values FashionIQ reports Recall@K at.
pub const FASHIONIQ_KS: [usize; 2] = [10, 50];

/// What went wrong with a metric's input. Query ids in messages are shortened and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// K was 0: "the top 0" holds nothing, so no metric is defined.
    #[error("K must be at least 1")]
    ZeroK,
    /// There were no ranked lists at all, so a mean over queries is undefined.
    #[error("there are no queries to evaluate")]
    NoQueries,
    /// The same query id came with two ranked lists.
    #[error("query {0:?} has more than one ranked list")]
    DuplicateQuery(String),
    /// A ranked list names a query that has no ground truth.
    #[error("query {0:?} has a ranked list but no ground truth")]
    UnknownQuery(String),
    /// A query with ground truth has no ranked list.
    #[error("query {0:?} has ground truth but no ranked list")]
    MissingRankedList(String),
    /// A query's set of relevant ids is empty, so it can be neither hit nor missed.
    #[error("query {0:?} has an empty ground-truth set")]
    EmptyGroundTruth(String),
    /// A CIRR target is not a member of the query's image set, so Recall_subset cannot hit it.
    #[error("query {query:?}: the target {target:?} is not in the query's image set")]
    TargetNotInImageSet {
        /// The query id.
        query: String,
        /// The target id.
        target: String,
    },
    /// A CIRR reference image is also its target; excluding the reference would hide the target.
    #[error("query {0:?}: the reference image is also the target")]
    ReferenceIsTarget(String),
    /// A latency summary was asked for an empty list of durations.
    #[error("there are no durations to summarise")]
    NoDurations,
    /// A percentile outside `1..=100` was asked for.
    #[error("a percentile must be in 1..=100, got {0}")]
    InvalidPercentile(u32),
    /// The FashionIQ average was asked for over no categories.
    #[error("there are no FashionIQ categories to average")]
    NoCategories,
    /// A FashionIQ category was given twice.
    #[error("FashionIQ category {0:?} is given more than once")]
    DuplicateCategory(String),
}

/// One query's ranked list: gallery ids, best first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranked {
    /// The query this list answers.
    pub query_id: String,
    /// Gallery ids, best first. Later repeats of an id are ignored.
    pub ranked: Vec<String>,
}

impl Ranked {
    /// A ranked list for `query_id`.
    pub fn new(
        query_id: impl Into<String>,
        ranked: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Ranked {
            query_id: query_id.into(),
            ranked: ranked.into_iter().map(Into::into).collect(),
        }
    }
}

/// The relevant gallery ids of each query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroundTruth {
    relevant: BTreeMap<String, BTreeSet<String>>,
}

impl GroundTruth {
    /// An empty ground truth.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `relevant` ids to `query_id`'s set (creating the set, even when `relevant` is empty,
    /// so that an empty set is reported as an error instead of a missing query).
    pub fn insert(
        &mut self,
        query_id: impl Into<String>,
        relevant: impl IntoIterator<Item = impl Into<String>>,
    ) {
        self.relevant
            .entry(query_id.into())
            .or_default()
            .extend(relevant.into_iter().map(Into::into));
    }

    /// The relevant ids of `query_id`, if it has ground truth.
    pub fn relevant(&self, query_id: &str) -> Option<&BTreeSet<String>> {
        self.relevant.get(query_id)
    }

    /// The number of queries with ground truth.
    pub fn len(&self) -> usize {
        self.relevant.len()
    }

    /// Whether no query has ground truth.
    pub fn is_empty(&self) -> bool {
        self.relevant.is_empty()
    }

    /// The query ids, in sorted order.
    pub fn query_ids(&self) -> impl Iterator<Item = &str> {
        self.relevant.keys().map(String::as_str)
    }
}

/// A CIRR query's truth: its reference image, its target and its image set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CirrTruth {
    /// The reference image, which CIRR removes from every ranking.
    pub reference_id: String,
    /// The one target image (`target_hard`).
    pub target_id: String,
    /// The `img_set.members` of the query (the reference among them is ignored).
    pub image_set: Vec<String>,
}

/// One named score, e.g. `Recall@10 = 0.42`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The metric's name as papers print it, e.g. `Recall@10`, `mAP@5`, `Recall_subset@1`.
    pub name: String,
    /// The score as a fraction in `[0, 1]`.
    pub value: f64,
}

impl Metric {
    /// A named score.
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Metric {
            name: name.into(),
            value,
        }
    }
}

fn check_k(k: usize) -> Result<(), MetricError> {
    if k == 0 {
        Err(MetricError::ZeroK)
    } else {
        Ok(())
    }
}

/// Pairs each ranked list with its query's truth, enforcing one list per query and one query
/// per list.
fn pair<'a, T>(
    runs: &'a [Ranked],
    truth: &'a BTreeMap<String, T>,
) -> Result<Vec<(&'a Ranked, &'a T)>, MetricError> {
    if runs.is_empty() {
        return Err(MetricError::NoQueries);
    }
    let mut seen = HashSet::with_capacity(runs.len());
    let mut pairs = Vec::with_capacity(runs.len());
    for run in runs {
        if !seen.insert(run.query_id.as_str()) {
            return Err(MetricError::DuplicateQuery(clip(&run.query_id)));
        }
        let t = truth
            .get(&run.query_id)
            .ok_or_else(|| MetricError::UnknownQuery(clip(&run.query_id)))?;
        pairs.push((run, t));
    }
    if let Some(missing) = truth.keys().find(|q| !seen.contains(q.as_str())) {
        return Err(MetricError::MissingRankedList(clip(missing)));
    }
    Ok(pairs)
}

/// The ranked ids with every repeat after the first occurrence dropped.
fn first_occurrences(ranked: &[String]) -> impl Iterator<Item = &str> {
    let mut seen = HashSet::new();
    ranked
        .iter()
        .map(String::as_str)
        .filter(move |id| seen.insert(*id))
}

/// Whether a relevant id is among the first `k` of `ids`. Stops after `k` ids, so a ranking of
/// the whole gallery costs O(k) per query, and an id absent from `ids` is never a hit.
fn hit_in_top_k<'a>(
    ids: impl Iterator<Item = &'a str>,
    k: usize,
    is_relevant: impl Fn(&str) -> bool,
) -> bool {
    ids.take(k).any(is_relevant)
}

/// The mean of `n` scores; callers guarantee n >= 1 (`pair` refuses an empty run list).
fn mean(scores: impl Iterator<Item = f64>, n: usize) -> f64 {
    scores.sum::<f64>() / n as f64
}

fn non_empty<'a>(
    query: &str,
    relevant: &'a BTreeSet<String>,
) -> Result<&'a BTreeSet<String>, MetricError> {
    if relevant.is_empty() {
        Err(MetricError::EmptyGroundTruth(clip(query)))
    } else {
        Ok(relevant)
    }
}

/// Recall@K: the fraction of queries with at least one relevant id in the top `k`.
pub fn recall_at_k(runs: &[Ranked], truth: &GroundTruth, k: usize) -> Result<f64, MetricError> {
    check_k(k)?;
    let pairs = pair(runs, &truth.relevant)?;
    let mut hits = 0usize;
    for (run, relevant) in &pairs {
        let relevant = non_empty(&run.query_id, relevant)?;
        let hit = hit_in_top_k(first_occurrences(&run.ranked), k, |id| {
            relevant.contains(id)
        });
        hits += usize::from(hit);
    }
    Ok(hits as f64 / pairs.len() as f64)
}

/// AP@K of one query as CIRCO defines it: `Σ_{i≤K} P(i)·rel(i) / min(|GT|, K)`.
fn average_precision_at_k(ranked: &[String], relevant: &BTreeSet<String>, k: usize) -> f64 {
    let mut hits = 0usize;
    let mut precision_sum = 0.0;
    for (i, id) in first_occurrences(ranked).take(k).enumerate() {
        if relevant.contains(id) {
            hits += 1;
            precision_sum += hits as f64 / (i + 1) as f64;
        }
    }
    precision_sum / relevant.len().min(k) as f64
}

/// mAP@K as CIRCO defines it: the mean over queries of
/// `AP@K = Σ_{i≤K} P(i)·rel(i) / min(|GT|, K)`, where `P(i)` is the precision of the top `i`
/// and `rel(i)` is 1 when the id at rank `i` is relevant.
pub fn map_at_k(runs: &[Ranked], truth: &GroundTruth, k: usize) -> Result<f64, MetricError> {
    check_k(k)?;
    let pairs = pair(runs, &truth.relevant)?;
    let mut aps = Vec::with_capacity(pairs.len());
    for (run, relevant) in &pairs {
        let relevant = non_empty(&run.query_id, relevant)?;
        aps.push(average_precision_at_k(&run.ranked, relevant, k));
    }
    Ok(mean(aps.into_iter(), pairs.len()))
}

fn check_cirr(query: &str, truth: &CirrTruth) -> Result<(), MetricError> {
    if truth.reference_id == truth.target_id {
        return Err(MetricError::ReferenceIsTarget(clip(query)));
    }
    Ok(())
}

/// CIRR's Recall@K: the reference image is removed from the ranking, then a query is a hit when
/// its target is in the top `k`.
pub fn cirr_recall_at_k(
    runs: &[Ranked],
    truth: &BTreeMap<String, CirrTruth>,
    k: usize,
) -> Result<f64, MetricError> {
    check_k(k)?;
    let pairs = pair(runs, truth)?;
    let mut hits = 0usize;
    for (run, t) in &pairs {
        check_cirr(&run.query_id, t)?;
        let ids = first_occurrences(&run.ranked).filter(|id| *id != t.reference_id);
        hits += usize::from(hit_in_top_k(ids, k, |id| id == t.target_id));
    }
    Ok(hits as f64 / pairs.len() as f64)
}

/// CIRR's Recall_subset@K: the ranking is restricted to the query's image set minus the
/// reference image, and a query is a hit when its target is in the top `k` of what remains.
///
/// The restricted ranking is read from the given list, so the list must reach at least as far
/// down as the image set's members do; rank the whole gallery (as CIRR's evaluation does), or a
/// target cut off by truncation counts as a miss.
pub fn cirr_recall_subset_at_k(
    runs: &[Ranked],
    truth: &BTreeMap<String, CirrTruth>,
    k: usize,
) -> Result<f64, MetricError> {
    check_k(k)?;
    let pairs = pair(runs, truth)?;
    let mut hits = 0usize;
    for (run, t) in &pairs {
        check_cirr(&run.query_id, t)?;
        let subset: HashSet<&str> = t
            .image_set
            .iter()
            .map(String::as_str)
            .filter(|id| *id != t.reference_id)
            .collect();
        if !subset.contains(t.target_id.as_str()) {
            return Err(MetricError::TargetNotInImageSet {
                query: clip(&run.query_id),
                target: clip(&t.target_id),
            });
        }
        let ids = first_occurrences(&run.ranked).filter(|id| subset.contains(id));
        hits += usize::from(hit_in_top_k(ids, k, |id| id == t.target_id));
    }
    Ok(hits as f64 / pairs.len() as f64)
}

/// Runs `metric` at each K and names the results `{prefix}@{k}`.
fn at_ks(
    prefix: &str,
    ks: &[usize],
    mut metric: impl FnMut(usize) -> Result<f64, MetricError>,
) -> Result<Vec<Metric>, MetricError> {
    ks.iter()
        .map(|&k| Ok(Metric::new(format!("{prefix}@{k}"), metric(k)?)))
        .collect()
}

/// `Recall@k` for each of `ks` (e.g. [`RECALL_KS`]).
pub fn recall_metrics(
    runs: &[Ranked],
    truth: &GroundTruth,
    ks: &[usize],
) -> Result<Vec<Metric>, MetricError> {
    at_ks("Recall", ks, |k| recall_at_k(runs, truth, k))
}

/// `mAP@k` for each of `ks` (e.g. [`CIRCO_MAP_KS`]).
pub fn map_metrics(
    runs: &[Ranked],
    truth: &GroundTruth,
    ks: &[usize],
) -> Result<Vec<Metric>, MetricError> {
    at_ks("mAP", ks, |k| map_at_k(runs, truth, k))
}

/// CIRR's `Recall@k` (reference excluded) for each of `ks` (e.g. [`RECALL_KS`]).
pub fn cirr_recall_metrics(
    runs: &[Ranked],
    truth: &BTreeMap<String, CirrTruth>,
    ks: &[usize],
) -> Result<Vec<Metric>, MetricError> {
    at_ks("Recall", ks, |k| cirr_recall_at_k(runs, truth, k))
}

/// CIRR's `Recall_subset@k` for each of `ks` (e.g. [`CIRR_SUBSET_KS`]).
pub fn cirr_subset_metrics(
    runs: &[Ranked],
    truth: &BTreeMap<String, CirrTruth>,
    ks: &[usize],
) -> Result<Vec<Metric>, MetricError> {
    at_ks("Recall_subset", ks, |k| {
        cirr_recall_subset_at_k(runs, truth, k)
    })
}

/// The ranked lists and ground truth of one FashionIQ category.
#[derive(Debug, Clone, Copy)]
pub struct FashionIqCategoryRuns<'a> {
    /// The category name: `dress`, `shirt` or `toptee`.
    pub category: &'a str,
    /// One ranked list per query of the category, over that category's gallery.
    pub runs: &'a [Ranked],
    /// The category's targets.
    pub truth: &'a GroundTruth,
}

/// One FashionIQ category's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FashionIqCategoryScore {
    /// The category name.
    pub category: String,
    /// Recall@10 of the category.
    pub recall_at_10: f64,
    /// Recall@50 of the category.
    pub recall_at_50: f64,
}

/// FashionIQ scores as the papers report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FashionIqScores {
    /// Each category's R@10 and R@50, in the order given.
    pub categories: Vec<FashionIqCategoryScore>,
    /// The mean of the categories' R@10.
    pub mean_recall_at_10: f64,
    /// The mean of the categories' R@50.
    pub mean_recall_at_50: f64,
    /// The mean over categories of `(R@10 + R@50) / 2`: the single "Avg." column of the papers.
    pub average: f64,
}

impl FashionIqScores {
    /// The scores as named metric rows: `{category} R@10`, `{category} R@50` per category,
    /// then `mean R@10`, `mean R@50` and `average`.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::with_capacity(self.categories.len() * 2 + 3);
        for c in &self.categories {
            out.push(Metric::new(format!("{} R@10", c.category), c.recall_at_10));
            out.push(Metric::new(format!("{} R@50", c.category), c.recall_at_50));
        }
        out.push(Metric::new("mean R@10", self.mean_recall_at_10));
        out.push(Metric::new("mean R@50", self.mean_recall_at_50));
        out.push(Metric::new("average", self.average));
        out
    }
}

/// FashionIQ's per-category R@10 and R@50 and their averages over categories.
pub fn fashioniq_scores(
    categories: &[FashionIqCategoryRuns<'_>],
) -> Result<FashionIqScores, MetricError> {
    if categories.is_empty() {
        return Err(MetricError::NoCategories);
    }
    let mut seen = HashSet::new();
    let mut scores = Vec::with_capacity(categories.len());
    for c in categories {
        if !seen.insert(c.category) {
            return Err(MetricError::DuplicateCategory(clip(c.category)));
        }
        scores.push(FashionIqCategoryScore {
            category: c.category.to_owned(),
            recall_at_10: recall_at_k(c.runs, c.truth, 10)?,
            recall_at_50: recall_at_k(c.runs, c.truth, 50)?,
        });
    }
    let n = scores.len();
    let mean_recall_at_10 = mean(scores.iter().map(|s| s.recall_at_10), n);
    let mean_recall_at_50 = mean(scores.iter().map(|s| s.recall_at_50), n);
    let average = mean(
        scores
            .iter()
            .map(|s| (s.recall_at_10 + s.recall_at_50) / 2.0),
        n,
    );
    Ok(FashionIqScores {
        categories: scores,
        mean_recall_at_10,
        mean_recall_at_50,
        average,
    })
}

/// The `p`-th percentile (1..=100) of `durations` by the **nearest-rank** definition: sort
/// ascending and take the value at 1-based rank `ceil(p/100 · N)`. It is always one of the
/// measured values (no interpolation), so p100 is the maximum and p50 of an even count is the
/// lower middle value.
pub fn percentile(durations: &[Duration], p: u32) -> Result<Duration, MetricError> {
    if !(1..=100).contains(&p) {
        return Err(MetricError::InvalidPercentile(p));
    }
    if durations.is_empty() {
        return Err(MetricError::NoDurations);
    }
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    Ok(sorted[nearest_rank(sorted.len(), p) - 1])
}

/// `ceil(p · n / 100)` in integers (u128, so no overflow and no float rounding), for n >= 1 and
/// p in 1..=100; the result is in 1..=n.
fn nearest_rank(n: usize, p: u32) -> usize {
    let rank = (u128::from(p) * n as u128).div_ceil(100);
    // p <= 100 keeps rank <= n, and p >= 1 with n >= 1 keeps it >= 1.
    usize::try_from(rank).unwrap_or(n).clamp(1, n)
}

/// Latency percentiles of a run (nearest-rank, see [`percentile`]). JSON carries them as
/// milliseconds (`p50_ms`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// How many durations were summarised.
    pub count: usize,
    /// The median.
    #[serde(rename = "p50_ms", with = "duration_ms")]
    pub p50: Duration,
    /// The 95th percentile.
    #[serde(rename = "p95_ms", with = "duration_ms")]
    pub p95: Duration,
    /// The 99th percentile.
    #[serde(rename = "p99_ms", with = "duration_ms")]
    pub p99: Duration,
    /// The slowest one.
    #[serde(rename = "max_ms", with = "duration_ms")]
    pub max: Duration,
}

/// p50, p95, p99 and the maximum of `durations` (nearest-rank percentiles).
pub fn latency_summary(durations: &[Duration]) -> Result<LatencySummary, MetricError> {
    if durations.is_empty() {
        return Err(MetricError::NoDurations);
    }
    let mut sorted = durations.to_vec();
    sorted.sort_unstable();
    let at = |p| sorted[nearest_rank(sorted.len(), p) - 1];
    Ok(LatencySummary {
        count: sorted.len(),
        p50: at(50),
        p95: at(95),
        p99: at(99),
        max: at(100),
    })
}

/// Durations as (fractional) milliseconds in JSON.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        // try_from rejects negative, NaN and overflowing values instead of panicking.
        Duration::try_from_secs_f64(ms / 1e3)
            .map_err(|e| D::Error::custom(format!("invalid duration {ms} ms: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("{prefix}{i}")).collect()
    }

    /// A list of `n - 1` distractors followed by `id`, so `id` sits at rank `n`.
    fn at_rank(id: &str, n: usize) -> Vec<String> {
        let mut v = ids("distractor", n - 1);
        v.push(id.to_owned());
        v
    }

    fn truth(pairs: &[(&str, &[&str])]) -> GroundTruth {
        let mut gt = GroundTruth::new();
        for (q, rel) in pairs {
            gt.insert(*q, rel.iter().copied());
        }
        gt
    }

    #[test]
    fn recall_hits_within_k_and_misses_absent_ground_truth() {
        let gt = truth(&[("q1", &["a"]), ("q2", &["b", "c"]), ("q3", &["z"])]);
        let runs = vec![
            Ranked::new("q1", ["a", "x", "y"]),
            // c, one of q2's two relevant ids, at rank 2.
            Ranked::new("q2", ["x", "c", "b"]),
            // z is absent: a miss at every K, never rank 0.
            Ranked::new("q3", ["x", "y"]),
        ];
        assert!(close(recall_at_k(&runs, &gt, 1).unwrap(), 1.0 / 3.0));
        assert!(close(recall_at_k(&runs, &gt, 2).unwrap(), 2.0 / 3.0));
        assert!(close(recall_at_k(&runs, &gt, 50).unwrap(), 2.0 / 3.0));
    }

    #[test]
    fn recall_ground_truth_at_rank_k_plus_one_is_a_miss() {
        for k in RECALL_KS {
            let gt = truth(&[("q", &["t"])]);
            let runs = vec![Ranked::new("q", at_rank("t", k + 1))];
            assert_eq!(recall_at_k(&runs, &gt, k).unwrap(), 0.0, "K={k}");
            assert_eq!(recall_at_k(&runs, &gt, k + 1).unwrap(), 1.0, "K={k}+1");
        }
    }

    #[test]
    fn recall_metrics_over_the_standard_ks() {
        // Ranks 1, 5, 6, 11, 51 and absent: hits at K=1: 1, K=5: 2, K=10: 3, K=50: 4 of 6.
        let gt = truth(&[
            ("q1", &["t"]),
            ("q2", &["t"]),
            ("q3", &["t"]),
            ("q4", &["t"]),
            ("q5", &["t"]),
            ("q6", &["t"]),
        ]);
        let runs = vec![
            Ranked::new("q1", at_rank("t", 1)),
            Ranked::new("q2", at_rank("t", 5)),
            Ranked::new("q3", at_rank("t", 6)),
            Ranked::new("q4", at_rank("t", 11)),
            Ranked::new("q5", at_rank("t", 51)),
            Ranked::new("q6", ids("other", 100)),
        ];
        let m = recall_metrics(&runs, &gt, &RECALL_KS).unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["Recall@1", "Recall@5", "Recall@10", "Recall@50"]);
        let values: Vec<f64> = m.iter().map(|m| m.value).collect();
        for (got, want) in values
            .iter()
            .zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0, 4.0 / 6.0])
        {
            assert!(close(*got, want), "{values:?}");
        }
    }

    #[test]
    fn duplicates_count_at_their_first_occurrence_only() {
        let gt = truth(&[("q", &["a"])]);
        // Deduplicated: [x, a], so a is at rank 2, not 6.
        let runs = vec![Ranked::new("q", ["x", "x", "x", "x", "x", "a"])];
        assert_eq!(recall_at_k(&runs, &gt, 2).unwrap(), 1.0);
        assert_eq!(recall_at_k(&runs, &gt, 1).unwrap(), 0.0);
    }

    #[test]
    fn empty_ranked_list_is_a_miss() {
        let gt = truth(&[("q", &["a"])]);
        let runs = vec![Ranked::new("q", Vec::<String>::new())];
        assert_eq!(recall_at_k(&runs, &gt, 50).unwrap(), 0.0);
        assert_eq!(map_at_k(&runs, &gt, 50).unwrap(), 0.0);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let gt = truth(&[("q1", &["a"]), ("q2", &["b"])]);
        let both = vec![Ranked::new("q1", ["a"]), Ranked::new("q2", ["b"])];
        assert_eq!(recall_at_k(&both, &gt, 0), Err(MetricError::ZeroK));
        assert_eq!(map_at_k(&both, &gt, 0), Err(MetricError::ZeroK));
        assert_eq!(recall_at_k(&[], &gt, 1), Err(MetricError::NoQueries));
        assert_eq!(
            recall_at_k(&both[..1], &gt, 1),
            Err(MetricError::MissingRankedList("q2".into()))
        );
        let dup = vec![
            Ranked::new("q1", ["a"]),
            Ranked::new("q1", ["a"]),
            Ranked::new("q2", ["b"]),
        ];
        assert_eq!(
            recall_at_k(&dup, &gt, 1),
            Err(MetricError::DuplicateQuery("q1".into()))
        );
        let unknown = vec![
            Ranked::new("q1", ["a"]),
            Ranked::new("q2", ["b"]),
            Ranked::new("q9", ["b"]),
        ];
        assert_eq!(
            recall_at_k(&unknown, &gt, 1),
            Err(MetricError::UnknownQuery("q9".into()))
        );
        let mut empty = GroundTruth::new();
        empty.insert("q", Vec::<String>::new());
        let runs = vec![Ranked::new("q", ["a"])];
        assert_eq!(
            recall_at_k(&runs, &empty, 1),
            Err(MetricError::EmptyGroundTruth("q".into()))
        );
        assert_eq!(
            map_at_k(&runs, &empty, 1),
            Err(MetricError::EmptyGroundTruth("q".into()))
        );
    }

    #[test]
    fn error_messages_shorten_and_escape_hostile_ids() {
        let hostile = format!("\u{1b}[31m{}", "x".repeat(10_000));
        let gt = truth(&[("q", &["a"])]);
        let runs = vec![
            Ranked::new("q", ["a"]),
            Ranked::new(hostile.as_str(), ["a"]),
        ];
        let msg = recall_at_k(&runs, &gt, 1).unwrap_err().to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(!msg.chars().any(char::is_control), "{msg}");
    }

    #[test]
    fn map_matches_hand_computed_values() {
        // GT {a, b, c}; ranks 1, 3, 5 relevant.
        // AP@5 = (1/1 + 2/3 + 3/5) / min(3, 5) = 2.2666.. / 3.
        let gt = truth(&[("q1", &["a", "b", "c"])]);
        let runs = vec![Ranked::new("q1", ["a", "x", "b", "y", "c"])];
        assert!(close(
            map_at_k(&runs, &gt, 5).unwrap(),
            (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0
        ));
        // AP@2 = (1/1) / min(3, 2).
        assert!(close(map_at_k(&runs, &gt, 2).unwrap(), 0.5));
        // AP@1 = 1 / min(3, 1).
        assert!(close(map_at_k(&runs, &gt, 1).unwrap(), 1.0));
        // AP@50 = same numerator, min(3, 50) = 3.
        assert!(close(
            map_at_k(&runs, &gt, 50).unwrap(),
            (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0
        ));
    }

    #[test]
    fn map_misses_and_rank_k_plus_one() {
        let gt = truth(&[
            ("hit", &["a", "b", "c"]),
            ("miss", &["z"]),
            ("late", &["t"]),
        ]);
        let runs = vec![
            Ranked::new("hit", ["a", "x", "b", "y", "c"]),
            Ranked::new("miss", ["x", "y"]),
            Ranked::new("late", at_rank("t", 6)),
        ];
        let ap_hit = (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0;
        assert!(close(map_at_k(&runs, &gt, 5).unwrap(), ap_hit / 3.0));
        // At K=6, "late" scores P(6) / min(1, 6) = 1/6.
        assert!(close(
            map_at_k(&runs, &gt, 6).unwrap(),
            (ap_hit + 0.0 + 1.0 / 6.0) / 3.0
        ));
    }

    #[test]
    fn map_ignores_repeats_so_ap_stays_at_most_one() {
        // Read naively, [a, a, b] would score (1 + 1 + 1) / 2 = 1.5.
        let gt = truth(&[("q", &["a", "b"])]);
        let runs = vec![Ranked::new("q", ["a", "a", "b"])];
        assert!(close(map_at_k(&runs, &gt, 3).unwrap(), 1.0));
        let m = map_metrics(&runs, &gt, &CIRCO_MAP_KS).unwrap();
        assert_eq!(m[0].name, "mAP@5");
        assert_eq!(m.len(), 4);
    }

    fn cirr_truth() -> BTreeMap<String, CirrTruth> {
        let mut t = BTreeMap::new();
        t.insert(
            "q".to_owned(),
            CirrTruth {
                reference_id: "r".into(),
                target_id: "t".into(),
                image_set: ["r", "m1", "t", "m2", "m3", "m4"].map(String::from).into(),
            },
        );
        t
    }

    #[test]
    fn cirr_recall_excludes_the_reference() {
        let t = cirr_truth();
        // Without the reference, t is at rank 2.
        let runs = vec![Ranked::new("q", ["r", "m1", "t"])];
        assert_eq!(cirr_recall_at_k(&runs, &t, 1).unwrap(), 0.0);
        assert_eq!(cirr_recall_at_k(&runs, &t, 2).unwrap(), 1.0);
        // The generic recall does not drop it: t is at rank 3 there.
        let mut gt = GroundTruth::new();
        gt.insert("q", ["t"]);
        assert_eq!(recall_at_k(&runs, &gt, 2).unwrap(), 0.0);
    }

    #[test]
    fn cirr_recall_at_rank_k_plus_one_and_absent_target() {
        let t = cirr_truth();
        for k in RECALL_KS {
            let mut ranked = vec!["r".to_owned()];
            ranked.extend(at_rank("t", k + 1));
            let runs = vec![Ranked::new("q", ranked)];
            assert_eq!(cirr_recall_at_k(&runs, &t, k).unwrap(), 0.0, "K={k}");
            assert_eq!(cirr_recall_at_k(&runs, &t, k + 1).unwrap(), 1.0, "K={k}+1");
        }
        let runs = vec![Ranked::new("q", ["r", "m1", "m2"])];
        let m = cirr_recall_metrics(&runs, &t, &RECALL_KS).unwrap();
        assert!(m.iter().all(|m| m.value == 0.0), "{m:?}");
        let m = cirr_subset_metrics(&runs, &t, &CIRR_SUBSET_KS).unwrap();
        assert!(m.iter().all(|m| m.value == 0.0), "{m:?}");
    }

    #[test]
    fn cirr_subset_restricts_to_the_image_set() {
        let t = cirr_truth();
        // Restricted to {m1, t, m2, m3, m4}: [m2, t, m1], so t is at subset rank 2;
        // globally (reference dropped) t is at rank 5.
        let runs = vec![Ranked::new(
            "q",
            ["g1", "g2", "m2", "r", "g3", "t", "m1", "m3"],
        )];
        let s = cirr_subset_metrics(&runs, &t, &CIRR_SUBSET_KS).unwrap();
        let names: Vec<&str> = s.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["Recall_subset@1", "Recall_subset@2", "Recall_subset@3"]
        );
        let values: Vec<f64> = s.iter().map(|m| m.value).collect();
        assert_eq!(values, [0.0, 1.0, 1.0]);
        assert_eq!(cirr_recall_at_k(&runs, &t, 4).unwrap(), 0.0);
        assert_eq!(cirr_recall_at_k(&runs, &t, 5).unwrap(), 1.0);
        // The subset rank of the target at K+1 = 4: three members ahead of it.
        let runs = vec![Ranked::new("q", ["m1", "m2", "r", "m3", "t"])];
        assert_eq!(cirr_recall_subset_at_k(&runs, &t, 3).unwrap(), 0.0);
        assert_eq!(cirr_recall_subset_at_k(&runs, &t, 4).unwrap(), 1.0);
    }

    #[test]
    fn cirr_malformed_truth_is_an_error() {
        let mut t = cirr_truth();
        t.get_mut("q").unwrap().image_set = vec!["r".into(), "m1".into()];
        let runs = vec![Ranked::new("q", ["t"])];
        assert_eq!(
            cirr_recall_subset_at_k(&runs, &t, 1),
            Err(MetricError::TargetNotInImageSet {
                query: "q".into(),
                target: "t".into()
            })
        );
        let mut t = cirr_truth();
        t.get_mut("q").unwrap().target_id = "r".into();
        assert_eq!(
            cirr_recall_at_k(&runs, &t, 1),
            Err(MetricError::ReferenceIsTarget("q".into()))
        );
        assert_eq!(
            cirr_recall_at_k(&runs, &cirr_truth(), 0),
            Err(MetricError::ZeroK)
        );
    }

    #[test]
    fn fashioniq_averages_like_the_papers() {
        // dress: ranks 1 and 11 -> R@10 1/2, R@50 1.
        let dress_gt = truth(&[("d1", &["t"]), ("d2", &["t"])]);
        let dress = vec![
            Ranked::new("d1", at_rank("t", 1)),
            Ranked::new("d2", at_rank("t", 11)),
        ];
        // shirt: ranks 51 and 20 -> R@10 0, R@50 1/2.
        let shirt_gt = truth(&[("s1", &["t"]), ("s2", &["t"])]);
        let shirt = vec![
            Ranked::new("s1", at_rank("t", 51)),
            Ranked::new("s2", at_rank("t", 20)),
        ];
        // toptee: rank 3 -> R@10 1, R@50 1.
        let toptee_gt = truth(&[("t1", &["t"])]);
        let toptee = vec![Ranked::new("t1", at_rank("t", 3))];
        let s = fashioniq_scores(&[
            FashionIqCategoryRuns {
                category: "dress",
                runs: &dress,
                truth: &dress_gt,
            },
            FashionIqCategoryRuns {
                category: "shirt",
                runs: &shirt,
                truth: &shirt_gt,
            },
            FashionIqCategoryRuns {
                category: "toptee",
                runs: &toptee,
                truth: &toptee_gt,
            },
        ])
        .unwrap();
        let per: Vec<(f64, f64)> = s
            .categories
            .iter()
            .map(|c| (c.recall_at_10, c.recall_at_50))
            .collect();
        assert_eq!(per, [(0.5, 1.0), (0.0, 0.5), (1.0, 1.0)]);
        assert!(close(s.mean_recall_at_10, 0.5));
        assert!(close(s.mean_recall_at_50, 2.5 / 3.0));
        // mean of (0.75, 0.25, 1.0)
        assert!(close(s.average, 2.0 / 3.0));
        let m = s.metrics();
        assert_eq!(m.len(), 9);
        assert_eq!(m[0].name, "dress R@10");
        assert_eq!(m[8].name, "average");
    }

    #[test]
    fn fashioniq_rejects_empty_and_repeated_categories() {
        assert_eq!(fashioniq_scores(&[]), Err(MetricError::NoCategories));
        let gt = truth(&[("q", &["t"])]);
        let runs = vec![Ranked::new("q", ["t"])];
        let c = FashionIqCategoryRuns {
            category: "dress",
            runs: &runs,
            truth: &gt,
        };
        assert_eq!(
            fashioniq_scores(&[c, c]),
            Err(MetricError::DuplicateCategory("dress".into()))
        );
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        // 1..=100 ms, shuffled: rank ceil(p) is p ms.
        let mut d: Vec<Duration> = (1..=100).map(ms).collect();
        d.reverse();
        d.swap(3, 70);
        let s = latency_summary(&d).unwrap();
        assert_eq!(
            (s.count, s.p50, s.p95, s.p99, s.max),
            (100, ms(50), ms(95), ms(99), ms(100))
        );
        // Five values: p50 -> rank ceil(2.5) = 3, p95 -> ceil(4.75) = 5, p99 -> 5.
        let s = latency_summary(&[ms(40), ms(10), ms(50), ms(30), ms(20)]).unwrap();
        assert_eq!((s.p50, s.p95, s.p99), (ms(30), ms(50), ms(50)));
        // Ten values: p50 -> rank 5 (the lower middle, no interpolation), p95 -> rank 10.
        let d: Vec<Duration> = (1..=10).map(|v| ms(v * 10)).collect();
        assert_eq!(percentile(&d, 50).unwrap(), ms(50));
        assert_eq!(percentile(&d, 95).unwrap(), ms(100));
        assert_eq!(percentile(&d, 1).unwrap(), ms(10));
        // One value is every percentile.
        let s = latency_summary(&[ms(7)]).unwrap();
        assert_eq!((s.p50, s.p99), (ms(7), ms(7)));
    }

    #[test]
    fn percentile_errors() {
        assert_eq!(latency_summary(&[]), Err(MetricError::NoDurations));
        assert_eq!(percentile(&[], 50), Err(MetricError::NoDurations));
        assert_eq!(
            percentile(&[ms(1)], 0),
            Err(MetricError::InvalidPercentile(0))
        );
        assert_eq!(
            percentile(&[ms(1)], 101),
            Err(MetricError::InvalidPercentile(101))
        );
    }

    #[test]
    fn latency_json_is_in_milliseconds_and_rejects_negative_values() {
        let s = latency_summary(&[ms(2), Duration::from_micros(1500)]).unwrap();
        let v: serde_json::Value = serde_json::to_value(s).unwrap();
        assert_eq!(v["p50_ms"], 1.5);
        assert_eq!(v["max_ms"], 2.0);
        let back: LatencySummary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        let bad = r#"{"count":1,"p50_ms":-1,"p95_ms":1,"p99_ms":1,"max_ms":1}"#;
        assert!(serde_json::from_str::<LatencySummary>(bad).is_err());
    }

    #[test]
    fn nearest_rank_stays_in_bounds() {
        assert_eq!(nearest_rank(1, 1), 1);
        assert_eq!(nearest_rank(1, 100), 1);
        assert_eq!(nearest_rank(usize::MAX, 100), usize::MAX);
        assert_eq!(nearest_rank(usize::MAX, 1), usize::MAX.div_ceil(100));
    }
}
