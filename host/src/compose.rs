//! Answering through a route's target: one strategy, a pipeline of strategies (cascade, fusion,
//! fallback), or an experiment between arms; and setting, promoting and rolling back targets.
//!
//! Every strategy call in a pipeline runs under its own route's grants and config, within the
//! host's per-call limits and what is left of the request's deadline. Fusion stages and
//! interleaved arms run in parallel.

use crate::api::{Quarry, SearchHit, SearchRequest, SearchResponse};
use crate::experiments::{ExperimentReport, FeedbackOutcome, MAX_CLICKS};
use crate::plugins::CallError;
use crate::plugins::contract::Query;
use crate::plugins::registry::Route;
use crate::routing::{Experiment, FusionMethod, MAX_PIPELINE_CALLS, MAX_PIPELINE_DEPTH, MAX_PIPELINES_PER_TENANT, Pipeline, Runs, Stage, Target};
use crate::store::{qualify, split_qualified, validate_name};
use anyhow::{Context as _, Result, anyhow, bail};
use quarry_compose::interleave::Team;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request checked once for all the strategies that answer it.
pub(crate) struct Prepared {
    pub query: Query,
    pub params: serde_json::Value,
    /// `k`, capped at the host's `max_hits`.
    pub k: u32,
    pub notes: Vec<String>,
}

/// Which export answers.
#[derive(Clone, Copy)]
pub(crate) enum Export<'a> {
    Search,
    Rerank(&'a [String]),
}

/// Checked hits, best first, and the strategy versions that produced them.
pub(crate) struct Ranked {
    pub hits: Vec<SearchHit>,
    pub strategies: Vec<String>,
    pub notes: Vec<String>,
    /// How long each pipeline stage took, as `pipeline/stage`.
    pub stages: Vec<(String, Duration)>,
}

impl Ranked {
    /// Take in what another stage reported (its strategies, notes and timings).
    fn absorb(&mut self, other: Ranked) {
        self.strategies.extend(other.strategies);
        self.notes.extend(other.notes);
        self.stages.extend(other.stages);
    }
}

/// Most strategy calls nested in one another on one thread (a strategy calling a strategy ...).
pub const MAX_NESTED_CALLS: usize = 4;

scoped_tls::scoped_thread_local!(static HOST: Quarry);

thread_local! {
    /// The strategies this thread is running, outermost first.
    static RUNNING: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run a strategy call of `host`, so that the strategy may call others through it.
pub(crate) fn running<T>(host: &Quarry, strategy: &str, call: impl FnOnce() -> T) -> T {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            RUNNING.with(|r| r.borrow_mut().pop());
        }
    }
    RUNNING.with(|r| r.borrow_mut().push(strategy.to_string()));
    let _pop = Pop;
    HOST.set(host, call)
}

/// A strategy's call of another (`strategies.search`): `strategy` answers `query` on qualified
/// `collection` as that collection's route runs it, within the caller's `deadline`, while the
/// caller's compute slot is lent out (so nested calls cannot starve each other of slots).
pub(crate) fn nested_search(
    collection: &str,
    strategy: &str,
    query: Query,
    deadline: crate::capacity::Deadline,
    slot: Option<Arc<crate::capacity::Slot>>,
) -> Result<Vec<crate::plugins::contract::PluginHit>, crate::plugins::host_api::Fail> {
    use crate::plugins::contract::StrategyError;
    use crate::plugins::host_api::Fail;
    if !HOST.is_set() {
        return Err(Fail::Wit(StrategyError::Unsupported("strategies can be called only from `search`, `rerank`, `ingest` or `build`".into())));
    }
    let chain = RUNNING.with(|r| r.borrow().clone());
    if chain.iter().any(|s| s == strategy) {
        return Err(Fail::Wit(StrategyError::InvalidInput(format!("strategy calls form a cycle: {} → {strategy}; a strategy cannot call itself, directly or through others", chain.join(" → ")))));
    }
    if chain.len() >= MAX_NESTED_CALLS {
        return Err(Fail::Wit(StrategyError::InvalidInput(format!("strategy calls nest deeper than {MAX_NESTED_CALLS}: {} → {strategy}", chain.join(" → ")))));
    }
    HOST.with(|host| {
        let (tenant, name) = split_qualified(collection);
        let route = host
            .registry
            .route(collection)
            .and_then(|target| host.leaves(collection, &target).ok())
            .and_then(|leaves| leaves.into_iter().find(|r| r.strategy == strategy))
            .ok_or_else(|| {
                Fail::Wit(StrategyError::NotFound(format!(
                    "collection `{name}` of tenant `{tenant}` has no route running `{}`; route it (or a pipeline stage or experiment arm) there first",
                    crate::printable::printable(strategy, 128)
                )))
            })?;
        let params: serde_json::Value = serde_json::from_str(&query.params).unwrap_or_else(|_| serde_json::json!({}));
        let k = query.k.min(host.limits().max_hits as u32);
        let prepared = Prepared { query, params, k, notes: Vec::new() };
        let until = deadline.instant().unwrap_or_else(|| Instant::now() + Duration::from_millis(host.limits().deadline_ms));
        let call = || host.run_strategy(collection, &route, None, &prepared, k, Export::Search, Some(until));
        let result = match &slot {
            Some(slot) => slot.released(deadline, call).map_err(Fail::Expired)?,
            None => call(),
        };
        result.map(|ranked| {
            ranked.hits.into_iter().map(|h| crate::plugins::contract::PluginHit { id: h.id, score: h.score, features: h.features.into_iter().collect() }).collect()
        })
        .map_err(|e| match e {
            CallError::Strategy { error, .. } => Fail::Wit(error),
            CallError::Timeout { strategy, deadline_ms } => Fail::Expired(crate::capacity::Expired(format!("the call of {strategy} (within {deadline_ms} ms)"))),
            CallError::OverBudget(message) => Fail::OverBudget(crate::capacity::OverBudget(message)),
            other => Fail::Wit(StrategyError::Internal(other.to_string())),
        })
    })
}

/// A pipeline found by name while answering, so nested lookups see one consistent set.
type Lookup<'a> = &'a (dyn Fn(&str) -> Option<Arc<Pipeline>> + Sync);

/// What every stage of one search shares: the collection, the checked request, the deadline
/// and how pipelines are found.
#[derive(Clone, Copy)]
struct Run<'a> {
    collection: &'a str,
    prepared: &'a Prepared,
    deadline: Instant,
    lookup: Lookup<'a>,
}

impl Quarry {
    /// [`Quarry::search`] through whatever the collection is routed to.
    pub(crate) fn search_target(&self, collection: &str, request: &SearchRequest) -> Result<SearchResponse, CallError> {
        // Snapshot the route now: a concurrent swap does not affect this call.
        let target = self.route(collection)?;
        let key = qualify(collection)?;
        let prepared = self.prepare(request)?;
        let deadline = Instant::now() + Duration::from_millis(self.limits().deadline_ms);
        if request.strategy.is_some() && target.strategy().is_none() {
            return Err(CallError::Host(anyhow!(
                "collection `{collection}` is routed to {}; `strategy` picks another version only on a route to one strategy",
                target.describe()
            )));
        }
        let tenant = split_qualified(&key).0.to_string();
        let lookup = |name: &str| self.registry.pipeline(&tenant, name);
        match target.as_ref() {
            Target::Strategy(route) => {
                let ranked = self.run_strategy(&key, route, request.strategy.as_deref(), &prepared, prepared.k, Export::Search, None)?;
                Ok(self.respond(ranked, &prepared))
            }
            Target::Pipeline { pipeline } => {
                let run = Run { collection: &key, prepared: &prepared, deadline, lookup: &lookup };
                let ranked = self.run_named(run, pipeline, prepared.k, &mut Vec::new())?;
                let mut response = self.respond(ranked, &prepared);
                response.strategy = target.describe();
                Ok(response)
            }
            Target::Experiment { experiment } => self.run_experiment(&key, experiment, request, &prepared, deadline, &lookup),
        }
    }

    pub(crate) fn respond(&self, ranked: Ranked, prepared: &Prepared) -> SearchResponse {
        let mut notes = prepared.notes.clone();
        notes.extend(ranked.notes);
        let mut strategies = ranked.strategies;
        strategies.dedup();
        SearchResponse {
            strategy: strategies.first().cloned().unwrap_or_default(),
            strategies,
            experiment: None,
            arm: None,
            impression: None,
            hits: ranked.hits,
            notes,
            stage_latency: ranked.stages,
        }
    }

    fn run_runs(&self, run: Run<'_>, runs: &Runs, k: u32, path: &mut Vec<String>) -> Result<Ranked, CallError> {
        match runs {
            Runs::Strategy(route) => self.run_strategy(run.collection, route, None, run.prepared, k, Export::Search, Some(run.deadline)),
            Runs::Pipeline(name) => self.run_named(run, name, k, path),
        }
    }

    fn run_named(&self, run: Run<'_>, name: &str, k: u32, path: &mut Vec<String>) -> Result<Ranked, CallError> {
        // Declarations are checked when set; this guard keeps a call finite whatever is stored.
        if path.iter().any(|p| p == name) || path.len() >= MAX_PIPELINE_DEPTH {
            return Err(CallError::Host(anyhow!("pipeline `{name}` nests too deep or in a cycle ({} → {name}); fix the declarations", path.join(" → "))));
        }
        let pipeline = (run.lookup)(name).ok_or_else(|| CallError::Host(anyhow!("pipeline `{name}` does not exist; declare it or route elsewhere")))?;
        path.push(name.to_string());
        let result = self.run_pipeline(run, &pipeline, k, path);
        path.pop();
        result
    }

    fn run_pipeline(&self, run: Run<'_>, pipeline: &Pipeline, k: u32, path: &mut Vec<String>) -> Result<Ranked, CallError> {
        match pipeline {
            Pipeline::Cascade(c) => {
                let name = path.last().cloned().unwrap_or_default();
                let started = Instant::now();
                let mut first = self.run_runs(run, &c.first.runs, c.depth, path)?;
                first.stages.push((format!("{name}/{}", c.first.label), started.elapsed()));
                let Runs::Strategy(then) = &c.then.runs else {
                    return Err(CallError::Host(anyhow!("cascade.then must be a strategy")));
                };
                let candidates: Vec<String> = first.hits.iter().map(|h| h.id.clone()).collect();
                let first_scores: HashMap<&str, f32> = first.hits.iter().map(|h| (h.id.as_str(), h.score)).collect();
                let started = Instant::now();
                let mut second = self.run_strategy(run.collection, then, None, run.prepared, k, Export::Rerank(&candidates), Some(run.deadline))?;
                second.stages.push((format!("{name}/{}", c.then.label), started.elapsed()));
                // A re-ranker answers for the candidates only.
                second.hits.retain(|h| first_scores.contains_key(h.id.as_str()));
                for hit in &mut second.hits {
                    hit.features = BTreeMap::from([(c.first.label.clone(), first_scores[hit.id.as_str()]), (c.then.label.clone(), hit.score)]);
                }
                let hits = std::mem::take(&mut second.hits);
                first.hits.clear();
                first.absorb(second);
                first.hits = hits;
                Ok(first)
            }
            Pipeline::Fusion(f) => {
                let depth = f.depth.unwrap_or(k);
                let results: Vec<Result<Ranked, CallError>> = std::thread::scope(|scope| {
                    let handles: Vec<_> = f
                        .stages
                        .iter()
                        .map(|stage| {
                            let mut path = path.clone();
                            scope.spawn(move || {
                                let started = Instant::now();
                                let mut ranked = self.run_runs(run, &stage.runs, depth, &mut path)?;
                                ranked.stages.push((format!("{}/{}", path.last().map_or("", String::as_str), stage.label), started.elapsed()));
                                Ok(ranked)
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(CallError::Host(anyhow!("a fusion stage panicked"))))).collect()
                });
                let mut ranked = Vec::with_capacity(results.len());
                for (stage, result) in f.stages.iter().zip(results) {
                    ranked.push(result.map_err(|e| stage_failed(stage, e))?);
                }
                Ok(fuse(f.method, f.k, &f.weights(), &f.stages, ranked, k))
            }
            Pipeline::Fallback(f) => {
                let own = Run { deadline: f.deadline_ms.map_or(run.deadline, |ms| run.deadline.min(Instant::now() + Duration::from_millis(ms))), ..run };
                let name = path.last().cloned().unwrap_or_default();
                let started = Instant::now();
                let primary = self.run_runs(own, &f.primary.runs, k, path);
                let primary_took = (format!("{name}/{}", f.primary.label), started.elapsed());
                match primary {
                    Ok(mut ranked) => {
                        ranked.stages.push(primary_took);
                        Ok(ranked)
                    }
                    Err(e) => {
                        let started = Instant::now();
                        let mut ranked = self.run_runs(run, &f.fallback.runs, k, path)?;
                        ranked.stages.extend([primary_took, (format!("{name}/{}", f.fallback.label), started.elapsed())]);
                        ranked.notes.push(format!("stage `{}` failed ({e}); stage `{}` answered", f.primary.label, f.fallback.label));
                        Ok(ranked)
                    }
                }
            }
        }
    }

    fn run_experiment(&self, collection: &str, experiment: &Experiment, request: &SearchRequest, prepared: &Prepared, deadline: Instant, lookup: Lookup<'_>) -> Result<SearchResponse, CallError> {
        let tenant = split_qualified(collection).0;
        let impression = random_id();
        let run_arm = |index: usize| {
            let arm = &experiment.arms[index];
            let started = Instant::now();
            let run = Run { collection, prepared, deadline, lookup };
            let result = self.run_runs(run, &arm.runs, prepared.k, &mut Vec::new());
            self.experiments.record_call(collection, experiment, &arm.name, started.elapsed(), result.is_err());
            result
        };
        let answered = |ranked: Ranked, arm: &str, impression: Option<String>| {
            let mut response = self.respond(ranked, prepared);
            response.experiment = Some(experiment.name.clone());
            response.arm = Some(arm.to_string());
            response.impression = impression;
            response
        };
        if !experiment.interleave {
            let key = request.key.as_deref().unwrap_or(&impression);
            let index = quarry_compose::assign::arm_for(&experiment.name, key, &experiment.weights());
            let arm = &experiment.arms[index].name;
            let ranked = run_arm(index)?;
            let shown = ranked.hits.iter().map(|h| (h.id.clone(), Team::A)).collect();
            self.experiments.record_impression(tenant, collection, experiment, &impression, vec![arm.clone()], shown);
            return Ok(answered(ranked, arm, Some(impression)));
        }
        let (a, b) = std::thread::scope(|scope| {
            let b = scope.spawn(|| run_arm(1));
            let a = run_arm(0);
            (a, b.join().unwrap_or_else(|_| Err(CallError::Host(anyhow!("an arm panicked")))))
        });
        let names = [&experiment.arms[0].name, &experiment.arms[1].name];
        let alone = |mut ranked: Ranked, ok: &str, failed: &str, e: CallError| {
            ranked.notes.push(format!("arm `{failed}` failed ({e}); arm `{ok}` answered alone, and the call is not an interleaved impression"));
            answered(ranked, ok, None)
        };
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (Ok(a), Err(e)) => return Ok(alone(a, names[0], names[1], e)),
            (Err(e), Ok(b)) => return Ok(alone(b, names[1], names[0], e)),
            (Err(e), Err(_)) => return Err(e),
        };
        let seed = format!("{}\0{}", experiment.name, request.query_id.as_deref().unwrap_or(&impression));
        let ids = |r: &Ranked| r.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
        let merged = quarry_compose::interleave::team_draft(&ids(&a), &ids(&b), prepared.k as usize, seed.as_bytes());
        // Each shown hit as the arm that picked it scored it.
        let by_id = |r: &Ranked| r.hits.iter().map(|h| (h.id.clone(), h.clone())).collect::<HashMap<_, _>>();
        let picked = [by_id(&a), by_id(&b)];
        let hits: Vec<SearchHit> = merged
            .iter()
            .map(|(id, team)| {
                let side = usize::from(*team == Team::B);
                let mut hit = picked[side][id].clone();
                hit.team = Some(names[side].clone());
                hit
            })
            .collect();
        self.experiments.record_impression(tenant, collection, experiment, &impression, vec![names[0].clone(), names[1].clone()], merged);
        let mut both = Ranked { hits, strategies: Vec::new(), notes: Vec::new(), stages: Vec::new() };
        both.absorb(a);
        both.absorb(b);
        let mut response = answered(both, &format!("{}+{}", names[0], names[1]), Some(impression));
        response.strategy = format!("experiment:{}", experiment.name);
        Ok(response)
    }

    /// The distinct strategy routes a target runs, pipelines expanded.
    pub(crate) fn leaves(&self, collection: &str, target: &Target) -> Result<Vec<Route>> {
        let tenant = split_qualified(collection).0;
        let lookup = |name: &str| self.registry.pipeline(tenant, name);
        let mut out: Vec<Route> = Vec::new();
        let mut add = |runs: &Runs| expand(runs, &lookup, &mut Vec::new(), &mut out);
        match target {
            Target::Strategy(route) => add(&Runs::Strategy(route.clone()))?,
            Target::Pipeline { pipeline } => add(&Runs::Pipeline(pipeline.clone()))?,
            Target::Experiment { experiment } => {
                for arm in &experiment.arms {
                    add(&arm.runs)?;
                }
            }
        }
        Ok(out)
    }

    /// Route `collection` to a strategy, a pipeline or an experiment, atomically: calls in
    /// flight finish on what they began with. Everything the target names is checked first
    /// (strategies, configs against their schemas, models, pipelines), and every strategy's
    /// fields are declared on the collection; on an error nothing changes. The route replaced
    /// is kept for [`Quarry::rollback`].
    pub fn set_target(&self, collection: &str, target: Target) -> Result<()> {
        let key = qualify(collection)?;
        self.check_target(&key, &target)?;
        self.registry.set_route(&key, target, None)?;
        self.forget_old_experiments(&key);
        Ok(())
    }

    /// Keep the counts only of experiments the collection's route or previous route runs.
    fn forget_old_experiments(&self, collection: &str) {
        forget_old_experiments(&self.registry, &self.experiments, collection);
    }

    fn check_target(&self, collection: &str, target: &Target) -> Result<()> {
        let tenant = split_qualified(collection).0;
        let check_runs = |at: &str, runs: &Runs| -> Result<()> {
            match runs {
                Runs::Strategy(route) => self.check_route(collection, route).with_context(|| format!("{at}: {}", route.strategy)),
                Runs::Pipeline(name) => {
                    if self.registry.pipeline(tenant, name).is_none() {
                        bail!("{at}: tenant `{tenant}` has no pipeline `{}`; declare it first", crate::printable::printable(name, 64));
                    }
                    for route in self.leaves(collection, &Target::Pipeline { pipeline: name.clone() })? {
                        self.check_route(collection, &route).with_context(|| format!("{at}: pipeline `{name}`, strategy {}", route.strategy))?;
                    }
                    Ok(())
                }
            }
        };
        match target {
            Target::Strategy(route) => self.check_route(collection, route),
            Target::Pipeline { pipeline } => check_runs("pipeline", &Runs::Pipeline(pipeline.clone())),
            Target::Experiment { experiment } => {
                experiment.check_shape().map_err(|e| anyhow!(e))?;
                for (at, runs) in target.parts() {
                    check_runs(&at, runs)?;
                }
                Ok(())
            }
        }
    }

    /// Declare `tenant`'s pipeline `name` (or replace it). The declaration is checked whole:
    /// its shape, every strategy (registered for the tenant, config fitting its schema, models
    /// registered; a cascade's second stage must rerank), every pipeline it names (declared, no
    /// cycle, at most [`MAX_PIPELINE_DEPTH`] deep), and the routes that use it. Errors name the
    /// place in the declaration (`fusion.stages[1]`); on an error nothing changes.
    pub fn set_pipeline(&self, tenant: &str, name: &str, pipeline: Pipeline) -> Result<()> {
        validate_name("tenant", tenant)?;
        if name.len() > 64 || validate_name("pipeline", name).is_err() {
            bail!("`{}` is not a pipeline name; use 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`", crate::printable::printable(name, 64));
        }
        let limits = self.limits();
        pipeline.check_shape(limits.max_hits.min(limits.max_batch), limits.deadline_ms).map_err(|e| anyhow!(e))?;
        for (at, stage) in pipeline.stages() {
            if let Runs::Strategy(route) = &stage.runs {
                self.check_strategy(tenant, route).with_context(|| at.clone())?;
            }
        }
        if let Pipeline::Cascade(c) = &pipeline
            && let Runs::Strategy(route) = &c.then.runs
        {
            let plugin = self.plugin_for(tenant, &route.strategy)?;
            if !plugin.descriptor.reranks {
                bail!("cascade.then: {} does not rerank (its descriptor says `reranks: false`); use a strategy whose `rerank` scores candidates", plugin.reference);
            }
        }
        let routes = self.routes();
        self.registry.set_pipeline(tenant, name, pipeline, |declared| {
            let lookup = |n: &str| declared.get(n).cloned();
            if declared.len() > MAX_PIPELINES_PER_TENANT {
                bail!("tenant `{tenant}` has {MAX_PIPELINES_PER_TENANT} pipelines, the most it may declare; remove one first");
            }
            // Every pipeline named from here exists, without a cycle and within the depth, and
            // a search through it makes a bounded number of strategy calls.
            expand(&Runs::Pipeline(name.to_string()), &lookup, &mut Vec::new(), &mut Vec::new())?;
            // Pipelines naming this one grow with it: each stays within the bound.
            for (other, _) in declared.iter() {
                let calls = strategy_calls(&Runs::Pipeline(other.clone()), &lookup, 0);
                if calls > MAX_PIPELINE_CALLS {
                    let via = if other == name { String::new() } else { format!(" (it names `{name}`)") };
                    bail!("a search through pipeline `{other}`{via} would make {calls} strategy calls; at most {MAX_PIPELINE_CALLS}, counting every stage of every pipeline named");
                }
            }
            // Routes that run this pipeline get its strategies' fields.
            for (collection, target) in routes.iter().filter(|(c, _)| split_qualified(c).0 == tenant) {
                let uses = match target.as_ref() {
                    Target::Strategy(_) => Vec::new(),
                    Target::Pipeline { pipeline } => vec![Runs::Pipeline(pipeline.clone())],
                    Target::Experiment { experiment } => experiment.arms.iter().map(|a| a.runs.clone()).collect(),
                };
                for runs in uses {
                    let mut leaves = Vec::new();
                    let mut path = Vec::new();
                    if expand_through(&runs, &lookup, &mut path, &mut leaves, name)? {
                        for route in &leaves {
                            self.check_route(collection, route).with_context(|| format!("collection `{}` runs pipeline `{name}`", split_qualified(collection).1))?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// What [`Quarry::check_route`] checks that needs no collection.
    fn check_strategy(&self, tenant: &str, route: &Route) -> Result<()> {
        let plugin = self.plugin_for(tenant, &route.strategy)?;
        if let Err(problems) = plugin.schemas()?.check_config(&route.config) {
            bail!("the config does not fit {}'s config schema: {problems} (`quarry plugin describe {}` shows the schema)", plugin.reference, plugin.reference);
        }
        for model in &route.grants.models {
            if !self.models().contains(model) {
                bail!("model `{model}` is not registered; add it with `quarry model add <manifest.json>`");
            }
        }
        Ok(())
    }

    /// `tenant`'s pipelines, by name.
    pub fn pipelines(&self, tenant: &str) -> BTreeMap<String, Arc<Pipeline>> {
        self.registry.pipelines(tenant)
    }

    /// Remove `tenant`'s pipeline `name`, unless a route, an arm or another pipeline uses it.
    pub fn remove_pipeline(&self, tenant: &str, name: &str) -> Result<()> {
        self.registry.remove_pipeline(tenant, name)
    }

    /// Make arm `arm` of the collection's experiment its route, atomically; the experiment
    /// becomes the previous route (so [`Quarry::rollback`] brings it back).
    pub fn promote(&self, collection: &str, arm: &str) -> Result<Target> {
        let key = qualify(collection)?;
        let current = self.route(collection)?;
        let Target::Experiment { experiment } = current.as_ref() else {
            bail!("collection `{collection}` is routed to {}, not an experiment; only an experiment's arm can be promoted", current.describe());
        };
        let chosen = experiment.arm(arm).with_context(|| {
            format!(
                "experiment `{}` has no arm `{}` (arms: {})",
                experiment.name,
                crate::printable::printable(arm, 64),
                experiment.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?;
        let target = chosen.runs.clone().into_target();
        self.check_target(&key, &target)?;
        self.registry.set_route(&key, target.clone(), Some(&current))?;
        self.forget_old_experiments(&key);
        Ok(target)
    }

    /// Route the collection back to what it had before its last change, atomically.
    pub fn rollback(&self, collection: &str) -> Result<Target> {
        let key = qualify(collection)?;
        let current = self.route(collection)?;
        let previous = self.registry.previous_route(&key).with_context(|| format!("collection `{collection}` has no previous route to roll back to"))?;
        let target = previous.as_ref().clone();
        self.check_target(&key, &target).context("the previous route no longer checks out")?;
        self.registry.set_route(&key, target.clone(), Some(&current))?;
        self.forget_old_experiments(&key);
        Ok(target)
    }

    /// What the collection's experiment has seen since this host started.
    pub fn experiment_report(&self, collection: &str) -> Result<ExperimentReport> {
        let key = qualify(collection)?;
        let target = self.route(collection)?;
        match target.as_ref() {
            Target::Experiment { experiment } => Ok(self.experiments.report(&key, experiment)),
            other => bail!("collection `{collection}` is routed to {}, not an experiment", other.describe()),
        }
    }

    /// Credit clicks (hit ids) to an impression `tenant` was served. Clicks add up across calls.
    pub fn feedback(&self, tenant: &str, impression: &str, clicks: &[String]) -> Result<FeedbackOutcome> {
        if clicks.len() > MAX_CLICKS {
            bail!("{} clicks in one feedback; send at most {MAX_CLICKS}", clicks.len());
        }
        self.experiments.feedback(tenant, impression, clicks).with_context(|| {
            format!(
                "no impression `{}` for tenant `{tenant}`; use the `impression` of a search answered by an experiment (the last {} per tenant are kept)",
                crate::printable::printable(impression, 64),
                self.limits().max_impressions
            )
        })
    }
}


/// Keep the counts only of experiments `collection`'s route or previous route runs, so an
/// experiment started again under an old name starts from nothing (on every replica).
pub(crate) fn forget_old_experiments(registry: &crate::plugins::registry::Registry, experiments: &crate::experiments::Experiments, collection: &str) {
    let name = |t: Option<Arc<Target>>| match t.as_deref() {
        Some(Target::Experiment { experiment }) => Some(experiment.name.clone()),
        _ => None,
    };
    let keep: Vec<String> = [name(registry.route(collection)), name(registry.previous_route(collection))].into_iter().flatten().collect();
    experiments.retain(collection, &keep);
}
fn stage_failed(stage: &Stage, e: CallError) -> CallError {
    match e {
        CallError::Host(e) => CallError::Host(e.context(format!("stage `{}`", stage.label))),
        other => other,
    }
}

/// Fuse stages' hits; each hit carries every stage's own score as a feature named by the stage.
fn fuse(method: FusionMethod, rrf_k: f64, weights: &[f64], stages: &[Stage], ranked: Vec<Ranked>, k: u32) -> Ranked {
    let lists: Vec<Vec<(String, f32)>> = ranked.iter().map(|r| r.hits.iter().map(|h| (h.id.clone(), h.score)).collect()).collect();
    let fused = match method {
        FusionMethod::Rrf => quarry_compose::fusion::reciprocal_rank(&lists, rrf_k, weights),
        FusionMethod::Weighted => quarry_compose::fusion::weighted_scores(&lists, weights),
    };
    let mut items: HashMap<&str, &SearchHit> = HashMap::new();
    for r in ranked.iter().rev() {
        for hit in &r.hits {
            items.insert(hit.id.as_str(), hit);
        }
    }
    let hits = fused
        .into_iter()
        .take(k as usize)
        .map(|f| {
            let item = items[f.id.as_str()];
            let features = stages.iter().zip(&f.parts).filter_map(|(s, part)| part.map(|p| (s.label.clone(), p))).collect();
            SearchHit { id: f.id, score: f.score as f32, features, text: item.text.clone(), metadata: item.metadata.clone(), team: None }
        })
        .collect();
    let mut out = Ranked { hits, strategies: Vec::new(), notes: Vec::new(), stages: Vec::new() };
    for r in ranked {
        out.absorb(r);
    }
    out
}

/// Collect the distinct strategy routes `runs` reaches, failing on a missing pipeline, a cycle
/// or nesting past [`MAX_PIPELINE_DEPTH`].
fn expand(runs: &Runs, lookup: Lookup<'_>, path: &mut Vec<String>, out: &mut Vec<Route>) -> Result<()> {
    expand_through(runs, lookup, path, out, "").map(|_| ())
}

/// [`expand`], answering whether pipeline `through` was on the way.
fn expand_through(runs: &Runs, lookup: Lookup<'_>, path: &mut Vec<String>, out: &mut Vec<Route>, through: &str) -> Result<bool> {
    match runs {
        Runs::Strategy(route) => {
            if !out.contains(route) {
                out.push(route.clone());
            }
            Ok(false)
        }
        Runs::Pipeline(name) => {
            if let Some(at) = path.iter().position(|p| p == name) {
                bail!("pipelines form a cycle: {} → {name}; a pipeline cannot run itself", path[at..].join(" → "));
            }
            if path.len() >= MAX_PIPELINE_DEPTH {
                bail!("pipelines nest deeper than {MAX_PIPELINE_DEPTH} ({} → {name}); flatten them", path.join(" → "));
            }
            let pipeline = lookup(name).with_context(|| {
                let from = path.last().map(|p| format!(" (named by pipeline `{p}`)")).unwrap_or_default();
                format!("no pipeline `{}`{from}; declare it first", crate::printable::printable(name, 64))
            })?;
            path.push(name.clone());
            let mut found = name == through;
            for (_, stage) in pipeline.stages() {
                found |= expand_through(&stage.runs, lookup, path, out, through)?;
            }
            path.pop();
            Ok(found)
        }
    }
}

/// How many strategy calls a search through `runs` makes at most (each fusion stage and both
/// sides of a fallback count). Declarations are checked for cycles first; the depth bound keeps
/// this finite regardless.
fn strategy_calls(runs: &Runs, lookup: Lookup<'_>, depth: usize) -> usize {
    match runs {
        Runs::Strategy(_) => 1,
        Runs::Pipeline(_) if depth > MAX_PIPELINE_DEPTH => usize::MAX / 2,
        Runs::Pipeline(name) => match lookup(name) {
            Some(pipeline) => pipeline.stages().iter().map(|(_, stage)| strategy_calls(&stage.runs, lookup, depth + 1)).fold(0, usize::saturating_add),
            None => 0,
        },
    }
}

/// 128 random bits, hex.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS gives random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
