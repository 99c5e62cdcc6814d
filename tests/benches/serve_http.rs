//! Dense search over HTTP (`quarry serve`, driven by `wrk`) next to the same searches made
//! in-process, at concurrency 1, 16 and 64; then one tenant's latency alone and while another
//! tenant floods the server with requests and heavy plugin calls, at three compute quotas, next
//! to its latency while a thread outside the server takes the CPU time the flood computed, spinning
//! or running the same model as the flood's embeds.
//!
//! `cargo bench -p quarry-tests --bench serve_http` (needs `wrk`: `bash scripts/setup.sh --bench`).
//! Set QUARRY_BENCH_SECONDS to change how long each run lasts (default 8; the isolation part's
//! rounds last half that each).

use quarry_host::capacity::Caller;
use quarry_host::plugins::registry::Owner;
use quarry_host::{NewItem, SearchRequest};
use quarry_tests::server::{ADMIN_KEY, Server, call};
use quarry_tests::{add_model, host, plugin, route};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const QUERY: &str = "a kitten napping in the sun";
/// The text `tests/plugins/hostile`'s `embed-huge` repeats 40 times (256 tokens, MiniLM's limit).
const LONG_TEXT: &str = "the quick brown fox jumps over the lazy dog ";
/// Paired rounds (alone, then beside a load) of the isolation part.
const ROUNDS: usize = 5;

/// Requests per second, p50 and p99 in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
}

fn seconds() -> u64 {
    std::env::var("QUARRY_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `concurrency` threads searching in-process for the run's length.
fn in_process(host: &Arc<quarry_host::Quarry>, concurrency: usize) -> Run {
    let until = Instant::now() + Duration::from_secs(seconds());
    let barrier = Arc::new(Barrier::new(concurrency));
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (host, barrier) = (host.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut took = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    let response = host.search("bench/docs", &SearchRequest::text(QUERY, 10)).expect("search");
                    assert_eq!(response.hits[0].id, "cat");
                    took.push(started.elapsed().as_secs_f64() * 1e3);
                }
                took
            })
        })
        .collect();
    let started = Instant::now();
    let mut all: Vec<f64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Run { rps: all.len() as f64 / elapsed, p50: percentile(&all, 0.5), p99: percentile(&all, 0.99) }
}

/// wrk POSTing `body` with `key` at `concurrency` connections.
fn wrk(url: &str, key: &str, body: &Value, concurrency: usize, secs: u64) -> Run {
    let script = std::env::temp_dir().join(format!("quarry-wrk-{}-{concurrency}.lua", std::process::id()));
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\n",
        serde_json::to_string(&body.to_string()).unwrap()
    );
    std::fs::write(&script, lua).unwrap();
    let out = Command::new("wrk")
        .args(["--latency", "--timeout", "60s", "-t", &concurrency.clamp(1, 2).to_string(), "-c", &concurrency.to_string(), "-d", &format!("{secs}s"), "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("wrk is installed; run `bash scripts/setup.sh --bench`");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if std::env::var_os("QUARRY_BENCH_VERBOSE").is_some() {
        eprintln!("{text}");
    }
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |prefix: &str| -> &str {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in wrk's output:\n{text}")).trim()
    };
    let ms = |value: &str| -> f64 {
        let (number, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(value.len()));
        let n: f64 = number.parse().unwrap_or_else(|_| panic!("`{value}` in wrk's output"));
        match unit {
            "us" => n / 1e3,
            "ms" => n,
            "s" => n * 1e3,
            "m" => n * 60e3,
            other => panic!("unit `{other}` in wrk's output"),
        }
    };
    Run { rps: field("Requests/sec:").parse().unwrap(), p50: ms(field("50%")), p99: ms(field("99%")) }
}

/// `ROUNDS` pairs of `measure` alone, then again while the threads `load` starts run (from a
/// second before), so drift in the machine's speed moves both halves of each pair.
fn paired_rounds(load: impl Fn() -> Vec<std::thread::JoinHandle<()>>, measure: impl Fn() -> Run) -> Vec<(Run, Run)> {
    (0..ROUNDS)
        .map(|_| {
            let alone = measure();
            let threads = load();
            std::thread::sleep(Duration::from_secs(1));
            let loaded = measure();
            for thread in threads {
                thread.join().unwrap();
            }
            (alone, loaded)
        })
        .collect()
}

/// Do `work` over and over on this thread for `secs` seconds, resting after each in proportion to
/// its wall time so that it is busy `share` of the time.
fn busy_share(share: f64, secs: u64, mut work: impl FnMut()) {
    let until = Instant::now() + Duration::from_secs(secs);
    // A metric that reads NaN or nothing keeps it busy least, and no rest outlasts the window.
    let share = if share.is_nan() { 0.01 } else { share.clamp(0.01, 1.0) };
    while Instant::now() < until {
        let started = Instant::now();
        work();
        std::thread::sleep(started.elapsed().mul_f64((1.0 - share) / share).min(until.saturating_duration_since(Instant::now())));
    }
}

/// Spin for 10 ms.
fn spin() {
    let until = Instant::now() + Duration::from_millis(10);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Run MiniLM on `host` in this process over two 256-token texts, as noisy's embeds do.
fn embed_long_texts(host: &quarry_host::Quarry) {
    host.models().embed_texts("minilm-l6", &[LONG_TEXT.repeat(40), LONG_TEXT.repeat(40)], &Caller::host()).expect("MiniLM embeds in-process");
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("serve_http: `wrk` is not installed; run `bash scripts/setup.sh --bench`");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // The same collection serves both: set up and measured in-process first, then served.
    {
        let host = Arc::new(host(&data));
        add_model(&host, "minilm-l6");
        host.add_plugin_as(&Owner::tenant("bench").unwrap(), &plugin("quarry-plugin-dense")).unwrap();
        host.set_route("bench/docs", route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}))).unwrap();
        let items: Vec<NewItem> = quarry_cli::DEMO_SENTENCES.iter().map(|(id, text)| NewItem::text(id, text)).collect();
        host.ingest("bench/docs", items, |_| {}).unwrap();
        host.ingest("bench/docs", vec![NewItem::text("cat", "a cat sleeps on the warm windowsill")], |_| {}).unwrap();
        in_process(&host, 4);
        println!("dense search, {} s per run; HTTP through `wrk` on loopback, in-process from threads", seconds());
        println!("{:>11} | {:>24} | {:>24} | {:>10}", "concurrency", "in-process req/s p50 p99", "HTTP req/s p50 p99", "HTTP cost");
        let mut local = Vec::new();
        for c in [1, 16, 64] {
            local.push((c, in_process(&host, c)));
        }
        drop(host);
        let server = Server::start(&data, None);
        let (status, out, _) = call(
            "POST",
            &server.url("/v1/tenants"),
            Some(ADMIN_KEY),
            Some((
                "application/json",
                json!({"name": "bench", "models": ["minilm-l6"], "quotas": {"requests_per_second": 1e6, "burst": 1e7, "concurrent_calls": 10000, "compute_per_second": 4096, "compute_burst_seconds": 86400}})
                    .to_string()
                    .into_bytes(),
            )),
        );
        assert_eq!(status, 201, "{out}");
        let key = out["api_key"].as_str().unwrap().to_string();
        let url = server.url("/v1/collections/docs/search");
        let body = json!({"text": QUERY, "k": 10});
        wrk(&url, &key, &body, 4, 2);
        for (c, local) in local {
            let http = wrk(&url, &key, &body, c, seconds());
            println!(
                "{c:>11} | {:>9.0} {:>6.2} {:>7.2} | {:>9.0} {:>6.2} {:>7.2} | {:>9.3}x",
                local.rps,
                local.p50,
                local.p99,
                http.rps,
                http.p50,
                http.p99,
                local.rps / http.rps
            );
        }
        println!("HTTP cost = in-process req/s / HTTP req/s (goal: at most 1.05 at concurrency 16)");

        // Isolation under load: tenant `quiet` alone, then while tenant `noisy` floods searches
        // and heavy embed calls under its own quotas.
        let tenant = |name: &str, quotas: Value| -> String {
            let body = json!({"name": name, "models": ["minilm-l6"], "quotas": quotas});
            let (status, out, _) = call("POST", &server.url("/v1/tenants"), Some(ADMIN_KEY), Some(("application/json", body.to_string().into_bytes())));
            assert_eq!(status, 201, "{out}");
            out["api_key"].as_str().unwrap().to_string()
        };
        let setup = |key: &str, wasm: &str, strategy: &str| {
            let (status, out, _) = call("POST", &server.url("/v1/plugins"), Some(key), Some(("application/wasm", plugin(wasm))));
            assert_eq!(status, 201, "{out}");
            let route = json!({"strategy": strategy, "config": {"text-model": "minilm-l6"}, "models": ["minilm-l6"]});
            let (status, out, _) = call("PUT", &server.url("/v1/collections/docs/route"), Some(key), Some(("application/json", route.to_string().into_bytes())));
            assert_eq!(status, 200, "{out}");
        };
        let quiet = tenant("quiet", json!({"requests_per_second": 1e6, "burst": 1e7, "concurrent_calls": 1000, "compute_per_second": 4096, "compute_burst_seconds": 86400}));
        setup(&quiet, "quarry-plugin-dense", "dense@0.3.0");
        let lines: Vec<Value> = quarry_cli::DEMO_SENTENCES.iter().map(|(id, text)| json!({"id": id, "text": text})).collect();
        let (status, out, _) = call("POST", &server.url("/v1/collections/docs/items"), Some(&quiet), Some(("application/json", json!({"items": lines}).to_string().into_bytes())));
        assert_eq!(status, 200, "{out}");
        let quiet_body = json!({"text": "what does a cat do", "k": 5});
        let search = server.url("/v1/collections/docs/search");
        let heavy = json!({"text": "embed-huge", "params": {"model": "minilm-l6", "n": 256}});
        let window = seconds().div_ceil(2).max(2);
        let measure_quiet = &|| wrk(&search, &quiet, &quiet_body, 4, window);
        let metric = |prefix: &str| -> f64 {
            let (_, metrics, _) = call("GET", &server.url("/metrics"), Some(ADMIN_KEY), None);
            metrics.as_str().unwrap_or_default().lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
        };
        println!();
        println!("tenant `quiet` (4 connections) alone, then beside a load, in {ROUNDS} paired rounds of {window} s (the median ratio counts)");
        println!("noisy: a tenant flooding with 48 connections of searches and 256-text embeds under its compute quota (and a burst of 5 s of it)");
        println!("spin outside: one thread outside the server busy as many cores as noisy computed");
        println!("embed outside: MiniLM in this process, on one thread, running as noisy's embeds do for as many cores");
        let peer = Arc::new(quarry_tests::host(&dir.path().join("peer")));
        add_model(&peer, "minilm-l6");
        // A session's first run sizes its buffers.
        embed_long_texts(&peer);
        println!("{:>17} | {:>5} | {:>24} | {:>24} | {:>9}", "load", "round", "alone req/s p50 p99", "loaded req/s p50 p99", "p99 ratio");
        let mut summary = Vec::new();
        for quota in [0.05, 0.1, 0.2] {
            let name = format!("noisy-{}", (quota * 100.0f64).round());
            let noisy = tenant(&name, json!({"requests_per_second": 20, "burst": 20, "concurrent_calls": 4, "compute_per_second": quota, "compute_burst_seconds": quota * 5.0}));
            setup(&noisy, "quarry-test-hostile", "hostile@0.1.0");
            let computed = format!("quarry_compute_seconds_total{{tenant=\"{name}\"}}");
            let before = metric(&computed);
            let flooded = paired_rounds(|| {
                [(json!({"text": "ping"}), 32), (heavy.clone(), 16)]
                    .into_iter()
                    .map(|(body, c)| {
                        let (url, key) = (search.clone(), noisy.clone());
                        std::thread::spawn(move || {
                            wrk(&url, &key, &body, c, window + 2);
                        })
                    })
                    .collect()
            }, measure_quiet);
            let cores = (metric(&computed) - before) / (ROUNDS as u64 * (window + 2)) as f64;
            let spun = paired_rounds(|| vec![std::thread::spawn(move || busy_share(cores, window + 2, spin))], measure_quiet);
            let embedded = paired_rounds(|| {
                let peer = peer.clone();
                vec![std::thread::spawn(move || busy_share(cores, window + 2, || embed_long_texts(&peer)))]
            }, measure_quiet);
            let refused = metric(&format!("quarry_quota_rejections_total{{tenant=\"{name}\""));
            let mut medians = Vec::new();
            for (load, rounds) in [(format!("noisy at {quota} s/s"), &flooded), (format!("spin {cores:.2} cores"), &spun), (format!("embed {cores:.2} cores"), &embedded)] {
                let mut ratios = Vec::new();
                for (n, (alone, loaded)) in rounds.iter().enumerate() {
                    let ratio = loaded.p99 / alone.p99;
                    ratios.push(ratio);
                    println!(
                        "{load:>17} | {:>5} | {:>9.0} {:>6.2} {:>7.2} | {:>9.0} {:>6.2} {:>7.2} | {ratio:>8.2}x",
                        n + 1,
                        alone.rps,
                        alone.p50,
                        alone.p99,
                        loaded.rps,
                        loaded.p50,
                        loaded.p99
                    );
                }
                ratios.sort_by(f64::total_cmp);
                medians.push(percentile(&ratios, 0.5));
            }
            summary.push((quota, cores, medians, refused));
        }
        for (quota, cores, medians, refused) in summary {
            println!(
                "quiet p99 loaded / alone, beside noisy at {quota} s/s: {:.2}x (goal: at most 1.2; {refused:.0} requests refused with 429); beside the same {cores:.2} cores outside the server: {:.2}x spinning, {:.2}x embedding",
                medians[0], medians[1], medians[2]
            );
        }
    }
}
