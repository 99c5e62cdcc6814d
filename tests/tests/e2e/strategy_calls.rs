//! Strategies calling strategies through the host (`strategies.search`): the callee runs as the
//! called collection's route runs it, only when the caller's route grants it, and a cycle of
//! calls ends with an error instead of a hang.

use quarry_cli::{DEMO_QUERIES, DEMO_SENTENCES};
use quarry_host::{Grants, NewItem, Route, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};
use std::time::{Duration, Instant};

fn demo_items() -> Vec<NewItem> {
    DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect()
}

fn delegate(config: serde_json::Value, collections: &[&str], strategies: &[&str]) -> Route {
    Route {
        strategy: "delegate@1.0.0".into(),
        config,
        grants: Grants { collections: collections.iter().map(|c| c.to_string()).collect(), strategies: strategies.iter().map(|s| s.to_string()).collect(), ..Default::default() },
    }
}

/// A host with `docs` on dense over the demo sentences, and the delegate plugin added.
fn docs_with_delegate(dir: &std::path::Path) -> quarry_host::Quarry {
    let host = host(dir);
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.add_plugin(&plugin("quarry-test-delegate")).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", demo_items(), |_| {}).unwrap();
    host
}

#[test]
fn a_strategy_calls_another_as_the_called_collections_route_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = docs_with_delegate(dir.path());
    // `front` holds the same items and answers through dense on `docs`; it grants no model.
    host.set_route("front", delegate(serde_json::json!({"callee": "dense@0.3.0", "collection": "docs"}), &["docs"], &["dense@0.3.0"])).unwrap();
    host.ingest("front", demo_items(), |_| {}).unwrap();
    for (query, expected) in DEMO_QUERIES {
        let direct = host.search("docs", &SearchRequest::text(query, 4)).unwrap();
        let through = host.search("front", &SearchRequest::text(query, 4)).unwrap();
        assert_eq!(through.strategy, "delegate@1.0.0");
        assert_eq!(through.hits[0].id, *expected, "{query}: {:?}", through.hits);
        let ids = |r: &quarry_host::SearchResponse| r.hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&through), ids(&direct), "{query}");
        for (t, d) in through.hits.iter().zip(&direct.hits) {
            assert!((t.score - (d.score + 1.0)).abs() < 1e-5 && (t.features["callee"] - d.score).abs() < 1e-5, "{t:?} vs {d:?}");
        }
    }
}

#[test]
fn calls_need_a_grant_a_route_running_the_callee_and_no_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let host = docs_with_delegate(dir.path());
    let search = |collection: &str| host.search(collection, &SearchRequest::text("anything", 3)).unwrap_err().to_string();

    host.set_route("ungranted", delegate(serde_json::json!({"callee": "dense@0.3.0", "collection": "docs"}), &["docs"], &[])).unwrap();
    let err = search("ungranted");
    assert!(err.contains("may not call strategy `dense@0.3.0`"), "{err}");

    // Granted, but `docs` does not run the callee.
    host.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    host.set_route("elsewhere", delegate(serde_json::json!({"callee": "swap@1.0.0", "collection": "docs"}), &["docs"], &["swap@1.0.0"])).unwrap();
    let err = search("elsewhere");
    assert!(err.contains("has no route running `swap@1.0.0`"), "{err}");

    // A strategy calling itself through its own route.
    host.set_route("loop", delegate(serde_json::json!({"callee": "delegate@1.0.0"}), &[], &["delegate@1.0.0"])).unwrap();
    let started = Instant::now();
    let err = search("loop");
    assert!(err.contains("cycle") && err.contains("delegate@1.0.0 → delegate@1.0.0"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "the cycle took {:?} to fail", started.elapsed());

    // Granting a strategy the tenant does not have is refused when the route is set.
    let err = host.set_route("bad", delegate(serde_json::json!({"callee": "nope@1.0.0"}), &[], &["nope@1.0.0"])).unwrap_err();
    assert!(format!("{err:#}").contains("nope@1.0.0"), "{err:#}");
}
