//! The host's dynamic batcher under 64 concurrent callers, against ONNX Runtime's own best
//! batched throughput, on a model with CLIP ViT-B/32's shapes and random weights (speed does not
//! depend on weights). Prints measurements and ratios, not pass/fail.
//!
//! `cargo bench -p quarry-tests --bench model_batching`

use quarry_host::capacity::Caller;
use ort::session::Session;
use ort::value::Tensor;
use quarry_host::models::{ModelManifest, Models, environment};
use quarry_tests::root;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const CALLERS: usize = 64;

/// Generate the ViT-B/32-shaped models once (about 570 MB, kept under target/).
fn models_dir() -> std::path::PathBuf {
    let dir = root().join("target/bench-models");
    if !dir.join("clip-vit-b32-text.onnx").is_file() {
        let status = Command::new(root().join("vendor/venv/bin/python"))
            .arg(root().join("tests/models/make_vit_b32.py"))
            .arg(&dir)
            .status()
            .expect("run `bash scripts/setup.sh` first");
        assert!(status.success());
    }
    dir
}

/// ONNX Runtime alone: the best images (or texts) per second over batch sizes, 64 inputs a round.
fn ort_best(path: &Path, input: &str, row: &dyn Fn(usize) -> Tensor<f32>, ids: Option<&dyn Fn(usize) -> Tensor<i64>>) -> (usize, f64) {
    let mut session = Session::builder(environment().unwrap())
        .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(path))
        .unwrap();
    let mut best = (0, 0.0);
    for batch in [1, 4, 8, 16, 32, 64] {
        let run = |session: &mut Session| match ids {
            Some(ids) => drop(session.run(ort::inputs![input => ids(batch)]).unwrap()),
            None => drop(session.run(ort::inputs![input => row(batch)]).unwrap()),
        };
        run(&mut session);
        let start = Instant::now();
        for _ in 0..CALLERS / batch {
            run(&mut session);
        }
        let per_second = CALLERS as f64 / start.elapsed().as_secs_f64();
        println!("    onnxruntime directly, batch {batch:>2}: {per_second:8.1} / s");
        if per_second > best.1 {
            best = (batch, per_second);
        }
    }
    best
}

fn png(seed: usize) -> Vec<u8> {
    let img = image::RgbImage::from_fn(224, 224, |x, y| image::Rgb([(x as usize * 7 + seed) as u8, (y as usize * 3 + seed * 11) as u8, ((x ^ y) as usize + seed) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// 64 threads each asking for one input at once; returns inputs per second (best of 3 rounds).
fn concurrent(call: &(dyn Fn(usize) + Sync)) -> f64 {
    call(0);
    (0..3)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for i in 0..CALLERS {
                    scope.spawn(move || call(i));
                }
            });
            CALLERS as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let dir = models_dir();
    let models = Models::default();
    // The batcher runs at most `batch.max_batch` inputs at once; set it to ONNX Runtime's best
    // batch size, as an operator would.
    let register = |name: &str, max_batch: usize| {
        let mut manifest = ModelManifest::load(&dir.join(format!("{name}.json"))).unwrap();
        manifest.batch.max_batch = max_batch;
        models.register(manifest).unwrap();
        models.warm(name).unwrap();
    };
    println!("ViT-B/32-shaped CLIP towers, random weights, {} cores", std::thread::available_parallelism().map_or(1, |n| n.get()));

    println!("  image tower (224 px, patch 32, width 768, 12 layers):");
    let pixels = |n: usize| Tensor::from_array((vec![n as i64, 3, 224, 224], vec![0.1f32; n * 3 * 224 * 224])).unwrap();
    let (batch, direct) = ort_best(&dir.join("clip-vit-b32-image.onnx"), "pixel_values", &pixels, None);
    register("clip-vit-b32-image", batch);
    let images: Vec<Vec<u8>> = (0..CALLERS).map(png).collect();
    let batched = concurrent(&|i| drop(models.embed_images("clip-vit-b32-image", std::slice::from_ref(&images[i]), &Caller::host()).unwrap()));
    println!("    host batcher (max_batch {batch}), {CALLERS} concurrent callers, PNG decode + preprocess included: {batched:8.1} images/s");
    println!("    ratio batcher / best direct (batch {batch}): {:.3}   (goal >= 0.9)", batched / direct);

    println!("  text tower (77 tokens, width 512, 12 layers):");
    let ids = |n: usize| Tensor::from_array((vec![n as i64, 77], vec![1000i64; n * 77])).unwrap();
    let (batch, direct) = ort_best(&dir.join("clip-vit-b32-text.onnx"), "input_ids", &pixels, Some(&ids));
    register("clip-vit-b32-text", batch);
    let texts: Vec<String> = (0..CALLERS).map(|i| format!("a photo of object number {i} on a table")).collect();
    let batched = concurrent(&|i| drop(models.embed_texts("clip-vit-b32-text", std::slice::from_ref(&texts[i]), &Caller::host()).unwrap()));
    println!("    host batcher (max_batch {batch}), {CALLERS} concurrent callers, tokenizing included: {batched:8.1} queries/s");
    println!("    ratio batcher / best direct (batch {batch}): {:.3}   (goal >= 0.9)", batched / direct);
    let (runs, inputs) = models.run_stats("clip-vit-b32-text").unwrap();
    println!("    text runs made by the batcher: {runs} for {inputs} inputs");
}
