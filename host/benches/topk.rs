//! Exact top-10 over random 512-dimensional data: Quarry's `FlatIndex` (inner product) against
//! faiss `IndexFlatIP` on the same data and queries, and Quarry's f16 option against faiss's
//! half-precision flat index (`IndexScalarQuantizer`, QT_fp16). Also reports the memory per 1M
//! vectors. Prints times and ratios; fails on nothing.
//!
//! Run with `cargo bench -p quarry-host --bench topk`. The faiss side runs `faiss_topk.py` and
//! needs `python3 -m pip install faiss-cpu numpy`; without it only Quarry's numbers are printed.

mod common;

use common::{INSTALL_FAISS, XorShift, faiss_available, python, run_json, write_f32};
use quarry_host::index::Scored;
use quarry_host::index::flat::FlatIndex;
use quarry_host::store::{Metric, Precision};
use serde::Deserialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

const DIM: usize = 512;
const QUERIES: usize = 64;
const K: usize = 10;
/// Timed runs of the whole batch, after one warm-up; the median is reported (as in faiss_topk.py).
const BATCH_RUNS: usize = 3;
const DATASETS: [(&str, usize); 2] = [("100k x 512", 100_000), ("1M x 512", 1_000_000)];
const FAISS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/faiss_topk.py");

/// Top-k times and hits of one engine on one dataset. Hits are row numbers, as faiss reports them.
#[derive(Deserialize)]
struct Measured {
    single_ms: f64,
    batch_ms: f64,
    single_ids: Vec<Vec<i64>>,
    batch_ids: Vec<Vec<i64>>,
}

/// What faiss_topk.py prints: `Measured` with faiss at its faster setting, plus its defaults' times,
/// and the half-precision index's measurements.
#[derive(Deserialize)]
struct Faiss {
    threads: usize,
    single_default_ms: f64,
    batch_default_ms: f64,
    #[serde(flatten)]
    measured: Measured,
    fp16: Measured,
}

/// One row of the f16 table.
struct HalfRow {
    dataset: &'static str,
    queries: usize,
    quarry_f16_ms: f64,
    quarry_f32_ms: f64,
    /// faiss fp16's time and faiss IndexFlatIP's (faster setting).
    faiss_ms: Option<(f64, f64)>,
    /// Hits shared with Quarry's f32 exact top-k, of all.
    recall: f64,
}

struct Row {
    dataset: &'static str,
    queries: usize,
    quarry_ms: f64,
    /// faiss's faster time and its time with default settings.
    faiss_ms: Option<(f64, f64)>,
    agreement: Option<String>,
}

fn main() {
    let faiss_ready = faiss_available();
    if !faiss_ready {
        println!("faiss is not installed, so only Quarry's numbers follow; to compare, run `{INSTALL_FAISS}`\n");
    }
    println!("threads: Quarry {} (rayon), k = {K}, dimension {DIM}", rayon::current_num_threads());
    let mut table = Vec::new();
    let mut half_table = Vec::new();
    let mut memory = Vec::new();
    let mut grown_bytes = None;
    for (dataset, n) in DATASETS {
        let dir = tempfile::tempdir().expect("temp dir");
        let started = Instant::now();
        let (index, queries) = write_and_index(dir.path(), n);
        println!("{dataset}: generated, written and indexed in {:.1} s", started.elapsed().as_secs_f64());
        if grown_bytes.is_none() {
            // Without `reserve`, as a field grows by commits.
            let grown = copy(&index, Precision::F32, false);
            grown_bytes = Some((dataset, grown.heap_bytes() as f64 * 1e6 / n as f64));
        }
        let quarry = measure(&index, &queries);
        let same = quarry.single_ids.iter().zip(&quarry.batch_ids).filter(|(a, b)| a == b).count();
        println!("{dataset}: Quarry search_batch equals search on {same}/{QUERIES} queries");
        let started = Instant::now();
        let half = copy(&index, Precision::F16, true);
        println!("{dataset}: f16 index built in {:.1} s", started.elapsed().as_secs_f64());
        memory.push((dataset, index.heap_bytes() as f64 * 1e6 / n as f64, half.heap_bytes() as f64 * 1e6 / n as f64));
        drop(index);
        let quarry_half = measure(&half, &queries);
        drop(half);

        let faiss = faiss_ready.then(|| run_faiss(dataset, dir.path(), n)).flatten();
        for (queries, quarry_ms, quarry_ids, faiss_side) in [
            (1, quarry.single_ms, &quarry.single_ids, faiss.as_ref().map(|f| ((f.measured.single_ms, f.single_default_ms), &f.measured.single_ids))),
            (QUERIES, quarry.batch_ms, &quarry.batch_ids, faiss.as_ref().map(|f| ((f.measured.batch_ms, f.batch_default_ms), &f.measured.batch_ids))),
        ] {
            table.push(Row {
                dataset,
                queries,
                quarry_ms,
                faiss_ms: faiss_side.map(|(ms, _)| ms),
                agreement: faiss_side.map(|(_, ids)| agreement(quarry_ids, ids)),
            });
        }
        for (queries, quarry_f16_ms, quarry_f32_ms, f16_ids, f32_ids, faiss_ms) in [
            (1, quarry_half.single_ms, quarry.single_ms, &quarry_half.single_ids, &quarry.single_ids, faiss.as_ref().map(|f| (f.fp16.single_ms, f.measured.single_ms))),
            (QUERIES, quarry_half.batch_ms, quarry.batch_ms, &quarry_half.batch_ids, &quarry.batch_ids, faiss.as_ref().map(|f| (f.fp16.batch_ms, f.measured.batch_ms))),
        ] {
            let shared: usize = f16_ids.iter().zip(f32_ids).map(|(a, b)| a.iter().filter(|id| b.contains(id)).count()).sum();
            let total: usize = f32_ids.iter().map(Vec::len).sum();
            half_table.push(HalfRow { dataset, queries, quarry_f16_ms, quarry_f32_ms, faiss_ms, recall: shared as f64 / total as f64 });
        }
    }

    println!("\nexact top-{K}; 1 query: median over {QUERIES} queries run one at a time; {QUERIES} queries: one batch (search_batch), median of {BATCH_RUNS}");
    println!("faiss ms: the faster of faiss's defaults and its tuned setting (1 thread for 1 query, BLAS forced for a batch)");
    println!(
        "{:<11} {:>7} {:>11} {:>11} {:>13} {:>17} {:>22}  top-{K} agreement with faiss",
        "dataset", "queries", "Quarry ms", "faiss ms", "faiss/Quarry", "faiss default ms", "faiss default/Quarry"
    );
    for row in &table {
        let [best, ratio, default, default_ratio] = match row.faiss_ms {
            Some((best, default)) => [
                format!("{best:.2}"),
                format!("{:.2}x", best / row.quarry_ms),
                format!("{default:.2}"),
                format!("{:.2}x", default / row.quarry_ms),
            ],
            None => ["n/a"; 4].map(String::from),
        };
        let agreement = row.agreement.as_deref().unwrap_or("n/a");
        println!(
            "{:<11} {:>7} {:>11.2} {best:>11} {ratio:>13} {default:>17} {default_ratio:>22}  {agreement}",
            row.dataset, row.queries, row.quarry_ms
        );
    }

    println!("\nf16 vectors (`quarry index <collection> <field> --f16`), same queries and timing; faiss fp16 is IndexScalarQuantizer QT_fp16 (faster of its defaults and 1 thread for 1 query)");
    println!(
        "{:<11} {:>7} {:>14} {:>14} {:>14} {:>18} {:>23}  recall@{K} vs f32 exact",
        "dataset", "queries", "Quarry f16 ms", "Quarry f32 ms", "faiss fp16 ms", "faiss fp16/Quarry", "faiss f32 best/Quarry"
    );
    for row in &half_table {
        let [fp16, fp16_ratio, f32_ratio] = match row.faiss_ms {
            Some((fp16, f32)) => [format!("{fp16:.2}"), format!("{:.2}x", fp16 / row.quarry_f16_ms), format!("{:.2}x", f32 / row.quarry_f16_ms)],
            None => ["n/a"; 3].map(String::from),
        };
        println!(
            "{:<11} {:>7} {:>14.2} {:>14.2} {fp16:>14} {fp16_ratio:>18} {f32_ratio:>23}  {:.4}",
            row.dataset, row.queries, row.quarry_f16_ms, row.quarry_f32_ms, row.recall
        );
    }

    let mib = |bytes: f64| bytes / (1 << 20) as f64;
    let raw = |bytes_per_value: usize| mib((1_000_000 * DIM * bytes_per_value) as f64);
    println!("\nmemory per 1M x {DIM} vectors (FlatIndex heap: vectors, norms, ids, id map), loaded in bulk as from the store:");
    for (dataset, f32_bytes, f16_bytes) in memory {
        println!(
            "  from the {dataset} index: f32 {:.0} MiB (raw f32 data {:.0} MiB), f16 {:.0} MiB (raw f16 data {:.0} MiB)",
            mib(f32_bytes),
            raw(4),
            mib(f16_bytes),
            raw(2)
        );
    }
    if let Some((dataset, bytes)) = grown_bytes {
        println!("  grown one upsert at a time instead (as by commits), from the {dataset} index: f32 {:.0} MiB", mib(bytes));
    }
    if !faiss_ready {
        println!("\nfaiss columns are n/a: run `{INSTALL_FAISS}` and rerun the bench to compare");
    }
}

/// A copy of `index` at `precision`, sized up front when `reserve` is set (as loading a field
/// from the store does), else grown one upsert at a time.
fn copy(index: &FlatIndex, precision: Precision, reserve: bool) -> FlatIndex {
    let mut out = FlatIndex::with_precision(Metric::InnerProduct, precision);
    if reserve {
        out.reserve(index.len());
    }
    for start in (0..index.len()).step_by(8192) {
        let rows = start..(start + 8192).min(index.len());
        for (row, vector) in rows.clone().zip(index.row_vectors(rows).chunks_exact(DIM)) {
            out.upsert(index.id(row), vector).expect("upsert");
        }
    }
    out
}

/// Generate `n` rows and the queries into data.f32 and queries.f32 under `dir`, indexing the rows
/// as they are generated so no second copy of the data is held. Ids are zero-padded row numbers,
/// so id order is row order, the order faiss breaks ties in.
fn write_and_index(dir: &Path, n: usize) -> (FlatIndex, Vec<f32>) {
    let mut rng = XorShift(0x2545F4914F6CDD1D ^ n as u64);
    let mut index = FlatIndex::new(Metric::InnerProduct);
    // As loading a field from the store does: its size is known.
    index.reserve(n);
    let mut data = BufWriter::new(File::create(dir.join("data.f32")).expect("data file"));
    let mut row = vec![0f32; DIM];
    for i in 0..n {
        row.fill_with(|| rng.next());
        write_f32(&mut data, &row);
        index.upsert(&format!("{i:07}"), &row).expect("upsert");
    }
    data.flush().expect("write data");
    let queries: Vec<f32> = (0..QUERIES * DIM).map(|_| rng.next()).collect();
    let mut file = BufWriter::new(File::create(dir.join("queries.f32")).expect("queries file"));
    write_f32(&mut file, &queries);
    file.flush().expect("write queries");
    (index, queries)
}

/// Time each query alone (median), then all queries as one batch (median of `BATCH_RUNS`).
fn measure(index: &FlatIndex, queries: &[f32]) -> Measured {
    let rows = |hits: Vec<Scored>| hits.iter().map(|h| h.id.parse::<i64>().expect("numeric id")).collect::<Vec<_>>();
    index.search(&queries[..DIM], K, None).expect("warm-up");
    let mut single_ms = Vec::new();
    let mut single_ids = Vec::new();
    for query in queries.chunks_exact(DIM) {
        let started = Instant::now();
        let hits = index.search(query, K, None).expect("search");
        single_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        single_ids.push(rows(hits));
    }
    index.search_batch(queries, K, None).expect("warm-up");
    let mut batch_ms = Vec::new();
    let mut batch_ids = Vec::new();
    for _ in 0..BATCH_RUNS {
        let started = Instant::now();
        let hits = index.search_batch(queries, K, None).expect("search_batch");
        batch_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        batch_ids = hits.into_iter().map(rows).collect();
    }
    Measured { single_ms: median(single_ms), batch_ms: median(batch_ms), single_ids, batch_ids }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

/// Identical ordered lists, and hits shared regardless of order.
fn agreement(ours: &[Vec<i64>], theirs: &[Vec<i64>]) -> String {
    let identical = ours.iter().zip(theirs).filter(|(a, b)| a == b).count();
    let shared: usize = ours.iter().zip(theirs).map(|(a, b)| a.iter().filter(|id| b.contains(id)).count()).sum();
    let total: usize = theirs.iter().map(Vec::len).sum();
    format!("{identical}/{} lists identical, {shared}/{total} ids shared", ours.len())
}

/// faiss's measurements, or `None` (with the reason printed) if the script failed.
fn run_faiss(dataset: &str, dir: &Path, n: usize) -> Option<Faiss> {
    let mut command = python();
    command.arg(FAISS_SCRIPT).arg(dir).args([n, DIM, QUERIES, K].map(|v| v.to_string()));
    let faiss: Faiss = run_json(command)?;
    println!("{dataset}: faiss ran on {} threads", faiss.threads);
    Some(faiss)
}
