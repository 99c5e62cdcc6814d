//! Per-token features from the real MiniLM model, and the two-stage `tgdt` strategy over them.

use quarry_host::capacity::Caller;
use quarry_cli::{DEMO_QUERIES, DEMO_SENTENCES};
use quarry_host::{NewItem, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};

#[test]
fn text_tokens_have_one_normalised_row_per_real_token() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    let texts = ["hello world".to_string(), "a considerably longer sentence about trains".to_string()];
    let sets = host.models().text_tokens("minilm-l6", &texts, &Caller::host()).unwrap();
    assert_eq!(sets.len(), 2);
    // [CLS] hello world [SEP] = 4 tokens; padding of the shorter text is removed.
    let counts: Vec<usize> = sets.iter().map(|(dim, data)| data.len() / dim).collect();
    assert_eq!(counts[0], 4);
    assert!(counts[1] > counts[0]);
    for (dim, data) in &sets {
        assert_eq!(*dim, 384);
        assert_eq!(data.len() % dim, 0);
        for token in data.chunks_exact(*dim) {
            let norm: f32 = token.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "token rows are L2-normalised");
        }
    }
    // The same text alone gives the same token rows as in a padded batch.
    let alone = host.models().text_tokens("minilm-l6", &texts[..1], &Caller::host()).unwrap();
    let max_diff = alone[0].1.iter().zip(&sets[0].1).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "padding changed the tokens by {max_diff}");
}

#[test]
fn a_pooled_only_model_explains_it_has_no_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "paraphrase-minilm-l3");
    let err = host.models().text_tokens("paraphrase-minilm-l3", &["x".to_string()], &Caller::host()).unwrap_err().to_string();
    assert!(err.contains("no per-token output") && err.contains("token_output"), "{err}");
}

#[test]
fn tgdt_reranks_global_candidates_by_late_interaction() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    let tgdt = host.add_plugin(&plugin("quarry-plugin-tgdt")).unwrap();
    assert_eq!(tgdt.reference, "tgdt@0.2.0");
    host.set_route("docs", route("tgdt@0.2.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6", "candidates": {"texts": 6}}))).unwrap();
    host.ingest("docs", DEMO_SENTENCES.iter().map(|(id, t)| NewItem::text(id, t)).collect(), |_| {}).unwrap();
    for (query, expected) in DEMO_QUERIES {
        let response = host.search("docs", &SearchRequest::text(query, 3)).unwrap();
        assert_eq!(response.hits[0].id, *expected, "{query}: {:?}", response.hits);
        // final = global + 10 x local, local a MaxSim sum over the query's content tokens.
        let hit = &response.hits[0];
        let (global, local) = (hit.features["global"], hit.features["local"]);
        assert!((hit.score - (global + 10.0 * local)).abs() < 1e-3 && local > 1.0, "{hit:?}");
    }
    // The fine stage only re-ranks what the coarse stage (6 global neighbours) found.
    let query = "someone learning an instrument";
    let vector = host.models().embed_texts("minilm-l6", &[query.to_string()], &Caller::host()).unwrap().remove(0);
    let coarse: Vec<String> = host.nearest("docs", "text-global", &vector, 6, None).unwrap().into_iter().map(|s| s.id).collect();
    let fine = host.search("docs", &SearchRequest::text(query, 3)).unwrap().hits;
    assert_eq!(fine.len(), 3);
    assert!(fine.iter().all(|h| coarse.contains(&h.id)), "{fine:?} not within {coarse:?}");
}
