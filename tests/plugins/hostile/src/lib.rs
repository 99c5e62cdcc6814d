//! A strategy that misbehaves on request, to test the sandbox, written as a tenant would write
//! it: against the public SDK only. The query text picks the misbehaviour; `params` carry its
//! sizes and targets (`target`, `n`, `model`, ...).
//!
//! Ingest stores what each item's text asks for, so searches have something large to work on:
//! `tokens <count> <dim>` stores a token set, anything else nothing. Modes that report a value
//! return it as the score of item `answer` (the host drops hits for ids a collection lacks).

use quarry_sdk::serde_json::{self, Value};
use quarry_sdk::{decoders, encoders, log, rankers, Context, Descriptor, Error, FieldKind, FieldValue, Hit, Item, Query, Result, Strategy, TokenSet};

struct Hostile;

fn params(query: &Query) -> Value {
    serde_json::from_str(&query.params).unwrap_or_default()
}

fn target(query: &Query) -> String {
    params(query)["target"].as_str().unwrap_or_default().to_string()
}

/// `params.n`, or `default`.
fn n(query: &Query, default: u64) -> usize {
    params(query)["n"].as_u64().unwrap_or(default) as usize
}

fn model(query: &Query) -> String {
    params(query)["model"].as_str().unwrap_or_default().to_string()
}

fn recurse(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    if depth == u64::MAX { pad[0] } else { recurse(depth + 1) + pad[1] }
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// A PNG that claims a `side` x `side` canvas: a few hundred bytes that would decode to gigabytes.
fn png_bomb(side: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    out
}

impl Strategy for Hostile {
    fn describe() -> Descriptor {
        Descriptor::new("hostile", "0.1.0")
            .description("misbehaves on request")
            .field("tokens", FieldKind::Tokens)
            .field("codes", FieldKind::Codes)
            .query_params(serde_json::json!({"type": "object", "additionalProperties": true}))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        for item in items {
            let words: Vec<&str> = item.text.as_deref().unwrap_or_default().split(' ').collect();
            if let ["tokens", count, dim] = words[..] {
                let (count, dim): (usize, u32) = (count.parse().unwrap_or(1), dim.parse().unwrap_or(1));
                let data = vec![0.5f32; count * dim as usize];
                ctx.collection().put_field(&item.id, "tokens", &FieldValue::Tokens(TokenSet { dim, data }))?;
            }
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let answer = |score: f32| Ok(vec![Hit::new("answer", score)]);
        let c = ctx.collection();
        match query.text.as_deref().unwrap_or_default() {
            // One host round trip and nothing else.
            "ping" => {
                c.get_blob("ping")?;
                Ok(Vec::new())
            }
            // Guest code that never ends.
            "loop" => spin(),
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("the hostile plugin panicked on purpose"),
            "recurse" => answer(recurse(0) as f32),
            "huge" => Ok((0..200_000).map(|i| Hit::new(format!("h{i}"), 0.0)).collect()),
            // Blocking in the host: a sleep (a WASI poll), and one that never ends.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(20));
                answer(1.0)
            }
            "sleep-forever" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            // Write, then run past the deadline: the write must not land.
            "write-then-spin" => {
                c.put_blob("spilled", b"should never land")?;
                spin()
            }
            // Host work with no end in sight: one huge model call, model calls in a loop,
            // decoder steps over many long prefixes, late interaction over huge token sets.
            "embed-huge" => {
                let text = "the quick brown fox jumps over the lazy dog ".repeat(40);
                encoders::embed_texts(&model(&query), &vec![text; n(&query, 4096)])?;
                answer(1.0)
            }
            "embed-loop" => loop {
                encoders::embed_text(&model(&query), "a short text, again and again")?;
            },
            "decode-long" => {
                let generation = decoders::Generation::start(&model(&query), "a prompt")?;
                let prefixes = vec![vec![5u32; n(&query, 2048)]; 64];
                loop {
                    generation.next_logprobs(&prefixes)?;
                }
            }
            "decode-wide" => {
                let generation = decoders::Generation::start(&model(&query), "a prompt")?;
                let prefixes = vec![vec![5u32; 2]; n(&query, 4096)];
                generation.next_logprobs(&prefixes)?;
                answer(1.0)
            }
            "maxsim" => {
                let dim = n(&query, 64) as u32;
                let tokens = TokenSet { dim, data: vec![0.25; 4096 * dim as usize] };
                let candidates: Vec<String> = (0..64).map(|i| format!("big-{i}")).collect();
                rankers::late_interaction(c.name(), "tokens", &tokens, &candidates)
            }
            // Memory and disk: a text of many megabytes, a cross-encoder batch past the limit,
            // a decompression bomb, blobs past the write budget, a code sequence of millions.
            "text-huge" => {
                let text = "word ".repeat(n(&query, 3 << 20));
                encoders::embed_text(&model(&query), &text)?;
                answer(1.0)
            }
            "cross-batch" => {
                let texts = vec!["a text".to_string(); n(&query, 100_000)];
                rankers::cross_score(&model(&query), "a query", &texts)?;
                answer(1.0)
            }
            "image-bomb" => {
                encoders::embed_images(&model(&query), &[png_bomb(60_000)])?;
                answer(1.0)
            }
            "blobs" => {
                let blob = vec![7u8; 16 << 20];
                for i in 0..n(&query, 64) {
                    c.put_blob(&format!("blob-{i}"), &blob)?;
                }
                answer(1.0)
            }
            "codes-huge" => {
                let codes: Vec<u32> = (0..n(&query, 3_000_000) as u32).collect();
                c.put_field(&target(&query), "codes", &FieldValue::Codes(codes))?;
                answer(1.0)
            }
            "field-for-missing-item" => {
                c.put_field("no-such-item", "codes", &FieldValue::Codes(vec![1]))?;
                answer(1.0)
            }
            "field-for-bad-id" => {
                c.put_field("evil\u{1b}[2Jid", "codes", &FieldValue::Codes(vec![1]))?;
                answer(1.0)
            }
            "counters" => {
                for i in 0..n(&query, 100_000) {
                    log::counter(&format!("counter-{i}"), 1.0);
                }
                answer(1.0)
            }
            "counters-then-fail" => {
                log::counter("failed-call", 1.0);
                Err(Error::internal("failing after counting"))
            }
            "log-spam" => {
                let line = "x".repeat(1000);
                for _ in 0..n(&query, 100_000) {
                    log::error(&line);
                }
                answer(1.0)
            }
            // Resources the host keeps for the call: pollables and sockets.
            "pollables" => {
                let mut kept = Vec::new();
                for _ in 0..n(&query, 2_000_000) {
                    kept.push(wasip2::clocks::monotonic_clock::subscribe_duration(1 << 40));
                }
                answer(1.0)
            }
            "sockets" => {
                let mut kept = Vec::new();
                for _ in 0..n(&query, 100_000) {
                    match std::net::TcpListener::bind("127.0.0.1:0") {
                        Ok(listener) => kept.push(listener),
                        Err(e) => return Err(Error::internal(format!("cannot open a socket: {e}"))),
                    }
                }
                answer(1.0)
            }
            // What a strategy returns: non-finite scores, duplicates, unknown and hostile ids.
            "nan-score" => Ok(vec![Hit::new(target(&query), f32::NAN)]),
            "inf-score" => Ok(vec![Hit::new(target(&query), f32::INFINITY)]),
            "duplicates" => {
                let id = target(&query);
                Ok(vec![Hit::new(id.clone(), 0.1), Hit::new("unknown-id", 5.0), Hit::new(id.clone(), 0.9), Hit::new(id, 0.5)])
            }
            "huge-id" => Ok(vec![Hit::new("x".repeat(65_536), 1.0), Hit::new("red\u{1b}[31m", 0.5)]),
            "clock" => {
                let now = std::time::Instant::now();
                let mut readings = Vec::new();
                while readings.len() < 50 {
                    readings.push(now.elapsed().as_nanos());
                }
                // Every reading of a 1 ms clock is a whole number of milliseconds apart.
                answer(if readings.iter().all(|r| r % 1_000_000 == 0) { 1.0 } else { 0.0 })
            }
            // Probes of what earlier calls left: 1 if present, else 0.
            "has-blob" => answer(if c.get_blob(&target(&query))?.is_some() { 1.0 } else { 0.0 }),
            "has-field" => answer(if c.get_field(&target(&query), "codes")?.is_some() { 1.0 } else { 0.0 }),
            "ungranted-model" => {
                encoders::embed_text("secret-model", "let me in")?;
                answer(1.0)
            }
            "other-collection" => {
                quarry_sdk::Collection::new(&target(&query)).get_blob("secrets")?;
                answer(1.0)
            }
            "read-file" => match std::fs::read_to_string(target(&query)) {
                Ok(_) => answer(1.0),
                Err(e) => Err(Error::internal(format!("cannot read the file: {e}"))),
            },
            "read-env" => match std::env::var(target(&query)) {
                Ok(_) => answer(1.0),
                Err(e) => Err(Error::internal(format!("cannot read the variable: {e}"))),
            },
            "open-socket" => match std::net::TcpStream::connect(target(&query)) {
                Ok(_) => answer(1.0),
                Err(e) => Err(Error::internal(format!("cannot connect: {e}"))),
            },
            "wall-clock" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                answer(now.as_secs() as f32)
            }
            other => Err(Error::invalid(format!("unknown misbehaviour `{other}`"))),
        }
    }
}

quarry_sdk::export_strategy!(Hostile);
