//! AVG's per-query latency as the gallery grows (1k, 10k, 100k, 1M), next to exact dense search
//! over the same embeddings, through the real `avg` and `dense` plugins. Prints figures and
//! ratios; fails on nothing.
//!
//! The galleries are synthetic: random unit vectors in the shapes world's 18-dimensional space,
//! their identifiers from a codebook learned on a sample (K = 256, L = 4), written by the
//! `avg-synthetic` test plugin (embedding a million images is not what this measures). Queries
//! are shapes captions, embedded by `shapes-text` for both strategies.
//!
//! `cargo bench -p quarry-tests --bench avg_scale` (QUARRY_AVG_SIZES=1000,10000 for fewer sizes)

use quarry_host::{NewItem, Quarry, SearchRequest};
use quarry_plugin_avg::codebook::{self, LearnConfig};
use quarry_tests::{add_shapes_model, host, plugin, route, shapes_scenes, shapes_world};
use std::time::{Duration, Instant};

const DIM: usize = 18;
const K: usize = 256;
const LEVELS: usize = 4;
const QUERIES: usize = 1000;
const CHUNK: usize = 20_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A standard normal sample (Box-Muller).
    fn normal(&mut self) -> f32 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * (u + 1e-300).ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
    fn unit(&mut self) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM).map(|_| self.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One query's latency; `strategy` overrides the route (same config and grants).
fn time(host: &Quarry, collection: &str, text: &str, strategy: Option<&str>) -> Duration {
    let request = SearchRequest { strategy: strategy.map(str::to_string), ..SearchRequest::text(text, 10) };
    let started = Instant::now();
    let hits = host.search(collection, &request).unwrap_or_else(|e| panic!("{collection}: {e:#}")).hits;
    let elapsed = started.elapsed();
    assert_eq!(hits.len(), 10, "{collection}");
    elapsed
}

fn main() {
    let sizes: Vec<usize> = std::env::var("QUARRY_AVG_SIZES")
        .map(|s| s.split(',').map(|n| n.trim().parse().expect("QUARRY_AVG_SIZES is a comma-separated list of sizes")).collect())
        .unwrap_or_else(|_| vec![1_000, 10_000, 100_000, 1_000_000]);
    let world = shapes_world();
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    for name in ["quarry-plugin-avg", "quarry-plugin-dense", "quarry-test-avg-synthetic"] {
        host.add_plugin(&plugin(name)).unwrap();
    }
    for model in ["shapes-text", "shapes-image"] {
        add_shapes_model(&host, model);
    }
    let captions: Vec<String> = shapes_scenes(world).into_iter().map(|s| s.caption).collect();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let sample: Vec<f32> = (0..4096).flat_map(|_| rng.unit()).collect();
    let book = codebook::learn(&sample, DIM, &LearnConfig { k: K, levels: LEVELS, ..LearnConfig::default() }).unwrap();
    let hex: String = book.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let avg_config = serde_json::json!({"image-model": "shapes-image", "text-model": "shapes-text", "k": K, "levels": LEVELS});

    println!("AVG (zero-shot, K = {}, L = {LEVELS}, beam 10, 10 sequences) against exact dense search, top 10, median of {QUERIES} queries", book.k());
    println!("(every gallery is built first, then each query goes round the galleries, AVG first and then dense, so all see the same host)");
    let mut galleries = Vec::new();
    for &size in &sizes {
        let collection = format!("synthetic-{size}");
        host.set_route(&collection, route("avg-synthetic@0.1.0", &[], serde_json::json!({"codebook": hex}))).unwrap();
        let mut identifiers = std::collections::HashSet::new();
        for start in (0..size).step_by(CHUNK) {
            let items: Vec<NewItem> = (start..(start + CHUNK).min(size))
                .map(|i| {
                    let codes = book.encode(&rng.unit()).unwrap();
                    identifiers.insert(codes.clone());
                    NewItem { metadata: serde_json::json!({"codes": codes}), text: None, ..NewItem::text(&format!("item-{i}"), "") }
                })
                .collect();
            host.ingest(&collection, items, |_| {}).unwrap();
        }
        host.build(&collection).unwrap();
        // Routed to avg; dense answers through a per-request override and reads `text-model`.
        host.set_route(&collection, route("avg@0.1.0", &["shapes-image", "shapes-text"], avg_config.clone())).unwrap();
        galleries.push((size, collection, identifiers.len()));
    }
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>)> = vec![(Vec::new(), Vec::new()); galleries.len()];
    for (n, caption) in captions.iter().cycle().take(QUERIES + 20).enumerate() {
        // AVG round the galleries, then dense: a dense scan of a million vectors flushes the
        // CPU caches, and would otherwise land on whichever AVG query came next.
        // The first round of each caption warms the host (indexes, tries, compiled code).
        for ((_, collection, _), (avg, _)) in galleries.iter().zip(&mut samples) {
            let elapsed = time(&host, collection, caption, None);
            if n >= 20 {
                avg.push(elapsed);
            }
        }
        for ((_, collection, _), (_, dense)) in galleries.iter().zip(&mut samples) {
            let elapsed = time(&host, collection, caption, Some("dense@0.3.0"));
            if n >= 20 {
                dense.push(elapsed);
            }
        }
    }
    println!("{:>9}  {:>11}  {:>11}  {:>9}  {:>12}", "gallery", "avg µs", "dense µs", "avg/dense", "identifiers");
    let mut rows = Vec::new();
    for ((size, _, identifiers), (avg, dense)) in galleries.iter().zip(samples) {
        let (avg, dense) = (median(avg), median(dense));
        println!("{size:>9}  {:>11.0}  {:>11.0}  {:>9.2}  {identifiers:>12}", micros(avg), micros(dense), micros(avg) / micros(dense));
        rows.push((*size, avg, dense));
    }
    let at = |n: usize| rows.iter().find(|(size, ..)| *size == n);
    if let (Some((_, avg_10k, _)), Some((_, avg_1m, dense_1m))) = (at(10_000), at(1_000_000)) {
        println!("AVG at 1M / AVG at 10k: {:.2} (goal <= 1.2)", micros(*avg_1m) / micros(*avg_10k));
        println!("AVG at 1M / dense at 1M: {:.2} (goal < 1)", micros(*avg_1m) / micros(*dense_1m));
    }
}
