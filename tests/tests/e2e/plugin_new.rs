//! `quarry plugin new`: the scaffold for each language passes its own tests and builds as its
//! README says, and the component is added, routed on MiniLM and ranks every paraphrase of the
//! demo set first.

use quarry_cli::scaffold::{Lang, new_plugin, test_command};
use quarry_cli::{DEMO_QUERIES, DEMO_SENTENCES};
use quarry_host::{NewItem, SearchRequest};
use quarry_tests::foreign::{build_js_file, build_python_on};
use quarry_tests::{add_model, host, root, route};
use std::path::Path;
use std::process::Command;

fn check_queryable(wasm: &[u8], name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    let plugin = host.add_plugin(wasm).unwrap();
    let reference = format!("{name}@0.1.0");
    assert_eq!(plugin.reference, reference);
    host.set_route("docs", route(&reference, &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect(), |_| {}).unwrap();
    for (query, expected) in DEMO_QUERIES {
        let response = host.search("docs", &SearchRequest::text(query, 3)).unwrap();
        assert_eq!(response.hits[0].id, *expected, "query {query:?} ranked {:?}", response.hits);
    }
}

fn readme_mentions(dir: &Path, what: &[&str]) {
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for w in what {
        assert!(readme.contains(w), "README lacks {w:?}:\n{readme}");
    }
}

/// Run the project's own tests with the command its README gives under `## Test`, in the
/// project's directory, with what scripts/setup.sh installs (vendor/venv/bin) first on the PATH
/// and `env` set; returns what they printed once they passed.
fn run_own_tests(project: &Path, lang: Lang, env: &[(&str, &Path)]) -> String {
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let (_, section) = readme.split_once("## Test\n\n```sh\n").unwrap_or_else(|| panic!("README has no Test section:\n{readme}"));
    let command = section.split_once("\n```").unwrap().0;
    assert_eq!(command, test_command(lang));
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let path = std::iter::once(root().join("vendor/venv/bin")).chain(std::env::split_paths(&inherited));
    let output = Command::new("sh")
        .args(["-ec", command])
        .current_dir(project)
        .env("PATH", std::env::join_paths(path).unwrap())
        .envs(env.iter().copied())
        .output()
        .expect("cannot run sh");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "`{command}` fails in {}:\n{printed}", project.display());
    printed
}

/// The number after `label` where a line starts with it, past any `#`/`ℹ` (`Ran 4 tests in ..`,
/// `# pass 4`, `test result: ok. 1 passed; ..`).
fn count(printed: &str, label: &str) -> Option<usize> {
    printed.lines().find_map(|line| line.trim_start_matches(['#', 'ℹ', ' ']).strip_prefix(label)?.split_whitespace().next()?.parse().ok())
}

/// The scaffold is a project of its own: nothing in it points back into this repository.
fn self_contained(project: &Path, files: &[std::path::PathBuf]) {
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.contains("../../"), "{} refers outside {}:\n{text}", file.display(), project.display());
    }
}

/// The tests here compile large components; one at a time keeps calls within their deadlines.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_python_scaffold_passes_its_own_tests_builds_and_is_queryable() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("my-py");
    let files = new_plugin("my-py", Lang::Python, &project, None).unwrap();
    self_contained(&project, &files);
    readme_mentions(&project, &["componentize-py -d wit -w plugin componentize app -p . -o my_py.wasm", "quarry plugin add my_py.wasm", "my-py@0.1.0"]);
    // Its own unit tests (test_app.py, under CPython), then the component built beside them.
    let printed = run_own_tests(&project, Lang::Python, &[]);
    let ran = count(&printed, "Ran ").unwrap_or_else(|| panic!("no count of tests run:\n{printed}"));
    assert!(ran >= 4 && printed.lines().any(|l| l == "OK"), "{printed}");
    assert!(printed.contains("test_names_the_strategy_and_its_version"), "{printed}");
    // As its README says, with nothing from this repository: the SDK and the WIT are in the project.
    let wasm = build_python_on(&project.join("wit"), &[&project], &project.join("my_py.wasm"));
    check_queryable(&wasm, "my-py");
}

#[test]
fn a_javascript_scaffold_passes_its_own_tests_builds_and_is_queryable() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("my-js");
    let files = new_plugin("my-js", Lang::Js, &project, None).unwrap();
    self_contained(&project, &files);
    readme_mentions(&project, &["-d http -d fetch-event -d stdio -d random -d clocks -o my_js.wasm strategy.js", "my-js@0.1.0"]);
    // Its own unit tests (strategy.test.mjs, under Node.js's test runner).
    let printed = run_own_tests(&project, Lang::Js, &[]);
    let ran = count(&printed, "tests ").unwrap_or_else(|| panic!("no count of tests run:\n{printed}"));
    assert!(ran >= 4 && count(&printed, "pass ") == Some(ran) && count(&printed, "fail ") == Some(0), "{printed}");
    let wasm = build_js_file(&project, "wit", "strategy.js", &project.join("my_js.wasm"));
    check_queryable(&wasm, "my-js");
}

#[test]
fn a_rust_scaffold_passes_its_own_tests_builds_and_is_queryable() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("my-rs");
    new_plugin("my-rs", Lang::Rust, &project, Some(&root().join("sdk"))).unwrap();
    readme_mentions(&project, &["cargo build --target wasm32-wasip2 --release", "quarry plugin add target/wasm32-wasip2/release/my_rs.wasm"]);
    // The workspace's lock file pins the dependency versions already fetched (offline builds).
    std::fs::copy(root().join("Cargo.lock"), project.join("Cargo.lock")).unwrap();
    // One target folder for every run, so only the first compiles the SDK's dependencies.
    let target = root().join("target/scaffold");
    let printed = run_own_tests(&project, Lang::Rust, &[("CARGO_TARGET_DIR", &target)]);
    let passed = count(&printed, "test result: ok. ").unwrap_or_else(|| panic!("no count of tests passed:\n{printed}"));
    assert!(passed >= 1 && printed.contains("describes_itself ... ok"), "{printed}");
    let cargo = || Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let status =
        cargo().current_dir(&project).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target).status().unwrap();
    assert!(status.success(), "the scaffold does not build");
    let wasm = std::fs::read(target.join("wasm32-wasip2/release/my_rs.wasm")).unwrap();
    check_queryable(&wasm, "my-rs");
}

#[test]
fn bad_names_and_non_empty_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "My", "a b", "1x", "../x"] {
        assert!(new_plugin(bad, Lang::Python, &dir.path().join("p"), None).is_err(), "{bad:?}");
    }
    std::fs::write(dir.path().join("keep.txt"), "x").unwrap();
    let err = new_plugin("ok", Lang::Js, dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(), "x");
}
