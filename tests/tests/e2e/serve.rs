//! `quarry serve` as a real process on loopback, driven over real HTTP: tenant isolation on
//! every route of the OpenAPI document, bad requests, quotas and the compute budget, metrics,
//! the OpenAPI document, and graceful shutdown.

use base64::Engine as _;
use quarry_tests::server::{ADMIN_KEY, Server, agent, call};
use quarry_tests::{plugin, root};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn json_body(value: &Value) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", value.to_string().into_bytes()))
}

fn admin_create_tenant(server: &Server, name: &str, extra: Value) -> String {
    let mut body = json!({"name": name, "models": ["minilm-l6"]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, out, _) = call("POST", &server.url("/v1/tenants"), Some(ADMIN_KEY), json_body(&body));
    assert_eq!(status, 201, "{out}");
    out["api_key"].as_str().unwrap().to_string()
}

fn add_minilm(server: &Server) {
    let manifest = root().join("examples/models/minilm-l6.json");
    let (status, out, _) = call("POST", &server.url("/v1/models"), Some(ADMIN_KEY), json_body(&json!({"manifest": manifest})));
    assert_eq!(status, 201, "{out}; run `bash scripts/setup.sh` first");
}

/// Upload dense, route `collection` to it and ingest `items` ([id, text]).
fn dense_collection(server: &Server, key: &str, collection: &str, items: &[(&str, &str)]) {
    let (status, out, _) = call("POST", &server.url("/v1/plugins"), Some(key), Some(("application/wasm", plugin("quarry-plugin-dense"))));
    assert!(status == 201, "{out}");
    let route = json!({"strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]});
    let (status, out, _) = call("PUT", &server.url(&format!("/v1/collections/{collection}/route")), Some(key), json_body(&route));
    assert_eq!(status, 200, "{out}");
    let items: Vec<Value> = items.iter().map(|(id, text)| json!({"id": id, "text": text})).collect();
    let (status, out, _) = call("POST", &server.url(&format!("/v1/collections/{collection}/items")), Some(key), json_body(&json!({"items": items})));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["strategy"], "dense@0.3.0");
}

fn search(server: &Server, key: &str, collection: &str, text: &str) -> (u16, Value) {
    let (status, out, _) = call("POST", &server.url(&format!("/v1/collections/{collection}/search")), Some(key), json_body(&json!({"text": text, "k": 3})));
    (status, out)
}

const DOCS: &[(&str, &str)] = &[
    ("cat", "a cat sleeps on the warm windowsill"),
    ("rocket", "the rocket launch was delayed by strong winds"),
    ("pasta", "boil the pasta in salted water for ten minutes"),
];

/// Every route in the OpenAPI document, with what a key of another tenant must get on it.
/// A route missing here fails the test: a new endpoint cannot escape the isolation check.
fn expected_for_other_tenant(method: &str, path: &str) -> Option<&'static str> {
    Some(match (method, path) {
        ("get", "/healthz" | "/readyz" | "/openapi.json") => "public",
        ("get", "/metrics") | (_, "/v1/tenants" | "/v1/tenants/{tenant}" | "/v1/tenants/{tenant}/keys" | "/v1/tenants/{tenant}/keys/{key_id}") => "admin",
        ("post", "/v1/models") => "admin",
        // Lists and the caller's own state: 200, showing nothing of the other tenant's.
        ("get", "/v1/collections" | "/v1/jobs" | "/v1/plugins" | "/v1/models" | "/v1/usage" | "/v1/pipelines") => "own",
        // Acting on a named resource of the other tenant: 404, as if it did not exist.
        ("get", "/v1/collections/{collection}")
        | ("put", "/v1/collections/{collection}/route")
        | ("post", "/v1/collections/{collection}/items" | "/v1/collections/{collection}/search" | "/v1/collections/{collection}/build")
        | ("get" | "delete", "/v1/collections/{collection}/items/{id}")
        | ("get", "/v1/jobs/{job}")
        | ("get" | "delete", "/v1/plugins/{strategy}")
        | ("get", "/v1/collections/{collection}/experiment")
        | ("post", "/v1/collections/{collection}/promote" | "/v1/collections/{collection}/rollback")
        | ("post", "/v1/feedback")
        | ("get" | "put" | "delete", "/v1/pipelines/{name}") => "hidden",
        // Creates the caller's own plugin; nothing of the other tenant's is named.
        ("post", "/v1/plugins") => "create",
        _ => return None,
    })
}

#[test]
fn a_tenant_sees_only_its_own_resources_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    add_minilm(&server);
    let (a, b) = (admin_create_tenant(&server, "a", json!({})), admin_create_tenant(&server, "b", json!({})));
    dense_collection(&server, &b, "docs", DOCS);
    let (status, out) = search(&server, &b, "docs", "a kitten napping in the sun");
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["hits"][0]["id"], "cat", "{out}");
    assert_eq!(out["strategy"], "dense@0.3.0");
    let (status, job, _) = call("POST", &server.url("/v1/collections/docs/build"), Some(&b), None);
    assert_eq!(status, 202, "{job}");
    let job = job["job"].as_str().unwrap().to_string();
    let b_key_id = call("GET", &server.url("/v1/tenants/b"), Some(ADMIN_KEY), None).1["keys"][0].as_str().unwrap().to_string();
    // b's pipeline, and b's experiment with an impression of its own.
    let dense = json!({"strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]});
    let fusion = json!({"fusion": {"stages": [dense.clone(), {"name": "again", "strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]}]}});
    let (status, out, _) = call("PUT", &server.url("/v1/pipelines/p"), Some(&b), json_body(&fusion));
    assert_eq!(status, 200, "{out}");
    let arms = json!({"experiment": {"name": "e", "arms": [{"name": "one", "pipeline": "p"}, {"name": "two", "strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]}]}});
    let (status, out, _) = call("PUT", &server.url("/v1/collections/docs/route"), Some(&b), json_body(&arms));
    assert_eq!(status, 200, "{out}");
    let (status, out) = search(&server, &b, "docs", "a kitten napping in the sun");
    assert_eq!((status, &out["hits"][0]["id"], &out["experiment"]), (200, &json!("cat"), &json!("e")), "{out}");
    let impression = out["impression"].as_str().unwrap().to_string();

    let (status, document, _) = call("GET", &server.url("/openapi.json"), None, None);
    assert_eq!(status, 200);
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let expected = expected_for_other_tenant(method, path).unwrap_or_else(|| panic!("{method} {path} is not classified in expected_for_other_tenant"));
            let url = server.url(
                &path
                    .replace("{collection}", "docs")
                    .replace("{id}", "cat")
                    .replace("{strategy}", "dense@0.3.0")
                    .replace("{job}", &job)
                    .replace("{tenant}", "b")
                    .replace("{key_id}", &b_key_id)
                    .replace("{name}", "p"),
            );
            let body = match (method.as_str(), path.as_str()) {
                ("put", "/v1/pipelines/{name}") => json_body(&fusion),
                ("put", _) => json_body(&json!({"strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}})),
                ("post", "/v1/collections/{collection}/promote") => json_body(&json!({"arm": "one"})),
                ("post", "/v1/feedback") => json_body(&json!({"impression": impression, "clicks": ["cat"]})),
                ("post", "/v1/collections/{collection}/items") => json_body(&json!({"items": [{"id": "x", "text": "planted by another tenant"}]})),
                ("post", "/v1/collections/{collection}/search") => json_body(&json!({"text": "cat"})),
                // Another plugin than b's, so that a never owns a `dense@0.3.0` of its own.
                ("post", "/v1/plugins") => Some(("application/wasm", plugin("keyword-boost"))),
                ("post", "/v1/tenants") => json_body(&json!({"name": "c"})),
                ("patch", _) => json_body(&json!({"models": []})),
                ("post", "/v1/models") => json_body(&json!({"manifest": "/nonexistent.json"})),
                _ => None,
            };
            let method_upper = method.to_uppercase();
            // Keys are checked before bodies are read, so the unauthenticated calls send none
            // (a large upload refused early ends in a broken pipe on the client's side).
            let (status, out, headers) = call(&method_upper, &url, None, None);
            if expected == "public" {
                assert_eq!(status, 200, "{method} {path} without a key: {out}");
            } else {
                assert_eq!(status, 401, "{method} {path} without a key: {out}");
                assert!(out["error"]["message"].as_str().unwrap().contains("Authorization: Bearer"), "{out}");
            }
            assert!(headers.contains_key("x-request-id"), "{method} {path} has no request id");
            let (status, out, _) = call(&method_upper, &url, Some("qk_not-a-real-key"), None);
            if expected != "public" {
                assert_eq!(status, 401, "{method} {path} with a wrong key: {out}");
            }
            let (status, out, _) = call(&method_upper, &url, Some(&a), body);
            match expected {
                "public" => assert_eq!(status, 200),
                "admin" => assert_eq!(status, 403, "{method} {path} with a tenant key: {out}"),
                "hidden" => assert_eq!(status, 404, "{method} {path} with tenant a's key on b's resource: {out}"),
                "own" => {
                    assert_eq!(status, 200, "{method} {path}: {out}");
                    let text = out.to_string();
                    assert!(!text.contains("\"b\"") && !text.contains("docs") && !text.contains(&job), "{method} {path} shows b's resources to a: {text}");
                }
                "create" => assert_eq!(status, 201, "{method} {path}: {out}"),
                _ => unreachable!(),
            }
            checked += 1;
        }
    }
    assert!(checked >= 32, "only {checked} routes checked");
    // Nothing a did touched b's data, route, pipeline or experiment.
    let (status, out, _) = call("GET", &server.url("/v1/collections/docs"), Some(&b), None);
    assert_eq!((status, out["items"].as_u64()), (200, Some(3)), "{out}");
    assert_eq!(out["route"]["experiment"]["name"], "e", "{out}");
    let (status, out, _) = call("GET", &server.url("/v1/pipelines/p"), Some(&b), None);
    assert_eq!((status, &out["declaration"]["fusion"]["stages"][1]["name"]), (200, &json!("again")), "{out}");
    let (_, report, _) = call("GET", &server.url("/v1/collections/docs/experiment"), Some(&b), None);
    assert_eq!(report["arms"][0]["clicks"].as_u64().unwrap() + report["arms"][1]["clicks"].as_u64().unwrap(), 0, "a's feedback counted: {report}");
    let (status, _, _) = call("GET", &server.url("/v1/collections/docs/items/x"), Some(&b), None);
    assert_eq!(status, 404, "a's item landed in b's collection");
    let (_, plugins, _) = call("GET", &server.url("/v1/plugins"), Some(&b), None);
    assert_eq!(plugins.as_array().unwrap().len(), 1, "{plugins}");
    assert_eq!(plugins[0]["owner"], "b");
    let (_, plugins, _) = call("GET", &server.url("/v1/plugins"), Some(&a), None);
    assert!(plugins.as_array().unwrap().iter().all(|p| p["owner"] == "a"), "{plugins}");
}

#[test]
fn bad_requests_get_a_4xx_that_says_what_to_fix_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), Some(json!({"max_body_bytes": 64 * 1024})));
    add_minilm(&server);
    let key = admin_create_tenant(&server, "t", json!({}));
    dense_collection(&server, &key, "docs", DOCS);
    let post = |path: &str, content_type: &str, body: &[u8]| call("POST", &server.url(path), Some(&key), Some((content_type, body.to_vec())));
    let cases: Vec<(&str, (u16, Value, _), u16, &str)> = vec![
        ("malformed JSON", post("/v1/collections/docs/search", "application/json", b"{\"text\": "), 400, "not valid JSON"),
        ("wrong type", post("/v1/collections/docs/search", "application/json", br#"{"text": "x", "k": "ten"}"#), 400, "k: invalid type"),
        ("unknown field", post("/v1/collections/docs/search", "application/json", br#"{"text": "x", "filtre": {}}"#), 400, "unknown field `filtre`"),
        ("empty query", post("/v1/collections/docs/search", "application/json", b"{}"), 400, "needs `text`, `image`, or both"),
        ("bad base64", post("/v1/collections/docs/search", "application/json", br#"{"image": "%%%"}"#), 400, "not valid base64"),
        ("wrong content type", post("/v1/collections/docs/search", "text/plain", b"cat"), 415, "Content-Type: application/json"),
        ("body over the limit", post("/v1/collections/docs/items", "application/json", &vec![b' '; 100 * 1024]), 413, "max_body_bytes"),
        ("bad NDJSON line", post("/v1/collections/docs/items", "application/x-ndjson", b"{\"id\": \"ok\", \"text\": \"fine\"}\n{\"id\": 5}\n"), 400, "line 2"),
        ("item without content", post("/v1/collections/docs/items", "application/json", br#"{"items": [{"id": "empty"}]}"#), 400, "neither `text` nor `image`"),
        ("undecodable image", post("/v1/collections/docs/items", "application/json", br#"{"items": [{"id": "img", "image": "aGVsbG8="}]}"#), 400, "not a recognised image format"),
        ("control characters in an id", post("/v1/collections/docs/items", "application/json", br#"{"items": [{"id": "a\u0007b", "text": "x"}]}"#), 400, "control characters"),
        ("invalid wasm", post("/v1/plugins", "application/wasm", b"\0asm not really"), 400, ""),
        ("wasm with the wrong type", post("/v1/plugins", "application/octet-stream", b"\0asm"), 415, "application/wasm"),
        ("unknown strategy", call("PUT", &server.url("/v1/collections/docs/route"), Some(&key), json_body(&json!({"strategy": "nope@1.0.0"}))), 404, "upload it with POST /v1/plugins"),
        ("ungranted model", call("PUT", &server.url("/v1/collections/d2/route"), Some(&key), json_body(&json!({"strategy": "dense@0.3.0", "models": ["secret"]}))), 403, "may not grant model `secret`"),
        ("bad collection name", post("/v1/collections/a%2Fb/search", "application/json", br#"{"text": "x"}"#), 400, "collection"),
        ("unknown endpoint", call("GET", &server.url("/v2/anything"), Some(&key), None), 404, "/openapi.json"),
        ("unknown query parameter", post("/v1/collections/docs/items?backgruond=true", "application/json", br#"{"items": [{"id": "q", "text": "x"}]}"#), 400, "backgruond"),
    ];
    for (what, (status, out, _), expected, says) in cases {
        assert_eq!(status, expected, "{what}: {out}");
        let message = out["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no error message in {out}"));
        assert!(message.contains(says), "{what}: `{message}` does not say `{says}`");
    }
    // Nothing of the refused ingests landed, and the server still answers.
    let (status, out, _) = call("GET", &server.url("/v1/collections/docs"), Some(&key), None);
    assert_eq!((status, out["items"].as_u64()), (200, Some(3)), "{out}");
    let (status, out) = search(&server, &key, "docs", "launching spacecraft");
    assert_eq!((status, out["hits"][0]["id"].as_str()), (200, Some("rocket")), "{out}");
    // A k over the host's max_hits is answered with a note, and an undeclared parameter is refused.
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/search"), Some(&key), json_body(&json!({"text": "x", "k": 4_000_000_000u32})));
    assert_eq!(status, 200, "{out}");
    assert!(out["notes"][0].as_str().unwrap().contains("max_hits"), "{out}");
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/search"), Some(&key), json_body(&json!({"text": "x", "params": {"colour": "red"}})));
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("colour"), "{out}");
    // A route config the plugin's schema refuses is a 400 naming the key, and the route stays.
    let (status, out, _) = call("PUT", &server.url("/v1/collections/docs/route"), Some(&key), json_body(&json!({"strategy": "dense@0.3.0", "config": {"text-modle": "minilm-l6"}, "models": ["minilm-l6"]})));
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("text-modle"), "{out}");
    assert_eq!(search(&server, &key, "docs", "launching spacecraft").0, 200);
}

#[test]
fn quotas_answer_429_with_the_quota_named_and_the_compute_budget_counts_inference_like_guest_code() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The guest-code tenant spends its budget in one call that runs to this deadline; it is long
    // enough that the inference tenant's first call meets its budget's end well before it.
    std::fs::write(data.join("limits.json"), r#"{"deadline_ms": 6000}"#).unwrap();
    let server = Server::start(&data, None);
    add_minilm(&server);

    // Request rate: a burst of 3, then 429 naming `requests_per_second`, with Retry-After.
    let rate = admin_create_tenant(&server, "rate", json!({"quotas": {"requests_per_second": 0.5, "burst": 3}}));
    let statuses: Vec<(u16, Value, ureq::http::HeaderMap)> = (0..4).map(|_| call("GET", &server.url("/v1/usage"), Some(&rate), None)).collect();
    assert!(statuses[..3].iter().all(|(s, _, _)| *s == 200));
    let (status, out, headers) = &statuses[3];
    assert_eq!(*status, 429, "{out}");
    assert_eq!(out["error"]["quota"], "requests_per_second");
    assert!(headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| (1..=2).contains(&s)), "{headers:?}");

    // Compute: one tenant burns its budget in guest code (a loop to the deadline), another in
    // host inference (large embed calls); each is refused on `compute_per_second`, and a third
    // tenant is served meanwhile.
    let quotas = json!({"quotas": {"compute_per_second": 0.01, "compute_burst_seconds": 0.5}});
    for (tenant, misbehaviour, params) in [("guesty", "loop", json!({})), ("inferential", "embed-huge", json!({"model": "minilm-l6", "n": 256}))] {
        let key = admin_create_tenant(&server, tenant, quotas.clone());
        let (status, out, _) = call("POST", &server.url("/v1/plugins"), Some(&key), Some(("application/wasm", plugin("quarry-test-hostile"))));
        assert_eq!(status, 201, "{out}");
        let route = json!({"strategy": "hostile@0.1.0", "models": ["minilm-l6"]});
        let (status, out, _) = call("PUT", &server.url("/v1/collections/work/route"), Some(&key), json_body(&route));
        assert_eq!(status, 200, "{out}");
        let mut refused = None;
        for attempt in 0..20 {
            let (status, out, headers) =
                call("POST", &server.url("/v1/collections/work/search"), Some(&key), json_body(&json!({"text": misbehaviour, "params": params})));
            if status == 429 {
                refused = Some((out, headers));
                break;
            }
            // The host asks the budget before each model run: the inference tenant's first
            // call ends when its budget does, instead of running all its parts.
            assert!(tenant != "inferential" || attempt > 0, "the first embed call ran past the budget: {status} {out}");
        }
        let (out, headers) = refused.unwrap_or_else(|| panic!("{tenant} was never refused"));
        assert_eq!(out["error"]["quota"], "compute_per_second", "{tenant}: {out}");
        assert!(headers.contains_key("retry-after"));
        let (_, usage, _) = call("GET", &server.url("/v1/usage"), Some(&key), None);
        assert!(usage["usage"]["compute_used_seconds"].as_f64().unwrap() > 0.5, "{tenant}: {usage}");
    }
    let other = admin_create_tenant(&server, "other", json!({}));
    dense_collection(&server, &other, "docs", DOCS);
    assert_eq!(search(&server, &other, "docs", "cooking noodles").0, 200);

    // Plugin memory: a tenant capped at 16 MiB is stopped there; one without a cap of its own
    // grows to the host's limit.
    for (tenant, quotas, cap) in [("small", json!({"quotas": {"plugin_memory_bytes": 16 << 20}}), 16usize << 20), ("roomy", json!({}), 256 << 20)] {
        let key = admin_create_tenant(&server, tenant, quotas);
        let (status, out, _) = call("POST", &server.url("/v1/plugins"), Some(&key), Some(("application/wasm", plugin("quarry-test-hostile"))));
        assert_eq!(status, 201, "{out}");
        let (status, out, _) = call("PUT", &server.url("/v1/collections/work/route"), Some(&key), json_body(&json!({"strategy": "hostile@0.1.0"})));
        assert_eq!(status, 200, "{out}");
        let (status, out, _) = call("POST", &server.url("/v1/collections/work/search"), Some(&key), json_body(&json!({"text": "alloc"})));
        let message = out["error"]["message"].as_str().unwrap_or_default();
        assert!(status >= 500 && message.contains(&format!("past the {cap}-byte cap")) && message.contains("plugin_memory_bytes"), "{tenant}: {status} {out}");
    }
    let (status, out, _) = call("POST", &server.url("/v1/tenants"), Some(ADMIN_KEY), json_body(&json!({"name": "tiny", "quotas": {"plugin_memory_bytes": 4096}})));
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("plugin_memory_bytes"), "{out}");

    // Stored bytes: a tenant capped at 6000 bytes holds three dense items (about 1.7 kB each);
    // a batch that would take it past the cap stores nothing and is refused on `stored_bytes`;
    // deleting makes room again.
    let packed = admin_create_tenant(&server, "packed", json!({"quotas": {"stored_bytes": 6000}}));
    dense_collection(&server, &packed, "docs", DOCS);
    let stored = |key: &str| call("GET", &server.url("/v1/usage"), Some(key), None).1["stored_bytes"].as_u64().unwrap();
    let before = stored(&packed);
    assert!((3 * 1537..6000).contains(&before), "three 384-dimension vectors and their items: {before}");
    let more = json!({"items": [{"id": "tea", "text": "steep the green tea for two minutes"}, {"id": "moon", "text": "the moon rose over the hills"}]});
    let (status, out, headers) = call("POST", &server.url("/v1/collections/docs/items"), Some(&packed), json_body(&more));
    assert_eq!(status, 429, "{out}");
    assert_eq!(out["error"]["quota"], "stored_bytes", "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("delete items"), "{out}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(stored(&packed), before, "the refused batch stored nothing");
    assert_eq!(call("GET", &server.url("/v1/collections/docs/items/tea"), Some(&packed), None).0, 404);
    for id in ["cat", "rocket"] {
        assert_eq!(call("DELETE", &server.url(&format!("/v1/collections/docs/items/{id}")), Some(&packed), None).0, 204);
    }
    assert!(stored(&packed) < before / 2, "deletes give the bytes back");
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(&packed), json_body(&more));
    assert_eq!(status, 200, "{out}");
    assert_eq!(search(&server, &packed, "docs", "a cup of tea").1["hits"][0]["id"], "tea");
    let (status, out, _) = call("POST", &server.url("/v1/tenants"), Some(ADMIN_KEY), json_body(&json!({"name": "none", "quotas": {"stored_bytes": 0}})));
    assert_eq!(status, 400, "{out}");

    // Uploaded plugins count against `plugin_bytes`: past it an upload is refused, naming it,
    // until the tenant removes a version.
    let uploader = admin_create_tenant(&server, "uploader", json!({"quotas": {"plugin_bytes": 1 << 20}}));
    let upload = |name: &str| call("POST", &server.url("/v1/plugins"), Some(&uploader), Some(("application/wasm", plugin(name))));
    for name in ["quarry-test-hostile", "quarry-plugin-dense", "quarry-plugin-tgdt"] {
        assert_eq!(upload(name).0, 201, "{name} fits");
    }
    let (status, out, headers) = upload("quarry-plugin-avg");
    assert_eq!((status, out["error"]["quota"].as_str()), (429, Some("plugin_bytes")), "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("DELETE /v1/plugins/"), "{out}");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(upload("quarry-test-hostile").0, 201, "the same bytes again take no room");
    let kept = call("GET", &server.url("/v1/usage"), Some(&uploader), None).1["plugin_bytes"].as_u64().unwrap();
    assert_eq!(kept, ["quarry-test-hostile", "quarry-plugin-dense", "quarry-plugin-tgdt"].iter().map(|n| plugin(n).len() as u64).sum::<u64>());
    assert_eq!(call("DELETE", &server.url("/v1/plugins/tgdt@0.2.0"), Some(&uploader), None).0, 204);
    assert_eq!(upload("quarry-plugin-avg").0, 201, "room was made");

    // The rejections are counted per tenant and quota in /metrics, which parses as Prometheus text.
    let (status, text, headers) = call("GET", &server.url("/metrics"), Some(ADMIN_KEY), None);
    assert_eq!(status, 200);
    assert!(headers.get("content-type").unwrap().to_str().unwrap().contains("openmetrics-text"));
    let samples = parse_openmetrics(text.as_str().unwrap());
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| s[0] == metric && labels.iter().all(|(k, v)| s[1][*k] == *v))
            .map(|s| s[2].as_f64().unwrap())
            .sum()
    };
    assert_eq!(value("quarry_quota_rejections_total", &[("tenant", "rate"), ("quota", "requests_per_second")]), 1.0);
    assert_eq!(value("quarry_quota_rejections_total", &[("tenant", "guesty"), ("quota", "compute_per_second")]), 1.0);
    assert_eq!(value("quarry_quota_rejections_total", &[("tenant", "packed"), ("quota", "stored_bytes")]), 1.0);
    assert_eq!(value("quarry_http_requests_total", &[("tenant", "rate"), ("route", "/v1/usage"), ("status", "200")]), 3.0);
    assert_eq!(value("quarry_http_requests_total", &[("tenant", "other"), ("route", "/v1/collections/{collection}/search"), ("status", "200")]), 1.0);
    assert!(value("quarry_compute_seconds_total", &[("tenant", "inferential")]) > 0.5);
    assert!(value("quarry_strategy_calls_total", &[("tenant", "guesty"), ("strategy", "hostile@0.1.0"), ("outcome", "timeout")]) >= 1.0);
    assert!(value("quarry_model_runs_total", &[("model", "minilm-l6")]) >= 1.0);
}

/// Samples `[name, labels, value]` of an OpenMetrics text exposition, read by the Prometheus
/// project's own parser (the `prometheus-client` Python package, strict about the format).
fn parse_openmetrics(text: &str) -> Vec<Value> {
    let python = root().join("vendor/venv/bin/python");
    let script = "import sys, json\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
                  print(json.dumps([[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]))";
    let mut child = Command::new(&python).args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("vendor/venv/bin/python runs; run `bash scripts/setup.sh`");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "/metrics does not parse as OpenMetrics: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[test]
fn the_openapi_document_validates_as_openapi_3() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let (status, document, _) = call("GET", &server.url("/openapi.json"), None, None);
    assert_eq!(status, 200);
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document.to_string()).unwrap();
    let python = root().join("vendor/venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run `bash scripts/setup.sh`", python.display()));
    assert!(out.status.success(), "the document is not valid OpenAPI 3: {}", String::from_utf8_lossy(&out.stderr));
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
}

#[test]
fn sigterm_lets_searches_finish_and_loses_no_acknowledged_item() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let server = Server::start(&data, None);
    add_minilm(&server);
    let key = admin_create_tenant(&server, "t", json!({"quotas": {"requests_per_second": 1000, "burst": 1000, "concurrent_calls": 64}}));
    dense_collection(&server, &key, "docs", DOCS);
    let base = server.base.clone();
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    // One writer ingesting batches of 20, two readers searching, until the server goes away.
    {
        let (base, key, acknowledged, failures) = (base.clone(), key.clone(), acknowledged.clone(), failures.clone());
        workers.push(std::thread::spawn(move || {
            for batch in 0.. {
                let ids: Vec<String> = (0..20).map(|i| format!("b{batch}-{i}")).collect();
                let lines: String = ids.iter().map(|id| json!({"id": id, "text": format!("note {id} about gardening and tomatoes")}).to_string() + "\n").collect();
                let request = ureq::http::Request::builder()
                    .method("POST")
                    .uri(format!("{base}/v1/collections/docs/items"))
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/x-ndjson")
                    .body(lines.into_bytes())
                    .unwrap();
                match agent().run(request) {
                    Ok(r) if r.status() == 200 => acknowledged.lock().unwrap().extend(ids),
                    Ok(r) => failures.lock().unwrap().push(format!("ingest answered {}", r.status())),
                    Err(_) => return,
                }
            }
        }));
    }
    for _ in 0..2 {
        let (base, key, failures) = (base.clone(), key.clone(), failures.clone());
        workers.push(std::thread::spawn(move || {
            loop {
                let request = ureq::http::Request::builder()
                    .method("POST")
                    .uri(format!("{base}/v1/collections/docs/search"))
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(json!({"text": "growing tomatoes", "k": 5}).to_string().into_bytes())
                    .unwrap();
                match agent().run(request) {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.lock().unwrap().push(format!("search answered {}", r.status())),
                    Err(_) => return,
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(4));
    let before = acknowledged.lock().unwrap().len();
    assert!(before > 0, "no ingest was acknowledged before SIGTERM");
    let status = server.terminate();
    assert!(status.success(), "quarry serve exited with {status} after SIGTERM");
    for worker in workers {
        let _ = worker.join();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "requests in flight failed during shutdown: {failures:?}");

    let server = Server::start(&data, None);
    let acknowledged = acknowledged.lock().unwrap().clone();
    let (status, out, _) = call("GET", &server.url("/v1/collections/docs"), Some(&key), None);
    assert_eq!(status, 200);
    assert!(out["items"].as_u64().unwrap() as usize >= acknowledged.len() + DOCS.len(), "{out} but {} were acknowledged", acknowledged.len());
    for id in acknowledged.iter().step_by(7).chain(acknowledged.last()) {
        let (status, out, _) = call("GET", &server.url(&format!("/v1/collections/docs/items/{id}")), Some(&key), None);
        assert_eq!(status, 200, "acknowledged item {id} is missing after the restart: {out}");
    }
    let (status, out) = search(&server, &key, "docs", "tomato garden");
    assert_eq!(status, 200);
    assert!(out["hits"][0]["id"].as_str().unwrap().starts_with('b'), "{out}");
}

#[test]
fn images_ingest_as_base64_or_multipart_and_items_read_back_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    add_minilm(&server);
    let key = admin_create_tenant(&server, "t", json!({}));
    // hostile's ingest stores items as they come, images included.
    let (status, out, _) = call("POST", &server.url("/v1/plugins"), Some(&key), Some(("application/wasm", plugin("quarry-test-hostile"))));
    assert_eq!(status, 201, "{out}");
    let (status, out, _) = call("PUT", &server.url("/v1/collections/docs/route"), Some(&key), json_body(&json!({"strategy": "hostile@0.1.0"})));
    assert_eq!(status, 200, "{out}");
    let png = quarry_tests::picture(quarry_tests::RED, true, image::ImageFormat::Png);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&png);
    let (status, out, _) =
        call("POST", &server.url("/v1/collections/docs/items"), Some(&key), json_body(&json!({"items": [{"id": "red", "text": "a red circle", "image": encoded}]})));
    assert_eq!(status, 200, "{out}");
    let (status, out, _) = call("GET", &server.url("/v1/collections/docs/items/red"), Some(&key), None);
    assert_eq!((status, out["indexed_by"].as_str(), out["text"].as_str()), (200, Some("hostile@0.1.0"), Some("a red circle")), "{out}");
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/search"), Some(&key), json_body(&json!({"image": encoded, "text": "panic"})));
    assert_eq!(status, 502, "a strategy that crashes is the strategy's failure: {out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("panicked"), "{out}");
    // Multipart: the items as JSON in an `items` part, each image in a part its item names.
    let multipart = |parts: &[(&str, &str, &[u8])]| {
        let mut body = Vec::new();
        for (name, kind, bytes) in parts {
            body.extend(format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: {kind}\r\n\r\n").as_bytes());
            body.extend_from_slice(bytes);
            body.extend(b"\r\n");
        }
        body.extend(b"--XyZ--\r\n");
        Some(("multipart/form-data; boundary=XyZ", body))
    };
    let items = json!({"items": [{"id": "red2", "text": "another red circle", "image_part": "red.png"}, {"id": "words", "text": "no image"}]}).to_string();
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(&key), multipart(&[("items", "application/json", items.as_bytes()), ("red.png", "image/png", &png)]));
    assert_eq!((status, out["ingested"].as_u64()), (200, Some(2)), "{out}");
    let (status, out, _) = call("GET", &server.url("/v1/collections/docs/items/red2"), Some(&key), None);
    assert_eq!((status, out["text"].as_str()), (200, Some("another red circle")), "{out}");
    let refused = |parts: &[(&str, &str, &[u8])], says: &str| {
        let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(&key), multipart(parts));
        assert_eq!(status, 400, "{out}");
        assert!(out["error"]["message"].as_str().unwrap().contains(says), "{out} does not say {says:?}");
    };
    let one = json!({"items": [{"id": "x", "image_part": "x.png"}]}).to_string();
    refused(&[("items", "application/json", one.as_bytes()), ("x.png", "image/png", b"not a picture")], "item 0");
    refused(&[("items", "application/json", one.as_bytes())], "no part named `x.png`");
    refused(&[("items", "application/json", one.as_bytes()), ("x.png", "image/png", &png), ("stray.png", "image/png", &png)], "part `stray.png` is no item's");
    refused(&[("x.png", "image/png", &png)], "no `items` part");
    let names: Vec<String> = (0..10_000).map(|i| format!("p{i}")).collect();
    let mut many: Vec<(&str, &str, &[u8])> = vec![("items", "application/json", one.as_bytes())];
    many.extend(names.iter().map(|n| (n.as_str(), "image/png", &b"x"[..])));
    refused(&many, "more than 10000 parts");
    let (status, _, _) = call("GET", &server.url("/v1/collections/docs/items/x"), Some(&key), None);
    assert_eq!(status, 404, "a refused multipart ingest stored an item");
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(&key), json_body(&json!({"items": [{"id": "y", "image_part": "y.png"}]})));
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("base64 in `image`"), "{out}");
    let (status, out, _) = call("DELETE", &server.url("/v1/collections/docs/items/red"), Some(&key), None);
    assert_eq!(status, 204, "{out}");
    let (status, _, _) = call("GET", &server.url("/v1/collections/docs/items/red"), Some(&key), None);
    assert_eq!(status, 404);
}

#[test]
fn the_cli_works_against_a_server_as_it_does_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), None);
    let key = admin_create_tenant(&server, "t", json!({"models": []}));
    let quarry = |args: &[&str], key: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_quarry-e2e")).args(["--server", &server.base, "--api-key", key]).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let manifest = root().join("examples/models/minilm-l6.json");
    let (ok, out) = quarry(&["model", "add", manifest.to_str().unwrap()], ADMIN_KEY);
    assert!(ok, "{out}");
    let (status, out, _) = call("PATCH", &server.url("/v1/tenants/t"), Some(ADMIN_KEY), json_body(&json!({"models": ["minilm-l6"]})));
    assert_eq!(status, 200, "{out}");
    let wasm = quarry_tests::plugin_dir().join("quarry_plugin_dense.wasm");
    let (ok, out) = quarry(&["plugin", "add", wasm.to_str().unwrap()], &key);
    assert!(ok && out.contains("added dense@0.3.0 for t"), "{out}");
    let source = dir.path().join("docs.jsonl");
    let lines: String = DOCS.iter().map(|(id, text)| json!({"id": id, "text": text}).to_string() + "\n").collect();
    std::fs::write(&source, lines).unwrap();
    let (ok, out) = quarry(
        &["ingest", "docs", source.to_str().unwrap(), "--strategy", "dense@0.3.0", "--config", r#"{"text-model": "minilm-l6"}"#, "--grant-model", "minilm-l6"],
        &key,
    );
    assert!(ok && out.contains("ingested 3 item(s) into docs"), "{out}");
    let (ok, out) = quarry(&["search", "docs", "a kitten napping in the sun", "-k", "2"], &key);
    assert!(ok, "{out}");
    let first = out.lines().find(|l| l.trim_start().starts_with("1 ")).unwrap_or_default();
    assert!(first.contains("cat") && out.contains("strategy dense@0.3.0"), "{out}");
    let (ok, out) = quarry(&["collections"], &key);
    assert!(ok && out.contains("docs") && out.contains("dense@0.3.0"), "{out}");
    let (ok, out) = quarry(&["delete", "docs", "cat", "nothing-here"], &key);
    assert!(ok && out.contains("deleted 1 of 2"), "{out}");
    let (ok, out) = quarry(&["build", "docs"], &key);
    assert!(ok && out.contains("built docs"), "{out}");
    // Pipelines and experiments: declared, routed, reported, promoted and rolled back.
    let stage = |name: &str| json!({"name": name, "strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]});
    let fusion = json!({"fusion": {"stages": [stage("a"), stage("b")]}}).to_string();
    let (ok, out) = quarry(&["pipeline", "set", "both", &fusion], &key);
    assert!(ok && out.contains("pipeline both declared"), "{out}");
    let (ok, out) = quarry(&["route", "set", "docs", "--pipeline", "both"], &key);
    assert!(ok && out.contains("docs -> pipeline:both"), "{out}");
    let (ok, out) = quarry(&["search", "docs", "a steaming bowl of noodles", "-k", "1"], &key);
    assert!(ok && out.contains("pasta") && out.contains("pipeline:both"), "{out}");
    let experiment = dir.path().join("experiment.json");
    let mut two = stage("two");
    two["weight"] = json!(3);
    std::fs::write(&experiment, json!({"name": "e", "arms": [{"name": "one", "pipeline": "both"}, two]}).to_string()).unwrap();
    let (ok, out) = quarry(&["route", "set", "docs", "--experiment", &format!("@{}", experiment.display())], &key);
    assert!(ok && out.contains("docs -> experiment:e"), "{out}");
    let (ok, out) = quarry(&["search", "docs", "a steaming bowl of noodles", "-k", "1"], &key);
    assert!(ok && out.contains("pasta"), "{out}");
    let (ok, out) = quarry(&["experiment", "docs"], &key);
    assert!(ok && out.contains(r#""name": "e""#) && out.contains(r#""calls": 1"#), "{out}");
    let (ok, out) = quarry(&["route", "promote", "docs", "two"], &key);
    assert!(ok && out.contains("docs -> dense@0.3.0"), "{out}");
    let (ok, out) = quarry(&["route", "rollback", "docs"], &key);
    assert!(ok && out.contains("docs -> experiment:e"), "{out}");
    let (ok, out) = quarry(&["route", "list"], &key);
    assert!(ok && out.contains("experiment:e"), "{out}");
    // An ingest under a new route that the server refuses (one text over the body limit) leaves
    // the route as it was, as in-process.
    let big = dir.path().join("big.jsonl");
    std::fs::write(&big, json!({"id": "big", "text": "x".repeat(17 << 20)}).to_string() + "\n").unwrap();
    let (ok, out) = quarry(&["ingest", "docs", big.to_str().unwrap(), "--strategy", "dense@0.3.0", "--config", r#"{"text-model": "minilm-l6"}"#, "--grant-model", "minilm-l6"], &key);
    assert!(!ok && out.contains("route is back to experiment:e"), "{out}");
    let (ok, out) = quarry(&["route", "list"], &key);
    assert!(ok && out.contains("experiment:e"), "{out}");
    let (ok, out) = quarry(&["pipeline", "list"], &key);
    assert!(ok && out.contains(r#""name": "both""#), "{out}");
    let (ok, out) = quarry(&["pipeline", "remove", "both"], &key);
    assert!(!ok && out.contains("still used by t/docs") && out.contains("HTTP 409"), "{out}");
    let (ok, out) = quarry(&["route", "set", "docs", "--pipeline", "both", "--strategy", "dense@0.3.0"], &key);
    assert!(!ok && out.contains("cannot be used with"), "{out}");
    // The server's errors come back as the CLI's, and local-only commands say so.
    let (ok, out) = quarry(&["search", "nope", "x"], &key);
    assert!(!ok && out.contains("no collection `nope`") && out.contains("HTTP 404"), "{out}");
    let (ok, out) = quarry(&["search", "docs", "x"], "qk_wrong");
    assert!(!ok && out.contains("HTTP 401"), "{out}");
    let (ok, out) = quarry(&["index", "docs", "embedding", "--hnsw"], &key);
    assert!(!ok && out.contains("local data directory only"), "{out}");
    // The same pipeline commands in-process, on a data directory.
    let local = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_quarry-e2e")).arg("--data-dir").arg(dir.path().join("local")).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, out) = local(&["pipeline", "set", "p", r#"{"fusion": {"stages": []}}"#]);
    assert!(!ok && out.contains("fuse 2 to 8"), "{out}");
    let (ok, out) = local(&["pipeline", "set", "p", "{not json"]);
    assert!(!ok && out.contains("the pipeline is not valid JSON"), "{out}");
    let (ok, out) = local(&["pipeline", "list"]);
    assert!(ok && out.trim() == "{}", "{out}");
    let (ok, out) = local(&["route", "rollback", "docs"]);
    assert!(!ok && out.contains("no strategy route"), "{out}");
}

#[test]
fn https_is_served_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes a test certificate");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let server = Server::start(&dir.path().join("data"), Some(json!({"tls": {"certificate": cert, "private_key": key}})));
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    let pem = std::fs::read(&cert).unwrap();
    let trusted = ureq::tls::Certificate::from_pem(&pem).unwrap();
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[trusted])).build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into();
    let mut response = agent.get(server.url("/v1/usage")).header("authorization", format!("Bearer {ADMIN_KEY}")).call().expect("an HTTPS request");
    assert_eq!(response.status(), 403, "the admin key reached the server over TLS: {:?}", response.body_mut().read_to_string());
    assert_eq!(agent.get(server.url("/healthz")).call().unwrap().body_mut().read_to_string().unwrap(), "ok");
    // Plain HTTP to the TLS port, and a client that does not trust the certificate, get nothing.
    assert!(agent.get(server.url("/healthz").replace("https://", "http://")).call().is_err());
    assert!(ureq::Agent::new_with_defaults().get(server.url("/healthz")).call().is_err());
    assert!(server.terminate().success());
}
