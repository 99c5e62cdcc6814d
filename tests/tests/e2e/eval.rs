//! `quarry eval` on the shapes world: each split's strategies rank as their papers say they
//! should, through the same host calls a user's queries make.

use quarry_eval::report::{StrategyResult, render_comparison};
use quarry_host::eval::{self, EvalSet, StrategySpec, shapes};
use quarry_host::{Quarry, SearchRequest};
use quarry_tests::{host, plugin, root, shapes_world};

fn recall(result: &StrategyResult, k: usize) -> f64 {
    let name = format!("Recall@{k}");
    result.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{} has no {name}", result.strategy)).value
}

fn evaluate(host: &Quarry, set: &EvalSet, specs: &[StrategySpec]) -> Vec<StrategyResult> {
    let results: Vec<StrategyResult> = specs
        .iter()
        .map(|spec| {
            let answers = eval::run(host, set, spec, |_| {}).unwrap_or_else(|e| panic!("{} under {}: {e:#}", set.name, spec.name));
            eval::score(set, &spec.name, &answers).unwrap()
        })
        .collect();
    println!("{}\n{}", set.name, render_comparison(&results.iter().collect::<Vec<_>>()));
    results
}

#[test]
fn each_shapes_split_ranks_its_strategies_as_the_papers_do() {
    let world = shapes_world();
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    for name in ["quarry-plugin-dense", "quarry-plugin-tgdt", "quarry-plugin-lincir", "quarry-plugin-avg"] {
        host.add_plugin(&plugin(name)).unwrap();
    }
    shapes::register_models(&host, world).unwrap();

    // fine: token-level matching tells apart what one global embedding cannot.
    let fine = shapes::split(world, "fine").unwrap();
    let r = evaluate(&host, &fine, &shapes::strategies("fine"));
    let (dense, tgdt) = (&r[0], &r[1]);
    assert!(recall(tgdt, 1) > recall(dense, 1), "TGDT R@1 {} <= dense R@1 {}", recall(tgdt, 1), recall(dense, 1));

    // composed: the reference image and the modification together beat either alone.
    let composed = shapes::split(world, "composed").unwrap();
    let r = evaluate(&host, &composed, &shapes::strategies("composed"));
    let (lincir, image_only, text_only) = (&r[0], &r[1], &r[2]);
    assert!(
        recall(lincir, 1) > recall(image_only, 1).max(recall(text_only, 1)),
        "LinCIR R@1 {} vs image-only {} and text-only {}",
        recall(lincir, 1),
        recall(image_only, 1),
        recall(text_only, 1)
    );
    assert!(composed.queries.iter().any(|q| q.id.starts_with("two-")), "the composed split has two-attribute edits");

    // generative: AVG's identifiers collide (a scene's four drawings share one), and it keeps
    // R@10 within 90% of exact dense search, zero-shot and with a decoder.
    let generative = shapes::split(world, "generative").unwrap();
    let specs = shapes::strategies("generative");
    let mut r = evaluate(&host, &generative, &specs);
    let collection = eval::collection_name(&generative, &specs[1]);
    let hits = host.search(&collection, &SearchRequest::text("a small red circle at the top left", 4)).unwrap().hits;
    assert!(hits.iter().all(|h| h.features.get("group") == Some(&0.0) && h.features.contains_key("zero-shot")), "{hits:?}");
    assert!(hits.iter().all(|h| h.id.starts_with("small-red-circle-top-left-")), "{hits:?}");

    // A designed decoder over the codebook the build learned (tests/models/avg_decoder.py).
    let codebook = host.blob(&collection, "avg-codebook").unwrap().expect("the build stored its codebook");
    let made = tempfile::tempdir().unwrap();
    std::fs::write(made.path().join("codebook.bin"), &codebook).unwrap();
    let status = std::process::Command::new(root().join("vendor/venv/bin/python"))
        .arg(root().join("tests/models/avg_decoder.py"))
        .arg(world)
        .arg(made.path().join("codebook.bin"))
        .arg(made.path())
        .status()
        .unwrap();
    assert!(status.success());
    host.add_model_file(&made.path().join("avg-decoder.json")).unwrap();
    let mut with_decoder = specs[1].clone();
    with_decoder.models.push("avg-decoder".into());
    with_decoder.config["decoder"] = "avg-decoder".into();
    // Same name, same collection: the decoder searches the identifiers the build wrote.
    with_decoder.build = false;
    let answers = eval::run(&host, &generative, &with_decoder, |_| {}).unwrap();
    r.push(eval::score(&generative, "avg-decoder", &answers).unwrap());
    println!("{}\n{}", generative.name, render_comparison(&r.iter().collect::<Vec<_>>()));
    let hits = host.search(&collection, &SearchRequest::text("a large blue square at the center", 4)).unwrap().hits;
    assert!(hits.iter().all(|h| h.features.contains_key("decoder") && h.id.starts_with("large-blue-square-center-")), "{hits:?}");
    let dense = recall(&r[0], 10);
    for avg in &r[1..] {
        assert!(recall(avg, 10) >= 0.9 * dense, "{} R@10 {} < 0.9 x dense {dense}", avg.strategy, recall(avg, 10));
    }

    // What a user gets wrong with avg is said plainly.
    let avg_route = |config: serde_json::Value| quarry_tests::route("avg@0.1.0", &["shapes-image", "shapes-text"], config);
    host.set_route("empty", avg_route(serde_json::json!({"image-model": "shapes-image", "text-model": "shapes-text"}))).unwrap();
    let err = host.build("empty").unwrap_err().to_string();
    assert!(err.contains("ingest images before building"), "{err}");
    let err = host.search("empty", &SearchRequest::text("a red circle", 4)).unwrap_err().to_string();
    assert!(err.contains("run `quarry build empty`"), "{err}");
    // Out-of-range settings are refused when the route is set (the schema says the range), and
    // the route that served stays.
    let err = format!("{:#}", host.set_route(&collection, avg_route(serde_json::json!({"image-model": "shapes-image", "text-model": "shapes-text", "beam": 1_000_000_000}))).unwrap_err());
    assert!(err.contains("`/beam`") && err.contains("1000"), "{err}");
    assert!(host.search(&collection, &SearchRequest::text("a red circle", 4)).is_ok());
}

/// `quarry eval cirr` over files in CIRR's layout (the shapes world's edits as CIRR pairs):
/// the loader, the host and the report together, as a user runs it.
#[test]
fn the_cli_scores_a_cirr_layout_and_compares_strategies() {
    let world = shapes_world();
    let dir = tempfile::tempdir().unwrap();
    let quarry = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quarry-e2e")).arg("--data-dir").arg(dir.path().join("data")).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for p in ["dense", "lincir"] {
        let (ok, _, err) = quarry(&["plugin", "add", &quarry_tests::plugin_dir().join(format!("quarry_plugin_{p}.wasm")).display().to_string()]);
        assert!(ok, "{err}");
    }
    for model in ["shapes-image", "shapes-text", "shapes-text-slots", "shapes-phi"] {
        let (ok, _, err) = quarry(&["model", "add", &world.join(format!("{model}.json")).display().to_string()]);
        assert!(ok, "{err}");
    }
    let scenes = quarry_tests::shapes_scenes(world);
    let edits = quarry_tests::shapes_edits(world);
    let annotations = dir.path().join("cirr");
    std::fs::create_dir_all(annotations.join("captions")).unwrap();
    std::fs::create_dir_all(annotations.join("image_splits")).unwrap();
    let split: serde_json::Map<String, serde_json::Value> = scenes.iter().map(|s| (s.id.clone(), format!("./{}", s.file).into())).collect();
    std::fs::write(annotations.join("image_splits/split.rc2.val.json"), serde_json::to_string(&split).unwrap()).unwrap();
    let pairs: Vec<serde_json::Value> = edits
        .iter()
        .take(12)
        .enumerate()
        .map(|(n, e)| {
            let others: Vec<&str> = scenes.iter().map(|s| s.id.as_str()).filter(|id| *id != e.source && *id != e.target).skip(n * 4).take(4).collect();
            serde_json::json!({"pairid": n, "reference": e.source, "target_hard": e.target, "caption": e.text,
                               "img_set": {"members": [e.source.as_str(), e.target.as_str(), others[0], others[1], others[2], others[3]]}})
        })
        .collect();
    std::fs::write(annotations.join("captions/cap.rc2.val.json"), serde_json::to_string(&pairs).unwrap()).unwrap();
    let specs = dir.path().join("strategies.json");
    std::fs::write(
        &specs,
        r#"[{"name": "lincir", "strategy": "lincir@0.2.0", "models": ["shapes-text-slots", "shapes-image", "shapes-phi"], "query-params": ["reference"],
             "config": {"text-model": "shapes-text-slots", "image-model": "shapes-image", "projector": "shapes-phi"}},
            {"name": "text-only", "strategy": "dense@0.3.0", "models": ["shapes-text", "shapes-image"], "query": "text",
             "config": {"text-model": "shapes-text", "image-model": "shapes-image"}}]"#,
    )
    .unwrap();
    let (ann, images, specs) = (annotations.display().to_string(), world.display().to_string(), specs.display().to_string());

    let (ok, out, err) = quarry(&["eval", "cirr", &ann, &images, "--strategies", &specs, "--json"]);
    assert!(ok, "{err}");
    let results = quarry_eval::report::from_json(&out).unwrap();
    assert_eq!(results.iter().map(|r| r.strategy.as_str()).collect::<Vec<_>>(), ["lincir", "text-only"]);
    let metric = |r: &StrategyResult, name: &str| r.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}")).value;
    assert_eq!(results[0].queries, 12);
    assert_eq!((metric(&results[0], "Recall@1"), metric(&results[0], "Recall_subset@1")), (1.0, 1.0));
    assert!(metric(&results[1], "Recall@1") < 1.0 && results[1].latency.is_some());

    // A rerun only queries; --compare puts the named strategies side by side.
    let (ok, out, err) = quarry(&["eval", "cirr", &ann, &images, "--strategies", &specs, "--compare", "text-only,lincir"]);
    assert!(ok, "{err}");
    let header = out.lines().find(|l| l.starts_with("metric")).unwrap();
    assert!(header.find("text-only").unwrap() < header.find("lincir").unwrap(), "{out}");
    assert!(out.contains("Recall_subset@3") && out.contains("latency p99"), "{out}");

    let (ok, _, err) = quarry(&["eval", "cirr", &ann, &images, "--strategies", &specs, "--compare", "lincir,avg"]);
    assert!(!ok && err.contains("--compare lincir,avg") && err.contains("lincir, text-only"), "{err}");
    let (ok, _, err) = quarry(&["eval", "cirr", &ann, &images]);
    assert!(!ok && err.contains("needs --strategies FILE"), "{err}");
    let (ok, _, err) = quarry(&["eval", "cirr", &ann, &images, "--split", "test1", "--strategies", &specs]);
    assert!(!ok && err.contains("test1"), "{err}");
}
