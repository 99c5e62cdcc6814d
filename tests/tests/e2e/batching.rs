//! Dynamic batching: concurrent callers share runs and get the results they would get alone.

use quarry_host::capacity::Caller;
use quarry_host::{NewItem, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};
use std::sync::Arc;

#[test]
fn sixty_four_concurrent_callers_get_their_own_results() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(host(dir.path()));
    add_model(&host, "minilm-l6");
    let texts: Vec<String> = (0..64).map(|i| format!("sentence number {i} is about {}", ["trains", "bread", "whales", "chess"][i % 4])).collect();
    let alone: Vec<Vec<f32>> = texts.iter().map(|t| host.models().embed_texts("minilm-l6", std::slice::from_ref(t), &Caller::host()).unwrap().remove(0)).collect();
    let (runs_before, inputs_before) = host.models().run_stats("minilm-l6").unwrap();
    assert_eq!((runs_before, inputs_before), (64, 64), "alone, each call is its own run");

    let together: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let callers: Vec<_> = texts.iter().map(|t| {
            let host = host.clone();
            scope.spawn(move || host.models().embed_texts("minilm-l6", std::slice::from_ref(t), &Caller::host()).unwrap().remove(0))
        }).collect();
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let (runs, inputs) = host.models().run_stats("minilm-l6").unwrap();
    assert_eq!(inputs - inputs_before, 64);
    assert!(runs - runs_before < 64, "64 concurrent callers shared runs ({} runs)", runs - runs_before);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "caller {i} got a different embedding (max diff {diff})");
    }
}

#[test]
fn concurrent_plugin_searches_are_batched_and_correct() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(host(dir.path()));
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", quarry_cli::DEMO_SENTENCES.iter().map(|(id, t)| NewItem::text(id, t)).collect(), |_| {}).unwrap();
    let (runs_before, _) = host.models().run_stats("minilm-l6").unwrap();
    let tops: Vec<(String, String)> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..64)
            .map(|i| {
                let host = host.clone();
                scope.spawn(move || {
                    let (query, expected) = quarry_cli::DEMO_QUERIES[i % quarry_cli::DEMO_QUERIES.len()];
                    let hits = host.search("docs", &SearchRequest::text(query, 1)).unwrap().hits;
                    (hits[0].id.clone(), expected.to_string())
                })
            })
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (got, expected) in tops {
        assert_eq!(got, expected);
    }
    let (runs, _) = host.models().run_stats("minilm-l6").unwrap();
    assert!(runs - runs_before < 64, "64 concurrent searches shared model runs ({} runs)", runs - runs_before);
}
