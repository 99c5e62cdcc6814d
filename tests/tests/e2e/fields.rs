//! Vector (with metrics and filters), code and token fields through the contract, with deletes
//! and a restart.

use quarry_host::plugins::CallError;
use quarry_host::plugins::contract::Query;
use quarry_host::{NewItem, Quarry, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};
use serde_json::json;

fn item(id: &str, meta: serde_json::Value) -> NewItem {
    NewItem { metadata: meta, ..NewItem::text(id, id) }
}

/// Run an operation of the `fields` plugin and return its raw hits: some operations answer
/// with values (the codes after a prefix) rather than item ids, which `Quarry::search` would drop.
fn op(host: &Quarry, params: serde_json::Value, k: u32) -> Vec<(String, f32)> {
    let (mut instance, ctx) = host.instance("c").unwrap();
    let query = Query { text: Some("probe".into()), image: None, k, params: params.to_string() };
    instance.search(&ctx, &query).unwrap().into_iter().map(|h| (h.id, h.score)).collect()
}

fn ids(hits: Vec<(String, f32)>) -> Vec<String> {
    hits.into_iter().map(|(id, _)| id).collect()
}

fn setup(host: &Quarry) {
    host.add_plugin(&plugin("quarry-test-fields")).unwrap();
    host.set_route("c", route("fields@0.1.0", &[], json!({}))).unwrap();
    host.ingest(
        "c",
        vec![
            item("a", json!({"point": [0.0, 0.0], "codes": [1, 2, 3], "tokens": [[1.0, 0.0], [0.0, 1.0]], "lang": "en", "year": 2019})),
            item("b", json!({"point": [1.0, 0.0], "codes": [1, 2, 4], "tokens": [[0.5, 0.5]], "lang": "de", "year": 2021})),
            item("c", json!({"point": [3.0, 4.0], "codes": [1, 5], "tokens": [[-1.0, 0.0]], "lang": "en", "year": 2023})),
            item("d", json!({"point": [10.0, 10.0], "codes": [1, 2, 3], "lang": "en", "year": 2024})),
        ],
        |_| {},
    )
    .unwrap();
}

fn assert_answers(host: &Quarry, deleted_a: bool) {
    // L2: nearest to (0.9, 0.1) is b, then a (unless deleted), then c.
    let near = op(host, json!({"op": "nearest", "vector": [0.9, 0.1]}), 3);
    let want: Vec<&str> = if deleted_a { vec!["b", "c", "d"] } else { vec!["b", "a", "c"] };
    assert_eq!(ids(near.clone()), want);
    assert!((near[0].1 - -0.02).abs() < 1e-5, "L2 scores are negated squared distances: {near:?}");

    let filtered = op(host, json!({"op": "nearest", "vector": [0.9, 0.1], "filter": {"lang": "en", "year": {"gte": 2020}}}), 3);
    assert_eq!(ids(filtered), ["c", "d"]);

    let next = op(host, json!({"op": "next-codes", "prefixes": [[], [1], [1, 2], [9]]}), 10);
    assert_eq!(ids(next), ["1", "2,5", "3,4", ""]);
    let shared = op(host, json!({"op": "items-with-codes", "codes": [1, 2, 3]}), 10);
    assert_eq!(ids(shared), if deleted_a { vec!["d"] } else { vec!["a", "d"] });

    // MaxSim of query tokens [[1,0],[0,1]]: a = 1 + 1 = 2, b = 0.5 + 0.5 = 1, c = -1 + 0 = -1; d has none.
    let li = op(host, json!({"op": "late-interaction", "tokens": [[1.0, 0.0], [0.0, 1.0]], "candidates": ["c", "b", "a", "d"]}), 10);
    let want: Vec<(String, f32)> = if deleted_a { vec![("b".into(), 1.0), ("c".into(), -1.0)] } else { vec![("a".into(), 2.0), ("b".into(), 1.0), ("c".into(), -1.0)] };
    assert_eq!(li, want);
}

#[test]
fn code_token_and_vector_fields_survive_deletes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let host = host(dir.path());
        setup(&host);
        assert_answers(&host, false);
        assert_eq!(host.delete("c", &["a".to_string(), "nope".to_string()]).unwrap(), 1);
        assert_answers(&host, true);
    }
    let host = host(dir.path());
    assert_answers(&host, true);
    assert_eq!(host.item_count("c").unwrap(), 3);
}

#[test]
fn a_vector_of_the_wrong_dimension_fails_its_batch_only() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    setup(&host);
    let err = host.ingest("c", vec![item("y", json!({"point": [1.0, 2.0, 3.0], "codes": [7]}))], |_| {}).unwrap_err();
    assert!(matches!(err, CallError::Host(_)) && err.to_string().contains("3 dimensions"), "{err}");
    assert_eq!(host.item_count("c").unwrap(), 4, "the bad item was not stored");
    assert_answers(&host, false);
}

#[test]
fn dense_honours_metadata_filters() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    let docs = [
        ("cat-en", "a cat sleeps on the sofa", "en"),
        ("cat-de", "a cat naps on the couch", "de"),
        ("sea-en", "waves crash on the shore", "en"),
    ];
    host.ingest("docs", docs.iter().map(|(id, text, lang)| NewItem { metadata: json!({"lang": lang}), ..NewItem::text(id, text) }).collect(), |_| {}).unwrap();
    let search = |filter: serde_json::Value| {
        let request = SearchRequest { params: json!({"filter": filter}), ..SearchRequest::text("a sleeping kitten", 3) };
        host.search("docs", &request).unwrap().hits.into_iter().map(|h| h.id).collect::<Vec<_>>()
    };
    assert_eq!(search(json!({"lang": "de"})), ["cat-de"]);
    assert_eq!(search(json!({"lang": "en"}))[0], "cat-en");
    assert_eq!(search(json!({"lang": "en"})).len(), 2);
    let bad = SearchRequest { params: json!({"filter": {"lang": {"like": "e%"}}}), ..SearchRequest::text("x", 3) };
    let err = host.search("docs", &bad).unwrap_err().to_string();
    assert!(err.contains("unknown operator `like`"), "{err}");
}

#[test]
fn an_hnsw_field_answers_like_the_exact_one() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    setup(&host);
    let exact = op(&host, json!({"op": "nearest", "vector": [0.9, 0.1]}), 3);
    host.set_ann("c", "point", Some(quarry_host::store::AnnParams::default())).unwrap();
    assert_eq!(op(&host, json!({"op": "nearest", "vector": [0.9, 0.1]}), 3), exact, "same hits, same exact scores");
    // Writes and deletes reach the graph.
    host.ingest("c", vec![item("e", json!({"point": [0.9, 0.1]}))], |_| {}).unwrap();
    assert_eq!(ids(op(&host, json!({"op": "nearest", "vector": [0.9, 0.1]}), 1)), ["e"]);
    host.delete("c", &["e".to_string()]).unwrap();
    assert_eq!(op(&host, json!({"op": "nearest", "vector": [0.9, 0.1]}), 3), exact);
    let err = host.set_ann("c", "codes", Some(Default::default())).unwrap_err().to_string();
    assert!(err.contains("only vector fields"), "{err}");
}
