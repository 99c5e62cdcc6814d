//! The host's in-process API: what the CLI, the tests and an embedding application call.

use crate::capacity::{Deadline, FairShare};
use crate::index::Indexes;
use crate::models::{ModelManifest, Models};
use crate::plugins::contract::{CallContext, Item, PluginHit, Query};
use crate::plugins::host_api::{CallGrants, HostServices, LogLevel};
use crate::plugins::limits::Limits;
use crate::control::{ControlStore, DirectoryStore};
use crate::plugins::registry::{Owner, Quarantined, Registry, Route};
use crate::plugins::{CallError, CallOutput, LoadedPlugin, PluginRuntime};
use crate::sources::NewItem;
use crate::index::filter::Filter;
use crate::store::{AnnParams, CollectionStore, FieldSchema, Precision, RedbStore, StoredItem, WriteBatch, qualify, split_qualified};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Where a host keeps its data, and the limits it runs plugins under.
#[derive(Clone)]
pub struct HostConfig {
    /// Model manifests live here, and collections, plugins and routes unless `collections` and
    /// `control` say otherwise.
    pub data_dir: PathBuf,
    /// Where plugins, routes and pipelines are kept; defaults to files in `data_dir`.
    pub control: Option<Arc<dyn ControlStore>>,
    /// Where collections are kept; defaults to `<data_dir>/collections.redb`.
    pub collections: Option<Arc<dyn CollectionStore>>,
    /// Compiled plugins, keyed by content hash; defaults to `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    pub limits: Limits,
    /// Print plugin log lines at or above this level.
    pub verbose: bool,
}

impl HostConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        HostConfig { data_dir: data_dir.into(), control: None, collections: None, cache_dir: None, limits: Limits::default(), verbose: false }
    }
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("data_dir", &self.data_dir)
            .field("control", &self.control.as_ref().map(|_| "custom"))
            .field("collections", &self.collections.as_ref().map(|_| "custom"))
            .field("cache_dir", &self.cache_dir)
            .field("limits", &self.limits)
            .field("verbose", &self.verbose)
            .finish()
    }
}

/// A search request.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub text: Option<String>,
    pub image: Option<Vec<u8>>,
    pub k: u32,
    /// Per-query parameters passed to the strategy (a JSON object).
    pub params: serde_json::Value,
    /// Use this `name@version` instead of the collection's routed strategy (same config and
    /// grants); only for a collection routed to one strategy.
    pub strategy: Option<String>,
    /// The caller's key for sticky arm assignment in an experiment (a user or session id): the
    /// same key gets the same arm. Without one, each call is assigned afresh.
    pub key: Option<String>,
    /// Seeds an interleaving experiment's coin: the same query id gives the same merge.
    /// Defaults to the impression's id.
    pub query_id: Option<String>,
}

impl SearchRequest {
    pub fn text(text: &str, k: u32) -> Self {
        SearchRequest { text: Some(text.to_string()), k, ..Default::default() }
    }
}

/// One result, with the stored item's text and metadata for display.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchHit {
    pub id: String,
    pub score: f32,
    /// Named parts of the score the strategy reported (for example `global` and `local`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub features: std::collections::BTreeMap<String, f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub metadata: serde_json::Value,
    /// In an interleaved experiment, the arm that picked this hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchResponse {
    /// What answered: `name@version`, or `pipeline:<name>`.
    pub strategy: String,
    /// The strategy versions whose hits are in the answer.
    pub strategies: Vec<String>,
    /// In an experiment: its name, the arm that answered (both arms' names, joined by `+`, when
    /// interleaved), and the impression id that feedback names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impression: Option<String>,
    pub hits: Vec<SearchHit>,
    /// What the host changed about the request, for example a `k` over `limits.max_hits`
    /// answered with fewer hits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// How long each pipeline stage took (`pipeline/stage`), for metrics.
    #[serde(skip)]
    pub stage_latency: Vec<(String, std::time::Duration)>,
}

/// A collection of a tenant, as `quarry collections` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CollectionInfo {
    /// The collection's name within its tenant.
    pub name: String,
    /// Items stored.
    pub items: usize,
    /// What its route points at, if it has one: `name@version`, `pipeline:<name>` or
    /// `experiment:<name>`.
    pub strategy: Option<String>,
}

/// The outcome of an ingest.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IngestReport {
    /// Items stored and indexed by this call.
    pub ingested: usize,
    /// Items skipped because the same strategy version already indexed the same content.
    pub unchanged: usize,
}

/// A stored model that did not load, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantinedModel {
    /// Its control store key (`models/<name>.json`).
    pub manifest: String,
    pub reason: String,
}

/// A running Quarry host.
pub struct Quarry {
    data_dir: PathBuf,
    control: Arc<dyn ControlStore>,
    runtime: Arc<PluginRuntime>,
    pub(crate) registry: Arc<Registry>,
    services: Arc<HostServices>,
    /// Serialises check-commit-apply so indexes and store agree.
    commit_lock: Mutex<()>,
    quarantined_models: Arc<RwLock<Vec<QuarantinedModel>>>,
    compute_meter: Arc<crate::capacity::ComputeMeter>,
    /// Each tenant's storage cap, when the embedding sets them.
    storage_caps: std::sync::OnceLock<Box<crate::store::StorageCaps>>,
    pub(crate) experiments: Arc<crate::experiments::Experiments>,
}

/// Compile a stored plugin and add it, or quarantine it with the reason.
fn load_found(registry: &Registry, runtime: &PluginRuntime, found: &crate::plugins::registry::Found) {
    let loaded = registry.read_found(found).and_then(|(stored, bytes)| {
        let reference = stored.descriptor.reference();
        let plugin = runtime.load_stored(&bytes, stored.descriptor).map_err(|e| (reference.clone(), e))?;
        registry.add(&found.owner, plugin, None).map_err(|e| (reference, e))
    });
    if let Err((reference, e)) = loaded {
        eprintln!("quarry: quarantined plugin {reference} ({}, {}): {e:#}", found.owner, found.record);
        registry.quarantine_found(found, reference, format!("{e:#}"));
    }
}

/// The model manifest kept at `key` registered, or quarantined with the reason.
fn load_model(key: &str, json: &[u8], models: &Models, models_dir: &Path, quarantined: &RwLock<Vec<QuarantinedModel>>) {
    let mut quarantined = quarantined.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    quarantined.retain(|q| q.manifest != key);
    if let Err(e) = ModelManifest::parse(json, models_dir, key).and_then(|manifest| models.register(manifest)) {
        eprintln!("quarry: quarantined model {key}: {e:#}");
        quarantined.push(QuarantinedModel { manifest: key.to_string(), reason: format!("{e:#}") });
    }
}

/// `models/<name>.json`: a model manifest's control store key.
fn is_model_key(key: &str) -> bool {
    key.strip_prefix("models/").is_some_and(|name| name.ends_with(".json") && !name.contains('/'))
}

/// Every model manifest in the store, registered or quarantined.
fn load_models(control: &dyn ControlStore, models: &Models, models_dir: &Path, quarantined: &RwLock<Vec<QuarantinedModel>>) -> Result<()> {
    for key in control.keys("models/")?.into_iter().filter(|k| is_model_key(k)) {
        if let Some(json) = control.get(&key)? {
            load_model(&key, &json, models, models_dir, quarantined);
        }
    }
    Ok(())
}

/// What the thread that follows the control store updates, held weakly so it ends with the host.
struct Followed {
    control: Arc<dyn ControlStore>,
    registry: std::sync::Weak<Registry>,
    runtime: std::sync::Weak<PluginRuntime>,
    services: std::sync::Weak<HostServices>,
    quarantined_models: std::sync::Weak<RwLock<Vec<QuarantinedModel>>>,
    experiments: std::sync::Weak<crate::experiments::Experiments>,
    models_dir: PathBuf,
}

impl Followed {
    /// Apply the control store's changes to this host as they come, in order, so a plugin
    /// added through another host is compiled before a route that names it takes effect.
    /// Ends when the host or the store closes.
    fn follow(&self, watch: &crate::control::Watch) {
        use crate::control::Change;
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let change = match watch.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(change) => change,
                Err(RecvTimeoutError::Timeout) if self.registry.strong_count() > 0 => continue,
                Err(_) => return,
            };
            let (Some(registry), Some(runtime), Some(services), Some(quarantined)) =
                (self.registry.upgrade(), self.runtime.upgrade(), self.services.upgrade(), self.quarantined_models.upgrade())
            else {
                return;
            };
            match &change {
                Change::Put { key, value } if is_model_key(key) => load_model(key, value, &services.models, &self.models_dir, &quarantined),
                Change::Resync => {
                    if let Err(e) = load_models(self.control.as_ref(), &services.models, &self.models_dir, &quarantined) {
                        eprintln!("quarry: could not re-read the model manifests: {e:#}");
                    }
                }
                _ => {}
            }
            match registry.apply(&change) {
                Ok(found) => found.iter().for_each(|found| load_found(&registry, &runtime, found)),
                // This host keeps what it had; the next change to the record, or a restart, tries again.
                Err(e) => eprintln!("quarry: ignored a change to the control store: {e:#}"),
            }
            // A route changed elsewhere retires old experiments' counts here too.
            if let (Change::Put { key, .. } | Change::Delete { key }, Some(experiments)) = (&change, self.experiments.upgrade())
                && let Some(collection) = key.strip_prefix("routes/").and_then(|k| k.strip_suffix(".json"))
            {
                crate::compose::forget_old_experiments(&registry, &experiments, collection);
            }
        }
    }
}

impl Quarry {
    /// Open (or create) a host over `config.data_dir`, loading its models, plugins and routes.
    /// Plugins compiled by an earlier start come from the compile cache, and no plugin code runs.
    /// A stored plugin or model that no longer loads is quarantined (see [`Quarry::quarantined`])
    /// with a warning on stderr; the host opens and everything else serves.
    pub fn open(config: HostConfig) -> Result<Self> {
        let data_dir = config.data_dir.clone();
        config.limits.validate()?;
        std::fs::create_dir_all(data_dir.join("models")).with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let store: Arc<dyn CollectionStore> = match &config.collections {
            Some(store) => store.clone(),
            None => Arc::new(RedbStore::open(&data_dir.join("collections.redb"))?),
        };
        let compute = FairShare::compute(config.limits.compute_slots());
        let compute_meter = compute.meter().expect("compute slots are metered").clone();
        let models = Arc::new(Models::new(compute.clone()));
        let level = if config.verbose { LogLevel::Debug } else { LogLevel::Warn };
        let services = Arc::new(HostServices {
            models,
            indexes: Arc::new(Indexes::new(store.clone()).with_graph_dir(data_dir.join("graphs"))),
            store,
            counters: Mutex::new(Default::default()),
            log_level: level,
        });
        if let Some(changes) = services.store.changes_elsewhere()? {
            let indexes = Arc::downgrade(&services.indexes);
            std::thread::Builder::new()
                .name("quarry-collections-follower".into())
                .spawn(move || {
                    for collections in changes {
                        let Some(indexes) = indexes.upgrade() else { return };
                        indexes.forget(&collections);
                    }
                })
                .context("cannot start the thread that follows other hosts' collection changes")?;
        }
        let runtime = PluginRuntime::new(config.cache_dir.clone().unwrap_or_else(|| data_dir.join("cache")), config.limits.clone(), compute)?;
        let control = config.control.clone().unwrap_or_else(|| Arc::new(DirectoryStore::new(&data_dir)));
        // Watch before reading, so no change falls between the read and the watch.
        let watch = control.watch("")?;
        let models_dir = std::path::absolute(data_dir.join("models")).context("cannot resolve the data directory")?;
        let quarantined_models = Arc::new(RwLock::new(Vec::new()));
        let experiments = Arc::new(crate::experiments::Experiments::new(config.limits.max_impressions));
        load_models(control.as_ref(), &services.models, &models_dir, &quarantined_models)?;
        let runtime = Arc::new(runtime);
        let registry = Arc::new(Registry::open(control.clone())?);
        for found in registry.stored()? {
            load_found(&registry, &runtime, &found);
        }
        for q in registry.quarantined().iter().filter(|q| q.reason.contains("older Quarry")) {
            eprintln!("quarry: quarantined plugin: {}", q.reason);
        }
        if let Some(watch) = watch {
            let followed = Followed {
                control: control.clone(),
                registry: Arc::downgrade(&registry),
                runtime: Arc::downgrade(&runtime),
                services: Arc::downgrade(&services),
                quarantined_models: Arc::downgrade(&quarantined_models),
                experiments: Arc::downgrade(&experiments),
                models_dir,
            };
            std::thread::Builder::new()
                .name("quarry-follow".into())
                .spawn(move || followed.follow(&watch))
                .context("cannot start the thread that follows the control store")?;
        }
        Ok(Quarry { data_dir, control, runtime, registry, services, commit_lock: Mutex::new(()), quarantined_models, compute_meter, storage_caps: Default::default(), experiments })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where this host keeps plugins, routes and pipelines; a server keeps its tenants there too.
    pub fn control(&self) -> Arc<dyn ControlStore> {
        self.control.clone()
    }

    /// Components compiled by this process, and components taken from the compile cache.
    pub fn compile_stats(&self) -> (u64, u64) {
        self.runtime.compile_stats()
    }

    /// Validate a component against the contract, compile it, run its `describe` once and
    /// register it as the default tenant's `name@version`.
    pub fn add_plugin(&self, bytes: &[u8]) -> Result<Arc<LoadedPlugin>> {
        self.add_plugin_as(&Owner::Tenant(crate::store::DEFAULT_TENANT.into()), bytes)
    }

    /// [`Quarry::add_plugin`] for `owner`: a tenant, or [`Owner::Shared`] for every tenant.
    /// Bytes the owner already added are that plugin again: `describe` is not asked twice.
    pub fn add_plugin_as(&self, owner: &Owner, bytes: &[u8]) -> Result<Arc<LoadedPlugin>> {
        if let Some(existing) = self.registry.with_hash(owner, &crate::plugins::content_hash(bytes)) {
            return Ok(existing);
        }
        let plugin = self.runtime.load_new(bytes, &self.services, owner.billed_tenant())?;
        self.registry.add(owner, plugin, Some(bytes))
    }

    pub fn add_plugin_file(&self, path: &Path) -> Result<Arc<LoadedPlugin>> {
        self.add_plugin_file_as(&Owner::Tenant(crate::store::DEFAULT_TENANT.into()), path)
    }

    pub fn add_plugin_file_as(&self, owner: &Owner, path: &Path) -> Result<Arc<LoadedPlugin>> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?;
        self.add_plugin_as(owner, &bytes).with_context(|| format!("cannot add plugin {}", path.display()))
    }

    /// The plugin the default tenant's routes mean by `reference`.
    pub fn plugin(&self, reference: &str) -> Result<Arc<LoadedPlugin>> {
        self.plugin_for(crate::store::DEFAULT_TENANT, reference)
    }

    /// The plugin `tenant`'s routes mean by `reference`: its own, else a shared one.
    pub fn plugin_for(&self, tenant: &str, reference: &str) -> Result<Arc<LoadedPlugin>> {
        Ok(self.registry.resolve(tenant, reference)?.1)
    }

    /// Every registered plugin with its owner.
    pub fn plugins(&self) -> Vec<(Owner, Arc<LoadedPlugin>)> {
        self.registry.list()
    }

    /// Stored plugins that did not load at start, and why.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.registry.quarantined()
    }

    /// Stored models that did not load at start, and why.
    pub fn quarantined_models(&self) -> Vec<QuarantinedModel> {
        self.quarantined_models.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Remove the default tenant's `reference`.
    pub fn remove_plugin(&self, reference: &str) -> Result<()> {
        self.remove_plugin_as(&Owner::Tenant(crate::store::DEFAULT_TENANT.into()), reference)
    }

    /// Remove `owner`'s `reference`, loaded or quarantined, unless a route uses it.
    pub fn remove_plugin_as(&self, owner: &Owner, reference: &str) -> Result<()> {
        self.registry.remove(owner, reference)
    }

    /// Register a model from its manifest file; the manifest is kept in the data directory.
    pub fn add_model_file(&self, path: &Path) -> Result<ModelManifest> {
        let mut manifest = ModelManifest::load(path)?;
        manifest.record_hashes()?;
        self.services.models.register(manifest.clone())?;
        // Every host sharing the control store registers it too, and checks its own copies of
        // the files against these hashes before loading them.
        self.control.put(&format!("models/{}.json", manifest.name), &serde_json::to_vec_pretty(&manifest)?)?;
        Ok(manifest)
    }

    /// The limits plugins run under.
    pub fn limits(&self) -> &Limits {
        self.runtime.limits()
    }

    pub fn models(&self) -> &Models {
        &self.services.models
    }

    /// Route `collection` to a strategy version. Calls in flight finish on the version they began with.
    /// The granted models are opened now, so calls are not billed for loading them.
    ///
    /// The route's config is checked against the strategy's config schema first; a config it
    /// refuses (a misspelt key, a wrong type) is an error naming the key, and nothing changes.
    pub fn set_route(&self, collection: &str, route: Route) -> Result<()> {
        self.set_target(collection, crate::routing::Target::Strategy(route))
    }

    /// Everything [`Quarry::set_route`] checks and prepares, short of saving the route: the
    /// grants, the config against the strategy's schema, the granted models (opened now), and the
    /// strategy's fields (declared on the collection).
    pub(crate) fn check_route(&self, collection: &str, route: &Route) -> Result<()> {
        for granted in &route.grants.collections {
            crate::store::validate_name("granted collection", granted)
                .context("granted collections are names within the route's tenant, without a `tenant/` prefix")?;
        }
        let plugin = self.plugin_for(split_qualified(collection).0, &route.strategy)?;
        if !route.config.is_object() {
            bail!("the route config for {} must be a JSON object", plugin.reference);
        }
        if let Err(problems) = plugin.schemas()?.check_config(&route.config) {
            bail!(
                "the route config does not fit {}'s config schema: {problems}; nothing was changed (`quarry plugin describe {}` shows the schema)",
                plugin.reference,
                plugin.reference
            );
        }
        for strategy in &route.grants.strategies {
            self.plugin_for(split_qualified(collection).0, strategy).context("the route grants calls to a strategy it cannot run")?;
        }
        for model in &route.grants.models {
            if !self.services.models.contains(model) {
                bail!("the route grants model `{model}`, which is not registered; add it with `quarry model add <manifest.json>`");
            }
            self.services.models.warm(model).with_context(|| format!("the route grants model `{model}`, which cannot be opened"))?;
        }
        let fields: Vec<(String, FieldSchema)> = plugin.descriptor.fields.clone();
        self.services.store.declare_fields(collection, &fields).with_context(|| format!("cannot route `{collection}` to {}", route.strategy))
    }

    /// The default tenant's collections, with their item counts and routes.
    pub fn collections(&self) -> Result<Vec<CollectionInfo>> {
        self.collections_of(crate::store::DEFAULT_TENANT)
    }

    /// `tenant`'s collections, in name order, with their item counts and routes.
    pub fn collections_of(&self, tenant: &str) -> Result<Vec<CollectionInfo>> {
        crate::store::validate_name("tenant", tenant)?;
        let routes = self.registry.routes();
        self.services
            .store
            .collection_names(tenant)?
            .into_iter()
            .map(|key| {
                Ok(CollectionInfo {
                    items: self.services.store.item_count(&key)?,
                    strategy: routes.get(&key).map(|r| r.describe()),
                    name: split_qualified(&key).1.to_string(),
                })
            })
            .collect()
    }

    /// What `collection` is routed to.
    pub fn route(&self, collection: &str) -> Result<Arc<crate::routing::Target>> {
        let key = qualify(collection)?;
        self.registry.route(&key).with_context(|| {
            format!("collection `{collection}` has no strategy route; set one with `quarry route set {collection} --strategy <name@version>`")
        })
    }

    /// The strategy route of `collection`, for what needs exactly one strategy.
    fn strategy_route(&self, collection: &str, what: &str) -> Result<Route> {
        let target = self.route(collection)?;
        match target.strategy() {
            Some(route) => Ok(route.clone()),
            None => bail!("collection `{collection}` is routed to {}; {what} needs a route to one strategy", target.describe()),
        }
    }

    pub fn routes(&self) -> std::collections::BTreeMap<String, Arc<crate::routing::Target>> {
        self.registry.routes()
    }

    /// Store items and have the routed strategy index them, in batches. Each batch lands whole
    /// or not at all, so an interrupted ingest can simply be run again: items the same strategy
    /// version already indexed with the same content are skipped. `progress` is told how many
    /// items are done (skipped or landed).
    ///
    /// A collection routed to a pipeline or an experiment is indexed by every strategy in it:
    /// each batch lands for all of them or for none.
    pub fn ingest(&self, collection: &str, items: Vec<NewItem>, progress: impl FnMut(usize)) -> Result<IngestReport, CallError> {
        let target = self.route(collection)?;
        let leaves = self.leaves(&qualify(collection)?, &target)?;
        self.ingest_routed(collection, leaves, items, progress)
    }

    /// [`Quarry::ingest`] under `route`, which becomes the collection's route only when the
    /// ingest succeeds: checked as [`Quarry::set_route`] checks it, and not saved when the ingest
    /// fails (batches that landed before the failure stay, and running the same ingest again
    /// skips them).
    pub fn ingest_with_route(&self, collection: &str, route: Route, items: Vec<NewItem>, progress: impl FnMut(usize)) -> Result<IngestReport, CallError> {
        let key = qualify(collection)?;
        self.check_route(&key, &route)?;
        let report = self.ingest_routed(collection, vec![route.clone()], items, progress)?;
        self.registry.set_route(&key, crate::routing::Target::Strategy(route), None)?;
        Ok(report)
    }

    /// Ingest through every strategy of `leaves` (one per distinct strategy route).
    fn ingest_routed(&self, collection: &str, leaves: Vec<Route>, items: Vec<NewItem>, mut progress: impl FnMut(usize)) -> Result<IngestReport, CallError> {
        let collection = &qualify(collection)?;
        let tenant = split_qualified(collection).0;
        let plugins = leaves.iter().map(|route| self.plugin_for(tenant, &route.strategy)).collect::<Result<Vec<_>>>()?;
        // Which strategies indexed an item: one reference, or several joined by `+`.
        let mut references: Vec<&str> = plugins.iter().map(|p| p.reference.as_str()).collect();
        references.sort_unstable();
        references.dedup();
        let indexed_by = references.join("+");
        for item in &items {
            crate::store::validate_item_id(&item.id).map_err(|e| CallError::Host(e.context("cannot ingest")))?;
        }
        self.services.store.ensure_collection(collection)?;
        let mut report = IngestReport::default();
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let stored = self.services.store.items(collection, &ids)?;
        let mut fresh = Vec::with_capacity(items.len());
        for (item, stored) in items.into_iter().zip(stored) {
            let fingerprint = item.fingerprint();
            match stored {
                Some(s) if s.fingerprint == fingerprint && s.indexed_by == indexed_by => report.unchanged += 1,
                _ => fresh.push((item, fingerprint)),
            }
        }
        progress(report.unchanged);
        for batch in batches(fresh, self.runtime.limits()) {
            let wit_items: Vec<Item> = batch
                .iter()
                .map(|(i, _)| Item { id: i.id.clone(), text: i.text.clone(), image: i.image.clone(), metadata: i.metadata.to_string() })
                .collect();
            let ingesting: std::collections::HashSet<String> = batch.iter().map(|(i, _)| i.id.clone()).collect();
            let mut outputs = Vec::with_capacity(leaves.len());
            for (route, plugin) in leaves.iter().zip(&plugins) {
                let ctx = CallContext { collection: split_qualified(collection).1.to_string(), config: route.config.to_string() };
                let grants = grants_for(collection, route, Some(ingesting.clone()));
                let ((), output) = self.runtime.call(plugin, &self.services, grants, self.runtime.limits().deadline_ms, |store, p| {
                    p.ingest(store, &ctx, &wit_items)
                })?;
                outputs.push((plugin.clone(), output));
            }
            let mut output = merge_outputs(&mut outputs);
            output.writes.items = batch
                .into_iter()
                .map(|(i, fingerprint)| {
                    let item = StoredItem {
                        id: i.id,
                        text: i.text,
                        image_source: i.image_source,
                        metadata: i.metadata,
                        fingerprint,
                        indexed_by: indexed_by.clone(),
                    };
                    (collection.to_string(), item)
                })
                .collect();
            let landed = output.writes.items.len();
            self.keep(&plugins[0], collection, output)?;
            for (plugin, rest) in outputs {
                self.keep_counters(&plugin, collection, rest.counters);
            }
            report.ingested += landed;
            progress(report.unchanged + report.ingested);
        }
        Ok(report)
    }

    /// Have the routed strategy build its collection-level artifacts; every strategy of a
    /// pipeline or an experiment builds, one after another.
    pub fn build(&self, collection: &str) -> Result<(), CallError> {
        let target = self.route(collection)?;
        let collection = &qualify(collection)?;
        for route in self.leaves(collection, &target)? {
            let plugin = self.plugin_for(split_qualified(collection).0, &route.strategy)?;
            let ctx = CallContext { collection: split_qualified(collection).1.to_string(), config: route.config.to_string() };
            let ((), output) = self.runtime.call(&plugin, &self.services, grants_for(collection, &route, None), self.runtime.limits().build_deadline_ms, |store, p| {
                p.build(store, &ctx)
            })?;
            self.keep(&plugin, collection, output)?;
        }
        Ok(())
    }

    /// Answer a query with the collection's routed strategy (or `request.strategy`).
    ///
    /// What the strategy returns is checked: a NaN or infinite score fails the call; duplicate
    /// ids keep their best score; hits for ids the collection does not hold are dropped (and
    /// counted in the plugin's `quarry.unknown-hit-ids` counter); the host sorts the rest, best
    /// first, ties by id. `k` is capped at `limits.max_hits`, with a note in the response.
    ///
    /// A query with neither text nor image, or with only a blank text, is refused; beside an
    /// image, a blank text is left out. Query parameters the strategy does not declare (see
    /// [`crate::plugins::schema`]) are refused, naming them.
    ///
    /// A collection routed to a pipeline or an experiment is answered by it (see
    /// [`crate::routing`]).
    pub fn search(&self, collection: &str, request: &SearchRequest) -> Result<SearchResponse, CallError> {
        self.search_target(collection, request)
    }

    /// Have the collection's routed strategy (or `request.strategy`) score `candidates` (item
    /// ids) for the query, as a cascade's second stage does; checked like [`Quarry::search`].
    /// Strategies that do not rerank answer `unsupported` (see their descriptor's `reranks`).
    pub fn rerank(&self, collection: &str, request: &SearchRequest, candidates: &[String]) -> Result<SearchResponse, CallError> {
        let limits = self.runtime.limits();
        if candidates.len() > limits.max_batch {
            return Err(CallError::Host(anyhow::anyhow!(
                "{} candidates to rerank, over the limit of {}; send fewer or raise `limits.max_batch`",
                candidates.len(),
                limits.max_batch
            )));
        }
        let key = qualify(collection)?;
        let route = self.strategy_route(collection, "rerank")?;
        let prepared = self.prepare(request)?;
        let ranked = self.run_strategy(&key, &route, request.strategy.as_deref(), &prepared, prepared.k, crate::compose::Export::Rerank(candidates), None)?;
        Ok(self.respond(ranked, &prepared))
    }

    /// Check a request once for every strategy that will answer it: text or image, `k` capped
    /// at `limits.max_hits` (with a note).
    pub(crate) fn prepare(&self, request: &SearchRequest) -> Result<crate::compose::Prepared, CallError> {
        if request.text.is_none() && request.image.is_none() {
            return Err(CallError::Host(anyhow::anyhow!("a query needs text, an image, or both")));
        }
        // A blank text says nothing: refused alone, left out beside an image.
        let blank = request.text.as_deref().is_some_and(|t| t.trim().is_empty());
        if blank && request.image.is_none() {
            return Err(CallError::Host(anyhow::anyhow!("the query text is empty; send some text, an image, or both")));
        }
        for (what, value) in [("key", &request.key), ("query id", &request.query_id)] {
            if value.as_ref().is_some_and(|v| v.is_empty() || v.len() > 256) {
                return Err(CallError::Host(anyhow::anyhow!("the {what} must be 1 to 256 bytes")));
            }
        }
        let text = if blank { None } else { request.text.clone() };
        let params = if request.params.is_null() { serde_json::json!({}) } else { request.params.clone() };
        let limits = self.runtime.limits();
        let k = (request.k as usize).min(limits.max_hits);
        let mut notes = Vec::new();
        if k < request.k as usize {
            notes.push(format!("k = {} is over this host's limit (`limits.max_hits`); answered with at most {k} hits", request.k));
        }
        let query = Query { text, image: request.image.clone(), k: k as u32, params: params.to_string() };
        Ok(crate::compose::Prepared { query, params, k: k as u32, notes })
    }

    /// Run one strategy's `search` (or `rerank`) for `k` hits, within `deadline` (the host's
    /// per-call deadline from now when none: the call is the whole request), and check,
    /// de-duplicate, sort and look up what it returns: hits for ids the collection does not hold
    /// are dropped (and counted in the plugin's `quarry.unknown-hit-ids` counter).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_strategy(
        &self,
        collection: &str,
        route: &Route,
        instead: Option<&str>,
        prepared: &crate::compose::Prepared,
        k: u32,
        export: crate::compose::Export<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<crate::compose::Ranked, CallError> {
        let plugin = self.plugin_for(split_qualified(collection).0, instead.unwrap_or(&route.strategy))?;
        plugin.schemas()?.check_params(&prepared.params).map_err(|problem| CallError::Host(anyhow::anyhow!("{}: {problem}", plugin.reference)))?;
        let limits = self.runtime.limits();
        let remaining = match deadline {
            Some(deadline) => deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as u64,
            None => limits.deadline_ms,
        };
        if remaining == 0 {
            return Err(CallError::Timeout { strategy: plugin.reference.clone(), deadline_ms: 0 });
        }
        let query = Query { k, ..prepared.query.clone() };
        let ctx = CallContext { collection: split_qualified(collection).1.to_string(), config: route.config.to_string() };
        let (hits, output) = crate::compose::running(self, &plugin.reference, || {
            self.runtime.call(&plugin, &self.services, grants_for(collection, route, None), remaining.min(limits.deadline_ms), |store, p| match export {
                crate::compose::Export::Search => p.search(store, &ctx, &query),
                crate::compose::Export::Rerank(candidates) => p.rerank(store, &ctx, &query, candidates),
            })
        })?;
        if hits.len() > limits.max_hits {
            return Err(CallError::ResultTooLarge { strategy: plugin.reference.clone(), what: "hits", count: hits.len(), limit: limits.max_hits });
        }
        if let Err(message) = check_hits(&hits) {
            return Err(CallError::InvalidResult { strategy: plugin.reference.clone(), message });
        }
        let mut best: std::collections::HashMap<String, PluginHit> = std::collections::HashMap::with_capacity(hits.len());
        for hit in hits {
            match best.get(&hit.id) {
                Some(kept) if kept.score >= hit.score => {}
                _ => {
                    best.insert(hit.id.clone(), hit);
                }
            }
        }
        let mut hits: Vec<PluginHit> = best.into_values().collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        self.keep(&plugin, collection, output)?;
        let returned = hits.len();
        let mut found = self.hits_with_items(collection, hits)?;
        let unknown = returned - found.len();
        if unknown > 0 {
            self.services.count(split_qualified(collection).0, &plugin.reference, "quarry.unknown-hit-ids", unknown as f64);
        }
        found.truncate(k as usize);
        Ok(crate::compose::Ranked { hits: found, strategies: vec![plugin.reference.clone()], notes: Vec::new(), stages: Vec::new() })
    }

    /// A live instance of the collection's routed strategy, for many searches in a row without
    /// re-instantiating (each [`Quarry::search`] takes a fresh one). Writes are discarded.
    pub fn instance(&self, collection: &str) -> Result<(crate::plugins::LiveInstance<'_>, CallContext), CallError> {
        let route = self.strategy_route(collection, "a live instance")?;
        let collection = &qualify(collection)?;
        let plugin = self.plugin_for(split_qualified(collection).0, &route.strategy)?;
        let ctx = CallContext { collection: split_qualified(collection).1.to_string(), config: route.config.to_string() };
        Ok((self.runtime.instantiate(&plugin, &self.services, grants_for(collection, &route, None))?, ctx))
    }

    /// Exact nearest neighbours on a vector field, straight from the host (no plugin),
    /// optionally keeping only items whose metadata meets `filter`.
    pub fn nearest(&self, collection: &str, field: &str, query: &[f32], k: usize, filter: Option<&serde_json::Value>) -> Result<Vec<crate::index::Scored>> {
        let filter = filter.map(|f| Filter::parse(&f.to_string())).transpose()?;
        self.services.indexes.nearest(&qualify(collection)?, field, query, k, filter.as_ref())
    }

    /// Use approximate (HNSW, `Some`) or exact (`None`) nearest-neighbour search on a vector
    /// field. Filtered searches stay exact.
    pub fn set_ann(&self, collection: &str, field: &str, ann: Option<AnnParams>) -> Result<()> {
        let collection = &qualify(collection)?;
        let _guard = self.commit_lock.lock().unwrap();
        self.services.store.set_ann(collection, field, ann)?;
        self.services.indexes.reset_ann(collection, field);
        Ok(())
    }

    /// Hold a vector field's in-memory index in f32, f16 (half the memory; scores to about 3
    /// significant digits) or int8 (f32 plus an int8 copy that single-query scans read first,
    /// re-scoring the best candidates in f32: exact scores, a quarter more memory). The store
    /// keeps the vectors as written either way. The index is rebuilt (and int8 codes trained)
    /// from the store before this returns; if f16 cannot hold the field's values, nothing
    /// changes and the error says so.
    pub fn set_precision(&self, collection: &str, field: &str, precision: Precision) -> Result<()> {
        let collection = &qualify(collection)?;
        let _guard = self.commit_lock.lock().unwrap();
        let store = &self.services.store;
        let schema = store.vector_field(collection, field, "a precision")?;
        self.services.indexes.set_precision(collection, field, schema.metric, precision, || store.set_precision(collection, field, precision))
    }

    /// A field's kind, metric, search and precision settings.
    pub fn field_schema(&self, collection: &str, field: &str) -> Result<FieldSchema> {
        let collection = &qualify(collection)?;
        let meta = self.services.store.collection(collection)?.with_context(|| format!("collection `{collection}` does not exist"))?;
        meta.fields.get(field).copied().with_context(|| format!("collection `{collection}` has no field `{field}`"))
    }

    /// Delete items and all their fields durably; returns how many existed.
    pub fn delete(&self, collection: &str, ids: &[String]) -> Result<usize> {
        let collection = &qualify(collection)?;
        let _guard = self.commit_lock.lock().unwrap();
        let existed = self.services.store.delete_items(collection, ids)?;
        self.services.indexes.remove(collection, ids);
        Ok(existed)
    }

    /// A collection-level artifact a strategy stored (for example a codebook), if present.
    pub fn blob(&self, collection: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.services.store.blob(&qualify(collection)?, name)
    }

    /// One stored item, if the collection holds it.
    pub fn item(&self, collection: &str, id: &str) -> Result<Option<StoredItem>> {
        Ok(self.services.store.items(&qualify(collection)?, &[id])?.pop().flatten())
    }

    /// Every stored item of a collection, in id order.
    pub fn items(&self, collection: &str) -> Result<Vec<StoredItem>> {
        self.services.store.scan_items(&qualify(collection)?)
    }

    /// Attach each hit's stored text and metadata (one read transaction); hits for ids the
    /// collection does not hold are left out.
    pub fn with_items(&self, collection: &str, hits: Vec<(String, f32)>) -> Result<Vec<SearchHit>> {
        self.hits_with_items(collection, hits.into_iter().map(|(id, score)| PluginHit { id, score, features: Vec::new() }).collect())
    }

    fn hits_with_items(&self, collection: &str, hits: Vec<PluginHit>) -> Result<Vec<SearchHit>> {
        let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        let items = self.services.store.items(&qualify(collection)?, &ids)?;
        Ok(hits
            .into_iter()
            .zip(items)
            .filter_map(|(hit, item)| {
                item.map(|item| SearchHit { id: hit.id, score: hit.score, features: hit.features.into_iter().collect(), text: item.text, metadata: item.metadata, team: None })
            })
            .collect())
    }

    /// Number of items stored in a collection.
    pub fn item_count(&self, collection: &str) -> Result<usize> {
        self.services.store.item_count(&qualify(collection)?)
    }

    /// Compute time `tenant` used since the host started: its calls' time on a compute slot
    /// (guest code and host work on the call's thread) plus its share of batched model runs.
    pub fn compute_used(&self, tenant: &str) -> std::time::Duration {
        self.compute_meter.used(tenant)
    }

    /// Decide, before each model run, whether a tenant may compute more: `gate(tenant, used)`
    /// returns why not (a quota's message) or `None`. A refused run ends its call with
    /// [`CallError::OverBudget`]. Set once; the HTTP service sets its compute quotas here.
    pub fn set_compute_gate(&self, gate: Box<crate::capacity::ComputeGate>) {
        self.compute_meter.set_gate(gate);
    }

    /// Cap each tenant's plugin memory at `caps(tenant)` bytes (when it says one), below
    /// `limits.memory_bytes`; a call growing past it ends with [`CallError::MemoryLimit`]. Set
    /// once; the HTTP service sets its `plugin_memory_bytes` quotas here.
    pub fn set_memory_caps(&self, caps: Box<crate::plugins::MemoryCaps>) {
        self.runtime.set_memory_caps(caps);
    }

    /// Cap the bytes each tenant stores at `caps(tenant)` (when it says one): a write that would
    /// grow a tenant past it stores nothing and ends its call with [`CallError::OverStorage`];
    /// deletes always go through. Set once; the HTTP service sets its `stored_bytes` quotas here.
    pub fn set_storage_caps(&self, caps: Box<crate::store::StorageCaps>) {
        if self.storage_caps.set(caps).is_err() {
            eprintln!("quarry: storage caps were already set; keeping the first");
        }
    }

    /// Bytes `tenant` stores: keys and values of its items, fields and blobs.
    pub fn stored_bytes(&self, tenant: &str) -> Result<u64> {
        self.services.store.tenant_bytes(tenant)
    }

    /// Counters plugins reported (and the host kept for them), keyed by
    /// `tenant/name@version/counter`.
    pub fn counters(&self) -> std::collections::HashMap<String, f64> {
        self.services.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner).flatten()
    }

    /// Keep what a successful call left: commit its writes within its deadline, then its counters.
    fn keep(&self, plugin: &LoadedPlugin, collection: &str, output: CallOutput) -> Result<(), CallError> {
        self.commit(&output.writes, output.deadline).map_err(|e| match e.downcast::<crate::capacity::Expired>() {
            Ok(_) => CallError::Timeout { strategy: plugin.reference.clone(), deadline_ms: output.deadline_ms },
            Err(e) => match e.downcast::<crate::store::OverStorage>() {
                Ok(over) => CallError::OverStorage(over),
                Err(e) => CallError::Host(e),
            },
        })?;
        self.keep_counters(plugin, collection, output.counters);
        Ok(())
    }

    fn keep_counters(&self, plugin: &LoadedPlugin, collection: &str, reported: std::collections::HashMap<String, f64>) {
        let tenant = split_qualified(collection).0;
        let mut counters = self.services.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.merge(tenant, &plugin.reference, reported, self.runtime.limits().max_counters);
    }

    /// Check, commit and apply a batch of writes, unless `deadline` passes first (then nothing
    /// is written).
    fn commit(&self, writes: &WriteBatch, deadline: Deadline) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let _guard = self.commit_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        deadline.check("the commit of the call's writes")?;
        self.services.indexes.check(writes)?;
        deadline.check("the commit of the call's writes")?;
        let uncapped = |_: &str| None;
        self.services.store.commit(writes, self.storage_caps.get().map_or(&uncapped as &crate::store::StorageCaps, |caps| caps.as_ref()))?;
        self.services.indexes.apply(writes)
    }
}

/// Most features one hit may carry.
pub const MAX_FEATURES: usize = 16;

/// Check what a strategy returned: finite scores, and at most [`MAX_FEATURES`] features per
/// hit, each named like a field (1-64 characters) with a finite value.
fn check_hits(hits: &[PluginHit]) -> Result<(), String> {
    for (i, hit) in hits.iter().enumerate() {
        let id = || crate::printable::printable(&hit.id, 64);
        if !hit.score.is_finite() {
            return Err(format!("hit {i} (`{}`) has score {}; scores must be finite numbers", id(), hit.score));
        }
        if hit.features.len() > MAX_FEATURES {
            return Err(format!("hit {i} (`{}`) has {} features; at most {MAX_FEATURES}", id(), hit.features.len()));
        }
        for (name, value) in &hit.features {
            if name.len() > 64 || crate::store::validate_name("feature", name).is_err() {
                return Err(format!(
                    "hit {i} (`{}`) has a feature named `{}`; use 1-64 characters from a-z, A-Z, 0-9, `-`, `_`, `.`",
                    id(),
                    crate::printable::printable(name, 64)
                ));
            }
            if !value.is_finite() {
                return Err(format!("hit {i} (`{}`) has feature `{name}` = {value}; features must be finite numbers", id()));
            }
        }
    }
    Ok(())
}

/// The grants of a call on qualified collection `collection`: the route's, within its tenant,
/// and for an ingest the ids of the items it adds.
fn grants_for(collection: &str, route: &Route, ingesting: Option<std::collections::HashSet<String>>) -> Arc<CallGrants> {
    let (tenant, name) = split_qualified(collection);
    let mut collections = route.grants.collections.clone();
    collections.insert(name.to_string());
    Arc::new(CallGrants {
        tenant: tenant.to_string(),
        models: route.grants.models.clone(),
        collections,
        strategies: route.grants.strategies.clone(),
        ingesting: ingesting.map(|ids| (collection.to_string(), ids)),
    })
}

/// One commit of several strategies' calls on the same batch: their writes together, under
/// the earliest deadline. The first output's counters move into the result; the others stay.
fn merge_outputs(outputs: &mut [(Arc<LoadedPlugin>, CallOutput)]) -> CallOutput {
    let (first, rest) = outputs.split_first_mut().expect("at least one strategy");
    let mut merged = CallOutput {
        writes: std::mem::take(&mut first.1.writes),
        counters: std::mem::take(&mut first.1.counters),
        deadline: first.1.deadline,
        deadline_ms: first.1.deadline_ms,
    };
    for (_, output) in rest {
        let writes = std::mem::take(&mut output.writes);
        merged.writes.fields.extend(writes.fields);
        merged.writes.blobs.extend(writes.blobs);
        let earlier = match (output.deadline.instant(), merged.deadline.instant()) {
            (Some(theirs), Some(ours)) => theirs < ours,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier {
            merged.deadline = output.deadline;
            merged.deadline_ms = output.deadline_ms;
        }
    }
    merged
}

/// Split items so that each call stays within the batch and payload limits.
fn batches(items: Vec<(NewItem, String)>, limits: &Limits) -> Vec<Vec<(NewItem, String)>> {
    let max_items = limits.max_batch.clamp(1, 64);
    let max_bytes = limits.max_payload_bytes / 2;
    let mut out: Vec<Vec<(NewItem, String)>> = Vec::new();
    let mut bytes = 0;
    for (item, fingerprint) in items {
        let size = item.image.as_ref().map_or(0, Vec::len) + item.text.as_ref().map_or(0, String::len);
        match out.last_mut() {
            Some(batch) if batch.len() < max_items && bytes + size <= max_bytes => {
                bytes += size;
                batch.push((item, fingerprint));
            }
            _ => {
                bytes = size;
                out.push(vec![(item, fingerprint)]);
            }
        }
    }
    out
}

