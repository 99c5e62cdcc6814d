//! Starting a host runs no plugin code: a plugin's identity is its bytes' hash and the
//! descriptor recorded at `plugin add`. What no longer loads is quarantined, and the rest serves.

use quarry_host::plugins::registry::Owner;
use quarry_host::{Limits, NewItem, SearchRequest};
use quarry_tests::{add_model, host, host_with, plugin, route};
use serde_json::json;
use std::time::{Duration, Instant};

/// Every stored plugin file of a data directory, by owner folder.
fn stored_files(data: &std::path::Path, owner_dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let dir = data.join("plugins").join(owner_dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == ext));
    files
}

#[test]
fn a_plugin_that_no_longer_loads_is_quarantined_and_the_rest_serves() {
    let dir = tempfile::tempdir().unwrap();
    let shifty_reference;
    {
        let host = host(dir.path());
        add_model(&host, "minilm-l6");
        host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
        host.add_plugin_as(&Owner::tenant("acme").unwrap(), &plugin("quarry-test-hostile")).unwrap();
        shifty_reference = host.add_plugin(&plugin("quarry-test-shifty")).unwrap().reference.clone();
        host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
        host.ingest("docs", vec![NewItem::text("sea", "waves crash on the shore")], |_| {}).unwrap();
        host.set_route("shifty", route(&shifty_reference, &[], json!({}))).unwrap();
        host.ingest("shifty", vec![NewItem::text("answer", "answer")], |_| {}).unwrap();
    }
    // Damage acme's plugin on disk, and register a model whose file is gone.
    let wasm = stored_files(dir.path(), "tenants/acme", "wasm");
    assert_eq!(wasm.len(), 1, "plugins are stored under their owner, named by hash");
    std::fs::write(&wasm[0], b"\0asm\x0d\0\x01\0 not what was added").unwrap();
    let manifest = json!({"name": "gone", "role": "text-encoder", "files": {"model": "/nonexistent/model.onnx", "tokenizer": "/nonexistent/t.json"},
                          "output": {"name": "x", "kind": "pooled"}, "tokenizer": {"max_length": 8}});
    std::fs::write(dir.path().join("models/gone.json"), manifest.to_string()).unwrap();

    let host = host(dir.path());
    let quarantined = host.quarantined();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!((quarantined[0].owner.clone(), quarantined[0].reference.as_str()), (Owner::tenant("acme").unwrap(), "hostile@0.1.0"));
    assert!(quarantined[0].reason.contains("does not hold the bytes its record names"), "{}", quarantined[0].reason);
    assert_eq!(host.quarantined_models().len(), 1);
    assert!(host.quarantined_models()[0].reason.contains("does not exist"), "{:?}", host.quarantined_models());

    // Everything else serves; the nondeterministic plugin kept the identity it was added with.
    assert_eq!(host.search("docs", &SearchRequest::text("the ocean", 1)).unwrap().hits[0].id, "sea");
    assert_eq!(host.search("shifty", &SearchRequest::text("anything", 1)).unwrap().strategy, shifty_reference);
    let err = host.plugin_for("acme", "hostile@0.1.0").unwrap_err().to_string();
    assert!(err.contains("quarantined") && err.contains("does not hold the bytes"), "{err}");

    // A quarantined plugin can be removed, files and all.
    host.remove_plugin_as(&Owner::tenant("acme").unwrap(), "hostile@0.1.0").unwrap();
    assert!(host.quarantined().is_empty());
    assert!(stored_files(dir.path(), "tenants/acme", "wasm").is_empty() && stored_files(dir.path(), "tenants/acme", "json").is_empty());
    // And added again, fresh.
    host.add_plugin_as(&Owner::tenant("acme").unwrap(), &plugin("quarry-test-hostile")).unwrap();
}

#[test]
fn describe_runs_once_under_limits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { deadline_ms: 500, ..Limits::default() };
    let host = host_with(dir.path(), limits.clone());
    // The first attempt also compiles the component; time the second, whose `describe` is all
    // that runs.
    assert!(host.add_plugin(&plugin("quarry-test-stuck-describe")).is_err());
    let start = Instant::now();
    let err = format!("{:#}", host.add_plugin(&plugin("quarry-test-stuck-describe")).unwrap_err());
    assert!(err.contains("`describe` failed") && err.contains("deadline"), "{err}");
    assert!(start.elapsed() < Duration::from_millis(500 * 12 / 10 + 100), "{:?}", start.elapsed());
    assert!(host.plugins().is_empty() && stored_files(dir.path(), "tenants/default", "wasm").is_empty(), "nothing was registered or stored");

    // A describe that answers differently each run is asked once: re-adding the same bytes is
    // the same plugin, and a restart does not rename it.
    let first = host.add_plugin(&plugin("quarry-test-shifty")).unwrap().reference.clone();
    let again = host.add_plugin(&plugin("quarry-test-shifty"));
    match again {
        Ok(p) => assert_eq!(p.reference, first),
        Err(e) => panic!("re-adding identical bytes must be a no-op, not {e:#}"),
    }
    drop(host);
    let host = host_with(dir.path(), limits);
    let listed: Vec<String> = host.plugins().into_iter().map(|(_, p)| p.reference.clone()).collect();
    assert_eq!(listed, [first]);
}

#[test]
fn plugins_and_routes_live_in_the_control_store_the_host_is_given() {
    use quarry_host::control::{ControlStore, MemoryStore};
    let dir = tempfile::tempdir().unwrap();
    let control = std::sync::Arc::new(MemoryStore::default());
    let open = || {
        let mut config = quarry_host::HostConfig::new(dir.path());
        config.cache_dir = Some(quarry_tests::shared_cache());
        config.control = Some(control.clone());
        quarry_host::Quarry::open(config).unwrap()
    };
    {
        let host = open();
        add_model(&host, "minilm-l6");
        host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
        host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
        host.ingest("docs", vec![NewItem::text("sea", "waves crash on the shore")], |_| {}).unwrap();
    }
    assert!(!dir.path().join("routes").exists() && !dir.path().join("plugins").exists(), "nothing of the control plane is a file here");
    let keys = control.keys("").unwrap();
    assert!(keys.contains(&"routes/default/docs.json".to_string()), "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("plugins/tenants/default/")).count(), 2, "record and bytes: {keys:?}");

    // A host started afresh on the same store serves the same route with the same plugin.
    let host = open();
    let answer = host.search("docs", &SearchRequest::text("the ocean", 1)).unwrap();
    assert_eq!((answer.hits[0].id.as_str(), answer.strategy.as_str()), ("sea", "dense@0.3.0"));
}

#[test]
fn collections_live_in_the_collection_store_the_host_is_given() {
    let server = quarry_tests::milvus::MilvusLite::start();
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let mut config = quarry_host::HostConfig::new(dir.path());
        config.cache_dir = Some(quarry_tests::shared_cache());
        let store = quarry_milvus::MilvusStore::connect(&server.uri(), "e2e").unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
        config.collections = Some(std::sync::Arc::new(store));
        quarry_host::Quarry::open(config).unwrap()
    };
    {
        let host = open();
        add_model(&host, "minilm-l6");
        host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
        host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
        let items = vec![NewItem::text("sea", "waves crash on the shore"), NewItem::text("desert", "dry sand dunes under a hot sun")];
        host.ingest("docs", items, |_| {}).unwrap();
        assert_eq!(host.item_count("docs").unwrap(), 2);
    }
    assert!(!dir.path().join("collections.redb").exists(), "no collection is a file here");

    // A host started afresh builds its index from what Milvus holds.
    let host = open();
    let answer = host.search("docs", &SearchRequest::text("the ocean", 1)).unwrap();
    assert_eq!(answer.hits[0].id, "sea");
    assert!(host.stored_bytes("default").unwrap() > 0);
}
