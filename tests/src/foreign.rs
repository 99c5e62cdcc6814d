//! Building the foreign-language examples: examples/python-dense with componentize-py and
//! examples/js-dense with ComponentizeJS (both installed by scripts/setup.sh into vendor/).

use crate::root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn componentize_py() -> PathBuf {
    let exe = root().join("vendor/venv/bin/componentize-py");
    assert!(exe.is_file(), "{} is missing; run `bash scripts/setup.sh`", exe.display());
    exe
}

/// Build a Python app (module `app` in `app_dir`) against `wit`'s world `plugin`, with the
/// repository's Python SDK on its path.
pub fn build_python(wit: &Path, app_dir: &Path, out: &Path) -> Vec<u8> {
    build_python_on(wit, &[app_dir, &root().join("sdk/python")], out)
}

/// Build module `app` (found on `paths`, first first) against `wit`'s world `plugin`.
pub fn build_python_on(wit: &Path, paths: &[&Path], out: &Path) -> Vec<u8> {
    let mut cmd = Command::new(componentize_py());
    cmd.arg("-d").arg(wit).args(["-w", "plugin", "componentize", "app"]);
    for p in paths {
        cmd.arg("-p").arg(p);
    }
    let status = cmd.arg("-o").arg(out).status().expect("cannot run componentize-py");
    assert!(status.success(), "componentize-py failed for {}", paths[0].display());
    std::fs::read(out).unwrap()
}

/// The Python dense example, built once per test process.
pub fn python_dense() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let out = root().join("target/foreign");
        std::fs::create_dir_all(&out).unwrap();
        build_python(&root().join("wit/v0.2"), &root().join("examples/python-dense"), &out.join("dense_py.wasm"))
    })
}

/// The JavaScript dense example, built once per test process with the WASI features the host
/// does not grant left out.
pub fn js_dense() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let out = root().join("target/foreign");
        std::fs::create_dir_all(&out).unwrap();
        build_js(&["-d", "http", "-d", "fetch-event", "-d", "stdio", "-d", "random", "-d", "clocks"], &out.join("dense_js.wasm"))
    })
}

/// Build the JavaScript example with ComponentizeJS and extra `flags`.
pub fn build_js(flags: &[&str], wasm: &Path) -> Vec<u8> {
    build_js_with(&root(), "wit/v0.2", "examples/js-dense/strategy.js", flags, wasm)
}

/// Build `source` in `dir` against `wit` (relative to `dir`) with the flags that leave out the
/// WASI features the host does not grant.
pub fn build_js_file(dir: &Path, wit: &str, source: &str, wasm: &Path) -> Vec<u8> {
    build_js_with(dir, wit, source, &["-d", "http", "-d", "fetch-event", "-d", "stdio", "-d", "random", "-d", "clocks"], wasm)
}

fn build_js_with(dir: &Path, wit: &str, source: &str, flags: &[&str], wasm: &Path) -> Vec<u8> {
    let exe = root().join("vendor/node/node_modules/.bin/componentize-js");
    assert!(exe.is_file(), "{} is missing; run `bash scripts/setup.sh`", exe.display());
    let status = Command::new(exe)
        .current_dir(dir)
        .args(["--wit", wit, "-n", "plugin"])
        .args(flags)
        .arg("-o")
        .arg(wasm)
        .arg(source)
        .status()
        .expect("cannot run componentize-js");
    assert!(status.success(), "componentize-js failed on {}", dir.join(source).display());
    std::fs::read(wasm).unwrap()
}
