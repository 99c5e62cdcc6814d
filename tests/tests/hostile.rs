//! The hostile corpus (tests/plugins/hostile): one tenant's plugin attacks the host through
//! every class the sandbox must hold against (guest code, blocking, host work, host memory and
//! disk, host resources, what it returns), while another tenant's plugin serves.
//!
//! For every case: the caller gets the expected typed error (or a correct answer) within
//! deadline x 1.2 + 100 ms; the host's peak RSS grows by less than [`RSS_BOUND`]; a failed call
//! leaves nothing behind; and the other tenant's search still answers correctly.
//!
//! One test runs the whole corpus in turn, so the peak RSS it reads belongs to one case at a time.

use quarry_host::plugins::registry::Owner;
use quarry_host::plugins::{CallError, StrategyError};
use quarry_host::models::ModelManifest;
use quarry_host::{Grants, Limits, NewItem, Quarry, Route, SearchRequest};
use quarry_tests::{add_model, add_test_model, host_with, plugin, route};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const DEADLINE_MS: u64 = 2_000;
const MEMORY: usize = 64 << 20;
/// Most any one case may raise the host's peak RSS. Before the host-side bounds, single cases
/// took 2.6 GB (one long text), 7.8 GB (decoder logits) and 4 TB (a MaxSim scratch buffer).
const RSS_BOUND: u64 = 384 << 20;

/// What a case must end in.
#[derive(Debug)]
enum Expect {
    Timeout,
    MemoryLimit,
    Panicked,
    Trapped,
    TooLarge,
    InvalidResult,
    /// The strategy's call failed with this contract error, whose message holds the text.
    Invalid(&'static str),
    NotFound(&'static str),
    Denied(&'static str),
    /// Any other strategy error holding the text.
    Failed(&'static str),
    /// An answer: the hits' (id, score).
    Hits(Vec<(&'static str, f32)>),
}

struct Case {
    what: &'static str,
    params: Value,
    expect: Expect,
}

fn case(what: &'static str, params: Value, expect: Expect) -> Case {
    Case { what, params, expect }
}

/// VmHWM (peak RSS) of this process, after resetting it to the current RSS.
fn reset_peak_rss() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("Linux resets the peak RSS through /proc/self/clear_refs");
    peak_rss()
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// MiniLM with runs of at most 8 texts: an operator bounds a model's memory per run (activations
/// of max_batch x max_length tokens) in its manifest; at the default 32, one run of long texts
/// takes about 650 MiB of ONNX Runtime's arena, more than this test's bound.
fn add_small_batch_minilm(host: &Quarry, dir: &std::path::Path) {
    let mut manifest = ModelManifest::load(&quarry_tests::root().join("examples/models/minilm-l6.json")).unwrap();
    manifest.batch.max_batch = 8;
    let path = dir.join("minilm-l6-small-batch.json");
    std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
    host.add_model_file(&path).unwrap();
}

fn setup(dir: &std::path::Path) -> Quarry {
    let limits = Limits { deadline_ms: DEADLINE_MS, memory_bytes: MEMORY, max_hits: 1_000, ..Limits::default() };
    let host = host_with(&dir.join("data"), limits);
    add_small_batch_minilm(&host, dir);
    add_test_model(&host, "tiny-lm");
    add_test_model(&host, "slow-lm");
    add_test_model(&host, "cross-attributes");
    add_test_model(&host, "color-image");
    let acme = Owner::tenant("acme").unwrap();
    host.add_plugin_as(&acme, &plugin("quarry-test-hostile")).unwrap();
    host.add_plugin_as(&Owner::tenant("globex").unwrap(), &plugin("quarry-plugin-dense")).unwrap();
    let models = ["minilm-l6", "tiny-lm", "slow-lm", "cross-attributes", "color-image"];
    host.set_route("acme/hostile", route("hostile@0.1.0", &models, json!({}))).unwrap();
    let mut items = vec![NewItem::text("answer", "answer")];
    // 16 items with token sets of 4096 x 64: work for a late interaction to refuse.
    items.extend((0..16).map(|i| NewItem::text(&format!("big-{i}"), "tokens 4096 64")));
    host.ingest("acme/hostile", items, |_| {}).unwrap();
    host.set_route("globex/docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("globex/docs", vec![NewItem::text("cat", "a cat sleeps on the sofa"), NewItem::text("sea", "waves crash on the shore")], |_| {}).unwrap();
    host
}

fn attack(host: &Quarry, what: &str, params: &Value) -> Result<Vec<(String, f32)>, CallError> {
    let request = SearchRequest { params: params.clone(), ..SearchRequest::text(what, 10) };
    host.search("acme/hostile", &request).map(|r| r.hits.into_iter().map(|h| (h.id, h.score)).collect())
}

/// The other tenant's search answers, and correctly.
fn assert_bystander_served(host: &Quarry, after: &str) {
    let response = host.search("globex/docs", &SearchRequest::text("ocean surf", 1)).unwrap_or_else(|e| panic!("after {after}: the other tenant failed: {e}"));
    assert_eq!(response.hits[0].id, "sea", "after {after}");
}

fn check(what: &str, result: Result<Vec<(String, f32)>, CallError>, expect: &Expect) {
    let strategy_error = |e: &StrategyError| -> String { e.to_string() };
    match (expect, &result) {
        (Expect::Timeout, Err(CallError::Timeout { deadline_ms: DEADLINE_MS, .. })) => {}
        (Expect::MemoryLimit, Err(CallError::MemoryLimit { .. })) => {}
        (Expect::Panicked, Err(CallError::Panicked { .. })) => {}
        (Expect::Trapped, Err(CallError::Trapped { .. })) => {}
        (Expect::TooLarge, Err(CallError::ResultTooLarge { .. })) => {}
        (Expect::InvalidResult, Err(CallError::InvalidResult { .. })) => {}
        (Expect::Invalid(text), Err(CallError::Strategy { error: e @ StrategyError::InvalidInput(_), .. }))
        | (Expect::NotFound(text), Err(CallError::Strategy { error: e @ StrategyError::NotFound(_), .. }))
        | (Expect::Denied(text), Err(CallError::Strategy { error: e @ StrategyError::Denied(_), .. }))
        | (Expect::Failed(text), Err(CallError::Strategy { error: e, .. })) => {
            assert!(strategy_error(e).contains(text), "{what}: `{}` does not say `{text}`", strategy_error(e));
        }
        (Expect::Hits(want), Ok(hits)) => {
            let got: Vec<(&str, f32)> = hits.iter().map(|(id, s)| (id.as_str(), *s)).collect();
            assert_eq!(&got, want, "{what}");
        }
        _ => panic!("{what}: expected {expect:?}, got {result:?}"),
    }
}

#[test]
fn the_hostile_corpus_cannot_hurt_the_host_or_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let host = setup(dir.path());
    let model = |m: &str, n: u64| json!({"model": m, "n": n});
    let corpus = [
        // Guest code.
        case("loop", json!({}), Expect::Timeout),
        case("alloc", json!({}), Expect::MemoryLimit),
        case("panic", json!({}), Expect::Panicked),
        case("recurse", json!({}), Expect::Trapped),
        case("huge", json!({}), Expect::TooLarge),
        // Blocking in the host.
        case("sleep", json!({}), Expect::Timeout),
        case("sleep-forever", json!({}), Expect::Timeout),
        case("write-then-spin", json!({}), Expect::Timeout),
        // Host work past the deadline.
        case("embed-huge", model("minilm-l6", 4096), Expect::Timeout),
        case("embed-loop", model("minilm-l6", 0), Expect::Timeout),
        case("decode-long", model("slow-lm", 900), Expect::Timeout),
        // Host work and memory past a budget, refused before it is done.
        case("decode-long", model("slow-lm", 2048), Expect::Invalid("limits.max_decoder_tokens")),
        case("decode-wide", model("tiny-lm", 4096), Expect::Invalid("limits.max_payload_bytes")),
        case("maxsim", json!({"n": 64}), Expect::Invalid("limits.max_maxsim_work")),
        case("maxsim", json!({"n": 0}), Expect::Invalid("dimension 0")),
        case("text-huge", model("minilm-l6", 3 << 20), Expect::Hits(vec![("answer", 1.0)])),
        case("text-huge", model("minilm-l6", 4 << 20), Expect::Invalid("limits.max_item_bytes")),
        case("cross-batch", model("cross-attributes", 100_000), Expect::Invalid("limits.max_batch")),
        case("image-bomb", model("color-image", 0), Expect::Invalid("too large to decode")),
        case("blobs", json!({"n": 64}), Expect::Invalid("limits.max_write_bytes")),
        case("codes-huge", json!({"target": "answer", "n": 3_000_000}), Expect::Invalid("limits.max_codes")),
        case("field-for-missing-item", json!({}), Expect::NotFound("ingest the item first")),
        case("field-for-bad-id", json!({}), Expect::Invalid("control characters")),
        case("counters", json!({"n": 100_000}), Expect::Hits(vec![("answer", 1.0)])),
        case("counters-then-fail", json!({}), Expect::Failed("failing after counting")),
        case("log-spam", json!({"n": 100_000}), Expect::Hits(vec![("answer", 1.0)])),
        // Host resources.
        case("pollables", json!({"n": 2_000_000}), Expect::Trapped),
        case("sockets", json!({}), Expect::Failed("cannot open a socket")),
        case("open-socket", json!({"target": "127.0.0.1:9"}), Expect::Failed("cannot connect")),
        // Grants.
        case("ungranted-model", json!({}), Expect::Denied("secret-model")),
        case("other-collection", json!({"target": "docs"}), Expect::Denied("`docs`")),
        // What the strategy returns.
        case("nan-score", json!({"target": "answer"}), Expect::InvalidResult),
        case("inf-score", json!({"target": "answer"}), Expect::InvalidResult),
        case("duplicates", json!({"target": "answer"}), Expect::Hits(vec![("answer", 0.9)])),
        case("huge-id", json!({}), Expect::Hits(vec![])),
        case("clock", json!({}), Expect::Hits(vec![("answer", 1.0)])),
        case("wall-clock", json!({}), Expect::Hits(vec![("answer", 0.0)])),
    ];
    let slack = Duration::from_millis(DEADLINE_MS * 12 / 10 + 100);
    for Case { what, params, expect } in &corpus {
        let before = reset_peak_rss();
        let start = Instant::now();
        let result = attack(&host, what, params);
        let elapsed = start.elapsed();
        let grown = peak_rss().saturating_sub(before);
        eprintln!("{what:<24} {:>6} ms  peak RSS +{:>4} MiB  {}", elapsed.as_millis(), grown >> 20, match &result {
            Ok(hits) => format!("ok, {} hits", hits.len()),
            Err(e) => quarry_host::printable::printable(&e.to_string(), 120),
        });
        check(what, result, expect);
        assert!(elapsed <= slack, "{what} took {elapsed:?}, past the deadline's bound of {slack:?}");
        assert!(grown < RSS_BOUND, "{what} raised the peak RSS by {} MiB", grown >> 20);
        assert_bystander_served(&host, what);
    }

    // Failed calls left nothing: no blob, no field, no counter.
    let probe = |what: &str, target: &str| attack(&host, what, &json!({"target": target})).unwrap();
    assert_eq!(probe("has-blob", "spilled"), [("answer".to_string(), 0.0)], "the write before the timeout did not land");
    assert_eq!(probe("has-blob", "blob-0"), [("answer".to_string(), 0.0)], "no blob of the refused batch landed");
    assert_eq!(probe("has-field", "answer"), [("answer".to_string(), 0.0)], "the refused code sequence did not land");
    let counters = host.counters();
    assert!(!counters.keys().any(|k| k.ends_with("/failed-call")), "a failed call's counters were dropped");
    let mine: Vec<&String> = counters.keys().filter(|k| k.starts_with("acme/hostile@0.1.0/counter-")).collect();
    assert!(mine.len() <= Limits::default().max_counters, "{} counter names kept", mine.len());
    assert_eq!(counters.get("acme/hostile@0.1.0/quarry.unknown-hit-ids"), Some(&3.0), "the unknown id, the huge one and the escaping one were counted");
    assert!(counters.keys().all(|k| k.starts_with("acme/")), "counters are attributed to the tenant");
}

#[test]
fn a_tenant_at_its_call_limit_waits_while_another_tenant_serves() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { deadline_ms: 1_000, max_calls_per_tenant: 2, ..Limits::default() };
    let host = host_with(dir.path(), limits);
    add_model(&host, "minilm-l6");
    host.add_plugin_as(&Owner::tenant("acme").unwrap(), &plugin("quarry-test-hostile")).unwrap();
    host.add_plugin_as(&Owner::tenant("globex").unwrap(), &plugin("quarry-plugin-dense")).unwrap();
    host.set_route("acme/hostile", Route { strategy: "hostile@0.1.0".into(), config: json!({}), grants: Grants::default() }).unwrap();
    host.set_route("globex/docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("globex/docs", vec![NewItem::text("cat", "a cat sleeps on the sofa"), NewItem::text("sea", "waves crash on the shore")], |_| {}).unwrap();
    std::thread::scope(|scope| {
        // acme fills its two calls with sleepers; a third acme call waits for one of them.
        let sleepers: Vec<_> = (0..2).map(|_| scope.spawn(|| attack(&host, "sleep", &json!({})))).collect();
        std::thread::sleep(Duration::from_millis(200));
        let third = scope.spawn(|| {
            let start = Instant::now();
            (attack(&host, "ping", &json!({})), start.elapsed())
        });
        // Meanwhile globex is not held up.
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        assert_bystander_served(&host, "acme at its limit");
        assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
        for sleeper in sleepers {
            assert!(matches!(sleeper.join().unwrap(), Err(CallError::Timeout { .. })));
        }
        let (result, waited) = third.join().unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(waited >= Duration::from_millis(600), "the third acme call ran at once ({waited:?}) instead of waiting for a sleeper");
    });
}
