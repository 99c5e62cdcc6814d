//! Shared setup for the end-to-end tests: build the plugins to wasm32-wasip2, open hosts on
//! temporary directories, register the real MiniLM models, build the designed test models and
//! the shapes world.

pub mod etcd;
pub mod foreign;
#[path = "../../host/milvus/tests/support/mod.rs"]
pub mod milvus;
pub mod server;

use quarry_host::{Grants, HostConfig, Limits, Quarry, Route};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

const PLUGINS: &[&str] = &[
    "quarry-plugin-avg",
    "quarry-plugin-dense",
    "quarry-plugin-lincir",
    "quarry-plugin-tgdt",
    "keyword-boost",
    "quarry-test-avg-synthetic",
    "quarry-test-delegate",
    "quarry-test-fields",
    "quarry-test-hostile",
    "quarry-test-legacy-v01",
    "quarry-test-shifty",
    "quarry-test-stuck-describe",
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

/// The seed of the shapes world the tests share.
pub const SHAPES_WORLD_SEED: u64 = 7;

/// Run tests/models/shapes_world.py: the world of `seed` into `out`.
pub fn generate_shapes_world(out: &Path, seed: u64) {
    let python = root().join("vendor/venv/bin/python");
    let vocab = root().join("vendor/models/clip-bpe/bpe_simple_vocab_16e6.txt.gz");
    assert!(vocab.is_file(), "{} is missing; run `bash scripts/setup.sh`", vocab.display());
    let status = Command::new(&python)
        .arg(root().join("tests/models/shapes_world.py"))
        .arg(out)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--clip-vocab")
        .arg(&vocab)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run `bash scripts/setup.sh` first", python.display()));
    assert!(status.success(), "generating the shapes world failed; run `bash scripts/setup.sh` (it installs Pillow and onnx in vendor/venv)");
}

/// The shapes world (scenes, edits and its designed models) of [`SHAPES_WORLD_SEED`], in
/// target/shapes-world/. It is generated at most once per test process, and not at all when a
/// world from the same generator and seed is there: the output is deterministic, and test
/// processes running side by side never see a half-written world (each writes its own folder
/// and renames it into place when complete).
pub fn shapes_world() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let script = root().join("tests/models/shapes_world.py");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(&script).unwrap_or_else(|e| panic!("cannot read {}: {e}", script.display())).hash(&mut hasher);
        SHAPES_WORLD_SEED.hash(&mut hasher);
        let parent = root().join("target/shapes-world");
        let out = parent.join(format!("{:016x}", hasher.finish()));
        if !out.join("complete").is_file() {
            let scratch = parent.join(format!("incomplete-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&scratch);
            generate_shapes_world(&scratch, SHAPES_WORLD_SEED);
            std::fs::write(scratch.join("complete"), b"").expect("target/ is writable");
            // Another process may have finished first; its world is the same.
            if std::fs::rename(&scratch, &out).is_err() {
                let _ = std::fs::remove_dir_all(&scratch);
                assert!(out.join("complete").is_file(), "cannot move the shapes world into {}", out.display());
            }
        }
        out
    })
}

/// A scene's attribute values, as words of the captions' grammar.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Attributes {
    pub colour: String,
    pub shape: String,
    pub size: String,
    /// "top left", "top right", "bottom left", "bottom right" or "center".
    pub position: String,
}

/// One line of scenes.jsonl.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Scene {
    pub id: String,
    /// The image, relative to the world's folder (`images/ID.png` or `images/ID.jpg`).
    pub file: String,
    pub caption: String,
    pub attributes: Attributes,
    /// What the decoder generates for the caption: colour, shape, size and position codes.
    pub codes: Vec<u32>,
    /// Scenes of one family share their background and jitter.
    pub family: usize,
    pub background: String,
}

/// One line of edits.jsonl: `target` is `source` with one attribute changed as `text` says.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Edit {
    pub source: String,
    pub target: String,
    /// `colour`, `shape`, `size` or `position`.
    pub attribute: String,
    pub text: String,
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()))).collect()
}

/// The scenes of the world in `dir`, in file order.
pub fn shapes_scenes(dir: &Path) -> Vec<Scene> {
    read_jsonl(&dir.join("scenes.jsonl"))
}

/// The edited pairs of the world in `dir`.
pub fn shapes_edits(dir: &Path) -> Vec<Edit> {
    read_jsonl(&dir.join("edits.jsonl"))
}

/// The encoded image of a scene of the world in `dir`.
pub fn shapes_image(dir: &Path, scene: &Scene) -> Vec<u8> {
    let path = dir.join(&scene.file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Register a model of [`shapes_world`] (`shapes-text`, `shapes-image`, ...).
pub fn add_shapes_model(host: &Quarry, name: &str) {
    let path = shapes_world().join(format!("{name}.json"));
    host.add_model_file(&path).unwrap_or_else(|e| panic!("shapes world model {name}: {e:#}"));
}

/// Make `command`'s process die when the thread that starts it ends, however the test ends
/// (a panic, a kill), so no server a test starts outlives it. Start it from the test's own
/// thread: the signal follows the starting thread, not the process.
pub fn dies_with_test(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
