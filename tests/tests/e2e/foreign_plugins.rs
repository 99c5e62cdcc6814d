//! Plugins in other languages: the Python example (examples/python-dense, over sdk/python) built
//! with componentize-py and the JavaScript one (examples/js-dense, over sdk/js) built with
//! ComponentizeJS are each built from source, added, routed on MiniLM and queried; a component
//! importing an interface the host does not grant is refused at `plugin add`, by name.

use quarry_cli::{DEMO_QUERIES, DEMO_SENTENCES};
use quarry_host::{HostConfig, Limits, NewItem, Quarry, SearchRequest};
use quarry_tests::foreign::{build_js, build_python, js_dense, python_dense};
use quarry_tests::{add_model, root, route};
use std::path::Path;

/// The tests here build and compile 18 MB components, which takes every core for seconds: run
/// them one at a time, so one test's compilation does not starve the other's calls past their
/// deadlines.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A host with its own compile cache, so compilations can be counted.
fn host_with_cache(dir: &Path, cache: &Path) -> Quarry {
    let mut config = HostConfig::new(dir);
    config.cache_dir = Some(cache.to_path_buf());
    config.limits = Limits::default();
    Quarry::open(config).expect("host opens")
}

fn assert_paraphrases_rank_first(host: &Quarry, collection: &str) {
    for (query, expected) in DEMO_QUERIES {
        let response = host.search(collection, &SearchRequest::text(query, 3)).unwrap();
        assert_eq!(response.hits.len(), 3, "{query}");
        assert_eq!(response.hits[0].id, *expected, "query {query:?} ranked {:?}", response.hits);
        assert!(response.hits[0].score > response.hits[1].score, "{:?}", response.hits);
    }
}

/// Add `wasm` (strategy `reference`) to a fresh host on its own compile cache, route it on
/// MiniLM, ingest the demo sentences and check every paraphrase ranks its sentence first; then
/// check a second host on the same cache takes the compiled component from it.
fn check_foreign_dense(wasm: &[u8], reference: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_cache(dir.path(), cache.path());
    add_model(&host, "minilm-l6");
    let plugin = host.add_plugin(wasm).unwrap();
    assert_eq!(plugin.reference, reference);
    assert_eq!(plugin.contract, "quarry:retrieval@0.2.0");
    assert_eq!(host.compile_stats().0, 1, "the {} MB guest is compiled once", wasm.len() >> 20);
    let config = serde_json::json!({"text-model": "minilm-l6"});
    host.set_route("docs", route(reference, &["minilm-l6"], config.clone())).unwrap();
    let items: Vec<NewItem> = DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect();
    host.ingest("docs", items, |_| {}).unwrap();
    assert_paraphrases_rank_first(&host, "docs");

    // A declared query parameter reaches the guest's code: no item has this metadata.
    let filtered = SearchRequest { params: serde_json::json!({"filter": {"lang": "xx"}}), ..SearchRequest::text("bread", 3) };
    assert!(host.search("docs", &filtered).unwrap().hits.is_empty());
    // An error raised through the SDK reaches the caller as the contract's error.
    let image = quarry_tests::picture(quarry_tests::RED, true, image::ImageFormat::Png);
    let err = host.search("docs", &SearchRequest { image: Some(image), k: 3, ..Default::default() }).unwrap_err();
    let name = reference.split('@').next().unwrap();
    assert!(format!("{err:#}").contains(&format!("{name} answers text queries only")), "{err:#}");
    // The schema the SDK sent is enforced at `route set`.
    let misspelt = route(reference, &["minilm-l6"], serde_json::json!({"text_model": "minilm-l6"}));
    let err = host.set_route("other", misspelt).unwrap_err();
    assert!(format!("{err:#}").contains("text_model"), "{err:#}");
    drop(host);

    // Another host on the same cache loads the compiled component instead of compiling again.
    let dir2 = tempfile::tempdir().unwrap();
    let host = host_with_cache(dir2.path(), cache.path());
    add_model(&host, "minilm-l6");
    host.add_plugin(wasm).unwrap();
    assert_eq!(host.compile_stats(), (0, 1), "(compilations, cache hits)");
    host.set_route("docs", route(reference, &["minilm-l6"], config)).unwrap();
    let items: Vec<NewItem> = DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect();
    host.ingest("docs", items, |_| {}).unwrap();
    assert_paraphrases_rank_first(&host, "docs");
}

#[test]
fn a_python_plugin_is_built_added_routed_and_ranks_paraphrases_first() {
    let _serial = serial();
    let wasm = python_dense();
    assert!(wasm.len() > 10 << 20, "componentize-py components are large ({} bytes)", wasm.len());
    check_foreign_dense(wasm, "dense-py@0.1.0");
}

#[test]
fn a_javascript_plugin_is_built_added_routed_and_ranks_paraphrases_first() {
    let _serial = serial();
    let wasm = js_dense();
    assert!(wasm.len() > 5 << 20, "ComponentizeJS components are large ({} bytes)", wasm.len());
    check_foreign_dense(wasm, "dense-js@0.1.0");
}

#[test]
fn a_component_importing_an_ungranted_interface_is_refused_by_name() {
    let _serial = serial();
    // The contract's world plus a WASI interface outside the 0.2 set the host links (a stand-in
    // for `wasi:http`, whose real definition componentize-py bundles and would not let us redefine).
    let wit = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(wit.path().join("deps/retrieval")).unwrap();
    std::fs::create_dir_all(wit.path().join("deps/keyvalue")).unwrap();
    std::fs::copy(root().join("wit/v0.2/retrieval.wit"), wit.path().join("deps/retrieval/retrieval.wit")).unwrap();
    std::fs::write(
        wit.path().join("deps/keyvalue/keyvalue.wit"),
        "package wasi:keyvalue@0.2.0;\ninterface store {\n  get: func(key: string) -> string;\n}\n",
    )
    .unwrap();
    std::fs::write(
        wit.path().join("world.wit"),
        "package test:net;\nworld plugin {\n  include quarry:retrieval/plugin@0.2.0;\n  import wasi:keyvalue/store@0.2.0;\n}\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let wasm = build_python(wit.path(), &root().join("examples/python-dense"), &out.path().join("net.wasm"));

    let dir = tempfile::tempdir().unwrap();
    let host = quarry_tests::host(dir.path());
    let err = format!("{:#}", host.add_plugin(&wasm).unwrap_err());
    assert!(err.contains("imports `wasi:keyvalue/store@0.2.0`, which this host does not provide"), "{err}");
    assert!(host.plugins().is_empty(), "nothing is kept");

    // The same app without the extra import is accepted (so the refusal is the import's).
    assert!(host.add_plugin(python_dense()).is_ok());
}

#[test]
fn a_javascript_build_with_its_default_features_is_refused_for_wasi_http() {
    let _serial = serial();
    let out = tempfile::tempdir().unwrap();
    let wasm = build_js(&[], &out.path().join("default.wasm"));
    let dir = tempfile::tempdir().unwrap();
    let host = quarry_tests::host(dir.path());
    let err = format!("{:#}", host.add_plugin(&wasm).unwrap_err());
    assert!(err.contains("imports `wasi:http/"), "{err}");
    assert!(err.contains("-d http -d fetch-event"), "the refusal says how to build without it: {err}");
    assert!(host.plugins().is_empty());
}

/// componentize-py's bindings of the 0.2 world, for CPython to import the SDK outside a component.
fn python_bindings() -> tempfile::TempDir {
    let bindings = tempfile::tempdir().unwrap();
    let componentize_py = root().join("vendor/venv/bin/componentize-py");
    let status = std::process::Command::new(&componentize_py)
        .arg("-d")
        .arg(root().join("wit/v0.2"))
        .args(["-w", "plugin", "bindings"])
        .arg(bindings.path())
        .status()
        .expect("cannot run componentize-py; run `bash scripts/setup.sh`");
    assert!(status.success());
    bindings
}

/// Run `python -m unittest -v module` in `dir` with the bindings and `paths` on PYTHONPATH;
/// returns what it printed once every test passed.
fn python_unittest(dir: &Path, module: &str, paths: &[&Path]) -> String {
    let bindings = python_bindings();
    let path = std::env::join_paths(std::iter::once(bindings.path()).chain(paths.iter().copied())).unwrap();
    let output = std::process::Command::new(root().join("vendor/venv/bin/python"))
        .args(["-m", "unittest", "-v", module])
        .current_dir(dir)
        .env("PYTHONPATH", path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success() && stderr.lines().any(|l| l == "OK"), "{stderr}");
    stderr
}

#[test]
fn the_python_sdk_helpers_order_and_fuse_hits_as_the_rust_ones_do() {
    let stderr = python_unittest(&root().join("sdk/python/tests"), "test_helpers", &[&root().join("sdk/python")]);
    assert!(stderr.contains("Ran 4 tests"), "{stderr}");
}

#[test]
fn the_examples_pass_their_own_unit_tests() {
    // The templates of `quarry plugin new --lang python|js`, whose scaffolds run the same tests.
    let python = root().join("examples/python-dense");
    let stderr = python_unittest(&python, "test_app", &[&python, &root().join("sdk/python")]);
    assert!(stderr.contains("Ran 4 tests"), "{stderr}");
    let output = std::process::Command::new("node")
        .args(["--test", "strategy.test.mjs"])
        .current_dir(root().join("examples/js-dense"))
        .output()
        .expect("cannot run node; run `bash scripts/setup.sh`");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reported = |what: &str| stdout.lines().any(|l| l.trim_start_matches(['#', 'ℹ', ' ']) == what);
    assert!(output.status.success() && reported("tests 4") && reported("pass 4"), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
}
