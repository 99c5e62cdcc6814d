//! A third party's path: package `quarry-sdk` as it would be published, unpack the `.crate`,
//! write a plugin crate outside this workspace that depends on nothing else, build it to a
//! component, and add, route and query it on the real MiniLM model.

use quarry_host::SearchRequest;
use quarry_cli::{DEMO_QUERIES, DEMO_SENTENCES};
use quarry_host::NewItem;
use quarry_tests::{add_model, host, root, route};
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN_MANIFEST: &str = r#"[package]
name = "third-party-dense"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
quarry-sdk = { path = "SDK_PATH" }

# Its own workspace: this crate is nobody else's member.
[workspace]
"#;

/// One file, only the SDK's public API, as the README teaches.
const PLUGIN_SOURCE: &str = r#"
use quarry_sdk::serde_json::json;
use quarry_sdk::{encoders, Context, Descriptor, Hit, Item, Query, Result, Strategy};

struct ThirdParty;

impl Strategy for ThirdParty {
    fn describe() -> Descriptor {
        Descriptor::new("third-party-dense", env!("CARGO_PKG_VERSION"))
            .description("a plugin built against the packaged SDK")
            .model("text-model")
            .vector_field("embedding")
            .config_schema(json!({
                "type": "object",
                "properties": {"text-model": {"type": "string"}},
                "required": ["text-model"],
                "additionalProperties": false
            }))
    }
    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let model: String = ctx.param("text-model")?;
        let texts: Vec<String> = items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
        for (item, vector) in items.iter().zip(encoders::embed_texts(&model, &texts)?) {
            ctx.collection().put_vector(&item.id, "embedding", vector)?;
        }
        Ok(())
    }
    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let model: String = ctx.param("text-model")?;
        let vector = encoders::embed_text(&model, query.text.as_deref().unwrap_or(""))?;
        ctx.collection().nearest("embedding", &vector, query.k)
    }
}

quarry_sdk::export_strategy!(ThirdParty);
"#;

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The nested cargo must not take settings meant for the cargo running these tests.
    cmd.env_remove("CARGO_TARGET_DIR").env_remove("RUSTFLAGS").env_remove("CARGO_BUILD_TARGET");
    cmd
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run cargo: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The version sdk/Cargo.toml gives the SDK.
fn sdk_version() -> String {
    let manifest = std::fs::read_to_string(root().join("sdk/Cargo.toml")).unwrap();
    let line = manifest.lines().find(|l| l.starts_with("version = ")).expect("sdk/Cargo.toml spells out its version");
    line.trim_start_matches("version = ").trim_matches('"').to_string()
}

/// `cargo package -p quarry-sdk` into its own target dir (the cargo running the tests holds the
/// workspace's), unpacked into `into`; returns the unpacked crate's folder.
fn packaged_sdk(into: &Path) -> PathBuf {
    let target = root().join("target/packaged-sdk");
    run(
        cargo().current_dir(root()).args(["package", "-p", "quarry-sdk", "--allow-dirty", "--no-verify", "--target-dir"]).arg(&target),
        "cargo package -p quarry-sdk",
    );
    let version = sdk_version();
    let crate_file = target.join(format!("package/quarry-sdk-{version}.crate"));
    let status = Command::new("tar").arg("xzf").arg(&crate_file).arg("-C").arg(into).status().expect("tar runs");
    assert!(status.success(), "cannot unpack {}", crate_file.display());
    let unpacked = into.join(format!("quarry-sdk-{version}"));
    assert!(unpacked.join("wit/retrieval.wit").is_file(), "the package carries its WIT");
    let manifest = std::fs::read_to_string(unpacked.join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("workspace"), "the packaged manifest inherits nothing:\n{manifest}");
    unpacked
}

#[test]
fn a_plugin_built_outside_the_workspace_against_the_packaged_sdk_is_queryable() {
    let outside = tempfile::tempdir().unwrap();
    assert!(!outside.path().starts_with(root()), "the plugin must live outside the workspace");
    let sdk = packaged_sdk(outside.path());

    let crate_dir = outside.path().join("third-party-dense");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::write(crate_dir.join("Cargo.toml"), PLUGIN_MANIFEST.replace("SDK_PATH", &sdk.display().to_string())).unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), PLUGIN_SOURCE).unwrap();
    // The workspace's lock file pins the same dependency versions (cargo drops what is unused),
    // so the build needs nothing the workspace build did not fetch.
    std::fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = root().join("target/packaged-sdk");
    run(
        cargo().current_dir(&crate_dir).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target),
        "building the third-party plugin",
    );
    let wasm = target.join("wasm32-wasip2/release/third_party_dense.wasm");

    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    let plugin = host.add_plugin_file(&wasm).unwrap();
    assert_eq!(plugin.reference, "third-party-dense@0.1.0");
    assert_eq!(plugin.contract, "quarry:retrieval@0.2.0");
    assert_eq!(plugin.sdk, Some(format!("quarry-sdk {}", sdk_version())));
    host.set_route("docs", route("third-party-dense@0.1.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();
    host.ingest("docs", DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect(), |_| {}).unwrap();
    for (query, expected) in DEMO_QUERIES {
        let hits = host.search("docs", &SearchRequest::text(query, 3)).unwrap().hits;
        assert_eq!(hits[0].id, *expected, "{query:?} ranked {hits:?}");
    }
}
