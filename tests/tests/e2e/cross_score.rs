//! `rankers.cross-score` on a designed cross-encoder whose score is the attribute words a query
//! and a text share: right only if the pair reaches the model as two segments.

use quarry_host::capacity::Caller;
use quarry_host::SearchRequest;
use quarry_tests::{add_test_model, host, plugin, route};
use serde_json::json;

#[test]
fn a_cross_encoder_scores_query_text_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_test_model(&host, "cross-attributes");
    let texts = ["a blue square", "a red circle", "red square", "a green triangle"].map(String::from);
    let scores = host.models().cross_score("cross-attributes", "a red circle", &texts, &Caller::host()).unwrap();
    assert_eq!(scores, [0.0, 2.0, 1.0, 0.0], "shared attribute words per text");
    // More texts than one run takes (`batch.max_batch`) keep their order.
    let many: Vec<String> = (0..100).map(|i| if i % 3 == 0 { "red circle".to_string() } else { "blue square".to_string() }).collect();
    let scores = host.models().cross_score("cross-attributes", "red circle", &many, &Caller::host()).unwrap();
    assert!(scores.iter().enumerate().all(|(i, &s)| s == if i % 3 == 0 { 2.0 } else { 0.0 }), "{scores:?}");

    // Through a plugin, with the grant checked.
    host.add_plugin(&plugin("quarry-test-fields")).unwrap();
    host.set_route("c", route("fields@0.1.0", &["cross-attributes"], json!({}))).unwrap();
    // The texts are the collection's items, so the hits naming them are kept.
    host.ingest("c", texts.iter().map(|t| quarry_host::NewItem::text(t, t)).collect(), |_| {}).unwrap();
    let request = |model: &str| SearchRequest { params: json!({"op": "cross-score", "model": model, "texts": texts}), ..SearchRequest::text("a green square", 10) };
    let hits = host.search("c", &request("cross-attributes")).unwrap().hits;
    let got: Vec<(String, f32)> = hits.into_iter().map(|h| (h.id, h.score)).collect();
    assert_eq!(got[0], ("a blue square".to_string(), 1.0));
    assert!(got.contains(&("a green triangle".to_string(), 1.0)) && got.contains(&("a red circle".to_string(), 0.0)), "{got:?}");
    let err = host.search("c", &request("minilm")).unwrap_err().to_string();
    assert!(err.contains("may not call model `minilm`"), "{err}");

    // A text encoder is not a cross-encoder.
    add_test_model(&host, "slot-text");
    let err = host.models().cross_score("slot-text", "q", &texts, &Caller::host()).unwrap_err().to_string();
    assert!(err.contains("not a CrossEncoder"), "{err}");
}
