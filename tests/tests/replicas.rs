//! Hosts sharing one control store serve as one: plugins, routes and pipelines changed through
//! one reach the others by the store's watch, while their searches keep running.

use quarry_host::control::{ControlStore, MemoryStore};
use quarry_host::{HostConfig, Quarry, SearchRequest};
use quarry_tests::{plugin, route, shared_cache};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a change made through one host may take to serve on another sharing its store.
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);

fn replica(dir: &std::path::Path, control: &Arc<dyn ControlStore>) -> Quarry {
    let mut config = HostConfig::new(dir);
    config.cache_dir = Some(shared_cache());
    config.control = Some(control.clone());
    Quarry::open(config).expect("host opens")
}

/// Wait until `ready` holds, and say how long that took.
fn within(bound: Duration, what: &str, ready: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < bound, "{what} did not happen within {bound:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

#[test]
fn a_route_swap_through_one_host_serves_on_another_within_the_bound_and_fails_no_call() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let control: Arc<dyn ControlStore> = Arc::new(MemoryStore::default());
    let one = replica(dirs[0].path(), &control);
    let two = Arc::new(replica(dirs[1].path(), &control));

    one.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    one.add_plugin(&plugin("quarry-test-swap-v2")).unwrap();
    one.set_route("live", route("swap@1.0.0", &[], serde_json::json!({}))).unwrap();
    within(PROPAGATION_BOUND, "the route reaching the second host", || two.route("live").is_ok());
    assert_eq!(two.plugins().len(), 2, "both plugins were compiled before the route took effect");
    // Collections stay on each host's disk in the embedded mode: give both the answers.
    let answers = ["served-by-1.0.0", "served-by-2.0.0"].map(|id| quarry_host::NewItem::text(id, id));
    for host in [&one, two.as_ref()] {
        host.ingest("live", answers.to_vec(), |_| {}).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let searchers: Vec<_> = (0..2)
        .map(|_| {
            let (two, stop) = (two.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut served = 0;
                while !stop.load(Ordering::Relaxed) {
                    let response = two.search("live", &SearchRequest::text("anything", 1)).expect("no call fails during a swap");
                    assert_eq!(response.hits[0].id, format!("served-by-{}", &response.strategy["swap@".len()..]), "a call answered by a version it did not start on");
                    served += 1;
                }
                served
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let version = if i % 2 == 0 { "swap@2.0.0" } else { "swap@1.0.0" };
        one.set_route("live", route(version, &[], serde_json::json!({}))).unwrap();
        let took = within(PROPAGATION_BOUND, &format!("the swap to {version} reaching the second host"), || {
            two.search("live", &SearchRequest::text("after", 1)).unwrap().strategy == version
        });
        slowest = slowest.max(took);
    }
    stop.store(true, Ordering::Relaxed);
    let served: usize = searchers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(served > 20, "only {served} searches ran on the second host");
    eprintln!("slowest swap to reach the second host: {slowest:?} ({served} searches ran there meanwhile)");

    // A rollback through the second host reaches the first: the previous route travelled too.
    assert_eq!(two.rollback("live").unwrap().describe(), "swap@2.0.0");
    within(PROPAGATION_BOUND, "the rollback reaching the first host", || one.search("live", &SearchRequest::text("x", 1)).unwrap().strategy == "swap@2.0.0");

    // A plugin removed through one host is gone from the other.
    one.set_route("live", route("swap@1.0.0", &[], serde_json::json!({}))).unwrap();
    within(PROPAGATION_BOUND, "the route back to 1.0.0", || two.route("live").is_ok_and(|t| t.describe() == "swap@1.0.0"));
    one.remove_plugin("swap@2.0.0").unwrap();
    within(PROPAGATION_BOUND, "the removal reaching the second host", || two.plugin("swap@2.0.0").is_err());
}

#[test]
fn a_host_started_later_reads_what_the_store_holds_and_follows_it_from_then() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let control: Arc<dyn ControlStore> = Arc::new(MemoryStore::default());
    let one = replica(dirs[0].path(), &control);
    one.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    one.set_route("live", route("swap@1.0.0", &[], serde_json::json!({}))).unwrap();
    let two = replica(dirs[1].path(), &control);
    assert_eq!(two.route("live").unwrap().describe(), "swap@1.0.0", "a host starting on the store reads what is there");
    one.add_plugin(&plugin("quarry-test-swap-v2")).unwrap();
    within(PROPAGATION_BOUND, "the new plugin reaching the second host", || two.plugin("swap@2.0.0").is_ok());
}

#[test]
fn a_model_added_through_one_host_serves_on_another_only_with_the_same_files() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let control: Arc<dyn ControlStore> = Arc::new(MemoryStore::default());
    let one = replica(dirs[0].path(), &control);
    let two = replica(dirs[1].path(), &control);
    // The replicas' model repository: the same files at the same path on each host.
    let repository = tempfile::tempdir().unwrap();
    for file in ["projector.json", "projector.onnx"] {
        std::fs::copy(quarry_tests::test_models_dir().join(file), repository.path().join(file)).unwrap();
    }
    let manifest = one.add_model_file(&repository.path().join("projector.json")).unwrap();
    assert_eq!(manifest.files.sha256.len(), 1, "the model file's hash is recorded");
    within(PROPAGATION_BOUND, "the model reaching the second host", || two.models().contains("phi"));

    // A host whose copy differs from the one added refuses to load it, and says why.
    let onnx = repository.path().join("projector.onnx");
    let original = std::fs::read(&onnx).unwrap();
    std::fs::write(&onnx, [&original[..], b"tampered"].concat()).unwrap();
    let err = two.models().warm("phi").unwrap_err().to_string();
    assert!(err.contains("is not the file `quarry model add` recorded") && err.contains("provision the same file"), "{err}");
    std::fs::write(&onnx, &original).unwrap();
    two.models().warm("phi").unwrap();
}
