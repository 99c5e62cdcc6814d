//! Registered strategy versions and the routes that pick one per collection.
//!
//! Versions are immutable and addressed as `name@version`. A route is swapped by replacing one
//! `Arc`: a call holds the route and plugin it started with until it ends.

use super::host_api::Grants;
use super::LoadedPlugin;
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Which strategy version serves a collection, with what config and grants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `name@version` of a registered strategy.
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

/// Plugins by `name@version` and routes by collection, persisted under the data directory.
pub struct Registry {
    plugin_dir: PathBuf,
    routes_path: PathBuf,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    routes: RwLock<BTreeMap<String, Arc<Route>>>,
}

impl Registry {
    /// Open the registry; the caller loads the stored plugins with [`Registry::stored_plugins`].
    pub fn open(data_dir: &Path) -> Result<Self> {
        let plugin_dir = data_dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).with_context(|| format!("cannot create {}", plugin_dir.display()))?;
        let routes_path = data_dir.join("routes.json");
        let routes: BTreeMap<String, Route> = match std::fs::read_to_string(&routes_path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is corrupt; fix or remove it", routes_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", routes_path.display())),
        };
        Ok(Registry {
            plugin_dir,
            routes_path,
            plugins: RwLock::new(BTreeMap::new()),
            routes: RwLock::new(routes.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
        })
    }

    /// Paths of every stored plugin component.
    pub fn stored_plugins(&self) -> Result<Vec<PathBuf>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.plugin_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Register a loaded plugin, storing its bytes. Re-adding identical bytes is a no-op;
    /// different bytes under an existing `name@version` are refused.
    pub fn add(&self, plugin: LoadedPlugin, bytes: Option<&[u8]>) -> Result<Arc<LoadedPlugin>> {
        let mut plugins = self.plugins.write().unwrap();
        if let Some(existing) = plugins.get(&plugin.reference) {
            if existing.sha256 == plugin.sha256 {
                return Ok(existing.clone());
            }
            bail!(
                "{} is already registered with different contents; versions are immutable, so bump the version in the plugin's Cargo.toml",
                plugin.reference
            );
        }
        if let Some(bytes) = bytes {
            let path = self.plugin_dir.join(format!("{}.wasm", plugin.reference));
            write_atomically(&path, bytes)?;
        }
        let plugin = Arc::new(plugin);
        plugins.insert(plugin.reference.clone(), plugin.clone());
        Ok(plugin)
    }

    pub fn get(&self, reference: &str) -> Result<Arc<LoadedPlugin>> {
        let plugins = self.plugins.read().unwrap();
        plugins.get(reference).cloned().with_context(|| {
            let known: Vec<&String> = plugins.keys().collect();
            format!(
                "no strategy `{reference}` is registered (registered: {}); add it with `quarry plugin add <file.wasm>`",
                if known.is_empty() { "none".to_string() } else { known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
            )
        })
    }

    pub fn list(&self) -> Vec<Arc<LoadedPlugin>> {
        self.plugins.read().unwrap().values().cloned().collect()
    }

    /// Remove a strategy version that no route uses.
    pub fn remove(&self, reference: &str) -> Result<()> {
        let routes = self.routes.read().unwrap();
        let users: Vec<&String> = routes.iter().filter(|(_, r)| r.strategy == reference).map(|(c, _)| c).collect();
        if !users.is_empty() {
            bail!(
                "{reference} still serves collection(s) {}; route them to another version first",
                users.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        if self.plugins.write().unwrap().remove(reference).is_none() {
            bail!("no strategy `{reference}` is registered");
        }
        let path = self.plugin_dir.join(format!("{reference}.wasm"));
        std::fs::remove_file(&path).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
        Ok(())
    }

    pub fn route(&self, collection: &str) -> Option<Arc<Route>> {
        self.routes.read().unwrap().get(collection).cloned()
    }

    pub fn routes(&self) -> BTreeMap<String, Arc<Route>> {
        self.routes.read().unwrap().clone()
    }

    /// Point `collection` at a registered strategy version, atomically and durably.
    pub fn set_route(&self, collection: &str, route: Route) -> Result<()> {
        self.get(&route.strategy)?;
        let mut routes = self.routes.write().unwrap();
        let mut next = routes.clone();
        next.insert(collection.to_string(), Arc::new(route));
        let plain: BTreeMap<&String, &Route> = next.iter().map(|(k, v)| (k, v.as_ref())).collect();
        write_atomically(&self.routes_path, serde_json::to_string_pretty(&plain)?.as_bytes())?;
        *routes = next;
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
