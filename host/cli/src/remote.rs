//! The CLI against a running `quarry serve` (`--server URL --api-key KEY`): the same commands,
//! sent as HTTP requests. The key decides the tenant.

use crate::cli::{Command, ModelCommand, PipelineCommand, PluginCommand, RouteCommand};
use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use quarry_host::printable::printable;
use quarry_host::{SearchHit, SearchResponse, Target};
use serde_json::{Value, json};
use std::time::Duration;

/// Items per ingest request, and the most bytes one request carries.
const INGEST_BATCH: usize = 256;
const INGEST_BYTES: usize = 8 << 20;

pub struct Remote {
    base: String,
    key: String,
    agent: ureq::Agent,
}

impl Remote {
    pub fn new(base: &str, key: Option<String>) -> Result<Self> {
        let key = key.context("--server needs an API key: pass --api-key or set QUARRY_API_KEY")?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server `{base}` is not an http:// or https:// URL");
        }
        // A fresh connection per request: a CLI makes few, and a pooled one the server has
        // just closed would fail the next request.
        let agent =
            ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).timeout_global(Some(Duration::from_secs(600))).build().into();
        Ok(Remote { base: base.trim_end_matches('/').to_string(), key, agent })
    }

    /// One request; the parsed JSON answer, or the server's error message.
    fn call(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let builder = ureq::http::Request::builder().method(method).uri(&url).header("authorization", format!("Bearer {}", self.key));
        let response = match body {
            Some((content_type, bytes)) => self.agent.run(builder.header("content-type", content_type).body(bytes)?),
            None => self.agent.run(builder.body(())?),
        };
        let mut response = response.with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let text = response.body_mut().with_config().limit(256 << 20).read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let message = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            bail!("{message} (HTTP {} from {method} {path})", status.as_u16());
        }
        Ok(value)
    }

    fn json(&self, method: &str, path: &str, body: &Value) -> Result<Value> {
        self.call(method, path, Some(("application/json", body.to_string().into_bytes())))
    }
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A strategy route as the API takes it (grants beside the strategy, not nested).
fn route_body(route: &quarry_host::Route) -> Value {
    json!({"strategy": route.strategy, "config": route.config, "models": route.grants.models, "collections": route.grants.collections, "strategies": route.grants.strategies})
}

/// How a route reads: `name@version`, `pipeline:<name>` or `experiment:<name>`.
fn described(route: &Value) -> String {
    match (route["strategy"].as_str(), route["pipeline"].as_str(), route["experiment"]["name"].as_str()) {
        (Some(strategy), _, _) => strategy.to_string(),
        (_, Some(pipeline), _) => format!("pipeline:{pipeline}"),
        (_, _, Some(experiment)) => format!("experiment:{experiment}"),
        _ => route.to_string(),
    }
}

fn no_tenant(tenant: &Option<String>) -> Result<()> {
    if tenant.is_some() {
        bail!("--tenant does not apply with --server: the API key names the tenant");
    }
    Ok(())
}

fn pretty(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn local_only(what: &str) -> Result<()> {
    bail!("the `{what}` command works on a local data directory only; run it without --server (on the server's machine)")
}

pub fn run(remote: &Remote, command: Command) -> Result<()> {
    match command {
        Command::Search { collection, query, image, strategy, k, params, filter, json } => {
            let params = crate::cli::query_params(params, filter)?;
            let image_b64 = match &image {
                Some(path) => {
                    Some(base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).with_context(|| format!("cannot read query image {}", path.display()))?))
                }
                None => None,
            };
            let body = json!({"text": query, "image": image_b64, "k": k, "params": params, "strategy": strategy});
            let answer = remote.json("POST", &format!("/v1/collections/{}/search", segment(&collection)), &body)?;
            if json {
                return pretty(&answer);
            }
            let response = SearchResponse {
                strategy: answer["strategy"].as_str().unwrap_or_default().to_string(),
                strategies: serde_json::from_value(answer["strategies"].clone()).unwrap_or_default(),
                experiment: answer["experiment"].as_str().map(str::to_string),
                arm: answer["arm"].as_str().map(str::to_string),
                impression: answer["impression"].as_str().map(str::to_string),
                hits: serde_json::from_value::<Vec<RemoteHit>>(answer["hits"].clone())
                    .context("the server's hits are not in the expected shape")?
                    .into_iter()
                    .map(|h| SearchHit { id: h.id, score: h.score, features: h.features, text: h.text, metadata: h.metadata, team: h.team })
                    .collect(),
                notes: serde_json::from_value(answer["notes"].clone()).unwrap_or_default(),
                stage_latency: Vec::new(),
            };
            for note in &response.notes {
                eprintln!("note: {note}");
            }
            let shown = crate::cli::shown_query(&query, &image);
            crate::cli::print_table(&shown, &response);
            Ok(())
        }
        Command::Ingest { collection, source, route, allow_skips } => {
            // Read everything first: an unreadable source changes nothing on the server.
            let read = crate::cli::read_source(&source, allow_skips)?;
            let Some(route) = route else { return ingest(remote, &collection, read) };
            let route = route.route()?;
            let at = segment(&collection);
            let before = remote.call("GET", &format!("/v1/collections/{at}"), None).ok().map(|c| c["route"].clone());
            let body = route_body(&route);
            remote.json("PUT", &format!("/v1/collections/{at}/route"), &body)?;
            // As in-process, the route stays only if the ingest succeeds: a changed route goes back.
            ingest(remote, &collection, read).or_else(|e| match before {
                Some(before) if !same_route(&before, &body) => {
                    remote.call("POST", &format!("/v1/collections/{at}/rollback"), None).context("the ingest failed, and rolling the route back failed too")?;
                    Err(e.context(format!("the ingest failed; {collection}'s route is back to {}", described(&before))))
                }
                _ => Err(e),
            })
        }
        Command::Build { collection } => {
            let started = remote.call("POST", &format!("/v1/collections/{}/build", segment(&collection)), None)?;
            let job = started["job"].as_str().context("the server started no job")?.to_string();
            let start = std::time::Instant::now();
            loop {
                let view = remote.call("GET", &format!("/v1/jobs/{}", segment(&job)), None)?;
                match view["state"].as_str() {
                    Some("running") => std::thread::sleep(Duration::from_millis(300)),
                    Some("succeeded") => {
                        println!("built {collection} in {:.1} s", start.elapsed().as_secs_f64());
                        return Ok(());
                    }
                    _ => bail!("the build failed: {}", view["error"].as_str().unwrap_or("(no reason given)")),
                }
            }
        }
        Command::Collections { tenant, json } => {
            if tenant.is_some() {
                bail!("--tenant does not apply with --server: the API key names the tenant");
            }
            let collections = remote.call("GET", "/v1/collections", None)?;
            if json {
                return pretty(&collections);
            }
            let list = collections.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no collections; create one with `quarry --server URL ingest <collection> <source> --strategy <name@version>`");
            } else {
                println!("{:<32} {:>10}  route", "collection", "items");
                for c in list {
                    println!("{:<32} {:>10}  {}", printable(c["name"].as_str().unwrap_or(""), 32), c["items"], printable(c["route"]["strategy"].as_str().unwrap_or(""), 64));
                }
            }
            Ok(())
        }
        Command::Delete { collection, ids } => {
            let mut deleted = 0;
            for id in &ids {
                match remote.call("DELETE", &format!("/v1/collections/{}/items/{}", segment(&collection), segment(id)), None) {
                    Ok(_) => deleted += 1,
                    Err(e) if e.to_string().contains("(HTTP 404") && e.to_string().contains("has no item") => {}
                    Err(e) => return Err(e),
                }
            }
            println!("deleted {deleted} of {} item(s) from {collection}", ids.len());
            Ok(())
        }
        Command::Route(RouteCommand::Set { collection, route, pipeline, experiment }) => {
            let target = RouteCommand::target(&route, &pipeline, &experiment)?;
            let body = match &target {
                Target::Strategy(r) => route_body(r),
                other => serde_json::to_value(other)?,
            };
            remote.json("PUT", &format!("/v1/collections/{}/route", segment(&collection)), &body)?;
            println!("{collection} -> {}", target.describe());
            Ok(())
        }
        Command::Route(RouteCommand::Promote { collection, arm }) => {
            let route = remote.json("POST", &format!("/v1/collections/{}/promote", segment(&collection)), &json!({"arm": arm}))?;
            println!("{collection} -> {}", described(&route));
            Ok(())
        }
        Command::Route(RouteCommand::Rollback { collection }) => {
            let route = remote.call("POST", &format!("/v1/collections/{}/rollback", segment(&collection)), None)?;
            println!("{collection} -> {}", described(&route));
            Ok(())
        }
        Command::Route(RouteCommand::List) => {
            for c in remote.call("GET", "/v1/collections", None)?.as_array().cloned().unwrap_or_default() {
                println!("{:<24} {:<24} {}", printable(c["name"].as_str().unwrap_or(""), 24), printable(&described(&c["route"]), 64), c["route"]);
            }
            Ok(())
        }
        Command::Pipeline(cmd) => match cmd {
            PipelineCommand::Set { name, declaration, tenant } => {
                no_tenant(&tenant)?;
                remote.json("PUT", &format!("/v1/pipelines/{}", segment(&name)), &crate::cli::declaration(&declaration, "pipeline")?)?;
                println!("pipeline {name} declared");
                Ok(())
            }
            PipelineCommand::List { tenant } => {
                no_tenant(&tenant)?;
                pretty(&remote.call("GET", "/v1/pipelines", None)?)
            }
            PipelineCommand::Remove { name, tenant } => {
                no_tenant(&tenant)?;
                remote.call("DELETE", &format!("/v1/pipelines/{}", segment(&name)), None)?;
                println!("pipeline {name} removed");
                Ok(())
            }
        },
        Command::Experiment { collection } => pretty(&remote.call("GET", &format!("/v1/collections/{}/experiment", segment(&collection)), None)?),
        Command::Plugin(PluginCommand::New { .. }) => unreachable!("`plugin new` runs locally (see cli::run)"),
        Command::Plugin(PluginCommand::Add { file, owner }) => {
            if owner.tenant.is_some() || owner.shared {
                bail!("--tenant and --shared do not apply with --server: a tenant's key adds the tenant's plugin, the admin key a shared one");
            }
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read plugin {}", file.display()))?;
            let p = remote.call("POST", "/v1/plugins", Some(("application/wasm", bytes)))?;
            println!("added {} for {} (built against {}, sha256 {})", p["strategy"].as_str().unwrap_or(""), p["owner"].as_str().unwrap_or(""), p["contract"].as_str().unwrap_or(""), &p["sha256"].as_str().unwrap_or("")[..16.min(p["sha256"].as_str().unwrap_or("").len())]);
            Ok(())
        }
        Command::Plugin(PluginCommand::List { json }) => {
            let plugins = remote.call("GET", "/v1/plugins", None)?;
            if json {
                return pretty(&plugins);
            }
            for p in plugins.as_array().cloned().unwrap_or_default() {
                println!("{:<28} {:<20} {:<24} {}", printable(p["strategy"].as_str().unwrap_or(""), 28), printable(p["owner"].as_str().unwrap_or(""), 20), p["contract"].as_str().unwrap_or(""), printable(p["description"].as_str().unwrap_or(""), 70));
            }
            Ok(())
        }
        Command::Plugin(PluginCommand::Describe { strategy, tenant }) => {
            if tenant.is_some() {
                bail!("--tenant does not apply with --server: the API key names the tenant");
            }
            pretty(&remote.call("GET", &format!("/v1/plugins/{}", segment(&strategy)), None)?)
        }
        Command::Plugin(PluginCommand::Remove { strategy, owner }) => {
            if owner.tenant.is_some() || owner.shared {
                bail!("--tenant and --shared do not apply with --server: the API key names the owner");
            }
            remote.call("DELETE", &format!("/v1/plugins/{}", segment(&strategy)), None)?;
            println!("removed {}", printable(&strategy, 128));
            Ok(())
        }
        Command::Model(ModelCommand::Add { manifest }) => {
            // The manifest and its files are read by the server, from its own disk.
            let path = std::path::absolute(&manifest)?;
            let m = remote.json("POST", "/v1/models", &json!({"manifest": path}))?;
            println!("added model {} ({})", m["name"].as_str().unwrap_or(""), m["role"].as_str().unwrap_or(""));
            Ok(())
        }
        Command::Model(ModelCommand::List) => {
            for m in remote.call("GET", "/v1/models", None)?.as_array().cloned().unwrap_or_default() {
                println!("{:<24} {}", printable(m["name"].as_str().unwrap_or(""), 24), m["role"].as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::Index { .. } => local_only("index"),
        Command::Eval(_) => local_only("eval"),
        Command::Demo { .. } => local_only("demo"),
        Command::Serve(_) => local_only("serve"),
        Command::Schema { .. } => local_only("schema"),
    }
}

#[derive(serde::Deserialize)]
struct RemoteHit {
    id: String,
    score: f32,
    #[serde(default)]
    features: std::collections::BTreeMap<String, f32>,
    text: Option<String>,
    #[serde(default)]
    metadata: Value,
    team: Option<String>,
}

/// Read a folder or JSONL file here and send it as NDJSON batches, images base64.
/// Whether a route the server shows is the strategy route `body` sets (empty grants left out).
fn same_route(shown: &Value, body: &Value) -> bool {
    let set = |v: &Value| v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect::<std::collections::BTreeSet<_>>()).unwrap_or_default();
    shown["strategy"] == body["strategy"]
        && shown["config"] == body["config"]
        && ["models", "collections", "strategies"].iter().all(|k| set(&shown[*k]) == set(&body[*k]))
}

fn ingest(remote: &Remote, collection: &str, read: crate::sources::SourceItems) -> Result<()> {
    let path = format!("/v1/collections/{}/items", segment(collection));
    let bar = crate::cli::ingest_bar(read.items.len(), collection);
    let (mut ingested, mut unchanged, mut done) = (0, 0, 0);
    let mut body = String::new();
    let mut in_body = 0;
    let mut send = |body: &mut String, in_body: &mut usize| -> Result<()> {
        let answer = remote.call("POST", &path, Some(("application/x-ndjson", std::mem::take(body).into_bytes())))?;
        ingested += answer["ingested"].as_u64().unwrap_or(0) as usize;
        unchanged += answer["unchanged"].as_u64().unwrap_or(0) as usize;
        done += std::mem::take(in_body);
        bar.set_position(done as u64);
        Ok(())
    };
    for item in read.items {
        let line = json!({
            "id": item.id,
            "text": item.text,
            "image": item.image.as_ref().map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            "metadata": item.metadata,
        })
        .to_string();
        if in_body > 0 && (in_body >= INGEST_BATCH || body.len() + line.len() > INGEST_BYTES) {
            send(&mut body, &mut in_body)?;
        }
        body.push_str(&line);
        body.push('\n');
        in_body += 1;
    }
    if in_body > 0 {
        send(&mut body, &mut in_body)?;
    }
    bar.finish_and_clear();
    crate::cli::print_ingested(collection, ingested, unchanged, read.skipped.len());
    Ok(())
}
