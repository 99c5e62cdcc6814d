//! Start time of an HNSW field: building the graph from the exact index (what every start did
//! before graphs were saved) against loading the saved graph, which includes checking it against
//! the exact index (every id and every vector) and its SHA-256. Both start from the field's exact
//! index in memory, which a start loads from the store either way.
//!
//! Run with `cargo bench -p quarry-host --bench ann_start`; `QUARRY_ANN_START_N` sets the number
//! of vectors (default 1,000,000 x 128, about 10 minutes on 2 cores, mostly the build).

use quarry_host::index::ann::AnnIndex;
use quarry_host::index::flat::FlatIndex;
use quarry_host::store::{AnnParams, Metric};
use std::time::Instant;

const DIM: usize = 128;

fn main() {
    let n: usize = std::env::var("QUARRY_ANN_START_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let threads = rayon::current_num_threads();
    println!("{n} x {DIM} f32, cosine, M 16, efConstruction 200, built on {threads} threads");
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..100).map(|_| (0..DIM).map(|_| next()).collect()).collect();
    let mut flat = FlatIndex::new(Metric::Cosine);
    flat.reserve(n);
    for i in 0..n {
        let v: Vec<f32> = centres[i % 100].iter().map(|c| c + 0.5 * next()).collect();
        flat.upsert(&format!("{i:07}"), &v).expect("upsert");
    }
    let params = AnnParams::default();

    let started = Instant::now();
    let mut ann = AnnIndex::build(params, Metric::Cosine, &flat);
    let build = started.elapsed().as_secs_f64();
    println!("rebuild from the exact index: {build:.1} s");

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("field.hnsw");
    let started = Instant::now();
    ann.save(&flat, &path, "bench/field").expect("save");
    let save = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).expect("saved file").len();
    println!("save: {save:.1} s, {:.0} MB", bytes as f64 / 1e6);

    let started = Instant::now();
    let loaded = AnnIndex::load(params, Metric::Cosine, &flat, &path, "bench/field").expect("load");
    let load = started.elapsed().as_secs_f64();
    println!("load and check against the exact index: {load:.1} s ({:.0}x faster than a rebuild)", build / load);

    let queries: Vec<Vec<f32>> = (0..100).map(|i| centres[i % 100].iter().map(|c| c + 0.5 * next()).collect()).collect();
    let same = queries.iter().filter(|q| ann.search(&flat, q, 10) == loaded.search(&flat, q, 10)).count();
    println!("loaded graph gives the built graph's top 10 on {same} of {} queries", queries.len());
}
