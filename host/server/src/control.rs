//! The control plane: tenants, their API keys (hashed), model grants and quotas. They are kept
//! in the host's [`ControlStore`] beside its plugins, routes and pipelines, so one store holds
//! everything that says how the service serves, and a replicated service puts a shared store
//! (etcd) behind that one trait.

use crate::config::Quotas;
use anyhow::{Context as _, Result};
use quarry_host::control::{ControlStore, update};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// One record per tenant, so a store with a value size limit (etcd's) holds any number.
fn tenant_key(name: &str) -> String {
    format!("{TENANTS}{name}.json")
}

/// The single document older servers kept every tenant in; split up at the first start.
const LEGACY_TENANTS: &str = "server/tenants.json";

/// A tenant as the control plane keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    /// Hashes of the tenant's API keys; the keys themselves are never stored.
    pub keys: Vec<KeyRecord>,
    /// Models the tenant's routes may grant to strategies.
    pub models: BTreeSet<String>,
    /// The tenant's own quotas; `None` means the server's defaults.
    pub quotas: Option<Quotas>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// A short public name for the key (the start of its hash), to list and revoke it by.
    pub id: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
}

/// Tenants and keys, read from a copy in memory and written through to the control store.
pub struct ControlPlane {
    store: Arc<dyn ControlStore>,
    /// Shared with the thread that follows changes other servers make to the store.
    state: Arc<RwLock<State>>,
}

#[derive(Default)]
struct State {
    tenants: BTreeMap<String, Tenant>,
    /// Key hash → tenant name.
    by_key: HashMap<String, String>,
}

impl State {
    fn index(tenants: BTreeMap<String, Tenant>) -> Self {
        let by_key = tenants.values().flat_map(|t| t.keys.iter().map(|k| (k.sha256.clone(), t.name.clone()))).collect();
        State { tenants, by_key }
    }
}

const TENANTS: &str = "server/tenants/";

fn read_tenants(store: &dyn ControlStore) -> Result<BTreeMap<String, Tenant>> {
    let mut tenants = BTreeMap::new();
    for key in store.keys(TENANTS)? {
        if let Some(bytes) = store.get(&key)? {
            let tenant = parse(&key, &bytes)?;
            tenants.insert(tenant.name.clone(), tenant);
        }
    }
    Ok(tenants)
}

/// Apply tenants created, changed or removed through other servers sharing the store (and
/// this one's own writes, again: that changes nothing). Ends when the plane or the store closes.
fn follow(watch: &quarry_host::control::Watch, store: &dyn ControlStore, state: &std::sync::Weak<RwLock<State>>) {
    use quarry_host::control::Change;
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        let change = match watch.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(change) => change,
            Err(RecvTimeoutError::Timeout) if state.strong_count() > 0 => continue,
            Err(_) => return,
        };
        let Some(state) = state.upgrade() else { return };
        let key = match change {
            Change::Put { key, .. } | Change::Delete { key } => key,
            Change::Resync => {
                match read_tenants(store) {
                    Ok(tenants) => *state.write().unwrap_or_else(std::sync::PoisonError::into_inner) = State::index(tenants),
                    Err(e) => tracing::warn!("could not re-read the tenants: {e:#}"),
                }
                continue;
            }
        };
        let Some(name) = key.strip_prefix(TENANTS).and_then(|k| k.strip_suffix(".json")) else { continue };
        // What the store holds now, read under the lock this server's own writes hold: a
        // change that arrives after a newer local write cannot undo it.
        let mut state = state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tenant = match store.get(&key).and_then(|bytes| bytes.map(|b| parse(&key, &b)).transpose()) {
            Ok(tenant) => tenant,
            Err(e) => {
                tracing::warn!("ignored a change to the control store: {e:#}");
                continue;
            }
        };
        let mut tenants = std::mem::take(&mut state.tenants);
        match tenant {
            Some(tenant) if tenant.name == name => tenants.insert(tenant.name.clone(), tenant),
            _ => tenants.remove(name),
        };
        *state = State::index(tenants);
    }
}

fn parse(key: &str, bytes: &[u8]) -> Result<Tenant> {
    serde_json::from_slice(bytes).with_context(|| format!("the control record `{key}` is damaged; restore it from a backup"))
}

impl ControlPlane {
    pub fn open(store: Arc<dyn ControlStore>) -> Result<Self> {
        if let Some(bytes) = store.get(LEGACY_TENANTS)? {
            let list: Vec<Tenant> = serde_json::from_slice(&bytes).with_context(|| format!("the control record `{LEGACY_TENANTS}` is damaged; restore it from a backup"))?;
            for tenant in list {
                // A record that exists already is newer (a split cut short resumes).
                store.compare_and_swap(&tenant_key(&tenant.name), None, &serde_json::to_vec_pretty(&tenant)?)?;
            }
            store.delete(LEGACY_TENANTS)?;
        }
        // Watch before reading, so no change falls between the read and the watch.
        let watch = store.watch(TENANTS)?;
        let state = Arc::new(RwLock::new(State::index(read_tenants(store.as_ref())?)));
        if let Some(watch) = watch {
            let (store, state) = (store.clone(), Arc::downgrade(&state));
            std::thread::Builder::new()
                .name("quarry-tenants".into())
                .spawn(move || follow(&watch, store.as_ref(), &state))
                .context("cannot start the thread that follows the control store")?;
        }
        Ok(ControlPlane { store, state })
    }

    /// Apply `change` to tenant `name`'s record as the store holds it (`None`: absent), write it
    /// back unless another writer got in first (then again), and only then make it current here.
    /// `change` returns the new record, or `None` to leave things as they are.
    fn write(&self, name: &str, change: impl Fn(Option<Tenant>) -> Option<Tenant>) -> Result<bool> {
        let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = tenant_key(name);
        let written = update(self.store.as_ref(), &key, |current| {
            let current = current.map(|bytes| parse(&key, bytes)).transpose()?;
            Ok(match change(current) {
                Some(tenant) => Some((serde_json::to_vec_pretty(&tenant)?, tenant)),
                None => None,
            })
        })?;
        let Some(tenant) = written else { return Ok(false) };
        let mut tenants = std::mem::take(&mut state.tenants);
        tenants.insert(tenant.name.clone(), tenant);
        *state = State::index(tenants);
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn tenants(&self) -> Result<Vec<Tenant>> {
        Ok(self.read().tenants.values().cloned().collect())
    }

    pub fn tenant(&self, name: &str) -> Result<Option<Tenant>> {
        Ok(self.read().tenants.get(name).cloned())
    }

    /// Store a new tenant; `false` if the name is taken (nothing changes).
    pub fn create_tenant(&self, tenant: Tenant) -> Result<bool> {
        self.write(&tenant.name, |current| current.is_none().then(|| tenant.clone()))
    }

    /// Replace an existing tenant; `false` if there is none by that name.
    pub fn update_tenant(&self, tenant: Tenant) -> Result<bool> {
        self.write(&tenant.name, |current| current.is_some().then(|| tenant.clone()))
    }

    /// `false` if there was none.
    pub fn delete_tenant(&self, name: &str) -> Result<bool> {
        let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let existed = self.store.delete(&tenant_key(name))?;
        let mut tenants = std::mem::take(&mut state.tenants);
        tenants.remove(name);
        *state = State::index(tenants);
        Ok(existed)
    }

    /// The tenant holding a key with this hash.
    pub fn tenant_by_key(&self, key_sha256: &str) -> Result<Option<Tenant>> {
        let state = self.read();
        Ok(state.by_key.get(key_sha256).and_then(|name| state.tenants.get(name)).cloned())
    }

    /// The store itself, for the server's other records (the admin key's hash).
    pub fn store(&self) -> &dyn ControlStore {
        self.store.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, key: &str) -> Tenant {
        Tenant { name: name.into(), keys: vec![KeyRecord { id: key[..4].into(), sha256: key.into() }], models: BTreeSet::new(), quotas: None }
    }

    #[test]
    fn tenants_and_keys_survive_a_reopen_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ControlStore> = Arc::new(quarry_host::control::DirectoryStore::new(dir.path()));
        let plane = ControlPlane::open(store.clone()).unwrap();
        assert!(plane.create_tenant(tenant("acme", "aaaa1")).unwrap());
        assert!(!plane.create_tenant(tenant("acme", "bbbb2")).unwrap(), "a taken name is refused");
        assert!(plane.tenant_by_key("bbbb2").unwrap().is_none(), "a refused create leaves no key behind");
        assert!(plane.create_tenant(tenant("globex", "cccc3")).unwrap());
        let mut acme = plane.tenant("acme").unwrap().unwrap();
        acme.keys.push(KeyRecord { id: "dddd".into(), sha256: "dddd4".into() });
        assert!(plane.update_tenant(acme).unwrap());
        assert!(!plane.update_tenant(tenant("nobody", "eeee5")).unwrap());

        let plane = ControlPlane::open(store.clone()).unwrap();
        assert_eq!(plane.tenant_by_key("dddd4").unwrap().unwrap().name, "acme");
        assert_eq!(plane.tenant_by_key("cccc3").unwrap().unwrap().name, "globex");
        assert!(plane.delete_tenant("acme").unwrap());
        assert!(plane.tenant_by_key("aaaa1").unwrap().is_none(), "a deleted tenant's keys stop working");
        assert_eq!(plane.tenants().unwrap().len(), 1);
    }

    #[test]
    fn the_tenant_list_of_an_older_server_is_split_into_one_record_each() {
        let store: Arc<dyn ControlStore> = Arc::new(quarry_host::control::MemoryStore::default());
        store.put(LEGACY_TENANTS, &serde_json::to_vec(&[tenant("acme", "aaaa1"), tenant("globex", "cccc3")]).unwrap()).unwrap();
        let plane = ControlPlane::open(store.clone()).unwrap();
        assert_eq!(plane.tenant_by_key("cccc3").unwrap().unwrap().name, "globex");
        assert_eq!(store.keys("server/").unwrap(), ["server/tenants/acme.json", "server/tenants/globex.json"]);
        store.put("server/tenants/bad.json", b"{").unwrap();
        let err = ControlPlane::open(store).err().unwrap().to_string();
        assert!(err.contains("`server/tenants/bad.json` is damaged"), "{err}");
    }

    #[test]
    fn two_planes_on_one_store_never_undo_each_others_tenants() {
        let store: Arc<dyn ControlStore> = Arc::new(quarry_host::control::MemoryStore::default());
        let one = ControlPlane::open(store.clone()).unwrap();
        let two = ControlPlane::open(store.clone()).unwrap();
        assert!(one.create_tenant(tenant("acme", "aaaa1")).unwrap());
        assert!(two.create_tenant(tenant("globex", "cccc3")).unwrap(), "two's stale copy does not hide acme from the write");
        assert!(!two.create_tenant(tenant("acme", "bbbb2")).unwrap(), "the name check sees what the store holds");
        let reopened = ControlPlane::open(store).unwrap();
        let names: Vec<String> = reopened.tenants().unwrap().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["acme", "globex"]);
    }

    #[test]
    fn a_tenant_made_changed_or_removed_through_one_plane_reaches_another() {
        let store: Arc<dyn ControlStore> = Arc::new(quarry_host::control::MemoryStore::default());
        let one = ControlPlane::open(store.clone()).unwrap();
        let two = ControlPlane::open(store).unwrap();
        let eventually = |what: &str, ready: &dyn Fn() -> bool| {
            let start = std::time::Instant::now();
            while !ready() {
                assert!(start.elapsed() < std::time::Duration::from_secs(5), "{what} never reached the second plane");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        assert!(one.create_tenant(tenant("acme", "aaaa1")).unwrap());
        eventually("the new tenant's key", &|| two.tenant_by_key("aaaa1").unwrap().is_some());
        let mut acme = one.tenant("acme").unwrap().unwrap();
        acme.keys = vec![KeyRecord { id: "bbbb".into(), sha256: "bbbb2".into() }];
        assert!(one.update_tenant(acme).unwrap());
        eventually("the revoked key", &|| two.tenant_by_key("aaaa1").unwrap().is_none());
        assert_eq!(two.tenant_by_key("bbbb2").unwrap().unwrap().name, "acme");
        assert!(one.delete_tenant("acme").unwrap());
        eventually("the removal", &|| two.tenants().unwrap().is_empty());
    }
}
