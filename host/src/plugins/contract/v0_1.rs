//! `quarry:retrieval@0.1.0` (`wit/v0.1`), frozen: plugins built against it keep loading, with the
//! same grants enforced.

use super::{CallContext, Called, Item as HostItem, PluginHit, Query as HostQuery, RawDescriptor, shared_collections, shared_imports};
use crate::index::Scored;
use crate::plugins::host_api::{CallState, GenerationSession};
use wasmtime::Store;
use wasmtime::component::Resource;

wasmtime::component::bindgen!({
    path: "../wit/v0.1",
    world: "plugin",
    imports: { default: trappable },
    with: { "quarry:retrieval/decoders.generation": crate::plugins::host_api::GenerationSession },
});

use exports::quarry::retrieval::strategy::{Context, Item, Query};
use quarry::retrieval::collections::FieldValue;
use quarry::retrieval::encoders::SlottedText;
use quarry::retrieval::log::Level;
use quarry::retrieval::types::{Error, FieldKind, Hit, Metric, TokenSet};

fn hit(s: Scored) -> Hit {
    Hit { id: s.id, score: s.score }
}

shared_imports!();

impl quarry::retrieval::collections::Host for CallState {
    shared_collections!();
}

fn context(ctx: &CallContext) -> Context {
    Context { collection: ctx.collection.clone(), config: ctx.config.clone() }
}

fn query(q: &HostQuery) -> Query {
    Query { text: q.text.clone(), image: q.image.clone(), k: q.k, params: q.params.clone() }
}

fn hits(result: Result<Vec<Hit>, Error>) -> Result<Vec<PluginHit>, super::StrategyError> {
    result.map(|hits| hits.into_iter().map(|h| PluginHit { id: h.id, score: h.score, features: Vec::new() }).collect()).map_err(Into::into)
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
        reranks: false,
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
