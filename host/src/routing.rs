//! What a route can point at: one strategy version, a tenant's pipeline, or an experiment
//! between arms. Declarations are data (JSON), checked when set; the checks here need no host
//! (shapes, names, numbers), and [`crate::Quarry`] checks the rest (strategies, schemas,
//! models, cycles).

use crate::plugins::host_api::Grants;
use crate::plugins::registry::Route;
use crate::store::validate_name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// What serves a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// One strategy version with its config and grants.
    Strategy(Route),
    /// A pipeline the tenant declared (see [`Pipeline`]), by name.
    Pipeline { pipeline: String },
    /// Weighted arms, each a strategy or a pipeline.
    Experiment { experiment: Experiment },
}

impl Target {
    /// How responses and listings name it: `name@version`, `pipeline:<name>` or
    /// `experiment:<name>`.
    pub fn describe(&self) -> String {
        match self {
            Target::Strategy(route) => route.strategy.clone(),
            Target::Pipeline { pipeline } => format!("pipeline:{pipeline}"),
            Target::Experiment { experiment } => format!("experiment:{}", experiment.name),
        }
    }

    /// The strategy route, when that is what it is.
    pub fn strategy(&self) -> Option<&Route> {
        match self {
            Target::Strategy(route) => Some(route),
            _ => None,
        }
    }

    /// The strategy versions and pipelines this target names directly.
    pub fn named(&self) -> Vec<Named<'_>> {
        match self {
            Target::Strategy(route) => vec![Named::Strategy(&route.strategy)],
            Target::Pipeline { pipeline } => vec![Named::Pipeline(pipeline)],
            Target::Experiment { experiment } => experiment.arms.iter().map(|arm| arm.runs.named()).collect(),
        }
    }

    /// An experiment's arms, each with where it sits in the declaration.
    pub fn parts(&self) -> Vec<(String, &Runs)> {
        match self {
            Target::Strategy(_) | Target::Pipeline { .. } => Vec::new(),
            Target::Experiment { experiment } => experiment.arms.iter().enumerate().map(|(i, arm)| (format!("experiment.arms[{i}]"), &arm.runs)).collect(),
        }
    }
}

/// A target as the API and the CLI declare it: exactly one of a `strategy` (with `config`,
/// `models`, `collections` and `strategies` beside it), a `pipeline`, or an `experiment`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "DeclaredTarget")]
pub struct Declared(pub Target);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredTarget {
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    models: BTreeSet<String>,
    #[serde(default)]
    collections: BTreeSet<String>,
    #[serde(default)]
    strategies: BTreeSet<String>,
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    experiment: Option<Experiment>,
}

impl TryFrom<DeclaredTarget> for Declared {
    type Error = String;
    fn try_from(d: DeclaredTarget) -> Result<Self, String> {
        const ONE: &str = "a route names exactly one of `strategy`, `pipeline` and `experiment`; `config`, `models`, `collections` and `strategies` go with `strategy` (arms and stages carry their own)";
        let beside = d.config.is_some() || !d.models.is_empty() || !d.collections.is_empty() || !d.strategies.is_empty();
        match (d.strategy.is_some(), d.pipeline.is_some(), d.experiment) {
            (false, false, Some(experiment)) if !beside => Ok(Declared(Target::Experiment { experiment })),
            (_, _, Some(_)) | (true, true, None) => Err(ONE.into()),
            (false, false, None) => Err("a route names a `strategy` (with `config`, `models`, `collections`), a `pipeline`, or an `experiment`".into()),
            _ => {
                let runs = RunsDecl { strategy: d.strategy, config: d.config, models: d.models, collections: d.collections, strategies: d.strategies, pipeline: d.pipeline, ..Default::default() };
                Runs::try_from(runs).map(|runs| Declared(runs.into_target()))
            }
        }
    }
}

/// What a stage or an arm runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Runs {
    Strategy(Route),
    Pipeline(String),
}

/// A strategy version or a pipeline, as a declaration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named<'a> {
    Strategy(&'a str),
    Pipeline(&'a str),
}

impl Runs {
    pub fn named(&self) -> Named<'_> {
        match self {
            Runs::Strategy(route) => Named::Strategy(&route.strategy),
            Runs::Pipeline(name) => Named::Pipeline(name),
        }
    }

    /// The label a stage gets when its declaration names none: the strategy's name without its
    /// version, or the pipeline's name.
    fn default_label(&self) -> String {
        match self {
            Runs::Strategy(route) => route.strategy.split('@').next().unwrap_or_default().to_string(),
            Runs::Pipeline(name) => name.clone(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Runs::Strategy(route) => route.strategy.clone(),
            Runs::Pipeline(name) => format!("pipeline:{name}"),
        }
    }

    pub fn into_target(self) -> Target {
        match self {
            Runs::Strategy(route) => Target::Strategy(route),
            Runs::Pipeline(pipeline) => Target::Pipeline { pipeline },
        }
    }
}

/// The JSON form of a stage or an arm: a strategy with its config and grants, or a pipeline;
/// stages may have a `name`, arms have a `name` and a `weight`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsDecl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    models: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    collections: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    strategies: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pipeline: Option<String>,
}

impl TryFrom<RunsDecl> for Runs {
    type Error = String;
    /// The `name` and `weight` are the stage's or arm's, and are left to them.
    fn try_from(d: RunsDecl) -> Result<Self, String> {
        match (d.strategy, d.pipeline) {
            (Some(strategy), None) => {
                let config = d.config.unwrap_or_else(|| serde_json::json!({}));
                if !config.is_object() {
                    return Err("`config` must be a JSON object".into());
                }
                Ok(Runs::Strategy(Route { strategy, config, grants: Grants { models: d.models, collections: d.collections, strategies: d.strategies } }))
            }
            (None, Some(pipeline)) => {
                if d.config.is_some() || !d.models.is_empty() || !d.collections.is_empty() || !d.strategies.is_empty() {
                    return Err(format!("pipeline `{pipeline}` takes no `config`, `models`, `collections` or `strategies`: its stages carry their own"));
                }
                Ok(Runs::Pipeline(pipeline))
            }
            (Some(_), Some(_)) => Err("name a `strategy` or a `pipeline`, not both".into()),
            (None, None) => Err("name a `strategy` (`name@version`) or a `pipeline`".into()),
        }
    }
}

impl From<Runs> for RunsDecl {
    fn from(runs: Runs) -> Self {
        match runs {
            Runs::Strategy(route) => RunsDecl {
                strategy: Some(route.strategy),
                config: Some(route.config),
                models: route.grants.models,
                collections: route.grants.collections,
                strategies: route.grants.strategies,
                ..Default::default()
            },
            Runs::Pipeline(name) => RunsDecl { pipeline: Some(name), ..Default::default() },
        }
    }
}

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RunsDecl", into = "RunsDecl")]
pub struct Stage {
    /// The stage's name in hit features and metrics (defaults to the strategy's or pipeline's name).
    pub label: String,
    pub runs: Runs,
}

impl TryFrom<RunsDecl> for Stage {
    type Error = String;
    fn try_from(d: RunsDecl) -> Result<Self, String> {
        if d.weight.is_some() {
            return Err("a pipeline stage has no `weight` (fusion weights go in the fusion's `weights`)".into());
        }
        let name = d.name.clone();
        let runs = Runs::try_from(d)?;
        let label = name.unwrap_or_else(|| runs.default_label());
        Ok(Stage { label, runs })
    }
}

impl From<Stage> for RunsDecl {
    fn from(stage: Stage) -> Self {
        RunsDecl { name: Some(stage.label), ..stage.runs.into() }
    }
}

/// A pipeline of strategies, declared as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Pipeline {
    /// `first`'s top `depth` hits, re-ranked by `then` (a strategy whose `rerank` scores).
    Cascade(Cascade),
    /// Several stages' hits fused into one list.
    Fusion(Fusion),
    /// `primary`, or `fallback` when `primary` fails or passes its deadline.
    Fallback(Fallback),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cascade {
    pub first: Stage,
    pub then: Stage,
    /// Candidates taken from `first` (100 by default).
    #[serde(default = "default_depth")]
    pub depth: u32,
}

fn default_depth() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    /// Reciprocal-rank fusion: Σ weight / (k + rank).
    #[default]
    Rrf,
    /// Σ weight × the stage's score min–max normalised over its hits.
    Weighted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fusion {
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub method: FusionMethod,
    /// RRF's rank constant (60 by default).
    #[serde(default = "default_rrf_k")]
    pub k: f64,
    /// One weight per stage (all 1 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    /// Hits asked of each stage (the query's `k` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
}

fn default_rrf_k() -> f64 {
    60.0
}

impl Fusion {
    pub fn weights(&self) -> Vec<f64> {
        self.weights.clone().unwrap_or_else(|| vec![1.0; self.stages.len()])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    pub primary: Stage,
    pub fallback: Stage,
    /// The primary's own deadline; past it, the fallback answers (the host's deadline by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// Most stages one fusion may fuse (each adds a feature to every hit).
pub const MAX_FUSED_STAGES: usize = 8;
/// Most pipelines one call may pass through, nested.
pub const MAX_PIPELINE_DEPTH: usize = 4;
/// Most strategy calls one pipeline may make for a search (counting every branch).
pub const MAX_PIPELINE_CALLS: usize = 16;
/// Most pipelines one tenant may declare.
pub const MAX_PIPELINES_PER_TENANT: usize = 256;
/// Most arms an experiment may have.
pub const MAX_ARMS: usize = 8;

impl Pipeline {
    /// Its stages, each with where it sits in the declaration.
    pub fn stages(&self) -> Vec<(String, &Stage)> {
        match self {
            Pipeline::Cascade(c) => vec![("cascade.first".into(), &c.first), ("cascade.then".into(), &c.then)],
            Pipeline::Fusion(f) => f.stages.iter().enumerate().map(|(i, s)| (format!("fusion.stages[{i}]"), s)).collect(),
            Pipeline::Fallback(f) => vec![("fallback.primary".into(), &f.primary), ("fallback.fallback".into(), &f.fallback)],
        }
    }

    /// Check what needs no host: labels, counts, weights and numbers. `max_hits` (hits a
    /// strategy may be asked for, and candidates a re-ranker may be handed) and `deadline_ms`
    /// are the host's limits.
    pub fn check_shape(&self, max_hits: usize, deadline_ms: u64) -> Result<(), String> {
        let stages = self.stages();
        let mut labels = HashSet::new();
        for (at, stage) in &stages {
            if stage.label.len() > 64 || validate_name("stage name", &stage.label).is_err() {
                return Err(format!(
                    "{at}.name: `{}` is not a stage name; use 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`",
                    crate::printable::printable(&stage.label, 64)
                ));
            }
            if !labels.insert(stage.label.as_str()) {
                return Err(format!("{at}: another stage is also named `{}`; give each stage a distinct `name`", stage.label));
            }
        }
        match self {
            Pipeline::Cascade(c) => {
                if c.depth == 0 || c.depth as usize > max_hits {
                    return Err(format!("cascade.depth: {} is out of range; take 1 to {max_hits} candidates (the host's `max_hits` and `max_batch`)", c.depth));
                }
                if matches!(c.then.runs, Runs::Pipeline(_)) {
                    return Err("cascade.then: a cascade's second stage re-ranks through `rerank`, so it must be a strategy, not a pipeline".into());
                }
            }
            Pipeline::Fusion(f) => {
                if !(2..=MAX_FUSED_STAGES).contains(&f.stages.len()) {
                    return Err(format!("fusion.stages: {} stages; fuse 2 to {MAX_FUSED_STAGES}", f.stages.len()));
                }
                if !(f.k.is_finite() && f.k > 0.0 && f.k <= 1e6) {
                    return Err(format!("fusion.k: {} is not a rank constant; use a number in (0, 1000000] (60 is usual)", f.k));
                }
                if let Some(weights) = &f.weights {
                    check_weights("fusion.weights", weights, f.stages.len())?;
                }
                if let Some(depth) = f.depth
                    && (depth == 0 || depth as usize > max_hits)
                {
                    return Err(format!("fusion.depth: {depth} is out of range; ask each stage for 1 to {max_hits} hits"));
                }
            }
            Pipeline::Fallback(f) => {
                if let Some(ms) = f.deadline_ms
                    && (ms == 0 || ms > deadline_ms)
                {
                    return Err(format!("fallback.deadline_ms: {ms} is out of range; use 1 to {deadline_ms} (the host's deadline)"));
                }
            }
        }
        Ok(())
    }
}

fn check_weights(at: &str, weights: &[f64], count: usize) -> Result<(), String> {
    if weights.len() != count {
        return Err(format!("{at}: {} weights for {count} entries; give one weight each", weights.len()));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w >= 0.0 && **w <= 1e9)) {
        return Err(format!("{at}[{i}]: {w} is not a weight; use a finite number from 0 to 1e9"));
    }
    if weights.iter().sum::<f64>() <= 0.0 {
        return Err(format!("{at}: the weights sum to 0; give at least one a positive weight"));
    }
    Ok(())
}

/// An experiment: callers are split between arms by weight (sticky by their key), or, with
/// `interleave`, two arms' lists are merged by team draft for every call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the experiment in metrics, and seeds assignment and the interleaving coin.
    pub name: String,
    pub arms: Vec<Arm>,
    #[serde(default)]
    pub interleave: bool,
}

/// One arm: a strategy or a pipeline, with its share of the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RunsDecl", into = "RunsDecl")]
pub struct Arm {
    pub name: String,
    pub weight: f64,
    pub runs: Runs,
}

impl TryFrom<RunsDecl> for Arm {
    type Error = String;
    fn try_from(d: RunsDecl) -> Result<Self, String> {
        let name = d.name.clone().ok_or("every arm needs a `name`")?;
        let weight = d.weight.unwrap_or(1.0);
        let runs = Runs::try_from(d).map_err(|e| format!("arm `{}`: {e}", crate::printable::printable(&name, 64)))?;
        Ok(Arm { name, weight, runs })
    }
}

impl From<Arm> for RunsDecl {
    fn from(arm: Arm) -> Self {
        RunsDecl { name: Some(arm.name), weight: Some(arm.weight), ..arm.runs.into() }
    }
}

impl Experiment {
    /// Check what needs no host: names, arm count, weights, and two arms to interleave.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.name.len() > 64 || validate_name("experiment", &self.name).is_err() {
            return Err(format!(
                "experiment.name: `{}` is not an experiment name; use 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`",
                crate::printable::printable(&self.name, 64)
            ));
        }
        if !(2..=MAX_ARMS).contains(&self.arms.len()) {
            return Err(format!("experiment.arms: {} arms; an experiment has 2 to {MAX_ARMS}", self.arms.len()));
        }
        if self.interleave && self.arms.len() != 2 {
            return Err(format!("experiment.interleave: team-draft interleaving compares exactly 2 arms, not {}", self.arms.len()));
        }
        let mut names = HashSet::new();
        for (i, arm) in self.arms.iter().enumerate() {
            if arm.name.len() > 64 || validate_name("arm", &arm.name).is_err() {
                return Err(format!(
                    "experiment.arms[{i}].name: `{}` is not an arm name; use 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`",
                    crate::printable::printable(&arm.name, 64)
                ));
            }
            if !names.insert(arm.name.as_str()) {
                return Err(format!("experiment.arms[{i}].name: another arm is also named `{}`", arm.name));
            }
        }
        if !self.interleave {
            check_weights("experiment.arms[].weight", &self.weights(), self.arms.len())?;
        }
        Ok(())
    }

    pub fn weights(&self) -> Vec<f64> {
        self.arms.iter().map(|a| a.weight).collect()
    }

    pub fn arm(&self, name: &str) -> Option<&Arm> {
        self.arms.iter().find(|a| a.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(json: serde_json::Value) -> Result<Pipeline, String> {
        serde_json::from_value::<Pipeline>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn declarations_read_and_write_the_same_json() {
        let declared = serde_json::json!({"fusion": {"stages": [
            {"strategy": "dense@0.3.0", "config": {"text-model": "m"}, "models": ["m"]},
            {"name": "coarse", "pipeline": "other"}
        ], "method": "rrf", "k": 30.0}});
        let p = pipeline(declared).unwrap();
        let Pipeline::Fusion(f) = &p else { panic!("{p:?}") };
        assert_eq!(f.stages[0].label, "dense");
        assert_eq!(f.stages[1].runs, Runs::Pipeline("other".into()));
        let again: Pipeline = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(again, p);
        let target: Target = serde_json::from_value(serde_json::json!({"experiment": {"name": "e", "arms": [
            {"name": "a", "weight": 2, "strategy": "x@1.0.0"}, {"name": "b", "pipeline": "p"}]}}))
        .unwrap();
        assert_eq!(serde_json::from_value::<Target>(serde_json::to_value(&target).unwrap()).unwrap(), target);
        let route: Target = serde_json::from_value(serde_json::json!({"strategy": "x@1.0.0", "config": {}, "grants": {"models": ["m"]}})).unwrap();
        assert!(matches!(route, Target::Strategy(_)));
    }

    #[test]
    fn a_declared_route_is_one_strategy_pipeline_or_experiment() {
        let declared = |json| serde_json::from_value::<Declared>(json).map(|d| d.0).map_err(|e| e.to_string());
        let route = declared(serde_json::json!({"strategy": "x@1.0.0", "models": ["m"], "strategies": ["y@1.0.0"]})).unwrap();
        let Target::Strategy(route) = route else { panic!("{route:?}") };
        assert_eq!((route.config.clone(), route.grants.strategies.len()), (serde_json::json!({}), 1));
        assert_eq!(declared(serde_json::json!({"pipeline": "p"})).unwrap(), Target::Pipeline { pipeline: "p".into() });
        assert!(matches!(declared(serde_json::json!({"experiment": {"name": "e", "arms": []}})).unwrap(), Target::Experiment { .. }));
        for both in [serde_json::json!({"pipeline": "p", "strategy": "x@1.0.0"}), serde_json::json!({"experiment": {"name": "e", "arms": []}, "models": ["m"]})] {
            assert!(declared(both).unwrap_err().contains("exactly one"));
        }
        assert!(declared(serde_json::json!({})).unwrap_err().contains("names a `strategy`"));
        assert!(declared(serde_json::json!({"strategy": "x@1.0.0", "config": []})).unwrap_err().contains("`config` must be a JSON object"));
        assert!(declared(serde_json::json!({"stratgy": "x@1.0.0"})).unwrap_err().contains("stratgy"));
    }

    #[test]
    fn malformed_declarations_say_where_and_what_to_fix() {
        let both = pipeline(serde_json::json!({"cascade": {"first": {"strategy": "a@1.0.0", "pipeline": "p"}, "then": {"strategy": "b@1.0.0"}}}));
        assert!(both.unwrap_err().contains("not both"));
        let unknown = pipeline(serde_json::json!({"fusion": {"stages": [], "wieghts": [1]}})).unwrap_err();
        assert!(unknown.contains("wieghts"), "{unknown}");
        let shape = |json| pipeline(json).unwrap().check_shape(1000, 2000).unwrap_err();
        assert!(shape(serde_json::json!({"fusion": {"stages": [{"strategy": "a@1.0.0"}]}})).contains("fuse 2 to 8"));
        assert!(shape(serde_json::json!({"fusion": {"stages": [{"strategy": "a@1.0.0"}, {"strategy": "a@2.0.0"}]}})).contains("distinct `name`"));
        let weights = shape(serde_json::json!({"fusion": {"stages": [{"strategy": "a@1.0.0"}, {"strategy": "b@1.0.0"}], "weights": [0, 0]}}));
        assert!(weights.contains("fusion.weights") && weights.contains("sum to 0"), "{weights}");
        assert!(shape(serde_json::json!({"cascade": {"first": {"strategy": "a@1.0.0"}, "then": {"pipeline": "p"}}})).contains("cascade.then"));
        assert!(shape(serde_json::json!({"cascade": {"first": {"strategy": "a@1.0.0"}, "then": {"strategy": "b@1.0.0"}, "depth": 0}})).contains("cascade.depth"));
        assert!(shape(serde_json::json!({"fallback": {"primary": {"strategy": "a@1.0.0"}, "fallback": {"strategy": "b@1.0.0"}, "deadline_ms": 5000}})).contains("deadline_ms"));
    }

    #[test]
    fn experiments_need_two_named_arms_and_a_positive_weight() {
        let exp = |json| serde_json::from_value::<Experiment>(json).unwrap().check_shape();
        let arm = |name: &str, weight: f64| serde_json::json!({"name": name, "weight": weight, "strategy": "x@1.0.0"});
        assert!(exp(serde_json::json!({"name": "e", "arms": [arm("a", 1.0), arm("b", 0.0)]})).is_ok());
        assert!(exp(serde_json::json!({"name": "e", "arms": [arm("a", 0.0), arm("b", 0.0)]})).unwrap_err().contains("sum to 0"));
        assert!(exp(serde_json::json!({"name": "e", "arms": [arm("a", -1.0), arm("b", 1.0)]})).unwrap_err().contains("arms[].weight[0]"));
        assert!(exp(serde_json::json!({"name": "e", "arms": [arm("a", 1.0)]})).unwrap_err().contains("2 to 8"));
        assert!(exp(serde_json::json!({"name": "e", "arms": [arm("a", 1.0), arm("a", 1.0)]})).unwrap_err().contains("also named"));
        assert!(exp(serde_json::json!({"name": "e/../x", "arms": [arm("a", 1.0), arm("b", 1.0)]})).unwrap_err().contains("experiment.name"));
        let three = serde_json::json!({"name": "e", "interleave": true, "arms": [arm("a", 1.0), arm("b", 1.0), arm("c", 1.0)]});
        assert!(exp(three).unwrap_err().contains("exactly 2 arms"));
    }
}
