//! Fairness under attack: one tenant's search latency alone, and while another tenant runs slow
//! and heavy calls at its concurrency cap (guest loops, allocation to the memory cap, sleeps
//! blocking in the host), printed as p50/p99 and the ratio of the p99s.
//!
//! `cargo bench -p quarry-tests --bench fairness`      (goal: p99 under attack <= 1.5 x alone)

use quarry_host::plugins::registry::Owner;
use quarry_host::{Limits, NewItem, SearchRequest};
use quarry_tests::{add_model, host_with, plugin, route};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SEARCHES: usize = 400;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { deadline_ms: 2_000, memory_bytes: 64 << 20, max_calls_per_tenant: 4, ..Limits::default() };
    let host = host_with(dir.path(), limits.clone());
    add_model(&host, "minilm-l6");
    host.add_plugin_as(&Owner::tenant("acme").unwrap(), &plugin("quarry-test-hostile")).unwrap();
    host.add_plugin_as(&Owner::tenant("globex").unwrap(), &plugin("quarry-plugin-dense")).unwrap();
    host.set_route("acme/hostile", route("hostile@0.1.0", &[], json!({}))).unwrap();
    host.set_route("globex/docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
    let sentences: Vec<NewItem> = quarry_cli::DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect();
    host.ingest("globex/docs", sentences, |_| {}).unwrap();
    let queries: Vec<&str> = quarry_cli::DEMO_QUERIES.iter().map(|(q, _)| *q).collect();

    let searches = |label: &str| {
        for q in &queries {
            host.search("globex/docs", &SearchRequest::text(q, 3)).unwrap();
        }
        let mut latencies: Vec<Duration> = (0..SEARCHES)
            .map(|i| {
                let start = Instant::now();
                let response = host.search("globex/docs", &SearchRequest::text(queries[i % queries.len()], 3)).unwrap();
                assert_eq!(response.hits[0].id, quarry_cli::DEMO_QUERIES[i % queries.len()].1, "{label}: a wrong answer");
                start.elapsed()
            })
            .collect();
        latencies.sort();
        latencies
    };

    let alone = searches("alone");
    // Each attack re-issues its calls as soon as they end, from twice the cap of threads.
    let attacks: [(&str, &[&str]); 4] = [
        ("guest loops", &["loop"; 8]),
        ("allocations to the cap", &["alloc"; 8]),
        ("sleeps in the host", &["sleep"; 8]),
        ("all of them", &["loop", "loop", "alloc", "sleep", "loop", "loop", "alloc", "sleep"]),
    ];
    let mut results = Vec::new();
    for (name, kinds) in attacks {
        let stop = AtomicBool::new(false);
        let (ran, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let latencies = std::thread::scope(|scope| {
            for what in kinds {
                let (host, stop, ran, refused) = (&host, &stop, &ran, &refused);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match host.search("acme/hostile", &SearchRequest::text(what, 1)) {
                            Err(quarry_host::plugins::CallError::Capacity(_)) => refused.fetch_add(1, Ordering::Relaxed),
                            _ => ran.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(300));
            let latencies = searches(name);
            stop.store(true, Ordering::Relaxed);
            latencies
        });
        results.push((name, latencies, ran.into_inner(), refused.into_inner()));
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("fairness under attack ({} cores, {} compute slots, {} calls per tenant)", std::thread::available_parallelism().map_or(1, |n| n.get()), limits.compute_slots(), limits.calls_per_tenant());
    println!("  globex dense search over MiniLM-L6, {SEARCHES} searches each, while acme runs:");
    println!("    {:<26} p50 {:>7.2} ms   p99 {:>7.2} ms", "nothing (alone)", ms(percentile(&alone, 0.5)), ms(percentile(&alone, 0.99)));
    for (name, latencies, ran, refused) in &results {
        println!(
            "    {name:<26} p50 {:>7.2} ms   p99 {:>7.2} ms   p99 ratio {:>6.3}   ({ran} attack calls ended, {refused} refused)",
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.99)),
            percentile(latencies, 0.99).as_secs_f64() / percentile(&alone, 0.99).as_secs_f64()
        );
    }
    println!("  goal: each p99 ratio <= 1.5");
}
