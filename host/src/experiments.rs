//! What running experiments have seen: per-arm calls, errors, latency and click-through, the
//! interleaving outcomes, and the impressions that clicks are credited to.
//!
//! Kept in memory: a restart starts the counts afresh (assignment stays sticky: it is a hash).
//! Impressions are bounded per tenant; the oldest go first, and feedback for one that is gone
//! is refused as unknown.

use quarry_compose::interleave::{self, Outcome, Team};
use quarry_compose::stats::{ArmStats, Quantiles, Verdict, verdict};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Most clicks one feedback call may carry.
pub const MAX_CLICKS: usize = 1000;
/// Positions of an impression kept for crediting clicks: clicks further down are ignored, and
/// an impression costs at most this many ids of memory.
pub const MAX_SHOWN: usize = 50;

/// One experiment's report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExperimentReport {
    pub name: String,
    pub interleave: bool,
    pub arms: Vec<ArmReport>,
    /// For interleaving experiments.
    pub interleaving: Option<InterleavingReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ArmReport {
    pub name: String,
    pub weight: f64,
    /// What the arm runs: `name@version` or `pipeline:<name>`.
    pub runs: String,
    pub calls: u64,
    pub errors: u64,
    pub latency_ms: LatencyReport,
    pub impressions: u64,
    /// Impressions with a click on one of this arm's hits.
    pub clicks: u64,
    pub ctr: f64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LatencyReport {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl From<Quantiles> for LatencyReport {
    fn from(q: Quantiles) -> Self {
        LatencyReport { p50: q.p50, p95: q.p95, p99: q.p99 }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InterleavingReport {
    pub impressions: u64,
    /// Impressions won, by arm name.
    pub wins: BTreeMap<String, u64>,
    pub ties: u64,
    /// Δ = (wins of the first arm + ties / 2) / impressions − 0.5.
    pub delta: f64,
    /// 95% confidence interval of Δ.
    pub ci: (f64, f64),
    /// Two-sided exact binomial test on the untied impressions.
    pub p_value: f64,
}

/// What feedback did to an impression.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedbackOutcome {
    pub impression: String,
    /// The arm the impression's clicks now favour, `tie`, or none for an impression that was
    /// not interleaved.
    pub outcome: Option<String>,
}

#[derive(Default)]
struct State {
    /// The experiment's declaration as last seen: a different one starts the counts afresh.
    declaration: Option<crate::routing::Experiment>,
    arms: BTreeMap<String, ArmStats>,
    wins: [u64; 2],
    ties: u64,
}

struct Impression {
    tenant: String,
    /// Qualified collection and experiment name: the state it counts in.
    state: (String, String),
    /// The arms (two when interleaved, one otherwise).
    arms: Vec<String>,
    shown: Vec<(String, Team)>,
    clicks: HashSet<String>,
}

impl Impression {
    fn interleaved(&self) -> bool {
        self.arms.len() == 2
    }

    fn outcome(&self) -> Outcome {
        interleave::credit(&self.shown, &self.clicks)
    }

    /// Which of its arms had a hit clicked.
    fn clicked(&self) -> Vec<bool> {
        let mut clicked = vec![false; self.arms.len()];
        for (id, team) in &self.shown {
            if self.clicks.contains(id) {
                clicked[usize::from(*team == Team::B).min(self.arms.len() - 1)] = true;
            }
        }
        clicked
    }
}

/// Every experiment's counts and the recent impressions, for one host.
pub struct Experiments {
    states: Mutex<HashMap<(String, String), State>>,
    impressions: Mutex<Impressions>,
    max_impressions_per_tenant: usize,
}

#[derive(Default)]
struct Impressions {
    by_id: HashMap<String, Impression>,
    order: HashMap<String, VecDeque<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Experiments {
    pub fn new(max_impressions_per_tenant: usize) -> Self {
        Experiments { states: Mutex::default(), impressions: Mutex::default(), max_impressions_per_tenant }
    }

    fn with_state<R>(&self, collection: &str, experiment: &crate::routing::Experiment, f: impl FnOnce(&mut State) -> R) -> R {
        let mut states = lock(&self.states);
        let state = states.entry((collection.to_string(), experiment.name.clone())).or_default();
        if state.declaration.as_ref() != Some(experiment) {
            *state = State { declaration: Some(experiment.clone()), ..Default::default() };
        }
        f(state)
    }

    /// Record one call of `arm`.
    pub fn record_call(&self, collection: &str, experiment: &crate::routing::Experiment, arm: &str, latency: Duration, failed: bool) {
        self.with_state(collection, experiment, |s| s.arms.entry(arm.to_string()).or_default().record(latency, failed));
    }

    /// Keep an impression: the hits shown, each with the arm (team) that picked it.
    pub fn record_impression(&self, tenant: &str, collection: &str, experiment: &crate::routing::Experiment, id: &str, arms: Vec<String>, shown: Vec<(String, Team)>) {
        self.with_state(collection, experiment, |s| {
            for arm in &arms {
                s.arms.entry(arm.clone()).or_default().impressions += 1;
            }
            if arms.len() == 2 {
                s.ties += 1;
            }
        });
        let mut impressions = lock(&self.impressions);
        let order = impressions.order.entry(tenant.to_string()).or_default();
        order.push_back(id.to_string());
        let evicted = if order.len() > self.max_impressions_per_tenant { order.pop_front() } else { None };
        if let Some(old) = evicted {
            impressions.by_id.remove(&old);
        }
        let mut shown = shown;
        shown.truncate(MAX_SHOWN);
        let impression = Impression { tenant: tenant.to_string(), state: (collection.to_string(), experiment.name.clone()), arms, shown, clicks: HashSet::new() };
        impressions.by_id.insert(id.to_string(), impression);
    }

    /// Credit clicks to an impression of `tenant`'s. Clicks add up over calls; ids the
    /// impression did not show are ignored. `None` when the tenant has no such impression (never
    /// served, another tenant's, or evicted).
    pub fn feedback(&self, tenant: &str, id: &str, clicks: &[String]) -> Option<FeedbackOutcome> {
        let mut impressions = lock(&self.impressions);
        let impression = impressions.by_id.get_mut(id).filter(|i| i.tenant == tenant)?;
        let (before, clicked_before) = (impression.outcome(), impression.clicked());
        let shown: HashSet<&str> = impression.shown.iter().map(|(id, _)| id.as_str()).collect();
        let new: Vec<String> = clicks.iter().filter(|c| shown.contains(c.as_str())).cloned().collect();
        impression.clicks.extend(new);
        let (after, clicked_after) = (impression.outcome(), impression.clicked());
        let interleaved = impression.interleaved();
        let arms = impression.arms.clone();
        let key = impression.state.clone();
        drop(impressions);
        let mut states = lock(&self.states);
        if let Some(state) = states.get_mut(&key) {
            for (arm, (was, is)) in arms.iter().zip(clicked_before.iter().zip(&clicked_after)) {
                if !was && *is {
                    state.arms.entry(arm.clone()).or_default().clicked += 1;
                }
            }
            if interleaved && before != after {
                match before {
                    Outcome::Tie => state.ties -= 1,
                    Outcome::Win(team) => state.wins[usize::from(team == Team::B)] -= 1,
                }
                match after {
                    Outcome::Tie => state.ties += 1,
                    Outcome::Win(team) => state.wins[usize::from(team == Team::B)] += 1,
                }
            }
        }
        let outcome = interleaved.then(|| match after {
            Outcome::Tie => "tie".to_string(),
            Outcome::Win(team) => arms[usize::from(team == Team::B)].clone(),
        });
        Some(FeedbackOutcome { impression: id.to_string(), outcome })
    }

    /// Forget the counts of `collection`'s experiments other than `keep` (names).
    pub fn retain(&self, collection: &str, keep: &[String]) {
        lock(&self.states).retain(|(c, name), _| c != collection || keep.contains(name));
    }

    /// The report of `experiment` on `collection`, arms in declaration order.
    pub fn report(&self, collection: &str, experiment: &crate::routing::Experiment) -> ExperimentReport {
        self.with_state(collection, experiment, |s| {
            let arms = experiment
                .arms
                .iter()
                .map(|arm| {
                    let stats = s.arms.get(&arm.name).cloned().unwrap_or_default();
                    ArmReport {
                        name: arm.name.clone(),
                        weight: arm.weight,
                        runs: arm.runs.describe(),
                        calls: stats.calls,
                        errors: stats.errors,
                        latency_ms: stats.latency_ms().into(),
                        impressions: stats.impressions,
                        clicks: stats.clicked,
                        ctr: stats.click_through(),
                    }
                })
                .collect();
            let interleaving = experiment.interleave.then(|| {
                let Verdict { impressions, delta, ci, p_value, .. } = verdict(s.wins[0], s.wins[1], s.ties);
                let wins = experiment.arms.iter().zip(s.wins).map(|(a, w)| (a.name.clone(), w)).collect();
                InterleavingReport { impressions, wins, ties: s.ties, delta, ci, p_value }
            });
            ExperimentReport { name: experiment.name.clone(), interleave: experiment.interleave, arms, interleaving }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(interleave: bool) -> crate::routing::Experiment {
        serde_json::from_value(serde_json::json!({"name": "e", "interleave": interleave, "arms": [
            {"name": "a", "strategy": "x@1.0.0"}, {"name": "b", "strategy": "y@1.0.0"}]}))
        .unwrap()
    }

    fn shown(pairs: &[(&str, Team)]) -> Vec<(String, Team)> {
        pairs.iter().map(|(id, t)| (id.to_string(), *t)).collect()
    }

    #[test]
    fn clicks_move_an_impression_from_tie_to_a_win_and_count_once_per_arm() {
        let exps = Experiments::new(10);
        let e = experiment(true);
        exps.record_impression("t", "t/c", &e, "i1", vec!["a".into(), "b".into()], shown(&[("p", Team::A), ("q", Team::B)]));
        let report = exps.report("t/c", &e).interleaving.unwrap();
        assert_eq!((report.impressions, report.ties), (1, 1));
        let out = exps.feedback("t", "i1", &["q".into()]).unwrap();
        assert_eq!(out.outcome.as_deref(), Some("b"));
        let out = exps.feedback("t", "i1", &["q".into(), "p".into(), "never-shown".into()]).unwrap();
        assert_eq!(out.outcome.as_deref(), Some("tie"));
        let report = exps.report("t/c", &e);
        let i = report.interleaving.unwrap();
        assert_eq!((i.wins["a"], i.wins["b"], i.ties), (0, 0, 1));
        assert_eq!((report.arms[0].clicks, report.arms[1].clicks), (1, 1));
        assert_eq!(report.arms[1].ctr, 1.0);
    }

    #[test]
    fn impressions_belong_to_their_tenant_and_the_oldest_are_evicted() {
        let exps = Experiments::new(2);
        let e = experiment(false);
        for id in ["i1", "i2", "i3"] {
            exps.record_impression("t", "t/c", &e, id, vec!["a".into()], shown(&[("p", Team::A)]));
        }
        assert!(exps.feedback("t", "i1", &[]).is_none(), "evicted");
        assert!(exps.feedback("other", "i3", &["p".into()]).is_none(), "another tenant's");
        assert_eq!(exps.feedback("t", "i3", &["p".into()]).unwrap().outcome, None);
        let report = exps.report("t/c", &e);
        assert_eq!((report.arms[0].impressions, report.arms[0].clicks), (3, 1));
        assert!(report.interleaving.is_none());
    }

    #[test]
    fn a_changed_declaration_starts_the_counts_afresh() {
        let exps = Experiments::new(10);
        let e = experiment(false);
        exps.record_call("t/c", &e, "a", Duration::from_millis(5), false);
        assert_eq!(exps.report("t/c", &e).arms[0].calls, 1);
        let mut changed = e.clone();
        changed.arms[0].weight = 3.0;
        assert_eq!(exps.report("t/c", &changed).arms[0].calls, 0);
    }
}
