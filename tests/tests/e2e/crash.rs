//! Crash safety: a process killed with SIGKILL mid-ingest loses no acknowledged item and leaves
//! no partial one; ingesting again resumes without duplicates.

use quarry_host::{NewItem, SearchRequest};
use quarry_tests::{host, plugin_dir, shared_cache};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn sigkill_mid_ingest_loses_no_acknowledged_item() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = plugin_dir().join("quarry_test_fields.wasm");
    // A pseudo-random kill point, different on each run, reported so a failure can be replayed.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let kill_after = 10 + (nanos % 90) as usize;
    eprintln!("killing the ingester after {kill_after} acknowledgements");

    let mut child = Command::new(env!("CARGO_BIN_EXE_ingest-child"))
        .arg(dir.path())
        .arg(shared_cache())
        .arg(&wasm)
        .arg("100000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < kill_after {
        let line = lines.next().expect("the ingester stopped early").unwrap();
        acked.push(line.strip_prefix("ack ").unwrap().to_string());
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let host = host(dir.path());
    let items: BTreeSet<String> = host.items("c").unwrap().into_iter().map(|i| i.id).collect();
    let with_point: BTreeSet<String> = host.nearest("c", "point", &[0.0, 0.0], 1_000_000, None).unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(items, with_point, "every stored item has its field and every field its item");
    for id in &acked {
        assert!(items.contains(id), "acknowledged {id} was lost");
        let i: f32 = id["item-".len()..].parse().unwrap();
        let nearest = host.nearest("c", "point", &[i, i + 1.0], 1, None).unwrap();
        assert_eq!((nearest[0].id.as_str(), nearest[0].score), (id.as_str(), 0.0), "{id}'s vector is intact");
    }
    assert!(items.len() <= acked.len() + 1, "at most the one unacknowledged call in flight landed");

    // Running the same ingest again skips what landed and adds the rest, without duplicates.
    let all: Vec<NewItem> = (0..acked.len() as u32 + 20)
        .map(|i| {
            let id = format!("item-{i:05}");
            NewItem { metadata: serde_json::json!({"point": [i, i + 1], "codes": [i % 7, i]}), ..NewItem::text(&id, &id) }
        })
        .collect();
    let total = all.len();
    let report = host.ingest("c", all, |_| {}).unwrap();
    assert_eq!(report.unchanged, items.len());
    assert_eq!(report.ingested, total - items.len());
    assert_eq!(host.item_count("c").unwrap(), total);
    let probe = SearchRequest { params: serde_json::json!({"op": "items-with-codes", "codes": [3, 10]}), ..SearchRequest::text("p", 5) };
    assert_eq!(host.search("c", &probe).unwrap().hits.len(), 1, "item-00010 is indexed once");
}
