//! `quarry plugin new`: a plugin project in Rust, Python or JavaScript, from the same dense
//! two-tower strategy the repository's examples hold (plugins/dense's shape, examples/python-dense,
//! examples/js-dense), with the contract's WIT and, for Python and JavaScript, the SDK copied in.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The contract the scaffolds build against.
const WIT: &str = include_str!("../../../wit/v0.2/retrieval.wit");
const PY_APP: &str = include_str!("../../../examples/python-dense/app.py");
const PY_SDK: &str = include_str!("../../../sdk/python/quarry_sdk/__init__.py");
const PY_HELPERS: &str = include_str!("../../../sdk/python/quarry_sdk/helpers.py");
const JS_APP: &str = include_str!("../../../examples/js-dense/strategy.js");
const JS_SDK: &str = include_str!("../../../sdk/js/quarry_sdk.js");
const PY_TEST: &str = include_str!("../../../examples/python-dense/test_app.py");
const JS_TEST: &str = include_str!("../../../examples/js-dense/strategy.test.mjs");
const JS_PACKAGE: &str = include_str!("../../../examples/js-dense/package.json");

/// A plugin's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The command a project's README gives to run its own tests, in the project's directory.
pub fn test_command(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "cargo test",
        Lang::Python => "componentize-py -d wit -w plugin bindings bindings\nPYTHONPATH=bindings:. python3 -m unittest -v test_app",
        Lang::Js => "node --test strategy.test.mjs",
    }
}

/// Where `quarry-sdk` was when this CLI was built (a checkout), if it is still there.
fn local_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk");
    sdk.join("Cargo.toml").is_file().then(|| sdk.canonicalize().ok()).flatten()
}

/// Write a new plugin project named `name` in `lang` into `dir` (which must not exist, or be
/// empty). `sdk` is the `quarry-sdk` a Rust project depends on by path (default: the checkout
/// this CLI was built from, else the registry's `quarry-sdk = "0.1"`). Returns the files written.
pub fn new_plugin(name: &str, lang: Lang, dir: &Path, sdk: Option<&Path>) -> Result<Vec<PathBuf>> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("`{name}` is not a usable plugin name: use 1-64 characters from a-z, 0-9 and `-`, starting with a letter");
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty; choose another directory", dir.display());
    }
    let mut files: Vec<(PathBuf, String)> = vec![("wit/retrieval.wit".into(), WIT.to_string())];
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let (build, build_note, test_note) = match lang {
        Lang::Python => {
            let app = PY_APP.replace("dense-py", name).replace(
                "componentize-py -d ../../wit/v0.2 -w plugin componentize app -p . -p ../../sdk/python -o dense_py.wasm",
                &format!("componentize-py -d wit -w plugin componentize app -p . -o {wasm}"),
            );
            let test = PY_TEST.replace("dense-py", name).replace(
                "    componentize-py -d ../../wit/v0.2 -w plugin bindings bindings\n    PYTHONPATH=bindings:.:../../sdk/python python3 -m unittest -v test_app\n",
                &format!("    {}\n", test_command(lang).replace('\n', "\n    ")),
            );
            files.push(("app.py".into(), app));
            files.push(("test_app.py".into(), test));
            files.push(("quarry_sdk/__init__.py".into(), PY_SDK.to_string()));
            files.push(("quarry_sdk/helpers.py".into(), PY_HELPERS.to_string()));
            (
                format!("pip install componentize-py==0.25.1\ncomponentize-py -d wit -w plugin componentize app -p . -o {wasm}"),
                String::new(),
                "`test_app.py` unit-tests the pure code (`describe`, a refused query, the SDK's helpers) under\n\
                 CPython; componentize-py's bindings of the world (in `bindings/`) stand in for the host's."
                    .to_string(),
            )
        }
        Lang::Js => {
            let app = JS_APP
                .replace("dense-js", name)
                .replace("../../sdk/js/quarry_sdk.js", "./quarry_sdk.js")
                .replace("--wit wit/v0.2", "--wit wit")
                .replace("-o dense_js.wasm examples/js-dense/strategy.js", &format!("-o {wasm} strategy.js"))
                .replace("(from the repository root)", "(in this directory)")
                .replace("vendor/node/node_modules/.bin/componentize-js", "npx componentize-js");
            let test = JS_TEST.replace("dense-js", name).replace("../../sdk/js/quarry_sdk.js", "./quarry_sdk.js");
            files.push(("strategy.js".into(), app));
            files.push(("strategy.test.mjs".into(), test));
            files.push(("quarry_sdk.js".into(), JS_SDK.to_string()));
            files.push(("package.json".into(), JS_PACKAGE.replace("dense-js", name)));
            (
                format!(
                    "npm install @bytecodealliance/componentize-js@0.23.0\n\
                     npx componentize-js --wit wit -n plugin -d http -d fetch-event -d stdio -d random -d clocks -o {wasm} strategy.js"
                ),
                "The `-d` flags leave out the WASI features Quarry does not grant (by default the component\n\
                 imports `wasi:http`, and `quarry plugin add <file.wasm>` refuses it). Don't use `--aot`.\n\n"
                    .to_string(),
                "`strategy.test.mjs` unit-tests the pure code (`describe`, a refused query, the SDK's helpers)\n\
                 under Node.js; the host's `quarry:retrieval/*` modules resolve to an empty stub there."
                    .to_string(),
            )
        }
        Lang::Rust => {
            let dependency = match sdk.map(Path::to_path_buf).or_else(local_sdk) {
                Some(path) => format!("quarry-sdk = {{ path = {:?} }}", path.display().to_string()),
                None => "quarry-sdk = \"0.1\"".to_string(),
            };
            files.push((
                "Cargo.toml".into(),
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                     [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n{dependency}\n\n\
                     # A project of its own, not a member of an enclosing workspace.\n[workspace]\n"
                ),
            ));
            files.push(("src/lib.rs".into(), RUST_APP.replace("NAME", name)));
            files.push(("wit/README.md".into(), "The contract this plugin builds against (quarry-sdk carries its own copy).\n".into()));
            (
                format!("rustup target add wasm32-wasip2\ncargo build --target wasm32-wasip2 --release\n# -> target/wasm32-wasip2/release/{wasm}"),
                String::new(),
                "The unit tests of pure code (in `src/lib.rs`) run natively.".to_string(),
            )
        }
    };
    let test = test_command(lang);
    let wasm_path = match lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{wasm}"),
        _ => wasm.clone(),
    };
    files.push((
        "README.md".into(),
        format!(
            "# {name}\n\nA Quarry retrieval strategy: two-tower dense retrieval (one embedding per item from the\n\
             route's `text-model`, nearest neighbours at query time). Edit it from there.\n\n\
             ## Build\n\n```sh\n{build}\n```\n\n{build_note}\
             ## Test\n\n```sh\n{test}\n```\n\n{test_note}\n\n\
             ## Add, route, query\n\n```sh\nquarry plugin add {wasm_path}\n\
             quarry route set docs --strategy {name}@0.1.0 --config '{{\"text-model\": \"minilm-l6\"}}' --grant-model minilm-l6\n\
             quarry ingest docs sentences.jsonl\nquarry search docs \"a query\"\n```\n\n\
             `{name}@0.1.0` is immutable once a host holds it: bump the version where `describe` writes it for\n\
             every change you ship. The contract is in `wit/retrieval.wit` (quarry:retrieval@0.2.0).\n"
        ),
    ));
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

const RUST_APP: &str = r#"//! `NAME`: two-tower dense retrieval. Items and queries are embedded by the route's
//! `text-model` into one space; search is nearest neighbours on the `embedding` field.

use quarry_sdk::{Context, Descriptor, Error, Hit, Item, Query, Result, Strategy, encoders};

const FIELD: &str = "embedding";

struct Dense;

impl Strategy for Dense {
    fn describe() -> Descriptor {
        // NAME@0.1.0 is immutable once a host holds it: bump the version in Cargo.toml for every
        // change you ship.
        Descriptor::new("NAME", env!("CARGO_PKG_VERSION"))
            .description("Two-tower dense retrieval: one embedding per item, nearest neighbours at query time.")
            .model("text-model")
            .vector_field(FIELD)
            .config_schema(quarry_sdk::serde_json::json!({
                "type": "object",
                "properties": {"text-model": {"type": "string", "description": "model that embeds texts"}},
                "required": ["text-model"],
                "additionalProperties": false
            }))
            .query_param("filter", quarry_sdk::serde_json::json!({"type": "object"}))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let model: String = ctx.param("text-model")?;
        let texts: Vec<String> = items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
        for (item, vector) in items.iter().zip(encoders::embed_texts(&model, &texts)?) {
            ctx.collection().put_vector(&item.id, FIELD, vector)?;
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let Some(text) = &query.text else { return Err(Error::invalid("NAME answers text queries only")) };
        let vector = encoders::embed_text(&ctx.param::<String>("text-model")?, text)?;
        let params: quarry_sdk::serde_json::Map<String, quarry_sdk::serde_json::Value> = quarry_sdk::query_params(&query)?;
        match params.get("filter") {
            Some(filter) => ctx.collection().nearest_filtered(FIELD, &vector, query.k, filter),
            None => ctx.collection().nearest(FIELD, &vector, query.k),
        }
    }
}

quarry_sdk::export_strategy!(Dense);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_itself() {
        let d = Dense::describe();
        assert_eq!(d.name, "NAME");
        assert_eq!(d.models, ["text-model"]);
        assert!(d.wire_schema()["x-quarry-query-params"]["properties"]["filter"].is_object());
    }
}
"#;
