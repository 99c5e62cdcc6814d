//! Approximate top-10: Quarry's HNSW (`AnnIndex`, a USearch graph with exact re-scoring)
//! against faiss `IndexHNSWFlat` on the same clustered data, M and efConstruction. Sweeps
//! ef_search on both, reports recall@10 against exact search and queries/s, and the ratio of
//! queries/s at equal recall (each curve interpolated linearly). Prints; fails on nothing.
//!
//! The machine is shared, so its speed drifts over seconds. Each ef therefore runs ROUNDS passes
//! of each engine, alternating Quarry's and faiss's (faiss waits in a subprocess for each pass),
//! and each engine's fastest pass counts: both see the same quiet and busy spells. With five
//! rounds the ratio still moved by about 0.05 between runs; with nine, less.
//!
//! Run with `cargo bench -p quarry-host --bench ann`. The faiss side runs `faiss_hnsw.py` and
//! needs `python3 -m pip install faiss-cpu numpy`; without it only Quarry's numbers are printed.

mod common;

use common::{INSTALL_FAISS, faiss_available, python, write_f32};
use quarry_host::index::ann::AnnIndex;
use quarry_host::index::flat::FlatIndex;
use quarry_host::store::{AnnParams, Metric};
use serde::Deserialize;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::path::Path;
use std::time::Instant;

const N: usize = 100_000;
const DIM: usize = 128;
const QUERIES: usize = 1_000;
const K: usize = 10;
/// A Gaussian mixture: centres ~ N(0, 1) per dimension, points = centre + N(0, SPREAD^2) noise,
/// then normalised. Same-cluster points have cosine about 0.5, others about 0.
const CLUSTERS: usize = 100;
const SPREAD: f32 = 1.0;
const M: usize = 16;
const EF_CONSTRUCTION: usize = 200;
const EF_SEARCH: [usize; 11] = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384];
const TARGET_RECALLS: [f64; 3] = [0.90, 0.95, 0.99];
/// Timed passes over all queries per ef and engine, alternated; the fastest gives queries/s.
const ROUNDS: usize = 9;
const FAISS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/faiss_hnsw.py");

#[derive(Deserialize)]
struct FaissBuilt {
    build_s: f64,
}

#[derive(Deserialize)]
struct FaissPass {
    ef: usize,
    seconds: f64,
    ids: Vec<Vec<i64>>,
}

/// faiss_hnsw.py with its graph built, waiting for passes to time.
struct Faiss {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Faiss {
    fn start(dir: &Path, threads: usize) -> Option<Faiss> {
        let mut child = python()
            .arg(FAISS_SCRIPT)
            .arg(dir)
            .args([N, DIM, QUERIES, K, M, EF_CONSTRUCTION, threads].map(|v| v.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let input = child.stdin.take().expect("piped stdin");
        let mut output = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        output.read_line(&mut line).expect("read faiss");
        match serde_json::from_str::<FaissBuilt>(&line) {
            Ok(built) => println!("faiss IndexHNSWFlat built in {:.1} s", built.build_s),
            Err(e) => {
                println!("faiss did not start ({e}); only Quarry's numbers follow");
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
        Some(Faiss { child, input, output })
    }

    fn pass(&mut self, ef: usize) -> FaissPass {
        writeln!(self.input, "{ef}").expect("ask faiss");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("read faiss");
        let pass: FaissPass = serde_json::from_str(&line).expect("faiss pass");
        assert_eq!(pass.ef, ef);
        pass
    }
}

impl Drop for Faiss {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One ef_search setting of one engine.
#[derive(Clone, Copy)]
struct Point {
    ef: usize,
    recall: f64,
    qps: f64,
}

fn main() {
    let threads = rayon::current_num_threads();
    println!(
        "data: {N} x {DIM} f32, unit length, {CLUSTERS} Gaussian clusters (spread {SPREAD}); {QUERIES} queries from the same mixture; k = {K}"
    );
    println!("graphs: M {M}, efConstruction {EF_CONSTRUCTION}, inner product, built on {threads} threads; searches one query at a time on 1 thread");
    let dir = tempfile::tempdir().expect("temp dir");
    let (flat, queries) = write_and_index(dir.path());
    let truth: Vec<Vec<i64>> = flat.search_batch(&queries, K, None).expect("exact search").into_iter().map(|hits| rows(&hits)).collect();

    let started = Instant::now();
    let ann = AnnIndex::build(AnnParams { m: M, ef_construction: EF_CONSTRUCTION, ef_search: EF_SEARCH[0] }, Metric::Cosine, &flat);
    println!("Quarry (USearch) built in {:.1} s", started.elapsed().as_secs_f64());
    let mut engine = if faiss_available() {
        Faiss::start(dir.path(), threads)
    } else {
        println!("faiss is not installed, so only Quarry's numbers follow; to compare, run `{INSTALL_FAISS}`");
        None
    };

    let mut quarry = Vec::new();
    let mut faiss = engine.as_ref().map(|_| Vec::new());
    for ef in EF_SEARCH {
        let search = |q: &[f32]| ann.search_ef(&flat, q, K, ef);
        queries.chunks_exact(DIM).take(10).for_each(|q| drop(search(q)));
        let (mut ours, mut theirs) = ((f64::INFINITY, Vec::new()), (f64::INFINITY, Vec::new()));
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let hits: Vec<_> = queries.chunks_exact(DIM).map(search).collect();
            let seconds = started.elapsed().as_secs_f64();
            if seconds < ours.0 {
                ours = (seconds, hits.iter().map(|h| rows(h)).collect());
            }
            if let Some(engine) = &mut engine {
                let pass = engine.pass(ef);
                if pass.seconds < theirs.0 {
                    theirs = (pass.seconds, pass.ids);
                }
            }
        }
        quarry.push(Point { ef, recall: recall(&ours.1, &truth), qps: QUERIES as f64 / ours.0 });
        if let Some(faiss) = &mut faiss {
            faiss.push(Point { ef, recall: recall(&theirs.1, &truth), qps: QUERIES as f64 / theirs.0 });
        }
    }
    drop(engine);

    println!("\n{:>9} {:>14} {:>12} {:>13} {:>11}", "ef_search", "Quarry recall", "Quarry q/s", "faiss recall", "faiss q/s");
    for (i, q) in quarry.iter().enumerate() {
        let (recall, qps) = match &faiss {
            Some(f) => (format!("{:.4}", f[i].recall), format!("{:.0}", f[i].qps)),
            None => ("n/a".into(), "n/a".into()),
        };
        println!("{:>9} {:>14.4} {:>12.0} {recall:>13} {qps:>11}", q.ef, q.recall, q.qps);
    }
    println!("\nqueries/s at equal recall@{K} (each curve interpolated linearly between ef settings)");
    println!("{:>7} {:>12} {:>11} {:>15}", "recall", "Quarry q/s", "faiss q/s", "Quarry / faiss");
    for target in TARGET_RECALLS {
        let ours = qps_at(&quarry, target);
        let theirs = faiss.as_ref().and_then(|f| qps_at(f, target));
        let show = |v: Option<f64>| v.map_or("not reached".to_string(), |v| format!("{v:.0}"));
        let ratio = match (ours, theirs) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "n/a".to_string(),
        };
        println!("{target:>7.2} {:>12} {:>11} {ratio:>15}", show(ours), show(theirs));
    }
}

/// Queries/s where the curve (in ef order) first reaches `target` recall, interpolated between
/// the settings either side; `None` if no setting reaches it.
fn qps_at(curve: &[Point], target: f64) -> Option<f64> {
    let at = curve.iter().position(|p| p.recall >= target)?;
    if at == 0 {
        return Some(curve[0].qps);
    }
    let (lo, hi) = (curve[at - 1], curve[at]);
    let t = (target - lo.recall) / (hi.recall - lo.recall);
    Some(lo.qps + t * (hi.qps - lo.qps))
}

fn recall(found: &[Vec<i64>], truth: &[Vec<i64>]) -> f64 {
    let hits: usize = found.iter().zip(truth).map(|(f, t)| f.iter().filter(|id| t.contains(id)).count()).sum();
    hits as f64 / (truth.len() * K) as f64
}

fn rows(hits: &[quarry_host::index::Scored]) -> Vec<i64> {
    hits.iter().map(|h| h.id.parse().expect("numeric id")).collect()
}

/// Deterministic standard normal values (xorshift, Box-Muller).
struct Gaussian(u64);
impl Gaussian {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn next(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Write the points to data.f32 and the queries to queries.f32 under `dir`, indexing the points
/// into an exact cosine index (ids are zero-padded row numbers, as faiss numbers rows).
fn write_and_index(dir: &Path) -> (FlatIndex, Vec<f32>) {
    let mut rng = Gaussian(0x9E3779B97F4A7C15);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| (0..DIM).map(|_| rng.next()).collect()).collect();
    let point = |rng: &mut Gaussian| -> Vec<f32> {
        let centre = &centres[(rng.uniform() * CLUSTERS as f64) as usize % CLUSTERS];
        let v: Vec<f32> = centre.iter().map(|c| c + SPREAD * rng.next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    };
    let mut flat = FlatIndex::new(Metric::Cosine);
    let mut data = BufWriter::new(File::create(dir.join("data.f32")).expect("data file"));
    for i in 0..N {
        let v = point(&mut rng);
        write_f32(&mut data, &v);
        flat.upsert(&format!("{i:07}"), &v).expect("upsert");
    }
    data.flush().expect("write data");
    let queries: Vec<f32> = (0..QUERIES).flat_map(|_| point(&mut rng)).collect();
    let mut file = BufWriter::new(File::create(dir.join("queries.f32")).expect("queries file"));
    write_f32(&mut file, &queries);
    file.flush().expect("write queries");
    (flat, queries)
}
