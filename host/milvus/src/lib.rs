//! Collections in Milvus behind Quarry's [`CollectionStore`], so replicas share one data plane.
//!
//! # Mapping
//! Every Milvus collection this store makes is named `<namespace>_…` and has one row layout:
//! `pk` (the primary key), `part` and `key` (what the row holds), `gen` (the commit that wrote
//! it), `chunk` and `chunks` (its place in a value split over rows; `chunks == 0` marks a
//! deletion), `bytes` (what it adds to its tenant's stored bytes), `data` (base64, at most
//! 65,535 bytes) and `vec` (FLOAT_VECTOR).
//! - `<ns>_catalog`: collection metadata (part `meta`, key `tenant/name`, JSON), each tenant's
//!   stored bytes (part `bytes`, key the tenant, counted as the redb store counts them), the
//!   commit record (part `state`) and the list of the namespace's Milvus collections (`table`).
//! - `<ns>_c<hash of the collection>`: items (part `item`, key the id, JSON), values of token,
//!   code and blob fields (part `f:<field>`, key the id, [`FieldValue::encode`]) and collection
//!   blobs (part `blob`, key the name). A value longer than one row is chunked.
//! - `<ns>_v<hash of collection and field>`: one vector field, one row per id, the vector in
//!   `vec` under a FLAT index with the field's metric. The first write fixes its dimension;
//!   Milvus refuses vectors of another.
//!
//! Milvus needs a vector field in every collection: rows that carry no vector hold a constant
//! two-dimensional zero vector under a FLAT index, never searched.
//!
//! # Atomicity: what is guaranteed
//! Milvus has no multi-row transactions, so every write is a new version of its row under a
//! generation number `g`. A commit (1) records `g` as allocated, (2) inserts all its rows, a
//! deletion as a tombstone, with `gen = g`, (3) records `g` as committed, with one single-row
//! upsert, which is when the whole commit becomes visible, and (4) deletes the versions it
//! replaced, ten seconds later (at a later commit, or when the store is dropped), so reads that
//! listed them can still fetch them; should that fail, they stay, hidden by the newer ones. Metadata changes
//! (`ensure_collection`, `declare_fields`, `set_ann`, `set_precision`) are commits too.
//! Reads take, per key, the newest version of a committed generation, and read again when the
//! committed generation moved while they read, so they see whole commits. A commit that fails
//! before (3) is recorded as aborted and its rows are removed, at once or when a store next
//! opens the namespace (found through the catalog's list: milvus-lite cannot list collections);
//! readers never take an aborted generation's rows.
//!
//! # Several writers
//! [`MilvusStore::connect`] keeps the commit record in the catalog: that store must be the
//! namespace's only writer. Replicas use [`MilvusStore::connect_shared`], which keeps the record
//! in the control store they share (etcd) and changes it only by compare-and-swap. A writer
//! takes a turn (a 30 s lease in the record) before it reads what it will change, and gives it
//! back with its commit, so commits from every host apply one at a time, in full. A host that
//! dies holding the turn delays others until its lease ends; one that outlives its lease fails
//! its commit, and its generation is marked aborted for good, so rows it still inserts are never
//! read. A store that opens the namespace while no host holds the turn removes the rows of
//! aborted generations. Leases compare wall clocks, so hosts' clocks must agree to well within 30 s. The record
//! also names the collections of the newest commit, which
//! [`CollectionStore::changes_elsewhere`] reports to the other hosts so they drop their caches.
//!
//! Not guaranteed: a [`CollectionStore::visit_field`] that runs longer than ten seconds while
//! commits replace values it has yet to read fails and asks to be retried. Reads list a part's
//! rows in one query, so a part larger than a Milvus server's query window (16,384 rows;
//! milvus-lite has none) needs the query iterator, which this store does not use yet.

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use milvus::v2::prelude::{
    ClientV2, CollectionSchema, ConnectConfig, ConsistencyLevel, CreateCollectionRequest, CreateIndexRequest, DataType, DeleteRequest, FieldData,
    FieldSchema as MilvusField, HasCollectionRequest, IndexParam, IndexType, InsertRequest, LoadCollectionRequest, MetricType,
    QueryRequest, QueryResponse, UpsertRequest,
};
use quarry_host::control::{Change, ControlStore};
use quarry_host::store::{
    AnnParams, CollectionMeta, CollectionStore, FieldKind, FieldSchema, FieldValue, Metric, OverStorage, Precision, SCHEMA_VERSION, StorageCaps,
    StoredItem, WriteBatch, qualify, split_qualified,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Value bytes per row: base64 makes 64,000 of them, under VARCHAR's 65,535.
const CHUNK: usize = 48_000;
/// Rows per insert or fetch, so no gRPC message nears the client's 4 MiB limit.
const ROWS_PER_REQUEST: usize = 24;
/// Vectors per fetch.
const VECTORS_PER_REQUEST: usize = 64;
/// How long the versions a commit replaced stay, so reads that listed them can fetch them.
const REPLACED_KEPT_FOR: Duration = Duration::from_secs(10);
/// Times a read starts again when commits keep landing while it reads.
const READ_ATTEMPTS: usize = 20;
const PLACEHOLDER_DIM: usize = 2;
const STATE_PK: &str = "state";
/// The catalog part that lists the namespace's other Milvus collections.
const TABLE_PART: &str = "table";
const COLUMNS: [&str; 7] = ["pk", "part", "key", "gen", "chunk", "chunks", "bytes"];

/// A [`CollectionStore`] in a Milvus database; see the crate documentation for the mapping and
/// what a commit guarantees.
pub struct MilvusStore {
    /// Taken only when the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    client: ClientV2,
    namespace: String,
    /// Commits and metadata changes, one at a time.
    writing: Mutex<()>,
    /// Milvus collections known to exist and be loaded.
    ready: Mutex<HashSet<String>>,
    /// Rows that commits replaced, kept a while for reads that listed them before.
    replaced: Mutex<Vec<Replaced>>,
    record: Record,
}

struct Replaced {
    at: Instant,
    stale: BTreeMap<Table, Vec<String>>,
    tombstones: BTreeMap<Table, Vec<String>>,
}

impl Drop for MilvusStore {
    fn drop(&mut self) {
        let store = &*self;
        let _ = store.run(move || async move {
            store.remove_replaced(Duration::ZERO).await;
            Ok(())
        });
        // Dropping a runtime blocks, which panics on another runtime's worker.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The commit record: the newest committed generation, the newest handed out, and those that
/// failed between the two (their rows are ignored until removed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    committed: i64,
    allocated: i64,
    #[serde(default)]
    aborted: Vec<i64>,
    /// Shared records only: the writer whose turn it is, until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<Lease>,
    /// Shared records only: how many of `aborted` (which only grows there) had their rows
    /// removed.
    #[serde(default, skip_serializing_if = "is_zero")]
    swept: usize,
    /// Shared records only: who made the newest commit and which collections it changed, so
    /// other hosts drop what they cached of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<LastCommit>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Lease {
    writer: String,
    /// Milliseconds since the Unix epoch.
    until_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LastCommit {
    writer: String,
    collections: Vec<String>,
}

/// Where the commit record lives.
enum Record {
    /// A row of the catalog: this store is the namespace's only writer.
    Catalog,
    /// A key of a control store that several hosts share (etcd, for replicas). Writers take
    /// turns under a lease in the record, and every change of it is a compare-and-swap.
    Shared {
        control: Arc<dyn ControlStore>,
        key: String,
        /// This store's name in leases.
        writer: String,
        /// The record as this store last wrote it while holding the lease.
        held: Mutex<Option<Vec<u8>>>,
    },
}

/// The longest one store call may take, its retries and its wait for a turn included.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a writer may hold the lease; a commit that takes longer is rolled back.
const LEASE: Duration = Duration::from_secs(30);
/// How long a writer waits for its turn before giving up.
const LEASE_WAIT: Duration = Duration::from_secs(60);

/// A shared commit record as stored (for a compare-and-swap) and as read.
fn shared_record(control: &dyn ControlStore, key: &str) -> Result<(Option<Vec<u8>>, State)> {
    let stored = control.get(key)?;
    let state = match &stored {
        Some(bytes) => serde_json::from_slice(bytes).with_context(|| format!("the commit record `{key}` is not JSON; was it written by something else?"))?,
        None => State::default(),
    };
    Ok((stored, state))
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl State {
    fn visible(&self, generation: i64) -> bool {
        generation <= self.committed && !self.aborted.contains(&generation)
    }
}

/// A Milvus collection and the shape of its `vec` column; known by its name.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    /// Vector fields' tables only: their metric. Others hold placeholders.
    metric: Option<Metric>,
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Table {}

impl std::hash::Hash for Table {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PartialOrd for Table {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Table {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

/// One row, without its payload.
#[derive(Debug, Clone)]
struct Row {
    pk: String,
    part: String,
    key: String,
    generation: i64,
    chunk: i64,
    chunks: i64,
    bytes: i64,
}

/// The version of a key readers take: its rows (in chunk order) and what it counts.
#[derive(Debug, Clone)]
struct Version {
    pks: Vec<String>,
    bytes: i64,
    deleted: bool,
}

#[derive(Debug, Clone)]
enum Payload {
    Bytes(Vec<u8>),
    Vector(Vec<f32>),
}

/// One key's new value (`None`: delete it), with what it counts against `tenant`.
struct Put {
    table: Table,
    part: String,
    key: String,
    value: Option<Payload>,
    /// The tenant whose bytes it counts, and its key's length; `None` for metadata.
    counted: Option<(String, usize)>,
}

impl MilvusStore {
    /// Connect to Milvus at `uri` (e.g. `http://127.0.0.1:19530`) and use the Milvus collections
    /// named `<namespace>_…`, creating the catalog if it is missing and removing what failed
    /// commits left behind.
    pub fn connect(uri: &str, namespace: &str) -> Result<Self> {
        Self::open(uri, namespace, Record::Catalog)
    }

    /// Connect as one of several hosts writing the namespace: the commit record lives in
    /// `control` (the control store the hosts share, such as etcd), where writers take turns.
    pub fn connect_shared(uri: &str, namespace: &str, control: Arc<dyn ControlStore>) -> Result<Self> {
        let writer = format!("{}-{}-{:x}", std::process::id(), now_ms(), Sha256::digest(format!("{:?}", std::time::Instant::now()))[0]);
        let key = format!("collections/milvus/{namespace}/commits");
        Self::open(uri, namespace, Record::Shared { control, key, writer, held: Mutex::new(None) })
    }

    fn open(uri: &str, namespace: &str, record: Record) -> Result<Self> {
        let valid = !namespace.is_empty()
            && namespace.len() <= 64
            && namespace.starts_with(|c: char| c.is_ascii_alphabetic())
            && namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        ensure!(valid, "Milvus namespace `{namespace}` is invalid: use 1-64 characters from a-z, A-Z, 0-9 and `_`, starting with a letter");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let config = ConnectConfig::new().uri(uri).connect_timeout(Duration::from_secs(10));
        let client = match block_on(&runtime, || async { Ok(ClientV2::new(&config).await?) }) {
            Ok(client) => client,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e.context(format!("cannot connect to Milvus at {uri}; is it running and reachable from here?")));
            }
        };
        let store = MilvusStore { runtime: Some(runtime), client, namespace: namespace.to_string(), writing: Mutex::new(()), ready: Mutex::new(HashSet::new()), replaced: Mutex::new(Vec::new()), record };
        let opened = &store;
        store.run(move || async move {
            opened.ensure_table(&opened.catalog(), PLACEHOLDER_DIM).await?;
            opened.recover().await
        })?;
        Ok(store)
    }

    /// Run async work on the store's runtime; see [`block_on`].
    fn run<T: Send, F: Future<Output = Result<T>>>(&self, work: impl FnOnce() -> F + Send) -> Result<T> {
        block_on(self.runtime.as_ref().expect("the runtime lives as long as the store"), work)
    }

    fn catalog(&self) -> Table {
        Table { name: format!("{}_catalog", self.namespace), metric: None }
    }

    fn rows_table(&self, collection: &str) -> Table {
        Table { name: format!("{}_c{}", self.namespace, short_hash(&[collection])), metric: None }
    }

    fn vector_table(&self, collection: &str, field: &str, metric: Metric) -> Table {
        Table { name: format!("{}_v{}", self.namespace, short_hash(&[collection, field])), metric: Some(metric) }
    }

    /// Where a field's values live.
    fn field_place(&self, collection: &str, field: &str, schema: &FieldSchema) -> (Table, String) {
        match schema.kind {
            FieldKind::Vector => (self.vector_table(collection, field, schema.metric), "vec".to_string()),
            _ => (self.rows_table(collection), format!("f:{field}")),
        }
    }

    async fn table_exists(&self, table: &Table) -> Result<bool> {
        if self.ready.lock().unwrap().contains(&table.name) {
            return Ok(true);
        }
        let exists = self.client.has_collection(HasCollectionRequest::builder().collection_name(&table.name).build()?).await?.exists();
        if exists {
            self.load(table).await?;
        }
        Ok(exists)
    }

    async fn load(&self, table: &Table) -> Result<()> {
        self.client.load_collection(LoadCollectionRequest::builder().collection_name(&table.name).build()?).await?;
        self.ready.lock().unwrap().insert(table.name.clone());
        Ok(())
    }

    /// Create `table` (with `dim`-dimensional vectors) unless it exists, index and load it.
    async fn ensure_table(&self, table: &Table, dim: usize) -> Result<()> {
        if self.table_exists(table).await? {
            return Ok(());
        }
        let varchar = |name: &str, max: u32| MilvusField::new().name(name).data_type(DataType::VarChar).max_length(max);
        let int = |name: &str| MilvusField::new().name(name).data_type(DataType::Int64);
        let schema = CollectionSchema::new()
            .add_field(varchar("pk", 2048).primary_key(true))
            .add_field(varchar("part", 512))
            .add_field(varchar("key", 2048))
            .add_field(int("gen"))
            .add_field(int("chunk"))
            .add_field(int("chunks"))
            .add_field(int("bytes"))
            .add_field(varchar("data", 65_535))
            .add_field(MilvusField::new().name("vec").data_type(DataType::FloatVector).dimension(dim as u32));
        self.client
            .create_collection(CreateCollectionRequest::builder().collection_name(&table.name).schema(schema).build()?)
            .await
            .with_context(|| format!("cannot create the Milvus collection `{}`", table.name))?;
        let metric = match table.metric {
            None | Some(Metric::L2) => MetricType::L2,
            Some(Metric::InnerProduct) => MetricType::Ip,
            Some(Metric::Cosine) => MetricType::Cosine,
        };
        let index = IndexParam::new().field_name("vec").index_type(IndexType::Flat).metric_type(metric);
        // milvus-lite has no AllocTimestamp, which a synchronous create_index waits with.
        self.client.create_index(CreateIndexRequest::builder().collection_name(&table.name).index_params(vec![index]).sync(false).build()?).await?;
        self.load(table).await?;
        if *table != self.catalog() {
            self.put_fixed(&format!("{TABLE_PART}/{}", table.name), TABLE_PART, &table.name, String::new()).await?;
        }
        Ok(())
    }

    async fn state(&self) -> Result<State> {
        if let Record::Shared { control, key, .. } = &self.record {
            return Ok(shared_record(control.as_ref(), key)?.1);
        }
        let response = self.query(&self.catalog().name, format!("pk == {}", quote(STATE_PK)), &["data"]).await?;
        let Some(row) = response.results().rows()?.next() else { return Ok(State::default()) };
        let data = BASE64.decode(row.get_str("data")?).context("the Milvus commit record is not base64")?;
        serde_json::from_slice(&data).context("the Milvus commit record is not JSON; was this namespace written by something else?")
    }

    async fn set_state(&self, state: &State) -> Result<()> {
        if let Record::Shared { control, key, held, .. } = &self.record {
            let mut held = held.lock().unwrap();
            let bytes = serde_json::to_vec(state)?;
            ensure!(
                held.is_some() && control.compare_and_swap(key, held.as_deref(), &bytes)?,
                "this host lost its turn to write the Milvus namespace `{}` (a commit took over {} s, or another host took the turn); nothing of it is read",
                self.namespace,
                LEASE.as_secs()
            );
            *held = Some(bytes);
            return Ok(());
        }
        let data = BASE64.encode(serde_json::to_vec(state)?);
        self.put_fixed(STATE_PK, STATE_PK, STATE_PK, data).await.context("cannot write the Milvus commit record")
    }

    /// Write a catalog row that stands outside generations: the commit record, the table list.
    async fn put_fixed(&self, pk: &str, part: &str, key: &str, data: String) -> Result<()> {
        let columns = vec![
            FieldData::varchar("pk", vec![pk.into()]),
            FieldData::varchar("part", vec![part.into()]),
            FieldData::varchar("key", vec![key.into()]),
            FieldData::int64("gen", vec![0]),
            FieldData::int64("chunk", vec![0]),
            FieldData::int64("chunks", vec![1]),
            FieldData::int64("bytes", vec![0]),
            FieldData::varchar("data", vec![data]),
            FieldData::float_vector("vec", vec![vec![0.0; PLACEHOLDER_DIM]]),
        ];
        let insert = InsertRequest::builder().collection_name(self.catalog().name).columns(columns).build()?;
        self.client.upsert(UpsertRequest::builder().insert(insert).build()?).await?;
        Ok(())
    }

    /// Run `body` (a read-modify-write) in this host's turn to write: under the shared
    /// record's lease, or at once for a catalog record (the `writing` lock serialises it).
    async fn in_turn<T>(&self, body: impl Future<Output = Result<T>>) -> Result<T> {
        self.acquire(LEASE_WAIT).await?;
        let result = body.await;
        self.release().await;
        result
    }

    /// Take the turn to write, waiting up to `wait` for another host's to end.
    async fn acquire(&self, wait: Duration) -> Result<()> {
        let Record::Shared { control, key, writer, held } = &self.record else { return Ok(()) };
        let started = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let (current, mut state) = shared_record(control.as_ref(), key)?;
            let now = now_ms();
            if state.lease.as_ref().is_none_or(|l| l.until_ms <= now || l.writer == *writer) {
                state.lease = Some(Lease { writer: writer.clone(), until_ms: now + LEASE.as_millis() as u64 });
                let bytes = serde_json::to_vec(&state)?;
                if control.compare_and_swap(key, current.as_deref(), &bytes)? {
                    *held.lock().unwrap() = Some(bytes);
                    return Ok(());
                }
                continue;
            }
            ensure!(
                started.elapsed() < wait,
                "another host has held the turn to write the Milvus namespace `{}` for over {} s; is one stuck? Its lease ends by itself after {} s",
                self.namespace,
                wait.as_secs(),
                LEASE.as_secs()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Give the turn back, if this host still holds it.
    async fn release(&self) {
        let Record::Shared { control, key, held, .. } = &self.record else { return };
        let Some(bytes) = held.lock().unwrap().take() else { return };
        let Ok(mut state) = serde_json::from_slice::<State>(&bytes) else { return };
        state.lease = None;
        if let Ok(released) = serde_json::to_vec(&state) {
            // Failure leaves the lease to expire.
            let _ = control.compare_and_swap(key, Some(&bytes), &released);
        }
    }

    /// Remove the rows of generations that were handed out but never committed. Runs before
    /// the store is shared, so nothing of this process writes meanwhile.
    async fn recover(&self) -> Result<()> {
        if matches!(self.record, Record::Shared { .. }) {
            // Only in a free turn: then no host is mid-commit. Otherwise a later open sweeps.
            if self.acquire(Duration::ZERO).await.is_err() {
                return Ok(());
            }
            let swept = self.sweep().await;
            self.release().await;
            return swept;
        }
        self.sweep().await
    }

    /// Mark the generations handed out but never committed as aborted, and remove the rows of
    /// aborted generations. The caller is the only writer, or holds the turn.
    async fn sweep(&self) -> Result<()> {
        let mut state = self.state().await?;
        let failed: Vec<i64> = (state.committed + 1..=state.allocated).filter(|g| !state.aborted.contains(g)).collect();
        if failed.is_empty() && state.aborted.len() == state.swept {
            return Ok(());
        }
        state.aborted.extend(failed);
        self.set_state(&state).await?;
        // milvus-lite cannot list collections (no ids in ShowCollections): the catalog lists them.
        let catalog = self.catalog();
        let listed = self.rows(&catalog, &format!("part == {}", quote(TABLE_PART))).await?;
        let mut tables: Vec<Table> = listed.into_iter().map(|row| Table { name: row.key, metric: None }).collect();
        tables.push(catalog);
        self.purge(&tables, &mut state, true).await
    }

    /// Delete aborted generations' rows from `tables`; a catalog record then forgets the
    /// generations, a shared one remembers them as swept once `tables` were all of them.
    async fn purge(&self, tables: &[Table], state: &mut State, all_tables: bool) -> Result<()> {
        if state.aborted.len() <= state.swept {
            return Ok(());
        }
        let generations = state.aborted[state.swept..].iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        for table in tables {
            if self.table_exists(table).await? {
                let filter = format!("gen in [{generations}]");
                self.client.delete(DeleteRequest::builder().collection_name(&table.name).filter(filter).build()?).await?;
            }
        }
        match self.record {
            Record::Catalog => state.aborted.clear(),
            // A shared record keeps them: a host that lost its turn may still be inserting.
            Record::Shared { .. } if all_tables => state.swept = state.aborted.len(),
            Record::Shared { .. } => {}
        }
        self.set_state(state).await
    }

    /// The `fields` of the rows of the Milvus collection `name` that `filter` selects, as of every
    /// write acknowledged before.
    async fn query(&self, name: &str, filter: String, fields: &[&str]) -> Result<QueryResponse> {
        let request = QueryRequest::builder()
            .collection_name(name)
            .filter(filter)
            .output_fields(fields.iter().copied())
            .consistency_level(ConsistencyLevel::Strong)
            .build()?;
        self.client.query(request).await.with_context(|| format!("cannot query the Milvus collection `{name}`"))
    }

    /// The rows of `table` that `filter` selects, without their payloads.
    async fn rows(&self, table: &Table, filter: &str) -> Result<Vec<Row>> {
        if !self.table_exists(table).await? {
            return Ok(Vec::new());
        }
        let response = self.query(&table.name, filter.to_string(), &COLUMNS).await?;
        let mut rows = Vec::new();
        for row in response.results().rows()? {
            rows.push(Row {
                pk: row.get_str("pk")?.to_string(),
                part: row.get_str("part")?.to_string(),
                key: row.get_str("key")?.to_string(),
                generation: row.get_i64("gen")?,
                chunk: row.get_i64("chunk")?,
                chunks: row.get_i64("chunks")?,
                bytes: row.get_i64("bytes")?,
            });
        }
        Ok(rows)
    }

    /// The version of each key of `part` readers take under `state` (deleted ones included).
    async fn versions(&self, table: &Table, part: &str, keys: Option<&[&str]>, state: &State) -> Result<BTreeMap<String, Version>> {
        let mut filter = format!("part == {}", quote(part));
        if let Some(keys) = keys {
            if keys.is_empty() {
                return Ok(BTreeMap::new());
            }
            filter += &format!(" and key in [{}]", keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", "));
        }
        let mut newest: BTreeMap<String, (i64, Vec<Row>)> = BTreeMap::new();
        for row in self.rows(table, &filter).await? {
            if row.part != part || !state.visible(row.generation) {
                continue;
            }
            let entry = newest.entry(row.key.clone()).or_insert((row.generation, Vec::new()));
            if row.generation > entry.0 {
                *entry = (row.generation, Vec::new());
            }
            if row.generation == entry.0 {
                entry.1.push(row);
            }
        }
        let mut out = BTreeMap::new();
        for (key, (generation, mut rows)) in newest {
            rows.sort_by_key(|r| r.chunk);
            let chunks = rows[0].chunks;
            let whole = rows.len() as i64 == chunks.max(1) && rows.iter().enumerate().all(|(i, r)| r.chunk == i as i64);
            ensure!(whole, "`{key}` in Milvus collection `{}` is missing chunks of generation {generation}; the namespace is damaged", table.name);
            let bytes = rows[0].bytes;
            out.insert(key, Version { pks: rows.into_iter().map(|r| r.pk).collect(), bytes, deleted: chunks == 0 });
        }
        Ok(out)
    }

    /// The payloads of `pks` (missing ones absent): base64 `data`, or `vec` for vector tables.
    async fn payloads(&self, table: &Table, pks: &[String]) -> Result<HashMap<String, Payload>> {
        let mut out = HashMap::new();
        let per_request = if table.metric.is_some() { VECTORS_PER_REQUEST } else { ROWS_PER_REQUEST };
        let column = if table.metric.is_some() { "vec" } else { "data" };
        for batch in pks.chunks(per_request) {
            let filter = format!("pk in [{}]", batch.iter().map(|pk| quote(pk)).collect::<Vec<_>>().join(", "));
            let response = self.query(&table.name, filter, &["pk", column]).await?;
            for row in response.results().rows()? {
                let payload = match table.metric {
                    Some(_) => Payload::Vector(row.get_float_vector("vec")?.to_vec()),
                    None => Payload::Bytes(BASE64.decode(row.get_str("data")?).context("a Milvus row's data is not base64")?),
                };
                out.insert(row.get_str("pk")?.to_string(), payload);
            }
        }
        Ok(out)
    }

    /// The values of the live `versions`, in key order; `None` if a row vanished meanwhile (a
    /// later commit replaced it).
    async fn values(&self, table: &Table, versions: &BTreeMap<String, Version>) -> Result<Option<Vec<(String, Payload)>>> {
        let live: Vec<(&String, &Version)> = versions.iter().filter(|(_, v)| !v.deleted).collect();
        let pks: Vec<String> = live.iter().flat_map(|(_, v)| v.pks.iter().cloned()).collect();
        let mut payloads = self.payloads(table, &pks).await?;
        let mut out = Vec::with_capacity(live.len());
        for (key, version) in live {
            let mut bytes = Vec::new();
            for pk in &version.pks {
                match payloads.remove(pk) {
                    Some(Payload::Vector(v)) => {
                        out.push((key.clone(), Payload::Vector(v)));
                        break;
                    }
                    Some(Payload::Bytes(b)) => bytes.extend_from_slice(&b),
                    None => return Ok(None),
                }
            }
            if table.metric.is_none() {
                out.push((key.clone(), Payload::Bytes(bytes)));
            }
        }
        Ok(Some(out))
    }

    /// Read under one committed generation, again while commits land in between.
    async fn snapshot<T, F: Future<Output = Result<Option<T>>>>(&self, mut read: impl FnMut(State) -> F) -> Result<T> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.state().await?;
            let value = read(before.clone()).await?;
            if let Some(value) = value
                && self.state().await?.committed == before.committed
            {
                return Ok(value);
            }
        }
        bail!("Milvus kept changing while this read ran ({READ_ATTEMPTS} attempts); try again")
    }

    /// Values of `part` (all, or those of `keys`) under one committed generation.
    async fn read(&self, table: &Table, part: &str, keys: Option<&[&str]>) -> Result<Vec<(String, Payload)>> {
        self.snapshot(move |state| async move {
            let versions = self.versions(table, part, keys, &state).await?;
            self.values(table, &versions).await
        })
        .await
    }

    /// Keys of `part` that hold a value, with the bytes each counts, under one generation.
    async fn live_keys(&self, table: &Table, part: &str) -> Result<BTreeMap<String, Version>> {
        self.snapshot(move |state| async move {
            let versions = self.versions(table, part, None, &state).await?;
            Ok(Some(versions.into_iter().filter(|(_, v)| !v.deleted).collect()))
        })
        .await
    }

    async fn meta(&self, collection: &str) -> Result<Option<CollectionMeta>> {
        let found = self.read(&self.catalog(), "meta", Some(&[collection][..])).await?;
        match found.into_iter().next() {
            Some((_, Payload::Bytes(json))) => Ok(Some(serde_json::from_slice(&json)?)),
            _ => Ok(None),
        }
    }

    fn meta_put(&self, meta: &CollectionMeta) -> Result<Put> {
        Ok(Put { table: self.catalog(), part: "meta".into(), key: meta.name.clone(), value: Some(Payload::Bytes(serde_json::to_vec(meta)?)), counted: None })
    }

    /// Apply `puts` as one commit (see the crate documentation). The caller holds `writing`.
    async fn apply(&self, puts: Vec<Put>, caps: &StorageCaps, collections: &[&str]) -> Result<()> {
        let mut state = self.state().await?;
        // The last put of a key wins, as in a batch applied in order.
        let mut latest: BTreeMap<(Table, String, String), Put> = BTreeMap::new();
        for put in puts {
            latest.insert((put.table.clone(), put.part.clone(), put.key.clone()), put);
        }
        let mut by_part: BTreeMap<(Table, String), Vec<&str>> = BTreeMap::new();
        for (table, part, key) in latest.keys() {
            by_part.entry((table.clone(), part.clone())).or_default().push(key);
        }
        let mut old: HashMap<(Table, String, String), Version> = HashMap::new();
        for ((table, part), keys) in &by_part {
            for (key, version) in self.versions(table, part, Some(keys.as_slice()), &state).await? {
                old.insert((table.clone(), part.clone(), key), version);
            }
        }

        let mut growth: BTreeMap<String, i64> = BTreeMap::new();
        let mut rows: BTreeMap<Table, Vec<NewRow>> = BTreeMap::new();
        let mut stale: BTreeMap<Table, Vec<String>> = BTreeMap::new();
        for ((table, part, key), put) in &latest {
            let before = old.get(&(table.clone(), part.clone(), key.clone()));
            let live = before.filter(|v| !v.deleted);
            let counted = |payload_len: usize| put.counted.as_ref().map_or(0, |(_, key_len)| (key_len + payload_len) as i64);
            let bytes = match &put.value {
                Some(Payload::Bytes(b)) => counted(b.len()),
                Some(Payload::Vector(v)) => counted(FieldValue::Vector(Vec::new()).encode().len() + 4 * v.len()),
                None if live.is_none() => continue,
                None => 0,
            };
            if let Some((tenant, _)) = &put.counted {
                *growth.entry(tenant.clone()).or_default() += bytes - live.map_or(0, |v| v.bytes);
            }
            rows.entry(table.clone()).or_default().extend(NewRow::split(part, key, put.value.as_ref(), bytes));
            stale.entry(table.clone()).or_default().extend(before.iter().flat_map(|v| v.pks.iter().cloned()));
        }
        if rows.is_empty() {
            return Ok(());
        }

        let catalog = self.catalog();
        let tenants: Vec<&str> = growth.iter().filter(|(_, change)| **change != 0).map(|(t, _)| t.as_str()).collect();
        let counts = self.versions(&catalog, "bytes", Some(tenants.as_slice()), &state).await?;
        let totals: HashMap<String, i64> = self
            .values(&catalog, &counts)
            .await?
            .context("a tenant's byte count vanished while committing; is another host writing this namespace?")?
            .into_iter()
            .map(|(tenant, payload)| Ok((tenant, String::from_utf8(bytes_of(payload)?)?.parse()?)))
            .collect::<Result<_>>()?;
        for tenant in tenants {
            let change = growth[tenant];
            let after = totals.get(tenant).copied().unwrap_or(0).saturating_add(change).max(0);
            if change > 0
                && let Some(limit) = caps(tenant)
                && after as u64 > limit
            {
                return Err(OverStorage { tenant: tenant.to_string(), would_store: after as u64, limit }.into());
            }
            let count = Payload::Bytes(after.to_string().into_bytes());
            rows.entry(catalog.clone()).or_default().extend(NewRow::split("bytes", tenant, Some(&count), 0));
        }
        stale.entry(catalog.clone()).or_default().extend(counts.into_values().flat_map(|v| v.pks));

        // A vector table's tombstones need a vector of its dimension, which an old version shows.
        for (table, new) in rows.iter_mut().filter(|(t, _)| t.metric.is_some()) {
            let dim = match new.iter().find_map(|r| r.vector.as_ref().map(Vec::len)) {
                Some(dim) => dim,
                None => {
                    let pk = stale.get(table).and_then(|pks| pks.first()).context("a deletion from a vector field without a stored version")?;
                    match self.payloads(table, std::slice::from_ref(pk)).await?.into_values().next() {
                        Some(Payload::Vector(v)) => v.len(),
                        _ => bail!("a stored vector of `{}` vanished while committing; is another host writing this namespace?", table.name),
                    }
                }
            };
            for row in new.iter_mut().filter(|r| r.vector.is_none()) {
                row.vector = Some(vec![0.0; dim]);
            }
            self.ensure_table(table, dim).await?;
        }
        for table in rows.keys().filter(|t| t.metric.is_none()) {
            self.ensure_table(table, PLACEHOLDER_DIM).await?;
        }

        // Generations handed out but never committed failed (there is one writer), so they
        // must stay unread once a later generation commits.
        let failed: Vec<i64> = (state.committed + 1..=state.allocated).filter(|g| !state.aborted.contains(g)).collect();
        state.aborted.extend(failed);
        let generation = state.allocated.max(state.committed) + 1;
        state.allocated = generation;
        self.set_state(&state).await?;
        let written = self.insert_all(&rows, generation).await;
        let flipped = match written {
            Ok(()) => {
                let mut committed = state.clone();
                committed.committed = generation;
                if let Record::Shared { writer, .. } = &self.record {
                    committed.last = Some(LastCommit { writer: writer.clone(), collections: collections.iter().map(|c| c.to_string()).collect() });
                }
                self.set_state(&committed).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = flipped {
            state.aborted.push(generation);
            // Best effort: what this leaves, the next open removes.
            if self.set_state(&state).await.is_ok() {
                let tables: Vec<Table> = rows.keys().cloned().collect();
                let _ = self.purge(&tables, &mut state, false).await;
            }
            return Err(e.context("the commit to Milvus failed and was rolled back"));
        }

        let tombstones: BTreeMap<Table, Vec<String>> = rows
            .iter()
            .map(|(table, new)| (table.clone(), new.iter().filter(|r| r.chunks == 0).map(|r| r.pk(generation)).collect()))
            .collect();
        self.replaced.lock().unwrap().push(Replaced { at: Instant::now(), stale, tombstones });
        self.remove_replaced(REPLACED_KEPT_FOR).await;
        Ok(())
    }

    /// Delete the versions commits replaced at least `age` ago, and then their tombstones (a
    /// tombstone stays while an older version it hides might). Failures leave rows that are
    /// never read.
    async fn remove_replaced(&self, age: Duration) {
        let due: Vec<Replaced> = {
            let mut replaced = self.replaced.lock().unwrap();
            let (due, kept) = std::mem::take(&mut *replaced).into_iter().partition(|r| r.at.elapsed() >= age);
            *replaced = kept;
            due
        };
        for Replaced { stale, tombstones, .. } in due {
            if self.delete_pks(&stale).await.is_ok() {
                let _ = self.delete_pks(&tombstones).await;
            }
        }
    }

    async fn insert_all(&self, rows: &BTreeMap<Table, Vec<NewRow>>, generation: i64) -> Result<()> {
        for (table, rows) in rows {
            let per_request = if table.metric.is_some() { VECTORS_PER_REQUEST } else { ROWS_PER_REQUEST };
            for batch in rows.chunks(per_request) {
                let columns = vec![
                    FieldData::varchar("pk", batch.iter().map(|r| r.pk(generation)).collect()),
                    FieldData::varchar("part", batch.iter().map(|r| r.part.clone()).collect()),
                    FieldData::varchar("key", batch.iter().map(|r| r.key.clone()).collect()),
                    FieldData::int64("gen", vec![generation; batch.len()]),
                    FieldData::int64("chunk", batch.iter().map(|r| r.chunk).collect()),
                    FieldData::int64("chunks", batch.iter().map(|r| r.chunks).collect()),
                    FieldData::int64("bytes", batch.iter().map(|r| r.bytes).collect()),
                    FieldData::varchar("data", batch.iter().map(|r| r.data.clone()).collect()),
                    FieldData::float_vector("vec", batch.iter().map(|r| r.vector.clone().unwrap_or_else(|| vec![0.0; PLACEHOLDER_DIM])).collect()),
                ];
                self.client
                    .insert(InsertRequest::builder().collection_name(&table.name).columns(columns).build()?)
                    .await
                    .with_context(|| format!("cannot insert into the Milvus collection `{}`", table.name))?;
            }
        }
        Ok(())
    }

    async fn delete_pks(&self, pks: &BTreeMap<Table, Vec<String>>) -> Result<()> {
        for (table, pks) in pks {
            for batch in pks.chunks(ROWS_PER_REQUEST * 8) {
                let filter = format!("pk in [{}]", batch.iter().map(|pk| quote(pk)).collect::<Vec<_>>().join(", "));
                self.client.delete(DeleteRequest::builder().collection_name(&table.name).filter(filter).build()?).await?;
            }
        }
        Ok(())
    }

    /// Read-modify-write a collection's metadata as one commit.
    fn update_meta(&self, collection: &str, update: impl FnOnce(&mut CollectionMeta) -> Result<()> + Send) -> Result<()> {
        let _writing = self.writing.lock().unwrap();
        self.run(move || async move {
            self.in_turn(async move {
                let mut meta = self.meta(collection).await?.with_context(|| format!("collection `{collection}` does not exist"))?;
                let before = meta.clone();
                update(&mut meta)?;
                if meta != before {
                    self.apply(vec![self.meta_put(&meta)?], &|_| None, &[collection]).await?;
                }
                Ok(())
            })
            .await
        })
    }

    fn update_vector_field(&self, collection: &str, field: &str, what: &str, update: impl FnOnce(&mut FieldSchema) + Send) -> Result<()> {
        self.update_meta(collection, |meta| {
            update(meta.vector_field_mut(field, what)?);
            Ok(())
        })
    }

    /// A field's place, or `None` when the collection does not declare it.
    fn field_of(&self, collection: &str, field: &str) -> Result<Option<(Table, String)>> {
        let meta = self.run(move || async move { self.meta(collection).await })?;
        Ok(meta.and_then(|m| m.fields.get(field).map(|schema| self.field_place(collection, field, schema))))
    }
}

/// A row to insert; `pk` is made with the commit's generation.
struct NewRow {
    part: String,
    key: String,
    chunk: i64,
    chunks: i64,
    bytes: i64,
    data: String,
    vector: Option<Vec<f32>>,
}

impl NewRow {
    fn pk(&self, generation: i64) -> String {
        // Parts hold no `/`, so the key may: the pk stays unique.
        format!("{generation}/{}/{}/{}", self.chunk, self.part, self.key)
    }

    /// The rows of one value: chunks of its bytes, one vector, or a tombstone. The first row
    /// carries the bytes the value counts.
    fn split(part: &str, key: &str, value: Option<&Payload>, bytes: i64) -> Vec<NewRow> {
        let row = |chunk: usize, chunks: usize, data: String, vector: Option<Vec<f32>>| NewRow {
            part: part.to_string(),
            key: key.to_string(),
            chunk: chunk as i64,
            chunks: chunks as i64,
            bytes,
            data,
            vector,
        };
        match value {
            None => vec![row(0, 0, String::new(), None)],
            Some(Payload::Vector(v)) => vec![row(0, 1, String::new(), Some(v.clone()))],
            Some(Payload::Bytes(b)) if b.is_empty() => vec![row(0, 1, String::new(), None)],
            Some(Payload::Bytes(b)) => {
                let chunks = b.len().div_ceil(CHUNK);
                b.chunks(CHUNK).enumerate().map(|(i, c)| row(i, chunks, BASE64.encode(c), None)).collect()
            }
        }
    }
}

/// Run async work on `runtime` to completion, from a plain thread or from inside another
/// runtime (whose worker this blocks, as any synchronous store would).
fn block_on<T: Send, F: Future<Output = Result<T>>>(runtime: &tokio::runtime::Runtime, work: impl FnOnce() -> F + Send) -> Result<T> {
    // A Milvus that stops answering fails the call instead of holding it (and a turn to write).
    let bounded = move || async move {
        tokio::time::timeout(CALL_TIMEOUT, work())
            .await
            .map_err(|_| anyhow!("Milvus did not answer within {} s; check that it is up and reachable from here", CALL_TIMEOUT.as_secs()))?
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(bounded());
    }
    std::thread::scope(|s| s.spawn(move || runtime.block_on(bounded())).join()).map_err(|_| anyhow!("a Milvus call panicked"))?
}

/// A Milvus string literal.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// 128 bits of SHA-256 in hex: Milvus collection names allow only letters, digits and `_`.
fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_of(payload: Payload) -> Result<Vec<u8>> {
    match payload {
        Payload::Bytes(b) => Ok(b),
        Payload::Vector(_) => bail!("a vector where bytes were stored"),
    }
}

impl CollectionStore for MilvusStore {
    fn ensure_collection(&self, name: &str) -> Result<CollectionMeta> {
        if qualify(name)? != name {
            bail!("`{name}` is not a qualified collection key (tenant/name)");
        }
        let _writing = self.writing.lock().unwrap();
        self.run(move || async move {
            self.in_turn(async move {
                if let Some(meta) = self.meta(name).await? {
                    ensure!(
                        meta.schema_version == SCHEMA_VERSION,
                        "collection `{name}` has schema version {}, this Quarry reads version {SCHEMA_VERSION}; re-ingest it or use a matching Quarry",
                        meta.schema_version
                    );
                    return Ok(meta);
                }
                let meta = CollectionMeta { name: name.to_string(), schema_version: SCHEMA_VERSION, fields: BTreeMap::new() };
                self.apply(vec![self.meta_put(&meta)?], &|_| None, &[name]).await?;
                Ok(meta)
            })
            .await
        })
    }

    fn declare_fields(&self, collection: &str, fields: &[(String, FieldSchema)]) -> Result<()> {
        self.ensure_collection(collection)?;
        self.update_meta(collection, |meta| meta.declare(fields))
    }

    fn set_ann(&self, collection: &str, field: &str, ann: Option<AnnParams>) -> Result<()> {
        self.update_vector_field(collection, field, "approximate search", |schema| schema.ann = ann)
    }

    fn set_precision(&self, collection: &str, field: &str, precision: Precision) -> Result<()> {
        self.update_vector_field(collection, field, "a precision", |schema| schema.precision = precision)
    }

    fn collection(&self, name: &str) -> Result<Option<CollectionMeta>> {
        self.run(move || async move { self.meta(name).await })
    }

    fn collection_names(&self, tenant: &str) -> Result<Vec<String>> {
        let prefix = format!("{tenant}/");
        let keys = self.run(move || async move { self.live_keys(&self.catalog(), "meta").await })?;
        Ok(keys.into_keys().filter(|k| k.starts_with(&prefix)).collect())
    }

    fn commit(&self, batch: &WriteBatch, caps: &StorageCaps) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.validate()?;
        let _writing = self.writing.lock().unwrap();
        self.run(move || async move {
            self.in_turn(async move {
                let mut metas: BTreeMap<&str, (CollectionMeta, bool)> = BTreeMap::new();
                for (collection, id, field, value) in &batch.fields {
                    if !metas.contains_key(collection.as_str()) {
                        let meta = self.meta(collection).await?.with_context(|| format!("collection `{collection}` does not exist"))?;
                        metas.insert(collection.as_str(), (meta, false));
                    }
                    let (meta, changed) = metas.get_mut(collection.as_str()).expect("just inserted");
                    *changed |= meta.accept_write(field, id, value)?;
                    if let FieldValue::Vector(v) = value {
                        ensure!(!v.is_empty(), "field `{field}` of collection `{collection}`: `{id}` got an empty vector; Milvus stores vectors of at least one dimension");
                    }
                }
                let mut puts = Vec::new();
                for (meta, changed) in metas.values() {
                    if *changed {
                        puts.push(self.meta_put(meta)?);
                    }
                }
                let tenant = |collection: &str| split_qualified(collection).0.to_string();
                for (collection, item) in &batch.items {
                    puts.push(Put {
                        table: self.rows_table(collection),
                        part: "item".into(),
                        key: item.id.clone(),
                        value: Some(Payload::Bytes(serde_json::to_vec(item)?)),
                        counted: Some((tenant(collection), collection.len() + item.id.len())),
                    });
                }
                for (collection, id, field, value) in &batch.fields {
                    let (table, part) = self.field_place(collection, field, &metas[collection.as_str()].0.fields[field]);
                    let value = match value {
                        FieldValue::Vector(v) => Payload::Vector(v.clone()),
                        other => Payload::Bytes(other.encode()),
                    };
                    let counted = Some((tenant(collection), collection.len() + field.len() + id.len()));
                    puts.push(Put { table, part, key: id.clone(), value: Some(value), counted });
                }
                for (collection, name, data) in &batch.blobs {
                    let counted = Some((tenant(collection), collection.len() + name.len()));
                    puts.push(Put { table: self.rows_table(collection), part: "blob".into(), key: name.clone(), value: Some(Payload::Bytes(data.clone())), counted });
                }
                let mut collections: Vec<&str> = batch.items.iter().map(|(c, _)| c.as_str()).collect();
                collections.extend(batch.fields.iter().map(|(c, ..)| c.as_str()).chain(batch.blobs.iter().map(|(c, ..)| c.as_str())));
                collections.sort_unstable();
                collections.dedup();
                self.apply(puts, caps, &collections).await
            })
            .await
        })
    }

    fn delete_items(&self, collection: &str, ids: &[String]) -> Result<usize> {
        let _writing = self.writing.lock().unwrap();
        self.run(move || async move {
            self.in_turn(async move {
                let fields = self.meta(collection).await?.map(|m| m.fields).unwrap_or_default();
                let rows_table = self.rows_table(collection);
                let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
                let existed = self.versions(&rows_table, "item", Some(keys.as_slice()), &self.state().await?).await?.values().filter(|v| !v.deleted).count();
                let tenant = split_qualified(collection).0.to_string();
                let mut puts = Vec::new();
                for id in ids {
                    let delete = |table: Table, part: String, key_len: usize| Put { table, part, key: id.clone(), value: None, counted: Some((tenant.clone(), key_len)) };
                    puts.push(delete(rows_table.clone(), "item".into(), collection.len() + id.len()));
                    for (field, schema) in &fields {
                        let (table, part) = self.field_place(collection, field, schema);
                        puts.push(delete(table, part, collection.len() + field.len() + id.len()));
                    }
                }
                self.apply(puts, &|_| None, &[collection]).await?;
                Ok(existed)
            })
            .await
        })
    }

    fn items(&self, collection: &str, ids: &[&str]) -> Result<Vec<Option<StoredItem>>> {
        let found = self.run(move || async move { self.read(&self.rows_table(collection), "item", Some(ids)).await })?;
        let mut by_id: HashMap<String, StoredItem> = HashMap::new();
        for (id, payload) in found {
            by_id.insert(id, serde_json::from_slice(&bytes_of(payload)?)?);
        }
        Ok(ids.iter().map(|id| by_id.get(*id).cloned()).collect())
    }

    fn item_exists(&self, collection: &str, id: &str) -> Result<bool> {
        let versions = self.run(move || async move { self.versions(&self.rows_table(collection), "item", Some(&[id][..]), &self.state().await?).await })?;
        Ok(versions.values().any(|v| !v.deleted))
    }

    fn item_count(&self, collection: &str) -> Result<usize> {
        Ok(self.run(move || async move { self.live_keys(&self.rows_table(collection), "item").await })?.len())
    }

    fn scan_items(&self, collection: &str) -> Result<Vec<StoredItem>> {
        let found = self.run(move || async move { self.read(&self.rows_table(collection), "item", None).await })?;
        found.into_iter().map(|(_, payload)| Ok(serde_json::from_slice(&bytes_of(payload)?)?)).collect()
    }

    fn field(&self, collection: &str, id: &str, field: &str) -> Result<Option<FieldValue>> {
        let Some((table, part)) = self.field_of(collection, field)? else { return Ok(None) };
        let (table, part) = (&table, &part);
        let found = self.run(move || async move { self.read(table, part, Some(&[id][..])).await })?;
        found.into_iter().next().map(|(_, payload)| decode(payload)).transpose()
    }

    fn scan_field_page(
        &self,
        collection: &str,
        field: &str,
        after: Option<&str>,
        accept: &mut dyn FnMut(&str, &FieldValue) -> bool,
        limit: usize,
    ) -> Result<(Vec<(String, FieldValue)>, bool)> {
        let Some((table, part)) = self.field_of(collection, field)? else { return Ok((Vec::new(), false)) };
        let (table, part) = (&table, &part);
        let keys = self.run(move || async move { self.live_keys(table, part).await })?;
        let mut candidates = keys.range::<str, _>((after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded), std::ops::Bound::Unbounded));
        let mut out = Vec::new();
        loop {
            let batch: Vec<&str> = candidates.by_ref().take(ROWS_PER_REQUEST).map(|(k, _)| k.as_str()).collect();
            if batch.is_empty() {
                return Ok((out, false));
            }
            let batch = batch.as_slice();
            let values = self.run(move || async move { self.read(table, part, Some(batch)).await })?;
            for (id, payload) in values {
                if out.len() == limit {
                    return Ok((out, true));
                }
                let value = decode(payload)?;
                if !accept(&id, &value) {
                    return Ok((out, true));
                }
                out.push((id, value));
            }
        }
    }

    fn field_len(&self, collection: &str, field: &str) -> Result<usize> {
        let Some((table, part)) = self.field_of(collection, field)? else { return Ok(0) };
        let (table, part) = (&table, &part);
        Ok(self.run(move || async move { self.live_keys(table, part).await })?.len())
    }

    fn visit_field(&self, collection: &str, field: &str, visit: &mut dyn FnMut(&str, FieldValue) -> Result<()>) -> Result<()> {
        let Some((table, part)) = self.field_of(collection, field)? else { return Ok(()) };
        let (table, part) = (&table, &part);
        let versions = self.run(move || async move { self.live_keys(table, part).await })?;
        let listed: Vec<(String, Version)> = versions.into_iter().collect();
        for batch in listed.chunks(ROWS_PER_REQUEST) {
            let batch: BTreeMap<String, Version> = batch.iter().cloned().collect();
            let batch = &batch;
            let values = self.run(move || async move { self.values(table, batch).await })?;
            let values = values.with_context(|| format!("field `{field}` of `{collection}` changed while it was read; read it again"))?;
            for (id, payload) in values {
                visit(&id, decode(payload)?)?;
            }
        }
        Ok(())
    }

    fn blob(&self, collection: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let found = self.run(move || async move { self.read(&self.rows_table(collection), "blob", Some(&[name][..])).await })?;
        found.into_iter().next().map(|(_, payload)| bytes_of(payload)).transpose()
    }

    fn changes_elsewhere(&self) -> Result<Option<std::sync::mpsc::Receiver<Vec<String>>>> {
        let Record::Shared { control, key, writer, .. } = &self.record else { return Ok(None) };
        // Watch first, then read where the commits stand, so none falls in between.
        let Some(watch) = control.watch(key)? else { return Ok(None) };
        let mut seen = self.run(move || async move { self.state().await })?.committed;
        let (changed, changes) = std::sync::mpsc::channel();
        let (key, writer) = (key.clone(), writer.clone());
        std::thread::Builder::new()
            .name("quarry-milvus-commits".into())
            .spawn(move || {
                for change in watch {
                    let collections = match change {
                        Change::Put { key: k, value } if k == key => match serde_json::from_slice::<State>(&value) {
                            Ok(state) if state.committed == seen => continue,
                            Ok(state) => {
                                seen = state.committed;
                                match state.last {
                                    Some(last) if last.writer == writer => continue,
                                    Some(last) => last.collections,
                                    None => Vec::new(),
                                }
                            }
                            Err(_) => Vec::new(),
                        },
                        Change::Put { .. } => continue,
                        Change::Delete { .. } | Change::Resync => Vec::new(),
                    };
                    if changed.send(collections).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the thread that follows the Milvus commit record")?;
        Ok(Some(changes))
    }

    fn tenant_bytes(&self, tenant: &str) -> Result<u64> {
        let found = self.run(move || async move { self.read(&self.catalog(), "bytes", Some(&[tenant][..])).await })?;
        match found.into_iter().next() {
            Some((_, payload)) => Ok(String::from_utf8(bytes_of(payload)?)?.parse()?),
            None => Ok(0),
        }
    }
}

fn decode(payload: Payload) -> Result<FieldValue> {
    match payload {
        Payload::Vector(v) => Ok(FieldValue::Vector(v)),
        Payload::Bytes(b) => FieldValue::decode(&b),
    }
}

#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use super::*;

    fn commit_item(store: &MilvusStore, id: &str) {
        let mut batch = WriteBatch::default();
        batch.items.push(("t/c".into(), quarry_host::store::conformance::item(id)));
        store.commit(&batch, &|_| None).unwrap();
    }

    /// What a host leaves that took its turn, inserted an item's rows into `t/c`, and died or
    /// lost the turn before committing them: returns their generation.
    fn leave_uncommitted_item(store: &MilvusStore, id: &str) -> i64 {
        let ghost = Payload::Bytes(serde_json::to_vec(&quarry_host::store::conformance::item(id)).unwrap());
        store
            .run(|| async {
                store.acquire(LEASE_WAIT).await?;
                let mut state = store.state().await?;
                state.allocated += 1;
                store.set_state(&state).await?;
                store.insert_all(&BTreeMap::from([(store.rows_table("t/c"), NewRow::split("item", id, Some(&ghost), 10))]), state.allocated).await?;
                store.release().await;
                Ok(state.allocated)
            })
            .unwrap()
    }

    fn rows_of(store: &MilvusStore, generation: i64) -> usize {
        store.run(|| async { Ok(store.rows(&store.rows_table("t/c"), &format!("gen == {generation}")).await?.len()) }).unwrap()
    }

    #[test]
    fn a_commit_that_never_committed_is_never_read_and_is_removed_on_open() {
        let server = support::MilvusLite::start();
        let store = MilvusStore::connect(&server.uri(), "crash").unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
        store.ensure_collection("t/c").unwrap();
        commit_item(&store, "kept");
        let generation = leave_uncommitted_item(&store, "ghost");
        assert_eq!(rows_of(&store, generation), 1);
        assert!(!store.item_exists("t/c", "ghost").unwrap() && store.item_count("t/c").unwrap() == 1, "uncommitted rows are not read");

        commit_item(&store, "next");
        assert!(!store.item_exists("t/c", "ghost").unwrap(), "a later commit does not make them readable");
        assert_eq!(store.scan_items("t/c").unwrap().iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["kept", "next"]);

        drop(store);
        let store = MilvusStore::connect(&server.uri(), "crash").unwrap();
        assert_eq!(rows_of(&store, generation), 0, "opening removes them");
        assert!(store.run(|| store.state()).unwrap().aborted.is_empty());
        assert_eq!(store.item_count("t/c").unwrap(), 2);
    }

    #[test]
    fn a_shared_namespace_never_reads_a_failed_commit_and_sweeps_its_rows_when_the_turn_is_free() {
        let server = support::MilvusLite::start();
        let control: Arc<dyn ControlStore> = Arc::new(quarry_host::control::MemoryStore::default());
        let connect = || MilvusStore::connect_shared(&server.uri(), "sweep", control.clone()).unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
        let store = connect();
        store.ensure_collection("t/c").unwrap();
        commit_item(&store, "kept");
        let generation = leave_uncommitted_item(&store, "ghost");
        commit_item(&store, "next");
        assert!(!store.item_exists("t/c", "ghost").unwrap(), "a later commit does not make them readable");
        assert_eq!(rows_of(&store, generation), 1);

        let again = connect();
        assert_eq!(rows_of(&again, generation), 0, "opening in a free turn removes them");
        let state = again.run(|| again.state()).unwrap();
        assert!(state.aborted.contains(&generation) && state.swept == state.aborted.len() && state.lease.is_none(), "{state:?}");
        assert_eq!(again.scan_items("t/c").unwrap().iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["kept", "next"]);
    }

    #[test]
    fn values_split_into_rows_that_fit_a_varchar() {
        let value = Payload::Bytes(vec![7; 2 * CHUNK + 1]);
        let rows = NewRow::split("f:raw", "id/with/slashes", Some(&value), 99);
        assert_eq!(rows.iter().map(|r| (r.chunk, r.chunks)).collect::<Vec<_>>(), [(0, 3), (1, 3), (2, 3)]);
        assert!(rows.iter().all(|r| r.data.len() <= 65_535 && r.bytes == 99));
        let joined: Vec<u8> = rows.iter().flat_map(|r| BASE64.decode(&r.data).unwrap()).collect();
        assert_eq!(joined, vec![7; 2 * CHUNK + 1]);
        assert_eq!(rows[0].pk(5), "5/0/f:raw/id/with/slashes");
        let tombstone = NewRow::split("item", "x", None, 0);
        assert_eq!((tombstone.len(), tombstone[0].chunks), (1, 0));
    }

    #[test]
    fn only_committed_generations_that_did_not_fail_are_read() {
        let state = State { committed: 5, allocated: 7, aborted: vec![3, 6], ..State::default() };
        assert_eq!((1..=7).filter(|g| state.visible(*g)).collect::<Vec<_>>(), [1, 2, 4, 5]);
    }

    #[test]
    fn names_and_literals_are_safe_for_milvus() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        let hash = short_hash(&["acme/docs", "emb"]);
        assert_eq!(hash.len(), 32);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(short_hash(&["a", "bc"]), short_hash(&["ab", "c"]), "parts are length-prefixed");
    }
}
