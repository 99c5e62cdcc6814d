//! Per-call overhead and instantiation of the same two-tower strategy written in Rust
//! (plugins/dense), Python (examples/python-dense, componentize-py) and JavaScript
//! (examples/js-dense, ComponentizeJS), printed as a table (not pass/fail).
//!
//! `cargo bench -p quarry-tests --bench foreign_overhead`
//!
//! Each does the same work per search: embed the query with MiniLM (in the host), then one
//! `nearest` over 20 items. "overhead" is the search through the plugin on a kept instance
//! minus the same embed + nearest through the host API from Rust.

use quarry_cli::DEMO_SENTENCES;
use quarry_host::capacity::Caller;
use quarry_host::plugins::contract::Query;
use quarry_host::{Limits, NewItem, Quarry, SearchRequest};
use quarry_tests::foreign::{js_dense, python_dense};
use quarry_tests::{add_model, plugin, route};
use std::time::{Duration, Instant};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

const QUERIES: &[&str] = &["weekly homemade loaf baking", "a musician who learned on his own", "ash from an eruption buried the towns"];

struct Row {
    lang: &'static str,
    size_mb: f64,
    compile: Duration,
    instantiate: Duration,
    call: Duration,
    fresh: Duration,
}

fn measure(host: &Quarry, lang: &'static str, wasm: &[u8], reference: &str) -> Row {
    let collection = format!("docs-{lang}");
    let before = host.compile_stats().0;
    let start = Instant::now();
    host.add_plugin(wasm).unwrap();
    let compile = start.elapsed();
    let compiled = host.compile_stats().0 > before;
    host.set_route(&collection, route(reference, &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    let items: Vec<NewItem> = DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect();
    host.ingest(&collection, items, |_| {}).unwrap();

    // Instantiation: a fresh store and instance, then dropped.
    let mut samples = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let instance = host.instance(&collection).unwrap();
        samples.push(start.elapsed());
        drop(instance);
    }
    let instantiate = median(samples);

    // A search on a kept instance.
    let (mut instance, ctx) = host.instance(&collection).unwrap();
    let queries: Vec<Query> =
        QUERIES.iter().map(|q| Query { text: Some(q.to_string()), image: None, k: 3, params: "{}".into() }).collect();
    for q in &queries {
        instance.search(&ctx, q).unwrap();
    }
    let mut samples = Vec::new();
    for _ in 0..100 {
        for q in &queries {
            let start = Instant::now();
            instance.search(&ctx, q).unwrap();
            samples.push(start.elapsed());
        }
    }
    let call = median(samples);
    drop(instance);

    // A whole search as callers make it (a fresh instance per call).
    let mut samples = Vec::new();
    for _ in 0..100 {
        for q in QUERIES {
            let start = Instant::now();
            host.search(&collection, &SearchRequest::text(q, 3)).unwrap();
            samples.push(start.elapsed());
        }
    }
    let fresh = median(samples);
    let compile = if compiled { compile } else { Duration::ZERO };
    Row { lang, size_mb: wasm.len() as f64 / (1 << 20) as f64, compile, instantiate, call, fresh }
}

fn main() {
    // Its own compile cache, so compile times are measured.
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut config = quarry_host::HostConfig::new(dir.path());
    config.cache_dir = Some(cache.path().to_path_buf());
    config.limits = Limits::default();
    let host = Quarry::open(config).unwrap();
    add_model(&host, "minilm-l6");

    let rows = [
        measure(&host, "rust", &plugin("quarry-plugin-dense"), "dense@0.3.0"),
        measure(&host, "python", python_dense(), "dense-py@0.1.0"),
        measure(&host, "js", js_dense(), "dense-js@0.1.0"),
    ];

    // The same work through the host API from Rust: embed the query, then nearest.
    host.set_route("docs-api", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs-api", DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect(), |_| {}).unwrap();
    let mut samples = Vec::new();
    for _ in 0..100 {
        for q in QUERIES {
            let start = Instant::now();
            let vector = host.models().embed_texts("minilm-l6", &[q.to_string()], &Caller::host()).unwrap().remove(0);
            host.nearest("docs-api", "embedding", &vector, 3, None).unwrap();
            samples.push(start.elapsed());
        }
    }
    let direct = median(samples);

    println!("same strategy (dense: embed the query, one nearest over 20 items), medians:");
    println!("| language | component | compile (once, cached) | instantiate | search, kept instance | overhead vs host API | search, fresh instance |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} MB | {:.0} ms | {:.3} ms | {:.3} ms | {:+.3} ms | {:.3} ms |",
            r.lang,
            r.size_mb,
            ms(r.compile),
            ms(r.instantiate),
            ms(r.call),
            ms(r.call) - ms(direct),
            ms(r.fresh)
        );
    }
    println!("host API from Rust (embed + nearest): {:.3} ms", ms(direct));
}
