//! `quarry eval`: runs strategies over an evaluation set through the host, as a user's queries
//! would run, and scores the ranked lists with the metrics the papers use ([`quarry_eval`]).
//!
//! Each strategy under test gets its own collection, `eval-<set>-<strategy>`, in the host's data
//! dir: the gallery is ingested there (items already indexed by the same strategy version are
//! skipped and items of an earlier gallery deleted, so a rerun only queries), built when the
//! strategy needs it, and queried once per query with the latency measured around the host call.

mod sets;
pub mod shapes;

pub use sets::{circo, cirr, fashioniq, jsonl, karpathy};

use crate::api::{Quarry, SearchRequest};
use crate::plugins::host_api::Grants;
use crate::plugins::registry::Route;
use crate::sources::NewItem;
use anyhow::{Context as _, Result, bail};
use quarry_eval::metrics::{self, CirrTruth, FashionIqCategoryRuns, GroundTruth, Metric, Ranked};
use quarry_eval::report::StrategyResult;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Gallery items per ingest call (their images are read just before).
const INGEST_CHUNK: usize = 256;
/// Results asked per query where the metrics look at most 50 deep: one more, for a reference
/// image that is removed before scoring.
const DEPTH: u32 = 51;

/// One gallery item: what the strategy indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GalleryEntry {
    pub id: String,
    pub text: Option<String>,
    pub image: Option<PathBuf>,
}

/// One query and what answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalQuery {
    pub id: String,
    pub text: Option<String>,
    /// Two modification captions (FashionIQ), sent as `params.captions`; `text` joins them.
    pub captions: Vec<String>,
    pub image: Option<PathBuf>,
    /// The gallery id of the query's reference image, sent as `params.reference`.
    pub reference: Option<String>,
    /// Every correct answer.
    pub relevant: Vec<String>,
}

/// How a set's ranked lists are scored.
#[derive(Debug, Clone, PartialEq)]
pub enum Scoring {
    /// Recall@1, 5, 10 and 50 over `relevant`; with `drop_reference`, each query's reference
    /// image is removed from its list first (as composed-retrieval protocols do).
    Recall { drop_reference: bool },
    /// CIRCO: mAP@5, 10, 25 and 50 over every ground truth, Recall@K over the target alone.
    Circo { targets: GroundTruth },
    /// CIRR: Recall@K (1, 5, 10, 50) and Recall_subset@K (1, 2, 3), the reference removed.
    Cirr { truth: BTreeMap<String, CirrTruth> },
    /// One FashionIQ category: R@10 and R@50; [`score_fashioniq`] combines categories.
    FashionIq { category: String },
}

/// A gallery, its queries and how they are scored.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// For people: `shapes fine`, `CIRR val`, `Flickr30K test text→image`.
    pub name: String,
    /// For collection names: lowercase letters, digits and `-`.
    pub key: String,
    pub gallery: Vec<GalleryEntry>,
    pub queries: Vec<EvalQuery>,
    pub scoring: Scoring,
}

/// Which parts of a query a strategy is sent (`text` alone gives a text-only baseline of a
/// composed query).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryParts {
    #[default]
    Both,
    Text,
    Image,
}

/// A strategy under test: a route (strategy, models, config) plus how queries reach it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StrategySpec {
    /// How tables and `--compare` name it; part of its collection's name.
    pub name: String,
    /// `name@version` of an added plugin.
    pub strategy: String,
    /// Models the route grants.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Extra per-query parameters.
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
    #[serde(default)]
    pub query: QueryParts,
    /// Run `build` after ingest (strategies with collection-level artifacts, such as `avg`).
    #[serde(default)]
    pub build: bool,
    /// Query fields to send as parameters, for strategies that read them (`lincir`):
    /// `reference` (the reference image's gallery id) and `captions` (FashionIQ's two captions).
    #[serde(default)]
    pub query_params: Vec<QueryParam>,
}

/// A query field a strategy can be sent as a parameter of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryParam {
    Reference,
    Captions,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

impl StrategySpec {
    /// Read a JSON array of specs, checking names are usable and distinct.
    pub fn parse_list(json: &str) -> Result<Vec<StrategySpec>> {
        let specs: Vec<StrategySpec> = serde_json::from_str(json).context(
            "a strategies file is a JSON array of {\"name\", \"strategy\": \"name@version\", \"models\": [...], \"config\": {...}, \
             \"params\": {...}, \"query\": \"both\"|\"text\"|\"image\", \"build\": false, \"query-params\": [\"reference\", \"captions\"]}",
        )?;
        if specs.is_empty() {
            bail!("the strategies file names no strategy");
        }
        let mut seen = std::collections::HashSet::new();
        for spec in &specs {
            check_key("strategy name", &spec.name)?;
            if !seen.insert(spec.name.as_str()) {
                bail!("strategy name `{}` is used twice; names must be distinct", spec.name);
            }
            if !spec.params.is_object() || !spec.config.is_object() {
                bail!("strategy `{}`: `config` and `params` must be JSON objects", spec.name);
            }
        }
        Ok(specs)
    }
}

/// Names that go into collection names: 1-40 lowercase ASCII letters, digits and `-`.
fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 40 || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        bail!("{what} {:?} must be 1-40 lowercase letters, digits and `-`", crate::printable::printable(key, 60));
    }
    Ok(())
}

/// What [`run`] tells its caller as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Gallery items ingested (or found unchanged) so far, of `total`.
    Ingested { done: usize, total: usize },
    Building,
    /// Queries answered so far, of `total`.
    Queried { done: usize, total: usize },
}

/// One strategy's answers to a set.
#[derive(Debug, Clone)]
pub struct Answers {
    pub ranked: Vec<Ranked>,
    pub latencies: Vec<Duration>,
}

/// The collection a spec's run of a set lives in.
pub fn collection_name(set: &EvalSet, spec: &StrategySpec) -> String {
    format!("eval-{}-{}", set.key, spec.name)
}

/// Ingest `set`'s gallery under `spec` (building when it asks), then answer every query.
pub fn run(host: &Quarry, set: &EvalSet, spec: &StrategySpec, mut progress: impl FnMut(Progress)) -> Result<Answers> {
    check_key("set key", &set.key)?;
    check_key("strategy name", &spec.name)?;
    let collection = collection_name(set, spec);
    let route = Route {
        strategy: spec.strategy.clone(),
        config: spec.config.clone(),
        grants: Grants { models: spec.models.iter().cloned().collect(), ..Default::default() },
    };
    host.set_route(&collection, route).with_context(|| format!("cannot route {collection} for strategy `{}`", spec.name))?;

    // A rerun reuses the collection; what an earlier gallery left there would be a distractor.
    let wanted: std::collections::HashSet<&str> = set.gallery.iter().map(|g| g.id.as_str()).collect();
    let stale: Vec<String> = host.items(&collection)?.into_iter().map(|i| i.id).filter(|id| !wanted.contains(id.as_str())).collect();
    if !stale.is_empty() {
        host.delete(&collection, &stale)?;
    }
    let total = set.gallery.len();
    let mut done = 0;
    for chunk in set.gallery.chunks(INGEST_CHUNK) {
        let items = chunk.iter().map(gallery_item).collect::<Result<Vec<_>>>()?;
        let report = host.ingest(&collection, items, |_| {}).with_context(|| format!("{}: ingesting the gallery under `{}`", set.name, spec.name))?;
        done += report.ingested + report.unchanged;
        progress(Progress::Ingested { done, total });
    }
    if spec.build {
        progress(Progress::Building);
        host.build(&collection).with_context(|| format!("{}: building under `{}`", set.name, spec.name))?;
    }

    let depth = match &set.scoring {
        // Recall_subset ranks within a query's image set, so CIRR wants the whole gallery.
        Scoring::Cirr { .. } => (set.gallery.len().min(host.limits().max_hits)) as u32,
        _ => DEPTH,
    };
    let mut answers = Answers { ranked: Vec::with_capacity(set.queries.len()), latencies: Vec::with_capacity(set.queries.len()) };
    for (n, query) in set.queries.iter().enumerate() {
        let request = request(query, spec, depth)?;
        let started = Instant::now();
        let response = host.search(&collection, &request).with_context(|| format!("{}: query `{}` under `{}`", set.name, query.id, spec.name))?;
        answers.latencies.push(started.elapsed());
        answers.ranked.push(Ranked::new(query.id.as_str(), response.hits.into_iter().map(|h| h.id)));
        progress(Progress::Queried { done: n + 1, total: set.queries.len() });
    }
    Ok(answers)
}

/// Image files past this are refused before reading (a wrong path can name anything).
const MAX_IMAGE_FILE: u64 = 128 << 20;

fn read_image(path: &std::path::Path) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path).with_context(|| format!("cannot read image {}", path.display()))?.len();
    if size > MAX_IMAGE_FILE {
        bail!("{} is {size} bytes; eval reads images up to {MAX_IMAGE_FILE} bytes", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    crate::models::preprocess::decode(&bytes).with_context(|| format!("{} is not a readable image", path.display()))?;
    Ok(bytes)
}

fn gallery_item(entry: &GalleryEntry) -> Result<NewItem> {
    Ok(NewItem {
        id: entry.id.clone(),
        text: entry.text.clone(),
        image: entry.image.as_deref().map(read_image).transpose()?,
        image_source: entry.image.as_ref().map(|p| p.display().to_string()),
        metadata: serde_json::json!({}),
    })
}

fn request(query: &EvalQuery, spec: &StrategySpec, depth: u32) -> Result<SearchRequest> {
    let mut params = spec.params.clone();
    let with_text = spec.query != QueryParts::Image;
    let with_image = spec.query != QueryParts::Text;
    if let Some(reference) = query.reference.as_ref().filter(|_| with_image && spec.query_params.contains(&QueryParam::Reference)) {
        params["reference"] = reference.as_str().into();
    }
    if with_text && !query.captions.is_empty() && spec.query_params.contains(&QueryParam::Captions) {
        params["captions"] = query.captions.clone().into();
    }
    let text = query.text.clone().filter(|_| with_text);
    let image = query.image.as_deref().filter(|_| with_image).map(read_image).transpose()?;
    if text.is_none() && image.is_none() {
        bail!("query `{}` has nothing to send to `{}` (query: {:?})", query.id, spec.name, spec.query);
    }
    Ok(SearchRequest { text, image, k: depth, params, ..Default::default() })
}

/// Score one strategy's answers to a (non-FashionIQ) set.
pub fn score(set: &EvalSet, strategy: &str, answers: &Answers) -> Result<StrategyResult> {
    let truth = || {
        let mut truth = GroundTruth::new();
        for q in &set.queries {
            truth.insert(q.id.as_str(), q.relevant.iter().map(String::as_str));
        }
        truth
    };
    let metrics: Vec<Metric> = match &set.scoring {
        Scoring::Recall { drop_reference } => {
            let references: BTreeMap<&str, &str> = set.queries.iter().filter_map(|q| Some((q.id.as_str(), q.reference.as_deref()?))).collect();
            let ranked: Vec<Ranked> = answers
                .ranked
                .iter()
                .map(|r| match references.get(r.query_id.as_str()).filter(|_| *drop_reference) {
                    Some(reference) => Ranked::new(r.query_id.as_str(), r.ranked.iter().filter(|id| id != reference)),
                    None => r.clone(),
                })
                .collect();
            metrics::recall_metrics(&ranked, &truth(), &metrics::RECALL_KS)?
        }
        Scoring::Circo { targets } => {
            let mut out = metrics::map_metrics(&answers.ranked, &truth(), &metrics::CIRCO_MAP_KS)?;
            out.extend(metrics::recall_metrics(&answers.ranked, targets, &metrics::RECALL_KS)?);
            out
        }
        Scoring::Cirr { truth } => {
            let mut out = metrics::cirr_recall_metrics(&answers.ranked, truth, &metrics::RECALL_KS)?;
            out.extend(metrics::cirr_subset_metrics(&answers.ranked, truth, &metrics::CIRR_SUBSET_KS)?);
            out
        }
        Scoring::FashionIq { .. } => return score_fashioniq(&[(set, answers)], strategy),
    };
    Ok(StrategyResult {
        strategy: strategy.to_string(),
        dataset: set.name.clone(),
        queries: answers.ranked.len(),
        metrics,
        latency: Some(metrics::latency_summary(&answers.latencies)?),
    })
}

/// Score FashionIQ categories together: R@10 and R@50 per category, and their means.
pub fn score_fashioniq(categories: &[(&EvalSet, &Answers)], strategy: &str) -> Result<StrategyResult> {
    let mut truths = Vec::with_capacity(categories.len());
    for (set, _) in categories {
        let Scoring::FashionIq { category } = &set.scoring else { bail!("{} is not a FashionIQ category", set.name) };
        let mut truth = GroundTruth::new();
        for q in &set.queries {
            truth.insert(q.id.as_str(), q.relevant.iter().map(String::as_str));
        }
        truths.push((category.as_str(), truth));
    }
    let runs: Vec<FashionIqCategoryRuns<'_>> = categories
        .iter()
        .zip(&truths)
        .map(|((_, answers), (category, truth))| FashionIqCategoryRuns { category, runs: &answers.ranked, truth })
        .collect();
    let scores = metrics::fashioniq_scores(&runs)?;
    let latencies: Vec<Duration> = categories.iter().flat_map(|(_, a)| a.latencies.iter().copied()).collect();
    let split = categories.first().map(|(s, _)| s.name.rsplit(' ').next().unwrap_or_default().to_string()).unwrap_or_default();
    Ok(StrategyResult {
        strategy: strategy.to_string(),
        dataset: format!("FashionIQ {split}"),
        queries: categories.iter().map(|(_, a)| a.ranked.len()).sum(),
        metrics: scores.metrics(),
        latency: Some(metrics::latency_summary(&latencies)?),
    })
}
