//! Collections belong to tenants; a strategy's collection names are relative to its tenant, so no
//! plugin call reaches another tenant's data.

use quarry_host::plugins::CallError;
use quarry_host::plugins::host_api::WitError;
use quarry_host::plugins::WitErrorDisplay;
use quarry_host::{Grants, NewItem, Route, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};
use serde_json::json;

#[test]
fn tenants_do_not_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    host.add_plugin(&plugin("quarry-plugin-dense")).unwrap();
    host.add_plugin(&plugin("quarry-test-hostile")).unwrap();
    let dense = || route("dense@0.1.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}));
    for (collection, id, text) in [("acme/docs", "cat", "a cat sleeps on the sofa"), ("globex/docs", "sea", "waves crash on the shore"), ("docs", "train", "the night train was late")] {
        host.set_route(collection, dense()).unwrap();
        host.ingest(collection, vec![NewItem::text(id, text)], |_| {}).unwrap();
    }
    let top = |collection: &str| host.search(collection, &SearchRequest::text("the ocean", 5)).unwrap().hits.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(top("acme/docs"), ["cat"]);
    assert_eq!(top("globex/docs"), ["sea"]);
    assert_eq!(top("docs"), ["train"], "a bare name is the default tenant's");
    assert_eq!(top("default/docs"), ["train"]);

    // A plugin in acme granted acme's `docs` reaches it, and nothing of globex's, by any name.
    let grants = Grants { collections: ["docs".to_string()].into(), ..Default::default() };
    host.set_route("acme/probe", Route { strategy: "hostile@0.1.0".into(), config: json!({}), grants }).unwrap();
    let probe = |target: &str| {
        let request = SearchRequest { params: json!({"target": target}), ..SearchRequest::text("other-collection", 1) };
        host.search("acme/probe", &request)
    };
    match probe("docs") {
        Err(CallError::Strategy { .. }) | Ok(_) => {}
        Err(other) => panic!("{other:?}"),
    }
    for target in ["globex/docs", "../globex/docs", "default/docs"] {
        match probe(target) {
            Err(CallError::Strategy { error: WitErrorDisplay(WitError::Denied(m)), .. }) => assert!(m.contains(target), "{m}"),
            other => panic!("{target}: {other:?}"),
        }
    }
    let err = host.set_route("acme/probe", Route { strategy: "hostile@0.1.0".into(), config: json!({}), grants: Grants { collections: ["globex/docs".to_string()].into(), ..Default::default() } });
    assert!(format!("{:#}", err.unwrap_err()).contains("without a `tenant/` prefix"));
}
