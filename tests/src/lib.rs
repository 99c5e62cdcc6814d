//! Shared setup for the end-to-end tests: build the plugins to wasm32-wasip2, open hosts on
//! temporary directories, register the real MiniLM models.

use quarry_host::{Grants, HostConfig, Limits, Quarry, Route};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

const PLUGINS: &[&str] = &[
    "quarry-plugin-dense",
    "quarry-plugin-lincir",
    "quarry-plugin-tgdt",
    "keyword-boost",
    "quarry-test-fields",
    "quarry-test-hostile",
    "quarry-test-swap-v1",
    "quarry-test-swap-v2",
    "quarry-test-wrong-contract",
];

/// Build every plugin once per test process (in its own target dir, so the nested cargo never
/// waits on the lock of the cargo running the tests) and return the folder holding the `.wasm`s.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = root().join("target/plugins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root()).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target);
        for p in PLUGINS {
            cmd.args(["-p", p]);
        }
        let status = cmd.status().expect("cannot run cargo to build the plugins");
        assert!(status.success(), "building the plugins failed; is the wasm32-wasip2 target installed? (`bash scripts/setup.sh`)");
        target.join("wasm32-wasip2/release")
    })
}

/// The bytes of a built plugin, by crate name.
pub fn plugin(name: &str) -> Vec<u8> {
    let path = plugin_dir().join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Compiled plugins shared by all tests (content-addressed, so sharing is safe).
pub fn shared_cache() -> PathBuf {
    root().join("target/plugins/compile-cache")
}

/// A host on `dir` with the shared compile cache and the given limits.
pub fn host_with(dir: &Path, limits: Limits) -> Quarry {
    let mut config = HostConfig::new(dir);
    config.cache_dir = Some(shared_cache());
    config.limits = limits;
    Quarry::open(config).expect("host opens")
}

pub fn host(dir: &Path) -> Quarry {
    host_with(dir, Limits::default())
}

/// Register a model manifest from `examples/models/`.
pub fn add_model(host: &Quarry, name: &str) {
    let path = root().join(format!("examples/models/{name}.json"));
    host.add_model_file(&path).unwrap_or_else(|e| panic!("model {name}: {e:#}; run `bash scripts/setup.sh` first"));
}

/// A route to `strategy` granting `models`, with `config`.
pub fn route(strategy: &str, models: &[&str], config: serde_json::Value) -> Route {
    Route { strategy: strategy.to_string(), config, grants: Grants { models: models.iter().map(|m| m.to_string()).collect(), ..Default::default() } }
}

/// Build the small designed ONNX models (tests/models/make_models.py) once per test process and
/// return their folder; each model has its manifest there.
pub fn test_models_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = root().join("target/test-models");
        let python = root().join("vendor/venv/bin/python");
        let status = Command::new(&python)
            .arg(root().join("tests/models/make_models.py"))
            .arg(&out)
            .arg(root().join("vendor/models/minilm-l6/tokenizer.json"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; run `bash scripts/setup.sh` first", python.display()));
        assert!(status.success(), "building the test models failed");
        out
    })
}

/// Register a model built by [`test_models_dir`].
pub fn add_test_model(host: &Quarry, file: &str) {
    let path = test_models_dir().join(format!("{file}.json"));
    host.add_model_file(&path).unwrap_or_else(|e| panic!("test model {file}: {e:#}"));
}

/// A circle or a square of `colour` on a white 64x48 canvas, encoded as `format`.
pub fn picture(colour: [u8; 3], circle: bool, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        let (dx, dy) = (x as f32 - 32.0, y as f32 - 24.0);
        let inside = if circle { dx * dx + dy * dy < 20.0 * 20.0 } else { dx.abs() < 18.0 && dy.abs() < 18.0 };
        image::Rgb(if inside { colour } else { [255, 255, 255] })
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encoding to memory cannot fail");
    out.into_inner()
}

pub const RED: [u8; 3] = [220, 20, 20];
pub const GREEN: [u8; 3] = [20, 200, 40];
pub const BLUE: [u8; 3] = [30, 40, 230];
