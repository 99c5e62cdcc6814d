//! Registered strategy versions, who owns them, and the routes that pick one per collection.
//!
//! Plugins belong to a tenant, or are shared by the operator with every tenant. A tenant's route
//! to `name@version` runs that tenant's own plugin, or else the shared one; no tenant can run
//! another's, and no tenant can take a shared plugin's name. Versions are immutable.
//!
//! A plugin is stored as its bytes and the descriptor its `describe` returned when it was
//! added, both named by the bytes' SHA-256 (never by anything the plugin chose):
//! `plugins/shared/<sha256>.{wasm,json}` and `plugins/tenants/<tenant>/<sha256>.{wasm,json}`.
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
use crate::routing::{Named, Pipeline, Target};
use crate::store::{FieldSchema, split_qualified, validate_name};
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

    fn dir(&self, plugins: &Path) -> PathBuf {
        match self {
            Owner::Shared => plugins.join("shared"),
            Owner::Tenant(t) => plugins.join("tenants").join(t),
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
    /// Its files, which removing it deletes.
    pub files: Vec<PathBuf>,
}

/// A stored plugin found on disk at start.
pub struct Found {
    pub owner: Owner,
    /// The record beside the bytes (`<sha256>.json`).
    pub record: PathBuf,
}

type Key = (Owner, String);

/// Plugins by owner and `name@version`, and routes by collection, persisted under the data
/// directory.
pub struct Registry {
    plugin_dir: PathBuf,
    routes_path: PathBuf,
    previous_path: PathBuf,
    pipelines_path: PathBuf,
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

fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is corrupt; fix or remove it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, map: &BTreeMap<String, Arc<T>>) -> Result<()> {
    let plain: BTreeMap<&String, &T> = map.iter().map(|(k, v)| (k, v.as_ref())).collect();
    write_atomically(path, serde_json::to_string_pretty(&plain)?.as_bytes())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// Open the registry; the caller loads the stored plugins ([`Registry::stored`]).
    pub fn open(data_dir: &Path) -> Result<Self> {
        let plugin_dir = data_dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).with_context(|| format!("cannot create {}", plugin_dir.display()))?;
        let routes_path = data_dir.join("routes.json");
        let previous_path = data_dir.join("routes.previous.json");
        let pipelines_path = data_dir.join("pipelines.json");
        let arcs = |map: BTreeMap<String, Target>| map.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        let routes = Routes { current: arcs(read_json(&routes_path)?), previous: arcs(read_json(&previous_path)?) };
        let pipelines: BTreeMap<String, Pipeline> = read_json(&pipelines_path)?;
        Ok(Registry {
            plugin_dir,
            routes_path,
            previous_path,
            pipelines_path,
            plugins: Default::default(),
            quarantined: Default::default(),
            routes: RwLock::new(routes),
            pipelines: RwLock::new(pipelines.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
        })
    }

    /// Every stored plugin record, shared ones first. Plugin files from before plugins had
    /// owners are quarantined here: they cannot be loaded without running them.
    pub fn stored(&self) -> Result<Vec<Found>> {
        let mut found = Vec::new();
        let records = |dir: &Path| -> Result<Vec<PathBuf>> {
            let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
            };
            paths.sort();
            Ok(paths)
        };
        for record in records(&Owner::Shared.dir(&self.plugin_dir))? {
            found.push(Found { owner: Owner::Shared, record });
        }
        let tenants = self.plugin_dir.join("tenants");
        let mut tenant_dirs: Vec<PathBuf> = match std::fs::read_dir(&tenants) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", tenants.display())),
        };
        tenant_dirs.sort();
        for dir in tenant_dirs {
            let Some(owner) = dir.file_name().and_then(|n| n.to_str()).and_then(|n| Owner::tenant(n).ok()) else { continue };
            for record in records(&dir)? {
                found.push(Found { owner: owner.clone(), record });
            }
        }
        for legacy in std::fs::read_dir(&self.plugin_dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "wasm")) {
            let name = legacy.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let reason = format!("{} was stored by an older Quarry, without its descriptor; add it again with `quarry plugin add <file.wasm>`", legacy.display());
            self.quarantine(Owner::Tenant(crate::store::DEFAULT_TENANT.into()), name, reason, vec![legacy]);
        }
        Ok(found)
    }

    /// A stored plugin's record and bytes, checked against each other; or the name to
    /// quarantine it under (its `name@version` once the record reads, else the file) and why not.
    pub fn read_found(&self, found: &Found) -> Result<(StoredPlugin, Vec<u8>), (String, anyhow::Error)> {
        let file = found.record.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let text = std::fs::read_to_string(&found.record).with_context(|| format!("cannot read {}", found.record.display())).map_err(|e| (file.clone(), e))?;
        let stored: StoredPlugin = serde_json::from_str(&text).with_context(|| format!("{} is not a plugin record", found.record.display())).map_err(|e| (file, e))?;
        let reference = stored.descriptor.reference();
        let wasm = found.record.with_extension("wasm");
        let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display())).map_err(|e| (reference.clone(), e))?;
        let sha256 = super::content_hash(&bytes);
        if sha256 != stored.sha256 || found.record.file_stem().and_then(|s| s.to_str()) != Some(sha256.as_str()) {
            let e = anyhow::anyhow!("{} does not hold the bytes its record names (sha256 {sha256}); the file was changed or damaged", wasm.display());
            return Err((reference, e));
        }
        Ok((stored, bytes))
    }

    /// Record a plugin that did not load.
    pub fn quarantine(&self, owner: Owner, reference: String, reason: String, files: Vec<PathBuf>) {
        let key = (owner.clone(), reference.clone());
        write(&self.quarantined).insert(key, Quarantined { owner, reference, reason, files });
    }

    /// Record a stored plugin that did not load.
    pub fn quarantine_found(&self, found: &Found, reference: String, reason: String) {
        let files = vec![found.record.clone(), found.record.with_extension("wasm")];
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
            let dir = owner.dir(&self.plugin_dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            write_atomically(&dir.join(format!("{}.wasm", plugin.sha256)), bytes)?;
            let record = StoredPlugin { sha256: plugin.sha256.clone(), contract: plugin.contract.clone(), sdk: plugin.sdk.clone(), descriptor: plugin.descriptor.clone() };
            // The record goes last: a start sees a plugin only once both files are whole.
            write_atomically(&dir.join(format!("{}.json", plugin.sha256)), serde_json::to_string_pretty(&record)?.as_bytes())?;
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
                let dir = owner.dir(&self.plugin_dir);
                vec![dir.join(format!("{}.json", plugin.sha256)), dir.join(format!("{}.wasm", plugin.sha256))]
            }
            None => match write(&self.quarantined).remove(&key) {
                Some(q) => q.files,
                None => bail!("no strategy `{}` is registered for {owner}", crate::printable::printable(reference, 128)),
            },
        };
        // The record first: a start never sees a record without its bytes.
        for path in files {
            std::fs::remove_file(&path).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
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
        let current = routes.current.get(collection).cloned();
        if let Some(expected) = expected
            && !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, expected))
        {
            bail!("the route of `{collection}` changed meanwhile; read it again and retry");
        }
        let mut next = routes.clone();
        if let Some(current) = current
            && *current != target
        {
            next.previous.insert(collection.to_string(), current);
            write_json(&self.previous_path, &next.previous)?;
        }
        next.current.insert(collection.to_string(), Arc::new(target));
        write_json(&self.routes_path, &next.current)?;
        *routes = next;
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
    /// pipelines as they would be, under the lock, so two concurrent declarations cannot make a
    /// cycle together.
    pub fn set_pipeline(&self, tenant: &str, name: &str, pipeline: Pipeline, check: impl FnOnce(&BTreeMap<String, Arc<Pipeline>>) -> Result<()>) -> Result<()> {
        let mut pipelines = write(&self.pipelines);
        let mut next = pipelines.clone();
        next.insert(format!("{tenant}/{name}"), Arc::new(pipeline));
        let prefix = format!("{tenant}/");
        let mine: BTreeMap<String, Arc<Pipeline>> = next.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n.to_string(), v.clone()))).collect();
        check(&mine)?;
        write_json(&self.pipelines_path, &next)?;
        *pipelines = next;
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
        let key = format!("{tenant}/{name}");
        if !pipelines.contains_key(&key) {
            bail!("tenant `{tenant}` has no pipeline `{}`", crate::printable::printable(name, 64));
        }
        let users = Self::users_in(&routes, &pipelines, |qualified| split_qualified(qualified).0 == tenant, Named::Pipeline(name));
        if !users.is_empty() {
            bail!("pipeline `{name}` is still used by {}; point them elsewhere first", users.join(", "));
        }
        let mut next = pipelines.clone();
        next.remove(&key);
        write_json(&self.pipelines_path, &next)?;
        *pipelines = next;
        Ok(())
    }
}

/// Write to a temporary file, sync it, then rename over the target, so readers and crashes see
/// the old or the new contents, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique per writer, so concurrent writers of the same file never share a temporary.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
