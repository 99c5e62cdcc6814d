//! Plugin call overheads, printed as measurements and ratios (not pass/fail).
//!
//! `cargo bench -p quarry-tests --bench plugin_calls`

use quarry_host::capacity::Caller;
use quarry_host::plugins::contract::Query;
use quarry_host::{Limits, NewItem, SearchRequest};
use quarry_tests::{add_model, host_with, plugin, route};
use std::time::{Duration, Instant};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(dir.path(), Limits::default());
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-test-hostile")).unwrap();
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.set_route("ping", route("hostile@0.1.0", &[], serde_json::json!({}))).unwrap();
    host.set_route("docs", route("dense@0.3.0", &["minilm-l6"], serde_json::json!({"text-model": "minilm-l6"}))).unwrap();

    // One host→guest→host round trip: `search("ping")` on a kept instance makes one host call.
    let (mut instance, ctx) = host.instance("ping").unwrap();
    let ping = Query { text: Some("ping".into()), image: None, k: 1, params: "{}".into() };
    for _ in 0..1_000 {
        instance.search(&ctx, &ping).unwrap();
    }
    let rounds = 20_000;
    let start = Instant::now();
    for _ in 0..rounds {
        instance.search(&ctx, &ping).unwrap();
    }
    let round_trip = start.elapsed() / rounds;
    drop(instance);

    // Warm instantiation from the pool (a fresh store and instance, then dropped).
    let mut samples = Vec::new();
    for _ in 0..5_000 {
        let start = Instant::now();
        let instance = host.instance("ping").unwrap();
        samples.push(start.elapsed());
        drop(instance);
    }
    let instantiate = median(samples);

    // dense search through the plugin vs. the same search through the host API from Rust.
    let subjects = ["the committee", "a young engineer", "the old fisherman", "our neighbour", "the orchestra", "a small startup", "the museum", "the city council"];
    let actions = ["approved a new budget for", "spent the weekend repairing", "wrote a long letter about", "gave a public talk on", "quietly abandoned", "won an award for"];
    let objects = ["the harbour bridge", "renewable energy", "a forgotten novel", "the winter festival", "local bird species", "its delivery robots", "the train timetable", "ancient pottery", "a vegetable garden", "the flood defences"];
    let mut items = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        for (j, a) in actions.iter().enumerate() {
            for (l, o) in objects.iter().enumerate() {
                items.push(NewItem::text(&format!("s{i}-a{j}-o{l}"), &format!("{s} {a} {o}.")));
            }
        }
    }
    let n_items = items.len();
    host.ingest("docs", items, |_| {}).unwrap();
    let queries = ["people fixing a bridge by the sea", "a prize for robots that deliver parcels", "clay pots from antiquity", "musicians talking about wind and solar power"];
    let (mut via_plugin, mut direct) = (Vec::new(), Vec::new());
    let through_plugin = |q: &str| {
        let start = Instant::now();
        let response = host.search("docs", &SearchRequest::text(q, 10)).unwrap();
        (start.elapsed(), response.hits[0].id.clone())
    };
    let (kept, kept_ctx) = host.instance("docs").unwrap();
    let kept = std::cell::RefCell::new(kept);
    let through_kept = |q: &str| {
        let query = Query { text: Some(q.into()), image: None, k: 10, params: "{}".into() };
        let start = Instant::now();
        let hits = kept.borrow_mut().search(&kept_ctx, &query).unwrap();
        (start.elapsed(), hits[0].id.clone())
    };
    let mut kept_samples = Vec::new();
    let through_host = |q: &str| {
        let start = Instant::now();
        let vector = host.models().embed_texts("minilm-l6", &[q.to_string()], &Caller::host()).unwrap().remove(0);
        let hits = host.nearest("docs", "embedding", &vector, 10, None).unwrap();
        // The same display data `search` returns.
        let hits = host.with_items("docs", hits.into_iter().map(|s| (s.id, s.score)).collect()).unwrap();
        (start.elapsed(), hits[0].id.clone())
    };
    let mut pair_ratios = Vec::new();
    for round in 0..101 {
        for q in queries {
            // Alternate which path goes first, so neither profits from the other's warm caches.
            let ((t_plugin, a), (t_direct, b)) = if round % 2 == 0 {
                let p = through_plugin(q);
                (p, through_host(q))
            } else {
                let d = through_host(q);
                (through_plugin(q), d)
            };
            assert_eq!(a, b, "both paths find the same best hit");
            kept_samples.push(through_kept(q).0);
            if round > 0 {
                pair_ratios.push(t_plugin.as_secs_f64() / t_direct.as_secs_f64());
                via_plugin.push(t_plugin);
                direct.push(t_direct);
            }
        }
    }
    // The whole `search` path with a strategy that does no model work: the fixed plugin cost.
    let mut samples = Vec::new();
    for _ in 0..2_000 {
        let start = Instant::now();
        host.search("ping", &SearchRequest::text("ping", 1)).unwrap();
        samples.push(start.elapsed());
    }
    let fixed = median(samples);
    let (via_plugin, direct) = (median(via_plugin), median(direct));

    println!("quarry plugin-call benchmark (medians; this machine: {} cores)", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("  host->guest->host round trip (kept instance, 1 host call)  {:>9.2} us", micros(round_trip));
    println!("  warm instantiation from the pool                           {:>9.2} us", micros(instantiate));
    println!("  whole search() with a strategy doing one host call          {:>9.2} us", micros(fixed));
    println!("  dense search, {n_items} items, MiniLM-L6 int8:");
    println!("    through the dense plugin                                 {:>9.1} us", micros(via_plugin));
    println!("    through a kept dense instance (hits only)                {:>9.1} us", micros(median(kept_samples)));
    println!("    host API directly from Rust (same hits and item texts)   {:>9.1} us", micros(direct));
    pair_ratios.sort_by(f64::total_cmp);
    println!(
        "    ratio plugin / direct (median of {} interleaved pairs)   {:>9.3}   (goal <= 1.03)",
        pair_ratios.len(),
        pair_ratios[pair_ratios.len() / 2]
    );
}
