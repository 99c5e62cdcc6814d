//! `quarry:retrieval@0.2.0` (`wit/v0.2`): 0.1 plus paged scans and item reads, named features
//! on hits, a `rerank` export and calls to other strategies.

use super::{CallContext, Called, Item as HostItem, PluginHit, Query as HostQuery, RawDescriptor, shared_collections, shared_imports};
use crate::index::Scored;
use crate::plugins::host_api::{CallState, GenerationSession};
use wasmtime::Store;
use wasmtime::component::Resource;

wasmtime::component::bindgen!({
    path: "../wit/v0.2",
    world: "plugin",
    imports: { default: trappable },
    with: { "quarry:retrieval/decoders.generation": crate::plugins::host_api::GenerationSession },
});

use quarry::retrieval::collections::{Entry, FieldValue, Page, StoredItem};
use quarry::retrieval::encoders::SlottedText;
use quarry::retrieval::log::Level;
use quarry::retrieval::types::{Context, Error, FieldKind, Hit, Item, Metric, Query, TokenSet};

fn hit(s: Scored) -> Hit {
    Hit { id: s.id, score: s.score, features: Vec::new() }
}

shared_imports!();

impl quarry::retrieval::collections::Host for CallState {
    shared_collections!();

    fn scan(&mut self, collection: String, field: String, after: Option<String>, limit: u32) -> Answer<Page> {
        answer(self.guard("scan", |s| s.scan(&collection, &field, after.as_deref(), limit)).map(|r| {
            r.map(|(entries, next)| Page { entries: entries.into_iter().map(|(id, value)| Entry { id, value: to_wit(value) }).collect(), next })
        }))
    }

    fn get_items(&mut self, collection: String, ids: Vec<String>) -> Answer<Vec<Option<StoredItem>>> {
        answer(self.guard("get-items", |s| s.get_items(&collection, &ids)).map(|r| {
            r.map(|items| items.into_iter().map(|i| i.map(|i| StoredItem { id: i.id, text: i.text, metadata: i.metadata.to_string() })).collect())
        }))
    }

    fn count(&mut self, collection: String) -> Answer<u64> {
        answer(self.guard("count", |s| s.count(&collection)))
    }
}

impl quarry::retrieval::strategies::Host for CallState {
    fn search(&mut self, strategy: String, collection: String, query: Query) -> Answer<Vec<Hit>> {
        let query = HostQuery { text: query.text, image: query.image, k: query.k, params: query.params };
        answer(self.guard("strategies.search", |s| s.call_strategy(&strategy, &collection, query)).map(|r| {
            r.map(|hits| {
                hits.into_iter()
                    .map(|h| Hit { id: h.id, score: h.score, features: h.features.into_iter().map(|(name, value)| quarry::retrieval::types::Feature { name, value }).collect() })
                    .collect()
            })
        }))
    }
}

fn context(ctx: &CallContext) -> Context {
    Context { collection: ctx.collection.clone(), config: ctx.config.clone() }
}

fn query(q: &HostQuery) -> Query {
    Query { text: q.text.clone(), image: q.image.clone(), k: q.k, params: q.params.clone() }
}

fn hits(result: Result<Vec<Hit>, Error>) -> Result<Vec<PluginHit>, super::StrategyError> {
    result
        .map(|hits| hits.into_iter().map(|h| PluginHit { id: h.id, score: h.score, features: h.features.into_iter().map(|f| (f.name, f.value)).collect() }).collect())
        .map_err(Into::into)
}

pub(super) fn describe(p: &Plugin, store: &mut Store<CallState>) -> wasmtime::Result<RawDescriptor> {
    let d = p.quarry_retrieval_strategy().call_describe(store)?;
    Ok(RawDescriptor {
        name: d.name,
        version: d.version,
        description: d.description,
        models: d.models,
        fields: d.fields.into_iter().map(|f| (f.name, field_schema(f.kind, f.metric))).collect(),
        config_schema: d.config_schema,
        reranks: d.reranks,
    })
}

pub(super) fn ingest(p: &Plugin, store: &mut Store<CallState>, ctx: &CallContext, items: &[HostItem]) -> Called<()> {
    let items: Vec<Item> = items.iter().map(|i| Item { id: i.id.clone(), text: i.text.clone(), image: i.image.clone(), metadata: i.metadata.clone() }).collect();
    Ok(p.quarry_retrieval_strategy().call_ingest(store, &context(ctx), &items)?.map_err(Into::into))
}

pub(super) fn build(p: &Plugin, store: &mut Store<CallState>, ctx: &CallContext) -> Called<()> {
    Ok(p.quarry_retrieval_strategy().call_build(store, &context(ctx))?.map_err(Into::into))
}

pub(super) fn search(p: &Plugin, store: &mut Store<CallState>, ctx: &CallContext, q: &HostQuery) -> Called<Vec<PluginHit>> {
    Ok(hits(p.quarry_retrieval_strategy().call_search(store, &context(ctx), &query(q))?))
}

pub(super) fn rerank(p: &Plugin, store: &mut Store<CallState>, ctx: &CallContext, q: &HostQuery, candidates: &[String]) -> Called<Vec<PluginHit>> {
    Ok(hits(p.quarry_retrieval_strategy().call_rerank(store, &context(ctx), &query(q), candidates)?))
}
