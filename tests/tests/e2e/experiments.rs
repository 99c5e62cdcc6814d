//! Experiments and pipelines over real HTTP on loopback: pipelines return what a reference
//! computation over each strategy's own output returns, sticky splits follow their weights
//! across a restart, team-draft interleaving detects a preference (and none between identical
//! arms), routes swap under load without a failed call, and bad declarations get a 4xx that
//! says what to fix.

use quarry_cli::{DEMO_QUERIES, DEMO_SENTENCES};
use quarry_tests::root;
use quarry_tests::server::{ADMIN_KEY, Server, agent, call};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn body(value: &Value) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", value.to_string().into_bytes()))
}

/// A server with MiniLM and a tenant whose quotas leave room for load.
fn server_with_tenant(data: &std::path::Path) -> (Server, String) {
    let server = Server::start(data, None);
    let manifest = root().join("examples/models/minilm-l6.json");
    let (status, out, _) = call("POST", &server.url("/v1/models"), Some(ADMIN_KEY), body(&json!({"manifest": manifest})));
    assert_eq!(status, 201, "{out}; run `bash scripts/setup.sh` first");
    let quotas = json!({"requests_per_second": 100000.0, "burst": 100000.0, "concurrent_calls": 64, "compute_per_second": 64.0, "compute_burst_seconds": 10000.0});
    let (status, out, _) = call("POST", &server.url("/v1/tenants"), Some(ADMIN_KEY), body(&json!({"name": "t", "models": ["minilm-l6"], "quotas": quotas})));
    assert_eq!(status, 201, "{out}");
    (server, out["api_key"].as_str().unwrap().to_string())
}

fn upload(server: &Server, key: &str, name: &str) {
    let (status, out, _) = call("POST", &server.url("/v1/plugins"), Some(key), Some(("application/wasm", quarry_tests::plugin(name))));
    assert_eq!(status, 201, "{out}");
}

fn put(server: &Server, key: &str, path: &str, value: &Value) -> (u16, Value) {
    let (status, out, _) = call("PUT", &server.url(path), Some(key), body(value));
    (status, out)
}

fn search(server: &Server, key: &str, collection: &str, request: &Value) -> Value {
    let (status, out, _) = call("POST", &server.url(&format!("/v1/collections/{collection}/search")), Some(key), body(request));
    assert_eq!(status, 200, "{request}: {out}");
    out
}

fn dense() -> Value {
    json!({"strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]})
}

fn tgdt() -> Value {
    json!({"strategy": "tgdt@0.2.0", "config": {"text-model": "minilm-l6", "candidates": {"texts": 8}}, "models": ["minilm-l6"]})
}

fn hits(answer: &Value) -> Vec<(String, f64)> {
    answer["hits"].as_array().unwrap().iter().map(|h| (h["id"].as_str().unwrap().to_string(), h["score"].as_f64().unwrap())).collect()
}

/// The demo sentences, indexed by dense and TGDT together (a pipeline route ingests through both).
fn demo_collection(server: &Server, key: &str) {
    upload(server, key, "quarry-plugin-dense");
    upload(server, key, "quarry-plugin-tgdt");
    let (status, out) = put(server, key, "/v1/pipelines/both", &json!({"fusion": {"stages": [dense(), tgdt()]}}));
    assert_eq!(status, 200, "{out}");
    let (status, out) = put(server, key, "/v1/collections/docs/route", &json!({"pipeline": "both"}));
    assert_eq!(status, 200, "{out}");
    let items: Vec<Value> = DEMO_SENTENCES.iter().map(|(id, text)| json!({"id": id, "text": text})).collect();
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(key), body(&json!({"items": items})));
    assert_eq!(status, 200, "{out}");
    assert_eq!((out["strategy"].as_str(), out["ingested"].as_u64()), (Some("pipeline:both"), Some(DEMO_SENTENCES.len() as u64)), "{out}");
}

/// What one strategy alone answers, routed on its own.
fn alone(server: &Server, key: &str, route: &Value, query: &str, k: usize) -> Vec<(String, f64)> {
    let (status, out) = put(server, key, "/v1/collections/docs/route", route);
    assert_eq!(status, 200, "{out}");
    hits(&search(server, key, "docs", &json!({"text": query, "k": k})))
}

#[test]
fn pipelines_answer_exactly_what_a_reference_computation_over_each_strategy_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = server_with_tenant(&dir.path().join("data"));
    demo_collection(&server, &key);
    let everything = DEMO_SENTENCES.len();
    let declared = [
        ("cascade", json!({"cascade": {"first": tgdt(), "then": dense(), "depth": 6}})),
        ("rrf", json!({"fusion": {"stages": [dense(), tgdt()], "k": 60}})),
        ("slow-first", json!({"fallback": {"primary": tgdt(), "fallback": dense(), "deadline_ms": 1}})),
        ("fine-first", json!({"fallback": {"primary": tgdt(), "fallback": dense()}})),
    ];
    for (name, declaration) in &declared {
        let (status, out) = put(&server, &key, &format!("/v1/pipelines/{name}"), declaration);
        assert_eq!(status, 200, "{name}: {out}");
    }
    for (query, _) in DEMO_QUERIES {
        // Each strategy's own answers, asked for as many hits as the pipeline asks it for.
        let by_dense = alone(&server, &key, &dense(), query, everything);
        let by_tgdt = |k: usize| alone(&server, &key, &tgdt(), query, k);
        let served = |pipeline: &str, k: usize| {
            let (status, out) = put(&server, &key, "/v1/collections/docs/route", &json!({"pipeline": pipeline}));
            assert_eq!(status, 200, "{out}");
            search(&server, &key, "docs", &json!({"text": query, "k": k}))
        };

        // Cascade: TGDT's top 6, ordered by dense's own scores.
        let answer = served("cascade", 4);
        let first = by_tgdt(6);
        let candidates: Vec<&String> = first.iter().map(|(id, _)| id).collect();
        let mut expected: Vec<(String, f64)> = by_dense.iter().filter(|(id, _)| candidates.contains(&id)).cloned().collect();
        expected.truncate(4);
        assert_same(&hits(&answer), &expected, query, "cascade");
        assert_eq!(answer["strategies"], json!(["tgdt@0.2.0", "dense@0.3.0"]));
        let first = &answer["hits"][0];
        assert!(first["features"]["tgdt"].is_number() && first["features"]["dense"].is_number(), "{first}");

        // RRF: sum of 1 / (60 + rank) over both lists, ties by id.
        let k = 5;
        let answer = served("rrf", k);
        let mut fused: HashMap<String, f64> = HashMap::new();
        for list in [alone(&server, &key, &dense(), query, k), by_tgdt(k)] {
            for (rank, (id, _)) in list.iter().enumerate() {
                *fused.entry(id.clone()).or_default() += 1.0 / (60.0 + rank as f64 + 1.0);
            }
        }
        let mut expected: Vec<(String, f64)> = fused.into_iter().collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        expected.truncate(k);
        assert_same(&hits(&answer), &expected, query, "rrf");

        // Fallback: past its 1 ms deadline TGDT gives way to dense, and says so; in time, TGDT answers.
        let answer = served("slow-first", 3);
        assert_same(&hits(&answer), &by_dense[..3], query, "fallback");
        assert!(answer["notes"].to_string().contains("stage `tgdt` failed"), "{answer}");
        let answer = served("fine-first", 3);
        assert_same(&hits(&answer), &by_tgdt(3), query, "fallback in time");
    }
}

fn assert_same(got: &[(String, f64)], expected: &[(String, f64)], query: &str, what: &str) {
    let ids = |l: &[(String, f64)]| l.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(got), ids(expected), "{what} for {query:?}: got {got:?}, expected {expected:?}");
    for ((_, a), (_, b)) in got.iter().zip(expected) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{what} for {query:?}: score {a} vs {b}");
    }
}

#[test]
fn bad_declarations_are_refused_when_set_with_a_4xx_that_says_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = server_with_tenant(&dir.path().join("data"));
    demo_collection(&server, &key);
    let (status, out, _) = call("POST", &server.url("/v1/tenants"), Some(ADMIN_KEY), body(&json!({"name": "other", "models": ["minilm-l6"]})));
    assert_eq!(status, 201, "{out}");
    let other = out["api_key"].as_str().unwrap().to_string();
    upload(&server, &other, "keyword-boost");
    let message = |out: &Value| out["error"]["message"].as_str().unwrap_or_default().to_string();
    let refused = |path: &str, value: Value, status: u16, says: &[&str]| {
        let (got, out) = put(&server, &key, path, &value);
        assert_eq!(got, status, "{value}: {out}");
        for s in says {
            assert!(message(&out).contains(s), "{value}: {out} does not say {s:?}");
        }
    };
    // Pipelines.
    refused("/v1/pipelines/p", json!({"fusion": {"stages": [dense(), {"strategy": "nope@1.0.0"}]}}), 404, &["fusion.stages[1]", "nope@1.0.0"]);
    refused("/v1/pipelines/p", json!({"cascade": {"first": dense(), "then": tgdt()}}), 400, &["cascade.then", "tgdt@0.2.0 does not rerank"]);
    refused("/v1/pipelines/p", json!({"fusion": {"stages": [dense(), tgdt()], "wieghts": [1, 1]}}), 400, &["pipeline.fusion", "wieghts"]);
    refused("/v1/pipelines/p", json!({"fusion": {"stages": [dense(), tgdt()], "weights": [0, 0]}}), 400, &["fusion.weights", "sum to 0"]);
    refused("/v1/pipelines/p", json!({"fusion": {"stages": [dense(), {"pipeline": "ghost"}]}}), 400, &["no pipeline `ghost`"]);
    refused("/v1/pipelines/p", json!({"fusion": {"stages": [dense(), {"strategy": "tgdt@0.2.0", "pipeline": "both"}]}}), 400, &["pipeline.fusion.stages[1]", "not both"]);
    refused("/v1/pipelines/p", json!("fusion"), 400, &["pipeline"]);
    // A cycle: q names r, then r is redeclared to name q.
    let (status, out) = put(&server, &key, "/v1/pipelines/r", &json!({"fallback": {"primary": dense(), "fallback": tgdt()}}));
    assert_eq!(status, 200, "{out}");
    let (status, out) = put(&server, &key, "/v1/pipelines/q", &json!({"fusion": {"stages": [dense(), {"pipeline": "r"}]}}));
    assert_eq!(status, 200, "{out}");
    refused("/v1/pipelines/r", json!({"fallback": {"primary": {"pipeline": "q"}, "fallback": dense()}}), 400, &["cycle", "r → q → r"]);
    let (_, out, _) = call("GET", &server.url("/v1/pipelines/r"), Some(&key), None);
    assert!(out["declaration"]["fallback"]["primary"]["strategy"].is_string(), "the refused declaration changed r: {out}");
    // A search makes at most 16 strategy calls, however pipelines nest: 8 stages of `two` (2
    // calls each) fit; growing `two` to 3 would make `wide` take 24, and is refused.
    let (status, out) = put(&server, &key, "/v1/pipelines/two", &json!({"fusion": {"stages": [dense(), tgdt()]}}));
    assert_eq!(status, 200, "{out}");
    let stages: Vec<Value> = (0..8).map(|i| json!({"name": format!("s{i}"), "pipeline": "two"})).collect();
    let (status, out) = put(&server, &key, "/v1/pipelines/wide", &json!({"fusion": {"stages": stages}}));
    assert_eq!(status, 200, "{out}");
    let mut third = dense();
    third["name"] = json!("again");
    refused("/v1/pipelines/two", json!({"fusion": {"stages": [dense(), tgdt(), third]}}), 400, &["pipeline `wide`", "24 strategy calls", "at most 16"]);
    refused("/v1/pipelines/p", json!({"cascade": {"first": tgdt(), "then": dense(), "depth": 5000}}), 400, &["cascade.depth", "5000"]);
    // Experiments.
    let arm = |name: &str, weight: f64| json!({"name": name, "weight": weight, "strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]});
    let experiment = |arms: Value| json!({"experiment": {"name": "e", "arms": arms}});
    refused("/v1/collections/docs/route", experiment(json!([arm("a", 0.0), arm("b", 0.0)])), 400, &["weight", "sum to 0"]);
    refused("/v1/collections/docs/route", experiment(json!([arm("a", 1.0), arm("b", f64::MAX)])), 400, &["arms[].weight[1]"]);
    let foreign = json!({"name": "b", "strategy": "keyword-boost@0.2.0", "config": {}});
    refused("/v1/collections/docs/route", experiment(json!([arm("a", 1.0), foreign])), 404, &["experiment.arms[1]", "no strategy `keyword-boost@0.2.0` for tenant `t`"]);
    refused("/v1/collections/docs/route", experiment(json!([arm("a", 1.0), {"name": "b", "pipeline": "ghost"}])), 400, &["arms[1]", "no pipeline `ghost`"]);
    refused("/v1/collections/docs/route", json!({"experiment": {"name": "e", "arms": [arm("a", 1.0)]}}), 400, &["2 to 8"]);
    refused("/v1/collections/docs/route", json!({"pipeline": "both", "strategy": "dense@0.3.0"}), 400, &["exactly one"]);
    let (_, out, _) = call("GET", &server.url("/v1/collections/docs"), Some(&key), None);
    assert_eq!(out["route"], json!({"pipeline": "both"}), "a refused route changed the route");
    // Feedback, promote and rollback.
    let (status, out, _) = call("POST", &server.url("/v1/feedback"), Some(&key), body(&json!({"impression": "0123", "clicks": ["volcano"]})));
    assert_eq!(status, 404, "{out}");
    assert!(message(&out).contains("no impression `0123`"), "{out}");
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/promote"), Some(&key), body(&json!({"arm": "a"})));
    assert_eq!(status, 400, "{out}");
    assert!(message(&out).contains("not an experiment"), "{out}");
    let (status, out, _) = call("GET", &server.url("/v1/collections/docs/experiment"), Some(&key), None);
    assert_eq!(status, 404, "{out}");
    // Sizes a caller picks are bounded: clicks per feedback, the sticky key, pipelines per tenant.
    let clicks: Vec<String> = (0..1001).map(|i| format!("id-{i}")).collect();
    let (status, out, _) = call("POST", &server.url("/v1/feedback"), Some(&key), body(&json!({"impression": "0123", "clicks": clicks})));
    assert_eq!(status, 400, "{out}");
    assert!(message(&out).contains("at most 1000"), "{out}");
    let (status, out, _) = call("POST", &server.url("/v1/collections/docs/search"), Some(&key), body(&json!({"text": "x", "key": "k".repeat(300)})));
    assert_eq!(status, 400, "{out}");
    assert!(message(&out).contains("1 to 256 bytes"), "{out}");
    let small = json!({"fallback": {"primary": dense(), "fallback": tgdt()}});
    let refusal = (0..300).map(|i| put(&server, &key, &format!("/v1/pipelines/n{i}"), &small)).find(|(status, _)| *status != 200);
    let (status, out) = refusal.expect("the pipelines per tenant are bounded");
    assert_eq!(status, 400, "{out}");
    assert!(message(&out).contains("256 pipelines"), "{out}");
    let (_, listed, _) = call("GET", &server.url("/v1/pipelines"), Some(&key), None);
    assert_eq!(listed.as_array().unwrap().len(), 256);
    // A pipeline a route uses cannot be removed.
    let (status, out, _) = call("DELETE", &server.url("/v1/pipelines/both"), Some(&key), None);
    assert_eq!(status, 409, "{out}");
    assert!(message(&out).contains("t/docs"), "{out}");
}

/// A tiny deterministic generator for the click model.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn interleaving_finds_the_preferred_arm_and_no_difference_between_identical_arms() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = server_with_tenant(&dir.path().join("data"));
    demo_collection(&server, &key);
    let impressions = 150;
    // Arm A is dense, arm B TGDT. Interleaving tells arms apart where their rankings differ, so
    // the queries are those (from a pool of paraphrases and vague ones) where the two put
    // different items first.
    let pool = DEMO_QUERIES.iter().map(|(q, _)| *q).chain(["weekend", "a loud noise", "something cold", "long distance", "people at work", "the final minutes", "water", "learning"]);
    let mut a_tops: HashMap<&str, String> = HashMap::new();
    let mut queries = Vec::new();
    for query in pool {
        let (a_top, b_top) = (alone(&server, &key, &dense(), query, 1)[0].0.clone(), alone(&server, &key, &tgdt(), query, 1)[0].0.clone());
        if a_top != b_top {
            queries.push(query);
        }
        a_tops.insert(query, a_top);
    }
    assert!(queries.len() >= 3, "dense and TGDT agree on too many queries: {queries:?}");
    for (experiment, b, preferred) in [("a-vs-tgdt", tgdt(), true), ("a-vs-a", dense(), false)] {
        let mut a = dense();
        a["name"] = json!("a");
        let mut b = b;
        b["name"] = json!("b");
        let (status, out) = put(&server, &key, "/v1/collections/docs/route", &json!({"experiment": {"name": experiment, "interleave": true, "arms": [a, b]}}));
        assert_eq!(status, 200, "{out}");
        let mut rng = Lcg(7);
        for i in 0..impressions {
            let query = queries[i % queries.len()];
            let answer = search(&server, &key, "docs", &json!({"text": query, "k": 5, "query_id": format!("q{i}")}));
            assert_eq!((answer["experiment"].as_str(), answer["arm"].as_str()), (Some(experiment), Some("a+b")), "{answer}");
            let shown = answer["hits"].as_array().unwrap();
            assert!(shown.iter().all(|h| h["team"] == "a" || h["team"] == "b"), "{answer}");
            // The user prefers arm A's documents: A's own top hit, wherever it is shown, gets the
            // click 9 times in 10; otherwise a shown hit at random.
            let click = if preferred && rng.next() < 0.9 {
                a_tops[query].clone()
            } else {
                shown[(rng.next() * shown.len() as f64) as usize]["id"].as_str().unwrap().to_string()
            };
            let impression = answer["impression"].as_str().unwrap();
            let (status, out, _) = call("POST", &server.url("/v1/feedback"), Some(&key), body(&json!({"impression": impression, "clicks": [click]})));
            assert_eq!(status, 200, "{out}");
        }
        // The same query id merges the same way: an impression can be replayed.
        let replay = |i: usize| search(&server, &key, "docs", &json!({"text": queries[0], "k": 5, "query_id": format!("q{i}")}));
        assert_eq!(replay(0)["hits"], replay(0)["hits"]);
        let (status, report, _) = call("GET", &server.url("/v1/collections/docs/experiment"), Some(&key), None);
        assert_eq!(status, 200, "{report}");
        let verdict = &report["interleaving"];
        let (delta, low, high, p) = (verdict["delta"].as_f64().unwrap(), verdict["ci"][0].as_f64().unwrap(), verdict["ci"][1].as_f64().unwrap(), verdict["p_value"].as_f64().unwrap());
        assert!(verdict["impressions"].as_u64().unwrap() >= impressions as u64, "{report}");
        if preferred {
            assert!(delta > 0.0 && low > 0.0 && p < 0.01, "A is preferred, yet {verdict}");
            assert!(verdict["wins"]["a"].as_u64() > verdict["wins"]["b"].as_u64(), "{verdict}");
        } else {
            assert!(low <= 0.0 && 0.0 <= high, "identical arms, yet Δ's interval excludes 0: {verdict}");
        }
        let arms = report["arms"].as_array().unwrap();
        assert!(arms.iter().all(|a| a["calls"].as_u64() >= Some(impressions as u64) && a["latency_ms"]["p99"].as_f64() > Some(0.0)), "{report}");
    }
}

#[test]
fn keyed_calls_split_by_weight_and_keep_their_arm_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, key) = server_with_tenant(&data);
    upload(&server, &key, "quarry-test-swap-v1");
    upload(&server, &key, "quarry-test-swap-v2");
    let experiment = json!({"experiment": {"name": "split", "arms": [
        {"name": "one", "weight": 70, "strategy": "swap@1.0.0"}, {"name": "two", "weight": 30, "strategy": "swap@2.0.0"}]}});
    let (status, out) = put(&server, &key, "/v1/collections/live/route", &experiment);
    assert_eq!(status, 200, "{out}");
    let items = json!({"items": [{"id": "served-by-1.0.0", "text": "1"}, {"id": "served-by-2.0.0", "text": "2"}]});
    let (status, out, _) = call("POST", &server.url("/v1/collections/live/items"), Some(&key), body(&items));
    assert_eq!(status, 200, "{out}");
    let calls = 10_000;
    let assigned: Vec<(usize, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (server, key) = (&server, &key);
                scope.spawn(move || {
                    let agent = agent();
                    (w..calls)
                        .step_by(4)
                        .map(|i| {
                            let answer = post(&agent, &server.url("/v1/collections/live/search"), key, &json!({"text": "x", "k": 1, "key": format!("user-{i}")}));
                            let arm = answer["arm"].as_str().unwrap().to_string();
                            // The arm's own strategy answered.
                            let expected = if arm == "one" { "served-by-1.0.0" } else { "served-by-2.0.0" };
                            assert_eq!(answer["hits"][0]["id"], expected, "{answer}");
                            (i, arm)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let one = assigned.iter().filter(|(_, arm)| arm == "one").count() as f64 / calls as f64 * 100.0;
    assert!((one - 70.0).abs() <= 2.0, "arm one got {one:.1}% of the calls, weight 70%");
    let (_, report, _) = call("GET", &server.url("/v1/collections/live/experiment"), Some(&key), None);
    assert_eq!(report["arms"][0]["calls"].as_u64().unwrap() + report["arms"][1]["calls"].as_u64().unwrap(), calls as u64, "{report}");
    // Same key, same arm: now, and after a restart.
    let arm_of = |server: &Server, i: usize| search(server, &key, "live", &json!({"text": "x", "key": format!("user-{i}")}))["arm"].as_str().unwrap().to_string();
    let sample: Vec<&(usize, String)> = assigned.iter().step_by(50).collect();
    for (i, arm) in &sample {
        assert_eq!(&arm_of(&server, *i), arm, "user-{i} changed arm");
    }
    assert!(server.terminate().success());
    let server = Server::start(&data, None);
    for (i, arm) in &sample {
        assert_eq!(&arm_of(&server, *i), arm, "user-{i} changed arm across a restart");
    }
}

fn post(agent: &ureq::Agent, url: &str, key: &str, value: &Value) -> Value {
    let mut response = agent.post(url).header("authorization", format!("Bearer {key}")).header("content-type", "application/json").send(value.to_string()).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "{url}: {text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn routes_swap_every_200_ms_under_100_searches_a_second_without_a_failed_call() {
    let dir = tempfile::tempdir().unwrap();
    let (server, key) = server_with_tenant(&dir.path().join("data"));
    upload(&server, &key, "quarry-test-swap-v1");
    upload(&server, &key, "quarry-test-swap-v2");
    let v1 = json!({"strategy": "swap@1.0.0"});
    let v2 = json!({"strategy": "swap@2.0.0"});
    let (status, out) = put(&server, &key, "/v1/pipelines/both", &json!({"fusion": {"stages": [{"name": "one", "strategy": "swap@1.0.0"}, {"name": "two", "strategy": "swap@2.0.0"}]}}));
    assert_eq!(status, 200, "{out}");
    let experiment = json!({"experiment": {"name": "ab", "arms": [{"name": "one", "strategy": "swap@1.0.0"}, {"name": "two", "strategy": "swap@2.0.0"}]}});
    let targets = [v1.clone(), v2, experiment, json!({"pipeline": "both"})];
    let (status, out) = put(&server, &key, "/v1/collections/live/route", &v1);
    assert_eq!(status, 200, "{out}");
    let items = json!({"items": [{"id": "served-by-1.0.0", "text": "1"}, {"id": "served-by-2.0.0", "text": "2"}]});
    let (status, out, _) = call("POST", &server.url("/v1/collections/live/items"), Some(&key), body(&items));
    assert_eq!(status, 200, "{out}");

    let (seconds, per_second, clients) = (20u64, 100u64, 4u64);
    let start = Instant::now();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let swapper = scope.spawn(|| {
            let agent = agent();
            let mut swaps = 0;
            while start.elapsed() < Duration::from_secs(seconds) {
                let target = &targets[swaps % targets.len()];
                let mut response = agent.put(server.url("/v1/collections/live/route")).header("authorization", format!("Bearer {key}")).send_json(target).unwrap();
                assert_eq!(response.status(), 200, "{}", response.body_mut().read_to_string().unwrap());
                swaps += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            swaps
        });
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (server, key) = (&server, &key);
                scope.spawn(move || {
                    let agent = agent();
                    let total = seconds * per_second / clients;
                    let mut out = Vec::with_capacity(total as usize);
                    for n in 0..total {
                        // A bounded rate: each client sends at its own fixed times.
                        let due = start + Duration::from_micros((n * clients + c) * 1_000_000 / per_second);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        out.push(post(&agent, &server.url("/v1/collections/live/search"), key, &json!({"text": "x", "k": 2})));
                    }
                    out
                })
            })
            .collect();
        let answers = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        assert!(swapper.join().unwrap() >= 80, "the route swapped too rarely");
        answers
    });
    assert_eq!(answers.len() as u64, seconds * per_second);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for answer in &answers {
        let ids: Vec<&str> = answer["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
        let served = match (answer["strategy"].as_str().unwrap(), answer["arm"].as_str()) {
            ("swap@1.0.0", None) => {
                assert_eq!(ids, ["served-by-1.0.0"], "{answer}");
                "v1"
            }
            ("swap@2.0.0", None) => {
                assert_eq!(ids, ["served-by-2.0.0"], "{answer}");
                "v2"
            }
            (version, Some(arm)) => {
                assert_eq!(answer["experiment"], "ab", "{answer}");
                assert_eq!((arm, version), if arm == "one" { ("one", "swap@1.0.0") } else { ("two", "swap@2.0.0") }, "{answer}");
                "experiment"
            }
            ("pipeline:both", None) => {
                assert_eq!(answer["strategies"], json!(["swap@1.0.0", "swap@2.0.0"]), "{answer}");
                assert_eq!(ids.len(), 2, "{answer}");
                "pipeline"
            }
            other => panic!("unexpected answer {other:?}: {answer}"),
        };
        *seen.entry(served.to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 4, "every target served: {seen:?}");
}
