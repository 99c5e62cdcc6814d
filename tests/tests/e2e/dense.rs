//! Text-to-text retrieval through the `dense` WASM plugin on the real MiniLM models.

use quarry_host::capacity::Caller;
use quarry_cli::{DEMO_QUERIES, DEMO_SENTENCES};
use quarry_host::store::FieldKind;
use quarry_host::{HostConfig, NewItem, Quarry, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};

fn sentences() -> Vec<NewItem> {
    DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect()
}

fn assert_paraphrases_rank_first(host: &Quarry, collection: &str) {
    for (query, expected) in DEMO_QUERIES {
        let response = host.search(collection, &SearchRequest::text(query, 3)).unwrap();
        assert_eq!(response.hits.len(), 3);
        assert_eq!(response.hits[0].id, *expected, "query {query:?} ranked {:?}", response.hits);
        assert!(response.hits[0].score > response.hits[1].score);
        assert_eq!(response.hits[0].text.as_deref(), DEMO_SENTENCES.iter().find(|(id, _)| id == expected).map(|(_, t)| *t));
    }
}

#[test]
fn paraphrases_find_their_sentences_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let host = host(dir.path());
        add_model(&host, "minilm-l6");
        let dense = host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
        assert_eq!(dense.reference, "dense@0.3.0");
        assert_eq!(dense.contract, "quarry:retrieval@0.2.0");
        assert_eq!(dense.sdk.as_deref(), Some("quarry-sdk 0.1.0"));
        host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
        let mut progress = Vec::new();
        let report = host.ingest("docs", sentences(), |n| progress.push(n)).unwrap();
        assert_eq!(report.ingested, DEMO_SENTENCES.len());
        assert_eq!(progress.last(), Some(&DEMO_SENTENCES.len()));
        assert_paraphrases_rank_first(&host, "docs");
    }
    // A second host on the same directory finds the plugin, route, model and vectors on disk.
    let host = host(dir.path());
    assert_eq!(host.item_count("docs").unwrap(), DEMO_SENTENCES.len());
    assert_paraphrases_rank_first(&host, "docs");
}

#[test]
fn a_model_with_pooled_output_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "paraphrase-minilm-l3");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["paraphrase-minilm-l3"], serde_json::json!({"text-model": "paraphrase-minilm-l3"}))).unwrap();
    host.ingest("docs", sentences(), |_| {}).unwrap();
    assert_paraphrases_rank_first(&host, "docs");
}

#[test]
fn search_through_the_plugin_equals_the_host_api_directly() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", sentences(), |_| {}).unwrap();
    let query = "a musician who learned on his own";
    let via_plugin = host.search("docs", &SearchRequest::text(query, 5)).unwrap();
    let vector = host.models().embed_texts("minilm-l6", &[query.to_string()], &Caller::host()).unwrap().remove(0);
    let direct = host.nearest("docs", "embedding", &vector, 5, None).unwrap();
    assert_eq!(via_plugin.hits.iter().map(|h| (&h.id, h.score)).collect::<Vec<_>>(), direct.iter().map(|s| (&s.id, s.score)).collect::<Vec<_>>());
    assert_eq!(direct[0].id, "guitar");
}

#[test]
fn the_third_party_example_is_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    let example = host.add_plugin(&plugin("keyword-boost")).unwrap();
    assert_eq!(example.reference, "keyword-boost@0.2.0");
    let fields: Vec<(&str, FieldKind)> = example.descriptor.fields.iter().map(|(name, schema)| (name.as_str(), schema.kind)).collect();
    assert_eq!(fields, [("embedding", FieldKind::Vector), ("terms", FieldKind::Codes)]);
    host.set_route("docs", route("keyword-boost@0.2.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6", "candidates": 8}))).unwrap();
    host.ingest("docs", sentences(), |_| {}).unwrap();
    for (query, expected) in [("Vienna", "train"), ("espresso workday", "coffee"), ("goalkeeper penalty", "football")] {
        let response = host.search("docs", &SearchRequest::text(query, 3)).unwrap();
        assert_eq!(response.strategy, "keyword-boost@0.2.0");
        assert_eq!(response.hits[0].id, expected, "query {query:?}: {:?}", response.hits);
    }
}

#[test]
fn a_restarted_host_takes_plugins_from_the_compile_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig { cache_dir: Some(dir.path().join("cache")), ..HostConfig::new(dir.path().join("data")) };
    {
        let host = Quarry::open(config.clone()).unwrap();
        host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
        assert_eq!(host.compile_stats(), (1, 0), "the first start compiles the plugin");
    }
    let host = Quarry::open(config).unwrap();
    assert_eq!(host.compile_stats(), (0, 1), "the restart loads the compiled plugin from the cache");
    assert_eq!(host.plugin("dense@0.3.0").unwrap().descriptor.name, "dense");
}
