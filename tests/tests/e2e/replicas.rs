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
fn an_experiment_retired_and_started_again_through_one_host_starts_from_nothing_on_another() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let control: Arc<dyn ControlStore> = Arc::new(MemoryStore::default());
    let one = replica(dirs[0].path(), &control);
    let two = replica(dirs[1].path(), &control);
    one.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    one.add_plugin(&plugin("quarry-test-swap-v2")).unwrap();
    let experiment = || -> quarry_host::routing::Target {
        serde_json::from_value(serde_json::json!({"experiment": {"name": "ab", "arms": [{"name": "one", "strategy": "swap@1.0.0"}, {"name": "two", "strategy": "swap@2.0.0"}]}})).unwrap()
    };
    let two = &two;
    let routed = |to: &'static str| move || two.route("live").is_ok_and(|t| t.describe() == to);
    one.set_target("live", experiment()).unwrap();
    within(PROPAGATION_BOUND, "the experiment reaching the second host", routed("experiment:ab"));
    let answers = ["served-by-1.0.0", "served-by-2.0.0"].map(|id| quarry_host::NewItem::text(id, id));
    two.ingest("live", answers.to_vec(), |_| {}).unwrap();
    for _ in 0..5 {
        two.search("live", &SearchRequest::text("x", 1)).unwrap();
    }
    let calls = |host: &Quarry| host.experiment_report("live").unwrap().arms.iter().map(|a| a.calls).sum::<u64>();
    assert_eq!(calls(two), 5);

    // Retired through the first host (neither the route nor the one before it), then started again.
    for version in ["swap@1.0.0", "swap@2.0.0"] {
        one.set_route("live", route(version, &[], serde_json::json!({}))).unwrap();
        within(PROPAGATION_BOUND, "the swap reaching the second host", routed(version));
    }
    one.set_target("live", experiment()).unwrap();
    within(PROPAGATION_BOUND, "the experiment again", routed("experiment:ab"));
    assert_eq!(calls(two), 0, "the second host kept the retired experiment's counts");
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
    assert!(err.contains("is not the file recorded when the model was added") && err.contains("provision the same file"), "{err}");
    std::fs::write(&onnx, &original).unwrap();
    two.models().warm("phi").unwrap();
}

mod over_http {
    use super::*;
    use quarry_tests::etcd::EtcdServer;
    use quarry_tests::server::{ADMIN_KEY, Server, call};
    use serde_json::{Value, json};

    fn json_body(value: &Value) -> Option<(&'static str, Vec<u8>)> {
        Some(("application/json", value.to_string().into_bytes()))
    }

    fn replica(data: &std::path::Path, etcd: &EtcdServer) -> Server {
        Server::start(data, Some(json!({"control": {"etcd": {"endpoints": [etcd.endpoint()], "namespace": "replicas"}}})))
    }

    fn served_by(server: &Server, key: &str) -> Option<String> {
        let (status, out, _) = call("POST", &server.url("/v1/collections/live/search"), Some(key), json_body(&json!({"text": "which", "k": 1})));
        (status == 200).then(|| out["strategy"].as_str().unwrap().to_string())
    }

    #[test]
    fn two_servers_on_one_etcd_serve_as_one_and_a_swap_reaches_the_other_under_load() {
        let etcd = EtcdServer::start();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let one = replica(&dirs[0].path().join("data"), &etcd);
        let two = replica(&dirs[1].path().join("data"), &etcd);

        // A tenant made through one server holds a key the other accepts.
        let (status, out, _) = call("POST", &one.url("/v1/tenants"), Some(ADMIN_KEY), json_body(&json!({"name": "acme", "quotas": {"requests_per_second": 10000, "burst": 10000, "concurrent_calls": 64}})));
        assert_eq!(status, 201, "{out}");
        let key = out["api_key"].as_str().unwrap().to_string();
        within(PROPAGATION_BOUND, "the new tenant's key working on the second server", || call("GET", &two.url("/v1/usage"), Some(&key), None).0 == 200);

        // Plugins uploaded and a route set through one server serve on the other.
        for name in ["quarry-test-swap-v1", "quarry-test-swap-v2"] {
            let (status, out, _) = call("POST", &one.url("/v1/plugins"), Some(&key), Some(("application/wasm", plugin(name))));
            assert_eq!(status, 201, "{out}");
        }
        let (status, out, _) = call("PUT", &one.url("/v1/collections/live/route"), Some(&key), json_body(&json!({"strategy": "swap@1.0.0"})));
        assert_eq!(status, 200, "{out}");
        within(PROPAGATION_BOUND * 5, "the route serving on the second server", || served_by(&two, &key).as_deref() == Some("swap@1.0.0"));
        // Collections stay on each server's disk in the embedded mode: give both the answers.
        let answers = json!({"items": [{"id": "served-by-1.0.0", "text": "1"}, {"id": "served-by-2.0.0", "text": "2"}]});
        for server in [&one, &two] {
            let (status, out, _) = call("POST", &server.url("/v1/collections/live/items"), Some(&key), json_body(&answers));
            assert_eq!(status, 200, "{out}");
        }

        // Swaps through the first server while the second serves searches: none fails, and each
        // swap serves there within the bound.
        let stop = Arc::new(AtomicBool::new(false));
        let searchers: Vec<_> = (0..2)
            .map(|_| {
                let (url, key, stop) = (two.url("/v1/collections/live/search"), key.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut served, mut failed) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let (status, out, _) = call("POST", &url, Some(&key), json_body(&json!({"text": "x", "k": 1})));
                        if status != 200 || out["hits"][0]["id"] != format!("served-by-{}", &out["strategy"].as_str().unwrap_or("swap@?")["swap@".len()..]) {
                            failed.push(format!("{status}: {out}"));
                        }
                        served += 1;
                    }
                    (served, failed)
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        for i in 0..10 {
            let version = if i % 2 == 0 { "swap@2.0.0" } else { "swap@1.0.0" };
            let (status, out, _) = call("PUT", &one.url("/v1/collections/live/route"), Some(&key), json_body(&json!({"strategy": version})));
            assert_eq!(status, 200, "{out}");
            let took = within(PROPAGATION_BOUND, &format!("the swap to {version} serving on the second server"), || served_by(&two, &key).as_deref() == Some(version));
            slowest = slowest.max(took);
        }
        stop.store(true, Ordering::Relaxed);
        let (mut served, mut failed) = (0, Vec::new());
        for searcher in searchers {
            let (n, f) = searcher.join().unwrap();
            served += n;
            failed.extend(f);
        }
        assert!(failed.is_empty(), "{} of {served} searches on the second server failed during the swaps: {:?}", failed.len(), &failed[..failed.len().min(3)]);
        assert!(served > 10, "only {served} searches ran");
        eprintln!("over HTTP, the slowest of 10 swaps took {slowest:?} to serve on the other server ({served} searches, none failed)");

        // Killing a server loses nothing it acknowledged: a tenant made through it just before
        // its kill works on the survivor, and a swap through the survivor is what the killed one
        // serves when it comes back.
        let (status, out, _) = call("POST", &one.url("/v1/tenants"), Some(ADMIN_KEY), json_body(&json!({"name": "late"})));
        assert_eq!(status, 201, "{out}");
        drop(one);
        let late = out["api_key"].as_str().unwrap().to_string();
        within(PROPAGATION_BOUND, "the tenant acknowledged by the killed server working on the survivor", || call("GET", &two.url("/v1/usage"), Some(&late), None).0 == 200);
        let (status, out, _) = call("PUT", &two.url("/v1/collections/live/route"), Some(&key), json_body(&json!({"strategy": "swap@2.0.0"})));
        assert_eq!(status, 200, "{out}");
        let one = replica(&dirs[0].path().join("data"), &etcd);
        assert_eq!(served_by(&one, &key).as_deref(), Some("swap@2.0.0"), "the restarted server reads the route the other one set");
    }

    /// A replica on one etcd and one milvus-lite: control plane and collections both shared.
    fn shared_replica(data: &std::path::Path, etcd: &EtcdServer, milvus: &quarry_tests::milvus::MilvusLite) -> Server {
        Server::start(
            data,
            Some(json!({
                "control": {"etcd": {"endpoints": [etcd.endpoint()], "namespace": "shared"}},
                "collections": {"milvus": {"uri": milvus.uri(), "namespace": "shared"}}
            })),
        )
    }

    fn top_hit(server: &Server, key: &str, text: &str) -> Option<String> {
        let (status, out, _) = call("POST", &server.url("/v1/collections/docs/search"), Some(key), json_body(&json!({"text": text, "k": 1})));
        (status == 200).then(|| out["hits"][0]["id"].as_str().map(str::to_string)).flatten()
    }

    fn ingest(server: &Server, key: &str, items: &[(&str, &str)]) {
        let items: Vec<Value> = items.iter().map(|(id, text)| json!({"id": id, "text": text})).collect();
        let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(key), json_body(&json!({"items": items})));
        assert_eq!(status, 200, "{out}");
    }

    #[test]
    fn two_servers_on_one_etcd_and_one_milvus_share_collections_and_keep_what_a_killed_one_acknowledged() {
        let etcd = EtcdServer::start();
        let milvus = quarry_tests::milvus::MilvusLite::start();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let one = shared_replica(&dirs[0].path().join("data"), &etcd, &milvus);
        let two = shared_replica(&dirs[1].path().join("data"), &etcd, &milvus);

        let manifest = quarry_tests::root().join("examples/models/minilm-l6.json");
        let (status, out, _) = call("POST", &one.url("/v1/models"), Some(ADMIN_KEY), json_body(&json!({"manifest": manifest})));
        assert_eq!(status, 201, "{out}; run `bash scripts/setup.sh` first");
        let (status, out, _) = call("POST", &one.url("/v1/tenants"), Some(ADMIN_KEY), json_body(&json!({"name": "acme", "models": ["minilm-l6"]})));
        assert_eq!(status, 201, "{out}");
        let key = out["api_key"].as_str().unwrap().to_string();
        let (status, out, _) = call("POST", &one.url("/v1/plugins"), Some(&key), Some(("application/wasm", plugin("quarry-plugin-dense"))));
        assert_eq!(status, 201, "{out}");
        let route = json!({"strategy": "dense@0.3.0", "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]});
        let (status, out, _) = call("PUT", &one.url("/v1/collections/docs/route"), Some(&key), json_body(&route));
        assert_eq!(status, 200, "{out}");

        // Ingested through one, found through the other.
        ingest(&one, &key, &[("sea", "waves crash on the shore"), ("desert", "dry sand dunes under a hot sun"), ("forest", "tall trees and moss")]);
        within(PROPAGATION_BOUND * 5, "items ingested through one found through two", || top_hit(&two, &key, "the ocean").as_deref() == Some("sea"));

        // Two has the collection cached now; what one adds later still reaches its searches.
        ingest(&one, &key, &[("glacier", "ice sheets and frozen mountains")]);
        let took = within(PROPAGATION_BOUND, "an item added through one found by two's cached index", || top_hit(&two, &key, "frozen ice").as_deref() == Some("glacier"));
        eprintln!("an item ingested through one server was found through the other after {took:?}");
        // And the other way round.
        ingest(&two, &key, &[("reef", "coral under warm tropical water")]);
        within(PROPAGATION_BOUND, "an item added through two found by one", || top_hit(&one, &key, "coral").as_deref() == Some("reef"));

        // Killed right after it acknowledged an ingest, one loses none of it.
        ingest(&one, &key, &[("volcano", "molten lava erupting from a mountain")]);
        drop(one);
        within(PROPAGATION_BOUND, "the item acknowledged by the killed server found through the survivor", || {
            top_hit(&two, &key, "lava eruption").as_deref() == Some("volcano")
        });
        let (status, out, _) = call("GET", &two.url("/v1/collections"), Some(&key), None);
        assert_eq!(status, 200, "{out}");
        assert_eq!(out[0]["items"], 6, "{out}");
        // The survivor writes on: the killed server held no turn to write.
        ingest(&two, &key, &[("meadow", "grass and wild flowers")]);
    }
}
