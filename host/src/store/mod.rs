//! Collections: items, their fields and collection-level blobs, behind [`CollectionStore`].
//!
//! [`RedbStore`], the default, keeps them in an embedded file on local disk. Every store keeps
//! the same contract, which [`conformance`] checks: names are qualified `tenant/name`, a commit
//! lands whole or not at all, and each tenant's stored bytes are counted exactly and capped.

mod redb;

pub use self::redb::RedbStore;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped when the on-disk layout of a collection changes.
pub const SCHEMA_VERSION: u32 = 1;

/// A write that would take a tenant past its storage quota; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
#[error(
    "tenant `{tenant}` would store {would_store} bytes, over its quota `stored_bytes` ({limit} bytes); \
     delete items it no longer needs, or ask the operator to raise the quota"
)]
pub struct OverStorage {
    pub tenant: String,
    pub would_store: u64,
    pub limit: u64,
}

/// The most bytes each tenant may store, where it has a cap.
pub type StorageCaps = dyn Fn(&str) -> Option<u64> + Send + Sync;

/// A collection's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CollectionMeta {
    pub name: String,
    pub schema_version: u32,
    /// Every field written or declared so far, with its kind.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSchema>,
}

/// The rules every store applies to a collection's fields; a store saves the result.
impl CollectionMeta {
    /// Record a strategy's field declarations: a field keeps one kind and metric for life.
    pub fn declare(&mut self, fields: &[(String, FieldSchema)]) -> Result<()> {
        for (name, schema) in fields {
            validate_name("field", name)?;
            match self.fields.get(name) {
                Some(existing) if (existing.kind, existing.metric) != (schema.kind, schema.metric) => bail!(
                    "field `{name}` of collection `{}` is {existing:?}, but the strategy declares it as {schema:?}; \
                     use another field name or another collection",
                    self.name
                ),
                Some(_) => {}
                None => {
                    self.fields.insert(name.clone(), *schema);
                }
            }
        }
        Ok(())
    }

    /// A vector field's schema, to change how it is searched (`what`, for the error).
    pub fn vector_field_mut(&mut self, field: &str, what: &str) -> Result<&mut FieldSchema> {
        let schema = self.fields.get_mut(field).with_context(|| format!("collection `{}` has no field `{field}`", self.name))?;
        if schema.kind != FieldKind::Vector {
            bail!("field `{field}` holds {:?} values; only vector fields have {what}", schema.kind);
        }
        Ok(schema)
    }

    /// Check a write of `value` to `field` of item `id` against the field's kind; a field
    /// written before it is declared is declared with the default metric (then returns true).
    pub fn accept_write(&mut self, field: &str, id: &str, value: &FieldValue) -> Result<bool> {
        let mut declared = false;
        let schema = self.fields.entry(field.to_string()).or_insert_with(|| {
            declared = true;
            FieldSchema::new(value.kind(), Metric::default())
        });
        if schema.kind != value.kind() {
            bail!("field `{field}` of collection `{}` holds {:?} values; `{id}` got a {:?}", self.name, schema.kind, value.kind());
        }
        Ok(declared)
    }
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

    /// Refuse a batch with an unqualified collection, a bad item id, field name or blob name,
    /// before a store writes any of it.
    pub fn validate(&self) -> Result<()> {
        let qualified = |collection: &str| -> Result<()> {
            if qualify(collection)? != collection {
                bail!("`{collection}` is not a qualified collection key (tenant/name)");
            }
            Ok(())
        };
        for (collection, item) in &self.items {
            qualified(collection)?;
            validate_item_id(&item.id)?;
        }
        for (collection, id, field, _) in &self.fields {
            qualified(collection)?;
            validate_item_id(id)?;
            validate_name("field", field)?;
        }
        for (collection, name, _) in &self.blobs {
            qualified(collection)?;
            validate_name("blob", name)?;
        }
        Ok(())
    }
}

/// Where collections live: the embedded [`RedbStore`] on one machine, a database server beyond.
///
/// Collections are named by qualified keys, `tenant/name` (see [`qualify`]); one tenant's
/// collections never see another's. Reads see only committed writes. Every store must pass
/// [`conformance::check_all`].
pub trait CollectionStore: Send + Sync {
    /// Create collection `name` (qualified) if it does not exist and return its metadata; fail
    /// if it exists with another [`SCHEMA_VERSION`] or the name is not qualified.
    fn ensure_collection(&self, name: &str) -> Result<CollectionMeta>;

    /// Record a strategy's field declarations, creating the collection if needed; a field keeps
    /// one kind and metric for life, and a declaration that differs fails and changes nothing.
    fn declare_fields(&self, collection: &str, fields: &[(String, FieldSchema)]) -> Result<()>;

    /// Choose approximate (HNSW) or exact search for an existing vector field.
    fn set_ann(&self, collection: &str, field: &str, ann: Option<AnnParams>) -> Result<()>;

    /// Choose the precision of an existing vector field's in-memory index.
    fn set_precision(&self, collection: &str, field: &str, precision: Precision) -> Result<()>;

    /// A collection's metadata, or `None` if it does not exist.
    fn collection(&self, name: &str) -> Result<Option<CollectionMeta>>;

    /// The qualified names of `tenant`'s collections, in name order.
    fn collection_names(&self, tenant: &str) -> Result<Vec<String>>;

    /// Apply a plugin call's writes atomically: all of them or none. A batch that fails
    /// [`WriteBatch::validate`], writes a field with another kind than it holds, writes a field
    /// to a missing collection, or grows a tenant past its cap in `caps` ([`OverStorage`]) stores
    /// nothing; a batch that shrinks a tenant passes even over its cap. A field written before
    /// it is declared is declared with the default metric.
    fn commit(&self, batch: &WriteBatch, caps: &StorageCaps) -> Result<()>;

    /// Delete items and all their fields, atomically; returns how many of the items existed.
    /// Collection-level blobs stay.
    fn delete_items(&self, collection: &str, ids: &[String]) -> Result<usize>;

    /// Several items, in the order asked, `None` where missing.
    fn items(&self, collection: &str, ids: &[&str]) -> Result<Vec<Option<StoredItem>>>;

    /// Whether the collection stores item `id`.
    fn item_exists(&self, collection: &str, id: &str) -> Result<bool>;

    /// How many items the collection stores.
    fn item_count(&self, collection: &str) -> Result<usize>;

    /// Every item of a collection, in id order (byte order of the ids, as for fields).
    fn scan_items(&self, collection: &str) -> Result<Vec<StoredItem>>;

    /// One item's value of one field, or `None`.
    fn field(&self, collection: &str, id: &str, field: &str) -> Result<Option<FieldValue>>;

    /// Values of one field in id order after `after` (from the first when none): at most
    /// `limit`, and only while `accept` takes them. Returns the page and whether more follow.
    fn scan_field_page(
        &self,
        collection: &str,
        field: &str,
        after: Option<&str>,
        accept: &mut dyn FnMut(&str, &FieldValue) -> bool,
        limit: usize,
    ) -> Result<(Vec<(String, FieldValue)>, bool)>;

    /// How many values one field of a collection holds.
    fn field_len(&self, collection: &str, field: &str) -> Result<usize>;

    /// Every (id, value) of one field in id order, one at a time, so a large field is never
    /// decoded whole into memory; stops at the first error `visit` returns.
    fn visit_field(&self, collection: &str, field: &str, visit: &mut dyn FnMut(&str, FieldValue) -> Result<()>) -> Result<()>;

    /// A collection-level blob, or `None`.
    fn blob(&self, collection: &str, name: &str) -> Result<Option<Vec<u8>>>;

    /// Bytes `tenant` stores, exactly: the keys (collection, field or blob name, id) and encoded
    /// values of its items, fields and blobs. Commits add to it, rewrites replace, deletes subtract.
    fn tenant_bytes(&self, tenant: &str) -> Result<u64>;

    /// The collections other hosts change, one list per commit as it lands, for a store that
    /// several hosts write; `None` where this host is the only writer. An empty list means
    /// anything may have changed (the feed missed some). Hosts drop what they cached of them.
    fn changes_elsewhere(&self) -> Result<Option<std::sync::mpsc::Receiver<Vec<String>>>> {
        Ok(None)
    }

    /// Every (id, value) of one field of a collection, in id order.
    fn scan_field(&self, collection: &str, field: &str) -> Result<Vec<(String, FieldValue)>> {
        let mut out = Vec::new();
        self.visit_field(collection, field, &mut |id, value| {
            out.push((id.to_string(), value));
            Ok(())
        })?;
        Ok(out)
    }

    /// The schema of a vector field, or an error naming what is missing (`what` the field is
    /// needed for).
    fn vector_field(&self, collection: &str, field: &str, what: &str) -> Result<FieldSchema> {
        let meta = self.collection(collection)?.with_context(|| format!("collection `{collection}` does not exist"))?;
        let schema = *meta.fields.get(field).with_context(|| format!("collection `{collection}` has no field `{field}`"))?;
        if schema.kind != FieldKind::Vector {
            bail!("field `{field}` holds {:?} values; only vector fields have {what}", schema.kind);
        }
        Ok(schema)
    }
}

/// The tenant a collection belongs to when its name does not say.
pub const DEFAULT_TENANT: &str = "default";

/// The store key of a collection: `tenant/name`. A bare `name` belongs to [`DEFAULT_TENANT`].
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

/// The contract every [`CollectionStore`] keeps, as checks that panic on the first breach. Each
/// check uses tenants of its own, so all of them can run, in turn, on one empty store.
pub mod conformance {
    use super::{
        AnnParams, CollectionStore, FieldKind, FieldSchema, FieldValue, MAX_ITEM_ID_BYTES, Metric, OverStorage, Precision, SCHEMA_VERSION,
        StorageCaps, StoredItem, WriteBatch,
    };

    /// Every check, in turn, on one empty store.
    pub fn check_all(store: &dyn CollectionStore) {
        keeps_each_tenants_collections_apart(store);
        round_trips_items_with_metadata(store);
        round_trips_fields_of_every_kind(store);
        keeps_field_schemas(store);
        commits_all_or_nothing(store);
        deletes_items_with_their_fields(store);
        scans_pages_and_visits_agree(store);
        counts_tenant_bytes_exactly(store);
        refuses_bad_names_and_ids(store);
        keeps_large_values_whole(store);
    }

    const UNCAPPED: &StorageCaps = &|_| None;

    pub fn item(id: &str) -> StoredItem {
        StoredItem {
            id: id.into(),
            text: Some(format!("text of {id}")),
            image_source: None,
            metadata: serde_json::json!({ "id": id }),
            fingerprint: format!("fp-{id}"),
            indexed_by: "dense@1.0.0".into(),
        }
    }

    fn field(collection: &str, id: &str, name: &str, value: FieldValue) -> (String, String, String, FieldValue) {
        (collection.into(), id.into(), name.into(), value)
    }

    /// The bytes a field adds to its tenant's count: its key and its encoded value.
    fn field_bytes(collection: &str, id: &str, name: &str, value: &FieldValue) -> u64 {
        (collection.len() + id.len() + name.len() + value.encode().len()) as u64
    }

    pub fn keeps_each_tenants_collections_apart(store: &dyn CollectionStore) {
        assert_eq!(store.collection("apart-a/docs").unwrap(), None);
        let meta = store.ensure_collection("apart-a/docs").unwrap();
        assert_eq!((meta.name.as_str(), meta.schema_version, meta.fields.len()), ("apart-a/docs", SCHEMA_VERSION, 0));
        assert_eq!(store.ensure_collection("apart-a/docs").unwrap(), meta, "ensuring twice changes nothing");
        store.ensure_collection("apart-a/pics").unwrap();
        store.ensure_collection("apart-b/docs").unwrap();
        store.ensure_collection("apart-ab/docs").unwrap();
        assert_eq!(store.collection_names("apart-a").unwrap(), ["apart-a/docs", "apart-a/pics"]);
        assert_eq!(store.collection_names("apart-b").unwrap(), ["apart-b/docs"]);
        assert!(store.collection_names("apart").unwrap().is_empty(), "a tenant name is not a prefix");

        let mut batch = WriteBatch::default();
        batch.items.push(("apart-a/docs".into(), item("x")));
        batch.fields.push(field("apart-a/docs", "x", "codes", FieldValue::Codes(vec![1, 2])));
        batch.blobs.push(("apart-a/docs".into(), "codebook".into(), vec![9]));
        store.commit(&batch, UNCAPPED).unwrap();
        for other in ["apart-b/docs", "apart-a/pics"] {
            assert_eq!(store.item_count(other).unwrap(), 0, "{other}");
            assert!(!store.item_exists(other, "x").unwrap(), "{other}");
            assert_eq!(store.items(other, &["x"]).unwrap(), [None], "{other}");
            assert_eq!(store.field(other, "x", "codes").unwrap(), None, "{other}");
            assert_eq!(store.field_len(other, "codes").unwrap(), 0, "{other}");
            assert_eq!(store.blob(other, "codebook").unwrap(), None, "{other}");
        }
        assert_eq!(store.item_count("apart-a/docs").unwrap(), 1);
        assert_eq!(store.tenant_bytes("apart-b").unwrap(), 0);
        assert!(store.tenant_bytes("apart-a").unwrap() > 0);
    }

    pub fn round_trips_items_with_metadata(store: &dyn CollectionStore) {
        let c = "items-t/c";
        store.ensure_collection(c).unwrap();
        let mut rich = item("docs/2024 report.pdf");
        rich.image_source = Some("/data/images/rapport été.png".into());
        rich.metadata = serde_json::json!({
            "title": "写真 \"quoted\" \\ back", "year": 2024, "score": -0.125, "tags": ["a", "b"],
            "nested": { "none": null, "yes": true }, "big": 9007199254740993u64,
        });
        let plain = StoredItem { text: None, metadata: serde_json::Value::Null, fingerprint: String::new(), indexed_by: String::new(), ..item("写真-1") };
        let mut batch = WriteBatch::default();
        batch.items.push((c.into(), rich.clone()));
        batch.items.push((c.into(), plain.clone()));
        batch.items.push((c.into(), item("B")));
        store.commit(&batch, UNCAPPED).unwrap();

        assert_eq!(store.items(c, &[&plain.id, "missing", &rich.id]).unwrap(), [Some(plain.clone()), None, Some(rich.clone())]);
        assert!(store.item_exists(c, &rich.id).unwrap() && !store.item_exists(c, "missing").unwrap());
        assert_eq!(store.item_count(c).unwrap(), 3);
        let ids: Vec<String> = store.scan_items(c).unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["B", "docs/2024 report.pdf", "写真-1"], "items scan in byte order of their ids");

        let mut batch = WriteBatch::default();
        let changed = StoredItem { text: Some("changed".into()), ..rich.clone() };
        batch.items.push((c.into(), changed.clone()));
        store.commit(&batch, UNCAPPED).unwrap();
        assert_eq!(store.items(c, &[&rich.id]).unwrap(), [Some(changed)], "a rewrite replaces the item");
        assert_eq!(store.item_count(c).unwrap(), 3);
    }

    pub fn round_trips_fields_of_every_kind(store: &dyn CollectionStore) {
        let c = "kinds-t/c";
        store.declare_fields(c, &[("emb".into(), FieldSchema::new(FieldKind::Vector, Metric::Cosine))]).unwrap();
        let values = [
            ("emb", FieldValue::Vector(vec![1.0, -0.0, f32::MIN_POSITIVE, f32::MAX, -3.25])),
            ("toks", FieldValue::Tokens { dim: 3, data: vec![0.5, 1.5, 2.5, -3.5, 1e-30, 7.0] }),
            ("codes", FieldValue::Codes(vec![0, 7, u32::MAX, 65536])),
            ("raw", FieldValue::Blob(vec![0, 255, 10, 13, 0])),
        ];
        let mut batch = WriteBatch::default();
        for (name, value) in &values {
            batch.fields.push(field(c, "a", name, value.clone()));
            batch.fields.push(field(c, "b", name, value.clone()));
        }
        batch.fields.push(field(c, "b", "codes", FieldValue::Codes(vec![])));
        batch.fields.push(field(c, "b", "raw", FieldValue::Blob(vec![])));
        batch.blobs.push((c.into(), "codebook".into(), b"\x00codebook\xff".to_vec()));
        store.commit(&batch, UNCAPPED).unwrap();

        for (name, value) in &values {
            assert_eq!(store.field(c, "a", name).unwrap().as_ref(), Some(value), "{name}");
            assert_eq!(store.field_len(c, name).unwrap(), 2, "{name}");
        }
        assert_eq!(store.field(c, "b", "codes").unwrap(), Some(FieldValue::Codes(vec![])), "the last write in a batch wins");
        assert_eq!(store.field(c, "b", "raw").unwrap(), Some(FieldValue::Blob(vec![])));
        assert_eq!(store.field(c, "missing", "emb").unwrap(), None);
        assert_eq!(store.field(c, "a", "missing").unwrap(), None);
        assert_eq!(store.blob(c, "codebook").unwrap().as_deref(), Some(&b"\x00codebook\xff"[..]));
        assert_eq!(store.blob(c, "missing").unwrap(), None);

        let fields = store.collection(c).unwrap().unwrap().fields;
        assert_eq!(fields["emb"], FieldSchema::new(FieldKind::Vector, Metric::Cosine), "a declared field keeps its metric");
        assert_eq!(fields["toks"], FieldSchema::new(FieldKind::Tokens, Metric::default()), "a field is declared by its first write");
        assert_eq!((fields["codes"].kind, fields["raw"].kind), (FieldKind::Codes, FieldKind::Blob));
    }

    pub fn keeps_field_schemas(store: &dyn CollectionStore) {
        let c = "schema-t/c";
        let vector = |metric| FieldSchema::new(FieldKind::Vector, metric);
        store.declare_fields(c, &[("emb".into(), vector(Metric::L2)), ("ids".into(), FieldSchema::new(FieldKind::Codes, Metric::default()))]).unwrap();
        store.declare_fields(c, &[("emb".into(), vector(Metric::L2))]).unwrap();
        let err = store.declare_fields(c, &[("emb".into(), vector(Metric::Cosine)), ("new".into(), vector(Metric::L2))]).unwrap_err().to_string();
        assert!(err.contains("field `emb` of collection `schema-t/c`"), "{err}");
        let fields = store.collection(c).unwrap().unwrap().fields;
        assert_eq!((fields["emb"], fields.contains_key("new")), (vector(Metric::L2), false), "a refused declaration changes nothing");

        let ann = AnnParams { m: 8, ef_construction: 50, ef_search: 20 };
        store.set_ann(c, "emb", Some(ann)).unwrap();
        store.set_precision(c, "emb", Precision::F16).unwrap();
        let expected = FieldSchema { ann: Some(ann), precision: Precision::F16, ..vector(Metric::L2) };
        assert_eq!(store.vector_field(c, "emb", "a precision").unwrap(), expected);
        assert_eq!(store.collection(c).unwrap().unwrap().fields["emb"], expected);
        store.set_ann(c, "emb", None).unwrap();
        assert_eq!(store.vector_field(c, "emb", "approximate search").unwrap().ann, None);

        for err in [
            store.set_precision(c, "ids", Precision::Int8).unwrap_err(),
            store.set_ann(c, "ids", Some(ann)).unwrap_err(),
            store.vector_field(c, "ids", "a precision").unwrap_err(),
        ] {
            assert!(err.to_string().contains("only vector fields have"), "{err}");
        }
        assert!(store.set_ann(c, "missing", None).unwrap_err().to_string().contains("has no field `missing`"));
        assert!(store.set_precision("schema-t/missing", "emb", Precision::F16).unwrap_err().to_string().contains("does not exist"));

        let mut batch = WriteBatch::default();
        batch.fields.push(field(c, "x", "ids", FieldValue::Codes(vec![1])));
        batch.fields.push(field(c, "x", "emb", FieldValue::Codes(vec![1])));
        let err = store.commit(&batch, UNCAPPED).unwrap_err().to_string();
        assert!(err.contains("holds Vector values"), "{err}");
        assert_eq!(store.field_len(c, "ids").unwrap(), 0, "a batch with a value of the wrong kind stores nothing");
    }

    pub fn commits_all_or_nothing(store: &dyn CollectionStore) {
        let (a, b, other) = ("whole-t/a", "whole-t/b", "whole-u/a");
        for c in [a, b, other] {
            store.ensure_collection(c).unwrap();
        }
        let mut first = WriteBatch::default();
        first.items.push((a.into(), item("kept")));
        first.fields.push(field(a, "kept", "emb", FieldValue::Vector(vec![1.0, 2.0])));
        store.commit(&first, UNCAPPED).unwrap();
        let before = store.tenant_bytes("whole-t").unwrap();

        let mut batch = WriteBatch::default();
        for c in [other, a, b] {
            batch.items.push((c.into(), item("new")));
            batch.fields.push(field(c, "new", "emb", FieldValue::Vector(vec![3.0, 4.0])));
            batch.fields.push(field(c, "new", "raw", FieldValue::Blob(vec![5; 4096])));
            batch.blobs.push((c.into(), "codebook".into(), vec![6; 1024]));
        }
        batch.items.push((a.into(), StoredItem { text: Some("overwritten".into()), ..item("kept") }));
        let cap = before + 4096;
        let caps = move |tenant: &str| (tenant == "whole-t").then_some(cap);
        let err = store.commit(&batch, &caps).unwrap_err();
        let over = err.downcast_ref::<OverStorage>().unwrap_or_else(|| panic!("not an OverStorage error: {err:#}"));
        assert_eq!((over.tenant.as_str(), over.limit), ("whole-t", cap));
        assert!(over.would_store > cap, "{over:?}");
        assert!(err.to_string().contains("quota `stored_bytes`"), "{err}");
        let nothing_stored = |store: &dyn CollectionStore| {
            for c in [other, a, b] {
                assert!(!store.item_exists(c, "new").unwrap(), "{c}");
                assert_eq!(store.field(c, "new", "emb").unwrap(), None, "{c}");
                assert_eq!(store.field(c, "new", "raw").unwrap(), None, "{c}");
                assert_eq!(store.blob(c, "codebook").unwrap(), None, "{c}");
            }
            assert_eq!(store.items(a, &["kept"]).unwrap(), [Some(item("kept"))]);
            assert_eq!((store.tenant_bytes("whole-t").unwrap(), store.tenant_bytes("whole-u").unwrap()), (before, 0));
        };
        nothing_stored(store);

        // A field to a collection that does not exist fails the whole batch too.
        let mut missing = WriteBatch::default();
        missing.items.push((a.into(), item("new")));
        missing.fields.push(field("whole-t/missing", "new", "emb", FieldValue::Vector(vec![1.0])));
        assert!(store.commit(&missing, UNCAPPED).unwrap_err().to_string().contains("does not exist"));
        nothing_stored(store);

        store.commit(&batch, &|tenant| (tenant == "whole-t").then_some(u64::MAX)).unwrap();
        for c in [other, a, b] {
            assert!(store.item_exists(c, "new").unwrap(), "{c}");
            assert_eq!(store.field(c, "new", "raw").unwrap(), Some(FieldValue::Blob(vec![5; 4096])), "{c}");
            assert_eq!(store.blob(c, "codebook").unwrap(), Some(vec![6; 1024]), "{c}");
        }
        assert_eq!(store.items(a, &["kept"]).unwrap()[0].as_ref().unwrap().text.as_deref(), Some("overwritten"));
    }

    pub fn deletes_items_with_their_fields(store: &dyn CollectionStore) {
        let c = "delete-t/c";
        store.ensure_collection(c).unwrap();
        let mut blob = WriteBatch::default();
        blob.blobs.push((c.into(), "codebook".into(), vec![1; 100]));
        store.commit(&blob, UNCAPPED).unwrap();
        let before = store.tenant_bytes("delete-t").unwrap();

        let mut batch = WriteBatch::default();
        for id in ["a", "b", "c"] {
            batch.items.push((c.into(), item(id)));
            batch.fields.push(field(c, id, "emb", FieldValue::Vector(vec![1.0, 0.0])));
            batch.fields.push(field(c, id, "codes", FieldValue::Codes(vec![1, 2, 3])));
        }
        // A field value without an item is deleted with that id too.
        batch.fields.push(field(c, "d", "codes", FieldValue::Codes(vec![4])));
        store.commit(&batch, UNCAPPED).unwrap();
        let full = store.tenant_bytes("delete-t").unwrap();
        assert!(full > before);

        assert_eq!(store.delete_items(c, &["a".into(), "c".into(), "missing".into(), "d".into()]).unwrap(), 2, "items that existed");
        for id in ["a", "c", "d"] {
            assert!(!store.item_exists(c, id).unwrap(), "{id}");
            assert_eq!(store.field(c, id, "emb").unwrap(), None, "{id}");
            assert_eq!(store.field(c, id, "codes").unwrap(), None, "{id}");
        }
        assert_eq!(store.scan_field(c, "emb").unwrap(), [("b".to_string(), FieldValue::Vector(vec![1.0, 0.0]))]);
        assert_eq!((store.field_len(c, "codes").unwrap(), store.item_count(c).unwrap()), (1, 1));
        let left = store.tenant_bytes("delete-t").unwrap();
        assert!(before < left && left < full, "{before} < {left} < {full}");

        assert_eq!(store.delete_items(c, &["b".into()]).unwrap(), 1);
        assert_eq!(store.tenant_bytes("delete-t").unwrap(), before, "deleting every item takes back every byte it added");
        assert_eq!(store.blob(c, "codebook").unwrap(), Some(vec![1; 100]), "collection blobs stay");
        assert_eq!(store.delete_items(c, &["b".into()]).unwrap(), 0);
        assert!(store.collection(c).unwrap().unwrap().fields.contains_key("emb"), "fields stay declared");
    }

    pub fn scans_pages_and_visits_agree(store: &dyn CollectionStore) {
        let (c, other) = ("scan-t/c", "scan-t/d");
        store.ensure_collection(c).unwrap();
        store.ensure_collection(other).unwrap();
        let mut ids: Vec<String> = (0..23).map(|i| format!("id-{i:02}")).collect();
        ids.extend(["Zed", "a b", "ü", "id-1"].map(String::from));
        let mut batch = WriteBatch::default();
        for (n, id) in ids.iter().enumerate() {
            batch.fields.push(field(c, id, "codes", FieldValue::Codes(vec![n as u32])));
            batch.fields.push(field(c, id, "other", FieldValue::Codes(vec![0])));
        }
        batch.fields.push(field(other, "id-00", "codes", FieldValue::Codes(vec![99])));
        store.commit(&batch, UNCAPPED).unwrap();
        ids.sort();

        let scanned = store.scan_field(c, "codes").unwrap();
        assert_eq!(scanned.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids, "every value once, in byte order of ids");
        let mut visited = Vec::new();
        store.visit_field(c, "codes", &mut |id, value| {
            visited.push((id.to_string(), value));
            Ok(())
        })
        .unwrap();
        assert_eq!(visited, scanned);
        assert_eq!(store.field_len(c, "codes").unwrap(), ids.len());

        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = store.scan_field_page(c, "codes", after.as_deref(), &mut |_, _| true, 4).unwrap();
            assert!(page.len() <= 4);
            after = page.last().map(|(id, _)| id.clone());
            paged.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(paged, scanned);

        let (page, more) = store.scan_field_page(c, "codes", None, &mut |id, _| id < "id-02", 100).unwrap();
        assert_eq!((page.len(), more), (4, true), "`accept` ends the page early: {page:?}");
        let (page, _) = store.scan_field_page(c, "codes", Some("id-05x"), &mut |_, _| true, 1).unwrap();
        assert_eq!(page[0].0, "id-06", "a cursor that names no value starts at the next id");
        let last = ids.last().unwrap();
        let (page, more) = store.scan_field_page(c, "codes", Some(last), &mut |_, _| true, 5).unwrap();
        assert!(page.is_empty() && !more);
        let (page, more) = store.scan_field_page(c, "missing", None, &mut |_, _| true, 5).unwrap();
        assert!(page.is_empty() && !more);

        let mut seen = 0;
        let err = store
            .visit_field(c, "codes", &mut |_, _| {
                seen += 1;
                anyhow::ensure!(seen < 3, "visitor stops");
                Ok(())
            })
            .unwrap_err();
        assert_eq!((err.to_string().as_str(), seen), ("visitor stops", 3), "a visitor's error stops the visit and comes back");
    }

    pub fn counts_tenant_bytes_exactly(store: &dyn CollectionStore) {
        let (c, other) = ("bytes-t/c", "bytes-u/c");
        store.ensure_collection(c).unwrap();
        store.ensure_collection(other).unwrap();
        assert_eq!(store.tenant_bytes("bytes-t").unwrap(), 0);
        let write = |id: &str, value: FieldValue, caps: &StorageCaps| {
            let mut batch = WriteBatch::default();
            batch.fields.push(field(c, id, "raw", value));
            store.commit(&batch, caps)
        };
        let big = FieldValue::Blob(vec![7; 1000]);
        write("x", big.clone(), UNCAPPED).unwrap();
        assert_eq!(store.tenant_bytes("bytes-t").unwrap(), field_bytes(c, "x", "raw", &big));
        write("x", big.clone(), UNCAPPED).unwrap();
        assert_eq!(store.tenant_bytes("bytes-t").unwrap(), field_bytes(c, "x", "raw", &big), "a rewrite replaces, it does not add");
        let small = FieldValue::Blob(vec![7; 10]);
        let exact = field_bytes(c, "x", "raw", &small);
        write("x", small.clone(), &|_| Some(1)).unwrap();
        assert_eq!(store.tenant_bytes("bytes-t").unwrap(), exact, "shrinking is allowed, even over the cap");
        let cap = exact + field_bytes(c, "x2", "raw", &small);
        write("x2", small.clone(), &move |_| Some(cap)).unwrap();
        assert_eq!(store.tenant_bytes("bytes-t").unwrap(), cap, "a cap may be reached exactly");
        let err = write("x3", small.clone(), &move |_| Some(cap)).unwrap_err();
        assert!(err.downcast_ref::<OverStorage>().is_some(), "{err:#}");
        store.delete_items(c, &["x2".into()]).unwrap();

        let mut blob = WriteBatch::default();
        blob.blobs.push((c.into(), "codebook".into(), vec![1; 300]));
        let it = item("y");
        blob.items.push((c.into(), it.clone()));
        store.commit(&blob, UNCAPPED).unwrap();
        let item_bytes = (c.len() + it.id.len() + serde_json::to_vec(&it).unwrap().len()) as u64;
        let blob_bytes = (c.len() + "codebook".len() + 300) as u64;
        assert_eq!(store.tenant_bytes("bytes-t").unwrap(), exact + item_bytes + blob_bytes, "items count their JSON, blobs their bytes");
        assert_eq!(store.tenant_bytes("bytes-u").unwrap(), 0);

        store.delete_items(c, &["x".into(), "y".into()]).unwrap();
        assert_eq!(store.tenant_bytes("bytes-t").unwrap(), blob_bytes);
    }

    pub fn refuses_bad_names_and_ids(store: &dyn CollectionStore) {
        for bad in ["docs", "a/b/c", "/docs", "bad-t/", "bad-t/.hidden", "bad-t/a b", "bad t/docs"] {
            assert!(store.ensure_collection(bad).is_err(), "{bad:?}");
            assert_eq!(store.collection(bad).unwrap(), None, "{bad:?}");
        }
        let c = "bad-t/c";
        store.ensure_collection(c).unwrap();
        assert!(store.declare_fields(c, &[("a b".into(), FieldSchema::new(FieldKind::Codes, Metric::default()))]).is_err());
        let long = "x".repeat(MAX_ITEM_ID_BYTES + 1);
        let mut bad_batches = Vec::new();
        for id in ["", "a\nb", "x\u{202E}y", long.as_str()] {
            let mut batch = WriteBatch::default();
            batch.items.push((c.into(), item(id)));
            bad_batches.push(batch);
            let mut batch = WriteBatch::default();
            batch.fields.push(field(c, id, "codes", FieldValue::Codes(vec![1])));
            bad_batches.push(batch);
        }
        for name in ["", ".x", "a b", "a/b"] {
            let mut batch = WriteBatch::default();
            batch.fields.push(field(c, "ok", name, FieldValue::Codes(vec![1])));
            bad_batches.push(batch);
            let mut batch = WriteBatch::default();
            batch.blobs.push((c.into(), name.into(), vec![1]));
            bad_batches.push(batch);
        }
        let mut batch = WriteBatch::default();
        batch.items.push(("c".into(), item("ok")));
        bad_batches.push(batch);
        for mut batch in bad_batches {
            batch.items.push((c.into(), item("ok")));
            assert!(store.commit(&batch, UNCAPPED).is_err(), "{batch:?}");
        }
        assert_eq!((store.item_count(c).unwrap(), store.tenant_bytes("bad-t").unwrap()), (0, 0), "refused batches store nothing");
        assert!(store.collection(c).unwrap().unwrap().fields.is_empty());
    }

    pub fn keeps_large_values_whole(store: &dyn CollectionStore) {
        let c = "large-t/c";
        store.ensure_collection(c).unwrap();
        let blob: Vec<u8> = (0..5 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let codes: Vec<u32> = (0..100_000).map(|i: u32| i.wrapping_mul(2654435761)).collect();
        let tokens: Vec<f32> = (0..512 * 128).map(|i| i as f32 / 7.0).collect();
        let vector: Vec<f32> = (0..4096).map(|i| (i as f32).sin()).collect();
        let mut batch = WriteBatch::default();
        batch.blobs.push((c.into(), "model".into(), blob.clone()));
        batch.fields.push(field(c, "x", "raw", FieldValue::Blob(blob.clone())));
        batch.fields.push(field(c, "x", "codes", FieldValue::Codes(codes.clone())));
        batch.fields.push(field(c, "x", "toks", FieldValue::Tokens { dim: 128, data: tokens.clone() }));
        batch.fields.push(field(c, "x", "emb", FieldValue::Vector(vector.clone())));
        store.commit(&batch, UNCAPPED).unwrap();
        assert!(store.blob(c, "model").unwrap() == Some(blob.clone()), "the 5 MiB blob comes back whole");
        assert!(store.field(c, "x", "raw").unwrap() == Some(FieldValue::Blob(blob)), "the 5 MiB blob field comes back whole");
        assert!(store.field(c, "x", "codes").unwrap() == Some(FieldValue::Codes(codes)), "100k codes come back whole");
        assert!(store.field(c, "x", "toks").unwrap() == Some(FieldValue::Tokens { dim: 128, data: tokens }));
        assert!(store.field(c, "x", "emb").unwrap() == Some(FieldValue::Vector(vector)));
        let expected: u64 = batch.fields.iter().map(|(c, id, f, v)| field_bytes(c, id, f, v)).sum::<u64>() + (c.len() + "model".len() + (5 << 20)) as u64;
        assert_eq!(store.tenant_bytes("large-t").unwrap(), expected);
    }
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
