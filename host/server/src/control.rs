//! The control plane: tenants, their API keys (hashed), model grants and quotas, read and
//! written through one trait. [`EmbeddedControlPlane`] keeps them in a file in the data
//! directory; a replicated service puts a shared store behind the same trait.

use crate::config::Quotas;
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

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

/// Where tenants and keys live. Implementations must be safe to call from many threads.
pub trait ControlPlane: Send + Sync {
    fn tenants(&self) -> Result<Vec<Tenant>>;
    fn tenant(&self, name: &str) -> Result<Option<Tenant>>;
    /// Store a new tenant; `false` if the name is taken (nothing changes).
    fn create_tenant(&self, tenant: Tenant) -> Result<bool>;
    /// Replace an existing tenant; `false` if there is none by that name.
    fn update_tenant(&self, tenant: Tenant) -> Result<bool>;
    /// `false` if there was none.
    fn delete_tenant(&self, name: &str) -> Result<bool>;
    /// The tenant holding a key with this hash.
    fn tenant_by_key(&self, key_sha256: &str) -> Result<Option<Tenant>>;
}

/// Tenants in `<data_dir>/server/tenants.json`, rewritten atomically on every change.
pub struct EmbeddedControlPlane {
    path: PathBuf,
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

impl EmbeddedControlPlane {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("tenants.json");
        let tenants: BTreeMap<String, Tenant> = if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let list: Vec<Tenant> = serde_json::from_str(&text).with_context(|| format!("{} is damaged; restore it from a backup", path.display()))?;
            list.into_iter().map(|t| (t.name.clone(), t)).collect()
        } else {
            BTreeMap::new()
        };
        Ok(EmbeddedControlPlane { path, state: RwLock::new(State::index(tenants)) })
    }

    /// Apply `change` to a copy, persist the copy, and only then make it current.
    fn write(&self, change: impl FnOnce(&mut BTreeMap<String, Tenant>) -> bool) -> Result<bool> {
        let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut tenants = state.tenants.clone();
        if !change(&mut tenants) {
            return Ok(false);
        }
        let list: Vec<&Tenant> = tenants.values().collect();
        quarry_host::plugins::registry::write_atomically(&self.path, serde_json::to_string_pretty(&list)?.as_bytes())?;
        *state = State::index(tenants);
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ControlPlane for EmbeddedControlPlane {
    fn tenants(&self) -> Result<Vec<Tenant>> {
        Ok(self.read().tenants.values().cloned().collect())
    }

    fn tenant(&self, name: &str) -> Result<Option<Tenant>> {
        Ok(self.read().tenants.get(name).cloned())
    }

    fn create_tenant(&self, tenant: Tenant) -> Result<bool> {
        self.write(|tenants| {
            if tenants.contains_key(&tenant.name) {
                return false;
            }
            tenants.insert(tenant.name.clone(), tenant);
            true
        })
    }

    fn update_tenant(&self, tenant: Tenant) -> Result<bool> {
        self.write(|tenants| match tenants.get_mut(&tenant.name) {
            Some(slot) => {
                *slot = tenant;
                true
            }
            None => false,
        })
    }

    fn delete_tenant(&self, name: &str) -> Result<bool> {
        self.write(|tenants| tenants.remove(name).is_some())
    }

    fn tenant_by_key(&self, key_sha256: &str) -> Result<Option<Tenant>> {
        let state = self.read();
        Ok(state.by_key.get(key_sha256).and_then(|name| state.tenants.get(name)).cloned())
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
        let plane = EmbeddedControlPlane::open(dir.path()).unwrap();
        assert!(plane.create_tenant(tenant("acme", "aaaa1")).unwrap());
        assert!(!plane.create_tenant(tenant("acme", "bbbb2")).unwrap(), "a taken name is refused");
        assert!(plane.tenant_by_key("bbbb2").unwrap().is_none(), "a refused create leaves no key behind");
        assert!(plane.create_tenant(tenant("globex", "cccc3")).unwrap());
        let mut acme = plane.tenant("acme").unwrap().unwrap();
        acme.keys.push(KeyRecord { id: "dddd".into(), sha256: "dddd4".into() });
        assert!(plane.update_tenant(acme).unwrap());
        assert!(!plane.update_tenant(tenant("nobody", "eeee5")).unwrap());

        let plane = EmbeddedControlPlane::open(dir.path()).unwrap();
        assert_eq!(plane.tenant_by_key("dddd4").unwrap().unwrap().name, "acme");
        assert_eq!(plane.tenant_by_key("cccc3").unwrap().unwrap().name, "globex");
        assert!(plane.delete_tenant("acme").unwrap());
        assert!(plane.tenant_by_key("aaaa1").unwrap().is_none(), "a deleted tenant's keys stop working");
        assert_eq!(plane.tenants().unwrap().len(), 1);
    }
}
