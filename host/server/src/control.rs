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

const TENANTS: &str = "server/tenants.json";

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
    state: RwLock<State>,
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

fn parse(bytes: Option<&[u8]>) -> Result<BTreeMap<String, Tenant>> {
    let Some(bytes) = bytes else { return Ok(BTreeMap::new()) };
    let list: Vec<Tenant> = serde_json::from_slice(bytes).with_context(|| format!("the control record `{TENANTS}` is damaged; restore it from a backup"))?;
    Ok(list.into_iter().map(|t| (t.name.clone(), t)).collect())
}

impl ControlPlane {
    pub fn open(store: Arc<dyn ControlStore>) -> Result<Self> {
        let tenants = parse(store.get(TENANTS)?.as_deref())?;
        Ok(ControlPlane { store, state: RwLock::new(State::index(tenants)) })
    }

    /// Apply `change` to the tenants as the store holds them, write them back unless another
    /// writer got in first (then again), and only then make them current here.
    fn write(&self, change: impl Fn(&mut BTreeMap<String, Tenant>) -> bool) -> Result<bool> {
        let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = update(self.store.as_ref(), TENANTS, |current| {
            let mut tenants = parse(current)?;
            if !change(&mut tenants) {
                return Ok(None);
            }
            let list: Vec<&Tenant> = tenants.values().collect();
            Ok(Some((serde_json::to_vec_pretty(&list)?, tenants)))
        })?;
        match written {
            Some(tenants) => {
                *state = State::index(tenants);
                Ok(true)
            }
            None => Ok(false),
        }
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
        self.write(|tenants| {
            if tenants.contains_key(&tenant.name) {
                return false;
            }
            tenants.insert(tenant.name.clone(), tenant.clone());
            true
        })
    }

    /// Replace an existing tenant; `false` if there is none by that name.
    pub fn update_tenant(&self, tenant: Tenant) -> Result<bool> {
        self.write(|tenants| match tenants.get_mut(&tenant.name) {
            Some(slot) => {
                *slot = tenant.clone();
                true
            }
            None => false,
        })
    }

    /// `false` if there was none.
    pub fn delete_tenant(&self, name: &str) -> Result<bool> {
        self.write(|tenants| tenants.remove(name).is_some())
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
}
