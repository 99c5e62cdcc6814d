//! The host side of the contract, independent of its version: what every host import does.
//!
//! Every import goes through [`CallState::guard`], which first checks the call's deadline
//! (a passed deadline ends the call with a timeout, whatever the plugin does with errors), and
//! turns a panic inside the host into that caller's error. Each import then checks the route's
//! [`Grants`] and the call's [`Limits`] (batch sizes, bytes in, work, bytes written) before it
//! does any work. Writes and counters are held by the call and kept only if it succeeds.
//!
//! The versioned bindings ([`super::contract`]) are thin: they convert each version's types to
//! and from the host's and call these methods.

use super::contract::{PluginHit, Query, StrategyError};
use super::limits::{CallLimiter, Limits};
use crate::capacity::{Caller, Deadline, Expired, Slot};
use crate::index::filter::Filter;
use crate::index::tokens::{MaxSimBudget, MaxSimError};
use crate::index::{Indexes, Scored};
use crate::models::decoder::DecoderBudget;
use crate::models::{ModelError, Models};
use crate::printable::printable;
use crate::store::{self, CollectionStore, FieldValue, StoredItem, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A token set as imports pass it: `data.len() / dim` vectors of `dim` floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub dim: u32,
    pub data: Vec<f32>,
}

/// Log levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Host state behind a `generation` resource: the decoder session and its prompt state.
pub type GenerationSession = crate::models::decoder::Generation;

/// Generation sessions one call may hold open at once.
const MAX_GENERATIONS: usize = 64;

/// Texts or images per model call when the host splits a token-returning request, so the
/// output it gathers can be checked against the payload limit as it grows.
const TOKEN_CHUNK: usize = 32;

/// What a route lets its strategy touch, beyond the collection it serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// Models the strategy may call.
    pub models: BTreeSet<String>,
    /// Collections the strategy may read and write.
    pub collections: BTreeSet<String>,
    /// Strategies (`name@version`) it may call through `strategies.search`; each runs as the
    /// called collection's route runs it.
    pub strategies: BTreeSet<String>,
}

/// What one call may touch: its route's grants, resolved within the route's tenant.
#[derive(Debug, Clone, Default)]
pub struct CallGrants {
    pub tenant: String,
    pub models: BTreeSet<String>,
    /// Bare collection names within `tenant`.
    pub collections: BTreeSet<String>,
    /// Strategies it may call (`name@version`).
    pub strategies: BTreeSet<String>,
    /// An ingest's items, which the host stores when the call succeeds: the call may write
    /// their fields although they are not stored yet. Keyed by qualified collection.
    pub ingesting: Option<(String, HashSet<String>)>,
}

/// Counters reported by plugins, per tenant and plugin (`name@version`), then by name.
#[derive(Debug, Default)]
pub struct Counters {
    by_plugin: HashMap<(String, String), HashMap<String, f64>>,
}

impl Counters {
    /// Every counter as `tenant/name@version/counter`.
    pub fn flatten(&self) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for ((tenant, plugin), counters) in &self.by_plugin {
            for (name, value) in counters {
                out.insert(format!("{tenant}/{plugin}/{name}"), *value);
            }
        }
        out
    }

    /// Add a finished call's counters; names past `max_names` per tenant and plugin are dropped
    /// (the host's own `quarry.*` counters do not count towards it).
    pub fn merge(&mut self, tenant: &str, plugin: &str, staged: HashMap<String, f64>, max_names: usize) {
        if staged.is_empty() {
            return;
        }
        let counters = self.by_plugin.entry((tenant.to_string(), plugin.to_string())).or_default();
        let mut names = plugin_names(counters);
        for (name, value) in staged {
            match counters.get_mut(&name) {
                Some(total) => *total += value,
                None if names < max_names || name.starts_with(HOST_COUNTER_PREFIX) => {
                    names += usize::from(!name.starts_with(HOST_COUNTER_PREFIX));
                    counters.insert(name, value);
                }
                None => {}
            }
        }
    }

    fn knows(&self, tenant: &str, plugin: &str, name: &str) -> (bool, usize) {
        match self.by_plugin.get(&(tenant.to_string(), plugin.to_string())) {
            Some(counters) => (counters.contains_key(name), plugin_names(counters)),
            None => (false, 0),
        }
    }
}

/// How many of a plugin's counters are its own (not the host's `quarry.*` ones).
fn plugin_names(counters: &HashMap<String, f64>) -> usize {
    counters.keys().filter(|n| !n.starts_with(HOST_COUNTER_PREFIX)).count()
}

/// Counters the host keeps about plugins start with this; plugins' own counters cannot.
pub const HOST_COUNTER_PREFIX: &str = "quarry.";

/// Everything shared by all calls: models, the store and its indexes, metrics.
pub struct HostServices {
    pub models: Arc<Models>,
    pub store: Arc<dyn CollectionStore>,
    pub indexes: Arc<Indexes>,
    pub counters: Mutex<Counters>,
    /// Print plugin log lines at or above this level to stderr.
    pub log_level: LogLevel,
}

impl HostServices {
    /// Add to a counter the host keeps about a plugin (for example, hits it returned for ids
    /// the collection lacks). Host counters are named `quarry.*`, a prefix plugins cannot use,
    /// and do not count against the plugin's cap on names.
    pub fn count(&self, tenant: &str, plugin: &str, name: &str, value: f64) {
        debug_assert!(name.starts_with(HOST_COUNTER_PREFIX));
        let staged = HashMap::from([(name.to_string(), value)]);
        self.counters.lock().unwrap_or_else(PoisonError::into_inner).merge(tenant, plugin, staged, usize::MAX);
    }
}

/// What a call has spent of its per-call budgets.
#[derive(Debug, Default)]
struct Spent {
    input_bytes: usize,
    written_bytes: usize,
    log_lines: usize,
    log_bytes: usize,
    /// Log lines dropped over the budget (reported once, when the budget is first hit).
    log_dropped: bool,
}

/// The state of one plugin call: its sandbox, its grants, its budgets and its pending writes.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: CallLimiter,
    pub(super) stderr: MemoryOutputPipe,
    pub(super) writes: WriteBatch,
    /// Counters this call reported, kept only if it succeeds.
    pub(super) counters: HashMap<String, f64>,
    services: Arc<HostServices>,
    grants: Arc<CallGrants>,
    limits: Limits,
    /// `name@version` of the strategy.
    strategy: String,
    deadline: Deadline,
    /// The call's compute slot, released while it waits on shared work.
    slot: Option<Arc<Slot>>,
    spent: Spent,
    generations: usize,
}

/// How a host import ends when it does not answer: with an error the plugin sees, or by
/// ending the whole call (its deadline passed).
pub(crate) enum Fail {
    Wit(StrategyError),
    Expired(Expired),
    /// The tenant's compute budget is spent: the call ends, as at its deadline.
    OverBudget(crate::capacity::OverBudget),
}

impl From<StrategyError> for Fail {
    fn from(e: StrategyError) -> Self {
        Fail::Wit(e)
    }
}

impl From<Expired> for Fail {
    fn from(e: Expired) -> Self {
        Fail::Expired(e)
    }
}

impl From<ModelError> for Fail {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Expired(e) => Fail::Expired(e),
            ModelError::OverBudget(e) => Fail::OverBudget(e),
            ModelError::NotFound(_) => Fail::Wit(StrategyError::NotFound(e.to_string())),
            ModelError::InvalidInput(m) => Fail::Wit(StrategyError::InvalidInput(m)),
            ModelError::Runtime(_) => Fail::Wit(StrategyError::Model(e.to_string())),
        }
    }
}

impl From<MaxSimError> for Fail {
    fn from(e: MaxSimError) -> Self {
        match e {
            MaxSimError::Expired(e) => Fail::Expired(e),
            MaxSimError::Invalid(m) => Fail::Wit(StrategyError::InvalidInput(m)),
        }
    }
}

/// A host import panicked; the call that made it fails with this, and the host goes on.
#[derive(Debug, thiserror::Error)]
#[error("the host failed inside `{import}`: {message}")]
pub struct HostFault {
    pub import: &'static str,
    pub message: String,
}

fn invalid(message: String) -> Fail {
    Fail::Wit(StrategyError::InvalidInput(message))
}

/// What a guarded import answers: a result for the plugin, or a trap that ends the call.
pub(super) type Answer<T> = wasmtime::Result<Result<T, StrategyError>>;

impl CallState {
    pub fn new(services: Arc<HostServices>, grants: Arc<CallGrants>, limits: &Limits, strategy: &str) -> Self {
        let stderr = MemoryOutputPipe::new(16 << 10);
        let mut table = ResourceTable::new();
        table.set_max_capacity(super::wasi::MAX_RESOURCES);
        CallState {
            wasi: super::wasi::context(stderr.clone()),
            table,
            limiter: CallLimiter { memory_bytes: limits.memory_bytes, memory_cap_hit: false, peak_bytes: 0 },
            stderr,
            writes: WriteBatch::default(),
            counters: HashMap::new(),
            services,
            grants,
            limits: limits.clone(),
            strategy: strategy.to_string(),
            deadline: Deadline::after(std::time::Duration::from_millis(limits.deadline_ms)),
            slot: None,
            spent: Spent::default(),
            generations: 0,
        }
    }

    /// Hand a ready-made instance's state to a call with these grants, deadline and slot.
    pub(super) fn begin_call(&mut self, grants: Arc<CallGrants>, deadline: Deadline, slot: Option<Arc<Slot>>) {
        self.grants = grants;
        self.deadline = deadline;
        self.slot = slot;
    }

    pub(super) fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    pub(super) fn slot(&self) -> Option<&Arc<Slot>> {
        self.slot.as_ref()
    }

    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    pub(super) fn grants(&self) -> &Arc<CallGrants> {
        &self.grants
    }

    fn caller(&self) -> Caller {
        Caller { tenant: Arc::from(self.grants.tenant.as_str()), deadline: self.deadline, slot: self.slot.clone() }
    }

    /// Run one import: refuse it once the deadline has passed, and turn a panic into this
    /// call's error.
    pub(super) fn guard<T>(&mut self, import: &'static str, body: impl FnOnce(&mut Self) -> Result<T, Fail>) -> Answer<T> {
        if self.deadline.expired() {
            return Err(wasmtime::Error::new(Expired(format!("a call to `{import}`"))));
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| body(self))) {
            Ok(Ok(value)) => Ok(Ok(value)),
            Ok(Err(Fail::Wit(e))) => Ok(Err(e)),
            Ok(Err(Fail::Expired(e))) => Err(wasmtime::Error::new(e)),
            Ok(Err(Fail::OverBudget(e))) => Err(wasmtime::Error::new(e)),
            Err(panic) => {
                let message = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                Err(wasmtime::Error::new(HostFault { import, message }))
            }
        }
    }

    fn model(&self, model: &str) -> Result<(), Fail> {
        if !self.grants.models.contains(model) {
            return Err(Fail::Wit(StrategyError::Denied(format!(
                "strategy {} may not call model `{}`: the route does not grant it (granted: {})",
                self.strategy,
                printable(model, 128),
                list(&self.grants.models)
            ))));
        }
        Ok(())
    }

    /// Check a collection against the grants and return its store key. Names are relative to
    /// the call's tenant, so no name reaches another tenant's data.
    fn collection(&self, collection: &str) -> Result<String, Fail> {
        if !self.grants.collections.contains(collection) {
            return Err(Fail::Wit(StrategyError::Denied(format!(
                "strategy {} may not access collection `{}`: the route does not grant it (granted: {})",
                self.strategy,
                printable(collection, 128),
                list(&self.grants.collections)
            ))));
        }
        Ok(format!("{}/{collection}", self.grants.tenant))
    }

    fn batch<T>(&self, what: &str, items: &[T]) -> Result<(), Fail> {
        if items.len() > self.limits.max_batch {
            return Err(invalid(format!(
                "{what}: {} inputs in one call, over the limit of {}; send smaller batches or raise `limits.max_batch`",
                items.len(),
                self.limits.max_batch
            )));
        }
        Ok(())
    }

    fn payload(&self, what: &str, bytes: usize) -> Result<(), Fail> {
        if bytes > self.limits.max_payload_bytes {
            return Err(invalid(format!(
                "{what}: {bytes} bytes in one call, over the limit of {} bytes; send less or raise `limits.max_payload_bytes`",
                self.limits.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// Count texts or images sent to a model against the per-item and per-call input budgets.
    fn inputs<'a>(&mut self, what: &str, items: impl Iterator<Item = &'a [u8]>) -> Result<(), Fail> {
        let mut bytes = 0usize;
        for (i, item) in items.enumerate() {
            if item.len() > self.limits.max_item_bytes {
                return Err(invalid(format!(
                    "{what}: input {i} has {} bytes, over the limit of {} per text or image; shorten it or raise `limits.max_item_bytes`",
                    item.len(),
                    self.limits.max_item_bytes
                )));
            }
            bytes += item.len();
        }
        let total = self.spent.input_bytes.saturating_add(bytes);
        if total > self.limits.max_input_bytes {
            return Err(invalid(format!(
                "{what}: this call has sent {total} bytes of text and images to models, over the limit of {}; \
                 send less per call or raise `limits.max_input_bytes`",
                self.limits.max_input_bytes
            )));
        }
        self.spent.input_bytes = total;
        Ok(())
    }

    /// Count bytes against the call's write budget.
    fn written(&mut self, what: &str, bytes: usize) -> Result<(), Fail> {
        let total = self.spent.written_bytes.saturating_add(bytes);
        if total > self.limits.max_write_bytes {
            return Err(invalid(format!(
                "{what}: this call would write {total} bytes, over the limit of {} per call; \
                 write less per call or raise `limits.max_write_bytes`",
                self.limits.max_write_bytes
            )));
        }
        self.spent.written_bytes = total;
        Ok(())
    }

    fn tokens(&self, what: &str, set: &Tokens) -> Result<(), Fail> {
        if set.dim == 0 || !set.data.len().is_multiple_of(set.dim as usize) {
            return Err(invalid(format!("{what}: a token set of dimension {} cannot hold {} floats", set.dim, set.data.len())));
        }
        let count = set.data.len() / set.dim as usize;
        if count > self.limits.max_tokens {
            return Err(invalid(format!(
                "{what}: a token set of {count} tokens, over the limit of {}; raise `limits.max_tokens`",
                self.limits.max_tokens
            )));
        }
        if set.data.iter().any(|x| !x.is_finite()) {
            return Err(invalid(format!("{what}: the token set holds NaN or infinity")));
        }
        Ok(())
    }

    fn codes(&self, what: &str, codes: &[u32]) -> Result<(), Fail> {
        if codes.len() > self.limits.max_codes {
            return Err(invalid(format!(
                "{what}: a code sequence of {} codes, over the limit of {}; raise `limits.max_codes`",
                codes.len(),
                self.limits.max_codes
            )));
        }
        Ok(())
    }

    /// A field write may name only an item the collection stores, or one this ingest adds.
    fn item_exists(&self, key: &str, collection: &str, id: &str) -> Result<(), Fail> {
        store::validate_item_id(id).map_err(|e| invalid(format!("put-field: {e}")))?;
        if let Some((ingest_key, ids)) = &self.grants.ingesting
            && ingest_key == key
            && ids.contains(id)
        {
            return Ok(());
        }
        match self.services.store.item_exists(key, id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Fail::Wit(StrategyError::NotFound(format!(
                "put-field: collection `{collection}` has no item `{}`; fields belong to stored items, so ingest the item first",
                printable(id, 64)
            )))),
            Err(e) => Err(internal(e)),
        }
    }
}

fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() { "none".to_string() } else { names.iter().cloned().collect::<Vec<_>>().join(", ") }
}

fn internal(e: anyhow::Error) -> Fail {
    Fail::Wit(StrategyError::Internal(format!("{e:#}")))
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}


/// A page of a scan: entries in id order, and the id to continue after (none at the end).
pub(super) type ScanPage = (Vec<(String, FieldValue)>, Option<String>);

fn bytes_of(texts: &[String]) -> impl Iterator<Item = &[u8]> {
    texts.iter().map(String::as_bytes)
}

fn floats(vectors: &[Vec<f32>]) -> usize {
    vectors.iter().map(|v| v.len().saturating_mul(4)).fold(0, usize::saturating_add)
}

fn value_bytes(value: &FieldValue) -> usize {
    match value {
        FieldValue::Vector(v) => v.len().saturating_mul(4),
        FieldValue::Tokens { data, .. } => data.len().saturating_mul(4),
        FieldValue::Codes(c) => c.len().saturating_mul(4),
        FieldValue::Blob(b) => b.len(),
    }
}

/// What each host import does, whatever the contract version. The versioned bindings call these
/// inside [`CallState::guard`].
impl CallState {
    pub(super) fn embed_texts(&mut self, model: &str, texts: &[String]) -> Result<Vec<Vec<f32>>, Fail> {
        self.model(model)?;
        self.batch("embed-texts", texts)?;
        self.inputs("embed-texts", bytes_of(texts))?;
        Ok(self.services.models.embed_texts(model, texts, &self.caller())?)
    }

    pub(super) fn embed_images(&mut self, model: &str, images: &[Vec<u8>]) -> Result<Vec<Vec<f32>>, Fail> {
        self.model(model)?;
        self.batch("embed-images", images)?;
        self.inputs("embed-images", images.iter().map(Vec::as_slice))?;
        Ok(self.services.models.embed_images(model, images, &self.caller())?)
    }

    /// Token sets of texts or images, gathered a chunk at a time so the output is checked
    /// against the payload limit as it grows.
    fn token_sets<T>(
        &mut self,
        what: &str,
        model: &str,
        inputs: &[T],
        run: impl Fn(&Models, &str, &[T], &Caller) -> Result<Vec<(usize, Vec<f32>)>, ModelError>,
    ) -> Result<Vec<Tokens>, Fail> {
        let mut out = Vec::with_capacity(inputs.len());
        let mut bytes = 0usize;
        for chunk in inputs.chunks(TOKEN_CHUNK) {
            for (dim, data) in run(&self.services.models, model, chunk, &self.caller())? {
                bytes += data.len() * 4;
                out.push(Tokens { dim: dim as u32, data });
            }
            self.payload(what, bytes)?;
        }
        Ok(out)
    }

    pub(super) fn text_tokens(&mut self, model: &str, texts: &[String]) -> Result<Vec<Tokens>, Fail> {
        self.model(model)?;
        self.batch("text-tokens", texts)?;
        self.inputs("text-tokens", bytes_of(texts))?;
        self.token_sets("text-tokens result", model, texts, Models::text_tokens)
    }

    pub(super) fn image_tokens(&mut self, model: &str, images: &[Vec<u8>]) -> Result<Vec<Tokens>, Fail> {
        self.model(model)?;
        self.batch("image-tokens", images)?;
        self.inputs("image-tokens", images.iter().map(Vec::as_slice))?;
        self.token_sets("image-tokens result", model, images, Models::image_tokens)
    }

    pub(super) fn embed_texts_with_slots(&mut self, model: &str, texts: Vec<(String, Vec<Vec<f32>>)>) -> Result<Vec<Vec<f32>>, Fail> {
        self.model(model)?;
        self.batch("embed-texts-with-slots", &texts)?;
        self.inputs("embed-texts-with-slots", texts.iter().map(|(template, _)| template.as_bytes()))?;
        let slots: Vec<&Vec<f32>> = texts.iter().flat_map(|(_, slots)| slots).collect();
        self.batch("embed-texts-with-slots slots", &slots)?;
        self.payload("embed-texts-with-slots", slots.iter().map(|v| v.len().saturating_mul(4)).fold(0, usize::saturating_add))?;
        if slots.iter().any(|v| v.iter().any(|x| !x.is_finite())) {
            return Err(invalid("embed-texts-with-slots: a slot vector holds NaN or infinity".into()));
        }
        Ok(self.services.models.embed_texts_with_slots(model, &texts, &self.caller())?)
    }

    pub(super) fn project(&mut self, model: &str, vectors: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, Fail> {
        self.model(model)?;
        self.batch("project", vectors)?;
        self.payload("project", floats(vectors))?;
        if vectors.iter().any(|v| v.is_empty() || v.iter().any(|x| !x.is_finite())) {
            return Err(invalid("project: vectors must be non-empty and finite".into()));
        }
        Ok(self.services.models.project(model, vectors, &self.caller())?)
    }

    pub(super) fn generation_start(&mut self, model: &str, prompt: &str) -> Result<Resource<GenerationSession>, Fail> {
        self.model(model)?;
        if self.generations >= MAX_GENERATIONS {
            return Err(invalid(format!("a call may hold {MAX_GENERATIONS} generation sessions at once; drop finished ones")));
        }
        self.inputs("generation.start", std::iter::once(prompt.as_bytes()))?;
        let mut generation = self.services.models.start_generation(model, prompt, &self.caller())?;
        generation.set_budget(DecoderBudget { max_tokens: self.limits.max_decoder_tokens, max_logit_bytes: self.limits.max_payload_bytes });
        let resource = self.table.push(generation).map_err(|e| invalid(format!("generation.start: {e}")))?;
        self.generations += 1;
        Ok(resource)
    }

    pub(super) fn next_logprobs(&mut self, session: &Resource<GenerationSession>, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, Fail> {
        self.batch("next-logprobs", prefixes)?;
        let generation = self.table.get_mut(session).map_err(|e| invalid(format!("next-logprobs: {e}")))?;
        Ok(generation.next_logprobs(prefixes)?)
    }

    pub(super) fn reorder(&mut self, session: &Resource<GenerationSession>, beams: &[u32]) -> Result<(), Fail> {
        self.batch("reorder", beams)?;
        let generation = self.table.get_mut(session).map_err(|e| invalid(format!("reorder: {e}")))?;
        Ok(generation.reorder(beams)?)
    }

    pub(super) fn generation_drop(&mut self, session: Resource<GenerationSession>) -> wasmtime::Result<()> {
        self.table.delete(session)?;
        self.generations -= 1;
        Ok(())
    }

    pub(super) fn late_interaction(&mut self, collection: &str, field: &str, query: &Tokens, candidates: &[String]) -> Result<Vec<Scored>, Fail> {
        let key = self.collection(collection)?;
        self.batch("late-interaction candidates", candidates)?;
        self.payload("late-interaction query", query.data.len().saturating_mul(4))?;
        self.tokens("late-interaction query", query)?;
        let budget = MaxSimBudget { max_work: self.limits.max_maxsim_work, deadline: self.deadline };
        let hits = self.services.indexes.late_interaction(&key, field, query.dim as usize, &query.data, candidates, budget).map_err(|e| match e {
            MaxSimError::Invalid(m) => MaxSimError::Invalid(format!("late-interaction on `{collection}.{}`: {m}", printable(field, 128))),
            e => e,
        })?;
        Ok(hits)
    }

    pub(super) fn cross_score(&mut self, model: &str, query: &str, texts: &[String]) -> Result<Vec<f32>, Fail> {
        self.model(model)?;
        self.batch("cross-score", texts)?;
        self.inputs("cross-score", std::iter::once(query.as_bytes()).chain(bytes_of(texts)))?;
        Ok(self.services.models.cross_score(model, query, texts, &self.caller())?)
    }

    pub(super) fn put_field(&mut self, collection: &str, id: String, field: String, value: FieldValue) -> Result<(), Fail> {
        let key = self.collection(collection)?;
        store::validate_name("field", &field).map_err(|e| invalid(format!("put-field: {e}")))?;
        self.item_exists(&key, collection, &id)?;
        let size = value_bytes(&value);
        self.payload("put-field", size)?;
        let what = || format!("put-field `{field}` of `{}`", printable(&id, 64));
        match &value {
            FieldValue::Vector(v) if v.is_empty() => return Err(invalid(format!("{}: the vector is empty", what()))),
            FieldValue::Vector(v) if v.iter().any(|x| !x.is_finite()) => {
                return Err(invalid(format!("{}: the values include NaN or infinity", what())));
            }
            FieldValue::Tokens { dim, data } => self.tokens(&what(), &Tokens { dim: *dim, data: data.clone() })?,
            FieldValue::Codes(c) => self.codes(&what(), c)?,
            _ => {}
        }
        self.written("put-field", size + id.len() + field.len())?;
        self.writes.fields.push((key, id, field, value));
        Ok(())
    }

    pub(super) fn get_field(&mut self, collection: &str, id: &str, field: &str) -> Result<Option<FieldValue>, Fail> {
        let key = self.collection(collection)?;
        if let Some(pending) = self.writes.pending_field(&key, id, field) {
            return Ok(Some(pending.clone()));
        }
        if let Some(vector) = self.services.indexes.written_vector(&key, field, id) {
            return Ok(Some(FieldValue::Vector(vector)));
        }
        let value = self.services.store.field(&key, id, field).map_err(internal)?;
        if let Some(FieldValue::Vector(_)) = value {
            self.services.indexes.load_vector_field(&key, field);
        }
        Ok(value)
    }

    pub(super) fn nearest(&mut self, collection: &str, field: &str, query: &[f32], k: u32, filter: Option<&str>) -> Result<Vec<Scored>, Fail> {
        let key = self.collection(collection)?;
        let k = (k as usize).min(self.limits.max_hits);
        let on = || format!("nearest on `{collection}.{}`", printable(field, 128));
        self.payload("nearest query", query.len().saturating_mul(4))?;
        if query.is_empty() || query.iter().any(|x| !x.is_finite()) {
            return Err(invalid(format!("{}: the query vector must be non-empty and finite", on())));
        }
        if let Some(f) = filter {
            self.payload("nearest filter", f.len())?;
        }
        let filter = filter.map(Filter::parse).transpose().map_err(|e| invalid(format!("{}: {e:#}", on())))?;
        let hits = self.services.indexes.nearest(&key, field, query, k, filter.as_ref()).map_err(|e| invalid(format!("{}: {e:#}", on())))?;
        self.deadline.check("a nearest-neighbour search")?;
        Ok(hits)
    }

    pub(super) fn next_codes(&mut self, collection: &str, field: &str, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>, Fail> {
        let key = self.collection(collection)?;
        self.batch("next-codes", prefixes)?;
        for prefix in prefixes {
            self.codes("next-codes prefix", prefix)?;
        }
        self.services.indexes.next_codes(&key, field, prefixes).map_err(internal)
    }

    pub(super) fn items_with_codes(&mut self, collection: &str, field: &str, codes: &[u32]) -> Result<Vec<String>, Fail> {
        let key = self.collection(collection)?;
        self.codes("items-with-codes", codes)?;
        let ids = self.services.indexes.items_with_codes(&key, field, codes).map_err(internal)?;
        if ids.len() > self.limits.max_hits {
            return Err(invalid(format!(
                "items-with-codes: {} items share these codes, over the limit of {}; use longer codes or raise `limits.max_hits`",
                ids.len(),
                self.limits.max_hits
            )));
        }
        Ok(ids)
    }

    pub(super) fn put_blob(&mut self, collection: &str, name: String, data: Vec<u8>) -> Result<(), Fail> {
        let key = self.collection(collection)?;
        self.payload("put-blob", data.len())?;
        store::validate_name("blob", &name).map_err(|e| invalid(format!("put-blob: {e}")))?;
        self.written("put-blob", data.len() + name.len())?;
        self.writes.blobs.push((key, name, data));
        Ok(())
    }

    pub(super) fn get_blob(&mut self, collection: &str, name: &str) -> Result<Option<Vec<u8>>, Fail> {
        let key = self.collection(collection)?;
        if let Some(pending) = self.writes.pending_blob(&key, name) {
            return Ok(Some(pending.to_vec()));
        }
        Ok(self.services.indexes.blob(&key, name).map_err(internal)?.map(|b| b.to_vec()))
    }

    /// A page of a field: at most `limit` values (and `max_batch`), cut early at the payload limit.
    pub(super) fn scan(&mut self, collection: &str, field: &str, after: Option<&str>, limit: u32) -> Result<ScanPage, Fail> {
        let key = self.collection(collection)?;
        let limit = (limit as usize).min(self.limits.max_batch);
        if limit == 0 {
            return Err(invalid("scan: `limit` is 0; ask for at least one value".into()));
        }
        let mut bytes = 0usize;
        let max_bytes = self.limits.max_payload_bytes;
        let deadline = self.deadline;
        let (entries, more) = self
            .services
            .store
            .scan_field_page(&key, field, after, &mut |id, value| {
                let size = id.len() + value_bytes(value);
                // Always take one entry, so a page of a huge value still moves the cursor.
                let fits = bytes == 0 || bytes + size <= max_bytes;
                bytes += size;
                fits && !deadline.expired()
            }, limit)
            .map_err(internal)?;
        deadline.check("a scan")?;
        if let Some((_, first)) = entries.first()
            && entries.len() == 1
            && value_bytes(first) > max_bytes
        {
            return Err(invalid(format!(
                "scan of `{collection}.{}`: one value has {} bytes, over the limit of {max_bytes}; raise `limits.max_payload_bytes`",
                printable(field, 128),
                value_bytes(first)
            )));
        }
        let next = if more { entries.last().map(|(id, _)| id.clone()) } else { None };
        Ok((entries, next))
    }

    pub(super) fn get_items(&mut self, collection: &str, ids: &[String]) -> Result<Vec<Option<StoredItem>>, Fail> {
        let key = self.collection(collection)?;
        self.batch("get-items", ids)?;
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let items = self.services.store.items(&key, &refs).map_err(internal)?;
        let bytes = items.iter().flatten().map(|i| i.id.len() + i.text.as_ref().map_or(0, String::len) + i.metadata.to_string().len()).fold(0, usize::saturating_add);
        self.payload("get-items result", bytes)?;
        Ok(items)
    }

    pub(super) fn count(&mut self, collection: &str) -> Result<u64, Fail> {
        let key = self.collection(collection)?;
        self.services.store.item_count(&key).map(|n| n as u64).map_err(internal)
    }

    /// Search `collection` with `strategy`, as the collection's route runs it (its config and
    /// grants), within this call's deadline and while this call's compute slot is lent out.
    pub(super) fn call_strategy(&mut self, strategy: &str, collection: &str, query: Query) -> Result<Vec<PluginHit>, Fail> {
        if !self.grants.strategies.contains(strategy) {
            return Err(Fail::Wit(StrategyError::Denied(format!(
                "strategy {} may not call strategy `{}`: the route does not grant it (granted: {})",
                self.strategy,
                printable(strategy, 128),
                list(&self.grants.strategies)
            ))));
        }
        let key = self.collection(collection)?;
        crate::compose::nested_search(&key, strategy, query, self.deadline, self.slot.clone())
    }

    pub(super) fn log(&mut self, level: LogLevel, message: &str) {
        if level < self.services.log_level {
            return;
        }
        let spent = &mut self.spent;
        // Checked before any work on the message: a plugin logging in a loop costs the host nothing.
        if spent.log_lines >= self.limits.max_log_lines || spent.log_bytes.saturating_add(message.len().min(2000)) > self.limits.max_log_bytes {
            if !std::mem::replace(&mut spent.log_dropped, true) {
                eprintln!(
                    "[{} {}] further log lines of this call dropped: over `limits.max_log_lines` ({}) or `limits.max_log_bytes` ({})",
                    self.grants.tenant, self.strategy, self.limits.max_log_lines, self.limits.max_log_bytes
                );
            }
            return;
        }
        let line = printable(message, 2000);
        spent.log_lines += 1;
        spent.log_bytes += line.len();
        eprintln!("[{} {} {level:?}] {line}", self.grants.tenant, self.strategy);
    }

    pub(super) fn counter(&mut self, name: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        let name = printable(name, 200);
        if name.starts_with(HOST_COUNTER_PREFIX) {
            return;
        }
        if !self.counters.contains_key(&name) {
            let counters = self.services.counters.lock().unwrap_or_else(PoisonError::into_inner);
            let (known, stored) = counters.knows(&self.grants.tenant, &self.strategy, &name);
            if !known && stored + self.counters.len() >= self.limits.max_counters {
                return;
            }
        }
        *self.counters.entry(name).or_default() += value;
    }
}
