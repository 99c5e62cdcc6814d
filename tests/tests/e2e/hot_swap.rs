//! Routes switch atomically while searches run; each call finishes on the version it began with.

use quarry_host::SearchRequest;
use quarry_tests::{host, plugin, route};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn switching_a_route_50_times_under_load_fails_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(host(dir.path()));
    host.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    host.add_plugin(&plugin("quarry-test-swap-v2")).unwrap();
    host.set_route("live", route("swap@1.0.0", &[], serde_json::json!({}))).unwrap();
    // The items each version answers with (the host keeps only hits for stored items).
    let answers = ["served-by-1.0.0", "served-by-2.0.0"].map(|id| quarry_host::NewItem::text(id, id));
    host.ingest("live", answers.to_vec(), |_| {}).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let searchers: Vec<_> = (0..4)
        .map(|_| {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut served = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = host.search("live", &SearchRequest::text("anything", 1)).expect("no call fails during a swap");
                    served.push((response.strategy, response.hits[0].id.clone()));
                }
                served
            })
        })
        .collect();

    for i in 0..50 {
        let version = if i % 2 == 0 { "swap@2.0.0" } else { "swap@1.0.0" };
        host.set_route("live", route(version, &[], serde_json::json!({}))).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        // A call that starts after the switch runs the new version.
        let response = host.search("live", &SearchRequest::text("after", 1)).unwrap();
        assert_eq!(response.strategy, version);
        assert_eq!(response.hits[0].id, format!("served-by-{}", &version["swap@".len()..]));
    }
    stop.store(true, Ordering::Relaxed);

    let served: Vec<(String, String)> = searchers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(served.len() >= 50, "only {} searches ran", served.len());
    for (strategy, hit) in &served {
        assert_eq!(hit, &format!("served-by-{}", &strategy["swap@".len()..]), "a call answered by a version it did not start on");
    }
    for version in ["swap@1.0.0", "swap@2.0.0"] {
        let calls = served.iter().filter(|(s, _)| s == version).count();
        assert!(calls > 0, "{version} never served");
        // Each version counted its own searches (the 50 checks after each switch included).
        let checks = 25;
        assert_eq!(host.counters()[&format!("default/{version}/searches")], (calls + checks) as f64);
    }
}
