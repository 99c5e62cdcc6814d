//! The embedded, crash-safe collection store on local disk.
//!
//! Built on redb: pure Rust, ACID with copy-on-write B-trees, durable on commit, and no server.
//! Items, item fields and collection-level blobs live in three tables keyed by tuples, so a
//! collection's data is one contiguous key range. A plugin call's writes are one transaction:
//! they all land when the call succeeds, or none do. A fourth table keeps the bytes each tenant
//! stores (keys and values of items, fields and blobs), updated in the same transactions, so a
//! storage quota is checked against an exact count without a scan.

use super::{
    AnnParams, CollectionMeta, CollectionStore, FieldSchema, FieldValue, OverStorage, Precision, SCHEMA_VERSION, StorageCaps,
    StoredItem, WriteBatch, qualify, split_qualified,
};
use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

const COLLECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("collections");
const ITEMS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("items");
const FIELDS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("fields");
const BLOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("blobs");
const TENANT_BYTES: TableDefinition<&str, u64> = TableDefinition::new("tenant_bytes");

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

/// The default [`CollectionStore`]: one redb file on local disk.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
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
        Ok(RedbStore { db })
    }

    fn update_vector_field(&self, collection: &str, field: &str, what: &str, update: impl FnOnce(&mut FieldSchema)) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(COLLECTIONS)?;
            let stored = table.get(collection)?.with_context(|| format!("collection `{collection}` does not exist"))?;
            let mut meta: CollectionMeta = serde_json::from_slice(stored.value())?;
            drop(stored);
            update(meta.vector_field_mut(field, what)?);
            table.insert(collection, serde_json::to_vec(&meta)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl CollectionStore for RedbStore {
    fn tenant_bytes(&self, tenant: &str) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(TENANT_BYTES)?.get(tenant)?.map_or(0, |v| v.value()))
    }

    fn ensure_collection(&self, name: &str) -> Result<CollectionMeta> {
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

    fn declare_fields(&self, collection: &str, fields: &[(String, FieldSchema)]) -> Result<()> {
        self.ensure_collection(collection)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(COLLECTIONS)?;
            let mut meta: CollectionMeta = serde_json::from_slice(table.get(collection)?.context("collection vanished")?.value())?;
            meta.declare(fields)?;
            table.insert(collection, serde_json::to_vec(&meta)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn set_ann(&self, collection: &str, field: &str, ann: Option<AnnParams>) -> Result<()> {
        self.update_vector_field(collection, field, "approximate search", |schema| schema.ann = ann)
    }

    fn set_precision(&self, collection: &str, field: &str, precision: Precision) -> Result<()> {
        self.update_vector_field(collection, field, "a precision", |schema| schema.precision = precision)
    }

    fn collection(&self, name: &str) -> Result<Option<CollectionMeta>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COLLECTIONS)?;
        Ok(match table.get(name)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    fn items(&self, collection: &str, ids: &[&str]) -> Result<Vec<Option<StoredItem>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ITEMS)?;
        ids.iter()
            .map(|id| match table.get((collection, *id))? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
                None => Ok(None),
            })
            .collect()
    }

    fn item_exists(&self, collection: &str, id: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ITEMS)?;
        Ok(table.get((collection, id))?.is_some())
    }

    fn collection_names(&self, tenant: &str) -> Result<Vec<String>> {
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

    fn item_count(&self, collection: &str) -> Result<usize> {
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

    fn commit(&self, batch: &WriteBatch, caps: &StorageCaps) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.validate()?;
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
                meta.accept_write(field, id, value)?;
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

    fn delete_items(&self, collection: &str, ids: &[String]) -> Result<usize> {
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

    fn scan_items(&self, collection: &str) -> Result<Vec<StoredItem>> {
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

    fn field(&self, collection: &str, id: &str, field: &str) -> Result<Option<FieldValue>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIELDS)?;
        match table.get((collection, field, id))? {
            Some(v) => Ok(Some(FieldValue::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn scan_field_page(
        &self,
        collection: &str,
        field: &str,
        after: Option<&str>,
        accept: &mut dyn FnMut(&str, &FieldValue) -> bool,
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

    fn field_len(&self, collection: &str, field: &str) -> Result<usize> {
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

    fn visit_field(&self, collection: &str, field: &str, visit: &mut dyn FnMut(&str, FieldValue) -> Result<()>) -> Result<()> {
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

    fn blob(&self, collection: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        Ok(table.get((collection, name))?.map(|v| v.value().to_vec()))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FieldKind, Metric, conformance};

    #[test]
    fn a_redb_store_behaves_as_a_collection_store_must() {
        let dir = tempfile::tempdir().unwrap();
        conformance::check_all(&RedbStore::open(&dir.path().join("s.redb")).unwrap());
    }

    #[test]
    fn committed_fields_survive_reopen_and_stay_in_their_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = RedbStore::open(&path).unwrap();
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
        let store = RedbStore::open(&path).unwrap();
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
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
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
            let (page, more) = store.scan_field_page("t/c", "codes", after.as_deref(), &mut |_, _| true, 3).unwrap();
            seen.extend(page.iter().map(|(id, _)| id.clone()));
            after = page.last().map(|(id, _)| id.clone());
            if !more {
                break;
            }
        }
        assert_eq!(seen, (0..10).map(|i| format!("id-{i}")).collect::<Vec<_>>(), "every value once, in id order, no other collection's");
        let (page, more) = store.scan_field_page("t/c", "codes", None, &mut |id, _| id < "id-2", 100).unwrap();
        assert_eq!((page.len(), more), (2, true), "`accept` ends the page early");
        let (page, more) = store.scan_field_page("t/c", "codes", Some("id-9"), &mut |_, _| true, 5).unwrap();
        assert!(page.is_empty() && !more);
    }

    #[test]
    fn each_tenants_stored_bytes_are_counted_exactly_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = RedbStore::open(&path).unwrap();
        store.ensure_collection("acme/c").unwrap();
        store.ensure_collection("globex/c").unwrap();
        let write = |store: &RedbStore, tenant: &str, id: &str, bytes: usize, caps: &StorageCaps| {
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
        let store = RedbStore::open(&path).unwrap();
        assert_eq!((store.tenant_bytes("acme").unwrap(), store.tenant_bytes("globex").unwrap()), (0, globex));
    }

    #[test]
    fn a_field_keeps_its_kind_and_metric() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
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
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
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

}
