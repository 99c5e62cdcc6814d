//! The versions of the contract this host implements (`wit/v0.1`, `wit/v0.2`): each a thin
//! binding that converts its types and calls the host's imports ([`super::host_api`]), and
//! what the host calls on a plugin's exports, whatever version it was built against.
//!
//! Every released version stays loadable with the same grants enforced: a 0.1 plugin runs on
//! this host next to 0.2 ones.

pub mod v0_1;
pub mod v0_2;

use super::host_api::CallState;
use crate::printable::printable;
use crate::store::FieldSchema;
use anyhow::{Result, bail};
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

/// The contract package; plugins export `quarry:retrieval/strategy@<version>`.
pub const PACKAGE: &str = "quarry:retrieval";
/// The versions this host implements, oldest first; each stands for its `MAJOR.MINOR.x` line.
pub const VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// Why a strategy call (or a host import) failed, the same in every contract version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrategyError {
    /// The host or the strategy does not back the capability; the payload names it.
    Unsupported(String),
    /// The caller was not granted the model, collection or strategy it named.
    Denied(String),
    /// An argument was malformed or over a limit; the payload says which and why.
    InvalidInput(String),
    /// A named item, field, model or collection does not exist.
    NotFound(String),
    /// Inference failed inside the model runtime.
    Model(String),
    /// Anything else.
    Internal(String),
}

impl std::fmt::Display for StrategyError {
    /// The message is the plugin's own (or the host's, relayed): printed with control characters
    /// escaped and cut to a readable length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, message) = match self {
            StrategyError::Unsupported(m) => ("unsupported", m),
            StrategyError::Denied(m) => ("denied", m),
            StrategyError::InvalidInput(m) => ("invalid input", m),
            StrategyError::NotFound(m) => ("not found", m),
            StrategyError::Model(m) => ("model error", m),
            StrategyError::Internal(m) => ("internal error", m),
        };
        write!(f, "{kind}: {}", printable(message, 2000))
    }
}

/// Every call receives the collection it works on and the route's config (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct CallContext {
    pub collection: String,
    pub config: String,
}

/// An item to ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub text: Option<String>,
    pub image: Option<Vec<u8>>,
    /// A JSON object.
    pub metadata: String,
}

/// A search request.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub text: Option<String>,
    pub image: Option<Vec<u8>>,
    pub k: u32,
    /// A JSON object of per-query parameters.
    pub params: String,
}

/// A hit as a strategy returned it, with its named features (none from 0.1 plugins).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginHit {
    pub id: String,
    pub score: f32,
    pub features: Vec<(String, f32)>,
}

/// What a plugin's `describe` returned, before the host checks it.
#[derive(Debug, Clone)]
pub struct RawDescriptor {
    pub name: String,
    pub version: String,
    pub description: String,
    pub models: Vec<String>,
    pub fields: Vec<(String, FieldSchema)>,
    pub config_schema: String,
    pub reranks: bool,
}

/// The answer of a call into a plugin: a trap, or what the strategy returned.
pub type Called<T> = wasmtime::Result<Result<T, StrategyError>>;

/// Link every version's imports (and WASI) into `linker`.
pub fn add_to_linker(linker: &mut Linker<CallState>) -> Result<()> {
    v0_1::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |state| state)?;
    v0_2::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |state| state)?;
    Ok(())
}

/// The contract version a component's `strategy` export was built against, or why it cannot
/// run here.
pub fn exported_version(exports: &[String]) -> Result<&'static str> {
    let prefix = format!("{PACKAGE}/strategy@");
    let Some(export) = exports.iter().find(|name| name.starts_with(&prefix)) else {
        bail!(
            "the component does not export `{prefix}{}` (it exports: {}); is it a Quarry strategy? Export one with `quarry_sdk::export_strategy!`",
            VERSIONS[VERSIONS.len() - 1],
            if exports.is_empty() { "nothing".to_string() } else { exports.iter().map(|e| printable(e, 100)).collect::<Vec<_>>().join(", ") }
        );
    };
    let version = &export[prefix.len()..];
    match line_of(version) {
        Some(v) => Ok(v),
        None => bail!(
            "the plugin was built against {PACKAGE}@{}, but this host implements {}; rebuild it with a matching quarry-sdk \
             or run it on a host that supports {}",
            printable(version, 40),
            supported(),
            printable(version, 40)
        ),
    }
}

/// The implemented version whose `MAJOR.MINOR` line `version` belongs to.
pub fn line_of(version: &str) -> Option<&'static str> {
    let line = |v: &str| {
        let mut parts = v.split('.');
        (parts.next().map(str::to_string), parts.next().map(str::to_string))
    };
    VERSIONS.iter().copied().find(|v| line(v) == line(version) && semver::Version::parse(version).is_ok())
}

/// "quarry:retrieval@0.1.x and @0.2.x", for messages.
pub fn supported() -> String {
    VERSIONS.iter().map(|v| format!("{PACKAGE}@{}.x", v.rsplit_once('.').map_or(*v, |(line, _)| line))).collect::<Vec<_>>().join(" and ")
}

/// A component pre-linked for its contract version.
pub enum Pre {
    V0_1(v0_1::PluginPre<CallState>),
    V0_2(v0_2::PluginPre<CallState>),
}

impl Pre {
    /// Pre-link `component`, built against `version` (see [`exported_version`]).
    pub fn new(linker: &Linker<CallState>, component: &Component, version: &str) -> Result<Self> {
        let pre = linker.instantiate_pre(component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(match version {
            "0.1.0" => Pre::V0_1(v0_1::PluginPre::new(pre).map_err(|e| anyhow::anyhow!("{e:#}"))?),
            _ => Pre::V0_2(v0_2::PluginPre::new(pre).map_err(|e| anyhow::anyhow!("{e:#}"))?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V0_1(pre) => Instance::V0_1(pre.instantiate(store)?),
            Pre::V0_2(pre) => Instance::V0_2(pre.instantiate(store)?),
        })
    }
}

/// A plugin instance, whatever version it was built against.
pub enum Instance {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
}

impl Instance {
    pub fn describe(&self, store: &mut Store<CallState>) -> wasmtime::Result<RawDescriptor> {
        match self {
            Instance::V0_1(p) => v0_1::describe(p, store),
            Instance::V0_2(p) => v0_2::describe(p, store),
        }
    }

    pub fn ingest(&self, store: &mut Store<CallState>, ctx: &CallContext, items: &[Item]) -> Called<()> {
        match self {
            Instance::V0_1(p) => v0_1::ingest(p, store, ctx, items),
            Instance::V0_2(p) => v0_2::ingest(p, store, ctx, items),
        }
    }

    pub fn build(&self, store: &mut Store<CallState>, ctx: &CallContext) -> Called<()> {
        match self {
            Instance::V0_1(p) => v0_1::build(p, store, ctx),
            Instance::V0_2(p) => v0_2::build(p, store, ctx),
        }
    }

    pub fn search(&self, store: &mut Store<CallState>, ctx: &CallContext, query: &Query) -> Called<Vec<PluginHit>> {
        match self {
            Instance::V0_1(p) => v0_1::search(p, store, ctx, query),
            Instance::V0_2(p) => v0_2::search(p, store, ctx, query),
        }
    }

    /// Score `candidates` for the query; 0.1 plugins have no `rerank` and answer `unsupported`.
    pub fn rerank(&self, store: &mut Store<CallState>, ctx: &CallContext, query: &Query, candidates: &[String]) -> Called<Vec<PluginHit>> {
        match self {
            Instance::V0_1(_) => Ok(Err(StrategyError::Unsupported("rerank: the plugin was built against quarry:retrieval@0.1, which has no rerank".into()))),
            Instance::V0_2(p) => v0_2::rerank(p, store, ctx, query, candidates),
        }
    }
}

/// The imports both versions share, bound for one version. Expanded inside each version's
/// module, where `Error`, `TokenSet`, `Hit`, `FieldValue`, `SlottedText`, `Level` and `hit`
/// name that version's types.
macro_rules! shared_imports {
    () => {
        type Answer<T> = wasmtime::Result<Result<T, Error>>;

        fn answer<T>(r: crate::plugins::host_api::Answer<T>) -> Answer<T> {
            r.map(|r| r.map_err(Error::from))
        }

        impl From<crate::plugins::contract::StrategyError> for Error {
            fn from(e: crate::plugins::contract::StrategyError) -> Self {
                use crate::plugins::contract::StrategyError as E;
                match e {
                    E::Unsupported(m) => Error::Unsupported(m),
                    E::Denied(m) => Error::Denied(m),
                    E::InvalidInput(m) => Error::InvalidInput(m),
                    E::NotFound(m) => Error::NotFound(m),
                    E::Model(m) => Error::Model(m),
                    E::Internal(m) => Error::Internal(m),
                }
            }
        }

        impl From<Error> for crate::plugins::contract::StrategyError {
            fn from(e: Error) -> Self {
                use crate::plugins::contract::StrategyError as E;
                match e {
                    Error::Unsupported(m) => E::Unsupported(m),
                    Error::Denied(m) => E::Denied(m),
                    Error::InvalidInput(m) => E::InvalidInput(m),
                    Error::NotFound(m) => E::NotFound(m),
                    Error::Model(m) => E::Model(m),
                    Error::Internal(m) => E::Internal(m),
                }
            }
        }

        fn tokens(t: crate::plugins::host_api::Tokens) -> TokenSet {
            TokenSet { dim: t.dim, data: t.data }
        }

        fn to_store(value: FieldValue) -> crate::store::FieldValue {
            match value {
                FieldValue::Vector(v) => crate::store::FieldValue::Vector(v),
                FieldValue::Tokens(t) => crate::store::FieldValue::Tokens { dim: t.dim, data: t.data },
                FieldValue::Codes(c) => crate::store::FieldValue::Codes(c),
                FieldValue::Blob(b) => crate::store::FieldValue::Blob(b),
            }
        }

        fn to_wit(value: crate::store::FieldValue) -> FieldValue {
            match value {
                crate::store::FieldValue::Vector(v) => FieldValue::Vector(v),
                crate::store::FieldValue::Tokens { dim, data } => FieldValue::Tokens(TokenSet { dim, data }),
                crate::store::FieldValue::Codes(c) => FieldValue::Codes(c),
                crate::store::FieldValue::Blob(b) => FieldValue::Blob(b),
            }
        }

        fn field_schema(kind: FieldKind, metric: Option<Metric>) -> crate::store::FieldSchema {
            let kind = match kind {
                FieldKind::Vector => crate::store::FieldKind::Vector,
                FieldKind::Tokens => crate::store::FieldKind::Tokens,
                FieldKind::Codes => crate::store::FieldKind::Codes,
                FieldKind::Blob => crate::store::FieldKind::Blob,
            };
            let metric = match metric {
                None | Some(Metric::InnerProduct) => crate::store::Metric::InnerProduct,
                Some(Metric::Cosine) => crate::store::Metric::Cosine,
                Some(Metric::L2) => crate::store::Metric::L2,
            };
            crate::store::FieldSchema::new(kind, metric)
        }

        impl quarry::retrieval::types::Host for CallState {}

        impl quarry::retrieval::encoders::Host for CallState {
            fn embed_texts(&mut self, model: String, texts: Vec<String>) -> Answer<Vec<Vec<f32>>> {
                answer(self.guard("embed-texts", |s| s.embed_texts(&model, &texts)))
            }
            fn embed_images(&mut self, model: String, images: Vec<Vec<u8>>) -> Answer<Vec<Vec<f32>>> {
                answer(self.guard("embed-images", |s| s.embed_images(&model, &images)))
            }
            fn text_tokens(&mut self, model: String, texts: Vec<String>) -> Answer<Vec<TokenSet>> {
                answer(self.guard("text-tokens", |s| s.text_tokens(&model, &texts)).map(|r| r.map(|sets| sets.into_iter().map(tokens).collect())))
            }
            fn image_tokens(&mut self, model: String, images: Vec<Vec<u8>>) -> Answer<Vec<TokenSet>> {
                answer(self.guard("image-tokens", |s| s.image_tokens(&model, &images)).map(|r| r.map(|sets| sets.into_iter().map(tokens).collect())))
            }
            fn embed_texts_with_slots(&mut self, model: String, texts: Vec<SlottedText>) -> Answer<Vec<Vec<f32>>> {
                let texts = texts.into_iter().map(|t| (t.template, t.slots)).collect();
                answer(self.guard("embed-texts-with-slots", |s| s.embed_texts_with_slots(&model, texts)))
            }
            fn project(&mut self, model: String, vectors: Vec<Vec<f32>>) -> Answer<Vec<Vec<f32>>> {
                answer(self.guard("project", |s| s.project(&model, &vectors)))
            }
        }

        impl quarry::retrieval::decoders::Host for CallState {}

        impl quarry::retrieval::decoders::HostGeneration for CallState {
            fn start(&mut self, model: String, prompt: String) -> Answer<Resource<GenerationSession>> {
                answer(self.guard("generation.start", |s| s.generation_start(&model, &prompt)))
            }
            fn next_logprobs(&mut self, session: Resource<GenerationSession>, prefixes: Vec<Vec<u32>>) -> Answer<Vec<Vec<f32>>> {
                answer(self.guard("generation.next-logprobs", |s| s.next_logprobs(&session, &prefixes)))
            }
            fn reorder(&mut self, session: Resource<GenerationSession>, beams: Vec<u32>) -> Answer<()> {
                answer(self.guard("generation.reorder", |s| s.reorder(&session, &beams)))
            }
            fn drop(&mut self, session: Resource<GenerationSession>) -> wasmtime::Result<()> {
                self.generation_drop(session)
            }
        }

        impl quarry::retrieval::rankers::Host for CallState {
            fn late_interaction(&mut self, collection: String, field: String, query: TokenSet, candidates: Vec<String>) -> Answer<Vec<Hit>> {
                let query = crate::plugins::host_api::Tokens { dim: query.dim, data: query.data };
                answer(self.guard("late-interaction", |s| s.late_interaction(&collection, &field, &query, &candidates)).map(|r| r.map(|hits| hits.into_iter().map(hit).collect())))
            }
            fn cross_score(&mut self, model: String, query: String, texts: Vec<String>) -> Answer<Vec<f32>> {
                answer(self.guard("cross-score", |s| s.cross_score(&model, &query, &texts)))
            }
        }

        impl quarry::retrieval::log::Host for CallState {
            fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
                use crate::plugins::host_api::LogLevel;
                let level = match level {
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                CallState::log(self, level, &message);
                Ok(())
            }
            fn counter(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
                CallState::counter(self, &name, value);
                Ok(())
            }
        }
    };
}

/// The collection imports both versions share, as methods of that version's
/// `collections::Host` impl.
macro_rules! shared_collections {
    () => {
        fn put_field(&mut self, collection: String, id: String, field: String, value: FieldValue) -> Answer<()> {
            answer(self.guard("put-field", |s| s.put_field(&collection, id, field, to_store(value))))
        }
        fn get_field(&mut self, collection: String, id: String, field: String) -> Answer<Option<FieldValue>> {
            answer(self.guard("get-field", |s| s.get_field(&collection, &id, &field)).map(|r| r.map(|v| v.map(to_wit))))
        }
        fn nearest(&mut self, collection: String, field: String, query: Vec<f32>, k: u32, filter: Option<String>) -> Answer<Vec<Hit>> {
            answer(self.guard("nearest", |s| s.nearest(&collection, &field, &query, k, filter.as_deref())).map(|r| r.map(|hits| hits.into_iter().map(hit).collect())))
        }
        fn next_codes(&mut self, collection: String, field: String, prefixes: Vec<Vec<u32>>) -> Answer<Vec<Vec<u32>>> {
            answer(self.guard("next-codes", |s| s.next_codes(&collection, &field, &prefixes)))
        }
        fn items_with_codes(&mut self, collection: String, field: String, codes: Vec<u32>) -> Answer<Vec<String>> {
            answer(self.guard("items-with-codes", |s| s.items_with_codes(&collection, &field, &codes)))
        }
        fn put_blob(&mut self, collection: String, name: String, data: Vec<u8>) -> Answer<()> {
            answer(self.guard("put-blob", |s| s.put_blob(&collection, name, data)))
        }
        fn get_blob(&mut self, collection: String, name: String) -> Answer<Option<Vec<u8>>> {
            answer(self.guard("get-blob", |s| s.get_blob(&collection, &name)))
        }
    };
}

pub(crate) use {shared_collections, shared_imports};

#[cfg(test)]
mod tests {
    /// The SDK's `wit/` links to the frozen `wit/v0.2` (packaged as a file, so the published crate
    /// builds alone); its CONTRACT constant must name that version.
    #[test]
    fn the_sdk_names_the_contract_it_carries() {
        let sdk_lib = include_str!("../../../../sdk/src/lib.rs");
        assert!(sdk_lib.contains("pub const CONTRACT: &str = \"quarry:retrieval@0.2.0\";"), "the SDK's CONTRACT names the contract it carries");
    }
}
