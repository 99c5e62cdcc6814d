//! `quarry serve`: Quarry's multi-tenant HTTP service, a thin layer over the in-process API
//! ([`quarry_host::Quarry`]). No HTTP type reaches below this crate.
//!
//! - [`routes`]: the endpoints; the router and the OpenAPI document come from one route table.
//! - [`control`]: tenants, keys, model grants and quotas, kept in the host's control store.
//! - [`quota`]: request rate, requests in flight and one compute budget per tenant.
//! - [`metrics`]: Prometheus metrics with capped label values.
//! - [`console`]: the web console's embedded assets, at `/console`.

pub mod composition;
pub mod config;
pub mod console;
pub mod control;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod quota;
pub mod routes;

use crate::config::ServerConfig;
use crate::control::{ControlPlane, Tenant};
use crate::error::ApiError;
use anyhow::{Context as _, Result};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use quarry_host::Quarry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Who is calling, from the request's API key.
#[derive(Clone)]
pub enum Caller {
    Admin,
    Tenant(Arc<Tenant>),
}

impl Caller {
    pub fn label(&self) -> &str {
        match self {
            Caller::Admin => "(admin)",
            Caller::Tenant(t) => &t.name,
        }
    }

    /// The tenant, for endpoints that act on a tenant's own resources.
    pub fn tenant(&self) -> Result<&Tenant, ApiError> {
        match self {
            Caller::Tenant(t) => Ok(t),
            Caller::Admin => Err(ApiError::forbidden("this endpoint acts on a tenant's own resources; call it with the tenant's API key")),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(ApiError::forbidden("this endpoint is for the operator; call it with the admin key")),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub quarry: Arc<Quarry>,
    pub control: Arc<ControlPlane>,
    pub config: ServerConfig,
    admin_sha256: String,
    pub quotas: quota::QuotaBook,
    pub metrics: metrics::Metrics,
    pub jobs: jobs::Jobs,
    /// Cleared when shutdown begins, so `/readyz` turns load balancers away.
    ready: AtomicBool,
    /// Refusals waiting out `refusal_delay_ms` now.
    delayed_refusals: std::sync::atomic::AtomicUsize,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// State over an open host. `admin_sha256` is the SHA-256 (hex) of the admin key.
    pub fn new(quarry: Arc<Quarry>, control: Arc<ControlPlane>, config: ServerConfig, admin_sha256: String) -> Shared {
        let metrics = metrics::Metrics::new(config.max_label_values);
        let state = Arc::new(AppState {
            quarry,
            control,
            admin_sha256,
            quotas: quota::QuotaBook::default(),
            metrics,
            jobs: jobs::Jobs::new(config.max_jobs_per_tenant),
            config,
            ready: AtomicBool::new(true),
            delayed_refusals: std::sync::atomic::AtomicUsize::new(0),
        });
        AppState::install_gates(&state);
        state
    }

    /// Have the host ask this server's quotas: compute before each model run (so work a tenant
    /// queued before its budget ran out stops when it does), plugin memory at each call, stored
    /// bytes at each commit.
    fn install_gates(state: &Shared) {
        let weak = Arc::downgrade(state);
        state.quarry.set_memory_caps(Box::new({
            let weak = weak.clone();
            move |tenant| {
                let state = weak.upgrade()?;
                let record = state.control.tenant(tenant).ok().flatten()?;
                state.quotas_of(&record).plugin_memory_bytes.map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX))
            }
        }));
        state.quarry.set_storage_caps(Box::new({
            let weak = weak.clone();
            move |tenant| {
                let state = weak.upgrade()?;
                let record = state.control.tenant(tenant).ok().flatten()?;
                state.quotas_of(&record).stored_bytes
            }
        }));
        state.quarry.set_compute_gate(Box::new(move |tenant, used| {
            let state = weak.upgrade()?;
            let record = state.control.tenant(tenant).ok().flatten()?;
            state.quotas.over_budget(tenant, &state.quotas_of(&record), used).map(|exceeded| exceeded.message(tenant))
        }));
    }

    fn quotas_of(&self, tenant: &Tenant) -> config::Quotas {
        tenant.quotas.clone().unwrap_or_else(|| self.config.default_quotas.clone())
    }

    fn authenticate(&self, request: &Request) -> Result<Caller, ApiError> {
        let unauthorized = |why: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{why}; send `Authorization: Bearer <api key>` (the operator creates tenant keys with POST /v1/tenants)"),
            )
        };
        let value = request.headers().get(header::AUTHORIZATION).ok_or_else(|| unauthorized("no API key"))?;
        let key = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or_else(|| unauthorized("the Authorization header is not `Bearer <api key>`"))?;
        if key.len() > 256 {
            return Err(unauthorized("the API key is not valid"));
        }
        let hash = keys::hash(key);
        if keys::same(&hash, &self.admin_sha256) {
            return Ok(Caller::Admin);
        }
        match self.control.tenant_by_key(&hash).map_err(ApiError::internal)? {
            Some(tenant) => Ok(Caller::Tenant(Arc::new(tenant))),
            None => Err(unauthorized("the API key is not valid")),
        }
    }
}

/// Run blocking host work off the async workers.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(ApiError::internal)
}

/// Every `/v1` request and `/metrics`: authenticate, admit under the tenant's quotas, record
/// metrics and a log line.
async fn gate(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("(unmatched)", |m| m.as_str()).to_string();
    let method = request.method().to_string();
    let caller = match state.authenticate(&request) {
        Ok(caller) => caller,
        Err(e) => {
            state.metrics.request("(none)", &route, &method, e.status.as_u16(), started.elapsed());
            return e.into_response();
        }
    };
    let mut admitted = None;
    if let Caller::Tenant(tenant) = &caller {
        let used = state.quarry.compute_used(&tenant.name);
        // Writes and queries (POST, PUT) run plugins and models; reads never wait on the budget.
        let computes = matches!(*request.method(), axum::http::Method::POST | axum::http::Method::PUT);
        match state.quotas.admit(&tenant.name, &state.quotas_of(tenant), used, computes) {
            Ok(in_flight) => admitted = Some(in_flight),
            Err(exceeded) => {
                state.metrics.quota_rejected(&tenant.name, exceeded.quota());
                state.metrics.request(&tenant.name, &route, &method, 429, started.elapsed());
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", exceeded.message(&tenant.name));
                e.quota = Some(exceeded.quota());
                e.retry_after = Some(exceeded.retry_after_seconds());
                return state.refuse(e).await;
            }
        }
    }
    let label = caller.label().to_string();
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    drop(admitted);
    if let Some(error::RefusedOn(quota)) = response.extensions().get() {
        state.metrics.quota_rejected(&label, quota);
    }
    let status = response.status().as_u16();
    state.metrics.request(&label, &route, &method, status, started.elapsed());
    tracing::info!(tenant = %label, %method, %route, status, ms = started.elapsed().as_secs_f64() * 1e3, "request");
    response
}

impl AppState {
    /// Send a 429 after `refusal_delay_ms` (at most its `Retry-After`): a flooding client then
    /// costs a held connection instead of a core. Past `max_delayed_refusals` waiting, the
    /// answer goes at once and closes the connection.
    async fn refuse(&self, error: ApiError) -> Response {
        let delay = Duration::from_millis(self.config.refusal_delay_ms).min(Duration::from_secs(error.retry_after.unwrap_or(1)));
        if delay.is_zero() {
            return error.into_response();
        }
        let waiting = self.delayed_refusals.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.config.max_delayed_refusals {
            self.delayed_refusals.fetch_sub(1, Ordering::Relaxed);
            let mut response = error.into_response();
            response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        tokio::time::sleep(delay).await;
        self.delayed_refusals.fetch_sub(1, Ordering::Relaxed);
        error.into_response()
    }
}

/// Echo the caller's `x-request-id` (if printable and short) or make one, on every response
/// and in the request's log lines.
async fn request_id(mut request: Request, next: Next) -> Response {
    let given = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()));
    let id = match given {
        Some(id) => id.to_string(),
        None => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("the OS random source works");
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    let value = HeaderValue::from_str(&id).expect("checked: visible ASCII");
    request.headers_mut().insert("x-request-id", value.clone());
    let span = tracing::info_span!("request", id = %id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    response.headers_mut().insert("x-request-id", value);
    response
}

/// The admin key's hash: from `QUARRY_ADMIN_KEY`, the config, or a key made (and printed once)
/// at the first start and kept in the control store as `server/admin-key.sha256`.
fn admin_key_hash(config: &ServerConfig, control: &ControlPlane) -> Result<String> {
    const ADMIN_KEY: &str = "server/admin-key.sha256";
    if let Ok(key) = std::env::var("QUARRY_ADMIN_KEY") {
        if key.len() < 16 {
            anyhow::bail!("QUARRY_ADMIN_KEY is shorter than 16 characters; use a long random key (`openssl rand -base64 32`)");
        }
        return Ok(keys::hash(&key));
    }
    if let Some(hash) = &config.admin_key_sha256 {
        return Ok(hash.to_ascii_lowercase());
    }
    let stored = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).trim().to_string();
    if let Some(hash) = control.store().get(ADMIN_KEY)? {
        return Ok(stored(hash));
    }
    let key = keys::generate();
    // Only the first of several servers starting on one store makes the key.
    if !control.store().compare_and_swap(ADMIN_KEY, None, keys::hash(&key).as_bytes())? {
        let hash = control.store().get(ADMIN_KEY)?.context("the admin key's hash vanished while this server started; start it again")?;
        return Ok(stored(hash));
    }
    eprintln!("quarry serve: made the admin key (shown once; its hash is kept as {ADMIN_KEY}):\n{key}");
    Ok(keys::hash(&key))
}

/// The control store `config` names (etcd, for replicas), or `None` for files in the data
/// directory.
pub fn control_store(config: &ServerConfig) -> Result<Option<Arc<dyn quarry_host::control::ControlStore>>> {
    Ok(match &config.control {
        None => None,
        Some(config::ControlConfig::Etcd(etcd)) => Some(Arc::new(quarry_etcd::EtcdStore::connect(&etcd.endpoints, &etcd.namespace)?)),
    })
}

/// The collection store `config` names (Milvus, for replicas), or `None` for the data
/// directory's own. Writers take turns through `control`, the control store the servers share
/// (the data directory's files when `None`).
pub fn collection_store(
    config: &ServerConfig,
    control: Option<&Arc<dyn quarry_host::control::ControlStore>>,
    data_dir: &std::path::Path,
) -> Result<Option<Arc<dyn quarry_host::store::CollectionStore>>> {
    Ok(match &config.collections {
        None => None,
        Some(config::CollectionsConfig::Milvus(milvus)) => {
            let control = control.cloned().unwrap_or_else(|| Arc::new(quarry_host::control::DirectoryStore::new(data_dir)));
            Some(Arc::new(quarry_milvus::MilvusStore::connect_shared(&milvus.uri, &milvus.namespace, control)?))
        }
    })
}

/// Log to stderr, as text or JSON lines.
pub fn init_logging(format: config::LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    let _ = match format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// Serve `quarry` with `config` until SIGTERM or Ctrl-C; then stop accepting, let requests in
/// flight and running jobs finish (up to `shutdown_grace_seconds`), and return.
pub fn serve(quarry: Quarry, config: ServerConfig) -> Result<()> {
    config.validate()?;
    init_logging(config.log_format);
    let control = Arc::new(ControlPlane::open(quarry.control())?);
    let admin = admin_key_hash(&config, &control)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let grace = Duration::from_secs(config.shutdown_grace_seconds);
        let tls = match &config.tls {
            Some(files) => {
                // rustls with the ring provider, chosen here once for the process.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.certificate, &files.private_key).await.with_context(|| {
                    format!("cannot load the TLS certificate {} and key {} (PEM files)", files.certificate.display(), files.private_key.display())
                })?;
                Some(tls)
            }
            None => None,
        };
        let address = listener.local_addr()?;
        if tls.is_none() && !address.ip().is_loopback() {
            tracing::warn!("serving plain HTTP on {address}, beyond loopback: API keys travel in clear text; configure `tls`");
        }
        let state = AppState::new(Arc::new(quarry), control, config, admin);
        eprintln!("quarry serve: listening on {}://{address}", if tls.is_some() { "https" } else { "http" });
        run(listener, state, shutdown_signal(), grace, tls).await
    })
}

/// Serve on `listener` (HTTPS with `tls`) until `stop` resolves, then drain within `grace`.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Shared,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> Result<()> {
    let (router, _) = routes::router(state.clone());
    let draining = state.clone();
    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    let stopping = async move {
        stop.await;
        draining.ready.store(false, Ordering::Release);
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        let _ = stopped_tx.send(true);
    };
    let mut stopped = stopped_rx.clone();
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    match tls {
        None => {
            let server = axum::serve(listener, router).with_graceful_shutdown(stopping);
            tokio::select! {
                served = server => served.context("the HTTP server failed")?,
                () = deadline => tracing::warn!("requests were still running {} s after shutdown began; stopping anyway", grace.as_secs()),
            }
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let draining = handle.clone();
            tokio::spawn(async move {
                stopping.await;
                draining.graceful_shutdown(Some(grace));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, tls)?
                .handle(handle)
                .serve(router.into_make_service())
                .await
                .context("the HTTPS server failed")?;
        }
    }
    // Jobs run on blocking threads and commit batch by batch: wait for them within what is
    // left of the grace period; a job cut short keeps every batch it committed.
    let until = Instant::now() + grace;
    while state.jobs.running() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
