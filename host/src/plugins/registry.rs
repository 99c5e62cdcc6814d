//! Registered strategy versions, who owns them, and the routes that pick one per collection.
//!
//! Plugins belong to a tenant, or are shared by the operator with every tenant. A tenant's route
//! to `name@version` runs that tenant's own plugin, or else the shared one; no tenant can run
//! another's, and no tenant can take a shared plugin's name. Versions are immutable.
//!
//! A plugin is stored as its bytes and the descriptor its `describe` returned when it was
//! added, both named by the bytes' SHA-256 (never by anything the plugin chose):
//! `plugins/shared/<sha256>.{wasm,json}` and `plugins/tenants/<tenant>/<sha256>.{wasm,json}`.
//! Everything here is kept in the host's [`ControlStore`]: plugins under those keys, a
//! collection's route (with the one before) at `routes/<tenant>/<collection>.json`, a tenant's
//! pipelines at `pipelines/<tenant>.json`. Small records, each changed by a compare-and-swap,
//! so writers sharing one store never undo one another's change and a store with a value size
//! limit (etcd's is 1.5 MiB) holds any number of tenants. The single `routes.json`,
//! `routes.previous.json` and `pipelines.json` of older hosts are split up at the first start.
//! The stored descriptor is the plugin's identity; the host never asks the plugin again, so a
//! start runs no plugin code. A stored plugin that no longer loads is quarantined: it is listed
//! with the reason, refuses calls, and can be removed, while everything else serves.
//!
//! A route points at a strategy, a pipeline or an experiment ([`Target`]); pipelines are kept
//! per tenant by name. A route is swapped by replacing one `Arc`: a call holds the route and
//! plugin it started with until it ends. The route before the last change is kept for
//! rollback.

use super::host_api::Grants;
use super::LoadedPlugin;
use crate::control::{Change, ControlStore, update};
use crate::routing::{Named, Pipeline, Target};
use crate::store::{FieldSchema, split_qualified, validate_name};
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Which strategy version serves a collection, with what config and grants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `name@version` of a strategy the collection's tenant owns, or a shared one.
    pub strategy: String,
    /// The strategy's config object (see its `describe` schema).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Models and extra collections the strategy may use; the routed collection is always granted.
    #[serde(default)]
    pub grants: Grants,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// Who a plugin belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Owner {
    /// Published by the operator: every tenant may route to it.
    Shared,
    /// One tenant's own: only its routes may run it.
    Tenant(String),
}

impl Owner {
    /// A tenant, by a valid tenant name.
    pub fn tenant(name: &str) -> Result<Self> {
        validate_name("tenant", name)?;
        Ok(Owner::Tenant(name.to_string()))
    }

    /// The tenant billed for work done for this owner (`describe` at `plugin add`).
    pub fn billed_tenant(&self) -> &str {
        match self {
            Owner::Shared => crate::capacity::HOST_TENANT,
            Owner::Tenant(t) => t,
        }
    }

    /// Where this owner's plugins are kept in the control store.
    fn prefix(&self) -> String {
        match self {
            Owner::Shared => "plugins/shared".into(),
            Owner::Tenant(t) => format!("plugins/tenants/{t}"),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Shared => write!(f, "shared"),
            Owner::Tenant(t) => write!(f, "tenant `{t}`"),
        }
    }
}

/// What a plugin's `describe` returned when it was added, checked and kept as its identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginDescriptor {
    pub name: String,
    /// Strict semver.
    pub version: String,
    pub description: String,
    /// Model roles the strategy reads from its config.
    pub models: Vec<String>,
    /// Fields the strategy reads or writes, as the store keeps them.
    pub fields: Vec<(String, FieldSchema)>,
    /// JSON Schema of the strategy's config object.
    pub config_schema: serde_json::Value,
    /// Whether the strategy's `rerank` scores candidates (0.2 plugins that say so).
    #[serde(default)]
    pub reranks: bool,
}

impl PluginDescriptor {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The record kept beside a stored plugin's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPlugin {
    pub sha256: String,
    pub contract: String,
    pub sdk: Option<String>,
    pub descriptor: PluginDescriptor,
}

/// A stored plugin the host could not load, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub owner: Owner,
    /// `name@version` when its record could be read, else the file it came from.
    pub reference: String,
    pub reason: String,
    /// Its control store keys, which removing it deletes.
    pub files: Vec<String>,
}

/// A stored plugin found at start.
#[derive(Debug)]
pub struct Found {
    pub owner: Owner,
    /// The key of the record beside the bytes (`…/<sha256>.json`).
    pub record: String,
}

/// The plugin record at `key`, if it is one (`plugins/shared/<sha256>.json` or
/// `plugins/tenants/<tenant>/<sha256>.json`).
fn found_at(key: &str) -> Option<Found> {
    let owner = match key.split('/').collect::<Vec<_>>()[..] {
        ["plugins", "shared", file] if file.ends_with(".json") => Owner::Shared,
        ["plugins", "tenants", tenant, file] if file.ends_with(".json") => Owner::tenant(tenant).ok()?,
        _ => return None,
    };
    Some(Found { owner, record: key.to_string() })
}

impl Found {
    /// The hash its record is named by.
    fn sha256(&self) -> &str {
        let file = self.record.rsplit('/').next().unwrap_or_default();
        file.strip_suffix(".json").unwrap_or(file)
    }

    /// The key of the plugin's bytes.
    fn bytes(&self) -> String {
        format!("{}.wasm", self.record.strip_suffix(".json").unwrap_or(&self.record))
    }
}

type Key = (Owner, String);

/// The single documents older hosts kept every route and pipeline in.
const LEGACY_ROUTES: &str = "routes.json";
const LEGACY_PREVIOUS_ROUTES: &str = "routes.previous.json";
const LEGACY_PIPELINES: &str = "pipelines.json";

/// A collection's route, and the one it had before its last change.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRecord {
    current: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Target>,
}

/// `collection` is qualified (`tenant/name`), both parts validated names.
fn route_key(collection: &str) -> String {
    format!("routes/{collection}.json")
}

fn pipelines_key(tenant: &str) -> String {
    format!("pipelines/{tenant}.json")
}

/// Plugins by owner and `name@version`, and routes by collection, persisted in the control store.
pub struct Registry {
    control: Arc<dyn ControlStore>,
    plugins: RwLock<BTreeMap<Key, Arc<LoadedPlugin>>>,
    quarantined: RwLock<BTreeMap<Key, Quarantined>>,
    /// Routes by qualified collection name, and the route each had before its last change.
    routes: RwLock<Routes>,
    /// Pipelines by qualified name (`tenant/name`).
    pipelines: RwLock<BTreeMap<String, Arc<Pipeline>>>,
}

#[derive(Clone, Default)]
struct Routes {
    current: BTreeMap<String, Arc<Target>>,
    previous: BTreeMap<String, Arc<Target>>,
}

/// A map document of the control store (`{}` when absent).
fn parse_map<T: serde::de::DeserializeOwned>(key: &str, bytes: Option<&[u8]>) -> Result<BTreeMap<String, Arc<T>>> {
    let Some(bytes) = bytes else { return Ok(BTreeMap::new()) };
    let map: BTreeMap<String, T> = serde_json::from_slice(bytes).with_context(|| format!("the control record `{key}` is corrupt; fix or remove it"))?;
    Ok(map.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
}

fn map_bytes<T: Serialize>(map: &BTreeMap<String, Arc<T>>) -> Result<Vec<u8>> {
    let plain: BTreeMap<&String, &T> = map.iter().map(|(k, v)| (k, v.as_ref())).collect();
    Ok(serde_json::to_vec_pretty(&plain)?)
}

/// Rewrite the map document `key` through `change`, which sees what the store holds now (not
/// this process's copy) and says whether to write; returns the map as written.
fn update_map<T: Serialize + serde::de::DeserializeOwned>(
    control: &dyn ControlStore,
    key: &str,
    mut change: impl FnMut(&mut BTreeMap<String, Arc<T>>) -> Result<bool>,
) -> Result<Option<BTreeMap<String, Arc<T>>>> {
    update(control, key, |current| {
        let mut map = parse_map(key, current)?;
        if !change(&mut map)? {
            return Ok(None);
        }
        Ok(Some((map_bytes(&map)?, map)))
    })
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// Open the registry kept in `control`; the caller loads the stored plugins
    /// ([`Registry::stored`]).
    pub fn open(control: Arc<dyn ControlStore>) -> Result<Self> {
        split_legacy(control.as_ref())?;
        let routes = read_routes(control.as_ref())?;
        let pipelines = read_pipelines(control.as_ref())?;
        Ok(Registry { control, plugins: Default::default(), quarantined: Default::default(), routes: RwLock::new(routes), pipelines: RwLock::new(pipelines) })
    }

    /// Bring this process's copy in line with a change to the store, made by another host
    /// sharing it (or echoed from this one: applying a change twice changes nothing). Returns
    /// the stored plugins this host has yet to load; the caller compiles and adds them.
    pub fn apply(&self, change: &Change) -> Result<Vec<Found>> {
        let (key, value) = match change {
            Change::Put { key, value } => (key.as_str(), Some(value.as_slice())),
            Change::Delete { key } => (key.as_str(), None),
            Change::Resync => return self.resync(),
        };
        // Routes and pipelines take what the store holds now, read under the lock this host's
        // own writes hold: a change that arrives after a newer local write cannot undo it.
        if let Some(collection) = key.strip_prefix("routes/").and_then(|k| k.strip_suffix(".json")) {
            let mut routes = write(&self.routes);
            let record = parse_record::<RouteRecord>(key, self.control.get(key)?.as_deref())?;
            match record {
                Some(record) => {
                    routes.current.insert(collection.to_string(), Arc::new(record.current));
                    match record.previous {
                        Some(previous) => routes.previous.insert(collection.to_string(), Arc::new(previous)),
                        None => routes.previous.remove(collection),
                    };
                }
                None => {
                    routes.current.remove(collection);
                    routes.previous.remove(collection);
                }
            }
        } else if let Some(tenant) = key.strip_prefix("pipelines/").and_then(|k| k.strip_suffix(".json")) {
            let mut pipelines = write(&self.pipelines);
            let mine = parse_map::<Pipeline>(key, self.control.get(key)?.as_deref())?;
            Self::keep_tenants_pipelines(&mut pipelines, tenant, mine);
        } else if let Some(found) = found_at(key) {
            let sha256 = found.sha256().to_string();
            match value {
                Some(_) if self.with_hash(&found.owner, &sha256).is_none() => return Ok(vec![found]),
                Some(_) => {}
                None => {
                    write(&self.plugins).retain(|(o, _), p| !(*o == found.owner && p.sha256 == sha256));
                    write(&self.quarantined).retain(|_, q| !q.files.contains(&found.record));
                }
            }
        }
        Ok(Vec::new())
    }

    /// Re-read everything after a watch may have missed changes: routes and pipelines whole,
    /// plugins whose records are gone forgotten; returns the ones to load.
    fn resync(&self) -> Result<Vec<Found>> {
        let routes = read_routes(self.control.as_ref())?;
        let pipelines = read_pipelines(self.control.as_ref())?;
        *write(&self.routes) = routes;
        *write(&self.pipelines) = pipelines;
        let stored = self.stored()?;
        let records: std::collections::HashSet<(Owner, String)> = stored.iter().map(|f| (f.owner.clone(), f.sha256().to_string())).collect();
        write(&self.plugins).retain(|(o, _), p| records.contains(&(o.clone(), p.sha256.clone())));
        Ok(stored.into_iter().filter(|f| self.with_hash(&f.owner, f.sha256()).is_none()).collect())
    }

    /// Every stored plugin record, shared ones first. Plugin files from before plugins had
    /// owners are quarantined here: they cannot be loaded without running them.
    pub fn stored(&self) -> Result<Vec<Found>> {
        let mut shared = Vec::new();
        let mut owned = Vec::new();
        for key in self.control.keys("plugins/")? {
            if let Some(found) = found_at(&key) {
                match found.owner {
                    Owner::Shared => shared.push(found),
                    Owner::Tenant(_) => owned.push(found),
                }
            } else if let ["plugins", file] = key.split('/').collect::<Vec<_>>()[..]
                && file.ends_with(".wasm")
            {
                let reason = format!("{key} was stored by an older Quarry, without its descriptor; add it again with `quarry plugin add <file.wasm>`");
                self.quarantine(Owner::Tenant(crate::store::DEFAULT_TENANT.into()), file.to_string(), reason, vec![key.clone()]);
            }
        }
        shared.append(&mut owned);
        Ok(shared)
    }

    /// A stored plugin's record and bytes, checked against each other; or the name to
    /// quarantine it under (its `name@version` once the record reads, else the file) and why not.
    pub fn read_found(&self, found: &Found) -> Result<(StoredPlugin, Vec<u8>), (String, anyhow::Error)> {
        let file = found.record.rsplit('/').next().unwrap_or_default().to_string();
        let missing = |key: &str| anyhow::anyhow!("{key} is missing");
        let text = self.control.get(&found.record).and_then(|v| v.ok_or_else(|| missing(&found.record))).map_err(|e| (file.clone(), e))?;
        let stored: StoredPlugin = serde_json::from_slice(&text).with_context(|| format!("{} is not a plugin record", found.record)).map_err(|e| (file.clone(), e))?;
        let reference = stored.descriptor.reference();
        let wasm = found.bytes();
        let bytes = self.control.get(&wasm).and_then(|v| v.ok_or_else(|| missing(&wasm))).map_err(|e| (reference.clone(), e))?;
        let sha256 = super::content_hash(&bytes);
        if sha256 != stored.sha256 || file.strip_suffix(".json") != Some(sha256.as_str()) {
            let e = anyhow::anyhow!("{wasm} does not hold the bytes its record names (sha256 {sha256}); it was changed or damaged");
            return Err((reference, e));
        }
        Ok((stored, bytes))
    }

    /// Record a plugin that did not load.
    pub fn quarantine(&self, owner: Owner, reference: String, reason: String, files: Vec<String>) {
        let key = (owner.clone(), reference.clone());
        write(&self.quarantined).insert(key, Quarantined { owner, reference, reason, files });
    }

    /// Record a stored plugin that did not load.
    pub fn quarantine_found(&self, found: &Found, reference: String, reason: String) {
        let files = vec![found.record.clone(), found.bytes()];
        self.quarantine(found.owner.clone(), reference, reason, files);
    }

    pub fn quarantined(&self) -> Vec<Quarantined> {
        read(&self.quarantined).values().cloned().collect()
    }

    /// Register a loaded plugin for `owner`, storing its bytes and descriptor when `bytes` is
    /// given (a new plugin; a stored one passes `None`). Re-adding identical bytes is a no-op;
    /// other bytes under an existing `name@version` are refused.
    pub fn add(&self, owner: &Owner, plugin: LoadedPlugin, bytes: Option<&[u8]>) -> Result<Arc<LoadedPlugin>> {
        let mut plugins = write(&self.plugins);
        let key = (owner.clone(), plugin.reference.clone());
        if let Some(existing) = plugins.get(&key) {
            if existing.sha256 == plugin.sha256 {
                return Ok(existing.clone());
            }
            bail!(
                "{} is already registered for {owner} with different contents; versions are immutable, so bump the version \
                 where the plugin's `describe` writes it (with quarry-sdk, the version passed to `Descriptor::new`, or the \
                 `version` in Cargo.toml when it passes `env!(\"CARGO_PKG_VERSION\")`) and add it again",
                plugin.reference
            );
        }
        let name = &plugin.descriptor.name;
        let quarantined = read(&self.quarantined);
        let same_name = |o: &Owner, r: &str| r.split_once('@').is_some_and(|(n, _)| n == name) && o != owner;
        let users: Vec<&Owner> = plugins.keys().chain(quarantined.keys()).filter(|(o, r)| same_name(o, r)).map(|(o, _)| o).collect();
        match owner {
            Owner::Tenant(_) if users.contains(&&Owner::Shared) => {
                bail!("the name `{name}` belongs to a shared plugin; give your plugin another name")
            }
            Owner::Shared if !users.is_empty() => {
                let tenants: Vec<String> = users.iter().map(|o| o.to_string()).collect();
                bail!("the name `{name}` is already used by {}; publish the shared plugin under another name", tenants.join(", "))
            }
            _ => {}
        }
        drop(quarantined);
        if let Some(bytes) = bytes {
            let prefix = owner.prefix();
            self.control.put(&format!("{prefix}/{}.wasm", plugin.sha256), bytes)?;
            let record = StoredPlugin { sha256: plugin.sha256.clone(), contract: plugin.contract.clone(), sdk: plugin.sdk.clone(), descriptor: plugin.descriptor.clone() };
            // The record goes last: a start sees a plugin only once both are whole.
            self.control.put(&format!("{prefix}/{}.json", plugin.sha256), &serde_json::to_vec_pretty(&record)?)?;
        }
        write(&self.quarantined).remove(&key);
        let plugin = Arc::new(plugin);
        plugins.insert(key, plugin.clone());
        Ok(plugin)
    }

    /// `owner`'s plugin with these bytes, if it has one.
    pub fn with_hash(&self, owner: &Owner, sha256: &str) -> Option<Arc<LoadedPlugin>> {
        read(&self.plugins).iter().find(|((o, _), p)| o == owner && p.sha256 == sha256).map(|(_, p)| p.clone())
    }

    /// The plugin a route in `tenant` means by `reference`: the tenant's own, else a shared one.
    pub fn resolve(&self, tenant: &str, reference: &str) -> Result<(Owner, Arc<LoadedPlugin>)> {
        let own = Owner::Tenant(tenant.to_string());
        let plugins = read(&self.plugins);
        for owner in [&own, &Owner::Shared] {
            if let Some(plugin) = plugins.get(&(owner.clone(), reference.to_string())) {
                return Ok((owner.clone(), plugin.clone()));
            }
        }
        let quarantined = read(&self.quarantined);
        for owner in [&own, &Owner::Shared] {
            if let Some(q) = quarantined.get(&(owner.clone(), reference.to_string())) {
                bail!("strategy `{reference}` ({owner}) is quarantined: {}; remove it or add a working version", q.reason);
            }
        }
        let visible: Vec<&str> = plugins.keys().filter(|(o, _)| *o == own || *o == Owner::Shared).map(|(_, r)| r.as_str()).collect();
        let for_tenant = if tenant == crate::store::DEFAULT_TENANT { String::new() } else { format!(" --tenant {tenant}") };
        bail!(
            "no strategy `{}` is registered for tenant `{tenant}` or shared (registered: {}); add it with `quarry plugin add <file.wasm>{for_tenant}`",
            crate::printable::printable(reference, 128),
            if visible.is_empty() { "none".to_string() } else { visible.join(", ") }
        )
    }

    /// Every registered plugin with its owner.
    pub fn list(&self) -> Vec<(Owner, Arc<LoadedPlugin>)> {
        read(&self.plugins).iter().map(|((o, _), p)| (o.clone(), p.clone())).collect()
    }

    /// Remove `owner`'s `reference` (loaded or quarantined) and its files, unless a route, an
    /// experiment arm or a pipeline stage uses it.
    pub fn remove(&self, owner: &Owner, reference: &str) -> Result<()> {
        let mine = |qualified: &str| match owner {
            Owner::Shared => true,
            Owner::Tenant(t) => split_qualified(qualified).0 == t,
        };
        let users = self.users(mine, Named::Strategy(reference));
        if !users.is_empty() {
            bail!(
                "{reference} ({owner}) still serves collection(s) {}; route them to another version first",
                users.join(", ")
            );
        }
        let key = (owner.clone(), reference.to_string());
        let files = match write(&self.plugins).remove(&key) {
            Some(plugin) => {
                let prefix = owner.prefix();
                vec![format!("{prefix}/{}.json", plugin.sha256), format!("{prefix}/{}.wasm", plugin.sha256)]
            }
            None => match write(&self.quarantined).remove(&key) {
                Some(q) => q.files,
                None => bail!("no strategy `{}` is registered for {owner}", crate::printable::printable(reference, 128)),
            },
        };
        // The record first: a start never sees a record without its bytes.
        for key in files {
            self.control.delete(&key)?;
        }
        Ok(())
    }

    pub fn route(&self, collection: &str) -> Option<Arc<Target>> {
        read(&self.routes).current.get(collection).cloned()
    }

    pub fn routes(&self) -> BTreeMap<String, Arc<Target>> {
        read(&self.routes).current.clone()
    }

    /// The route `collection` had before its last change, if any.
    pub fn previous_route(&self, collection: &str) -> Option<Arc<Target>> {
        read(&self.routes).previous.get(collection).cloned()
    }

    /// Point `collection` at a target, atomically and durably; the route it replaces becomes
    /// its previous one. When `expected` is given, the change happens only if the current route
    /// is still that one (so a promote or rollback never undoes a concurrent change). The caller
    /// has checked the target.
    pub fn set_route(&self, collection: &str, target: Target, expected: Option<&Arc<Target>>) -> Result<()> {
        let mut routes = write(&self.routes);
        let target = Arc::new(target);
        let key = route_key(collection);
        let record = update(self.control.as_ref(), &key, |bytes| {
            let now = parse_record::<RouteRecord>(&key, bytes)?;
            if let Some(expected) = expected
                && now.as_ref().map(|r| &r.current) != Some(expected.as_ref())
            {
                bail!("the route of `{collection}` changed meanwhile; read it again and retry");
            }
            let previous = match now {
                Some(now) if now.current != *target => Some(now.current),
                Some(now) => now.previous,
                None => None,
            };
            let record = RouteRecord { current: (*target).clone(), previous };
            Ok(Some((serde_json::to_vec_pretty(&record)?, record.previous)))
        })?
        .expect("a route change always writes");
        routes.current.insert(collection.to_string(), target);
        match record {
            Some(previous) => routes.previous.insert(collection.to_string(), Arc::new(previous)),
            None => routes.previous.remove(collection),
        };
        Ok(())
    }

    /// `tenant`'s pipeline `name`.
    pub fn pipeline(&self, tenant: &str, name: &str) -> Option<Arc<Pipeline>> {
        read(&self.pipelines).get(&format!("{tenant}/{name}")).cloned()
    }

    /// `tenant`'s pipelines, by name.
    pub fn pipelines(&self, tenant: &str) -> BTreeMap<String, Arc<Pipeline>> {
        let prefix = format!("{tenant}/");
        read(&self.pipelines).iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n.to_string(), v.clone()))).collect()
    }

    /// Declare (or redeclare) `tenant`'s pipeline `name`, durably. `check` sees the tenant's
    /// pipelines as they would be, as the store holds them at the write, so two concurrent
    /// declarations cannot make a cycle together.
    pub fn set_pipeline(&self, tenant: &str, name: &str, pipeline: Pipeline, check: impl Fn(&BTreeMap<String, Arc<Pipeline>>) -> Result<()>) -> Result<()> {
        let mut pipelines = write(&self.pipelines);
        let pipeline = Arc::new(pipeline);
        let mine = update_map(self.control.as_ref(), &pipelines_key(tenant), |mine| {
            mine.insert(name.to_string(), pipeline.clone());
            check(mine)?;
            Ok(true)
        })?;
        Self::keep_tenants_pipelines(&mut pipelines, tenant, mine.expect("a declaration always writes"));
        Ok(())
    }

    /// The routes (by collection) and pipelines (`pipeline <tenant/name>`) that `mine` keeps and
    /// that name `what` directly.
    fn users(&self, mine: impl Fn(&str) -> bool, what: Named<'_>) -> Vec<String> {
        Self::users_in(&read(&self.routes), &read(&self.pipelines), mine, what)
    }

    fn users_in(routes: &Routes, pipelines: &BTreeMap<String, Arc<Pipeline>>, mine: impl Fn(&str) -> bool, what: Named<'_>) -> Vec<String> {
        let routed = routes.current.iter().filter(|(c, t)| mine(c) && t.named().contains(&what)).map(|(c, _)| c.clone());
        let staged = pipelines.iter().filter(|(k, p)| mine(k) && p.stages().iter().any(|(_, s)| s.runs.named() == what)).map(|(k, _)| format!("pipeline {k}"));
        routed.chain(staged).collect()
    }

    /// Remove `tenant`'s pipeline `name`, unless a route, an arm or another pipeline uses it.
    pub fn remove_pipeline(&self, tenant: &str, name: &str) -> Result<()> {
        // Routes before pipelines, as everywhere both are held.
        let routes = read(&self.routes);
        let mut pipelines = write(&self.pipelines);
        let mine = update_map(self.control.as_ref(), &pipelines_key(tenant), |mine: &mut BTreeMap<String, Arc<Pipeline>>| {
            if !mine.contains_key(name) {
                bail!("tenant `{tenant}` has no pipeline `{}`", crate::printable::printable(name, 64));
            }
            let qualified: BTreeMap<String, Arc<Pipeline>> = mine.iter().map(|(n, p)| (format!("{tenant}/{n}"), p.clone())).collect();
            let users = Self::users_in(&routes, &qualified, |qualified| split_qualified(qualified).0 == tenant, Named::Pipeline(name));
            if !users.is_empty() {
                bail!("pipeline `{name}` is still used by {}; point them elsewhere first", users.join(", "));
            }
            mine.remove(name);
            Ok(true)
        })?;
        Self::keep_tenants_pipelines(&mut pipelines, tenant, mine.expect("a removal always writes"));
        Ok(())
    }

    /// Make `tenant`'s pipelines in this process's copy what the store holds now.
    fn keep_tenants_pipelines(pipelines: &mut BTreeMap<String, Arc<Pipeline>>, tenant: &str, mine: BTreeMap<String, Arc<Pipeline>>) {
        let prefix = format!("{tenant}/");
        pipelines.retain(|k, _| !k.starts_with(&prefix));
        pipelines.extend(mine.into_iter().map(|(name, p)| (format!("{prefix}{name}"), p)));
    }
}

fn read_routes(control: &dyn ControlStore) -> Result<Routes> {
    let mut routes = Routes::default();
    for key in control.keys("routes/")? {
        let Some(collection) = key.strip_prefix("routes/").and_then(|k| k.strip_suffix(".json")) else { continue };
        let Some(record) = parse_record::<RouteRecord>(&key, control.get(&key)?.as_deref())? else { continue };
        routes.current.insert(collection.to_string(), Arc::new(record.current));
        if let Some(previous) = record.previous {
            routes.previous.insert(collection.to_string(), Arc::new(previous));
        }
    }
    Ok(routes)
}

/// Every tenant's pipelines, by qualified name.
fn read_pipelines(control: &dyn ControlStore) -> Result<BTreeMap<String, Arc<Pipeline>>> {
    let mut pipelines = BTreeMap::new();
    for key in control.keys("pipelines/")? {
        let Some(tenant) = key.strip_prefix("pipelines/").and_then(|k| k.strip_suffix(".json")) else { continue };
        for (name, pipeline) in parse_map::<Pipeline>(&key, control.get(&key)?.as_deref())? {
            pipelines.insert(format!("{tenant}/{name}"), pipeline);
        }
    }
    Ok(pipelines)
}

/// One record of the control store, if present.
fn parse_record<T: serde::de::DeserializeOwned>(key: &str, bytes: Option<&[u8]>) -> Result<Option<T>> {
    bytes.map(|bytes| serde_json::from_slice(bytes).with_context(|| format!("the control record `{key}` is corrupt; fix or remove it"))).transpose()
}

/// Split the single route and pipeline documents of older hosts into one record per collection
/// and per tenant. Records that exist already are kept (a split cut short by a crash resumes);
/// the old documents go last.
fn split_legacy(control: &dyn ControlStore) -> Result<()> {
    let current = parse_map::<Target>(LEGACY_ROUTES, control.get(LEGACY_ROUTES)?.as_deref())?;
    let mut previous = parse_map::<Target>(LEGACY_PREVIOUS_ROUTES, control.get(LEGACY_PREVIOUS_ROUTES)?.as_deref())?;
    for (collection, target) in current {
        let record = RouteRecord { current: (*target).clone(), previous: previous.remove(&collection).map(|p| (*p).clone()) };
        control.compare_and_swap(&route_key(&collection), None, &serde_json::to_vec_pretty(&record)?)?;
    }
    let mut by_tenant: BTreeMap<String, BTreeMap<String, Arc<Pipeline>>> = BTreeMap::new();
    for (qualified, pipeline) in parse_map::<Pipeline>(LEGACY_PIPELINES, control.get(LEGACY_PIPELINES)?.as_deref())? {
        let (tenant, name) = split_qualified(&qualified);
        by_tenant.entry(tenant.to_string()).or_default().insert(name.to_string(), pipeline);
    }
    for (tenant, mine) in by_tenant {
        control.compare_and_swap(&pipelines_key(&tenant), None, &map_bytes(&mine)?)?;
    }
    for legacy in [LEGACY_ROUTES, LEGACY_PREVIOUS_ROUTES, LEGACY_PIPELINES] {
        control.delete(legacy)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{DirectoryStore, MemoryStore};

    fn to(strategy: &str) -> Target {
        Target::Strategy(Route { strategy: strategy.into(), config: empty_object(), grants: Grants::default() })
    }

    #[test]
    fn registries_sharing_a_store_never_undo_each_others_routes() {
        let store: Arc<dyn ControlStore> = Arc::new(MemoryStore::default());
        let one = Registry::open(store.clone()).unwrap();
        let two = Registry::open(store.clone()).unwrap();
        one.set_route("acme/docs", to("dense@0.1.0"), None).unwrap();
        two.set_route("globex/docs", to("dense@0.2.0"), None).unwrap();
        let seen = Registry::open(store.clone()).unwrap().routes();
        assert_eq!(seen.len(), 2, "two's write kept one's route: {:?}", seen.keys());

        // A promote that expects a route another writer has since replaced changes nothing.
        let stale = one.route("acme/docs").unwrap();
        two.set_route("acme/docs", to("dense@0.3.0"), None).unwrap();
        let err = one.set_route("acme/docs", to("dense@0.9.0"), Some(&stale)).unwrap_err().to_string();
        assert!(err.contains("changed meanwhile"), "{err}");
        let reopened = Registry::open(store).unwrap();
        assert_eq!(reopened.route("acme/docs").as_deref(), Some(&to("dense@0.3.0")));
        assert_eq!(reopened.previous_route("acme/docs").as_deref(), Some(&to("dense@0.1.0")));
    }

    #[test]
    fn changes_made_through_another_registry_apply_and_a_resync_catches_up_on_missed_ones() {
        let store: Arc<dyn ControlStore> = Arc::new(MemoryStore::default());
        let watch = store.watch("").unwrap().unwrap();
        let one = Registry::open(store.clone()).unwrap();
        let two = Registry::open(store.clone()).unwrap();
        one.set_route("acme/docs", to("a@1.0.0"), None).unwrap();
        one.set_route("acme/docs", to("a@2.0.0"), None).unwrap();
        let pipeline = serde_json::json!({"fallback": {"primary": {"strategy": "a@1.0.0"}, "fallback": {"strategy": "b@1.0.0"}}});
        one.set_pipeline("acme", "p", serde_json::from_value(pipeline).unwrap(), |_| Ok(())).unwrap();
        for change in watch.try_iter() {
            assert!(two.apply(&change).unwrap().is_empty(), "no plugin record changed");
        }
        assert_eq!(two.routes(), one.routes());
        assert_eq!(two.previous_route("acme/docs").as_deref(), Some(&to("a@1.0.0")));
        assert_eq!(two.pipelines("acme").len(), 1);

        // Changes two never saw: a route removed, and a plugin record added.
        store.delete("routes/acme/docs.json").unwrap();
        store.put("plugins/tenants/acme/abc.json", b"{}").unwrap();
        let missing = two.apply(&Change::Resync).unwrap();
        assert!(two.routes().is_empty());
        assert_eq!(missing.iter().map(|f| f.record.as_str()).collect::<Vec<_>>(), ["plugins/tenants/acme/abc.json"], "the new record is to be loaded");
        // A change is applied as the store holds it when it arrives, so a late one undoes nothing.
        one.set_route("acme/docs", to("a@3.0.0"), None).unwrap();
        two.apply(&Change::Put { key: "routes/acme/docs.json".into(), value: serde_json::to_vec(&RouteRecord { current: to("a@1.0.0"), previous: None }).unwrap() }).unwrap();
        assert_eq!(two.route("acme/docs").as_deref(), Some(&to("a@3.0.0")));
        store.put("routes/acme/docs.json", b"{oops").unwrap();
        let err = two.apply(&Change::Put { key: "routes/acme/docs.json".into(), value: b"{oops".to_vec() }).unwrap_err().to_string();
        assert!(err.contains("routes/acme/docs.json"), "{err}");
        assert_eq!(two.route("acme/docs").as_deref(), Some(&to("a@3.0.0")), "a damaged record leaves the route as it was");
    }

    #[test]
    fn a_data_directory_written_before_the_control_store_reads_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let route = r#"{"default/docs": {"strategy": "dense@0.1.0", "config": {}, "grants": {}}}"#;
        std::fs::write(dir.path().join("routes.json"), route).unwrap();
        std::fs::write(dir.path().join("routes.previous.json"), route.replace("0.1.0", "0.0.9")).unwrap();
        std::fs::create_dir_all(dir.path().join("plugins/shared")).unwrap();
        std::fs::write(dir.path().join("plugins/shared/abc.json"), "{}").unwrap();
        std::fs::write(dir.path().join("plugins/old.wasm"), "\0asm").unwrap();
        let pipelines = r#"{"acme/fused": {"fallback": {"primary": {"strategy": "a@1.0.0"}, "fallback": {"strategy": "b@1.0.0"}}}}"#;
        std::fs::write(dir.path().join("pipelines.json"), pipelines).unwrap();
        let registry = Registry::open(Arc::new(DirectoryStore::new(dir.path()))).unwrap();
        assert_eq!(registry.route("default/docs").as_deref(), Some(&to("dense@0.1.0")));
        assert_eq!(registry.previous_route("default/docs").as_deref(), Some(&to("dense@0.0.9")));
        assert!(registry.pipeline("acme", "fused").is_some());
        // Split into one record per collection and per tenant, the old documents gone.
        for (gone, made) in [("routes.json", "routes/default/docs.json"), ("pipelines.json", "pipelines/acme.json")] {
            assert!(!dir.path().join(gone).exists() && dir.path().join(made).exists(), "{gone} -> {made}");
        }
        assert!(!dir.path().join("routes.previous.json").exists());
        let reopened = Registry::open(Arc::new(DirectoryStore::new(dir.path()))).unwrap();
        assert_eq!(reopened.previous_route("default/docs").as_deref(), Some(&to("dense@0.0.9")));
        assert!(reopened.pipeline("acme", "fused").is_some());
        let found = registry.stored().unwrap();
        assert_eq!(found.iter().map(|f| (f.owner.clone(), f.record.as_str())).collect::<Vec<_>>(), [(Owner::Shared, "plugins/shared/abc.json")]);
        let (reference, err) = registry.read_found(&found[0]).unwrap_err();
        assert!(reference == "abc.json" && err.to_string().contains("not a plugin record"), "{reference}: {err:#}");
        let quarantined = registry.quarantined();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].files, ["plugins/old.wasm"]);
    }

    #[test]
    fn a_corrupt_record_names_itself_and_what_to_do() {
        let store: Arc<dyn ControlStore> = Arc::new(MemoryStore::default());
        store.put(LEGACY_ROUTES, b"{not json").unwrap();
        let err = Registry::open(store).err().unwrap().to_string();
        assert!(err.contains("`routes.json` is corrupt; fix or remove it"), "{err}");
    }
}
