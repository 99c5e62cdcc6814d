//! The endpoints. Each handler carries its OpenAPI description, and [`router`] builds the
//! axum router and the OpenAPI document from the same route table, so they cannot drift.

use crate::config::Quotas;
use crate::control::{KeyRecord, Tenant};
use crate::error::{ApiError, ErrorBody};
use crate::jobs::JobView;
use crate::quota::UsageReport;
use crate::{Caller, Shared, blocking, keys};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use base64::Engine as _;
use quarry_host::plugins::registry::Owner;
use quarry_host::{NewItem, SearchRequest, Target};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type ApiResult<T> = Result<T, ApiError>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Quarry", description = "Sandboxed WebAssembly retrieval strategies over host-owned models and collections, for many tenants."),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("A tenant's API key, or the admin key")).build()));
    }
}

/// Paths that answer without an API key.
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", "/openapi.json"];

/// The router and its OpenAPI document.
pub fn router(state: Shared) -> (Router, utoipa::openapi::OpenApi) {
    let max_body = state.config.max_body_bytes;
    let max_plugin = state.config.max_plugin_bytes;
    let protected = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
        .routes(routes!(create_key))
        .routes(routes!(delete_key))
        .routes(routes!(usage))
        .routes(routes!(list_models, add_model))
        .routes(routes!(list_collections))
        .routes(routes!(get_collection))
        .routes(routes!(set_route))
        .routes(routes!(crate::composition::experiment_report))
        .routes(routes!(crate::composition::promote))
        .routes(routes!(crate::composition::rollback))
        .routes(routes!(crate::composition::feedback))
        .routes(routes!(crate::composition::list_pipelines))
        .routes(routes!(crate::composition::get_pipeline, crate::composition::set_pipeline, crate::composition::remove_pipeline))
        .routes(routes!(ingest))
        .routes(routes!(get_item, delete_item))
        .routes(routes!(search))
        .routes(routes!(build))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(with_body_limit(routes!(list_plugins, add_plugin), max_plugin))
        .routes(routes!(describe_plugin, remove_plugin))
        .routes(routes!(metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::gate));
    let public = OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(openapi_json));
    let (router, mut api) = protected.merge(public).split_for_parts();
    describe_responses(&mut api);
    let document = Arc::new(api.clone());
    // The console is a client of this API, not part of it: public, and not in the document.
    let router = router
        .merge(crate::console::router())
        .layer(Extension(document))
        .layer(axum::middleware::from_fn(crate::request_id))
        .fallback(|| async { ApiError::not_found("no such endpoint; GET /openapi.json lists them") })
        .with_state(state);
    (router, api)
}

/// OpenAPI requires a description on every response: the status's reason where the handler
/// gives none.
fn describe_responses(api: &mut utoipa::openapi::OpenApi) {
    for item in api.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten() {
            for (status, response) in operation.responses.responses.iter_mut() {
                if let utoipa::openapi::RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    let reason = status.parse::<u16>().ok().and_then(|s| StatusCode::from_u16(s).ok()).and_then(|s| s.canonical_reason());
                    response.description = reason.unwrap_or("Response").to_string();
                }
            }
        }
    }
}

type RoutesOf = (Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>, utoipa::openapi::path::Paths, axum::routing::MethodRouter<Shared>);

/// Routes whose bodies may be larger than `max_body_bytes` (plugin uploads).
fn with_body_limit((schemas, paths, methods): RoutesOf, bytes: usize) -> RoutesOf {
    (schemas, paths, methods.layer(DefaultBodyLimit::max(bytes)))
}

// ---- system ----

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()), responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// The server takes requests (503 once shutdown has begun).
#[utoipa::path(get, path = "/readyz", tag = "system", security(()), responses((status = 200, body = String), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<Shared>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ready".into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "shutting down").into_response()
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "system", security(()), responses((status = 200, description = "The OpenAPI 3 document")))]
async fn openapi_json(Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>) -> Json<utoipa::openapi::OpenApi> {
    Json((*document).clone())
}

/// Prometheus metrics (admin key).
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text exposition", body = String), (status = 403, body = ErrorBody)))]
async fn metrics(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    caller.require_admin()?;
    let tenants = state.control.tenants().map_err(ApiError::internal)?;
    let compute: Vec<(String, f64)> = tenants.iter().map(|t| (t.name.clone(), state.quarry.compute_used(&t.name).as_secs_f64())).collect();
    let models: Vec<crate::metrics::ModelFigures> = state
        .quarry
        .models()
        .manifests()
        .into_iter()
        .filter_map(|m| {
            let (runs, inputs) = state.quarry.models().run_stats(&m.name)?;
            let (queued_jobs, queued) = state.quarry.models().queue_stats(&m.name)?;
            Some(crate::metrics::ModelFigures { name: m.name, runs, inputs, queued_jobs, queued_seconds: queued.as_secs_f64() })
        })
        .collect();
    let text = state.metrics.render(&compute, &models);
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

// ---- tenants (admin) ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    /// 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`.
    name: String,
    /// Models the tenant's routes may grant.
    #[serde(default)]
    models: BTreeSet<String>,
    /// The tenant's quotas; the server's defaults when left out.
    quotas: Option<Quotas>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TenantChange {
    models: Option<BTreeSet<String>>,
    /// New quotas; `null` (or left out) keeps the current ones.
    quotas: Option<Quotas>,
}

#[derive(Serialize, ToSchema)]
struct TenantView {
    name: String,
    /// Ids of the tenant's keys (the start of each key's hash).
    keys: Vec<String>,
    models: BTreeSet<String>,
    /// The quotas in force.
    quotas: Quotas,
}

#[derive(Serialize, ToSchema)]
struct NewKey {
    tenant: String,
    key_id: String,
    /// The key itself: shown once, stored only as a hash.
    api_key: String,
}

fn tenant_view(state: &Shared, tenant: &Tenant) -> TenantView {
    TenantView { name: tenant.name.clone(), keys: tenant.keys.iter().map(|k| k.id.clone()).collect(), models: tenant.models.clone(), quotas: state.quotas_of(tenant) }
}

fn check_tenant_change(state: &Shared, models: &BTreeSet<String>, quotas: Option<&Quotas>) -> ApiResult<()> {
    for model in models {
        if !state.quarry.models().contains(model) {
            return Err(ApiError::bad_request(format!("model `{}` is not registered; register it first (POST /v1/models)", quarry_host::printable::printable(model, 64))));
        }
    }
    if let Some(quotas) = quotas {
        quotas.validate().map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    }
    Ok(())
}

fn new_key_record() -> (String, KeyRecord) {
    let key = keys::generate();
    let sha256 = keys::hash(&key);
    (key, KeyRecord { id: keys::id(&sha256), sha256 })
}

/// Create a tenant and its first API key (admin).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, body = NewKey), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_tenant(State(state): State<Shared>, Extension(caller): Extension<Caller>, body: JsonBody<NewTenant>) -> ApiResult<Response> {
    caller.require_admin()?;
    let body = body.0;
    quarry_host::store::validate_name("tenant", &body.name).map_err(ApiError::from_host)?;
    check_tenant_change(&state, &body.models, body.quotas.as_ref())?;
    let (key, record) = new_key_record();
    let tenant = Tenant { name: body.name.clone(), keys: vec![record.clone()], models: body.models, quotas: body.quotas };
    if !state.control.create_tenant(tenant).map_err(ApiError::internal)? {
        return Err(ApiError::conflict(format!("tenant `{}` exists; add a key with POST /v1/tenants/{}/keys", body.name, body.name)));
    }
    Ok((StatusCode::CREATED, Json(NewKey { tenant: body.name, key_id: record.id, api_key: key })).into_response())
}

/// Every tenant (admin).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", responses((status = 200, body = Vec<TenantView>), (status = 403, body = ErrorBody)))]
async fn list_tenants(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Vec<TenantView>>> {
    caller.require_admin()?;
    Ok(Json(state.control.tenants().map_err(ApiError::internal)?.iter().map(|t| tenant_view(&state, t)).collect()))
}

fn find_tenant(state: &Shared, name: &str) -> ApiResult<Tenant> {
    state.control.tenant(name).map_err(ApiError::internal)?.ok_or_else(|| ApiError::not_found(format!("no tenant `{}`", quarry_host::printable::printable(name, 64))))
}

/// One tenant (admin).
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", params(("tenant" = String, Path)),
    responses((status = 200, body = TenantView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_tenant(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> ApiResult<Json<TenantView>> {
    caller.require_admin()?;
    Ok(Json(tenant_view(&state, &find_tenant(&state, &name)?)))
}

/// Change a tenant's model grants or quotas (admin).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", params(("tenant" = String, Path)), request_body = TenantChange,
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_tenant(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(name): Path<String>, body: JsonBody<TenantChange>) -> ApiResult<Json<TenantView>> {
    caller.require_admin()?;
    let mut tenant = find_tenant(&state, &name)?;
    let body = body.0;
    check_tenant_change(&state, body.models.as_ref().unwrap_or(&BTreeSet::new()), body.quotas.as_ref())?;
    if let Some(models) = body.models {
        tenant.models = models;
    }
    if let Some(quotas) = body.quotas {
        tenant.quotas = Some(quotas);
    }
    if !state.control.update_tenant(tenant.clone()).map_err(ApiError::internal)? {
        return Err(ApiError::not_found(format!("no tenant `{name}`")));
    }
    Ok(Json(tenant_view(&state, &tenant)))
}

/// Delete a tenant and its keys (admin). Its collections and plugins stay on disk.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants", params(("tenant" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_tenant(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !state.control.delete_tenant(&name).map_err(ApiError::internal)? {
        return Err(ApiError::not_found(format!("no tenant `{}`", quarry_host::printable::printable(&name, 64))));
    }
    state.quotas.forget(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// Add an API key to a tenant (admin), e.g. to rotate keys.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "tenants", params(("tenant" = String, Path)),
    responses((status = 201, body = NewKey), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_key(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(name): Path<String>) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut tenant = find_tenant(&state, &name)?;
    if tenant.keys.len() >= 16 {
        return Err(ApiError::conflict(format!("tenant `{name}` has 16 keys, the most it may hold; revoke one first")));
    }
    let (key, record) = new_key_record();
    tenant.keys.push(record.clone());
    state.control.update_tenant(tenant).map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(NewKey { tenant: name, key_id: record.id, api_key: key })).into_response())
}

/// Revoke one of a tenant's keys (admin).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/keys/{key_id}", tag = "tenants", params(("tenant" = String, Path), ("key_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_key(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path((name, key_id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut tenant = find_tenant(&state, &name)?;
    let before = tenant.keys.len();
    tenant.keys.retain(|k| k.id != key_id);
    if tenant.keys.len() == before {
        return Err(ApiError::not_found(format!("tenant `{name}` has no key `{}`", quarry_host::printable::printable(&key_id, 32))));
    }
    state.control.update_tenant(tenant).map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
struct Usage {
    tenant: String,
    quotas: Quotas,
    usage: UsageReport,
    /// Bytes the tenant stores (the `stored_bytes` quota counts these).
    stored_bytes: u64,
    /// Bytes of the tenant's uploaded plugins (the `plugin_bytes` quota counts these).
    plugin_bytes: u64,
}

fn plugin_bytes(state: &Shared, owner: &Owner) -> u64 {
    state.quarry.plugins().iter().filter(|(o, _)| o == owner).map(|(_, p)| p.size).sum()
}

/// The calling tenant's quotas and what it uses of them.
#[utoipa::path(get, path = "/v1/usage", tag = "tenants", responses((status = 200, body = Usage), (status = 403, body = ErrorBody)))]
async fn usage(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Usage>> {
    let tenant = caller.tenant()?;
    let quotas = state.quotas_of(tenant);
    let report = state.quotas.report(&tenant.name, &quotas, state.quarry.compute_used(&tenant.name));
    let stored_bytes = state.quarry.stored_bytes(&tenant.name).map_err(ApiError::internal)?;
    let plugin_bytes = plugin_bytes(&state, &Owner::Tenant(tenant.name.clone()));
    Ok(Json(Usage { tenant: tenant.name.clone(), quotas, usage: report, stored_bytes, plugin_bytes }))
}

// ---- models ----

#[derive(Serialize, ToSchema)]
struct ModelView {
    name: String,
    /// `text-encoder`, `image-encoder`, `projector`, `decoder`, ...
    role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewModel {
    /// Path of a model manifest on the server's disk (see `quarry schema model`).
    manifest: String,
}

/// Models: the ones granted to the calling tenant, or all for the admin.
#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = Vec<ModelView>)))]
async fn list_models(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> Json<Vec<ModelView>> {
    let visible = |name: &str| match &caller {
        Caller::Admin => true,
        Caller::Tenant(t) => t.models.contains(name),
    };
    Json(
        state
            .quarry
            .models()
            .manifests()
            .into_iter()
            .filter(|m| visible(&m.name))
            .map(|m| ModelView { role: serde_json::to_value(m.role).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(), name: m.name })
            .collect(),
    )
}

/// Register a model from a manifest on the server's disk (admin).
#[utoipa::path(post, path = "/v1/models", tag = "models", request_body = NewModel,
    responses((status = 201, body = ModelView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn add_model(State(state): State<Shared>, Extension(caller): Extension<Caller>, body: JsonBody<NewModel>) -> ApiResult<Response> {
    caller.require_admin()?;
    let quarry = state.quarry.clone();
    let manifest = blocking(move || quarry.add_model_file(std::path::Path::new(&body.0.manifest))).await?.map_err(ApiError::from_host)?;
    let role = serde_json::to_value(manifest.role).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    Ok((StatusCode::CREATED, Json(ModelView { name: manifest.name, role })).into_response())
}

// ---- collections and routes ----

/// `tenant/collection` for a collection name from a path.
pub(crate) fn qualified(tenant: &Tenant, collection: &str) -> ApiResult<String> {
    quarry_host::store::validate_name("collection", collection).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(format!("{}/{collection}", tenant.name))
}

/// The tenant's collection, or 404 (whatever other tenants hold).
pub(crate) fn routed(state: &Shared, tenant: &Tenant, collection: &str) -> ApiResult<(String, Arc<Target>)> {
    let key = qualified(tenant, collection)?;
    let route = state.quarry.route(&key).map_err(|_| {
        ApiError::not_found(format!("no collection `{collection}`; create it by setting its route: PUT /v1/collections/{collection}/route"))
    })?;
    Ok((key, route))
}

#[derive(Serialize, ToSchema)]
struct CollectionView {
    name: String,
    items: usize,
    route: RouteView,
}

/// What a collection is routed to: exactly one of a strategy (with its config and grants), a
/// pipeline of the tenant's, or an experiment. Requests are read as [`quarry_host::routing::Declared`].
#[derive(Serialize, ToSchema, Default)]
pub(crate) struct RouteView {
    /// `name@version` of the tenant's own strategy or a shared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<String>,
    /// The strategy's config (see its `config_schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    config: Option<serde_json::Value>,
    /// Models the strategy may call; each must be granted to the tenant.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    models: BTreeSet<String>,
    /// Other collections of the tenant the strategy may read and write.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    collections: BTreeSet<String>,
    /// Strategies (`name@version`) the strategy may call; each runs as the called collection's
    /// route runs it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    strategies: BTreeSet<String>,
    /// A pipeline the tenant declared with `PUT /v1/pipelines/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pipeline: Option<String>,
    /// An experiment: `{"name", "arms": [{"name", "weight", "strategy", "config", "models"} or
    /// {"name", "weight", "pipeline"}], "interleave"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    experiment: Option<serde_json::Value>,
}

pub(crate) fn route_view(target: &Target) -> RouteView {
    match target {
        Target::Strategy(route) => RouteView {
            strategy: Some(route.strategy.clone()),
            config: Some(route.config.clone()),
            models: route.grants.models.clone(),
            collections: route.grants.collections.clone(),
            strategies: route.grants.strategies.clone(),
            ..Default::default()
        },
        Target::Pipeline { pipeline } => RouteView { pipeline: Some(pipeline.clone()), ..Default::default() },
        Target::Experiment { experiment } => RouteView { experiment: serde_json::to_value(experiment).ok(), ..Default::default() },
    }
}

fn collection_view(state: &Shared, key: &str, target: &Target) -> ApiResult<CollectionView> {
    let items = state.quarry.item_count(key).map_err(ApiError::internal)?;
    Ok(CollectionView { name: quarry_host::store::split_qualified(key).1.to_string(), items, route: route_view(target) })
}

/// The calling tenant's collections.
#[utoipa::path(get, path = "/v1/collections", tag = "collections", responses((status = 200, body = Vec<CollectionView>), (status = 403, body = ErrorBody)))]
async fn list_collections(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Vec<CollectionView>>> {
    let tenant = caller.tenant()?;
    let prefix = format!("{}/", tenant.name);
    let state2 = state.clone();
    let views = blocking(move || {
        state2.quarry.routes().iter().filter(|(key, _)| key.starts_with(&prefix)).map(|(key, route)| collection_view(&state2, key, route)).collect::<ApiResult<Vec<_>>>()
    })
    .await??;
    Ok(Json(views))
}

/// One collection: its item count and route.
#[utoipa::path(get, path = "/v1/collections/{collection}", tag = "collections", params(("collection" = String, Path)),
    responses((status = 200, body = CollectionView), (status = 404, body = ErrorBody)))]
async fn get_collection(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(collection): Path<String>) -> ApiResult<Json<CollectionView>> {
    let tenant = caller.tenant()?;
    let (key, route) = routed(&state, tenant, &collection)?;
    Ok(Json(collection_view(&state, &key, &route)?))
}

/// Route a collection to a strategy version (creating the collection), atomically: calls in
/// flight finish on the version they began with.
#[utoipa::path(put, path = "/v1/collections/{collection}/route", tag = "collections", params(("collection" = String, Path)), request_body = RouteView,
    responses((status = 200, body = RouteView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_route(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(collection): Path<String>, body: JsonBody<serde_json::Value>) -> ApiResult<Json<RouteView>> {
    let tenant = caller.tenant()?;
    let key = qualified(tenant, &collection)?;
    let target = crate::composition::parse::<quarry_host::routing::Declared>("route", body.0)?.0;
    crate::composition::check_grants(&state, tenant, &target)?;
    let view = route_view(&target);
    let quarry = state.quarry.clone();
    blocking(move || quarry.set_target(&key, target)).await?.map_err(ApiError::from_host)?;
    Ok(Json(view))
}

// ---- items ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    id: String,
    text: Option<String>,
    /// A PNG or JPEG image, base64.
    image: Option<String>,
    /// In a `multipart/form-data` ingest: the name of the part holding this item's image.
    image_part: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IngestBody {
    items: Vec<ItemBody>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct IngestParams {
    /// Run as a job and answer 202 with its id at once.
    #[serde(default)]
    background: bool,
}

#[derive(Serialize, ToSchema)]
struct IngestView {
    /// What indexed the items: the strategy version, or the pipeline or experiment whose
    /// strategies all did.
    strategy: String,
    /// Items stored and indexed.
    ingested: usize,
    /// Items the same strategy version already indexed with the same content.
    unchanged: usize,
}

#[derive(Serialize, ToSchema)]
struct JobStarted {
    job: String,
    /// Poll this for progress.
    location: String,
}

fn decode_image(encoded: &str, what: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|e| ApiError::bad_request(format!("{what}: `image` is not valid base64 ({e})")))
}

fn mime_of(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Parse and check items: all of them or none. `files` holds a multipart body's image parts.
fn parse_items(content_type: &str, body: &[u8], mut files: Option<HashMap<String, Vec<u8>>>) -> ApiResult<Vec<NewItem>> {
    let mime = mime_of(content_type);
    let lines: Vec<(String, ItemBody)> = match mime.as_str() {
        "application/json" => {
            let parsed: IngestBody = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not an ingest request ({{\"items\": [...]}}): {e}")))?;
            parsed.items.into_iter().enumerate().map(|(i, item)| (format!("item {i}"), item)).collect()
        }
        "application/x-ndjson" | "application/jsonl" => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the NDJSON body is not UTF-8"))?;
            let mut out = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let item: ItemBody = serde_json::from_str(line).map_err(|e| ApiError::bad_request(format!("line {}: not an item ({{\"id\", \"text\", \"image\", \"metadata\"}}): {e}", n + 1)))?;
                out.push((format!("line {}", n + 1), item));
            }
            out
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send items as `application/json` ({\"items\": [...]}), `application/x-ndjson` (one item per line), or `multipart/form-data` (an `items` part and one part per image)",
            ));
        }
    };
    if lines.is_empty() {
        return Err(ApiError::bad_request("no items in the body"));
    }
    let mut items = Vec::with_capacity(lines.len());
    for (at, item) in lines {
        quarry_host::store::validate_item_id(&item.id).map_err(|e| ApiError::bad_request(format!("{at}: {e:#}")))?;
        if item.text.is_none() && item.image.is_none() && item.image_part.is_none() {
            return Err(ApiError::bad_request(format!("{at} (`{}`) has neither `text` nor `image`", quarry_host::printable::printable(&item.id, 64))));
        }
        let image = match (&item.image, &item.image_part, files.as_mut()) {
            (Some(_), Some(_), _) => return Err(ApiError::bad_request(format!("{at}: send the image in `image` (base64) or `image_part`, not both"))),
            (Some(encoded), None, _) => Some(decode_image(encoded, &at)?),
            (None, Some(_), None) => {
                return Err(ApiError::bad_request(format!("{at}: `image_part` names a part of a `multipart/form-data` body; in JSON, send the image base64 in `image`")));
            }
            (None, Some(name), Some(files)) => Some(files.remove(name).ok_or_else(|| {
                ApiError::bad_request(format!("{at}: no part named `{}` holds its image (each part is one item's image)", quarry_host::printable::printable(name, 64)))
            })?),
            (None, None, _) => None,
        };
        if let Some(bytes) = &image {
            quarry_host::models::preprocess::decode(bytes).map_err(|e| ApiError::bad_request(format!("{at}: {e:#}")))?;
        }
        let metadata = if item.metadata.is_null() { serde_json::json!({}) } else { item.metadata };
        if !metadata.is_object() {
            return Err(ApiError::bad_request(format!("{at}: `metadata` must be a JSON object")));
        }
        items.push(NewItem { id: item.id, text: item.text, image, image_source: None, metadata });
    }
    if let Some(name) = files.and_then(|files| files.into_keys().next()) {
        return Err(ApiError::bad_request(format!("part `{}` is no item's `image_part`; name it from an item or leave it out", quarry_host::printable::printable(&name, 64))));
    }
    Ok(items)
}

/// Most parts one multipart ingest may carry.
const MAX_PARTS: usize = 10_000;

/// A `multipart/form-data` ingest: the `items` part (its type says JSON or NDJSON) and the
/// image parts by name.
async fn read_multipart(content_type: &str, body: Bytes) -> ApiResult<(String, Vec<u8>, HashMap<String, Vec<u8>>)> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| ApiError::bad_request(format!("the multipart body has no usable boundary ({e})")))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let (mut items, mut files) = (None, HashMap::new());
    let mut parts = 0;
    while let Some(field) = multipart.next_field().await.map_err(|e| ApiError::bad_request(format!("the multipart body is malformed: {e}")))? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ApiError::bad_request(format!("more than {MAX_PARTS} parts; send fewer items per request")));
        }
        let name = field.name().unwrap_or_default().to_string();
        if name.is_empty() || name.len() > 128 {
            return Err(ApiError::bad_request(format!("part {parts} needs a name of 1 to 128 bytes (`Content-Disposition: form-data; name=...`)")));
        }
        let kind = field.content_type().map_or_else(|| "application/json".to_string(), |m| m.essence_str().to_string());
        let bytes = field.bytes().await.map_err(|e| ApiError::bad_request(format!("part `{}`: {e}", quarry_host::printable::printable(&name, 64))))?;
        if name == "items" {
            if items.replace((kind, bytes.to_vec())).is_some() {
                return Err(ApiError::bad_request("more than one `items` part"));
            }
        } else if files.insert(name.clone(), bytes.to_vec()).is_some() {
            return Err(ApiError::bad_request(format!("two parts are named `{}`", quarry_host::printable::printable(&name, 64))));
        }
    }
    let (kind, items) = items.ok_or_else(|| ApiError::bad_request("no `items` part: send the items as JSON or NDJSON in a part named `items`"))?;
    Ok((kind, items, files))
}

/// Store items (JSON, NDJSON with images base64, or multipart with images as parts) and have
/// the routed strategy index them. Each batch lands whole or not at all; a 200 means every item
/// landed.
#[utoipa::path(post, path = "/v1/collections/{collection}/items", tag = "items", params(("collection" = String, Path), IngestParams),
    request_body(content((IngestBody = "application/json"), (String = "application/x-ndjson"), (String = "multipart/form-data")),
        description = "Items to ingest: JSON, NDJSON, or multipart with an `items` part (JSON or NDJSON, items naming their image's part in `image_part`) and one part per image"),
    responses((status = 200, body = IngestView), (status = 202, body = JobStarted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn ingest(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(collection): Path<String>,
    params: Result<Query<IngestParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let tenant = caller.tenant()?.clone();
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = body.map_err(|e| if e.status() == StatusCode::PAYLOAD_TOO_LARGE { crate::error::too_large() } else { ApiError::bad_request(e.body_text()) })?;
    let (key, route) = routed(&state, &tenant, &collection)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let items = if mime_of(&content_type) == "multipart/form-data" {
        let (kind, items, files) = read_multipart(&content_type, body).await?;
        blocking(move || parse_items(&kind, &items, Some(files))).await??
    } else {
        blocking(move || parse_items(&content_type, &body, None)).await??
    };
    if params.background {
        let (job, progress) = state.jobs.start(&tenant.name, "ingest", &collection, items.len()).map_err(|limit| jobs_full(&tenant.name, limit))?;
        let (state2, job2) = (state.clone(), job.clone());
        tokio::task::spawn_blocking(move || {
            let outcome = run_ingest(&state2, &tenant.name, &key, &route.describe(), items, |done| progress.set(done));
            state2.jobs.finish(&tenant.name, &job2, outcome.map(|v| serde_json::to_value(v).unwrap_or_default()).map_err(|e| e.message));
        });
        return Ok((StatusCode::ACCEPTED, Json(JobStarted { location: format!("/v1/jobs/{job}"), job })).into_response());
    }
    let state2 = state.clone();
    let view = blocking(move || run_ingest(&state2, &tenant.name, &key, &route.describe(), items, |_| {})).await??;
    Ok(Json(view).into_response())
}

fn jobs_full(tenant: &str, limit: usize) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!("tenant `{tenant}` already runs {limit} jobs (`max_jobs_per_tenant`); wait for one to finish (GET /v1/jobs)"),
    );
    e.quota = Some("max_jobs_per_tenant");
    e.retry_after = Some(5);
    e
}

fn run_ingest(state: &Shared, tenant: &str, key: &str, strategy: &str, items: Vec<NewItem>, progress: impl FnMut(usize)) -> ApiResult<IngestView> {
    let started = Instant::now();
    let result = state.quarry.ingest(key, items, progress);
    record_call(state, tenant, strategy, result.as_ref().err(), started);
    let report = result.map_err(ApiError::from_call)?;
    Ok(IngestView { strategy: strategy.to_string(), ingested: report.ingested, unchanged: report.unchanged })
}

fn record_call(state: &Shared, tenant: &str, strategy: &str, error: Option<&quarry_host::CallError>, started: Instant) {
    state.metrics.call(tenant, strategy, error.map_or("ok", crate::error::outcome), started.elapsed());
}

#[derive(Serialize, ToSchema)]
struct ItemView {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    /// The strategy version that indexed the item.
    indexed_by: String,
}

/// One stored item.
#[utoipa::path(get, path = "/v1/collections/{collection}/items/{id}", tag = "items", params(("collection" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = ItemView), (status = 404, body = ErrorBody)))]
async fn get_item(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path((collection, id)): Path<(String, String)>) -> ApiResult<Json<ItemView>> {
    let tenant = caller.tenant()?;
    let (key, _) = routed(&state, tenant, &collection)?;
    let item = state.quarry.item(&key, &id).map_err(ApiError::from_host)?.ok_or_else(|| {
        ApiError::not_found(format!("collection `{collection}` has no item `{}`", quarry_host::printable::printable(&id, 64)))
    })?;
    Ok(Json(ItemView { id: item.id, text: item.text, metadata: item.metadata, indexed_by: item.indexed_by }))
}

/// Delete an item and all its fields, durably.
#[utoipa::path(delete, path = "/v1/collections/{collection}/items/{id}", tag = "items", params(("collection" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_item(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path((collection, id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let tenant = caller.tenant()?;
    let (key, _) = routed(&state, tenant, &collection)?;
    let quarry = state.quarry.clone();
    let ids = vec![id.clone()];
    let existed = blocking(move || quarry.delete(&key, &ids)).await?.map_err(ApiError::from_host)?;
    if existed == 0 {
        return Err(ApiError::not_found(format!("collection `{collection}` has no item `{}`", quarry_host::printable::printable(&id, 64))));
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---- search and build ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    /// The query text.
    text: Option<String>,
    /// A query image (PNG or JPEG), base64; with `text` too, composed strategies read the text
    /// as a change to the image.
    image: Option<String>,
    /// Hits wanted (at most the host's `limits.max_hits`).
    #[serde(default = "default_k")]
    k: u32,
    /// Per-query parameters for the strategy.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: serde_json::Value,
    /// Answer with this `name@version` instead of the routed one (same config and grants); only
    /// for a collection routed to one strategy.
    strategy: Option<String>,
    /// Sticky assignment in an experiment: the same key (a user or session id) gets the same arm.
    key: Option<String>,
    /// Seeds an interleaving experiment's coin, so an impression can be replayed.
    query_id: Option<String>,
}

fn default_k() -> u32 {
    10
}

#[derive(Serialize, ToSchema)]
struct SearchView {
    /// What answered: `name@version`, or `pipeline:<name>`.
    strategy: String,
    /// The strategy versions whose hits are in the answer.
    strategies: Vec<String>,
    /// The experiment that answered, if the route is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    experiment: Option<String>,
    /// The arm that answered (`a+b` when interleaved).
    #[serde(skip_serializing_if = "Option::is_none")]
    arm: Option<String>,
    /// Send clicks on these hits to `POST /v1/feedback` with this id.
    #[serde(skip_serializing_if = "Option::is_none")]
    impression: Option<String>,
    hits: Vec<HitView>,
    /// What the host changed about the request, such as a `k` over the host's `max_hits`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct HitView {
    id: String,
    score: f32,
    /// Named parts of the score (for example `global` and `local`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    features: std::collections::BTreeMap<String, f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    /// In an interleaved experiment, the arm that picked this hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<String>,
}

/// Search a collection with its routed strategy, by text, image, or both.
#[utoipa::path(post, path = "/v1/collections/{collection}/search", tag = "search", params(("collection" = String, Path)), request_body = SearchBody,
    responses((status = 200, body = SearchView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
async fn search(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(collection): Path<String>, body: JsonBody<SearchBody>) -> ApiResult<Json<SearchView>> {
    let tenant = caller.tenant()?.clone();
    let (key, route) = routed(&state, &tenant, &collection)?;
    let body = body.0;
    if body.text.is_none() && body.image.is_none() {
        return Err(ApiError::bad_request("a query needs `text`, `image`, or both"));
    }
    if !(body.params.is_null() || body.params.is_object()) {
        return Err(ApiError::bad_request("`params` must be a JSON object"));
    }
    let image = body.image.as_deref().map(|i| decode_image(i, "the query")).transpose()?;
    let strategy = body.strategy.clone().unwrap_or_else(|| route.describe());
    let request = SearchRequest { text: body.text, image, k: body.k, params: body.params, strategy: body.strategy, key: body.key, query_id: body.query_id };
    let state2 = state.clone();
    let answer = blocking(move || {
        let started = Instant::now();
        let result = state2.quarry.search(&key, &request);
        record_call(&state2, &tenant.name, &strategy, result.as_ref().err(), started);
        if let Ok(answer) = &result {
            state2.metrics.stages(&tenant.name, &answer.stage_latency);
            if let (Some(experiment), Some(arm)) = (&answer.experiment, &answer.arm) {
                state2.metrics.arm(&tenant.name, experiment, arm, started.elapsed());
            }
        }
        result
    })
    .await?
    .map_err(ApiError::from_call)?;
    Ok(Json(SearchView {
        strategy: answer.strategy,
        strategies: answer.strategies,
        experiment: answer.experiment,
        arm: answer.arm,
        impression: answer.impression,
        hits: answer.hits.into_iter().map(|h| HitView { id: h.id, score: h.score, features: h.features, text: h.text, metadata: h.metadata, team: h.team }).collect(),
        notes: answer.notes,
    }))
}

/// Have the routed strategy build its collection-level artifacts (a codebook, ...), as a job.
#[utoipa::path(post, path = "/v1/collections/{collection}/build", tag = "search", params(("collection" = String, Path)),
    responses((status = 202, body = JobStarted), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn build(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(collection): Path<String>) -> ApiResult<Response> {
    let tenant = caller.tenant()?.clone();
    let (key, route) = routed(&state, &tenant, &collection)?;
    let (job, _) = state.jobs.start(&tenant.name, "build", &collection, 0).map_err(|limit| jobs_full(&tenant.name, limit))?;
    let (state2, job2) = (state.clone(), job.clone());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let result = state2.quarry.build(&key);
        record_call(&state2, &tenant.name, &route.describe(), result.as_ref().err(), started);
        let outcome = result.map(|()| serde_json::json!({"strategy": route.describe()})).map_err(|e| e.to_string());
        state2.jobs.finish(&tenant.name, &job2, outcome);
    });
    Ok((StatusCode::ACCEPTED, Json(JobStarted { location: format!("/v1/jobs/{job}"), job })).into_response())
}

/// The calling tenant's jobs, oldest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", responses((status = 200, body = Vec<JobView>)))]
async fn list_jobs(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Vec<JobView>>> {
    Ok(Json(state.jobs.list(&caller.tenant()?.name)))
}

/// One job's state and progress.
#[utoipa::path(get, path = "/v1/jobs/{job}", tag = "jobs", params(("job" = String, Path)), responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
async fn get_job(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(job): Path<String>) -> ApiResult<Json<JobView>> {
    let tenant = caller.tenant()?;
    state.jobs.get(&tenant.name, &job).map(Json).ok_or_else(|| ApiError::not_found(format!("no job `{}`", quarry_host::printable::printable(&job, 64))))
}

// ---- plugins ----

#[derive(Serialize, ToSchema)]
struct PluginView {
    /// `name@version`.
    strategy: String,
    /// `shared`, or the owning tenant.
    owner: String,
    /// The contract version the plugin was built against.
    contract: String,
    sdk: Option<String>,
    sha256: String,
    description: String,
    /// Model roles the strategy reads from its config.
    models: Vec<String>,
    #[schema(value_type = Object)]
    fields: serde_json::Value,
    #[schema(value_type = Object)]
    config_schema: serde_json::Value,
    reranks: bool,
}

fn plugin_view(owner: &Owner, p: &quarry_host::plugins::LoadedPlugin) -> PluginView {
    let d = &p.descriptor;
    PluginView {
        strategy: p.reference.clone(),
        owner: match owner {
            Owner::Shared => "shared".into(),
            Owner::Tenant(t) => t.clone(),
        },
        contract: p.contract.clone(),
        sdk: p.sdk.clone(),
        sha256: p.sha256.clone(),
        description: d.description.clone(),
        models: d.models.clone(),
        fields: d.fields.iter().map(|(name, schema)| (name.clone(), serde_json::to_value(schema).unwrap_or_default())).collect::<serde_json::Map<_, _>>().into(),
        config_schema: d.config_schema.clone(),
        reranks: d.reranks,
    }
}

fn owner_of(caller: &Caller) -> Owner {
    match caller {
        Caller::Admin => Owner::Shared,
        Caller::Tenant(t) => Owner::Tenant(t.name.clone()),
    }
}

/// Plugins the caller may route to: its own and shared ones (the admin sees shared ones).
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", responses((status = 200, body = Vec<PluginView>)))]
async fn list_plugins(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> Json<Vec<PluginView>> {
    let mine = owner_of(&caller);
    Json(state.quarry.plugins().iter().filter(|(owner, _)| *owner == mine || *owner == Owner::Shared).map(|(owner, p)| plugin_view(owner, p)).collect())
}

/// Upload a plugin (`application/wasm`): validated against the contract, compiled, described
/// once and registered for the calling tenant (shared with every tenant when the admin uploads).
#[utoipa::path(post, path = "/v1/plugins", tag = "plugins", request_body(content = String, content_type = "application/wasm", description = "The component's bytes"),
    responses((status = 201, body = PluginView), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn add_plugin(State(state): State<Shared>, Extension(caller): Extension<Caller>, headers: HeaderMap, body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> ApiResult<Response> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().unwrap_or("").trim() != "application/wasm" {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "send the component's bytes with `Content-Type: application/wasm`"));
    }
    let body = body.map_err(|e| if e.status() == StatusCode::PAYLOAD_TOO_LARGE { crate::error::too_large() } else { ApiError::bad_request(e.body_text()) })?;
    let owner = owner_of(&caller);
    if let Caller::Tenant(tenant) = &caller {
        let cap = state.quotas_of(tenant).plugin_bytes;
        let kept = plugin_bytes(&state, &owner);
        // Only an upload past the cap is hashed here (off the async threads), to let the same
        // bytes again through; the host hashes every upload anyway.
        let again = || {
            let (quarry, owner, bytes) = (state.quarry.clone(), owner.clone(), body.clone());
            blocking(move || {
                let sha256 = quarry_host::plugins::content_hash(&bytes);
                quarry.plugins().iter().any(|(o, p)| *o == owner && p.sha256 == sha256)
            })
        };
        if kept + body.len() as u64 > cap && !again().await? {
            let message = format!(
                "tenant `{}` keeps {kept} bytes of plugins, and this one ({} bytes) would pass its quota `plugin_bytes` ({cap} bytes); \
                 remove versions no route uses (DELETE /v1/plugins/{{name@version}}) or ask the operator to raise it",
                tenant.name,
                body.len()
            );
            let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message);
            error.quota = Some("plugin_bytes");
            error.retry_after = Some(60);
            return Err(error);
        }
    }
    let (quarry, owner2) = (state.quarry.clone(), owner.clone());
    let plugin = blocking(move || quarry.add_plugin_as(&owner2, &body)).await?.map_err(ApiError::from_host)?;
    Ok((StatusCode::CREATED, Json(plugin_view(&owner, &plugin))).into_response())
}

/// What a strategy version declares, as the caller's routes see it.
#[utoipa::path(get, path = "/v1/plugins/{strategy}", tag = "plugins", params(("strategy" = String, Path, description = "name@version")),
    responses((status = 200, body = PluginView), (status = 404, body = ErrorBody)))]
async fn describe_plugin(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(strategy): Path<String>) -> ApiResult<Json<PluginView>> {
    let mine = owner_of(&caller);
    let plugins = state.quarry.plugins();
    let named = |wanted: &Owner| plugins.iter().find(|(owner, p)| p.reference == strategy && owner == wanted);
    named(&mine)
        .or_else(|| named(&Owner::Shared))
        .map(|(owner, p)| Json(plugin_view(owner, p)))
        .ok_or_else(|| ApiError::not_found(format!("no strategy `{}`; GET /v1/plugins lists yours and the shared ones", quarry_host::printable::printable(&strategy, 128))))
}

/// Remove one of the caller's plugins (the admin removes shared ones) that no route uses.
#[utoipa::path(delete, path = "/v1/plugins/{strategy}", tag = "plugins", params(("strategy" = String, Path, description = "name@version")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_plugin(State(state): State<Shared>, Extension(caller): Extension<Caller>, Path(strategy): Path<String>) -> ApiResult<StatusCode> {
    let owner = owner_of(&caller);
    let known = state.quarry.plugins().iter().any(|(o, p)| *o == owner && p.reference == strategy)
        || state.quarry.quarantined().iter().any(|q| q.owner == owner && q.reference == strategy);
    if !known {
        return Err(ApiError::not_found(format!("no strategy `{}` of yours", quarry_host::printable::printable(&strategy, 128))));
    }
    let quarry = state.quarry.clone();
    blocking(move || quarry.remove_plugin_as(&owner, &strategy)).await?.map_err(|e| ApiError::conflict(format!("{e:#}")))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A JSON body whose rejections say what to fix.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}
