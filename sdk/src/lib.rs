//! Write Quarry retrieval strategies as WebAssembly components.
//!
//! A strategy is a type implementing [`Strategy`], exported with [`export_strategy!`]. It holds no
//! models or indexes itself: it orchestrates calls to the host's [`encoders`], [`rankers`] and
//! [`Collection`]s, which own inference and data. Build it with
//! `cargo build --target wasm32-wasip2 --release` and hand the `.wasm` to `quarry plugin add`.
//!
//! ```no_run
//! use quarry_sdk::{Context, Descriptor, Hit, Item, Query, Result, Strategy, encoders};
//!
//! struct Dense;
//!
//! impl Strategy for Dense {
//!     fn describe() -> Descriptor {
//!         Descriptor::new("my-dense", "0.1.0").model("model").vector_field("embedding")
//!     }
//!     fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
//!         let model: String = ctx.param("model")?;
//!         let texts: Vec<String> = items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
//!         let vectors = encoders::embed_texts(&model, &texts)?;
//!         for (item, vector) in items.iter().zip(vectors) {
//!             ctx.collection().put_vector(&item.id, "embedding", vector)?;
//!         }
//!         Ok(())
//!     }
//!     fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
//!         let model: String = ctx.param("model")?;
//!         let vector = encoders::embed_text(&model, query.text.as_deref().unwrap_or(""))?;
//!         ctx.collection().nearest("embedding", &vector, query.k)
//!     }
//! }
//!
//! quarry_sdk::export_strategy!(Dense);
//! ```
//!
//! # Versions
//!
//! A strategy is known to hosts as `name@version`, from [`Strategy::describe`], and a version is
//! immutable once a host holds it: to change a strategy, bump the version you pass to
//! [`Descriptor::new`] (or pass `env!("CARGO_PKG_VERSION")` and bump it in `Cargo.toml`).
//!
//! # When the host calls what
//!
//! - [`Strategy::describe`] once, at `quarry plugin add`; the host keeps what it returns.
//! - [`Strategy::ingest`] for each batch of items an ingest adds (the host has stored the items).
//! - [`Strategy::build`] only when asked (`quarry build <collection>`, after ingest), for
//!   collection-level artifacts such as a codebook; never on its own.
//! - [`Strategy::search`] per query, and [`Strategy::rerank`] when the strategy is a cascade's
//!   second stage.
//!
//! Each call gets a fresh instance, and its writes land together when it succeeds and not at all
//! when it fails.

#![deny(missing_docs)]

pub mod helpers;

/// Re-exported so strategies need no direct dependency to build config schemas.
pub use serde_json;

/// Raw bindings generated from the WIT contract. Prefer the idiomatic items at the crate root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "quarry_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

use bindings::exports::quarry::retrieval::strategy as exported;
use bindings::quarry::retrieval::collections as host_collections;
use bindings::quarry::retrieval::types as raw;
use serde::de::DeserializeOwned;

pub use bindings::quarry::retrieval::types::{Error, Feature, FieldKind, Hit, Item, Metric, Query, TokenSet};
pub use exported::FieldSpec;
pub use helpers::{beam_search, normalize_min_max, normalize_z, reciprocal_rank_fusion, top_k};

/// The WIT package this SDK builds against. Hosts report it on `plugin add`.
pub const CONTRACT: &str = "quarry:retrieval@0.2.0";

// Recorded in the component so tooling can tell which SDK built a plugin.
#[cfg(target_arch = "wasm32")]
#[used]
#[unsafe(link_section = "quarry-sdk")]
static SDK_STAMP: [u8; SDK_STAMP_LEN] = sdk_stamp();
const SDK_STAMP_TEXT: &str = concat!("quarry-sdk ", env!("CARGO_PKG_VERSION"));
const SDK_STAMP_LEN: usize = SDK_STAMP_TEXT.len();
#[allow(dead_code)]
const fn sdk_stamp() -> [u8; SDK_STAMP_LEN] {
    let bytes = SDK_STAMP_TEXT.as_bytes();
    let mut out = [0u8; SDK_STAMP_LEN];
    let mut i = 0;
    while i < SDK_STAMP_LEN {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Result of every fallible SDK call.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Hit {
    /// A hit for item `id`.
    pub fn new(id: impl Into<String>, score: f32) -> Self {
        Hit { id: id.into(), score, features: Vec::new() }
    }

    /// Add a named part of the score (for example `global` or `local`), so callers can see why
    /// the hit ranked. The host takes at most 16, named like fields.
    pub fn with_feature(mut self, name: &str, value: f32) -> Self {
        self.features.push(Feature { name: name.to_string(), value });
        self
    }

    /// The value of feature `name`, if the hit has it.
    pub fn feature(&self, name: &str) -> Option<f32> {
        self.features.iter().find(|f| f.name == name).map(|f| f.value)
    }
}

impl Error {
    /// An argument or config value was wrong; say which and why.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }
    /// Any other failure, as a human-readable message.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }
    /// A capability the strategy (or host) does not have.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::Unsupported(message.into())
    }
}


/// What a strategy is and what it needs; returned by [`Strategy::describe`].
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// The strategy's name: 1-128 characters from a-z, A-Z, 0-9, `-`, `_`, `.`.
    pub name: String,
    /// Its version, strict semver (`MAJOR.MINOR.PATCH`). A host keeps `name@version` immutable:
    /// bump it to ship a change.
    pub version: String,
    /// One line on what the strategy does, shown by `quarry plugin list`.
    pub description: String,
    /// Model roles the strategy reads from its config (a route grants the models they name).
    pub models: Vec<String>,
    /// Fields the strategy writes or reads, with their kinds; the host declares them on the
    /// collection when a route is set.
    pub fields: Vec<FieldSpec>,
    /// JSON Schema of the config object the strategy accepts.
    pub config_schema: serde_json::Value,
    /// Whether [`Strategy::rerank`] scores candidates; set with [`Descriptor::reranks`].
    pub reranks: bool,
    /// JSON Schema of the query parameters the strategy reads (`Query::params`), if any; set
    /// with [`Descriptor::query_param`] or [`Descriptor::query_params`].
    pub query_params: Option<serde_json::Value>,
}

/// The config-schema key under which a descriptor's query parameters travel to the host.
pub const QUERY_PARAMS_KEY: &str = "x-quarry-query-params";

impl Descriptor {
    /// A descriptor for `name@version` with no models, fields or config.
    ///
    /// `version` is where a strategy's version is written: a host refuses different bytes under
    /// a `name@version` it already holds, so bump it here (or in `Cargo.toml`, when you pass
    /// `env!("CARGO_PKG_VERSION")`) for every change you ship.
    pub fn new(name: &str, version: &str) -> Self {
        Descriptor {
            name: name.to_string(),
            version: version.to_string(),
            description: String::new(),
            models: Vec::new(),
            fields: Vec::new(),
            config_schema: serde_json::json!({"type": "object"}),
            reranks: false,
            query_params: None,
        }
    }
    /// Set the one-line description.
    pub fn description(mut self, text: &str) -> Self {
        self.description = text.to_string();
        self
    }
    /// Declare a model role, read from the config key of the same name.
    pub fn model(mut self, role: &str) -> Self {
        self.models.push(role.to_string());
        self
    }
    /// Declare a dense vector field compared by inner product.
    pub fn vector_field(self, name: &str) -> Self {
        self.vector_field_with(name, Metric::InnerProduct)
    }
    /// Declare a dense vector field compared by `metric`.
    pub fn vector_field_with(mut self, name: &str, metric: Metric) -> Self {
        self.fields.push(FieldSpec { name: name.to_string(), kind: FieldKind::Vector, metric: Some(metric) });
        self
    }
    /// Declare a field of any kind.
    pub fn field(mut self, name: &str, kind: FieldKind) -> Self {
        self.fields.push(FieldSpec { name: name.to_string(), kind, metric: None });
        self
    }
    /// Set the JSON Schema of the route config (an object schema). Hosts check a route's config
    /// against it when the route is set, so declare every key you read and set
    /// `"additionalProperties": false` to have misspelt keys refused there, not at search.
    pub fn config_schema(mut self, schema: serde_json::Value) -> Self {
        self.config_schema = schema;
        self
    }
    /// Say that [`Strategy::rerank`] is implemented, so the strategy can be a cascade's second
    /// stage.
    pub fn reranks(mut self) -> Self {
        self.reranks = true;
        self
    }
    /// Declare a query parameter the strategy reads, with the JSON Schema of its value.
    ///
    /// Hosts refuse a query carrying a parameter the strategy does not declare (naming it), so
    /// a caller never believes a parameter such as `filter` was applied when it was ignored. A
    /// strategy that declares none takes none.
    pub fn query_param(mut self, name: &str, schema: serde_json::Value) -> Self {
        let params = self.query_params.get_or_insert_with(|| serde_json::json!({"type": "object", "properties": {}}));
        if let Some(properties) = params.get_mut("properties").and_then(serde_json::Value::as_object_mut) {
            properties.insert(name.to_string(), schema);
        }
        self
    }
    /// Declare the query parameters as one object schema. Keys it does not list under
    /// `properties` are refused unless it sets `additionalProperties` (to anything but `false`).
    pub fn query_params(mut self, schema: serde_json::Value) -> Self {
        self.query_params = Some(schema);
        self
    }
    /// The config schema as hosts receive it: [`Descriptor::config_schema`] with the query
    /// parameters under [`QUERY_PARAMS_KEY`].
    pub fn wire_schema(&self) -> serde_json::Value {
        let mut schema = self.config_schema.clone();
        if let (Some(params), Some(object)) = (&self.query_params, schema.as_object_mut()) {
            object.insert(QUERY_PARAMS_KEY.to_string(), params.clone());
        }
        schema
    }
}

/// The collection and configuration a call runs under.
pub struct Context {
    collection: Collection,
    config: serde_json::Value,
}

impl Context {
    #[doc(hidden)]
    pub fn from_raw(raw: raw::Context) -> Result<Self> {
        let config = if raw.config.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&raw.config)
                .map_err(|e| Error::invalid(format!("route config is not valid JSON: {e}")))?
        };
        Ok(Context { collection: Collection::new(&raw.collection), config })
    }

    /// The collection this call works on.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// The whole route config.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// A required config value, deserialised.
    pub fn param<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let value = self
            .config
            .get(key)
            .ok_or_else(|| Error::invalid(format!("route config is missing `{key}`")))?;
        serde_json::from_value(value.clone())
            .map_err(|e| Error::invalid(format!("route config `{key}`: {e}")))
    }

    /// An optional config value, or `default` when absent.
    pub fn param_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        match self.config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(_) => self.param(key),
        }
    }
}

/// Parse a query's JSON `params` into a typed value (`{}` when empty).
pub fn query_params<T: DeserializeOwned + Default>(query: &Query) -> Result<T> {
    if matches!(query.params.trim(), "" | "null") {
        return Ok(T::default());
    }
    serde_json::from_str(&query.params).map_err(|e| Error::invalid(format!("query params: {e}")))
}

/// A handle on a host collection. Data stays in the host; calls pass ids and small vectors.
#[derive(Debug, Clone)]
pub struct Collection {
    name: String,
}

pub use host_collections::FieldValue;

impl Collection {
    /// A handle on `name`; calls fail with `denied` unless the route grants it.
    pub fn new(name: &str) -> Self {
        Collection { name: name.to_string() }
    }
    /// The collection's name, as routes and grants use it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Store `vector` as vector field `field` of item `id`, replacing any previous value.
    ///
    /// The field must be declared in the descriptor ([`Descriptor::vector_field`]); the item
    /// must be stored, or be one the calling `ingest` adds. Every vector of a field has the same
    /// length and finite values. The write lands when the call succeeds.
    pub fn put_vector(&self, id: &str, field: &str, vector: Vec<f32>) -> Result<()> {
        host_collections::put_field(&self.name, id, field, &FieldValue::Vector(vector))
    }
    /// Store `value` as field `field` of item `id`, replacing any previous value: a vector, a
    /// token set ([`FieldKind::Tokens`]) or a code sequence ([`FieldKind::Codes`]), matching the
    /// kind the descriptor declares. The same rules as [`Collection::put_vector`] apply.
    pub fn put_field(&self, id: &str, field: &str, value: &FieldValue) -> Result<()> {
        host_collections::put_field(&self.name, id, field, value)
    }
    /// Read field `field` of item `id`: `None` when the item or the value is absent. Sees this
    /// call's own writes.
    pub fn get_field(&self, id: &str, field: &str) -> Result<Option<FieldValue>> {
        host_collections::get_field(&self.name, id, field)
    }
    /// The `k` nearest items to `query` on vector field `field`, best first.
    pub fn nearest(&self, field: &str, query: &[f32], k: u32) -> Result<Vec<Hit>> {
        host_collections::nearest(&self.name, field, query, k, None)
    }
    /// Like [`Collection::nearest`], keeping only items whose metadata meets `filter`
    /// (for example `{"lang": "en", "year": {"gte": 2020}}`).
    pub fn nearest_filtered(&self, field: &str, query: &[f32], k: u32, filter: &serde_json::Value) -> Result<Vec<Hit>> {
        host_collections::nearest(&self.name, field, query, k, Some(&filter.to_string()))
    }
    /// The items whose code field `field` holds exactly `codes`.
    pub fn items_with_codes(&self, field: &str, codes: &[u32]) -> Result<Vec<String>> {
        host_collections::items_with_codes(&self.name, field, codes)
    }
    /// For each prefix, the codes that may follow it in code field `field`.
    pub fn next_codes(&self, field: &str, prefixes: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        host_collections::next_codes(&self.name, field, prefixes)
    }
    /// Store a collection-level artifact (a codebook, a vocabulary) as blob `name`, replacing
    /// any previous one.
    ///
    /// Blob names are 1-128 characters from a-z, A-Z, 0-9, `-`, `_`, `.`, not starting with `.`.
    /// The data counts against the call's payload and bytes-written limits; the write lands when
    /// the call succeeds. [`Strategy::build`] is the usual place to write blobs.
    pub fn put_blob(&self, name: &str, data: &[u8]) -> Result<()> {
        host_collections::put_blob(&self.name, name, data)
    }
    /// Read blob `name` (see [`Collection::put_blob`]): `None` when absent. Sees this call's own
    /// writes.
    pub fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        host_collections::get_blob(&self.name, name)
    }
    /// One page of field `field`: at most `limit` values in id order after id `after`, and
    /// the id to continue after (none at the end). See [`Collection::scan_all`].
    pub fn scan(&self, field: &str, after: Option<&str>, limit: u32) -> Result<Page> {
        host_collections::scan(&self.name, field, after, limit)
    }
    /// Every value of field `field`, page by page (`page_size` values a host call), in id order.
    /// It reads what is committed, not this call's own writes.
    pub fn scan_all(&self, field: &str, page_size: u32) -> Scan<'_> {
        Scan { collection: self, field: field.to_string(), page_size, page: Vec::new().into_iter(), after: None, done: false }
    }
    /// Stored items by id (text and metadata), in order; `None` where the collection lacks one.
    pub fn get_items(&self, ids: &[String]) -> Result<Vec<Option<StoredItem>>> {
        host_collections::get_items(&self.name, ids)
    }
    /// How many items the collection stores.
    pub fn count(&self) -> Result<u64> {
        host_collections::count(&self.name)
    }
}

pub use host_collections::{Entry, Page, StoredItem};

/// The values of a field, page by page; see [`Collection::scan_all`].
pub struct Scan<'a> {
    collection: &'a Collection,
    field: String,
    page_size: u32,
    page: std::vec::IntoIter<Entry>,
    after: Option<String>,
    done: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            match self.collection.scan(&self.field, self.after.as_deref(), self.page_size) {
                Ok(page) => {
                    self.done = page.next.is_none();
                    self.after = page.next;
                    self.page = page.entries.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The host's encoders. `model` names a model granted to the route.
pub mod encoders {
    use super::Result;
    use crate::bindings::quarry::retrieval::encoders as host;
    pub use host::SlottedText;

    /// Embed texts, one vector each, in order.
    pub fn embed_texts(model: &str, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        host::embed_texts(model, texts)
    }
    /// Embed one text.
    pub fn embed_text(model: &str, text: &str) -> Result<Vec<f32>> {
        let mut out = host::embed_texts(model, &[text.to_string()])?;
        out.pop().ok_or_else(|| crate::Error::internal("host returned no embedding"))
    }
    /// Embed encoded images (PNG, JPEG, ...), one vector each, in order.
    pub fn embed_images(model: &str, images: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
        host::embed_images(model, images)
    }
    /// Per-token feature sets of texts (for late interaction), one set each.
    pub fn text_tokens(model: &str, texts: &[String]) -> Result<Vec<crate::TokenSet>> {
        host::text_tokens(model, texts)
    }
    /// Per-patch feature sets of encoded images, one set each.
    pub fn image_tokens(model: &str, images: &[Vec<u8>]) -> Result<Vec<crate::TokenSet>> {
        host::image_tokens(model, images)
    }
    /// Embed templates whose placeholders take the given slot vectors (LinCIR's pseudo-word);
    /// the model must be slot-capable.
    pub fn embed_texts_with_slots(model: &str, texts: &[SlottedText]) -> Result<Vec<Vec<f32>>> {
        host::embed_texts_with_slots(model, texts)
    }
    /// Map vectors through a projector model (for example LinCIR's φ), one output each.
    pub fn project(model: &str, vectors: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        host::project(model, vectors)
    }
}

/// The host's rankers.
pub mod rankers {
    pub use crate::bindings::quarry::retrieval::rankers::{cross_score, late_interaction};
}

/// Host-side generation sessions.
pub mod decoders {
    pub use crate::bindings::quarry::retrieval::decoders::Generation;
}

/// Other strategies, called through the host (the route must grant them).
pub mod strategies {
    use super::{Hit, Query, Result};

    /// Search `collection` with strategy `name@version`.
    pub fn search(strategy: &str, collection: &str, query: &Query) -> Result<Vec<Hit>> {
        crate::bindings::quarry::retrieval::strategies::search(strategy, collection, query)
    }
}

/// Logging and counters, attributed to this plugin by the host.
pub mod log {
    use crate::bindings::quarry::retrieval::log as host;
    pub use host::Level;

    /// Log at debug level.
    pub fn debug(message: &str) {
        host::log(Level::Debug, message)
    }
    /// Log at info level.
    pub fn info(message: &str) {
        host::log(Level::Info, message)
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        host::log(Level::Warn, message)
    }
    /// Log at error level.
    pub fn error(message: &str) {
        host::log(Level::Error, message)
    }
    /// Add `value` to the counter `name`.
    pub fn counter(name: &str, value: f64) {
        host::counter(name, value)
    }
}

/// A retrieval strategy. Implement it on a unit struct and export it with [`export_strategy!`].
///
/// A fresh instance serves each call, so a strategy keeps no state between calls: anything that
/// must persist goes into the collection.
pub trait Strategy {
    /// What the strategy is and needs. The host asks once, at `quarry plugin add`, and keeps
    /// the answer as the plugin's identity.
    fn describe() -> Descriptor;
    /// Index a batch of items; the host has already stored the items themselves.
    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()>;
    /// Build collection-level artifacts from what was ingested (a codebook, statistics). The
    /// host runs it only when asked (`quarry build <collection>`, usually after an ingest), under
    /// its own, longer deadline. Does nothing by default.
    fn build(_ctx: &Context) -> Result<()> {
        Ok(())
    }
    /// Up to `query.k` hits, best first.
    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>>;
    /// Score `candidates` (item ids) for the query, best first, as a cascade's second stage.
    /// Answers `unsupported` by default; a strategy that implements it says so with
    /// [`Descriptor::reranks`].
    fn rerank(_ctx: &Context, _query: Query, _candidates: Vec<String>) -> Result<Vec<Hit>> {
        Err(Error::unsupported("this strategy does not rerank"))
    }
}

/// Adapts a [`Strategy`] to the generated export trait; used by [`export_strategy!`].
#[doc(hidden)]
pub struct Exported<T>(core::marker::PhantomData<T>);

impl<T: Strategy> exported::Guest for Exported<T> {
    fn describe() -> exported::Descriptor {
        let d = T::describe();
        let config_schema = d.wire_schema().to_string();
        exported::Descriptor {
            name: d.name,
            version: d.version,
            description: d.description,
            models: d.models,
            fields: d.fields,
            config_schema,
            reranks: d.reranks,
        }
    }
    fn ingest(ctx: raw::Context, items: Vec<Item>) -> Result<()> {
        T::ingest(&Context::from_raw(ctx)?, items)
    }
    fn build(ctx: raw::Context) -> Result<()> {
        T::build(&Context::from_raw(ctx)?)
    }
    fn search(ctx: raw::Context, query: Query) -> Result<Vec<Hit>> {
        T::search(&Context::from_raw(ctx)?, query)
    }
    fn rerank(ctx: raw::Context, query: Query, candidates: Vec<String>) -> Result<Vec<Hit>> {
        T::rerank(&Context::from_raw(ctx)?, query, candidates)
    }
}

/// Export a [`Strategy`] implementation as this component's `strategy` interface.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        // Only a wasm component has these exports; a native build (the plugin's unit tests)
        // would hand the linker symbol names it cannot take.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type QuarryExportedStrategy = $crate::Exported<$strategy>;
            $crate::bindings::export_raw!(QuarryExportedStrategy with_types_in $crate::bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            // Natively nothing calls the strategy; naming its entry points keeps them live.
            let _ = <$strategy as $crate::Strategy>::describe;
            let _ = <$strategy as $crate::Strategy>::ingest;
            let _ = <$strategy as $crate::Strategy>::build;
            let _ = <$strategy as $crate::Strategy>::search;
            let _ = <$strategy as $crate::Strategy>::rerank;
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn declared_query_params_travel_inside_the_config_schema() {
        let plain = Descriptor::new("s", "1.0.0").config_schema(json!({"type": "object", "additionalProperties": false}));
        assert_eq!(plain.wire_schema(), json!({"type": "object", "additionalProperties": false}));
        let d = plain.query_param("filter", json!({"type": "object"})).query_param("limit", json!({"type": "integer"}));
        let wire = d.wire_schema();
        assert_eq!(wire["additionalProperties"], false);
        assert_eq!(wire[QUERY_PARAMS_KEY], json!({"type": "object", "properties": {"filter": {"type": "object"}, "limit": {"type": "integer"}}}));
        let open = Descriptor::new("s", "1.0.0").query_params(json!({"type": "object", "additionalProperties": true}));
        assert_eq!(open.wire_schema()[QUERY_PARAMS_KEY]["additionalProperties"], true);
    }
}
