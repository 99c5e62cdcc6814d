//! The control store: where a host keeps what says how it serves, as opposed to the collections
//! it serves. Plugins (records and bytes), routes and pipelines are written here by the host;
//! tenants, API key hashes and quotas by the server. Everything goes through [`ControlStore`],
//! so a replicated service puts a shared store (etcd) behind the same trait and nothing above
//! it changes.
//!
//! Keys are `/`-separated paths of plain names (`routes/acme/docs.json`, `plugins/shared/<sha256>.wasm`);
//! values are bytes. [`DirectoryStore`], the default, keeps each key as the file of that path
//! under the data directory, so the layout of a data directory is its keyspace.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A small, durable key-value store for control records. Implementations are safe to call from
/// many threads; every write is atomic (a reader sees the old value or the new one).
pub trait ControlStore: Send + Sync {
    /// The value at `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every key that starts with `prefix`, sorted.
    fn keys(&self, prefix: &str) -> Result<Vec<String>>;
    /// Set `key` to `value`.
    fn put(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Remove `key`; `false` if it was absent.
    fn delete(&self, key: &str) -> Result<bool>;
    /// Set `key` to `value` only if it still holds `expected` (`None`: only if absent), so
    /// writers that read, change and write back never lose one another's change. `false` when
    /// it held something else; nothing changes then.
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool>;
    /// Changes under `prefix` from now on, by every writer (this process included), in the
    /// order they were committed; the stream ends when the store closes. `None` when no other
    /// process writes this store (a data directory belongs to one host), so a copy read at
    /// start never goes stale.
    fn watch(&self, prefix: &str) -> Result<Option<Watch>> {
        let _ = prefix;
        Ok(None)
    }
}

/// One change a [`ControlStore::watch`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `key` now holds `value`.
    Put { key: String, value: Vec<u8> },
    /// `key` was removed.
    Delete { key: String },
    /// The watch may have missed changes (its connection was lost and made again): re-read
    /// everything under its prefix.
    Resync,
}

/// The receiving end of a watch.
pub type Watch = std::sync::mpsc::Receiver<Change>;

/// Rewrites a document until no other writer got in between: `change` gets the current value
/// and returns the new one (or `None` to leave it, or an error to stop). Returns what `change`
/// returned last.
pub fn update<T>(store: &dyn ControlStore, key: &str, mut change: impl FnMut(Option<&[u8]>) -> Result<Option<(Vec<u8>, T)>>) -> Result<Option<T>> {
    // Each retry means another writer committed, so this ends unless writers never stop.
    const ATTEMPTS: u32 = 16;
    for attempt in 0..ATTEMPTS {
        let current = store.get(key)?;
        let Some((value, out)) = change(current.as_deref())? else { return Ok(None) };
        if store.compare_and_swap(key, current.as_deref(), &value)? {
            return Ok(Some(out));
        }
        // A random, growing pause, so a writer in a tight loop cannot starve the others.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let ceiling_us = 100u32 << attempt.min(10);
        std::thread::sleep(std::time::Duration::from_micros(u64::from(nanos % ceiling_us)));
    }
    bail!("`{key}` kept changing under {ATTEMPTS} attempts to update it; retry later")
}

/// Check that `key` is a relative path of plain names: no empty, `.` or `..` part, no
/// backslash or control character. Keys are built by the host, so this is a second line.
pub fn check_key(key: &str) -> Result<()> {
    let plain = |part: &str| !part.is_empty() && part != "." && part != ".." && !part.chars().any(|c| c == '\\' || c.is_control());
    if key.len() > 512 || !key.split('/').all(plain) {
        bail!("`{}` is not a control store key (a relative path of plain names)", crate::printable::printable(key, 64));
    }
    Ok(())
}

/// Keys as files under a directory. One process owns a data directory (the collection store
/// locks it), so a lock in this process is enough to make compare-and-swap atomic.
pub struct DirectoryStore {
    root: PathBuf,
    swap: Mutex<()>,
}

impl DirectoryStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirectoryStore { root: root.into(), swap: Mutex::new(()) }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

impl ControlStore for DirectoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        // Walk the directory that holds the prefix's last complete part, then filter.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut keys = Vec::new();
        let mut pending = vec![base.to_string()];
        while let Some(dir) = pending.pop() {
            let path = if dir.is_empty() { self.root.clone() } else { self.path(&dir)? };
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if not_found(&e) || e.kind() == std::io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", path.display())),
            };
            for entry in entries {
                let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
                // Names that are not UTF-8 or not plain cannot be keys, so they are not listed.
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let key = if dir.is_empty() { name } else { format!("{dir}/{name}") };
                if check_key(&key).is_err() || name_is_temporary(&key) {
                    continue;
                }
                let kind = entry.file_type().with_context(|| format!("cannot stat {}", entry.path().display()))?;
                if kind.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        pending.push(key);
                    }
                } else if kind.is_file() && key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_atomically(&path, value)
    }

    fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool> {
        let _one_at_a_time = self.swap.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.get(key)?.as_deref() != expected {
            return Ok(false);
        }
        self.put(key, value)?;
        Ok(true)
    }
}

/// The temporaries [`write_atomically`] leaves behind when a process dies mid-write.
fn name_is_temporary(key: &str) -> bool {
    key.ends_with(".tmp")
}

/// Keys in memory: for tests, hosts that keep nothing between runs, and several hosts in one
/// process sharing one store (it can be watched).
#[derive(Default)]
pub struct MemoryStore {
    values: Mutex<Values>,
}

#[derive(Default)]
struct Values {
    values: BTreeMap<String, Vec<u8>>,
    /// Open watches by prefix; one whose receiver is gone is dropped at the next change.
    watches: Vec<(String, std::sync::mpsc::Sender<Change>)>,
}

impl Values {
    /// Tell the watches of `key`, inside the lock, so they see changes in commit order.
    fn changed(&mut self, key: &str, value: Option<&[u8]>) {
        let change = match value {
            Some(value) => Change::Put { key: key.to_string(), value: value.to_vec() },
            None => Change::Delete { key: key.to_string() },
        };
        self.watches.retain(|(prefix, tx)| !key.starts_with(prefix.as_str()) || tx.send(change.clone()).is_ok());
    }
}

impl MemoryStore {
    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ControlStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        Ok(self.values().values.get(key).cloned())
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.values().values.range(prefix.to_string()..).map(|(k, _)| k).take_while(|k| k.starts_with(prefix)).cloned().collect())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key)?;
        let mut values = self.values();
        values.values.insert(key.to_string(), value.to_vec());
        values.changed(key, Some(value));
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        let mut values = self.values();
        let removed = values.values.remove(key).is_some();
        if removed {
            values.changed(key, None);
        }
        Ok(removed)
    }

    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool> {
        check_key(key)?;
        let mut values = self.values();
        if values.values.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        values.values.insert(key.to_string(), value.to_vec());
        values.changed(key, Some(value));
        Ok(true)
    }

    fn watch(&self, prefix: &str) -> Result<Option<Watch>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.values().watches.push((prefix.to_string(), tx));
        Ok(Some(rx))
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

/// The behaviour every [`ControlStore`] must have, as checks an implementation's tests call
/// with a fresh, empty store (each check panics with what went wrong).
pub mod conformance {
    use super::{Change, ControlStore, update};
    use std::time::Duration;

    /// Every check, in turn, on one empty store.
    pub fn check_all(store: &dyn ControlStore) {
        keeps_lists_swaps_and_deletes(store);
        refuses_keys_that_are_not_plain_paths(store);
        loses_no_concurrent_update(store);
        keeps_large_values_whole(store);
    }

    pub fn keeps_lists_swaps_and_deletes(store: &dyn ControlStore) {
        assert_eq!(store.get("routes.json").unwrap(), None);
        store.put("routes.json", b"{}").unwrap();
        store.put("plugins/shared/aa.json", b"1").unwrap();
        store.put("plugins/tenants/acme/bb.wasm", b"2").unwrap();
        store.put("pluginsX", b"3").unwrap();
        assert_eq!(store.keys("plugins/").unwrap(), ["plugins/shared/aa.json", "plugins/tenants/acme/bb.wasm"]);
        assert_eq!(store.keys("plugins/tenants/ac").unwrap(), ["plugins/tenants/acme/bb.wasm"]);
        assert_eq!(store.keys("").unwrap().len(), 4);
        assert!(store.keys("nothing/").unwrap().is_empty());

        assert!(!store.compare_and_swap("routes.json", Some(b"stale"), b"new").unwrap(), "a stale expectation changes nothing");
        assert_eq!(store.get("routes.json").unwrap().as_deref(), Some(&b"{}"[..]));
        assert!(store.compare_and_swap("routes.json", Some(b"{}"), b"new").unwrap());
        assert!(!store.compare_and_swap("routes.json", None, b"again").unwrap(), "`None` means only when absent");
        assert!(store.compare_and_swap("fresh.json", None, b"x").unwrap());

        assert!(store.delete("plugins/shared/aa.json").unwrap());
        assert!(!store.delete("plugins/shared/aa.json").unwrap());
        assert_eq!(store.get("plugins/shared/aa.json").unwrap(), None);
        for key in store.keys("").unwrap() {
            store.delete(&key).unwrap();
        }
    }

    pub fn refuses_keys_that_are_not_plain_paths(store: &dyn ControlStore) {
        for bad in ["../escape", "/etc/passwd", "a//b", "a/./b", "a/../../b", "a\\b", "a\nb", "", "a/"] {
            let err = store.put(bad, b"x").unwrap_err().to_string();
            assert!(err.contains("not a control store key"), "{bad:?}: {err}");
            assert!(store.get(bad).is_err() && store.delete(bad).is_err(), "{bad:?}");
        }
    }

    pub fn loses_no_concurrent_update(store: &dyn ControlStore) {
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..50 {
                        update(store, "counter", |current| {
                            let n: u64 = current.map(|b| String::from_utf8_lossy(b).parse().unwrap()).unwrap_or(0);
                            Ok(Some(((n + 1).to_string().into_bytes(), ())))
                        })
                        .unwrap();
                    }
                });
            }
        });
        let n: u64 = String::from_utf8(store.get("counter").unwrap().unwrap()).unwrap().parse().unwrap();
        assert_eq!(n, 100);
        store.delete("counter").unwrap();
    }

    /// Plugin bytes run to tens of MiB (a componentize-py plugin is 18 MB).
    pub fn keeps_large_values_whole(store: &dyn ControlStore) {
        let big: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        store.put("plugins/shared/big.wasm", &big).unwrap();
        assert!(store.get("plugins/shared/big.wasm").unwrap().as_deref() == Some(&big[..]), "a 20 MiB value reads back whole");
        assert!(store.compare_and_swap("plugins/shared/big.wasm", Some(&big), b"small").unwrap());
        assert_eq!(store.get("plugins/shared/big.wasm").unwrap().as_deref(), Some(&b"small"[..]));
        assert_eq!(store.keys("plugins/").unwrap(), ["plugins/shared/big.wasm"], "no pieces of the value are listed");
        assert!(store.delete("plugins/shared/big.wasm").unwrap());
        assert!(store.keys("").unwrap().is_empty());
    }

    /// For stores that can be watched: changes arrive in commit order, for the prefix only,
    /// and a failed compare-and-swap sends nothing.
    pub fn watches_see_every_change_in_order(store: &dyn ControlStore) {
        let watch = store.watch("routes/").unwrap().expect("this store can be watched");
        store.put("routes/a.json", b"1").unwrap();
        store.put("pipelines/a.json", b"elsewhere").unwrap();
        assert!(!store.compare_and_swap("routes/a.json", Some(b"stale"), b"2").unwrap());
        assert!(store.compare_and_swap("routes/a.json", Some(b"1"), b"3").unwrap());
        store.delete("routes/a.json").unwrap();
        let next = || watch.recv_timeout(Duration::from_secs(10)).expect("a change arrives");
        let put = |value: &[u8]| Change::Put { key: "routes/a.json".into(), value: value.to_vec() };
        assert_eq!([next(), next(), next()], [put(b"1"), put(b"3"), Change::Delete { key: "routes/a.json".into() }]);
        assert!(watch.recv_timeout(Duration::from_millis(300)).is_err(), "nothing else under the prefix changed");
        store.delete("pipelines/a.json").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_store_behaves_as_a_control_store_must() {
        let dir = tempfile::tempdir().unwrap();
        conformance::check_all(&DirectoryStore::new(dir.path()));
        assert!(DirectoryStore::new(dir.path()).watch("").unwrap().is_none(), "one process writes a data directory");
    }

    #[test]
    fn a_memory_store_behaves_as_a_control_store_must() {
        conformance::check_all(&MemoryStore::default());
        conformance::watches_see_every_change_in_order(&MemoryStore::default());
    }

    #[test]
    fn a_directory_store_lists_no_temporaries_and_reads_what_an_older_host_wrote() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routes.json"), "{}").unwrap();
        std::fs::write(dir.path().join("routes.123-0.tmp"), "half").unwrap();
        let store = DirectoryStore::new(dir.path());
        assert_eq!(store.keys("routes").unwrap(), ["routes.json"]);
        assert_eq!(store.get("routes.json").unwrap().as_deref(), Some(&b"{}"[..]));
    }
}
