//! The embedded, crash-safe collection store on local disk.
//!
//! Built on redb: pure Rust, ACID with copy-on-write B-trees, durable on commit, and no server.
//! Items, item fields and collection-level blobs live in three tables keyed by tuples, so a
//! collection's data is one contiguous key range. A plugin call's writes are one transaction:
//! they all land when the call succeeds, or none do. A fourth table keeps the bytes each tenant
//! stores (keys and values of items, fields and blobs), updated in the same transactions, so a
//! storage quota is checked against an exact count without a scan.

use anyhow::{Context as _, Result, bail};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Bumped when the on-disk layout of a collection changes.
pub const SCHEMA_VERSION: u32 = 1;

const COLLECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("collections");
const ITEMS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("items");
const FIELDS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("fields");
const BLOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("blobs");
const TENANT_BYTES: TableDefinition<&str, u64> = TableDefinition::new("tenant_bytes");

/// A write that would take a tenant past its storage quota; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
#[error(
    "tenant `{tenant}` would store {would_store} bytes, over its quota `stored_bytes` ({limit} bytes); \
     delete items or collections it no longer needs, or ask the operator to raise the quota"
)]
pub struct OverStorage {
    pub tenant: String,
    pub would_store: u64,
    pub limit: u64,
}

/// The most bytes each tenant may store, where it has a cap.
pub type StorageCaps = dyn Fn(&str) -> Option<u64> + Send + Sync;

/// Bytes stored per tenant, changed by one transaction.
#[derive(Default)]
struct Growth(BTreeMap<String, i64>);

impl Growth {
    /// Account for `key_len + new_len` bytes replacing `old_len` value bytes (`None`: a new key).
    fn replace(&mut self, collection: &str, key_len: usize, old_len: Option<usize>, new_len: usize) {
        let before = old_len.map_or(0, |old| key_len + old);
        *self.0.entry(split_qualified(collection).0.to_string()).or_default() += (key_len + new_len) as i64 - before as i64;
    }

    fn remove(&mut self, collection: &str, key_len: usize, old_len: usize) {
        *self.0.entry(split_qualified(collection).0.to_string()).or_default() -= (key_len + old_len) as i64;
    }

    /// Apply to the running totals; a tenant that grows past its cap stops the transaction.
    fn apply(self, txn: &redb::WriteTransaction, caps: &StorageCaps) -> Result<()> {
        let mut totals = txn.open_table(TENANT_BYTES)?;
        for (tenant, change) in self.0 {
            let before = totals.get(tenant.as_str())?.map_or(0, |v| v.value());
            let after = before.saturating_add_signed(change);
            if change > 0
                && let Some(limit) = caps(&tenant)
                && after > limit
            {
                return Err(OverStorage { tenant, would_store: after, limit }.into());
            }
            totals.insert(tenant.as_str(), after)?;
        }
        Ok(())
    }
}

/// A collection's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CollectionMeta {
    pub name: String,
    pub schema_version: u32,
    /// Every field written or declared so far, with its kind.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSchema>,
}

/// The kind of value a field holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FieldKind {
    Vector,
    Tokens,
    Codes,
    Blob,
}

/// How a vector field compares vectors; scores are "higher is nearer".
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    #[default]
    InnerProduct,
    Cosine,
    L2,
}

/// How a vector field's in-memory index holds its vectors. The store keeps what was written, in
/// f32, either way, so switching back to f32 loses nothing.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[default]
    F32,
    /// Half precision: half the memory and memory traffic, about 3 significant digits.
    F16,
    /// f32 plus an int8 copy (a quarter more memory) that single-query scans read first, with
    /// the best candidates re-scored in f32: exact scores, at about a quarter of the traffic.
    Int8,
}

impl Precision {
    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FieldSchema {
    pub kind: FieldKind,
    #[serde(default)]
    pub metric: Metric,
    /// Vector fields the operator chose approximate search for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ann: Option<AnnParams>,
    /// The operator's choice for vector fields; absent (f32) in stores from before the option.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl FieldSchema {
    /// A field as declared or first written: exact search, f32.
    pub fn new(kind: FieldKind, metric: Metric) -> Self {
        FieldSchema { kind, metric, ann: None, precision: Precision::F32 }
    }
}

/// HNSW parameters of an approximate vector index.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnnParams {
    /// Links per node (HNSW's M).
    pub m: usize,
    /// Candidates considered while inserting.
    pub ef_construction: usize,
    /// Candidates considered while searching; higher is slower and more exact.
    pub ef_search: usize,
}

impl Default for AnnParams {
    fn default() -> Self {
        AnnParams { m: 16, ef_construction: 200, ef_search: 64 }
    }
}

/// An item as the host stores it; strategies index it into fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredItem {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Where the item's image came from (a file path), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_source: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// A hash of the item's text, image and metadata, so a re-ingest can skip unchanged items.
    #[serde(default)]
    pub fingerprint: String,
    /// The `name@version` that indexed the item.
    #[serde(default)]
    pub indexed_by: String,
}

/// One stored field value. Mirrors the contract's `field-value`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Vector(Vec<f32>),
    Tokens { dim: u32, data: Vec<f32> },
    Codes(Vec<u32>),
    Blob(Vec<u8>),
}

impl FieldValue {
    pub fn kind(&self) -> FieldKind {
        match self {
            FieldValue::Vector(_) => FieldKind::Vector,
            FieldValue::Tokens { .. } => FieldKind::Tokens,
            FieldValue::Codes(_) => FieldKind::Codes,
            FieldValue::Blob(_) => FieldKind::Blob,
        }
    }

    /// Tag byte, then little-endian payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            FieldValue::Vector(v) => {
                out.push(0);
                v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            FieldValue::Tokens { dim, data } => {
                out.push(1);
                out.extend_from_slice(&dim.to_le_bytes());
                data.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            FieldValue::Codes(c) => {
                out.push(2);
                c.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            FieldValue::Blob(b) => {
                out.push(3);
                out.extend_from_slice(b);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (&tag, rest) = bytes.split_first().context("empty field value")?;
        let words = |b: &[u8]| -> Result<Vec<[u8; 4]>> {
            if !b.len().is_multiple_of(4) {
                bail!("field value has {} payload bytes, not a multiple of 4", b.len());
            }
            Ok(b.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
        };
        Ok(match tag {
            0 => FieldValue::Vector(words(rest)?.into_iter().map(f32::from_le_bytes).collect()),
            1 => {
                let w = words(rest)?;
                let (dim, data) = w.split_first().context("token set without a dimension")?;
                FieldValue::Tokens { dim: u32::from_le_bytes(*dim), data: data.iter().copied().map(f32::from_le_bytes).collect() }
            }
            2 => FieldValue::Codes(words(rest)?.into_iter().map(u32::from_le_bytes).collect()),
            3 => FieldValue::Blob(rest.to_vec()),
            other => bail!("unknown field value tag {other}; the store may be from a newer Quarry"),
        })
    }
}

/// Writes gathered during one plugin call and committed together.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub items: Vec<(String, StoredItem)>,
    pub fields: Vec<(String, String, String, FieldValue)>,
    pub blobs: Vec<(String, String, Vec<u8>)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.fields.is_empty() && self.blobs.is_empty()
    }
    /// The newest pending value of a field, if this batch wrote one.
    pub fn pending_field(&self, collection: &str, id: &str, field: &str) -> Option<&FieldValue> {
        self.fields.iter().rev().find(|(c, i, f, _)| c == collection && i == id && f == field).map(|(.., v)| v)
    }
    pub fn pending_blob(&self, collection: &str, name: &str) -> Option<&[u8]> {
        self.blobs.iter().rev().find(|(c, n, _)| c == collection && n == name).map(|(.., b)| b.as_slice())
    }
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Open or create the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).with_context(|| {
            format!("cannot open the collection store at {} (is another quarry process using it?)", path.display())
        })?;
        let txn = db.begin_write()?;
        let counted = txn.list_tables()?.any(|t| t.name() == TENANT_BYTES.name());
        txn.open_table(COLLECTIONS)?;
        txn.open_table(ITEMS)?;
        txn.open_table(FIELDS)?;
        txn.open_table(BLOBS)?;
        if !counted {
            count_tenant_bytes(&txn)?;
        }
        txn.commit()?;
        Ok(Store { db })
    }

    /// Bytes `tenant` stores: keys and values of its items, fields and blobs.
    pub fn tenant_bytes(&self, tenant: &str) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(TENANT_BYTES)?.get(tenant)?.map_or(0, |v| v.value()))
    }

    /// Create collection `name` (a qualified `tenant/name` key) if it does not exist; fail if it
    /// exists with another schema version.
    pub fn ensure_collection(&self, name: &str) -> Result<CollectionMeta> {
        if qualify(name)? != name {
            bail!("`{name}` is not a qualified collection key (tenant/name)");
        }
        if let Some(meta) = self.collection(name)? {
            if meta.schema_version != SCHEMA_VERSION {
                bail!(
                    "collection `{name}` has schema version {}, this Quarry reads version {SCHEMA_VERSION}; \
                     re-ingest it or use a matching Quarry",
                    meta.schema_version
                );
            }
            return Ok(meta);
        }
        let meta = CollectionMeta { name: name.to_string(), schema_version: SCHEMA_VERSION, fields: BTreeMap::new() };
        let txn = self.db.begin_write()?;
        txn.open_table(COLLECTIONS)?.insert(name, serde_json::to_vec(&meta)?.as_slice())?;
        txn.commit()?;
        Ok(meta)
    }

    /// Record a strategy's field declarations; a field keeps one kind and metric for life.
    pub fn declare_fields(&self, collection: &str, fields: &[(String, FieldSchema)]) -> Result<()> {
        self.ensure_collection(collection)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(COLLECTIONS)?;
            let mut meta: CollectionMeta = serde_json::from_slice(table.get(collection)?.context("collection vanished")?.value())?;
            for (name, schema) in fields {
                validate_name("field", name)?;
                match meta.fields.get(name) {
                    Some(existing) if (existing.kind, existing.metric) != (schema.kind, schema.metric) => bail!(
                        "field `{name}` of collection `{collection}` is {existing:?}, but the strategy declares it as {schema:?}; \
                         use another field name or another collection"
                    ),
                    Some(_) => {}
                    None => {
                        meta.fields.insert(name.clone(), *schema);
                    }
                }
            }
            table.insert(collection, serde_json::to_vec(&meta)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Choose approximate (HNSW) or exact search for a vector field.
    pub fn set_ann(&self, collection: &str, field: &str, ann: Option<AnnParams>) -> Result<()> {
        self.update_vector_field(collection, field, "approximate search", |schema| schema.ann = ann)
    }

    /// Choose the precision of a vector field's in-memory index.
    pub fn set_precision(&self, collection: &str, field: &str, precision: Precision) -> Result<()> {
        self.update_vector_field(collection, field, "a precision", |schema| schema.precision = precision)
    }

    /// The schema of a vector field, or an error naming what is missing.
    pub fn vector_field(&self, collection: &str, field: &str, what: &str) -> Result<FieldSchema> {
        let meta = self.collection(collection)?.with_context(|| format!("collection `{collection}` does not exist"))?;
        let schema = *meta.fields.get(field).with_context(|| format!("collection `{collection}` has no field `{field}`"))?;
        if schema.kind != FieldKind::Vector {
            bail!("field `{field}` holds {:?} values; only vector fields have {what}", schema.kind);
        }
        Ok(schema)
    }

    fn update_vector_field(&self, collection: &str, field: &str, what: &str, update: impl FnOnce(&mut FieldSchema)) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(COLLECTIONS)?;
            let stored = table.get(collection)?.with_context(|| format!("collection `{collection}` does not exist"))?;
            let mut meta: CollectionMeta = serde_json::from_slice(stored.value())?;
            drop(stored);
            let schema = meta.fields.get_mut(field).with_context(|| format!("collection `{collection}` has no field `{field}`"))?;
            if schema.kind != FieldKind::Vector {
                bail!("field `{field}` holds {:?} values; only vector fields have {what}", schema.kind);
            }
            update(schema);
            table.insert(collection, serde_json::to_vec(&meta)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn collection(&self, name: &str) -> Result<Option<CollectionMeta>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COLLECTIONS)?;
        Ok(match table.get(name)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }


    /// Several items in one read transaction, in the order asked (None where missing).
    pub fn items(&self, collection: &str, ids: &[&str]) -> Result<Vec<Option<StoredItem>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ITEMS)?;
        ids.iter()
            .map(|id| match table.get((collection, *id))? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
                None => Ok(None),
            })
            .collect()
    }

    /// Whether the collection stores item `id`.
    pub fn item_exists(&self, collection: &str, id: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ITEMS)?;
        Ok(table.get((collection, id))?.is_some())
    }

    /// The qualified names (`tenant/name`) of `tenant`'s collections, in name order.
    pub fn collection_names(&self, tenant: &str) -> Result<Vec<String>> {
        let prefix = format!("{tenant}/");
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COLLECTIONS)?;
        let mut names = Vec::new();
        for entry in table.range(prefix.as_str()..)? {
            let (key, _) = entry?;
            let key = key.value();
            if !key.starts_with(&prefix) {
                break;
            }
            names.push(key.to_string());
        }
        Ok(names)
    }

    pub fn item_count(&self, collection: &str) -> Result<usize> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ITEMS)?;
        let mut n = 0;
        for entry in table.range((collection, "")..)? {
            let (k, _) = entry?;
            if k.value().0 != collection {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Commit a plugin call's writes in one durable transaction, unless they take a tenant past
    /// its cap in `caps` ([`OverStorage`]; then nothing is written).
    pub fn commit(&self, batch: &WriteBatch, caps: &StorageCaps) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut collections = txn.open_table(COLLECTIONS)?;
            let mut metas: BTreeMap<&str, CollectionMeta> = BTreeMap::new();
            for (collection, id, field, value) in &batch.fields {
                let meta = match metas.entry(collection.as_str()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let stored = collections.get(collection.as_str())?.with_context(|| format!("collection `{collection}` does not exist"))?;
                        e.insert(serde_json::from_slice(stored.value())?)
                    }
                };
                let schema = meta.fields.entry(field.clone()).or_insert(FieldSchema::new(value.kind(), Metric::default()));
                if schema.kind != value.kind() {
                    bail!("field `{field}` of collection `{collection}` holds {:?} values; `{id}` got a {:?}", schema.kind, value.kind());
                }
            }
            for (name, meta) in &metas {
                collections.insert(*name, serde_json::to_vec(meta)?.as_slice())?;
            }
            let mut growth = Growth::default();
            let mut items = txn.open_table(ITEMS)?;
            for (collection, item) in &batch.items {
                let value = serde_json::to_vec(item)?;
                let old = items.insert((collection.as_str(), item.id.as_str()), value.as_slice())?.map(|v| v.value().len());
                growth.replace(collection, collection.len() + item.id.len(), old, value.len());
            }
            let mut fields = txn.open_table(FIELDS)?;
            for (collection, id, field, value) in &batch.fields {
                let value = value.encode();
                let old = fields.insert((collection.as_str(), field.as_str(), id.as_str()), value.as_slice())?.map(|v| v.value().len());
                growth.replace(collection, collection.len() + field.len() + id.len(), old, value.len());
            }
            let mut blobs = txn.open_table(BLOBS)?;
            for (collection, name, data) in &batch.blobs {
                let old = blobs.insert((collection.as_str(), name.as_str()), data.as_slice())?.map(|v| v.value().len());
                growth.replace(collection, collection.len() + name.len(), old, data.len());
            }
            growth.apply(&txn, caps)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Delete items and all their fields in one transaction; returns how many items existed.
    pub fn delete_items(&self, collection: &str, ids: &[String]) -> Result<usize> {
        let fields: Vec<String> = self.collection(collection)?.map(|m| m.fields.into_keys().collect()).unwrap_or_default();
        let txn = self.db.begin_write()?;
        let mut existed = 0;
        {
            let mut growth = Growth::default();
            let mut items = txn.open_table(ITEMS)?;
            let mut values = txn.open_table(FIELDS)?;
            for id in ids {
                if let Some(old) = items.remove((collection, id.as_str()))? {
                    existed += 1;
                    growth.remove(collection, collection.len() + id.len(), old.value().len());
                }
                for field in &fields {
                    if let Some(old) = values.remove((collection, field.as_str(), id.as_str()))? {
                        growth.remove(collection, collection.len() + field.len() + id.len(), old.value().len());
                    }
                }
            }
            growth.apply(&txn, &|_| None)?;
        }
        txn.commit()?;
        Ok(existed)
    }

    /// Every item of a collection (for metadata filters), in id order.
    pub fn scan_items(&self, collection: &str) -> Result<Vec<StoredItem>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ITEMS)?;
        let mut out = Vec::new();
        for entry in table.range((collection, "")..)? {
            let (k, v) = entry?;
            if k.value().0 != collection {
                break;
            }
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    pub fn field(&self, collection: &str, id: &str, field: &str) -> Result<Option<FieldValue>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIELDS)?;
        match table.get((collection, field, id))? {
            Some(v) => Ok(Some(FieldValue::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every (id, value) of one field of a collection, in id order.
    pub fn scan_field(&self, collection: &str, field: &str) -> Result<Vec<(String, FieldValue)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIELDS)?;
        let mut out = Vec::new();
        for entry in table.range((collection, field, "")..)? {
            let (k, v) = entry?;
            let (c, f, id) = k.value();
            if c != collection || f != field {
                break;
            }
            out.push((id.to_string(), FieldValue::decode(v.value())?));
        }
        Ok(out)
    }

    /// Values of one field in id order after `after` (from the first when none): at most
    /// `limit`, and only while `accept` takes them. Returns the page and whether more follow.
    pub fn scan_field_page(
        &self,
        collection: &str,
        field: &str,
        after: Option<&str>,
        mut accept: impl FnMut(&str, &FieldValue) -> bool,
        limit: usize,
    ) -> Result<(Vec<(String, FieldValue)>, bool)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIELDS)?;
        let mut out = Vec::new();
        for entry in table.range((collection, field, after.unwrap_or(""))..)? {
            let (k, v) = entry?;
            let (c, f, id) = k.value();
            if c != collection || f != field {
                break;
            }
            if Some(id) == after {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let value = FieldValue::decode(v.value())?;
            if !accept(id, &value) {
                return Ok((out, true));
            }
            out.push((id.to_string(), value));
        }
        Ok((out, false))
    }

    /// How many values one field of a collection holds.
    pub fn field_len(&self, collection: &str, field: &str) -> Result<usize> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIELDS)?;
        let mut n = 0;
        for entry in table.range((collection, field, "")..)? {
            let (k, _) = entry?;
            let (c, f, _) = k.value();
            if c != collection || f != field {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// `scan_field` one value at a time, so a large field is never decoded whole into memory.
    pub fn visit_field(&self, collection: &str, field: &str, mut visit: impl FnMut(&str, FieldValue) -> Result<()>) -> Result<()> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIELDS)?;
        for entry in table.range((collection, field, "")..)? {
            let (k, v) = entry?;
            let (c, f, id) = k.value();
            if c != collection || f != field {
                break;
            }
            visit(id, FieldValue::decode(v.value())?)?;
        }
        Ok(())
    }

    pub fn blob(&self, collection: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        Ok(table.get((collection, name))?.map(|v| v.value().to_vec()))
    }
}

/// The tenant a collection belongs to when its name does not say.
pub const DEFAULT_TENANT: &str = "default";

/// The store key of a collection: `tenant/name`. A bare `name` belongs to [`DEFAULT_TENANT`].
/// Count every tenant's bytes, for a store written before they were counted as they changed.
fn count_tenant_bytes(txn: &redb::WriteTransaction) -> Result<()> {
    let mut growth = Growth::default();
    for entry in txn.open_table(ITEMS)?.iter()? {
        let (k, v) = entry?;
        let (collection, id) = k.value();
        growth.replace(collection, collection.len() + id.len(), None, v.value().len());
    }
    for entry in txn.open_table(FIELDS)?.iter()? {
        let (k, v) = entry?;
        let (collection, field, id) = k.value();
        growth.replace(collection, collection.len() + field.len() + id.len(), None, v.value().len());
    }
    for entry in txn.open_table(BLOBS)?.iter()? {
        let (k, v) = entry?;
        let (collection, name) = k.value();
        growth.replace(collection, collection.len() + name.len(), None, v.value().len());
    }
    growth.apply(txn, &|_| None)
}

pub fn qualify(collection: &str) -> Result<String> {
    let (tenant, name) = collection.split_once('/').unwrap_or((DEFAULT_TENANT, collection));
    validate_name("tenant", tenant)?;
    validate_name("collection", name)?;
    Ok(format!("{tenant}/{name}"))
}

/// The tenant and bare name of a qualified collection key.
pub fn split_qualified(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((DEFAULT_TENANT, key))
}

/// Names become keys and file names: keep them to a safe, readable alphabet.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        bail!("{what} name `{name}` is invalid: use 1-128 characters from a-z, A-Z, 0-9, `-`, `_`, `.`, not starting with `.`");
    }
    Ok(())
}

/// Longest item id, in bytes.
pub const MAX_ITEM_ID_BYTES: usize = 512;

/// Item ids are shown in tables, logs and JSON: 1 to 512 bytes, without control or
/// bidirectional-override characters. Any other character (spaces, slashes, any script) is fine.
pub fn validate_item_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ITEM_ID_BYTES {
        bail!(
            "item id `{}` is {} bytes; ids must be 1 to {MAX_ITEM_ID_BYTES} bytes",
            crate::printable::printable(id, 64),
            id.len()
        );
    }
    if id.chars().any(|c| c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')) {
        bail!("item id `{}` holds control characters; use printable text", crate::printable::printable(id, 64));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_are_validated() {
        assert!(validate_item_id("docs/2024 report.pdf").is_ok());
        assert!(validate_item_id("写真-1").is_ok());
        for bad in ["", "a\nb", "\u{1b}[2J", "x\u{202E}y"] {
            assert!(validate_item_id(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_ITEM_ID_BYTES + 1);
        let err = validate_item_id(&long).unwrap_err().to_string();
        assert!(err.contains("513 bytes") && err.len() < 200, "{err}");
    }

    #[test]
    fn field_values_round_trip() {
        for v in [
            FieldValue::Vector(vec![1.0, -2.5, f32::MIN_POSITIVE]),
            FieldValue::Tokens { dim: 2, data: vec![0.5, 1.5, 2.5, 3.5] },
            FieldValue::Codes(vec![0, 7, u32::MAX]),
            FieldValue::Blob(b"codebook".to_vec()),
            FieldValue::Vector(vec![]),
        ] {
            assert_eq!(FieldValue::decode(&v.encode()).unwrap(), v);
        }
        assert!(FieldValue::decode(&[9, 0, 0, 0, 0]).is_err());
        assert!(FieldValue::decode(&[0, 1, 2]).is_err());
    }

    #[test]
    fn committed_fields_survive_reopen_and_stay_in_their_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.ensure_collection("t/a").unwrap();
            store.ensure_collection("t/b").unwrap();
            let mut batch = WriteBatch::default();
            batch.fields.push(("t/a".into(), "x".into(), "emb".into(), FieldValue::Vector(vec![1.0])));
            batch.fields.push(("t/b".into(), "y".into(), "emb".into(), FieldValue::Vector(vec![2.0])));
            batch.blobs.push(("t/a".into(), "codebook".into(), vec![1, 2, 3]));
            let item = StoredItem {
                id: "x".into(),
                text: Some("hi".into()),
                image_source: None,
                metadata: serde_json::json!({}),
                fingerprint: String::new(),
                indexed_by: String::new(),
            };
            batch.items.push(("t/a".into(), item));
            store.commit(&batch, &|_| None).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.scan_field("t/a", "emb").unwrap(), vec![("x".to_string(), FieldValue::Vector(vec![1.0]))]);
        assert_eq!(store.field("t/b", "y", "emb").unwrap(), Some(FieldValue::Vector(vec![2.0])));
        assert_eq!(store.field("t/a", "y", "emb").unwrap(), None);
        assert_eq!(store.blob("t/a", "codebook").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(store.item_count("t/a").unwrap(), 1);
        assert_eq!(store.item_count("t/b").unwrap(), 0);
        assert_eq!(store.collection("t/a").unwrap().unwrap().schema_version, SCHEMA_VERSION);
    }

    #[test]
    fn field_pages_follow_the_cursor_and_stop_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.ensure_collection("t/c").unwrap();
        store.ensure_collection("t/d").unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..10 {
            batch.fields.push(("t/c".into(), format!("id-{i}"), "codes".into(), FieldValue::Codes(vec![i])));
        }
        batch.fields.push(("t/d".into(), "other".into(), "codes".into(), FieldValue::Codes(vec![99])));
        store.commit(&batch, &|_| None).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = store.scan_field_page("t/c", "codes", after.as_deref(), |_, _| true, 3).unwrap();
            seen.extend(page.iter().map(|(id, _)| id.clone()));
            after = page.last().map(|(id, _)| id.clone());
            if !more {
                break;
            }
        }
        assert_eq!(seen, (0..10).map(|i| format!("id-{i}")).collect::<Vec<_>>(), "every value once, in id order, no other collection's");
        let (page, more) = store.scan_field_page("t/c", "codes", None, |id, _| id < "id-2", 100).unwrap();
        assert_eq!((page.len(), more), (2, true), "`accept` ends the page early");
        let (page, more) = store.scan_field_page("t/c", "codes", Some("id-9"), |_, _| true, 5).unwrap();
        assert!(page.is_empty() && !more);
    }

    #[test]
    fn each_tenants_stored_bytes_are_counted_exactly_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        store.ensure_collection("acme/c").unwrap();
        store.ensure_collection("globex/c").unwrap();
        let write = |store: &Store, tenant: &str, id: &str, bytes: usize, caps: &StorageCaps| {
            let mut batch = WriteBatch::default();
            batch.fields.push((format!("{tenant}/c"), id.into(), "b".into(), FieldValue::Blob(vec![7; bytes])));
            store.commit(&batch, caps)
        };
        // Key `acme/c` + `b` + `x` is 8 bytes, the value its tag and 1000 bytes.
        write(&store, "acme", "x", 1000, &|_| None).unwrap();
        assert_eq!(store.tenant_bytes("acme").unwrap(), 8 + 1001);
        write(&store, "acme", "x", 500, &|_| None).unwrap();
        assert_eq!(store.tenant_bytes("acme").unwrap(), 8 + 501, "a rewrite replaces, it does not add");
        write(&store, "globex", "y", 10, &|_| None).unwrap();

        let cap = |tenant: &str| (tenant == "acme").then_some(2000);
        let err = write(&store, "acme", "z", 1500, &cap).unwrap_err();
        let over = err.downcast_ref::<OverStorage>().expect("a typed error");
        assert_eq!((over.tenant.as_str(), over.would_store, over.limit), ("acme", 8 + 501 + 8 + 1501, 2000));
        assert!(err.to_string().contains("quota `stored_bytes` (2000 bytes)"), "{err}");
        assert_eq!(store.field("acme/c", "z", "b").unwrap(), None, "the refused write stored nothing");
        assert_eq!(store.tenant_bytes("acme").unwrap(), 8 + 501);
        write(&store, "globex", "z", 5000, &cap).unwrap();
        write(&store, "acme", "x", 100, &cap).unwrap();
        assert_eq!(store.tenant_bytes("acme").unwrap(), 8 + 101, "shrinking is allowed");

        store.delete_items("acme/c", &["x".into()]).unwrap();
        assert_eq!(store.tenant_bytes("acme").unwrap(), 0);
        let globex = store.tenant_bytes("globex").unwrap();

        // A store written before tenants' bytes were counted counts them once at open.
        let txn = store.db.begin_write().unwrap();
        txn.delete_table(TENANT_BYTES).unwrap();
        txn.commit().unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!((store.tenant_bytes("acme").unwrap(), store.tenant_bytes("globex").unwrap()), (0, globex));
    }

    #[test]
    fn a_field_keeps_its_kind_and_metric() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let vector = |metric| FieldSchema::new(FieldKind::Vector, metric);
        store.declare_fields("t/c", &[("emb".into(), vector(Metric::Cosine))]).unwrap();
        store.declare_fields("t/c", &[("emb".into(), vector(Metric::Cosine))]).unwrap();
        let err = store.declare_fields("t/c", &[("emb".into(), vector(Metric::L2))]).unwrap_err().to_string();
        assert!(err.contains("field `emb` of collection `t/c`"), "{err}");
        let mut batch = WriteBatch::default();
        batch.fields.push(("t/c".into(), "x".into(), "emb".into(), FieldValue::Codes(vec![1])));
        let err = store.commit(&batch, &|_| None).unwrap_err().to_string();
        assert!(err.contains("holds Vector values"), "{err}");
        assert!(store.scan_field("t/c", "emb").unwrap().is_empty(), "the failed commit wrote nothing");
        // An undeclared field is declared by its first write.
        let mut batch = WriteBatch::default();
        batch.fields.push(("t/c".into(), "x".into(), "ids".into(), FieldValue::Codes(vec![1])));
        store.commit(&batch, &|_| None).unwrap();
        assert_eq!(store.collection("t/c").unwrap().unwrap().fields["ids"].kind, FieldKind::Codes);
    }

    #[test]
    fn schemas_from_before_the_precision_option_read_as_f32() {
        let old: FieldSchema = serde_json::from_str(r#"{"kind": "vector", "metric": "cosine"}"#).unwrap();
        assert_eq!(old, FieldSchema::new(FieldKind::Vector, Metric::Cosine));
        // f32 fields are written as before, so an older Quarry still reads them.
        assert_eq!(serde_json::to_value(old).unwrap(), serde_json::json!({"kind": "vector", "metric": "cosine"}));
        let half = FieldSchema { precision: Precision::F16, ..old };
        assert_eq!(serde_json::from_value::<FieldSchema>(serde_json::to_value(half).unwrap()).unwrap(), half);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.declare_fields("t/c", &[("emb".into(), old), ("ids".into(), FieldSchema::new(FieldKind::Codes, Metric::default()))]).unwrap();
        store.set_precision("t/c", "emb", Precision::F16).unwrap();
        assert_eq!(store.collection("t/c").unwrap().unwrap().fields["emb"], half);
        let err = store.set_precision("t/c", "ids", Precision::F16).unwrap_err().to_string();
        assert!(err.contains("only vector fields have a precision"), "{err}");

        // int8 is written as its flag is named, like f16, and refused on the same fields.
        let int8 = FieldSchema { precision: Precision::Int8, ..old };
        assert_eq!(serde_json::to_value(int8).unwrap()["precision"], "int8");
        assert_eq!(serde_json::to_value(half).unwrap()["precision"], "f16");
        store.set_precision("t/c", "emb", Precision::Int8).unwrap();
        assert_eq!(store.collection("t/c").unwrap().unwrap().fields["emb"], int8);
        let err = store.set_precision("t/c", "ids", Precision::Int8).unwrap_err().to_string();
        assert!(err.contains("only vector fields have a precision"), "{err}");
    }

    #[test]
    fn collections_are_qualified_by_tenant() {
        assert_eq!(qualify("docs").unwrap(), "default/docs");
        assert_eq!(qualify("acme/docs").unwrap(), "acme/docs");
        assert!(qualify("a/b/c").is_err() && qualify("/docs").is_err() && qualify("acme/").is_err());
        assert_eq!(split_qualified("acme/docs"), ("acme", "docs"));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("collection", "docs-2024_v1.0").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_name("collection", bad).is_err(), "{bad:?}");
        }
    }
}
