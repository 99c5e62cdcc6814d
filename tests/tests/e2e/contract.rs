//! Contract 0.2 end to end (paged scans, item reads, counts, hit features, `rerank`), and the
//! frozen 0.1: a plugin built against it loads and serves on this host, with grants enforced.

use quarry_host::plugins::{CallError, StrategyError};
use quarry_host::plugins::contract::Query;
use quarry_host::{NewItem, Quarry, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};
use serde_json::json;

fn fields_host(dir: &std::path::Path) -> Quarry {
    let host = host(dir);
    host.add_plugin(&plugin("quarry-test-fields")).unwrap();
    host.set_route("c", route("fields@0.1.0", &[], json!({}))).unwrap();
    let item = |id: &str, text: &str, meta: serde_json::Value| NewItem { metadata: meta, ..NewItem::text(id, text) };
    let items = vec![
        item("a", "alpha", json!({"point": [0.0, 0.0], "codes": [3, 1], "lang": "en"})),
        item("b", "bravo!", json!({"point": [1.0, 0.0], "codes": [5]})),
        item("c", "charlie", json!({"point": [3.0, 4.0], "codes": [7, 7]})),
        item("d", "delta", json!({"point": [10.0, 10.0]})),
        item("e", "echo", json!({"codes": [9]})),
    ];
    host.ingest("c", items, |_| {}).unwrap();
    host
}

fn raw(host: &Quarry, params: serde_json::Value) -> Vec<(String, f32)> {
    let (mut instance, ctx) = host.instance("c").unwrap();
    let query = Query { text: Some("probe".into()), image: None, k: 100, params: params.to_string() };
    instance.search(&ctx, &query).unwrap().into_iter().map(|h| (h.id, h.score)).collect()
}

#[test]
fn scans_item_reads_and_counts_through_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let host = fields_host(dir.path());
    // Pages of 2 walk every code field in id order: a, b, c, e (d has none).
    let want = [("a", 3.0), ("b", 5.0), ("c", 7.0), ("e", 9.0)].map(|(id, s)| (id.to_string(), s));
    for page in [1, 2, 3, 100] {
        assert_eq!(raw(&host, json!({"op": "scan", "page": page})), want, "pages of {page}");
    }
    assert_eq!(raw(&host, json!({"op": "count"})), [("count".to_string(), 5.0)]);
    // Item reads, in order, skipping unknown ids; with a feature.
    let request = SearchRequest { params: json!({"op": "get-items", "ids": ["c", "nope", "a"]}), ..SearchRequest::text("probe", 10) };
    let response = host.search("c", &request).unwrap();
    let got: Vec<(&str, f32, Option<&f32>)> = response.hits.iter().map(|h| (h.id.as_str(), h.score, h.features.get("has-lang"))).collect();
    assert_eq!(got, [("c", 7.0, Some(&0.0)), ("a", 5.0, Some(&1.0))], "scored by text length, `a` has a lang");
    // Calling another strategy needs the route's grant (tests/tests/e2e/strategy_calls.rs calls one).
    let request = SearchRequest { params: json!({"op": "call-strategy"}), ..SearchRequest::text("probe", 10) };
    match host.search("c", &request) {
        Err(CallError::Strategy { error: StrategyError::Denied(m), .. }) => assert!(m.contains("may not call strategy `dense@0.3.0`"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rerank_scores_the_given_candidates_and_is_checked_like_search() {
    let dir = tempfile::tempdir().unwrap();
    let host = fields_host(dir.path());
    assert!(host.plugin("fields@0.1.0").unwrap().descriptor.reranks);
    let request = SearchRequest { params: json!({"vector": [0.9, 0.1]}), ..SearchRequest::text("probe", 10) };
    let candidates: Vec<String> = ["c", "a", "b", "unknown", "a"].map(String::from).to_vec();
    let response = host.rerank("c", &request, &candidates).unwrap();
    let ids: Vec<&str> = response.hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["b", "a", "c"], "nearest to (0.9, 0.1) first; unknown ids have no point, duplicates count once");
    assert!((response.hits[0].features["distance"] - 0.02).abs() < 1e-6);
    // A strategy without rerank says so.
    host.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    host.set_route("docs", route("swap@1.0.0", &[], json!({}))).unwrap();
    assert!(!host.plugin("swap@1.0.0").unwrap().descriptor.reranks);
    match host.rerank("docs", &SearchRequest::text("q", 3), &candidates) {
        Err(CallError::Strategy { error: StrategyError::Unsupported(_), .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_plugin_built_against_0_1_loads_serves_and_is_held_to_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    let legacy = host.add_plugin(&plugin("quarry-test-legacy-v01")).unwrap();
    assert_eq!((legacy.reference.as_str(), legacy.contract.as_str()), ("legacy@0.1.0", "quarry:retrieval@0.1.0"));
    assert_eq!(legacy.sdk, None, "built without the SDK");
    host.set_route("old", route("legacy@0.1.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    let items = quarry_cli::DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect();
    host.ingest("old", items, |_| {}).unwrap();
    for (query, expected) in quarry_cli::DEMO_QUERIES {
        let response = host.search("old", &SearchRequest::text(query, 3)).unwrap();
        assert_eq!(response.strategy, "legacy@0.1.0");
        assert_eq!(response.hits[0].id, *expected, "{query}");
        assert!(response.hits[0].features.is_empty(), "0.1 hits have no features");
    }
    match host.search("old", &SearchRequest::text("ungranted", 3)) {
        Err(CallError::Strategy { error: StrategyError::Denied(m), .. }) => assert!(m.contains("not-granted-model"), "{m}"),
        other => panic!("{other:?}"),
    }
    match host.rerank("old", &SearchRequest::text("q", 3), &["rust".to_string()]) {
        Err(CallError::Strategy { error: StrategyError::Unsupported(m), .. }) => assert!(m.contains("0.1"), "{m}"),
        other => panic!("{other:?}"),
    }
}
