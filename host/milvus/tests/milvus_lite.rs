//! The collection store contract, checked against a real milvus-lite on loopback.

mod support;

use quarry_host::store::{CollectionStore, FieldValue, WriteBatch, conformance};
use quarry_milvus::MilvusStore;
use support::MilvusLite;

#[test]
fn a_milvus_store_behaves_as_a_collection_store_must_and_keeps_it_across_connections() {
    let server = MilvusLite::start();
    let store = MilvusStore::connect(&server.uri(), "conformance").unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
    conformance::check_all(&store);
    let names = store.collection_names("whole-t").unwrap();
    let bytes = store.tenant_bytes("whole-t").unwrap();
    drop(store);

    let again = MilvusStore::connect(&server.uri(), "conformance").unwrap();
    assert_eq!(again.collection_names("whole-t").unwrap(), names);
    assert_eq!(again.tenant_bytes("whole-t").unwrap(), bytes);
    assert!(again.item_exists("whole-t/a", "new").unwrap());
    let other = MilvusStore::connect(&server.uri(), "other").unwrap();
    assert!(other.collection_names("whole-t").unwrap().is_empty(), "namespaces are apart");
    assert!(MilvusStore::connect(&server.uri(), "bad-name").is_err());
}

#[test]
fn a_vector_field_keeps_the_dimension_of_its_first_write() {
    let server = MilvusLite::start();
    let store = MilvusStore::connect(&server.uri(), "dims").unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
    store.ensure_collection("t/c").unwrap();
    let write = |id: &str, v: Vec<f32>| {
        let mut batch = WriteBatch::default();
        batch.fields.push(("t/c".into(), id.into(), "emb".into(), FieldValue::Vector(v)));
        batch.fields.push(("t/c".into(), id.into(), "codes".into(), FieldValue::Codes(vec![1])));
        store.commit(&batch, &|_| None)
    };
    write("a", vec![1.0, 2.0, 3.0]).unwrap();
    let err = write("b", vec![1.0, 2.0]).unwrap_err();
    assert!(format!("{err:#}").contains("rolled back"), "{err:#}");
    assert_eq!(store.field("t/c", "b", "codes").unwrap(), None, "the refused commit stored nothing");
    assert!(write("c", Vec::new()).unwrap_err().to_string().contains("empty vector"));
    assert_eq!(store.scan_field("t/c", "emb").unwrap(), [("a".to_string(), FieldValue::Vector(vec![1.0, 2.0, 3.0]))]);
}

#[test]
fn reads_see_whole_commits_while_commits_land() {
    let server = MilvusLite::start();
    let store = MilvusStore::connect(&server.uri(), "snapshots").unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
    store.ensure_collection("t/c").unwrap();
    let write = |round: usize| {
        let mut batch = WriteBatch::default();
        for id in ["a", "b"] {
            let mut item = conformance::item(id);
            item.text = Some(round.to_string());
            batch.items.push(("t/c".into(), item));
            batch.fields.push(("t/c".into(), id.into(), "codes".into(), FieldValue::Codes(vec![round as u32])));
        }
        store.commit(&batch, &|_| None).unwrap();
    };
    write(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 1..=15 {
                write(round);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
            let items = store.items("t/c", &["a", "b"]).unwrap();
            let texts: Vec<_> = items.iter().map(|i| i.as_ref().expect("both items are always there").text.clone()).collect();
            assert_eq!(texts[0], texts[1], "one read sees one commit");
            let codes = store.scan_field("t/c", "codes").unwrap();
            assert_eq!(codes.len(), 2, "{codes:?}");
            assert_eq!(codes[0].1, codes[1].1, "one scan sees one commit");
            reads += 1;
        }
    });
    assert_eq!(store.items("t/c", &["a"]).unwrap()[0].as_ref().unwrap().text.as_deref(), Some("15"));
}

#[test]
fn the_store_answers_from_inside_another_runtime() {
    let server = MilvusLite::start();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        assert!(MilvusStore::connect("http://127.0.0.1:1", "nested").is_err(), "a failed connection returns its error");
        let store = MilvusStore::connect(&server.uri(), "nested").unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
        store.ensure_collection("t/c").unwrap();
        let mut batch = WriteBatch::default();
        batch.items.push(("t/c".into(), conformance::item("x")));
        store.commit(&batch, &|_| None).unwrap();
        assert_eq!(store.item_count("t/c").unwrap(), 1);
        drop(store);
    });
}

/// Two hosts on one namespace, their commit record in a control store they share.
fn two_writers(server: &MilvusLite, namespace: &str) -> (MilvusStore, MilvusStore, std::sync::Arc<quarry_host::control::MemoryStore>) {
    let control = std::sync::Arc::new(quarry_host::control::MemoryStore::default());
    let connect = || MilvusStore::connect_shared(&server.uri(), namespace, control.clone()).unwrap_or_else(|e| panic!("{e:#}\n{}", server.log()));
    (connect(), connect(), control)
}

#[test]
fn hosts_sharing_a_namespace_take_turns_and_lose_no_write() {
    let server = MilvusLite::start();
    let (a, b, _control) = two_writers(&server, "shared");
    conformance::check_all(&a);
    a.ensure_collection("t/c").unwrap();
    std::thread::scope(|s| {
        for (store, who) in [(&a, "a"), (&b, "b")] {
            s.spawn(move || {
                for i in 0..8 {
                    let mut batch = WriteBatch::default();
                    let id = format!("{who}{i}");
                    batch.items.push(("t/c".into(), conformance::item(&id)));
                    batch.fields.push(("t/c".into(), id.clone(), format!("codes_{who}"), FieldValue::Codes(vec![i])));
                    store.commit(&batch, &|_| None).unwrap();
                }
            });
        }
    });
    for store in [&a, &b] {
        assert_eq!(store.item_count("t/c").unwrap(), 16, "every commit of both hosts landed");
        let meta = store.collection("t/c").unwrap().unwrap();
        assert!(meta.fields.contains_key("codes_a") && meta.fields.contains_key("codes_b"), "neither host's field declaration undid the other's: {meta:?}");
        assert_eq!(store.scan_field("t/c", "codes_b").unwrap().len(), 8);
    }
    assert_eq!(a.tenant_bytes("t").unwrap(), b.tenant_bytes("t").unwrap());
}

#[test]
fn a_host_learns_which_collections_the_other_changed_and_not_its_own() {
    let server = MilvusLite::start();
    let (a, b, _control) = two_writers(&server, "follow");
    let changes = a.changes_elsewhere().unwrap().expect("a shared namespace reports other hosts' commits");
    a.ensure_collection("t/mine").unwrap();
    b.ensure_collection("t/theirs").unwrap();
    let mut batch = WriteBatch::default();
    batch.items.push(("t/theirs".into(), conformance::item("x")));
    b.commit(&batch, &|_| None).unwrap();
    let wait = std::time::Duration::from_secs(5);
    assert_eq!(changes.recv_timeout(wait).unwrap(), ["t/theirs"], "b made the collection");
    assert_eq!(changes.recv_timeout(wait).unwrap(), ["t/theirs"], "b wrote an item");
    assert!(changes.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "a's own commit is not reported to a");
    assert!(MilvusStore::connect(&server.uri(), "single").unwrap().changes_elsewhere().unwrap().is_none());
}

#[test]
fn a_writer_waits_for_another_hosts_turn_and_takes_an_expired_one() {
    use quarry_host::control::ControlStore as _;
    let server = MilvusLite::start();
    let (a, _b, control) = two_writers(&server, "turns");
    a.ensure_collection("t/c").unwrap();
    let key = "collections/milvus/turns/commits";
    let record: serde_json::Value = serde_json::from_slice(&control.get(key).unwrap().unwrap()).unwrap();
    assert!(record.get("lease").is_none(), "a finished commit gives its turn back: {record}");
    // Another host's turn for the next 600 ms.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut held = record.clone();
    held["lease"] = serde_json::json!({"writer": "elsewhere", "until_ms": now + 600});
    control.put(key, &serde_json::to_vec(&held).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let mut batch = WriteBatch::default();
    batch.items.push(("t/c".into(), conformance::item("after")));
    a.commit(&batch, &|_| None).unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(500), "the commit waited for the other turn to end ({:?})", started.elapsed());
    assert!(a.item_exists("t/c", "after").unwrap());
}
