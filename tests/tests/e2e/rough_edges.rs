//! What a new user meets first: route configs checked against the strategy's schema, `k`
//! clamped with a note, empty queries and undeclared query parameters refused, a failed ingest
//! that keeps the old route, and `quarry collections`.

use quarry_host::{CallError, Limits, NewItem, Quarry, SearchRequest};
use quarry_tests::{add_model, host_with, plugin, root, route};
use serde_json::json;
use std::path::Path;
use std::process::Command;

fn dense_host(dir: &Path, limits: Limits) -> Quarry {
    let host = host_with(dir, limits);
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.add_plugin(&plugin("keyword-boost")).unwrap();
    host
}

fn sentences() -> Vec<NewItem> {
    vec![NewItem::text("cat", "a cat sleeps on the sofa"), NewItem::text("sea", "waves crash on the shore"), NewItem::text("bread", "she bakes bread on sundays")]
}

fn quarry(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quarry-e2e"));
    cmd.arg("--data-dir").arg(data_dir).current_dir(root());
    cmd
}

#[test]
fn a_config_the_schema_refuses_is_an_error_naming_the_key_and_the_route_stays() {
    let dir = tempfile::tempdir().unwrap();
    let host = dense_host(dir.path(), Limits::default());
    let good = json!({"text-model": "minilm-l6"});
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], good.clone())).unwrap();
    host.ingest("docs", sentences(), |_| {}).unwrap();

    let misspelt = format!("{:#}", host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6", "image-modle": "x"}))).unwrap_err());
    assert!(misspelt.contains("`/image-modle`: not a key the schema allows") && misspelt.contains("nothing was changed"), "{misspelt}");
    let wrong_type = format!("{:#}", host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": 384}))).unwrap_err());
    assert!(wrong_type.contains("`/text-model`") && wrong_type.contains("string"), "{wrong_type}");
    let missing = format!("{:#}", host.set_route("docs", route("keyword-boost@0.2.0", &["minilm-l6"], json!({"candidates": 0}))).unwrap_err());
    assert!(missing.contains("text-model") && missing.contains("`/candidates`"), "{missing}");
    // The route that served still serves, unchanged, and a new host reads it back.
    let kept = host.route("docs").unwrap();
    let kept = kept.strategy().unwrap();
    assert_eq!((kept.strategy.as_str(), &kept.config), ("dense@0.3.0", &good));
    assert_eq!(host.search("docs", &SearchRequest::text("kitten", 1)).unwrap().hits[0].id, "cat");
    drop(host);

    // The CLI says the same and exits non-zero.
    let out = quarry(dir.path()).args(["route", "set", "docs", "--strategy", "dense@0.3.0", "--config", r#"{"text-modle": "minilm-l6"}"#]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`/text-modle`"), "{stderr}");
    let host = quarry_tests::host(dir.path());
    assert_eq!(host.route("docs").unwrap().strategy().unwrap().config, good);
}

#[test]
fn k_over_max_hits_is_clamped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let host = dense_host(dir.path(), Limits { max_hits: 2, ..Limits::default() });
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    host.set_route("boost", route("keyword-boost@0.2.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", sentences(), |_| {}).unwrap();
    host.ingest("boost", sentences(), |_| {}).unwrap();
    for collection in ["docs", "boost"] {
        for k in [3, 1000, u32::MAX] {
            let response = host.search(collection, &SearchRequest::text("the ocean", k)).unwrap();
            assert_eq!(response.hits.len(), 2, "{collection} k={k}");
            assert_eq!(response.notes.len(), 1, "{collection} k={k}: {:?}", response.notes);
            assert!(response.notes[0].contains(&format!("k = {k}")) && response.notes[0].contains("max_hits"), "{:?}", response.notes);
        }
        let response = host.search(collection, &SearchRequest::text("the ocean", 2)).unwrap();
        assert!(response.notes.is_empty(), "{:?}", response.notes);
        assert!(serde_json::to_value(&response).unwrap().get("notes").is_none(), "no notes, no field");
    }
}

#[test]
fn empty_queries_and_undeclared_parameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = dense_host(dir.path(), Limits::default());
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    host.set_route("boost", route("keyword-boost@0.2.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", sentences(), |_| {}).unwrap();
    host.ingest("boost", sentences(), |_| {}).unwrap();
    for text in ["", "   \n\t"] {
        let err = host.search("docs", &SearchRequest::text(text, 3)).unwrap_err().to_string();
        assert!(err.contains("query text is empty"), "{err}");
    }
    // Beside an image, a blank text is left out: dense answers the image (and has no image
    // model here, so says so), rather than embedding an empty string.
    let image = SearchRequest { image: Some(quarry_tests::picture(quarry_tests::RED, true, image::ImageFormat::Png)), ..SearchRequest::text(" ", 3) };
    let err = host.search("docs", &image).unwrap_err().to_string();
    assert!(err.contains("image-model"), "{err}");
    // dense declares `filter` and applies it...
    let filtered = SearchRequest { params: json!({"filter": {"lang": "fr"}}), ..SearchRequest::text("the ocean", 3) };
    assert!(host.search("docs", &filtered).unwrap().hits.is_empty(), "no item has lang fr");
    // ...keyword-boost declares nothing, so a filter it would ignore is an error naming it.
    let err = host.search("boost", &filtered).unwrap_err();
    assert!(matches!(err, CallError::Host(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("keyword-boost@0.2.0") && err.contains("`filter`") && err.contains("declares none"), "{err}");
    // A misspelt parameter is named, with what the strategy reads.
    let err = host.search("docs", &SearchRequest { params: json!({"fitler": {}}), ..SearchRequest::text("x", 3) }).unwrap_err().to_string();
    assert!(err.contains("`fitler`") && err.contains("reads: `filter`"), "{err}");
    let err = host.search("docs", &SearchRequest { params: json!({"filter": "lang=fr"}), ..SearchRequest::text("x", 3) }).unwrap_err().to_string();
    assert!(err.contains("`/filter`") && err.contains("object"), "{err}");
}

#[test]
fn a_failed_ingest_with_a_strategy_saves_no_route() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = dense_host(&data, Limits::default());
    let dense = route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}));
    // An image needs an image model, which this route lacks: the ingest fails.
    let mut picture = NewItem::text("picture", "a photo");
    picture.image = Some(quarry_tests::picture(quarry_tests::RED, true, image::ImageFormat::Png));
    assert!(host.ingest_with_route("pics", dense.clone(), vec![picture], |_| {}).is_err());
    assert!(host.route("pics").is_err(), "the failed ingest saved no route");
    host.ingest_with_route("docs", dense, sentences(), |_| {}).unwrap();
    assert_eq!(host.route("docs").unwrap().describe(), "dense@0.3.0");
    drop(host);

    // The CLI's `ingest --strategy` goes the same way.
    let folder = dir.path().join("pictures");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("red.png"), quarry_tests::picture(quarry_tests::RED, true, image::ImageFormat::Png)).unwrap();
    let args = ["--strategy", "dense@0.3.0", "--config", r#"{"text-model": "minilm-l6"}"#, "--grant-model", "minilm-l6"];
    let out = quarry(&data).arg("ingest").arg("cli-pics").arg(&folder).args(args).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("image-model"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = quarry(&data).args(["route", "list"]).output().unwrap();
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(!routes.contains("cli-pics") && routes.contains("docs"), "{routes}");
    // A config the schema refuses stops the ingest before anything runs.
    let text = dir.path().join("texts");
    std::fs::create_dir(&text).unwrap();
    std::fs::write(text.join("a.txt"), "hello").unwrap();
    let out = quarry(&data).arg("ingest").arg("cli-texts").arg(&text).args(["--strategy", "dense@0.3.0", "--config", r#"{"text-model": "minilm-l6", "k": 3}"#, "--grant-model", "minilm-l6"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("`/k`"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn collections_are_listed_with_item_counts_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let host = dense_host(dir.path(), Limits::default());
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", sentences(), |_| {}).unwrap();
    host.set_route("boost", route("keyword-boost@0.2.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    let listed: Vec<(String, usize, Option<String>)> = host.collections().unwrap().into_iter().map(|c| (c.name, c.items, c.strategy)).collect();
    assert_eq!(listed, [("boost".to_string(), 0, Some("keyword-boost@0.2.0".to_string())), ("docs".to_string(), 3, Some("dense@0.3.0".to_string()))]);
    assert!(host.collections_of("acme").unwrap().is_empty(), "another tenant sees none of them");
    drop(host);

    let out = quarry(dir.path()).arg("collections").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let docs = table.lines().find(|l| l.starts_with("docs")).unwrap_or_else(|| panic!("{table}"));
    assert!(docs.contains(" 3 ") && docs.contains("dense@0.3.0"), "{table}");
    let out = quarry(dir.path()).args(["collections", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[1], json!({"name": "docs", "items": 3, "strategy": "dense@0.3.0"}));
    let out = quarry(dir.path()).args(["collections", "--tenant", "acme"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("has no collections"));
}
