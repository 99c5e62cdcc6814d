//! MaxSim (late interaction) as the rankers import runs it: 32 query tokens against the stored
//! token sets of 100 candidates with 50 tokens each, 128 dimensions, unit-length random tokens.
//! Prints the median time in µs; fails on nothing.
//!
//! Run with `cargo bench -p quarry-host --bench maxsim`.

mod common;

use common::XorShift;
use quarry_host::index::tokens::{MaxSimBudget, TokenSets};
use std::time::Instant;

const DIM: usize = 128;
const CANDIDATES: usize = 100;
const DOC_TOKENS: usize = 50;
const QUERY_TOKENS: usize = 32;
/// Timed calls after the warm-up; each uses another query, cycling through `QUERIES`.
const RUNS: usize = 2000;
const QUERIES: usize = 16;

fn main() {
    let mut rng = XorShift(0x243F6A8885A308D3);
    let mut sets = TokenSets::default();
    let candidates: Vec<String> = (0..CANDIDATES).map(|i| format!("doc-{i:03}")).collect();
    for id in &candidates {
        sets.upsert(id, DIM, &unit_tokens(&mut rng, DOC_TOKENS));
    }
    // A few thousand more stored sets, so candidates are looked up in a realistic map.
    for i in 0..5_000 {
        sets.upsert(&format!("other-{i}"), DIM, &unit_tokens(&mut rng, DOC_TOKENS));
    }
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| unit_tokens(&mut rng, QUERY_TOKENS)).collect();

    let run = |query: &[f32]| sets.max_sim(DIM, query, &candidates, MaxSimBudget::UNBOUNDED).expect("max_sim");
    println!("MaxSim, {CANDIDATES} candidates x {DOC_TOKENS} tokens x {QUERY_TOKENS} query tokens, dimension {DIM}, unit-length random tokens");
    let flops = 2.0 * (CANDIDATES * DOC_TOKENS * QUERY_TOKENS * DIM) as f64;
    let threads = rayon::current_num_threads();
    for threads in if threads > 1 { vec![1, threads] } else { vec![1] } {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        let micros = pool.install(|| {
            for query in &queries {
                run(query);
            }
            let mut micros = Vec::with_capacity(RUNS);
            for i in 0..RUNS {
                let query = &queries[i % QUERIES];
                let started = Instant::now();
                let hits = run(query);
                micros.push(started.elapsed().as_secs_f64() * 1e6);
                assert_eq!(hits.len(), CANDIDATES);
            }
            micros.sort_by(f64::total_cmp);
            micros
        });
        let pick = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
        println!(
            "  {threads} thread(s): median {:.1} µs (p10 {:.1}, p90 {:.1}) over {RUNS} calls, {:.0} GFLOP/s",
            pick(0.5),
            pick(0.1),
            pick(0.9),
            flops / pick(0.5) / 1e3
        );
    }
}

/// `count` unit-length tokens of `DIM` floats, row-major.
fn unit_tokens(rng: &mut XorShift, count: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(count * DIM);
    for _ in 0..count {
        let token: Vec<f32> = (0..DIM).map(|_| rng.next()).collect();
        let norm = token.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(token.iter().map(|x| x / norm));
    }
    out
}
