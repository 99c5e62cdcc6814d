//! The imports a strategy plugin calls: the host side of `quarry:retrieval@0.1.0`.
//!
//! Every call is checked against the route's [`Grants`] and the call's [`Limits`] before any
//! work is done. Writes are buffered in the call's [`WriteBatch`] and committed when the call
//! succeeds.

use super::limits::{CallLimiter, Limits};
use crate::index::Indexes;
use crate::index::filter::Filter;
use crate::models::{ModelError, Models};
use crate::store::{self, Store, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit/v0.1",
    world: "plugin",
    imports: { default: trappable },
    with: { "quarry:retrieval/decoders.generation": GenerationSession },
});

pub use exports::quarry::retrieval::strategy::{Context as CallContext, Descriptor, FieldSpec, Item, Query};
pub use quarry::retrieval::types::{FieldKind, Metric};
use quarry::retrieval::collections::FieldValue as WitFieldValue;
pub use quarry::retrieval::types::{Error as WitError, Hit, TokenSet};

impl FieldSpec {
    /// The store's view of a declared field.
    pub fn schema(&self) -> store::FieldSchema {
        let kind = match self.kind {
            FieldKind::Vector => store::FieldKind::Vector,
            FieldKind::Tokens => store::FieldKind::Tokens,
            FieldKind::Codes => store::FieldKind::Codes,
            FieldKind::Blob => store::FieldKind::Blob,
        };
        let metric = match self.metric {
            None | Some(Metric::InnerProduct) => store::Metric::InnerProduct,
            Some(Metric::Cosine) => store::Metric::Cosine,
            Some(Metric::L2) => store::Metric::L2,
        };
        store::FieldSchema::new(kind, metric)
    }
}

/// Host state behind a `generation` resource: the decoder session and its prompt state.
pub type GenerationSession = crate::models::decoder::Generation;

/// Generation sessions one call may hold open at once.
const MAX_GENERATIONS: usize = 64;

/// What a route lets its strategy touch, beyond the collection it serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// Models the strategy may call.
    pub models: BTreeSet<String>,
    /// Collections the strategy may read and write.
    pub collections: BTreeSet<String>,
}

/// What one call may touch: its route's grants, resolved within the route's tenant.
#[derive(Debug, Clone, Default)]
pub struct CallGrants {
    pub tenant: String,
    pub models: BTreeSet<String>,
    /// Bare collection names within `tenant`.
    pub collections: BTreeSet<String>,
}

/// Everything shared by all calls: models, the store and its indexes, metrics.
pub struct HostServices {
    pub models: Arc<Models>,
    pub store: Arc<Store>,
    pub indexes: Arc<Indexes>,
    /// Counters reported by plugins, keyed by `strategy/name`.
    pub counters: Mutex<HashMap<String, f64>>,
    /// Print plugin log lines at or above this level to stderr.
    pub log_level: quarry::retrieval::log::Level,
}

/// The state of one plugin call: its sandbox, its grants and its pending writes.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: CallLimiter,
    pub(super) stderr: MemoryOutputPipe,
    pub(super) writes: WriteBatch,
    services: Arc<HostServices>,
    grants: Arc<CallGrants>,
    limits: Limits,
    strategy: String,
    generations: usize,
}

/// A wall clock stuck at the Unix epoch: plugins get no wall time unless the operator opts in.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl CallState {
    pub fn new(services: Arc<HostServices>, grants: Arc<CallGrants>, limits: &Limits, strategy: &str) -> Self {
        // No preopened directories, no environment, no network, no stdin; stderr is captured so
        // that a panic message can be reported to the caller.
        let stderr = MemoryOutputPipe::new(16 << 10);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().stderr(stderr.clone()).wall_clock(FrozenClock).build();
        CallState {
            wasi,
            table: ResourceTable::new(),
            limiter: CallLimiter { memory_bytes: limits.memory_bytes, memory_cap_hit: false },
            stderr,
            writes: WriteBatch::default(),
            services,
            grants,
            limits: limits.clone(),
            strategy: strategy.to_string(),
            generations: 0,
        }
    }

    /// Hand a ready-made instance's state to a call with these grants.
    pub(super) fn grant(&mut self, grants: Arc<CallGrants>) {
        self.grants = grants;
    }

    pub(super) fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    fn model(&self, model: &str) -> Result<(), WitError> {
        if !self.grants.models.contains(model) {
            return Err(WitError::Denied(format!(
                "strategy {} may not call model `{model}`: the route does not grant it (granted: {})",
                self.strategy,
                list(&self.grants.models)
            )));
        }
        Ok(())
    }

    /// Check a collection against the grants and return its store key. Names are relative to
    /// the call's tenant, so no name reaches another tenant's data.
    fn collection(&self, collection: &str) -> Result<String, WitError> {
        if !self.grants.collections.contains(collection) {
            return Err(WitError::Denied(format!(
                "strategy {} may not access collection `{collection}`: the route does not grant it (granted: {})",
                self.strategy,
                list(&self.grants.collections)
            )));
        }
        Ok(format!("{}/{collection}", self.grants.tenant))
    }

    fn batch<T>(&self, what: &str, items: &[T]) -> Result<(), WitError> {
        if items.len() > self.limits.max_batch {
            return Err(WitError::InvalidInput(format!(
                "{what}: {} inputs in one call, over the limit of {}; send smaller batches",
                items.len(),
                self.limits.max_batch
            )));
        }
        Ok(())
    }

    fn payload(&self, what: &str, bytes: usize) -> Result<(), WitError> {
        if bytes > self.limits.max_payload_bytes {
            return Err(WitError::InvalidInput(format!(
                "{what}: {bytes} bytes in one call, over the limit of {} bytes",
                self.limits.max_payload_bytes
            )));
        }
        Ok(())
    }
}

fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() { "none".to_string() } else { names.iter().cloned().collect::<Vec<_>>().join(", ") }
}

fn internal(e: anyhow::Error) -> WitError {
    WitError::Internal(format!("{e:#}"))
}

impl From<ModelError> for WitError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::NotFound(_) => WitError::NotFound(e.to_string()),
            ModelError::InvalidInput(m) => WitError::InvalidInput(m),
            ModelError::Runtime(_) => WitError::Model(e.to_string()),
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

type Answer<T> = wasmtime::Result<Result<T, WitError>>;

impl quarry::retrieval::types::Host for CallState {}

impl quarry::retrieval::encoders::Host for CallState {
    fn embed_texts(&mut self, model: String, texts: Vec<String>) -> Answer<Vec<Vec<f32>>> {
        Ok((|| {
            self.model(&model)?;
            self.batch("embed-texts", &texts)?;
            Ok(self.services.models.embed_texts(&model, &texts)?)
        })())
    }

    fn embed_images(&mut self, model: String, images: Vec<Vec<u8>>) -> Answer<Vec<Vec<f32>>> {
        Ok((|| {
            self.model(&model)?;
            self.batch("embed-images", &images)?;
            self.payload("embed-images", images.iter().map(Vec::len).sum())?;
            Ok(self.services.models.embed_images(&model, &images)?)
        })())
    }

    fn text_tokens(&mut self, model: String, texts: Vec<String>) -> Answer<Vec<TokenSet>> {
        Ok((|| {
            self.model(&model)?;
            self.batch("text-tokens", &texts)?;
            let sets = self.services.models.text_tokens(&model, &texts)?;
            Ok(sets.into_iter().map(|(dim, data)| TokenSet { dim: dim as u32, data }).collect())
        })())
    }

    fn image_tokens(&mut self, model: String, images: Vec<Vec<u8>>) -> Answer<Vec<TokenSet>> {
        Ok((|| {
            self.model(&model)?;
            self.batch("image-tokens", &images)?;
            self.payload("image-tokens", images.iter().map(Vec::len).sum())?;
            let sets = self.services.models.image_tokens(&model, &images)?;
            Ok(sets.into_iter().map(|(dim, data)| TokenSet { dim: dim as u32, data }).collect())
        })())
    }

    fn embed_texts_with_slots(&mut self, model: String, texts: Vec<quarry::retrieval::encoders::SlottedText>) -> Answer<Vec<Vec<f32>>> {
        Ok((|| {
            self.model(&model)?;
            self.batch("embed-texts-with-slots", &texts)?;
            self.payload("embed-texts-with-slots", texts.iter().flat_map(|t| &t.slots).map(|v| v.len() * 4).sum())?;
            let texts: Vec<(String, Vec<Vec<f32>>)> = texts.into_iter().map(|t| (t.template, t.slots)).collect();
            Ok(self.services.models.embed_texts_with_slots(&model, &texts)?)
        })())
    }

    fn project(&mut self, model: String, vectors: Vec<Vec<f32>>) -> Answer<Vec<Vec<f32>>> {
        Ok((|| {
            self.model(&model)?;
            self.batch("project", &vectors)?;
            self.payload("project", vectors.iter().map(|v| v.len() * 4).sum())?;
            Ok(self.services.models.project(&model, &vectors)?)
        })())
    }
}

impl quarry::retrieval::decoders::Host for CallState {}

impl quarry::retrieval::decoders::HostGeneration for CallState {
    fn start(&mut self, model: String, prompt: String) -> Answer<Resource<GenerationSession>> {
        let generation = (|| {
            self.model(&model)?;
            if self.generations >= MAX_GENERATIONS {
                return Err(WitError::InvalidInput(format!("a call may hold {MAX_GENERATIONS} generation sessions at once; drop finished ones")));
            }
            Ok(self.services.models.start_generation(&model, &prompt)?)
        })();
        Ok(match generation {
            Ok(generation) => {
                self.generations += 1;
                Ok(self.table.push(generation)?)
            }
            Err(e) => Err(e),
        })
    }

    fn next_logprobs(&mut self, session: Resource<GenerationSession>, prefixes: Vec<Vec<u32>>) -> Answer<Vec<Vec<f32>>> {
        if let Err(e) = self.batch("next-logprobs", &prefixes) {
            return Ok(Err(e));
        }
        Ok(self.table.get_mut(&session)?.next_logprobs(&prefixes).map_err(WitError::from))
    }

    fn reorder(&mut self, session: Resource<GenerationSession>, beams: Vec<u32>) -> Answer<()> {
        Ok(self.table.get_mut(&session)?.reorder(&beams).map_err(WitError::from))
    }

    fn drop(&mut self, session: Resource<GenerationSession>) -> wasmtime::Result<()> {
        self.table.delete(session)?;
        self.generations -= 1;
        Ok(())
    }
}

impl quarry::retrieval::rankers::Host for CallState {
    fn late_interaction(&mut self, collection: String, field: String, query: TokenSet, candidates: Vec<String>) -> Answer<Vec<Hit>> {
        Ok((|| {
            let key = self.collection(&collection)?;
            self.batch("late-interaction candidates", &candidates)?;
            self.payload("late-interaction query", query.data.len() * 4)?;
            let hits = self
                .services
                .indexes
                .late_interaction(&key, &field, query.dim as usize, &query.data, &candidates)
                .map_err(|e| WitError::InvalidInput(format!("late-interaction on `{collection}.{field}`: {e:#}")))?;
            Ok(hits.into_iter().map(|s| Hit { id: s.id, score: s.score }).collect())
        })())
    }

    fn cross_score(&mut self, model: String, query: String, texts: Vec<String>) -> Answer<Vec<f32>> {
        Ok(self.model(&model).and_then(|()| Ok(self.services.models.cross_score(&model, &query, &texts)?)))
    }
}

fn to_store(value: WitFieldValue) -> store::FieldValue {
    match value {
        WitFieldValue::Vector(v) => store::FieldValue::Vector(v),
        WitFieldValue::Tokens(t) => store::FieldValue::Tokens { dim: t.dim, data: t.data },
        WitFieldValue::Codes(c) => store::FieldValue::Codes(c),
        WitFieldValue::Blob(b) => store::FieldValue::Blob(b),
    }
}

fn to_wit(value: store::FieldValue) -> WitFieldValue {
    match value {
        store::FieldValue::Vector(v) => WitFieldValue::Vector(v),
        store::FieldValue::Tokens { dim, data } => WitFieldValue::Tokens(TokenSet { dim, data }),
        store::FieldValue::Codes(c) => WitFieldValue::Codes(c),
        store::FieldValue::Blob(b) => WitFieldValue::Blob(b),
    }
}

fn payload_bytes(value: &WitFieldValue) -> usize {
    match value {
        WitFieldValue::Vector(v) => v.len() * 4,
        WitFieldValue::Tokens(t) => t.data.len() * 4,
        WitFieldValue::Codes(c) => c.len() * 4,
        WitFieldValue::Blob(b) => b.len(),
    }
}

impl quarry::retrieval::collections::Host for CallState {
    fn put_field(&mut self, collection: String, id: String, field: String, value: WitFieldValue) -> Answer<()> {
        Ok((|| {
            let key = self.collection(&collection)?;
            self.payload("put-field", payload_bytes(&value))?;
            if let WitFieldValue::Tokens(t) = &value
                && (t.dim == 0 || t.data.len() % t.dim as usize != 0)
            {
                return Err(WitError::InvalidInput(format!(
                    "put-field `{field}` of `{id}`: a token set of dimension {} cannot hold {} floats",
                    t.dim,
                    t.data.len()
                )));
            }
            store::validate_name("field", &field).map_err(|e| WitError::InvalidInput(e.to_string()))?;
            let floats = match &value {
                WitFieldValue::Vector(v) => v.as_slice(),
                WitFieldValue::Tokens(t) => t.data.as_slice(),
                _ => &[],
            };
            if matches!(&value, WitFieldValue::Vector(v) if v.is_empty()) {
                return Err(WitError::InvalidInput(format!("put-field `{field}` of `{id}`: the vector is empty")));
            }
            if floats.iter().any(|x| !x.is_finite()) {
                return Err(WitError::InvalidInput(format!("put-field `{field}` of `{id}`: the values include NaN or infinity")));
            }
            if id.is_empty() {
                return Err(WitError::InvalidInput("put-field: item id is empty".into()));
            }
            self.writes.fields.push((key, id, field, to_store(value)));
            Ok(())
        })())
    }

    fn get_field(&mut self, collection: String, id: String, field: String) -> Answer<Option<WitFieldValue>> {
        Ok((|| {
            let key = self.collection(&collection)?;
            if let Some(pending) = self.writes.pending_field(&key, &id, &field) {
                return Ok(Some(to_wit(pending.clone())));
            }
            let value = self.services.store.field(&key, &id, &field).map_err(internal)?;
            Ok(value.map(to_wit))
        })())
    }

    fn nearest(&mut self, collection: String, field: String, query: Vec<f32>, k: u32, filter: Option<String>) -> Answer<Vec<Hit>> {
        Ok((|| {
            let key = self.collection(&collection)?;
            let k = (k as usize).min(self.limits.max_hits);
            let filter = filter
                .map(|f| Filter::parse(&f))
                .transpose()
                .map_err(|e| WitError::InvalidInput(format!("nearest on `{collection}.{field}`: {e:#}")))?;
            let hits = self
                .services
                .indexes
                .nearest(&key, &field, &query, k, filter.as_ref())
                .map_err(|e| WitError::InvalidInput(format!("nearest on `{collection}.{field}`: {e:#}")))?;
            Ok(hits.into_iter().map(|s| Hit { id: s.id, score: s.score }).collect())
        })())
    }

    fn next_codes(&mut self, collection: String, field: String, prefixes: Vec<Vec<u32>>) -> Answer<Vec<Vec<u32>>> {
        Ok((|| {
            let key = self.collection(&collection)?;
            self.batch("next-codes", &prefixes)?;
            self.services.indexes.next_codes(&key, &field, &prefixes).map_err(internal)
        })())
    }

    fn items_with_codes(&mut self, collection: String, field: String, codes: Vec<u32>) -> Answer<Vec<String>> {
        Ok((|| {
            let key = self.collection(&collection)?;
            self.services.indexes.items_with_codes(&key, &field, &codes).map_err(internal)
        })())
    }

    fn put_blob(&mut self, collection: String, name: String, data: Vec<u8>) -> Answer<()> {
        Ok((|| {
            let key = self.collection(&collection)?;
            self.payload("put-blob", data.len())?;
            store::validate_name("blob", &name).map_err(|e| WitError::InvalidInput(e.to_string()))?;
            self.writes.blobs.push((key, name, data));
            Ok(())
        })())
    }

    fn get_blob(&mut self, collection: String, name: String) -> Answer<Option<Vec<u8>>> {
        Ok((|| {
            let key = self.collection(&collection)?;
            if let Some(pending) = self.writes.pending_blob(&key, &name) {
                return Ok(Some(pending.to_vec()));
            }
            self.services.store.blob(&key, &name).map_err(internal)
        })())
    }
}

impl quarry::retrieval::log::Host for CallState {
    fn log(&mut self, level: quarry::retrieval::log::Level, message: String) -> wasmtime::Result<()> {
        if level as u8 >= self.services.log_level as u8 {
            let message: String = message.chars().take(2000).collect();
            eprintln!("[{} {level:?}] {message}", self.strategy);
        }
        Ok(())
    }

    fn counter(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        if value.is_finite() {
            let key = format!("{}/{}", self.strategy, name.chars().take(200).collect::<String>());
            *self.services.counters.lock().unwrap().entry(key).or_default() += value;
        }
        Ok(())
    }
}
