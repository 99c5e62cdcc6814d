//! Pipelines, experiments and click feedback: thin endpoints over quarry-host's composition
//! (`Quarry::set_pipeline`, `promote`, `rollback`, `feedback`, `experiment_report`).

use crate::control::Tenant;
use crate::error::{ApiError, ErrorBody};
use crate::routes::{JsonBody, RouteView, route_view, routed};
use crate::{Caller, Shared, blocking};
use axum::extract::{Path, State};
use axum::{Extension, Json};
use quarry_host::routing::Runs;
use quarry_host::{Pipeline, Route, Target};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

type ApiResult<T> = Result<T, ApiError>;

/// Read a declaration, naming the key that is wrong (`experiment.arms[1].weight: ...`).
pub(crate) fn parse<T: serde::de::DeserializeOwned>(what: &str, value: serde_json::Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { what.to_string() } else { format!("{what}.{path}") };
        ApiError::bad_request(format!("{at}: {}", e.inner()))
    })
}

/// Every strategy a declaration names directly must be visible to the tenant (else 404, as if
/// another tenant's did not exist), and grant only models granted to the tenant (else 403).
fn check_strategy(state: &Shared, tenant: &Tenant, at: &str, route: &Route) -> ApiResult<()> {
    for model in &route.grants.models {
        if !tenant.models.contains(model) {
            return Err(ApiError::forbidden(format!(
                "{at}: tenant `{}` may not grant model `{}`; the operator grants models with PATCH /v1/tenants/{}",
                tenant.name,
                quarry_host::printable::printable(model, 64),
                tenant.name
            )));
        }
    }
    if state.quarry.plugin_for(&tenant.name, &route.strategy).is_err() {
        return Err(ApiError::not_found(format!(
            "{at}: no strategy `{}` for tenant `{}`; upload it with POST /v1/plugins, or pick one from GET /v1/plugins",
            quarry_host::printable::printable(&route.strategy, 128),
            tenant.name
        )));
    }
    Ok(())
}

pub(crate) fn check_grants(state: &Shared, tenant: &Tenant, target: &Target) -> ApiResult<()> {
    match target {
        Target::Strategy(route) => check_strategy(state, tenant, "route", route),
        Target::Pipeline { .. } => Ok(()),
        Target::Experiment { .. } => {
            for (at, runs) in target.parts() {
                if let Runs::Strategy(route) = runs {
                    check_strategy(state, tenant, &at, route)?;
                }
            }
            Ok(())
        }
    }
}

// ---- experiments ----

#[derive(Serialize, ToSchema)]
pub(crate) struct ExperimentView {
    name: String,
    interleave: bool,
    arms: Vec<ArmView>,
    /// For interleaving experiments.
    interleaving: Option<InterleavingView>,
}

#[derive(Serialize, ToSchema)]
struct ArmView {
    name: String,
    weight: f64,
    /// `name@version` or `pipeline:<name>`.
    runs: String,
    calls: u64,
    errors: u64,
    latency_ms: LatencyView,
    /// Impressions this arm served (or took part in, interleaved).
    impressions: u64,
    /// Impressions with a click on one of this arm's hits.
    clicks: u64,
    /// Click-through: `clicks / impressions`.
    ctr: f64,
}

#[derive(Serialize, ToSchema)]
struct LatencyView {
    p50: f64,
    p95: f64,
    p99: f64,
}

#[derive(Serialize, ToSchema)]
struct InterleavingView {
    impressions: u64,
    /// Impressions won, by arm.
    wins: BTreeMap<String, u64>,
    /// Impressions neither arm won (no clicks, or as many on each side).
    ties: u64,
    /// Δ = (wins of the first arm + ties / 2) / impressions − 0.5; positive favours the first arm.
    delta: f64,
    /// 95% confidence interval of Δ.
    ci: (f64, f64),
    /// Two-sided exact binomial test on the impressions one arm won.
    p_value: f64,
}

/// The collection's experiment: per-arm calls, errors, latency quantiles and click-through,
/// and for interleaving the wins, ties, Δ and its significance. Counts start at server start.
#[utoipa::path(get, path = "/v1/collections/{collection}/experiment", tag = "experiments", params(("collection" = String, Path)),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody)))]
pub(crate) async fn experiment_report(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(collection): Path<String>) -> ApiResult<Json<ExperimentView>> {
    let tenant = caller.tenant()?;
    let (key, _) = routed(&state, tenant, &collection)?;
    let report = state.quarry.experiment_report(&key).map_err(|e| ApiError::not_found(format!("{e:#}; route it to one with PUT /v1/collections/{collection}/route")))?;
    Ok(Json(ExperimentView {
        name: report.name,
        interleave: report.interleave,
        arms: report
            .arms
            .into_iter()
            .map(|a| ArmView {
                name: a.name,
                weight: a.weight,
                runs: a.runs,
                calls: a.calls,
                errors: a.errors,
                latency_ms: LatencyView { p50: a.latency_ms.p50, p95: a.latency_ms.p95, p99: a.latency_ms.p99 },
                impressions: a.impressions,
                clicks: a.clicks,
                ctr: a.ctr,
            })
            .collect(),
        interleaving: report.interleaving.map(|i| InterleavingView { impressions: i.impressions, wins: i.wins, ties: i.ties, delta: i.delta, ci: i.ci, p_value: i.p_value }),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteBody {
    /// The arm whose strategy or pipeline becomes the route.
    arm: String,
}

/// Make an arm of the collection's experiment its route, atomically while traffic flows. The
/// experiment becomes the previous route: roll back to return to it.
#[utoipa::path(post, path = "/v1/collections/{collection}/promote", tag = "experiments", params(("collection" = String, Path)), request_body = PromoteBody,
    responses((status = 200, body = RouteView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn promote(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(collection): Path<String>, body: JsonBody<PromoteBody>) -> ApiResult<Json<RouteView>> {
    let tenant = caller.tenant()?;
    let (key, _) = routed(&state, tenant, &collection)?;
    let quarry = state.quarry.clone();
    let target = blocking(move || quarry.promote(&key, &body.0.arm)).await?.map_err(ApiError::from_host)?;
    Ok(Json(route_view(&target)))
}

/// Route the collection back to what it had before its last change, atomically.
#[utoipa::path(post, path = "/v1/collections/{collection}/rollback", tag = "experiments", params(("collection" = String, Path)),
    responses((status = 200, body = RouteView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn rollback(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(collection): Path<String>) -> ApiResult<Json<RouteView>> {
    let tenant = caller.tenant()?;
    let (key, _) = routed(&state, tenant, &collection)?;
    let quarry = state.quarry.clone();
    let target = blocking(move || quarry.rollback(&key)).await?.map_err(ApiError::from_host)?;
    Ok(Json(route_view(&target)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackBody {
    /// The `impression` of a search answered by an experiment.
    impression: String,
    /// Ids of the hits the user clicked (at most 1000); clicks add up over calls.
    clicks: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct FeedbackView {
    impression: String,
    /// In an interleaved impression: the arm its clicks favour, or `tie`.
    outcome: Option<String>,
}

/// Credit clicks to an impression.
#[utoipa::path(post, path = "/v1/feedback", tag = "experiments", request_body = FeedbackBody,
    responses((status = 200, body = FeedbackView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn feedback(State(state): State<Shared>, Extension(caller): Extension<Caller>, body: JsonBody<FeedbackBody>) -> ApiResult<Json<FeedbackView>> {
    let tenant = caller.tenant()?;
    let body = body.0;
    if body.clicks.len() > quarry_host::experiments::MAX_CLICKS {
        return Err(ApiError::bad_request(format!("{} clicks in one feedback; send at most {}", body.clicks.len(), quarry_host::experiments::MAX_CLICKS)));
    }
    let outcome = state.quarry.feedback(&tenant.name, &body.impression, &body.clicks).map_err(|e| ApiError::not_found(format!("{e:#}")))?;
    Ok(Json(FeedbackView { impression: outcome.impression, outcome: outcome.outcome }))
}

// ---- pipelines ----

#[derive(Serialize, ToSchema)]
pub(crate) struct PipelineView {
    name: String,
    /// The declaration: `{"cascade": {"first", "then", "depth"}}`, `{"fusion": {"stages",
    /// "method", "k", "weights", "depth"}}` or `{"fallback": {"primary", "fallback", "deadline_ms"}}`.
    #[schema(value_type = Object)]
    declaration: serde_json::Value,
}

fn pipeline_view(name: &str, pipeline: &Pipeline) -> PipelineView {
    PipelineView { name: name.to_string(), declaration: serde_json::to_value(pipeline).unwrap_or_default() }
}

/// The calling tenant's pipelines.
#[utoipa::path(get, path = "/v1/pipelines", tag = "pipelines", responses((status = 200, body = Vec<PipelineView>)))]
pub(crate) async fn list_pipelines(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Vec<PipelineView>>> {
    let tenant = caller.tenant()?;
    Ok(Json(state.quarry.pipelines(&tenant.name).iter().map(|(name, p)| pipeline_view(name, p)).collect()))
}

/// One pipeline.
#[utoipa::path(get, path = "/v1/pipelines/{name}", tag = "pipelines", params(("name" = String, Path)),
    responses((status = 200, body = PipelineView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_pipeline(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> ApiResult<Json<PipelineView>> {
    let tenant = caller.tenant()?;
    let pipelines = state.quarry.pipelines(&tenant.name);
    let pipeline = pipelines.get(&name).ok_or_else(|| no_pipeline(tenant, &name))?;
    Ok(Json(pipeline_view(&name, pipeline)))
}

fn no_pipeline(tenant: &Tenant, name: &str) -> ApiError {
    ApiError::not_found(format!("tenant `{}` has no pipeline `{}`; declare it with PUT /v1/pipelines/{{name}}", tenant.name, quarry_host::printable::printable(name, 64)))
}

/// Declare (or replace) a pipeline: a cascade, a fusion or a fallback of strategies and other
/// pipelines. It is checked whole when set (strategies, configs, models, a cascade's second
/// stage reranking, missing pipelines, cycles), and errors name the place in the declaration.
#[utoipa::path(put, path = "/v1/pipelines/{name}", tag = "pipelines", params(("name" = String, Path)), request_body(content = Object, description = "The declaration"),
    responses((status = 200, body = PipelineView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_pipeline(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: JsonBody<serde_json::Value>,
) -> ApiResult<Json<PipelineView>> {
    let tenant = caller.tenant()?.clone();
    let pipeline: Pipeline = parse("pipeline", body.0)?;
    for (at, stage) in pipeline.stages() {
        if let Runs::Strategy(route) = &stage.runs {
            check_strategy(&state, &tenant, &at, route)?;
        }
    }
    let view = pipeline_view(&name, &pipeline);
    let quarry = state.quarry.clone();
    blocking(move || quarry.set_pipeline(&tenant.name, &name, pipeline)).await?.map_err(ApiError::from_host)?;
    Ok(Json(view))
}

/// Remove a pipeline no route, arm or pipeline uses.
#[utoipa::path(delete, path = "/v1/pipelines/{name}", tag = "pipelines", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove_pipeline(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> ApiResult<axum::http::StatusCode> {
    let tenant = caller.tenant()?;
    if !state.quarry.pipelines(&tenant.name).contains_key(&name) {
        return Err(no_pipeline(tenant, &name));
    }
    state.quarry.remove_pipeline(&tenant.name, &name).map_err(|e| ApiError::conflict(format!("{e:#}")))?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
