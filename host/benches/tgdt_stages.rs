//! TGDT's two stages at the reference's K = 100 (text→image): the coarse stage (exact top 100
//! of the gallery's global image embeddings) and the fine stage (MaxSim of the query's word
//! tokens over those 100 images' patch tokens), each as the host runs it for the `tgdt`
//! plugin. Prints each stage's median and fine ÷ coarse per gallery size; fails on nothing.
//!
//! Shapes as CLIP ViT-B/32 gives them: dimension 512, 49 patch tokens per image (the CLS slot
//! excluded), 12 word tokens per caption; unit-length random vectors.
//!
//! Run with `cargo bench -p quarry-host --bench tgdt_stages`.

mod common;

use common::XorShift;
use quarry_host::index::flat::FlatIndex;
use quarry_host::index::tokens::{MaxSimBudget, TokenSets};
use quarry_host::store::Metric;
use std::time::Instant;

const DIM: usize = 512;
const K: usize = 100;
const PATCHES: usize = 49;
const WORDS: usize = 12;
const RUNS: usize = 300;
const GALLERIES: [usize; 3] = [1_000, 5_000, 25_000];

fn unit(rng: &mut XorShift, count: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(count * DIM);
    for _ in 0..count {
        let v: Vec<f32> = (0..DIM).map(|_| rng.next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

fn median(mut micros: Vec<f64>) -> f64 {
    micros.sort_by(f64::total_cmp);
    micros[micros.len() / 2]
}

fn main() {
    let mut rng = XorShift(0x1F83_D9AB_FB41_BD6B);
    // One thread, as a plugin call's MaxSim and top-k each run on the caller's thread budget.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("thread pool");
    println!("TGDT stages at K = {K}, text→image: dimension {DIM}, {PATCHES} patch tokens per image, {WORDS} word tokens per query, one thread");
    println!("{:>8}  {:>10}  {:>10}  {:>12}", "gallery", "coarse µs", "fine µs", "fine/coarse");
    for size in GALLERIES {
        let mut globals = FlatIndex::new(Metric::InnerProduct);
        let mut patches = TokenSets::default();
        for i in 0..size {
            let id = format!("image-{i}");
            globals.upsert(&id, &unit(&mut rng, 1)).unwrap();
            patches.upsert(&id, DIM, &unit(&mut rng, PATCHES));
        }
        let queries: Vec<(Vec<f32>, Vec<f32>)> = (0..16).map(|_| (unit(&mut rng, 1), unit(&mut rng, WORDS))).collect();
        let (coarse, fine) = pool.install(|| {
            let (mut coarse, mut fine) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
            for run in 0..RUNS + 16 {
                let (global, words) = &queries[run % queries.len()];
                let started = Instant::now();
                let candidates: Vec<String> = globals.search(global, K, None).unwrap().into_iter().map(|h| h.id).collect();
                let between = Instant::now();
                let scored = patches.max_sim(DIM, words, &candidates, MaxSimBudget::UNBOUNDED).expect("max_sim");
                let done = Instant::now();
                assert_eq!(scored.len(), K);
                if run >= 16 {
                    coarse.push((between - started).as_secs_f64() * 1e6);
                    fine.push((done - between).as_secs_f64() * 1e6);
                }
            }
            (median(coarse), median(fine))
        });
        println!("{size:>8}  {coarse:>10.1}  {fine:>10.1}  {:>12.2}", fine / coarse);
    }
}
