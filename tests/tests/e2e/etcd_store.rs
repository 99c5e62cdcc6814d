//! The etcd control store against a real etcd (`/usr/bin/etcd`; `bash scripts/setup.sh`
//! installs it): the conformance checks, two hosts sharing one etcd, large values, a watch that
//! lives through a restart, and an etcd that is down.

use quarry_etcd::EtcdStore;
use quarry_host::control::{Change, ControlStore, conformance};
use quarry_tests::etcd::EtcdServer;
use std::time::{Duration, Instant};

fn store(etcd: &EtcdServer, namespace: &str) -> EtcdStore {
    EtcdStore::connect(&[etcd.endpoint()], namespace).unwrap_or_else(|e| panic!("{e:#}\n{}", etcd.log()))
}

/// Every raw etcd key under `prefix`, read with a client of its own.
fn raw_keys(etcd: &EtcdServer, prefix: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
        let options = etcd_client::GetOptions::new().with_prefix().with_keys_only();
        let resp = client.get(prefix, Some(options)).await.unwrap();
        resp.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect()
    })
}

fn next(watch: &quarry_host::control::Watch) -> Change {
    watch.recv_timeout(Duration::from_secs(30)).expect("a change arrives")
}

#[test]
fn an_etcd_store_behaves_as_a_control_store_must() {
    let etcd = EtcdServer::start();
    conformance::check_all(&store(&etcd, "conformance"));
    conformance::watches_see_every_change_in_order(&store(&etcd, "watches"));
    assert!(raw_keys(&etcd, "conformance/").is_empty(), "nothing is left behind, chunks included");
}

#[test]
fn two_hosts_on_one_etcd_see_each_others_writes() {
    let etcd = EtcdServer::start();
    let (a, b) = (store(&etcd, "shared"), store(&etcd, "shared"));
    let watch = b.watch("routes/").unwrap().expect("an etcd store can be watched");
    a.put("routes/acme/docs.json", b"{\"v\":1}").unwrap();
    assert_eq!(b.get("routes/acme/docs.json").unwrap().as_deref(), Some(&b"{\"v\":1}"[..]));
    assert_eq!(next(&watch), Change::Put { key: "routes/acme/docs.json".into(), value: b"{\"v\":1}".to_vec() });
    assert!(b.compare_and_swap("routes/acme/docs.json", Some(b"{\"v\":1}"), b"{\"v\":2}").unwrap());
    assert!(!a.compare_and_swap("routes/acme/docs.json", Some(b"{\"v\":1}"), b"{\"v\":3}").unwrap(), "b's swap got in first");
    assert!(a.delete("routes/acme/docs.json").unwrap());
    assert_eq!(next(&watch), Change::Put { key: "routes/acme/docs.json".into(), value: b"{\"v\":2}".to_vec() });
    assert_eq!(next(&watch), Change::Delete { key: "routes/acme/docs.json".into() });

    // Another namespace on the same etcd is another store.
    let other = store(&etcd, "other");
    other.put("routes/acme/docs.json", b"x").unwrap();
    assert!(a.keys("").unwrap().is_empty());
    assert!(watch.recv_timeout(Duration::from_millis(300)).is_err(), "another namespace's change is not seen");

    // Called from inside another runtime's worker (an axum handler) and dropped there.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        assert_eq!(other.get("routes/acme/docs.json").unwrap().as_deref(), Some(&b"x"[..]));
        drop(other);
    });
    drop(b);
    let end = watch.recv_timeout(Duration::from_secs(5));
    assert_eq!(end, Err(std::sync::mpsc::RecvTimeoutError::Disconnected), "the watch ends with its store");
}

#[test]
fn a_twenty_mib_value_is_chunked_reassembled_and_cleaned_up() {
    let etcd = EtcdServer::start();
    let (a, b) = (store(&etcd, "big"), store(&etcd, "big"));
    let watch = b.watch("plugins/").unwrap().unwrap();
    let value = |seed: u32| -> Vec<u8> { (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8).collect() };
    let (first, second) = (value(1), value(1 << 30));
    let key = "plugins/shared/big.wasm";

    a.put(key, &first).unwrap();
    assert!(b.get(key).unwrap().as_deref() == Some(&first[..]), "the other client reads it whole");
    assert!(matches!(next(&watch), Change::Put { value, .. } if value == first), "the watch reassembles it");
    assert_eq!(a.keys("").unwrap(), [key], "chunks are not listed");
    let chunks = |etcd: &EtcdServer| raw_keys(etcd, "big/c/");
    assert_eq!(chunks(&etcd).len(), 20, "1 MiB chunks: {:?}", raw_keys(&etcd, "big/"));

    // Replacing it twice in quick succession: the watch still sees each generation whole.
    a.put(key, &second).unwrap();
    a.put(key, &first).unwrap();
    assert!(matches!(next(&watch), Change::Put { value, .. } if value == second));
    assert!(matches!(next(&watch), Change::Put { value, .. } if value == first));
    assert_eq!(chunks(&etcd).len(), 20, "the replaced generation's chunks are gone");
    // Writing the same content again keeps its chunks.
    a.put(key, &first).unwrap();
    assert_eq!(b.get(key).unwrap().map(|v| v.len()), Some(first.len()));

    assert!(a.delete(key).unwrap());
    assert!(raw_keys(&etcd, "big/").is_empty(), "deleting it removes its chunks");
    assert_eq!(b.get(key).unwrap(), None);
}

#[test]
fn a_watch_lives_through_an_etcd_restart() {
    let mut etcd = EtcdServer::start();
    // A short request timeout, to show it does not cut a watch's long-lived stream.
    let store = EtcdStore::connect_with_timeouts(&[etcd.endpoint()], "restart", Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    let watch = store.watch("routes/").unwrap().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    store.put("routes/a.json", b"1").unwrap();
    assert_eq!(next(&watch), Change::Put { key: "routes/a.json".into(), value: b"1".to_vec() });

    etcd.stop();
    etcd.restart();
    assert_eq!(next(&watch), Change::Resync, "changes may have been missed while it was down\n{}", etcd.log());
    store.put("routes/a.json", b"2").unwrap();
    assert_eq!(next(&watch), Change::Put { key: "routes/a.json".into(), value: b"2".to_vec() });
}

#[test]
fn a_stopped_etcd_fails_calls_in_time_and_says_what_to_check() {
    let mut etcd = EtcdServer::start();
    let endpoints = [etcd.endpoint()];
    let endpoint = &endpoints[0];
    let store = EtcdStore::connect_with_timeouts(&endpoints, "down", Duration::from_secs(2), Duration::from_secs(3)).unwrap();
    store.put("routes.json", b"{}").unwrap();
    etcd.stop();

    let started = Instant::now();
    let err = format!("{:#}", store.get("routes.json").unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(5), "it took {:?}", started.elapsed());
    assert!(err.contains(endpoint.as_str()) && err.contains("is it running") && err.contains("control.etcd.endpoints"), "{err}");
    let started = Instant::now();
    assert!(store.put("routes.json", b"[]").is_err() && started.elapsed() < Duration::from_secs(5));

    // Connecting to it fails within the connect timeout, with the same advice.
    let started = Instant::now();
    let err = format!("{:#}", EtcdStore::connect(&endpoints, "down").err().expect("etcd is down"));
    assert!(started.elapsed() < Duration::from_secs(7), "it took {:?}", started.elapsed());
    assert!(err.contains(&format!("cannot reach etcd at {endpoint} within 5 s")) && err.contains("control.etcd.endpoints"), "{err}");
    assert!(EtcdStore::connect(&endpoints, "not/plain").is_err());
    // Failing inside another runtime (a server starting up) returns the error, without a panic.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let short = Duration::from_millis(500);
    assert!(runtime.block_on(async { EtcdStore::connect_with_timeouts(&endpoints, "down", short, short).is_err() }));
}

/// Two writers of the same content share chunk keys, so one's cleanup after a delete can remove
/// chunks the other is writing; the manifest is only written if its chunks are still there
/// (without that check, the reader here sees a manifest whose chunks are gone).
#[test]
fn racing_writers_of_one_large_value_never_leave_it_damaged() {
    let etcd = EtcdServer::start();
    let (a, b, c, d) = (store(&etcd, "race"), store(&etcd, "race"), store(&etcd, "race"), store(&etcd, "race"));
    let big: Vec<u8> = (0..(5u32 << 19)).map(|i| (i % 253) as u8).collect(); // 2.5 MiB: three chunks
    let key = "plugins/shared/same.wasm";
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            (0..20).for_each(|_| a.put(key, &big).unwrap());
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // A second writer of the same content, so the value is often there to delete while
        // the first is writing its chunks (whose keys are the same).
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                d.put(key, &big).unwrap();
            }
        });
        // Deletes, each followed by a cleanup of the chunks, at varying paces so they land
        // while a writer is partway through its chunks.
        s.spawn(|| {
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                b.delete(key).unwrap();
                std::thread::sleep(Duration::from_millis(i % 7 * 5));
            }
        });
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let read = c.get(key).unwrap_or_else(|e| panic!("{e:#}"));
                assert!(read.as_deref().is_none_or(|v| v == &big[..]), "a reader sees it whole or not at all");
            }
        });
    });
    let last = c.get(key).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(last.as_deref().is_none_or(|v| v == &big[..]), "what the race left is whole");
    a.put(key, &big).unwrap();
    assert!(c.get(key).unwrap().as_deref() == Some(&big[..]), "whatever raced, the last write stands whole");
    a.delete(key).unwrap();
    assert!(raw_keys(&etcd, "race/").is_empty(), "no chunks are left behind: {:?}", raw_keys(&etcd, "race/"));
}
