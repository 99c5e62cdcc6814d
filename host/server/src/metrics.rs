//! Prometheus metrics (the `prometheus-client` crate), labelled by tenant, route, strategy and
//! model. Tenants upload strategies, so every label's values are capped: past the cap, new
//! values are counted as `other`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    tenant: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tenant: String,
    strategy: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StrategyLabels {
    tenant: String,
    strategy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    tenant: String,
    /// `pipeline/stage`.
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    tenant: String,
    experiment: String,
    arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    tenant: String,
    quota: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Keeps at most `max` distinct values of one label.
struct LabelCap {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelCap {
    fn new(max: usize) -> Self {
        LabelCap { max, seen: Mutex::default() }
    }

    fn value(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() < self.max {
            seen.insert(value.to_string());
            return value.to_string();
        }
        "other".to_string()
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<RouteLabels>,
    calls: Family<CallLabels, Counter>,
    call_seconds: Histograms<StrategyLabels>,
    stage_seconds: Histograms<StageLabels>,
    arm_seconds: Histograms<ArmLabels>,
    quota_rejections: Family<QuotaLabels, Counter>,
    compute_seconds: Family<TenantLabels, Counter<f64, AtomicU64>>,
    model_runs: Family<ModelLabels, Counter>,
    model_inputs: Family<ModelLabels, Counter>,
    model_queued_jobs: Family<ModelLabels, Counter>,
    model_queue_seconds: Family<ModelLabels, Counter<f64, AtomicU64>>,
    /// What the cumulative counters above were last advanced to.
    reported: Mutex<Reported>,
    tenants: LabelCap,
    strategies: LabelCap,
    stages: LabelCap,
    arms: LabelCap,
    models: LabelCap,
}

#[derive(Default)]
struct Reported {
    compute: HashMap<String, f64>,
    models: HashMap<String, ModelFigures>,
}

/// A model's cumulative figures since the host started.
#[derive(Debug, Clone, Default)]
pub struct ModelFigures {
    pub name: String,
    pub runs: u64,
    pub inputs: u64,
    /// Jobs (a request's parts) that reached a run, and the seconds they waited in the queue.
    pub queued_jobs: u64,
    pub queued_seconds: f64,
}

impl Metrics {
    pub fn new(max_label_values: usize) -> Self {
        let mut registry = Registry::with_prefix("quarry");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by tenant, route, method and status", requests.clone());
        let request_seconds: Histograms<RouteLabels> = Family::new_with_constructor(latency);
        registry.register("http_request_seconds", "HTTP request latency by tenant and route", request_seconds.clone());
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("strategy_calls", "Strategy calls (search, ingest, build) by tenant, strategy version and outcome", calls.clone());
        let call_seconds: Histograms<StrategyLabels> = Family::new_with_constructor(latency);
        registry.register("strategy_call_seconds", "Strategy call latency by tenant and strategy version", call_seconds.clone());
        let stage_seconds: Histograms<StageLabels> = Family::new_with_constructor(latency);
        registry.register("pipeline_stage_seconds", "Pipeline stage latency by tenant and `pipeline/stage`", stage_seconds.clone());
        let arm_seconds: Histograms<ArmLabels> = Family::new_with_constructor(latency);
        registry.register("experiment_arm_seconds", "Latency of searches an experiment's arm answered, by tenant, experiment and arm", arm_seconds.clone());
        let quota_rejections = Family::<QuotaLabels, Counter>::default();
        registry.register("quota_rejections", "Requests refused with 429, by tenant and quota", quota_rejections.clone());
        let compute_seconds = Family::<TenantLabels, Counter<f64, AtomicU64>>::default();
        registry.register("compute_seconds", "Compute used by tenant: guest time plus its share of model inference", compute_seconds.clone());
        let model_runs = Family::<ModelLabels, Counter>::default();
        registry.register("model_runs", "Batched model runs by model", model_runs.clone());
        let model_inputs = Family::<ModelLabels, Counter>::default();
        registry.register("model_inputs", "Inputs in batched model runs by model (divide by runs for the mean batch size)", model_inputs.clone());
        let model_queued_jobs = Family::<ModelLabels, Counter>::default();
        registry.register("model_queued_jobs", "Jobs (parts of requests) that reached a run of the model", model_queued_jobs.clone());
        let model_queue_seconds = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register("model_queue_seconds", "Seconds jobs waited in the model's queue (divide by queued jobs for the mean queue delay)", model_queue_seconds.clone());
        Metrics {
            registry,
            requests,
            request_seconds,
            calls,
            call_seconds,
            stage_seconds,
            arm_seconds,
            quota_rejections,
            compute_seconds,
            model_runs,
            model_inputs,
            model_queued_jobs,
            model_queue_seconds,
            reported: Mutex::default(),
            tenants: LabelCap::new(max_label_values),
            strategies: LabelCap::new(max_label_values),
            stages: LabelCap::new(max_label_values),
            arms: LabelCap::new(max_label_values),
            models: LabelCap::new(max_label_values),
        }
    }

    pub fn request(&self, tenant: &str, route: &str, method: &str, status: u16, took: Duration) {
        let tenant = self.tenants.value(tenant);
        self.requests.get_or_create(&RequestLabels { tenant: tenant.clone(), route: route.to_string(), method: method.to_string(), status }).inc();
        self.request_seconds.get_or_create(&RouteLabels { tenant, route: route.to_string() }).observe(took.as_secs_f64());
    }

    pub fn call(&self, tenant: &str, strategy: &str, outcome: &str, took: Duration) {
        let (tenant, strategy) = (self.tenants.value(tenant), self.strategies.value(strategy));
        self.calls.get_or_create(&CallLabels { tenant: tenant.clone(), strategy: strategy.clone(), outcome: outcome.to_string() }).inc();
        self.call_seconds.get_or_create(&StrategyLabels { tenant, strategy }).observe(took.as_secs_f64());
    }

    /// One search's pipeline stages (`pipeline/stage`, time taken).
    pub fn stages(&self, tenant: &str, stages: &[(String, Duration)]) {
        let tenant = self.tenants.value(tenant);
        for (stage, took) in stages {
            self.stage_seconds.get_or_create(&StageLabels { tenant: tenant.clone(), stage: self.stages.value(stage) }).observe(took.as_secs_f64());
        }
    }

    /// A search an experiment's arm (`a+b` when interleaved) answered.
    pub fn arm(&self, tenant: &str, experiment: &str, arm: &str, took: Duration) {
        // One cap on the pair: past it, both labels read `other`.
        let capped = self.arms.value(&format!("{experiment}/{arm}")) == "other";
        let (experiment, arm) = if capped { ("other".to_string(), "other".to_string()) } else { (experiment.to_string(), arm.to_string()) };
        self.arm_seconds.get_or_create(&ArmLabels { tenant: self.tenants.value(tenant), experiment, arm }).observe(took.as_secs_f64());
    }

    pub fn quota_rejected(&self, tenant: &str, quota: &str) {
        self.quota_rejections.get_or_create(&QuotaLabels { tenant: self.tenants.value(tenant), quota: quota.to_string() }).inc();
    }

    /// The text exposition, after bringing the cumulative host figures up to date.
    pub fn render(&self, compute: &[(String, f64)], models: &[ModelFigures]) -> String {
        {
            let mut reported = self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (tenant, seconds) in compute {
                let last = reported.compute.entry(tenant.clone()).or_default();
                if *seconds > *last {
                    self.compute_seconds.get_or_create(&TenantLabels { tenant: self.tenants.value(tenant) }).inc_by(*seconds - *last);
                    *last = *seconds;
                }
            }
            for now in models {
                let last = reported.models.entry(now.name.clone()).or_default();
                let label = ModelLabels { model: self.models.value(&now.name) };
                self.model_runs.get_or_create(&label).inc_by(now.runs.saturating_sub(last.runs));
                self.model_inputs.get_or_create(&label).inc_by(now.inputs.saturating_sub(last.inputs));
                self.model_queued_jobs.get_or_create(&label).inc_by(now.queued_jobs.saturating_sub(last.queued_jobs));
                if now.queued_seconds > last.queued_seconds {
                    self.model_queue_seconds.get_or_create(&label).inc_by(now.queued_seconds - last.queued_seconds);
                }
                *last = ModelFigures {
                    name: now.name.clone(),
                    runs: now.runs.max(last.runs),
                    inputs: now.inputs.max(last.inputs),
                    queued_jobs: now.queued_jobs.max(last.queued_jobs),
                    queued_seconds: now.queued_seconds.max(last.queued_seconds),
                };
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_past_the_cap_are_counted_as_other() {
        let metrics = Metrics::new(2);
        for strategy in ["a@1", "b@1", "c@1", "d@1"] {
            metrics.call("t", strategy, "ok", Duration::from_millis(3));
        }
        let figures = |runs, inputs, queued_jobs, queued_seconds| ModelFigures { name: "m".into(), runs, inputs, queued_jobs, queued_seconds };
        let text = metrics.render(&[("t".into(), 1.5)], &[figures(2, 5, 3, 0.25)]);
        assert!(text.contains(r#"quarry_strategy_calls_total{tenant="t",strategy="b@1",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"quarry_strategy_calls_total{tenant="t",strategy="other",outcome="ok"} 2"#), "{text}");
        assert!(text.contains(r#"quarry_compute_seconds_total{tenant="t"} 1.5"#), "{text}");
        // A second scrape advances counters by the growth only.
        let text = metrics.render(&[("t".into(), 2.0)], &[figures(3, 9, 4, 0.5)]);
        assert!(text.contains(r#"quarry_compute_seconds_total{tenant="t"} 2.0"#), "{text}");
        assert!(text.contains(r#"quarry_model_inputs_total{model="m"} 9"#), "{text}");
        assert!(text.contains(r#"quarry_model_queued_jobs_total{model="m"} 4"#) && text.contains(r#"quarry_model_queue_seconds_total{model="m"} 0.5"#), "{text}");
        metrics.stages("t", &[("p/dense".into(), Duration::from_millis(4)), ("p/a".into(), Duration::from_millis(1)), ("p/b".into(), Duration::from_millis(1))]);
        metrics.arm("t", "e", "one", Duration::from_millis(2));
        let text = metrics.render(&[], &[]);
        assert!(text.contains(r#"quarry_pipeline_stage_seconds_count{tenant="t",stage="p/dense"} 1"#), "{text}");
        assert!(text.contains(r#"quarry_pipeline_stage_seconds_count{tenant="t",stage="other"} 1"#), "{text}");
        assert!(text.contains(r#"quarry_experiment_arm_seconds_count{tenant="t",experiment="e",arm="one"} 1"#), "{text}");
    }
}
