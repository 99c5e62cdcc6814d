//! Misbehaving plugins get typed errors within their limits, and the host keeps serving.

use quarry_host::plugins::{CallError, StrategyError};
use quarry_host::{Limits, NewItem, Quarry, SearchRequest};
use quarry_tests::{add_model, host_with, plugin, route};
use std::time::{Duration, Instant};

// Long enough for a debug-build host under parallel tests; the loop test waits this long.
const DEADLINE_MS: u64 = 1_000;
const MEMORY: usize = 64 << 20;

fn sandboxed_host(dir: &std::path::Path) -> Quarry {
    let limits = Limits { deadline_ms: DEADLINE_MS, memory_bytes: MEMORY, max_hits: 1_000, ..Limits::default() };
    let host = host_with(dir, limits);
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-test-hostile")).unwrap();
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("hostile", route("hostile@0.1.0", &["minilm-l6"], serde_json::json!({}))).unwrap();
    // The hostile plugin reports values as the score of this item.
    host.ingest("hostile", vec![NewItem::text("answer", "answer")], |_| {}).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", vec![NewItem::text("cat", "a cat sleeps on the sofa"), NewItem::text("sea", "waves crash on the shore")], |_| {}).unwrap();
    host
}

/// The hits' scores (the hostile plugin's answers), or the error, and how long the call took.
fn misbehave(host: &Quarry, what: &str, target: &str) -> (Result<Vec<f32>, CallError>, Duration) {
    let request = SearchRequest { params: serde_json::json!({"target": target}), ..SearchRequest::text(what, 10) };
    let start = Instant::now();
    let result = host.search("hostile", &request).map(|r| r.hits.into_iter().map(|h| h.score).collect());
    (result, start.elapsed())
}

/// After any misbehaviour, a well-behaved plugin in the same host still answers correctly.
fn assert_still_serving(host: &Quarry) {
    let response = host.search("docs", &SearchRequest::text("ocean surf", 1)).unwrap();
    assert_eq!(response.hits[0].id, "sea");
    let (ping, _) = misbehave(host, "ping", "");
    assert_eq!(ping.unwrap(), Vec::<f32>::new());
}

fn strategy_error(result: Result<Vec<f32>, CallError>) -> StrategyError {
    match result {
        Err(CallError::Strategy { error: e, .. }) => e,
        other => panic!("expected an error returned by the strategy, got {other:?}"),
    }
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());
    let (result, elapsed) = misbehave(&host, "loop", "");
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::Timeout { deadline_ms: DEADLINE_MS, .. }), "{err:?}");
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(elapsed >= Duration::from_millis(DEADLINE_MS) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_still_serving(&host);
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());
    let (result, elapsed) = misbehave(&host, "alloc", "");
    let err = result.unwrap_err();
    assert!(matches!(err, CallError::MemoryLimit { limit_bytes: MEMORY, .. }), "{err:?}");
    assert!(elapsed < Duration::from_secs(5));
    assert_still_serving(&host);
}

#[test]
fn a_panic_is_reported_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());
    let err = misbehave(&host, "panic", "").0.unwrap_err();
    match &err {
        CallError::Panicked { strategy, message } => {
            assert_eq!(strategy, "hostile@0.1.0");
            assert!(message.contains("panicked on purpose"), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_still_serving(&host);
}

#[test]
fn deep_recursion_is_a_trap_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());
    let err = misbehave(&host, "recurse", "").0.unwrap_err();
    assert!(matches!(err, CallError::Trapped { .. }), "{err:?}");
    assert_still_serving(&host);
}

#[test]
fn a_huge_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());
    let err = misbehave(&host, "huge", "").0.unwrap_err();
    assert!(matches!(err, CallError::ResultTooLarge { count: 200_000, limit: 1_000, .. }), "{err:?}");
    assert_still_serving(&host);
}

#[test]
fn ungranted_models_and_collections_are_denied() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());
    match strategy_error(misbehave(&host, "ungranted-model", "").0) {
        StrategyError::Denied(m) => assert!(m.contains("secret-model") && m.contains("minilm-l6"), "{m}"),
        other => panic!("{other:?}"),
    }
    match strategy_error(misbehave(&host, "other-collection", "docs").0) {
        StrategyError::Denied(m) => assert!(m.contains("`docs`"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_still_serving(&host);
}

#[test]
fn no_files_environment_sockets_or_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());

    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-4411").unwrap();
    let err = format!("{:?}", strategy_error(misbehave(&host, "read-file", secret.to_str().unwrap()).0));
    assert!(!err.contains("TOP-SECRET"), "{err}");
    assert!(err.contains("cannot read the file"), "{err}");

    assert!(std::env::var("PATH").is_ok(), "the host has a PATH to leak");
    let err = format!("{:?}", strategy_error(misbehave(&host, "read-env", "PATH").0));
    assert!(err.contains("cannot read the variable") && err.contains("not found"), "{err}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let err = format!("{:?}", strategy_error(misbehave(&host, "open-socket", &addr).0));
    assert!(err.contains("cannot connect"), "{err}");
    assert!(listener.accept().is_err(), "the plugin reached a socket on the host");

    assert_eq!(misbehave(&host, "wall-clock", "").0.unwrap(), [0.0], "the wall clock is frozen at the epoch");
    assert_eq!(misbehave(&host, "clock", "").0.unwrap(), [1.0], "the monotonic clock reads whole milliseconds");
    assert_still_serving(&host);
}

#[test]
fn every_misbehaviour_in_turn_leaves_the_host_serving() {
    let dir = tempfile::tempdir().unwrap();
    let host = sandboxed_host(dir.path());
    for what in ["loop", "alloc", "panic", "recurse", "huge", "ungranted-model", "loop"] {
        assert!(misbehave(&host, what, "").0.is_err(), "{what} should fail");
        assert_still_serving(&host);
    }
}
