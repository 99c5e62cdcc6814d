//! Bad input gets an error that says what happened and what to do, and loses nothing.

use quarry_host::capacity::Caller;
use quarry_host::{NewItem, SearchRequest};
use quarry_tests::{add_model, host, plugin, root, route};
use std::process::Command;

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn components_that_do_not_fit_the_contract_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let err = err_text(host.add_plugin(&core_module));
    assert!(err.contains("core WebAssembly module, not a component") && err.contains("wasm32-wasip2"), "{err}");
    let err = err_text(host.add_plugin(b"just some text"));
    assert!(err.contains("not a WebAssembly file"), "{err}");
    let err = err_text(host.add_plugin(&plugin("quarry-test-wrong-contract")));
    assert!(err.contains("quarry:retrieval@2.0.0") && err.contains("quarry:retrieval@0.2.x"), "{err}");
    let err = err_text(host.add_plugin_file(&dir.path().join("missing.wasm")));
    assert!(err.contains("missing.wasm"), "{err}");
    assert!(host.plugins().is_empty(), "nothing was registered");
    // The host is unharmed: a good plugin still loads.
    assert_eq!(host.add_plugin(&plugin("quarry-plugin-dense")).unwrap().reference, "dense@0.3.0");
}

#[test]
fn versions_are_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    host.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    host.add_plugin(&plugin("quarry-test-swap-v1")).unwrap();
    assert_eq!(host.plugins().len(), 1, "re-adding identical bytes is a no-op");
    host.set_route("c", route("swap@1.0.0", &[], serde_json::json!({}))).unwrap();
    let err = err_text(host.remove_plugin("swap@1.0.0"));
    assert!(err.contains("still serves collection(s) default/c"), "{err}");
    let err = err_text(host.set_route("c", route("swap@9.9.9", &[], serde_json::json!({}))));
    assert!(err.contains("no strategy `swap@9.9.9`") && err.contains("swap@1.0.0"), "{err}");
}

#[test]
fn a_manifest_naming_a_missing_file_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let manifest = dir.path().join("broken.json");
    std::fs::write(
        &manifest,
        r#"{"name": "broken", "role": "text-encoder",
            "files": {"model": "does-not-exist.onnx", "tokenizer": "tokenizer.json"},
            "output": {"name": "last_hidden_state", "kind": "tokens"},
            "tokenizer": {"max_length": 128}}"#,
    )
    .unwrap();
    let err = err_text(host.add_model_file(&manifest));
    assert!(err.contains("does-not-exist.onnx") && err.contains("does not exist") && err.contains("scripts/setup.sh"), "{err}");
    assert!(host.models().manifests().is_empty());
    let err = err_text(host.set_route("c", route("dense@0.3.0", &["broken"], serde_json::json!({}))));
    assert!(err.contains("not registered") || err.contains("no strategy"), "{err}");
}

#[test]
fn an_unreadable_image_is_reported_and_the_rest_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("items");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("cat.txt"), "a cat sleeps on the sofa").unwrap();
    std::fs::write(folder.join("sea.txt"), "waves crash on the shore").unwrap();
    std::fs::write(folder.join("broken.jpg"), b"\xff\xd8\xff\xe0 truncated jpeg").unwrap();

    let read = quarry_host::sources::read(&folder).unwrap();
    assert_eq!(read.skipped.len(), 1);
    assert!(read.skipped[0].source.ends_with("broken.jpg") && read.skipped[0].reason.contains("unreadable image"), "{:?}", read.skipped);

    let host = host(&dir.path().join("data"));
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    let report = host.ingest("docs", read.items, |_| {}).unwrap();
    assert_eq!(report.ingested, 2);
    let hits = host.search("docs", &SearchRequest::text("a sleeping kitten", 2)).unwrap().hits;
    assert_eq!(hits[0].id, "cat");
}

#[test]
fn a_failed_batch_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    // Images need an image model, which this route lacks: the plugin fails the batch.
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(4, 4).write_to(&mut png, image::ImageFormat::Png).unwrap();
    let mut picture = NewItem::text("picture", "a photo");
    picture.image = Some(png.into_inner());
    let err = host.ingest("docs", vec![NewItem::text("cat", "a cat"), picture], |_| {}).unwrap_err();
    assert!(err.to_string().contains("image-model"), "{err}");
    assert_eq!(host.item_count("docs").unwrap(), 0, "neither item of the failed batch was stored");
    assert!(host.nearest("docs", "embedding", &[0.0; 384], 5, None).unwrap().is_empty(), "no vector was stored");
}

/// Prepare a data dir with the dense plugin routed over MiniLM, for CLI runs.
fn cli_data_dir(dir: &std::path::Path) {
    let host = host(dir);
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
}

fn quarry(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quarry-e2e"));
    cmd.arg("--data-dir").arg(data_dir).current_dir(root());
    cmd
}

#[test]
fn a_missing_onnxruntime_library_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    cli_data_dir(dir.path());
    let out = quarry(dir.path()).env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1").args(["search", "docs", "hello"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ONNX Runtime library not found") && stderr.contains("/nonexistent/") && stderr.contains("scripts/setup.sh"), "{stderr}");
    // The same data directory works once the library is found.
    let out = quarry(dir.path()).env_remove("ORT_DYLIB_PATH").args(["search", "docs", "hello"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_cli_ingests_a_folder_reports_bad_files_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    cli_data_dir(&data);
    let folder = dir.path().join("items");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("cat.txt"), "a cat sleeps on the sofa").unwrap();
    std::fs::write(folder.join("sea.txt"), "waves crash on the shore").unwrap();
    std::fs::write(folder.join("broken.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    // A file that cannot be read fails the ingest before anything is stored...
    let out = quarry(&data).arg("ingest").arg("docs").arg(&folder).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an ingest with unreadable files exits non-zero");
    assert!(stderr.contains("cannot read") && stderr.contains("broken.png") && stderr.contains("--allow-skips"), "{stderr}");
    assert!(stderr.contains("nothing was ingested"), "{stderr}");
    assert_eq!(host(&data).item_count("docs").unwrap(), 0);
    // ...unless --allow-skips says to ingest the rest.
    let out = quarry(&data).arg("ingest").arg("docs").arg(&folder).arg("--allow-skips").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipped") && stderr.contains("broken.png"), "{stderr}");
    assert!(stdout.contains("ingested 2 item(s) into docs; skipped 1"), "{stdout}");
    // Running it again re-embeds nothing: both items are unchanged.
    let out = quarry(&data).arg("ingest").arg("docs").arg(&folder).arg("--allow-skips").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ingested 0 item(s) into docs; 2 unchanged; skipped 1"), "{stdout}");

    let out = quarry(&data).args(["search", "docs", "the ocean", "-k", "1", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["strategy"], "dense@0.3.0");
    assert_eq!(json["hits"][0]["id"], "sea");
    assert_eq!(json["hits"][0]["text"], "waves crash on the shore");

    let out = quarry(&data).args(["search", "docs", "kitten on a couch"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().nth(2).is_some_and(|l| l.contains("cat")), "{table}");

    let out = quarry(&data).args(["search", "nowhere", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("quarry route set nowhere"));
}

#[test]
fn the_model_schema_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_quarry-e2e")).args(["schema", "model"]).output().unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "ModelManifest");
    assert!(schema["properties"]["execution_provider"].is_object());
}

#[test]
fn a_gpu_provider_missing_from_onnxruntime_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root().join("examples/models/minilm-l6.json")).unwrap()).unwrap();
    let models = root().join("vendor/models/minilm-l6");
    manifest["name"] = "minilm-gpu".into();
    manifest["files"] = serde_json::json!({"model": models.join("model.onnx"), "tokenizer": models.join("tokenizer.json")});
    for (provider, name) in [(serde_json::json!({"kind": "cuda", "device_id": 0}), "CUDA"), (serde_json::json!({"kind": "tensorrt"}), "TensorRT")] {
        manifest["execution_provider"] = provider;
        let path = dir.path().join("gpu.json");
        std::fs::write(&path, manifest.to_string()).unwrap();
        host.add_model_file(&path).unwrap();
        let err = host.models().embed_texts("minilm-gpu", &["hello".to_string()], &Caller::host()).unwrap_err().to_string();
        assert!(err.contains(&format!("the {name} execution provider")) && err.contains("onnxruntime-gpu"), "{err}");
    }
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    let err = err_text(host.set_route("docs", route("dense@0.3.0", &["minilm-gpu"], serde_json::json!({"text-model": "minilm-gpu"}))));
    assert!(err.contains("cannot be opened") && err.contains("onnxruntime-gpu"), "{err}");
}
