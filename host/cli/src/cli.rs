//! The `quarry` command line: a thin layer over [`crate::api::Quarry`].

use crate::api::{HostConfig, Quarry, SearchRequest, SearchResponse};
use crate::eval::{EvalSet, StrategySpec};
use std::collections::BTreeMap;
use crate::plugins::host_api::Grants;
use crate::plugins::limits::Limits;
use crate::plugins::registry::{Owner, Route};
use crate::printable::printable;
use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "quarry", version, about = "Quarry: sandboxed WebAssembly retrieval strategies over host-owned models and collections")]
struct Cli {
    /// Where collections, plugins, routes and model manifests live [env: QUARRY_HOME] [default: ./.quarry]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Print plugin log lines at debug level.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// Send the command to a running `quarry serve` at this URL instead of opening a data
    /// directory (e.g. http://127.0.0.1:7700).
    #[arg(long, global = true, env = "QUARRY_SERVER")]
    server: Option<String>,
    /// The API key for --server (a tenant's key, or the admin key).
    #[arg(long, global = true, env = "QUARRY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Add, list, describe or remove strategy plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Register or list models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Point a collection at a strategy version, a pipeline or an experiment; promote an arm or
    /// roll back.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Declare, list or remove pipelines (cascade, fusion, fallback of strategies).
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// What a collection's experiment has seen: per-arm calls, latency and click-through, and the
    /// interleaving verdict.
    Experiment { collection: String },
    /// Ingest a folder (text and image files) or a JSONL file into a collection.
    Ingest {
        collection: String,
        /// A folder, or a .jsonl file of {"id", "text", "image", "metadata"} lines.
        source: PathBuf,
        /// Route the collection to this strategy (same options as `route set`); the route is
        /// saved only if the ingest succeeds.
        #[command(flatten)]
        route: Option<RouteArgs>,
        /// Ingest what can be read even when some files or lines cannot (they are listed). Without
        /// it, an unreadable file or line stops the ingest before anything is stored.
        #[arg(long)]
        allow_skips: bool,
    },
    /// List a tenant's collections with their item counts and routes.
    Collections {
        /// The tenant whose collections to list [default: default]
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Have a collection's strategy build its collection-level artifacts (a codebook, ...) from
    /// what was ingested; run it after ingest.
    Build { collection: String },
    /// Search a collection by text, by image (`--image`), or both (composed retrieval).
    Search {
        collection: String,
        #[arg(required_unless_present = "image")]
        query: Option<String>,
        /// A query image (PNG, JPEG, ...); with a query text too, strategies such as `lincir`
        /// read the text as a modification of the image.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Answer with this `name@version` instead of the routed one.
        #[arg(long)]
        strategy: Option<String>,
        /// How many hits; the host answers at most `limits.max_hits` and says so.
        #[arg(short, default_value_t = 10)]
        k: u32,
        /// Per-query parameters for the strategy, a JSON object.
        #[arg(long)]
        params: Option<String>,
        /// Keep only items whose metadata meets this filter, e.g. '{"lang": "en"}' (sets
        /// `params.filter`; strategies that do not declare `filter`, such as `tgdt`, refuse it).
        #[arg(long)]
        filter: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Choose approximate (HNSW) or exact nearest-neighbour search for a vector field, and the
    /// precision of its in-memory vectors. With only --f16, --int8 or --f32, the search stays as it is.
    Index {
        collection: String,
        field: String,
        /// Search this field with an HNSW graph.
        #[arg(long, conflicts_with = "exact")]
        hnsw: bool,
        /// Search this field exactly (what a bare `quarry index <collection> <field>` does too).
        #[arg(long)]
        exact: bool,
        /// Hold the field's vectors in memory as f16: half the memory, scores to about 3
        /// significant digits. The store keeps them as written.
        #[arg(long, conflicts_with_all = ["f32", "int8"])]
        f16: bool,
        /// Keep an int8 copy of the field's vectors beside the f32 ones: single-query exact
        /// searches scan the copy (a quarter of the memory traffic) and re-score the best
        /// candidates in f32, so scores stay exact. Costs a quarter more memory than f32.
        #[arg(long, conflicts_with = "f32")]
        int8: bool,
        /// Hold the field's vectors in memory as f32 (the default).
        #[arg(long)]
        f32: bool,
        /// HNSW links per node.
        #[arg(long, default_value_t = 16)]
        m: usize,
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
        /// Candidates per search; higher is slower and closer to exact.
        #[arg(long, default_value_t = 64)]
        ef_search: usize,
    },
    /// Delete items (and all their fields) from a collection.
    Delete {
        collection: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set up a small collection on the real MiniLM model and run queries against it.
    Demo {
        /// The dense plugin component [default: target/wasm32-wasip2/release/quarry_plugin_dense.wasm]
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// The model manifest [default: examples/models/minilm-l6.json]
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Score strategies on an evaluation set with the metrics their papers use: Recall@K,
    /// CIRCO's mAP@K, CIRR's Recall_subset@K, FashionIQ's R@10/R@50, and query latency.
    Eval(EvalArgs),
    /// Serve the HTTP API for many tenants (see the README's "Serving"); stops on SIGTERM or
    /// Ctrl-C after requests in flight finish.
    Serve(quarry_server::config::ServeArgs),
    /// Print a JSON Schema.
    Schema {
        #[arg(value_parser = ["model", "limits", "server"])]
        what: String,
    },
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    #[command(subcommand)]
    set: EvalSetCommand,
    /// The strategies to score: a JSON array of {"name", "strategy": "name@version", "models",
    /// "config", "params", "query": "both"|"text"|"image", "build", "query-params"} (the shapes
    /// world has its own).
    #[arg(long, global = true)]
    strategies: Option<PathBuf>,
    /// Print the results as JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Print these strategies side by side, e.g. --compare dense,tgdt.
    #[arg(long, global = true)]
    compare: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum EvalSetCommand {
    /// The shapes world's splits (fine, composed, generative) and the strategies each compares.
    Shapes {
        /// A world written by tests/models/shapes_world.py.
        world: PathBuf,
        /// Only these splits.
        #[arg(long, value_parser = crate::eval::shapes::SPLITS)]
        split: Vec<String>,
    },
    /// Flickr30K or COCO in a Karpathy split file: text→image and image→text.
    Karpathy {
        /// dataset_flickr30k.json or dataset_coco.json.
        annotations: PathBuf,
        images: PathBuf,
        #[arg(long, default_value = "test")]
        split: quarry_eval::datasets::karpathy::KarpathySplit,
    },
    /// CIRR: the folder holding captions/ and image_splits/, and the image folder.
    Cirr {
        annotations: PathBuf,
        images: PathBuf,
        #[arg(long, default_value = "val")]
        split: quarry_eval::datasets::cirr::CirrSplit,
    },
    /// CIRCO: the folder holding annotations/, and the COCO unlabeled2017 image folder.
    Circo {
        annotations: PathBuf,
        images: PathBuf,
        #[arg(long, default_value = "val")]
        split: quarry_eval::datasets::circo::CircoSplit,
    },
    /// FashionIQ: the folder holding captions/ and image_splits/, and the image folder.
    Fashioniq {
        annotations: PathBuf,
        images: PathBuf,
        #[arg(long, default_value = "val")]
        split: quarry_eval::datasets::fashioniq::FashionIqSplit,
        /// Only these categories [default: dress, shirt, toptee].
        #[arg(long)]
        category: Vec<quarry_eval::datasets::fashioniq::FashionIqCategory>,
    },
    /// Your own set: a folder with gallery.jsonl ({"id", "text"?, "file"?}) and queries.jsonl
    /// ({"id", "text"?, "image"?, "reference"?, "relevant": [ids]}), scored by Recall@K.
    Jsonl {
        folder: PathBuf,
        /// Image paths are relative to this folder [default: FOLDER].
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Write a new plugin project (a dense strategy to start from) with a README that says how to
    /// build, add and route it.
    New {
        /// The strategy's name: a-z, 0-9 and `-`.
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Lang,
        /// Where to write it [default: ./<name>]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The quarry-sdk a Rust project depends on by path [default: this CLI's checkout, else
        /// the registry]
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Validate a component against the contract, compile it and register it.
    Add {
        file: PathBuf,
        #[command(flatten)]
        owner: OwnerArgs,
    },
    /// List registered strategy versions (every tenant's, and shared ones), and quarantined ones.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show what a strategy version declares, as its tenant's routes see it.
    Describe {
        strategy: String,
        /// The tenant whose plugin (or, failing that, the shared one) to show [default: default]
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a strategy version that no route uses (quarantined ones too).
    Remove {
        strategy: String,
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

/// Whose plugin: a tenant's own (the default tenant unless named), or shared by the operator.
#[derive(Args, Clone)]
pub(crate) struct OwnerArgs {
    /// The tenant that owns the plugin [default: default]
    #[arg(long, conflicts_with = "shared")]
    pub(crate) tenant: Option<String>,
    /// A plugin the operator shares with every tenant.
    #[arg(long)]
    pub(crate) shared: bool,
}

impl OwnerArgs {
    fn owner(&self) -> Result<Owner> {
        if self.shared {
            return Ok(Owner::Shared);
        }
        Owner::tenant(self.tenant.as_deref().unwrap_or(crate::store::DEFAULT_TENANT))
    }
}

#[derive(Subcommand)]
pub(crate) enum ModelCommand {
    /// Register a model from its manifest (see `quarry schema model`).
    Add { manifest: PathBuf },
    /// List registered models.
    List,
}

#[derive(Subcommand)]
pub(crate) enum RouteCommand {
    /// Route a collection to a strategy version, a pipeline (`--pipeline`) or an experiment
    /// (`--experiment`), atomically.
    Set {
        collection: String,
        #[command(flatten)]
        route: Option<RouteArgs>,
        /// A pipeline declared with `quarry pipeline set`.
        #[arg(long, conflicts_with_all = ["strategy", "experiment"])]
        pipeline: Option<String>,
        /// An experiment, as JSON or @file: {"name", "arms": [{"name", "weight", "strategy",
        /// "config", "models"} or {"name", "weight", "pipeline"}], "interleave"}.
        #[arg(long, conflicts_with = "strategy")]
        experiment: Option<String>,
    },
    /// Make an arm of the collection's experiment its route.
    Promote { collection: String, arm: String },
    /// Route the collection back to what it had before its last change.
    Rollback { collection: String },
    /// List routes.
    List,
}

#[derive(Subcommand)]
pub(crate) enum PipelineCommand {
    /// Declare (or replace) a pipeline from JSON or @file, e.g. '{"fusion": {"stages": [...]}}'.
    Set {
        name: String,
        declaration: String,
        /// The tenant whose pipeline it is [default: default]
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List a tenant's pipelines with their declarations.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a pipeline no route, arm or pipeline uses.
    Remove {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// A JSON declaration given inline or as `@file`.
pub(crate) fn declaration(text: &str, what: &str) -> Result<serde_json::Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} from {path}"))?,
        None => text.to_string(),
    };
    serde_json::from_str(&text).with_context(|| format!("the {what} is not valid JSON"))
}

impl RouteCommand {
    /// What `route set` routes to, from its options.
    pub(crate) fn target(route: &Option<RouteArgs>, pipeline: &Option<String>, experiment: &Option<String>) -> Result<quarry_host::Target> {
        Ok(match (route, pipeline, experiment) {
            (Some(route), None, None) => quarry_host::Target::Strategy(route.route()?),
            (None, Some(pipeline), None) => quarry_host::Target::Pipeline { pipeline: pipeline.clone() },
            (None, None, Some(experiment)) => {
                let experiment = serde_json::from_value(declaration(experiment, "experiment")?).context("the experiment does not read as {\"name\", \"arms\", \"interleave\"}")?;
                quarry_host::Target::Experiment { experiment }
            }
            _ => bail!("give one of --strategy, --pipeline or --experiment"),
        })
    }
}

#[derive(Args, Clone)]
#[group(requires = "strategy")]
pub(crate) struct RouteArgs {
    /// `name@version` of a registered strategy.
    #[arg(long, required = false)]
    strategy: String,
    /// The strategy's config, a JSON object.
    #[arg(long)]
    config: Option<String>,
    /// A model the strategy may call (repeatable).
    #[arg(long = "grant-model")]
    grant_models: Vec<String>,
    /// Another collection the strategy may access (repeatable).
    #[arg(long = "grant-collection")]
    grant_collections: Vec<String>,
    /// Another strategy (`name@version`) the strategy may call (repeatable).
    #[arg(long = "grant-strategy")]
    grant_strategies: Vec<String>,
}

impl RouteArgs {
    pub(crate) fn route(&self) -> Result<Route> {
        let config = match &self.config {
            Some(text) => serde_json::from_str(text).context("--config is not valid JSON")?,
            None => serde_json::json!({}),
        };
        if !config.is_object() {
            bail!("--config must be a JSON object");
        }
        Ok(Route {
            strategy: self.strategy.clone(),
            config,
            grants: Grants {
                models: self.grant_models.iter().cloned().collect(),
                collections: self.grant_collections.iter().cloned().collect(),
                strategies: self.grant_strategies.iter().cloned().collect(),
            },
        })
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn data_dir(cli: &Cli) -> PathBuf {
    cli.data_dir
        .clone()
        .or_else(|| std::env::var_os("QUARRY_HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".quarry"))
}

/// Open the host, reading `limits.json` from the data directory if present.
fn open(dir: &Path, verbose: bool) -> Result<Quarry> {
    open_with(dir, verbose, None, None)
}

/// [`open`] with the control store kept in `control` (a server's shared etcd) instead of the
/// data directory's files.
fn open_with(
    dir: &Path,
    verbose: bool,
    control: Option<std::sync::Arc<dyn quarry_host::control::ControlStore>>,
    collections: Option<std::sync::Arc<dyn quarry_host::store::CollectionStore>>,
) -> Result<Quarry> {
    let mut config = HostConfig::new(dir);
    config.verbose = verbose;
    config.control = control;
    config.collections = collections;
    let limits_path = dir.join("limits.json");
    if limits_path.is_file() {
        config.limits = serde_json::from_str::<Limits>(&std::fs::read_to_string(&limits_path)?)
            .with_context(|| format!("{} is not valid; `quarry schema limits` prints what it may hold", limits_path.display()))?;
    }
    Quarry::open(config)
}

fn run(cli: Cli) -> Result<()> {
    // `plugin new` writes files here and needs no host, so it runs the same with --server.
    if let Some(server) = &cli.server
        && !matches!(cli.command, Command::Plugin(PluginCommand::New { .. }))
    {
        return crate::remote::run(&crate::remote::Remote::new(server, cli.api_key.clone())?, cli.command);
    }
    let dir = data_dir(&cli);
    match cli.command {
        Command::Schema { what } => {
            let schema = match what.as_str() {
                "limits" => serde_json::to_value(schemars::schema_for!(Limits))?,
                "server" => quarry_server::config::schema(),
                _ => serde_json::to_value(crate::models::manifest::schema())?,
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
        Command::Serve(args) => {
            let config = args.config()?;
            let control = quarry_server::control_store(&config)?;
            let collections = quarry_server::collection_store(&config, control.as_ref(), &dir)?;
            quarry_server::serve(open_with(&dir, cli.verbose, control, collections)?, config)
        }
        Command::Plugin(PluginCommand::New { name, lang, dir, sdk }) => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            crate::scaffold::new_plugin(&name, lang, &dir, sdk.as_deref())?;
            println!("wrote {} ({lang:?}); its README.md says how to build, add and route it", dir.display());
            Ok(())
        }
        Command::Plugin(cmd) => {
            let host = open(&dir, cli.verbose)?;
            match cmd {
                PluginCommand::New { .. } => unreachable!("handled above"),
                PluginCommand::Add { file, owner } => {
                    let owner = owner.owner()?;
                    let p = host.add_plugin_file_as(&owner, &file)?;
                    let sdk = p.sdk.as_deref().map_or(String::new(), |s| format!(" with {}", printable(s, 64)));
                    println!("added {} for {owner} (built against {}{sdk}, sha256 {})", p.reference, p.contract, &p.sha256[..16]);
                }
                PluginCommand::List { json } => {
                    let plugins = host.plugins();
                    let quarantined = host.quarantined();
                    if json {
                        let rows: Vec<_> = plugins
                            .iter()
                            .map(|(owner, p)| {
                                serde_json::json!({"strategy": p.reference, "owner": owner, "contract": p.contract, "sdk": p.sdk, "sha256": p.sha256, "description": p.descriptor.description})
                            })
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"plugins": rows, "quarantined": quarantined}))?);
                    } else if plugins.is_empty() && quarantined.is_empty() {
                        println!("no strategies registered; add one with `quarry plugin add <file.wasm>`");
                    } else {
                        for (owner, p) in plugins {
                            println!("{:<28} {:<20} {:<24} {}", p.reference, owner.to_string(), p.contract, printable(&p.descriptor.description, 70));
                        }
                        for q in quarantined {
                            println!("{:<28} {:<20} QUARANTINED: {}", printable(&q.reference, 28), q.owner.to_string(), printable(&q.reason, 200));
                        }
                    }
                }
                PluginCommand::Describe { strategy, tenant } => {
                    let p = host.plugin_for(tenant.as_deref().unwrap_or(crate::store::DEFAULT_TENANT), &strategy)?;
                    let d = &p.descriptor;
                    let fields: serde_json::Map<String, serde_json::Value> =
                        d.fields.iter().map(|(name, schema)| Ok((name.clone(), serde_json::to_value(schema)?))).collect::<Result<_>>()?;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "strategy": p.reference, "contract": p.contract, "sdk": p.sdk, "sha256": p.sha256,
                            "description": d.description, "models": d.models, "fields": fields, "config_schema": d.config_schema,
                        }))?
                    );
                }
                PluginCommand::Remove { strategy, owner } => {
                    let owner = owner.owner()?;
                    host.remove_plugin_as(&owner, &strategy)?;
                    println!("removed {} ({owner})", printable(&strategy, 128));
                }
            }
            Ok(())
        }
        Command::Model(cmd) => {
            let host = open(&dir, cli.verbose)?;
            match cmd {
                ModelCommand::Add { manifest } => {
                    let m = host.add_model_file(&manifest)?;
                    println!("added model {} ({:?}, {})", m.name, m.role, m.files.model.display());
                }
                ModelCommand::List => {
                    for m in host.models().manifests() {
                        println!("{:<24} {:<14} {}", m.name, format!("{:?}", m.role), m.files.model.display());
                    }
                }
            }
            Ok(())
        }
        Command::Route(cmd) => {
            let host = open(&dir, cli.verbose)?;
            match cmd {
                RouteCommand::Set { collection, route, pipeline, experiment } => {
                    let target = RouteCommand::target(&route, &pipeline, &experiment)?;
                    let shown = target.describe();
                    host.set_target(&collection, target)?;
                    println!("{collection} -> {shown}");
                }
                RouteCommand::Promote { collection, arm } => println!("{collection} -> {}", host.promote(&collection, &arm)?.describe()),
                RouteCommand::Rollback { collection } => println!("{collection} -> {}", host.rollback(&collection)?.describe()),
                RouteCommand::List => {
                    for (collection, target) in host.routes() {
                        match target.strategy() {
                            Some(route) => {
                                let models = route.grants.models.iter().cloned().collect::<Vec<_>>().join(", ");
                                println!("{collection:<24} {:<24} config {} models [{models}]", printable(&route.strategy, 64), printable(&route.config.to_string(), 200));
                            }
                            None => println!("{collection:<24} {:<24} {}", printable(&target.describe(), 64), printable(&serde_json::to_string(target.as_ref())?, 400)),
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Pipeline(cmd) => {
            let host = open(&dir, cli.verbose)?;
            let tenant = |t: &Option<String>| t.clone().unwrap_or_else(|| crate::store::DEFAULT_TENANT.to_string());
            match cmd {
                PipelineCommand::Set { name, declaration: text, tenant: t } => {
                    let pipeline = serde_json::from_value(declaration(&text, "pipeline")?).context("the pipeline does not read as {\"cascade\"}, {\"fusion\"} or {\"fallback\"}")?;
                    host.set_pipeline(&tenant(&t), &name, pipeline)?;
                    println!("pipeline {name} declared");
                }
                PipelineCommand::List { tenant: t } => {
                    let pipelines = host.pipelines(&tenant(&t));
                    let listed: std::collections::BTreeMap<&String, &quarry_host::Pipeline> = pipelines.iter().map(|(n, p)| (n, p.as_ref())).collect();
                    println!("{}", serde_json::to_string_pretty(&listed)?);
                }
                PipelineCommand::Remove { name, tenant: t } => {
                    host.remove_pipeline(&tenant(&t), &name)?;
                    println!("pipeline {name} removed");
                }
            }
            Ok(())
        }
        Command::Experiment { collection } => {
            let host = open(&dir, cli.verbose)?;
            println!("{}", serde_json::to_string_pretty(&host.experiment_report(&collection)?)?);
            Ok(())
        }
        Command::Ingest { collection, source, route, allow_skips } => {
            let host = open(&dir, cli.verbose)?;
            let route = route.map(|r| r.route()).transpose()?;
            ingest(&host, &collection, &source, route, allow_skips)
        }
        Command::Collections { tenant, json } => {
            let host = open(&dir, cli.verbose)?;
            let tenant = tenant.as_deref().unwrap_or(crate::store::DEFAULT_TENANT);
            let collections = host.collections_of(tenant)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&collections)?);
            } else if collections.is_empty() {
                println!("tenant `{tenant}` has no collections; create one with `quarry ingest <collection> <source> --strategy <name@version>`");
            } else {
                println!("{:<32} {:>10}  route", "collection", "items");
                for c in collections {
                    println!("{:<32} {:>10}  {}", c.name, c.items, c.strategy.as_deref().map_or("(none)".to_string(), |s| printable(s, 64)));
                }
            }
            Ok(())
        }
        Command::Build { collection } => {
            let host = open(&dir, cli.verbose)?;
            let start = std::time::Instant::now();
            host.build(&collection)?;
            println!("built {collection} in {:.1} s", start.elapsed().as_secs_f64());
            Ok(())
        }
        Command::Search { collection, query, image, strategy, k, params, filter, json } => {
            let host = open(&dir, cli.verbose)?;
            let params = query_params(params, filter)?;
            let image_bytes = match &image {
                Some(path) => Some(std::fs::read(path).with_context(|| format!("cannot read query image {}", path.display()))?),
                None => None,
            };
            let response = host.search(&collection, &SearchRequest { text: query.clone(), image: image_bytes, k, params, strategy, ..Default::default() })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&response)?);
            } else {
                for note in &response.notes {
                    eprintln!("note: {note}");
                }
                let shown = shown_query(&query, &image);
                print_table(&shown, &response);
            }
            Ok(())
        }
        Command::Index { collection, field, hnsw, exact, f16, int8, f32, m, ef_construction, ef_search } => {
            let host = open(&dir, cli.verbose)?;
            // Precision first: if f16 cannot hold the field, the search setting stays untouched too.
            let precision = match (f16, int8, f32) {
                (true, _, _) => Some(crate::store::Precision::F16),
                (_, true, _) => Some(crate::store::Precision::Int8),
                (_, _, true) => Some(crate::store::Precision::F32),
                _ => None,
            };
            if let Some(precision) = precision {
                host.set_precision(&collection, &field, precision)?;
            }
            if hnsw || exact || precision.is_none() {
                let ann = hnsw.then_some(crate::store::AnnParams { m, ef_construction, ef_search });
                host.set_ann(&collection, &field, ann)?;
            }
            let schema = host.field_schema(&collection, &field)?;
            let search = match schema.ann {
                Some(a) => format!("HNSW (m {}, ef_construction {}, ef_search {})", a.m, a.ef_construction, a.ef_search),
                None => "exact".to_string(),
            };
            let precision = match schema.precision {
                crate::store::Precision::F32 => "f32",
                crate::store::Precision::F16 => "f16",
                crate::store::Precision::Int8 => "f32 with an int8 copy for scans",
            };
            println!("{collection}.{field}: {search}, vectors in memory as {precision}");
            Ok(())
        }
        Command::Delete { collection, ids } => {
            let host = open(&dir, cli.verbose)?;
            let existed = host.delete(&collection, &ids)?;
            println!("deleted {existed} of {} item(s) from {collection}", ids.len());
            Ok(())
        }
        Command::Eval(args) => eval(&open(&dir, cli.verbose)?, args),
        Command::Demo { plugin, model } => demo(&dir, plugin, model, cli.verbose),
    }
}

/// The sets `quarry eval` was asked for, each with the strategies to score on it.
fn eval_sets(host: &Quarry, set: EvalSetCommand, strategies: Option<Vec<StrategySpec>>) -> Result<Vec<(EvalSet, Vec<StrategySpec>)>> {
    use quarry_eval::datasets as ds;
    let need = |what: &str| {
        strategies.clone().with_context(|| {
            format!("{what} needs --strategies FILE: a JSON array of {{\"name\", \"strategy\": \"name@version\", \"models\", \"config\"}}")
        })
    };
    Ok(match set {
        EvalSetCommand::Shapes { world, split } => {
            crate::eval::shapes::register_models(host, &world)?;
            let splits: Vec<&str> = if split.is_empty() { crate::eval::shapes::SPLITS.to_vec() } else { split.iter().map(String::as_str).collect() };
            let mut out = Vec::new();
            for name in splits {
                let specs = strategies.clone().unwrap_or_else(|| crate::eval::shapes::strategies(name));
                out.push((crate::eval::shapes::split(&world, name)?, specs));
            }
            out
        }
        EvalSetCommand::Karpathy { annotations, images, split } => {
            let specs = need("karpathy")?;
            let dataset = ds::karpathy::load(&annotations, &images, split)?;
            vec![(crate::eval::karpathy::text_to_image(&dataset), specs.clone()), (crate::eval::karpathy::image_to_text(&dataset), specs)]
        }
        EvalSetCommand::Cirr { annotations, images, split } => {
            vec![(crate::eval::cirr::set(&ds::cirr::load(&annotations, &images, split)?)?, need("cirr")?)]
        }
        EvalSetCommand::Circo { annotations, images, split } => {
            vec![(crate::eval::circo::set(&ds::circo::load(&annotations, &images, split)?)?, need("circo")?)]
        }
        EvalSetCommand::Fashioniq { annotations, images, split, category } => {
            let specs = need("fashioniq")?;
            let categories = if category.is_empty() { ds::fashioniq::FashionIqCategory::ALL.to_vec() } else { category };
            let mut out = Vec::new();
            for c in categories {
                let dataset = ds::fashioniq::load(&annotations, &images, c, split)?;
                out.push((crate::eval::fashioniq::set(&dataset, c.as_str())?, specs.clone()));
            }
            out
        }
        EvalSetCommand::Jsonl { folder, root } => {
            let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "jsonl".into());
            let key: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(24).collect();
            let set = crate::eval::jsonl::load(&name, key.trim_matches('-'), root.as_deref().unwrap_or(&folder), &folder)?;
            vec![(set, need("jsonl")?)]
        }
    })
}

fn eval(host: &Quarry, args: EvalArgs) -> Result<()> {
    use crate::eval::{Progress, score, score_fashioniq};
    use quarry_eval::report;
    let strategies = match &args.strategies {
        Some(path) => Some(StrategySpec::parse_list(
            &std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        )?),
        None => None,
    };
    let sets = eval_sets(host, args.set, strategies)?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})").expect("valid template").progress_chars("=> "),
    );
    // Results per set, in the order run; FashionIQ categories are scored together at the end.
    let mut results: Vec<Vec<report::StrategyResult>> = Vec::new();
    let mut fashioniq: BTreeMap<String, Vec<(usize, crate::eval::Answers)>> = BTreeMap::new();
    for (index, (set, specs)) in sets.iter().enumerate() {
        let mut set_results = Vec::new();
        for spec in specs {
            let answers = crate::eval::run(host, set, spec, |p| match p {
                Progress::Ingested { done, total } => {
                    bar.set_message(format!("{} · {}: ingesting", set.name, spec.name));
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
                Progress::Building => bar.set_message(format!("{} · {}: building", set.name, spec.name)),
                Progress::Queried { done, total } => {
                    bar.set_message(format!("{} · {}: querying", set.name, spec.name));
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            });
            let answers = match answers {
                Ok(a) => a,
                Err(e) => {
                    bar.finish_and_clear();
                    return Err(e);
                }
            };
            if matches!(set.scoring, crate::eval::Scoring::FashionIq { .. }) {
                fashioniq.entry(spec.name.clone()).or_default().push((index, answers));
            } else {
                set_results.push(score(set, &spec.name, &answers)?);
            }
        }
        results.push(set_results);
    }
    bar.finish_and_clear();
    if !fashioniq.is_empty() {
        let mut combined = Vec::new();
        for (name, runs) in &fashioniq {
            let categories: Vec<(&EvalSet, &crate::eval::Answers)> = runs.iter().map(|(i, a)| (&sets[*i].0, a)).collect();
            combined.push(score_fashioniq(&categories, name)?);
        }
        results.retain(|r| !r.is_empty());
        results.push(combined);
    }
    if args.json {
        println!("{}", report::to_json(&results.concat())?);
        return Ok(());
    }
    let mut compared = false;
    for set_results in &results {
        match &args.compare {
            Some(list) => {
                let Ok(picked) = report::select_for_comparison(set_results, list) else { continue };
                println!("{}", set_results.first().map(|r| r.dataset.as_str()).unwrap_or_default());
                println!("{}", report::render_comparison(&picked));
                compared = true;
            }
            None => set_results.iter().for_each(|r| println!("{}", report::render_table(r))),
        }
    }
    if let (Some(list), false) = (&args.compare, compared) {
        let names: Vec<&str> = results.iter().flatten().map(|r| r.strategy.as_str()).collect();
        bail!("no evaluated set has every strategy in --compare {list}; the strategies run were: {}", names.join(", "));
    }
    Ok(())
}

/// Ingest `source` into `collection`, under `route` when given (saved only if the ingest
/// succeeds). Files or lines that cannot be read stop it before anything is stored, unless
/// `allow_skips`.
fn ingest(host: &Quarry, collection: &str, source: &Path, route: Option<Route>, allow_skips: bool) -> Result<()> {
    let read = read_source(source, allow_skips)?;
    let bar = ingest_bar(read.items.len(), collection);
    let report = match route {
        Some(route) => host.ingest_with_route(collection, route, read.items, |done| bar.set_position(done as u64)),
        None => host.ingest(collection, read.items, |done| bar.set_position(done as u64)),
    };
    bar.finish_and_clear();
    let report = report?;
    print_ingested(collection, report.ingested, report.unchanged, read.skipped.len());
    Ok(())
}

/// Read a folder or JSONL file for ingest, listing what cannot be read; unless `allow_skips`,
/// any such file or line stops the ingest before anything is stored or sent.
pub(crate) fn read_source(source: &Path, allow_skips: bool) -> Result<crate::sources::SourceItems> {
    let read = crate::sources::read(source)?;
    for skipped in &read.skipped {
        eprintln!("{} {}: {}", if allow_skips { "skipped" } else { "cannot read" }, skipped.source, skipped.reason);
    }
    if !read.skipped.is_empty() && !allow_skips {
        bail!(
            "{} of {} file(s) or line(s) cannot be read (listed above); nothing was ingested. Fix them, or pass --allow-skips to ingest the rest",
            read.skipped.len(),
            read.skipped.len() + read.items.len()
        );
    }
    Ok(read)
}

pub(crate) fn ingest_bar(total: usize, collection: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} items ({eta})").expect("valid template").progress_chars("=> "),
    );
    bar.set_message(format!("ingesting into {collection}"));
    bar
}

pub(crate) fn print_ingested(collection: &str, ingested: usize, unchanged: usize, skipped: usize) {
    let unchanged = if unchanged == 0 { String::new() } else { format!("; {unchanged} unchanged") };
    let skipped = if skipped == 0 { String::new() } else { format!("; skipped {skipped} (listed above)") };
    println!("ingested {ingested} item(s) into {collection}{unchanged}{skipped}");
}

/// The strategy's query parameters from `--params`, with `--filter` as `params.filter`.
pub(crate) fn query_params(params: Option<String>, filter: Option<String>) -> Result<serde_json::Value> {
    let mut params: serde_json::Value = match params {
        Some(text) => serde_json::from_str(&text).context("--params is not valid JSON")?,
        None => serde_json::json!({}),
    };
    if !params.is_object() {
        bail!("--params must be a JSON object");
    }
    if let Some(filter) = filter {
        params["filter"] = serde_json::from_str(&filter).context("--filter is not valid JSON")?;
    }
    Ok(params)
}

/// How a search table heads its query: the text, the image, or both.
pub(crate) fn shown_query(query: &Option<String>, image: &Option<PathBuf>) -> String {
    match (query, image) {
        (Some(text), Some(path)) => format!("{} + \"{text}\"", path.display()),
        (Some(text), None) => text.clone(),
        (None, path) => path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    }
}

/// Widest id column a table shows; longer ids are cut with an ellipsis.
const ID_COLUMN: usize = 40;

pub(crate) fn print_table(query: &str, response: &SearchResponse) {
    println!("query: {}   (strategy {})", printable(query, 200), response.strategy);
    let ids: Vec<String> = response.hits.iter().map(|h| printable(&h.id, ID_COLUMN)).collect();
    let width = ids.iter().map(|id| id.chars().count()).max().unwrap_or(0).clamp(12, ID_COLUMN + 1);
    println!("{:>4}  {:>7}  {:<width$}  text", "rank", "score", "id");
    for (rank, (hit, id)) in response.hits.iter().zip(&ids).enumerate() {
        let text = printable(hit.text.as_deref().unwrap_or(""), 70);
        println!("{:>4}  {:>7.4}  {:<width$}  {text}", rank + 1, hit.score, id);
    }
    if response.hits.is_empty() {
        println!("      (no hits)");
    }
}

/// Sentences for the demo, each with a paraphrase that should find it.
pub const DEMO_SENTENCES: &[(&str, &str)] = &[
    ("volcano", "The volcano erupted overnight, covering nearby villages in ash."),
    ("bread", "She bakes sourdough bread every Sunday morning."),
    ("chess", "The chess champion defended her title in a tense final game."),
    ("rust", "Rust's borrow checker prevents data races at compile time."),
    ("whales", "Humpback whales migrate thousands of kilometres each year."),
    ("train", "The night train to Vienna was delayed by a snowstorm."),
    ("garden", "Tomatoes grow best in full sun with regular watering."),
    ("market", "Stock markets fell sharply after the interest rate announcement."),
    ("guitar", "He taught himself to play the guitar by watching videos."),
    ("moon", "Astronauts collected rock samples from the lunar surface."),
    ("coffee", "A strong espresso is how many people start their workday."),
    ("football", "The goalkeeper saved a penalty in the last minute of the match."),
];

pub const DEMO_QUERIES: &[(&str, &str)] = &[
    ("ash from an eruption buried the towns", "volcano"),
    ("weekly homemade loaf baking", "bread"),
    ("memory safety enforced by the compiler", "rust"),
    ("moon rocks gathered by space travellers", "moon"),
    ("a late railway journey because of heavy snow", "train"),
];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn demo(dir: &Path, plugin: Option<PathBuf>, model: Option<PathBuf>, verbose: bool) -> Result<()> {
    let plugin = plugin.unwrap_or_else(|| repo_path("target/wasm32-wasip2/release/quarry_plugin_dense.wasm"));
    let model = model.unwrap_or_else(|| repo_path("examples/models/minilm-l6.json"));
    if !plugin.is_file() {
        bail!(
            "the dense plugin is not built ({} is missing); run `cargo build --release --target wasm32-wasip2 -p quarry-plugin-dense`, or `bash scripts/demo.sh`",
            plugin.display()
        );
    }
    let demo_dir = dir.join("demo");
    if demo_dir.exists() {
        std::fs::remove_dir_all(&demo_dir).with_context(|| format!("cannot reset {}", demo_dir.display()))?;
    }
    println!("Quarry demo: a dense retrieval strategy running as a sandboxed WebAssembly component,");
    println!("calling the host's real MiniLM sentence encoder (ONNX Runtime) over a persisted collection.\n");
    let host = open(&demo_dir, verbose)?;
    let m = host.add_model_file(&model)?;
    println!("model    {} ({})", m.name, m.files.model.display());
    let p = host.add_plugin_file(&plugin)?;
    println!("strategy {} (built against {})", p.reference, p.contract);
    host.set_route(
        "demo",
        Route {
            strategy: p.reference.clone(),
            config: serde_json::json!({"text-model": m.name}),
            grants: Grants { models: [m.name.clone()].into(), ..Default::default() },
        },
    )?;
    let folder = demo_dir.join("sentences");
    std::fs::create_dir_all(&folder)?;
    for (id, text) in DEMO_SENTENCES {
        std::fs::write(folder.join(format!("{id}.txt")), text)?;
    }
    ingest(&host, "demo", &folder, None, false)?;
    println!();
    let mut correct = 0;
    for (query, expected) in DEMO_QUERIES {
        let response = host.search("demo", &SearchRequest::text(query, 3))?;
        print_table(query, &response);
        let top = response.hits.first().map(|h| h.id.as_str());
        correct += usize::from(top == Some(*expected));
        println!("      expected `{expected}` first: {}\n", if top == Some(*expected) { "yes" } else { "NO" });
    }
    println!("{correct}/{} paraphrase queries ranked their sentence first.", DEMO_QUERIES.len());
    println!("Try it yourself: quarry --data-dir {} search demo \"your query\"", demo_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CollectionStore, FieldKind, FieldSchema, FieldValue, Metric, Precision, RedbStore, WriteBatch};

    fn quarry(dir: &Path, args: &[&str]) -> Result<()> {
        let mut argv = vec!["quarry", "--data-dir", dir.to_str().unwrap()];
        argv.extend_from_slice(args);
        run(Cli::try_parse_from(argv)?)
    }

    /// Every `quarry ...` command the host suggests in an error or a hint, with its placeholders
    /// filled in, parses as a command of this CLI.
    #[test]
    fn suggested_commands_are_valid() {
        let sources = [
            include_str!("cli.rs"),
            include_str!("remote.rs"),
            include_str!("scaffold.rs"),
            include_str!("../../src/api.rs"),
            include_str!("../../src/store/mod.rs"),
            include_str!("../../src/store/redb.rs"),
            include_str!("../../src/sources.rs"),
            include_str!("../../src/models/mod.rs"),
            include_str!("../../src/models/manifest.rs"),
            include_str!("../../src/index/flat.rs"),
            include_str!("../../src/index/mod.rs"),
            include_str!("../../src/plugins/mod.rs"),
            include_str!("../../src/plugins/registry.rs"),
            include_str!("../../src/plugins/contract/mod.rs"),
            include_str!("../../src/eval/mod.rs"),
            include_str!("../../src/eval/shapes.rs"),
            include_str!("../../../plugins/avg/src/strategy.rs"),
        ];
        let mut checked = 0;
        for source in sources {
            for line in source.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, part) in line.split('`').enumerate() {
                    // Odd parts are inside backticks.
                    if i % 2 == 0 || !part.starts_with("quarry ") {
                        continue;
                    }
                    let filled: Vec<String> = part
                        .split_whitespace()
                        .skip(1)
                        .map(|word| if word.starts_with('<') || word.starts_with('{') { "x".to_string() } else { word.to_string() })
                        .collect();
                    let mut argv = vec!["quarry".to_string()];
                    argv.extend(filled);
                    if let Err(e) = Cli::try_parse_from(&argv) {
                        panic!("`{part}` is suggested but does not parse: {e}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "found only {checked} suggestions; did the search break?");
    }

    #[test]
    fn index_switches_precision_and_search_independently() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Vectors written straight to the store, as a strategy's ingest leaves them.
            let store = RedbStore::open(&dir.path().join("collections.redb")).unwrap();
            store.declare_fields("default/docs", &[("emb".to_string(), FieldSchema::new(FieldKind::Vector, Metric::Cosine))]).unwrap();
            let mut batch = WriteBatch::default();
            for i in 0..50 {
                let v = vec![i as f32, 1.0, (i % 7) as f32];
                batch.fields.push(("default/docs".into(), format!("d{i}"), "emb".into(), FieldValue::Vector(v)));
            }
            store.commit(&batch, &|_| None).unwrap();
        }
        let schema = |dir: &Path| open(dir, false).unwrap().field_schema("docs", "emb").unwrap();
        quarry(dir.path(), &["index", "docs", "emb", "--f16"]).unwrap();
        assert_eq!((schema(dir.path()).precision, schema(dir.path()).ann), (Precision::F16, None));
        quarry(dir.path(), &["index", "docs", "emb", "--hnsw", "--m", "8"]).unwrap();
        let s = schema(dir.path());
        assert_eq!((s.precision, s.ann.map(|a| a.m)), (Precision::F16, Some(8)), "--hnsw leaves the precision alone");
        quarry(dir.path(), &["index", "docs", "emb", "--f32"]).unwrap();
        assert_eq!(schema(dir.path()).ann.map(|a| a.m), Some(8), "--f32 alone leaves the search alone");
        quarry(dir.path(), &["index", "docs", "emb"]).unwrap();
        let s = schema(dir.path());
        assert_eq!((s.precision, s.ann), (Precision::F32, None), "a bare `index` means exact");
        let host = open(dir.path(), false).unwrap();
        assert_eq!(host.nearest("docs", "emb", &[49.0, 1.0, 0.0], 1, None).unwrap()[0].id, "d49");
        drop(host);

        assert!(quarry(dir.path(), &["index", "docs", "emb", "--f16", "--f32"]).is_err());
        let err = format!("{:#}", quarry(dir.path(), &["index", "docs", "nope", "--f16"]).unwrap_err());
        assert!(err.contains("has no field `nope`"), "{err}");

        // int8 as f16: its own flag, the search left alone, exact answers kept.
        quarry(dir.path(), &["index", "docs", "emb", "--int8"]).unwrap();
        assert_eq!((schema(dir.path()).precision, schema(dir.path()).ann), (Precision::Int8, None));
        let host = open(dir.path(), false).unwrap();
        assert_eq!(host.nearest("docs", "emb", &[49.0, 1.0, 0.0], 1, None).unwrap()[0].id, "d49");
        drop(host);
        for clash in [["--int8", "--f16"], ["--int8", "--f32"]] {
            assert!(quarry(dir.path(), &["index", "docs", "emb", clash[0], clash[1]]).is_err(), "{clash:?}");
        }
        let err = format!("{:#}", quarry(dir.path(), &["index", "docs", "nope", "--int8"]).unwrap_err());
        assert!(err.contains("has no field `nope`"), "{err}");
    }
}
