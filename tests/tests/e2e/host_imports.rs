//! Property test: every host import (of contract 0.2, whose bindings 0.1's share), called with
//! arbitrary arguments (sizes at and past every
//! limit, NaN and infinity, empty and enormous dimensions, control and path characters, unknown
//! models, collections, fields and resources), answers with a result or a typed error. It never
//! panics (which would be reported as a host fault), never aborts and never hangs.

use proptest::prelude::*;
use quarry_host::capacity::Caller;
use quarry_host::index::Indexes;
use quarry_host::models::Models;
use quarry_host::plugins::contract::v0_2::quarry::retrieval::types::{Error as WitError, Query, TokenSet};
use quarry_host::plugins::contract::v0_2::quarry::retrieval::{collections, decoders, encoders, log, rankers, strategies};
use quarry_host::plugins::host_api::{CallGrants, CallState, Counters, HostFault, HostServices, LogLevel};
use quarry_host::store::{CollectionStore, FieldValue, RedbStore, StoredItem, WriteBatch};
use quarry_host::Limits;
use std::sync::{Arc, Mutex, OnceLock};
use wasmtime::component::Resource;

const MODELS: &[&str] = &["minilm-l6", "tiny-lm", "cross-attributes", "color-image", "phi", "slot-text"];

/// One host (models, store, a collection with items and fields), shared by every case.
fn services() -> &'static (Arc<HostServices>, tempfile::TempDir) {
    static SERVICES: OnceLock<(Arc<HostServices>, tempfile::TempDir)> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CollectionStore> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        store.ensure_collection("default/c").unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..20u32 {
            let id = format!("item-{i}");
            let item = StoredItem { id: id.clone(), text: None, image_source: None, metadata: serde_json::json!({"n": i}), fingerprint: String::new(), indexed_by: String::new() };
            batch.items.push(("default/c".into(), item));
            batch.fields.push(("default/c".into(), id.clone(), "emb".into(), FieldValue::Vector(vec![i as f32, 1.0, -1.0])));
            batch.fields.push(("default/c".into(), id.clone(), "tokens".into(), FieldValue::Tokens { dim: 3, data: vec![0.5; 3 * (1 + i as usize % 4)] }));
            batch.fields.push(("default/c".into(), id, "codes".into(), FieldValue::Codes(vec![i % 3, i % 5])));
        }
        store.commit(&batch, &|_| None).unwrap();
        let models = Arc::new(Models::default());
        let manifests = [
            quarry_tests::root().join("examples/models/minilm-l6.json"),
            quarry_tests::test_models_dir().join("tiny-lm.json"),
            quarry_tests::test_models_dir().join("cross-attributes.json"),
            quarry_tests::test_models_dir().join("color-image.json"),
            quarry_tests::test_models_dir().join("projector.json"),
            quarry_tests::test_models_dir().join("slot-text.json"),
        ];
        for path in manifests {
            models.register(quarry_host::models::ModelManifest::load(&path).unwrap()).unwrap();
        }
        let indexes = Arc::new(Indexes::new(store.clone()));
        let services = Arc::new(HostServices { models, store, indexes, counters: Mutex::new(Counters::default()), log_level: LogLevel::Error });
        (services, dir)
    })
}

/// Small limits, so arbitrary arguments reach them; a short deadline, so nothing runs long.
fn limits() -> Limits {
    Limits {
        deadline_ms: 3_000,
        max_batch: 64,
        max_payload_bytes: 1 << 20,
        max_input_bytes: 1 << 20,
        max_item_bytes: 64 << 10,
        max_write_bytes: 1 << 20,
        max_tokens: 256,
        max_codes: 64,
        max_decoder_tokens: 2_048,
        max_maxsim_work: 1 << 24,
        max_hits: 100,
        ..Limits::default()
    }
}

fn state() -> CallState {
    let grants = CallGrants {
        tenant: "default".into(),
        models: MODELS.iter().take(5).map(|m| m.to_string()).collect(),
        collections: ["c".to_string()].into(),
        ingesting: None,
        ..Default::default()
    };
    CallState::new(services().0.clone(), Arc::new(grants), &limits(), "prop@0.1.0")
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(MODELS).prop_map(str::to_string),
        prop::sample::select(&["c", "other", "emb", "tokens", "codes", "item-3", "../c", "default/c"][..]).prop_map(str::to_string),
        "\\PC{0,12}",
        ".{0,300}",
    ]
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![-2.0f32..2.0, Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(f32::MAX), Just(0.0)]
}

fn vector() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![prop::collection::vec(float(), 0..8), prop::collection::vec(float(), 3..=3), prop::collection::vec(-1.0f32..1.0, 0..2_000)]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC{0,40}", ".{0,200}", "(red|blue|circle|square|\\$| ){0,30}", (0usize..200_000).prop_map(|n| "word ".repeat(n / 5))]
}

fn image() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"\x89PNG\r\n\x1a\n".to_vec()),
        Just(quarry_tests::picture(quarry_tests::RED, true, image::ImageFormat::Png)),
        Just(quarry_tests::picture(quarry_tests::BLUE, false, image::ImageFormat::Jpeg)),
    ]
}

fn token_set() -> impl Strategy<Value = TokenSet> {
    prop_oneof![
        (0u32..5, prop::collection::vec(float(), 0..40)).prop_map(|(dim, data)| TokenSet { dim, data }),
        (Just(3u32), prop::collection::vec(-1.0f32..1.0, 0..3_000)).prop_map(|(dim, data)| TokenSet { dim, data }),
        (any::<u32>(), prop::collection::vec(-1.0f32..1.0, 0..4)).prop_map(|(dim, data)| TokenSet { dim, data }),
    ]
}

fn codes() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![prop::collection::vec(0u32..6, 0..5), prop::collection::vec(any::<u32>(), 0..200)]
}

fn field_value() -> impl Strategy<Value = collections::FieldValue> {
    prop_oneof![
        vector().prop_map(collections::FieldValue::Vector),
        token_set().prop_map(collections::FieldValue::Tokens),
        codes().prop_map(collections::FieldValue::Codes),
        prop::collection::vec(any::<u8>(), 0..100).prop_map(collections::FieldValue::Blob),
        (0usize..3 << 20).prop_map(|n| collections::FieldValue::Blob(vec![0; n])),
    ]
}

/// One host import call.
#[derive(Debug, Clone)]
enum Call {
    EmbedTexts(String, Vec<String>),
    EmbedImages(String, Vec<Vec<u8>>),
    TextTokens(String, Vec<String>),
    ImageTokens(String, Vec<Vec<u8>>),
    EmbedWithSlots(String, Vec<(String, Vec<Vec<f32>>)>),
    Project(String, Vec<Vec<f32>>),
    Generate(String, String, Vec<Vec<Vec<u32>>>, Vec<u32>),
    BogusGeneration(u32, Vec<Vec<u32>>),
    LateInteraction(String, String, TokenSet, Vec<String>),
    CrossScore(String, String, Vec<String>),
    PutField(String, String, String, collections::FieldValue),
    GetField(String, String, String),
    Nearest(String, String, Vec<f32>, u32, Option<String>),
    NextCodes(String, String, Vec<Vec<u32>>),
    ItemsWithCodes(String, String, Vec<u32>),
    PutBlob(String, String, usize),
    GetBlob(String, String),
    Scan(String, String, Option<String>, u32),
    GetItems(String, Vec<String>),
    Count(String),
    StrategySearch(String, String, Option<String>, u32),
    Log(String),
    Counter(String, f64),
}

fn call() -> impl Strategy<Value = Call> {
    let many = |s: BoxedStrategy<String>| prop::collection::vec(s, 0..80);
    prop_oneof![
        (name(), many(text().boxed())).prop_map(|(m, t)| Call::EmbedTexts(m, t)),
        (name(), prop::collection::vec(image(), 0..4)).prop_map(|(m, i)| Call::EmbedImages(m, i)),
        (name(), many(text().boxed())).prop_map(|(m, t)| Call::TextTokens(m, t)),
        (name(), prop::collection::vec(image(), 0..4)).prop_map(|(m, i)| Call::ImageTokens(m, i)),
        (name(), prop::collection::vec((text(), prop::collection::vec(vector(), 0..3)), 0..5)).prop_map(|(m, t)| Call::EmbedWithSlots(m, t)),
        (name(), prop::collection::vec(vector(), 0..70)).prop_map(|(m, v)| Call::Project(m, v)),
        (name(), text(), prop::collection::vec(prop::collection::vec(codes(), 0..70), 0..4), prop::collection::vec(any::<u32>(), 0..5))
            .prop_map(|(m, p, steps, beams)| Call::Generate(m, p, steps, beams)),
        (any::<u32>(), prop::collection::vec(codes(), 0..3)).prop_map(|(r, p)| Call::BogusGeneration(r, p)),
        (name(), name(), token_set(), prop::collection::vec(name(), 0..80)).prop_map(|(c, f, t, ids)| Call::LateInteraction(c, f, t, ids)),
        (name(), text(), many(text().boxed())).prop_map(|(m, q, t)| Call::CrossScore(m, q, t)),
        (name(), name(), name(), field_value()).prop_map(|(c, i, f, v)| Call::PutField(c, i, f, v)),
        (name(), name(), name()).prop_map(|(c, i, f)| Call::GetField(c, i, f)),
        (name(), name(), vector(), any::<u32>(), prop::option::of(prop_oneof![".{0,50}", Just("{\"n\": {\"gte\": 3}}".to_string()), Just("[".repeat(5_000))]))
            .prop_map(|(c, f, q, k, filter)| Call::Nearest(c, f, q, k, filter)),
        (name(), name(), prop::collection::vec(codes(), 0..80)).prop_map(|(c, f, p)| Call::NextCodes(c, f, p)),
        (name(), name(), codes()).prop_map(|(c, f, p)| Call::ItemsWithCodes(c, f, p)),
        (name(), name(), 0usize..3 << 20).prop_map(|(c, n, size)| Call::PutBlob(c, n, size)),
        (name(), name()).prop_map(|(c, n)| Call::GetBlob(c, n)),
        (name(), name(), prop::option::of(name()), any::<u32>()).prop_map(|(c, f, after, limit)| Call::Scan(c, f, after, limit)),
        (name(), prop::collection::vec(name(), 0..80)).prop_map(|(c, ids)| Call::GetItems(c, ids)),
        name().prop_map(Call::Count),
        (name(), name(), prop::option::of(text()), any::<u32>()).prop_map(|(s, c, t, k)| Call::StrategySearch(s, c, t, k)),
        ".{0,5000}".prop_map(Call::Log),
        (name(), prop_oneof![any::<f64>(), Just(f64::NAN)]).prop_map(|(n, v)| Call::Counter(n, v)),
    ]
}

/// What an import ended in, reduced to what the property needs.
fn outcome<T>(answer: wasmtime::Result<Result<T, WitError>>) -> Result<(), String> {
    match answer {
        Ok(_) => Ok(()),
        Err(e) if e.downcast_ref::<HostFault>().is_some() => Err(format!("host fault: {e:#}")),
        // A trap the plugin cannot catch: the deadline, or a resource handle it never had.
        Err(_) => Ok(()),
    }
}

fn run(state: &mut CallState, call: Call) -> Result<(), String> {
    use collections::Host as _;
    use decoders::HostGeneration as _;
    use encoders::Host as _;
    use log::Host as _;
    use rankers::Host as _;
    match call {
        Call::EmbedTexts(m, t) => outcome(state.embed_texts(m, t)),
        Call::EmbedImages(m, i) => outcome(state.embed_images(m, i)),
        Call::TextTokens(m, t) => outcome(state.text_tokens(m, t)),
        Call::ImageTokens(m, i) => outcome(state.image_tokens(m, i)),
        Call::EmbedWithSlots(m, t) => {
            let texts = t.into_iter().map(|(template, slots)| encoders::SlottedText { template, slots }).collect();
            outcome(state.embed_texts_with_slots(m, texts))
        }
        Call::Project(m, v) => outcome(state.project(m, v)),
        Call::Generate(m, prompt, steps, beams) => {
            let generation = match state.start(m, prompt) {
                Ok(Ok(g)) => g,
                other => return outcome(other),
            };
            for prefixes in steps {
                outcome(state.next_logprobs(Resource::new_borrow(generation.rep()), prefixes))?;
                outcome(state.reorder(Resource::new_borrow(generation.rep()), beams.clone()))?;
            }
            state.drop(generation).map_err(|e| format!("dropping a generation: {e:#}"))
        }
        Call::BogusGeneration(rep, prefixes) => outcome(state.next_logprobs(Resource::new_borrow(rep), prefixes)),
        Call::LateInteraction(c, f, t, ids) => outcome(state.late_interaction(c, f, t, ids)),
        Call::CrossScore(m, q, t) => outcome(state.cross_score(m, q, t)),
        Call::PutField(c, i, f, v) => outcome(state.put_field(c, i, f, v)),
        Call::GetField(c, i, f) => outcome(state.get_field(c, i, f)),
        Call::Nearest(c, f, q, k, filter) => outcome(state.nearest(c, f, q, k, filter)),
        Call::NextCodes(c, f, p) => outcome(state.next_codes(c, f, p)),
        Call::ItemsWithCodes(c, f, p) => outcome(state.items_with_codes(c, f, p)),
        Call::PutBlob(c, n, size) => outcome(state.put_blob(c, n, vec![1; size])),
        Call::GetBlob(c, n) => outcome(state.get_blob(c, n)),
        Call::Scan(c, f, after, limit) => outcome(state.scan(c, f, after, limit)),
        Call::GetItems(c, ids) => outcome(state.get_items(c, ids)),
        Call::Count(c) => outcome(state.count(c)),
        Call::StrategySearch(s, c, text, k) => outcome(strategies::Host::search(state, s, c, Query { text, image: None, k, params: "{}".into() })),
        Call::Log(m) => state.log(log::Level::Error, m).map_err(|e| format!("{e:#}")),
        Call::Counter(n, v) => state.counter(n, v).map_err(|e| format!("{e:#}")),
    }
}

proptest! {
    // Bounded for CI; raise with PROPTEST_CASES to search longer.
    #![proptest_config(ProptestConfig { cases: 300, max_shrink_iters: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_host_import_answers_any_arguments_without_panicking(calls in prop::collection::vec(call(), 1..6)) {
        // Calls share one call state, as a plugin's calls do: budgets and pending writes add up.
        let mut state = state();
        for call in calls {
            let shown = format!("{call:?}").chars().take(300).collect::<String>();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut state, call)));
            prop_assert!(result.is_ok(), "a host import panicked past its guard on {shown}");
            prop_assert!(result.unwrap().is_ok(), "{shown}");
        }
    }
}

#[test]
fn the_models_answer_the_property_tests_models() {
    // The property test is only meaningful if the granted models really run.
    let embedded = services().0.models.embed_texts("minilm-l6", &["a red circle".to_string()], &Caller::host()).unwrap();
    assert_eq!(embedded[0].len(), 384);
}
