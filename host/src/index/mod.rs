//! In-memory indexes over stored fields: built from the store on first use, kept current on
//! every commit and delete.
//!
//! - vector fields: exact top-k under the field's metric, with metadata filters, f32 or f16 ([`flat`]),
//!   or int8 codes re-scored in f32 ([`quantized`]), or HNSW ([`ann`]);
//! - code fields: a prefix trie ([`trie`]);
//! - token-set fields: late interaction ([`tokens`]).

pub mod ann;
pub mod filter;
pub mod flat;
pub mod quantized;
pub mod simd;
pub mod tokens;
pub mod trie;

use crate::store::{CollectionStore, FieldValue, Metric, Precision, WriteBatch};
use anyhow::{Result, anyhow, bail};
use ann::AnnIndex;
use filter::Filter;
use flat::FlatIndex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokens::TokenSets;
use trie::CodeTrie;

/// A scored item id, higher is better.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub id: String,
    pub score: f32,
}

type FieldKey = (String, String);
type Loaded<T> = RwLock<HashMap<FieldKey, Arc<RwLock<T>>>>;
/// Item metadata of one collection, by item id.
type Metadata = Arc<RwLock<HashMap<String, serde_json::Value>>>;

pub struct Indexes {
    store: Arc<dyn CollectionStore>,
    vectors: Loaded<FlatIndex>,
    /// Approximate indexes of the vector fields configured for them.
    ann: Loaded<Option<AnnIndex>>,
    codes: Loaded<CodeTrie>,
    tokens: Loaded<TokenSets>,
    /// Item metadata by collection, for filters.
    metadata: RwLock<HashMap<String, Metadata>>,
    /// Recently read collection blobs (a codebook that every query of a strategy reads).
    blobs: RwLock<BlobCache>,
    /// Where HNSW graphs are saved, so a start loads them instead of rebuilding; `None` keeps
    /// them in memory only.
    graph_dir: Option<PathBuf>,
}

/// Blobs by (collection, name), up to [`BlobCache::MAX_BYTES`] in all; emptied when full.
#[derive(Default)]
struct BlobCache {
    bytes: usize,
    blobs: HashMap<(String, String), Arc<[u8]>>,
    /// Bumped by every blob write, so a read that raced a write does not cache what it read.
    generation: u64,
}

impl BlobCache {
    const MAX_BYTES: usize = 64 << 20;
    /// Larger blobs are read from the store every time.
    const MAX_BLOB: usize = 4 << 20;
}

/// Find or build the index of one field. Building holds the map's write lock, so a commit's
/// `apply` waits for it and then updates the built index (updates are idempotent).
fn load<T>(map: &Loaded<T>, collection: &str, field: &str, build: impl FnOnce() -> Result<T>) -> Result<Arc<RwLock<T>>> {
    let key = (collection.to_string(), field.to_string());
    if let Some(index) = map.read().unwrap().get(&key) {
        return Ok(index.clone());
    }
    let mut map = map.write().unwrap();
    if let Some(index) = map.get(&key) {
        return Ok(index.clone());
    }
    let index = Arc::new(RwLock::new(build()?));
    map.insert(key, index.clone());
    Ok(index)
}

impl Indexes {
    pub fn new(store: Arc<dyn CollectionStore>) -> Self {
        Indexes {
            store,
            vectors: Default::default(),
            ann: Default::default(),
            codes: Default::default(),
            tokens: Default::default(),
            metadata: Default::default(),
            blobs: Default::default(),
            graph_dir: None,
        }
    }

    /// Save HNSW graphs under `dir` (after a build, and at [`Indexes::save_graphs`] or drop) and
    /// load them from there instead of rebuilding, when they still match the store.
    pub fn with_graph_dir(mut self, dir: PathBuf) -> Self {
        self.graph_dir = Some(dir);
        self
    }

    /// The file of a field's saved graph: named by a hash, since collection and field names may
    /// hold any characters.
    fn graph_path(&self, collection: &str, field: &str) -> Option<PathBuf> {
        let digest = Sha256::digest(format!("{collection}\0{field}"));
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Some(self.graph_dir.as_ref()?.join(format!("{name}.hnsw")))
    }

    /// Save every graph that changed since it was last saved or loaded. A graph that cannot be
    /// saved is rebuilt at the next start.
    pub fn save_graphs(&self) {
        let graphs: Vec<_> = self.ann.read().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for ((collection, field), ann) in graphs {
            // The exact index first, as every writer locks them.
            let Some(flat) = self.vectors.read().unwrap().get(&(collection.clone(), field.clone())).cloned() else { continue };
            let flat = flat.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut ann = ann.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(ann) = ann.as_mut().filter(|a| a.unsaved()) {
                self.save_graph(ann, &flat, &collection, &field);
            }
        }
    }

    fn save_graph(&self, ann: &mut AnnIndex, flat: &FlatIndex, collection: &str, field: &str) {
        let Some(path) = self.graph_path(collection, field) else { return };
        if let Err(e) = ann.save(flat, &path, &format!("{collection}/{field}")) {
            eprintln!("warning: cannot save the HNSW graph of `{collection}` field `{field}` ({e:#}); the next start rebuilds it");
        }
    }

    fn vectors(&self, collection: &str, field: &str) -> Result<Arc<RwLock<FlatIndex>>> {
        load(&self.vectors, collection, field, || {
            let schema = self.store.collection(collection)?.and_then(|m| m.fields.get(field).copied());
            let (metric, precision) = schema.map(|s| (s.metric, s.precision)).unwrap_or_default();
            self.load_vectors(collection, field, metric, precision)
        })
    }

    /// A field's vectors from the store, streamed into an index sized for them up front.
    fn load_vectors(&self, collection: &str, field: &str, metric: Metric, precision: Precision) -> Result<FlatIndex> {
        let mut index = FlatIndex::with_precision(metric, precision);
        index.reserve(self.store.field_len(collection, field)?);
        self.store.visit_field(collection, field, &mut |id, value| match value {
            FieldValue::Vector(v) => index.upsert(id, &v),
            _ => Ok(()),
        })?;
        index.train();
        Ok(index)
    }

    /// Rebuild a vector field's index at `precision` from the store and swap it in, with the
    /// field's graph (if any) rebuilt on next use. `persist` records the choice once the new index
    /// is built, so a field whose values f16 cannot hold keeps its current index and setting.
    /// The caller keeps commits out meanwhile.
    pub fn set_precision(&self, collection: &str, field: &str, metric: Metric, precision: Precision, persist: impl FnOnce() -> Result<()>) -> Result<()> {
        let index = self.load_vectors(collection, field, metric, precision)?;
        persist()?;
        let key = (collection.to_string(), field.to_string());
        self.vectors.write().unwrap().insert(key, Arc::new(RwLock::new(index)));
        self.reset_ann(collection, field);
        Ok(())
    }

    /// The field's approximate index, built on first use if the field is configured for one.
    fn ann(&self, collection: &str, field: &str, flat: &FlatIndex) -> Result<Arc<RwLock<Option<AnnIndex>>>> {
        load(&self.ann, collection, field, || {
            let schema = self.store.collection(collection)?.and_then(|m| m.fields.get(field).copied());
            let Some((params, metric)) = schema.and_then(|s| s.ann.map(|params| (params, s.metric))) else { return Ok(None) };
            let path = self.graph_path(collection, field);
            if let Some(path) = path.as_ref().filter(|p| p.exists()) {
                match AnnIndex::load(params, metric, flat, path, &format!("{collection}/{field}")) {
                    Ok(ann) => return Ok(Some(ann)),
                    Err(e) => eprintln!(
                        "warning: the saved HNSW graph of `{collection}` field `{field}` ({}) is not used: {e:#}; rebuilding it from the store",
                        path.display()
                    ),
                }
            }
            let mut ann = AnnIndex::build(params, metric, flat);
            if ann.unsaved() {
                self.save_graph(&mut ann, flat, collection, field);
            }
            Ok(Some(ann))
        })
    }

    /// Forget everything cached of `collections` (of every collection, when empty), after
    /// another host changed them; the next search reads them again. A build in progress holds
    /// its map's lock, so it is forgotten too once it ends.
    pub fn forget(&self, collections: &[String]) {
        let stale = |collection: &str| collections.is_empty() || collections.iter().any(|c| c == collection);
        self.vectors.write().unwrap().retain(|(c, _), _| !stale(c));
        self.ann.write().unwrap().retain(|(c, _), _| !stale(c));
        self.codes.write().unwrap().retain(|(c, _), _| !stale(c));
        self.tokens.write().unwrap().retain(|(c, _), _| !stale(c));
        self.metadata.write().unwrap().retain(|c, _| !stale(c));
        let mut blobs = self.blobs.write().unwrap();
        blobs.blobs.retain(|(c, _), _| !stale(c));
        blobs.bytes = blobs.blobs.values().map(|b| b.len()).sum();
        blobs.generation += 1;
    }

    /// Forget a field's approximate index (and its saved graph) after its configuration changed.
    pub fn reset_ann(&self, collection: &str, field: &str) {
        self.ann.write().unwrap().remove(&(collection.to_string(), field.to_string()));
        if let Some(path) = self.graph_path(collection, field) {
            // Only a leftover file; a stale one would fail its check at load anyway.
            let _ = std::fs::remove_file(path);
        }
    }

    fn code_trie(&self, collection: &str, field: &str) -> Result<Arc<RwLock<CodeTrie>>> {
        load(&self.codes, collection, field, || {
            let mut trie = CodeTrie::default();
            for (id, value) in self.store.scan_field(collection, field)? {
                if let FieldValue::Codes(c) = value {
                    trie.upsert(&id, &c);
                }
            }
            Ok(trie)
        })
    }

    fn token_sets(&self, collection: &str, field: &str) -> Result<Arc<RwLock<TokenSets>>> {
        load(&self.tokens, collection, field, || {
            let mut sets = TokenSets::default();
            for (id, value) in self.store.scan_field(collection, field)? {
                if let FieldValue::Tokens { dim, data } = value {
                    sets.upsert(&id, dim as usize, &data);
                }
            }
            Ok(sets)
        })
    }

    fn metadata(&self, collection: &str) -> Result<Metadata> {
        if let Some(m) = self.metadata.read().unwrap().get(collection) {
            return Ok(m.clone());
        }
        let mut map = self.metadata.write().unwrap();
        if let Some(m) = map.get(collection) {
            return Ok(m.clone());
        }
        let items = self.store.scan_items(collection)?;
        let m = Arc::new(RwLock::new(items.into_iter().map(|i| (i.id, i.metadata)).collect()));
        map.insert(collection.to_string(), m.clone());
        Ok(m)
    }

    /// Exact nearest neighbours on a vector field, optionally filtered on item metadata.
    pub fn nearest(&self, collection: &str, field: &str, query: &[f32], k: usize, filter: Option<&Filter>) -> Result<Vec<Scored>> {
        let index = self.vectors(collection, field)?;
        let index = index.read().unwrap();
        match filter {
            // Filters need every candidate checked, so they take the exact path.
            None => {
                let ann = self.ann(collection, field, &index)?;
                let ann = ann.read().unwrap();
                match ann.as_ref() {
                    Some(ann) => {
                        if query.len() != index.dim() {
                            return index.search(query, k, None);
                        }
                        // A fault inside the graph library must not take the host down: answer
                        // exactly instead.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ann.search(&index, query, k)))
                            .or_else(|_| index.search(query, k, None))
                    }
                    None => index.search(query, k, None),
                }
            }
            Some(filter) => {
                let metadata = self.metadata(collection)?;
                let metadata = metadata.read().unwrap();
                let null = serde_json::Value::Null;
                let accept = |id: &str| filter.matches(metadata.get(id).unwrap_or(&null));
                index.search(query, k, Some(&accept))
            }
        }
    }

    /// `id`'s vector on `field` as it was written, from memory, when the field's index is loaded
    /// and holds vectors unchanged (f32, not normalised for cosine); `None` means "ask the
    /// store". A re-ranker reading its candidates' vectors then makes no store reads.
    pub fn written_vector(&self, collection: &str, field: &str, id: &str) -> Option<Vec<f32>> {
        let index = self.vectors.read().unwrap().get(&(collection.to_string(), field.to_string()))?.clone();
        let index = index.read().unwrap();
        // int8 fields keep their f32 rows beside the codes.
        if index.precision() == Precision::F16 || index.metric() == Metric::Cosine {
            return None;
        }
        index.stored(id).map(|v| v.into_owned())
    }

    /// Load a vector field's index if it is not in memory yet (after a store read found the field
    /// holds vectors), so later reads of it are served by [`Indexes::written_vector`].
    pub fn load_vector_field(&self, collection: &str, field: &str) {
        // A field that cannot be loaded is read from the store, as before.
        let _ = self.vectors(collection, field);
    }

    /// A collection blob, from memory when it was read before and has not changed since.
    pub fn blob(&self, collection: &str, name: &str) -> Result<Option<Arc<[u8]>>> {
        let key = (collection.to_string(), name.to_string());
        let generation = {
            let cache = self.blobs.read().unwrap();
            if let Some(blob) = cache.blobs.get(&key) {
                return Ok(Some(blob.clone()));
            }
            cache.generation
        };
        let Some(blob) = self.store.blob(collection, name)? else { return Ok(None) };
        let blob: Arc<[u8]> = blob.into();
        let mut cache = self.blobs.write().unwrap();
        if blob.len() <= BlobCache::MAX_BLOB && cache.generation == generation {
            if cache.bytes + blob.len() > BlobCache::MAX_BYTES {
                cache.blobs.clear();
                cache.bytes = 0;
            }
            cache.bytes += blob.len();
            if let Some(old) = cache.blobs.insert(key, blob.clone()) {
                cache.bytes -= old.len();
            }
        }
        Ok(Some(blob))
    }

    /// For each prefix, the codes that follow it on a code field.
    pub fn next_codes(&self, collection: &str, field: &str, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        let trie = self.code_trie(collection, field)?;
        let trie = trie.read().unwrap();
        Ok(prefixes.iter().map(|p| trie.next_codes(p)).collect())
    }

    pub fn items_with_codes(&self, collection: &str, field: &str, codes: &[u32]) -> Result<Vec<String>> {
        Ok(self.code_trie(collection, field)?.read().unwrap().items_with(codes))
    }

    /// MaxSim of a query token set against candidates' token sets, within a work budget and a
    /// deadline (see [`TokenSets::max_sim`]).
    pub fn late_interaction(
        &self,
        collection: &str,
        field: &str,
        dim: usize,
        query: &[f32],
        candidates: &[String],
        budget: tokens::MaxSimBudget,
    ) -> Result<Vec<Scored>, tokens::MaxSimError> {
        let sets = self.token_sets(collection, field).map_err(|e| tokens::MaxSimError::Invalid(format!("{e:#}")))?;
        let sets = sets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        sets.max_sim(dim, query, candidates, budget)
    }

    /// Check a batch against the indexes before it is committed, so a bad vector fails the call
    /// instead of leaving the store and the index out of step.
    pub fn check(&self, batch: &WriteBatch) -> Result<()> {
        let mut dims: HashMap<(&str, &str), usize> = HashMap::new();
        for (collection, id, field, value) in &batch.fields {
            if let FieldValue::Vector(v) = value {
                let index = self.vectors(collection, field)?;
                let index = index.read().unwrap();
                index.check_range(id, v).map_err(|e| anyhow!("field `{field}`: {e}"))?;
                let expected = match dims.get(&(collection.as_str(), field.as_str())) {
                    Some(&d) => Some(d),
                    None => index.expected_dim(),
                };
                match expected {
                    Some(d) if d != v.len() => bail!(
                        "vector for `{id}` in field `{field}` has {} dimensions but the field holds {d}-dimensional vectors",
                        v.len()
                    ),
                    _ => {
                        dims.insert((collection.as_str(), field.as_str()), v.len());
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply a committed batch.
    pub fn apply(&self, batch: &WriteBatch) -> Result<()> {
        for (collection, id, field, value) in &batch.fields {
            match value {
                FieldValue::Vector(v) => {
                    let index = self.vectors(collection, field)?;
                    let mut index = index.write().unwrap();
                    index.upsert(id, v)?;
                    self.update_ann(collection, field, &index, |ann, flat| ann.upsert(flat, id));
                }
                FieldValue::Codes(c) => self.code_trie(collection, field)?.write().unwrap().upsert(id, c),
                FieldValue::Tokens { dim, data } => self.token_sets(collection, field)?.write().unwrap().upsert(id, *dim as usize, data),
                FieldValue::Blob(_) => {}
            }
        }
        if !batch.blobs.is_empty() {
            let mut cache = self.blobs.write().unwrap();
            cache.generation += 1;
            for (collection, name, _) in &batch.blobs {
                if let Some(old) = cache.blobs.remove(&(collection.clone(), name.clone())) {
                    cache.bytes -= old.len();
                }
            }
        }
        for (collection, item) in &batch.items {
            if let Some(m) = self.metadata.read().unwrap().get(collection) {
                m.write().unwrap().insert(item.id.clone(), item.metadata.clone());
            }
        }
        Ok(())
    }

    /// Apply `update` to a loaded approximate index, rebuilding it when stale nodes pile up.
    fn update_ann(&self, collection: &str, field: &str, flat: &FlatIndex, update: impl FnOnce(&mut AnnIndex, &FlatIndex)) {
        let key = (collection.to_string(), field.to_string());
        let Some(ann) = self.ann.read().unwrap().get(&key).cloned() else { return };
        let mut ann = ann.write().unwrap();
        if let Some(index) = ann.as_mut() {
            let updated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                update(index, flat);
                if index.needs_rebuild() {
                    *index = AnnIndex::build(*index.params(), index.metric(), flat);
                }
            }));
            // A fault inside the graph library leaves the field on exact search until the
            // next restart or `set_ann`, rather than taking the host down.
            if updated.is_err() {
                *ann = None;
            }
        }
    }

    /// Forget deleted items in every loaded index of their collection.
    pub fn remove(&self, collection: &str, ids: &[String]) {
        fn each<T>(map: &Loaded<T>, collection: &str, mut f: impl FnMut(&mut T)) {
            for ((c, _), index) in map.read().unwrap().iter() {
                if c == collection {
                    f(&mut index.write().unwrap());
                }
            }
        }
        let fields: Vec<_> = self.vectors.read().unwrap().iter().filter(|((c, _), _)| c == collection).map(|(k, v)| (k.clone(), v.clone())).collect();
        for ((_, field), flat) in fields {
            let mut flat = flat.write().unwrap();
            let removed: Vec<_> = ids.iter().filter_map(|id| flat.remove(id)).collect();
            // The graph replays the exact index's row moves in order, so its keys stay its rows.
            self.update_ann(collection, &field, &flat, |ann, _| removed.iter().for_each(|r| ann.remove(*r)));
        }
        each(&self.codes, collection, |trie| ids.iter().for_each(|id| trie.remove(id)));
        each(&self.tokens, collection, |sets| ids.iter().for_each(|id| sets.remove(id)));
        if let Some(m) = self.metadata.read().unwrap().get(collection) {
            let mut m = m.write().unwrap();
            ids.iter().for_each(|id| {
                m.remove(id);
            });
        }
    }
}

impl Drop for Indexes {
    /// A clean shutdown saves the graphs, so the next start loads them.
    fn drop(&mut self) {
        if self.graph_dir.is_some() {
            self.save_graphs();
        }
    }
}

/// Deterministic values in [-1, 1) (xorshift), for the index tests.
#[cfg(test)]
pub(crate) fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 2000) as f32 / 1000.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AnnParams, FieldKind, FieldSchema, RedbStore, StoredItem};

    fn commit(store: &Arc<dyn CollectionStore>, indexes: &Indexes, batch: &WriteBatch) -> Result<()> {
        indexes.check(batch)?;
        store.commit(batch, &|_| None)?;
        indexes.apply(batch)
    }

    fn vector_batch(collection: &str, items: impl IntoIterator<Item = (String, Vec<f32>)>) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (id, v) in items {
            let even = id.trim_start_matches("item-").parse::<u32>().is_ok_and(|i| i % 2 == 0);
            let item = StoredItem {
                id: id.clone(),
                text: None,
                image_source: None,
                metadata: serde_json::json!({ "even": even }),
                fingerprint: String::new(),
                indexed_by: String::new(),
            };
            batch.items.push((collection.to_string(), item));
            batch.fields.push((collection.to_string(), id, "emb".to_string(), FieldValue::Vector(v)));
        }
        batch
    }

    fn ids(hits: &[Scored]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn cached_blobs_and_in_memory_vectors_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CollectionStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let c = "t/c";
        store.declare_fields(c, &[("emb".to_string(), FieldSchema::new(FieldKind::Vector, Metric::L2))]).unwrap();
        let indexes = Indexes::new(store.clone());
        let blob = |bytes: &[u8]| WriteBatch { blobs: vec![(c.to_string(), "book".to_string(), bytes.to_vec())], ..Default::default() };
        assert!(indexes.blob(c, "book").unwrap().is_none());
        commit(&store, &indexes, &blob(b"one")).unwrap();
        assert_eq!(&*indexes.blob(c, "book").unwrap().unwrap(), b"one");
        commit(&store, &indexes, &blob(b"two")).unwrap();
        assert_eq!(&*indexes.blob(c, "book").unwrap().unwrap(), b"two", "a rewrite replaces the cached copy");

        let v = vec![0.5f32, -0.25, 3.0];
        commit(&store, &indexes, &vector_batch(c, [("item-1".to_string(), v.clone())])).unwrap();
        // A commit loads the field's index (applying a write needs it), so reads hit memory.
        indexes.load_vector_field(c, "emb");
        assert_eq!(indexes.written_vector(c, "emb", "item-1"), Some(v));
        commit(&store, &indexes, &vector_batch(c, [("item-1".to_string(), vec![1.0, 2.0, 3.0])])).unwrap();
        assert_eq!(indexes.written_vector(c, "emb", "item-1"), Some(vec![1.0, 2.0, 3.0]));
        indexes.remove(c, &["item-1".to_string()]);
        assert_eq!(indexes.written_vector(c, "emb", "item-1"), None);
    }

    #[test]
    fn switching_precision_keeps_every_item_and_the_answers() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CollectionStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let c = "t/c";
        store.declare_fields(c, &[("emb".to_string(), FieldSchema::new(FieldKind::Vector, Metric::L2))]).unwrap();
        let mut next = super::uniform(0x2545F4914F6CDD1D);
        let dim = 16;
        let vectors: Vec<(String, Vec<f32>)> = (0..300).map(|i| (format!("item-{i}"), (0..dim).map(|_| next()).collect())).collect();
        let indexes = Indexes::new(store.clone());
        commit(&store, &indexes, &vector_batch(c, vectors.clone())).unwrap();
        let query: Vec<f32> = (0..dim).map(|_| next()).collect();
        let even = Filter::parse(r#"{"even": true}"#).unwrap();
        let exact = indexes.nearest(c, "emb", &query, 10, None).unwrap();
        let exact_even = indexes.nearest(c, "emb", &query, 10, Some(&even)).unwrap();

        indexes.set_precision(c, "emb", Metric::L2, Precision::F16, || store.set_precision(c, "emb", Precision::F16)).unwrap();
        assert_eq!(store.collection(c).unwrap().unwrap().fields["emb"].precision, Precision::F16);
        let loaded = indexes.vectors(c, "emb").unwrap();
        assert_eq!((loaded.read().unwrap().len(), loaded.read().unwrap().precision()), (300, Precision::F16));
        // Every item is still there: each is its own nearest neighbour.
        for (id, v) in &vectors {
            assert_eq!(indexes.nearest(c, "emb", v, 1, None).unwrap()[0].id, *id);
        }
        let half = indexes.nearest(c, "emb", &query, 10, None).unwrap();
        assert!(ids(&half).iter().filter(|id| ids(&exact).contains(id)).count() >= 9, "{:?} vs {:?}", ids(&half), ids(&exact));
        for (h, e) in half.iter().zip(&exact) {
            assert!((h.score - e.score).abs() < 0.02, "{} vs {}", h.score, e.score);
        }
        let half_even = indexes.nearest(c, "emb", &query, 10, Some(&even)).unwrap();
        assert!(half_even.iter().all(|h| h.id.trim_start_matches("item-").parse::<u32>().unwrap() % 2 == 0));
        assert!(ids(&half_even).iter().filter(|id| ids(&exact_even).contains(id)).count() >= 9);

        // A graph built over the f16 rows answers too.
        store.set_ann(c, "emb", Some(AnnParams::default())).unwrap();
        indexes.reset_ann(c, "emb");
        assert_eq!(ids(&indexes.nearest(c, "emb", &query, 10, None).unwrap()), ids(&half));

        // A restart reads the choice back; writes land in the f16 index, refused past its range.
        let reopened = Indexes::new(store.clone());
        assert_eq!(reopened.vectors(c, "emb").unwrap().read().unwrap().precision(), Precision::F16);
        commit(&store, &reopened, &vector_batch(c, [("new".to_string(), query.clone())])).unwrap();
        assert_eq!(reopened.nearest(c, "emb", &query, 1, None).unwrap()[0].id, "new");
        let err = commit(&store, &reopened, &vector_batch(c, [("huge".to_string(), vec![1e6; dim])])).unwrap_err().to_string();
        assert!(err.contains("field `emb`") && err.contains("--f32"), "{err}");
        assert_eq!(store.field(c, "huge", "emb").unwrap(), None, "the refused write was not stored");

        // Back to f32: the store kept the vectors as written, so the answers are the first ones.
        reopened.set_precision(c, "emb", Metric::L2, Precision::F32, || store.set_precision(c, "emb", Precision::F32)).unwrap();
        store.set_ann(c, "emb", None).unwrap();
        reopened.reset_ann(c, "emb");
        let mut with_new = reopened.nearest(c, "emb", &query, 11, None).unwrap();
        assert_eq!(with_new.remove(0).id, "new");
        assert_eq!(with_new, exact);
        assert_eq!(reopened.nearest(c, "emb", &query, 10, Some(&even)).unwrap(), exact_even);
    }

    #[test]
    fn int8_fields_answer_exactly_across_switches_restarts_writes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CollectionStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let c = "t/c";
        store.declare_fields(c, &[("emb".to_string(), FieldSchema::new(FieldKind::Vector, Metric::L2))]).unwrap();
        // Clustered rows, so the nearest ten sit close together.
        let (dim, mut next) = (24, super::uniform(0x9E3779B97F4A7C15));
        let centres: Vec<Vec<f32>> = (0..12).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let vectors: Vec<(String, Vec<f32>)> = (0..900).map(|i| (format!("item-{i}"), centres[i % 12].iter().map(|c| c + 0.2 * next()).collect())).collect();
        let indexes = Indexes::new(store.clone());
        commit(&store, &indexes, &vector_batch(c, vectors.clone())).unwrap();
        let queries: Vec<Vec<f32>> = (0..8).map(|i| vectors[i * 101].1.iter().map(|x| x + 0.05 * next()).collect()).collect();
        let even = Filter::parse(r#"{"even": true}"#).unwrap();
        let answers = |indexes: &Indexes| -> Vec<Vec<Scored>> {
            queries.iter().flat_map(|q| [indexes.nearest(c, "emb", q, 10, None).unwrap(), indexes.nearest(c, "emb", q, 10, Some(&even)).unwrap()]).collect()
        };
        let exact = answers(&indexes);

        indexes.set_precision(c, "emb", Metric::L2, Precision::Int8, || store.set_precision(c, "emb", Precision::Int8)).unwrap();
        assert_eq!(store.collection(c).unwrap().unwrap().fields["emb"].precision, Precision::Int8);
        assert_eq!(indexes.vectors(c, "emb").unwrap().read().unwrap().precision(), Precision::Int8);
        // The same hits with the same f32 scores, filtered or not.
        assert_eq!(answers(&indexes), exact);
        // The f32 rows are in memory beside the codes, so re-rankers read them from there.
        assert_eq!(indexes.written_vector(c, "emb", "item-7"), Some(vectors[7].1.clone()));

        // A restart reads the choice back and trains the codes on the stored vectors.
        let reopened = Indexes::new(store.clone());
        assert_eq!(reopened.vectors(c, "emb").unwrap().read().unwrap().precision(), Precision::Int8);
        assert_eq!(answers(&reopened), exact);
        // A graph over an int8 field is built from, and re-scores with, its f32 rows.
        store.set_ann(c, "emb", Some(AnnParams::default())).unwrap();
        reopened.reset_ann(c, "emb");
        let hit = reopened.nearest(c, "emb", &vectors[5].1, 1, None).unwrap().remove(0);
        assert_eq!((hit.id.as_str(), hit.score), ("item-5", 0.0));
        store.set_ann(c, "emb", None).unwrap();
        reopened.reset_ann(c, "emb");
        // Writes (in range or far outside it) and deletes keep the answers exact.
        let far: Vec<f32> = queries[0].iter().map(|x| x * 40.0).collect();
        commit(&store, &reopened, &vector_batch(c, [("near".to_string(), queries[0].clone()), ("far".to_string(), far.clone())])).unwrap();
        assert_eq!(reopened.nearest(c, "emb", &queries[0], 1, None).unwrap()[0].id, "near");
        assert_eq!(reopened.nearest(c, "emb", &far, 1, None).unwrap()[0].id, "far");
        reopened.remove(c, &["near".to_string(), "far".to_string()]);
        store.delete_items(c, &["near".to_string(), "far".to_string()]).unwrap();
        assert_eq!(answers(&reopened), exact);
        let gone = exact[0][0].id.clone();
        reopened.remove(c, std::slice::from_ref(&gone));
        let without = reopened.nearest(c, "emb", &queries[0], 9, None).unwrap();
        assert_eq!(without, exact[0][1..], "deleting the best hit moves the rest up");
        store.delete_items(c, &[gone]).unwrap();

        // To f16 and back to int8, then to f32: each rebuilt from the store's f32 vectors.
        let now = Indexes::new(store.clone());
        let f32_now = answers(&now);
        now.set_precision(c, "emb", Metric::L2, Precision::F16, || store.set_precision(c, "emb", Precision::F16)).unwrap();
        now.set_precision(c, "emb", Metric::L2, Precision::Int8, || store.set_precision(c, "emb", Precision::Int8)).unwrap();
        assert_eq!(answers(&now), f32_now);
        now.set_precision(c, "emb", Metric::L2, Precision::F32, || store.set_precision(c, "emb", Precision::F32)).unwrap();
        assert_eq!(now.vectors(c, "emb").unwrap().read().unwrap().precision(), Precision::F32);
        assert_eq!(answers(&now), f32_now);
    }

    #[test]
    fn a_field_f16_cannot_hold_keeps_its_precision() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CollectionStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let c = "t/c";
        store.ensure_collection(c).unwrap();
        let indexes = Indexes::new(store.clone());
        commit(&store, &indexes, &vector_batch(c, [("a".to_string(), vec![1.0, 2.0]), ("b".to_string(), vec![1e5, 0.0])])).unwrap();
        let err = indexes
            .set_precision(c, "emb", Metric::InnerProduct, Precision::F16, || store.set_precision(c, "emb", Precision::F16))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`b`") && err.contains("--f32"), "{err}");
        assert_eq!(store.collection(c).unwrap().unwrap().fields["emb"].precision, Precision::F32);
        assert_eq!(indexes.vectors(c, "emb").unwrap().read().unwrap().precision(), Precision::F32);
        assert_eq!(indexes.nearest(c, "emb", &[1.0, 0.0], 1, None).unwrap()[0].id, "b");
    }
    #[test]
    fn a_start_loads_the_saved_graph_and_rebuilds_one_the_store_outran() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CollectionStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let c = "t/c";
        store.declare_fields(c, &[("emb".to_string(), FieldSchema::new(FieldKind::Vector, Metric::Cosine))]).unwrap();
        store.set_ann(c, "emb", Some(AnnParams::default())).unwrap();
        let mut next = super::uniform(7);
        let dim = 16;
        let vectors: Vec<(String, Vec<f32>)> = (0..400).map(|i| (format!("item-{i}"), (0..dim).map(|_| next()).collect())).collect();
        let graphs = dir.path().join("graphs");
        let start = || Indexes::new(store.clone()).with_graph_dir(graphs.clone());
        let indexes = start();
        commit(&store, &indexes, &vector_batch(c, vectors.clone())).unwrap();
        let query: Vec<f32> = (0..dim).map(|_| next()).collect();
        let first = indexes.nearest(c, "emb", &query, 10, None).unwrap();
        let path = indexes.graph_path(c, "emb").unwrap();
        // Built on first use and saved at once; a file replaced by a save is a new inode.
        let built = std::fs::metadata(&path).unwrap().ino();
        drop(indexes);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), built, "nothing changed, so nothing was saved again");

        let indexes = start();
        assert_eq!(indexes.nearest(c, "emb", &query, 10, None).unwrap(), first);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), built, "loaded, not rebuilt");
        drop(indexes);

        // A commit the graph never saw (a crash between the store's commit and the graph's save).
        store.commit(&vector_batch(c, [("late".to_string(), query.clone())]), &|_| None).unwrap();
        let indexes = start();
        assert_eq!(indexes.nearest(c, "emb", &query, 1, None).unwrap()[0].id, "late", "the stale graph was rebuilt");
        let rebuilt = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(rebuilt, built);
        // Writes after the start are saved at shutdown, and the next start loads them.
        indexes.remove(c, &["late".to_string()]);
        store.delete_items(c, &["late".to_string()]).unwrap();
        drop(indexes);
        let saved = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(saved, rebuilt);
        let indexes = start();
        assert_eq!(indexes.nearest(c, "emb", &query, 10, None).unwrap(), first);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), saved);
        // Changing the field's graph settings forgets the saved graph.
        indexes.reset_ann(c, "emb");
        assert!(!path.exists());
    }
}
