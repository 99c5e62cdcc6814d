//! Collections belong to tenants; a strategy's collection names are relative to its tenant, so no
//! plugin call reaches another tenant's data.

use quarry_host::plugins::CallError;
use quarry_host::plugins::StrategyError;
use quarry_host::plugins::registry::Owner;
use quarry_host::{Grants, NewItem, Route, SearchRequest};
use quarry_tests::{add_model, host, plugin, route};
use serde_json::json;

#[test]
fn tenants_do_not_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    add_model(&host, "minilm-l6");
    host.add_plugin_as(&Owner::Shared, &plugin("quarry-plugin-dense")).unwrap();
    host.add_plugin_as(&Owner::tenant("acme").unwrap(), &plugin("quarry-test-hostile")).unwrap();
    let dense = || route("dense@0.3.0", &["minilm-l6"], json!({"text-model": "minilm-l6"}));
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
            Err(CallError::Strategy { error: StrategyError::Denied(m), .. }) => assert!(m.contains(target), "{m}"),
            other => panic!("{target}: {other:?}"),
        }
    }
    let err = host.set_route("acme/probe", Route { strategy: "hostile@0.1.0".into(), config: json!({}), grants: Grants { collections: ["globex/docs".to_string()].into(), ..Default::default() } });
    assert!(format!("{:#}", err.unwrap_err()).contains("without a `tenant/` prefix"));
}

#[test]
fn plugins_belong_to_their_tenant_and_shared_names_cannot_be_taken() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let (acme, globex) = (Owner::tenant("acme").unwrap(), Owner::tenant("globex").unwrap());
    let err_text = |r: anyhow::Result<std::sync::Arc<quarry_host::plugins::LoadedPlugin>>| format!("{:#}", r.expect_err("refused"));

    // acme's swap@1.0.0 is acme's alone.
    host.add_plugin_as(&acme, &plugin("quarry-test-swap-v1")).unwrap();
    host.set_route("acme/live", route("swap@1.0.0", &[], json!({}))).unwrap();
    let err = format!("{:#}", host.set_route("globex/live", route("swap@1.0.0", &[], json!({}))).unwrap_err());
    assert!(err.contains("no strategy `swap@1.0.0` is registered for tenant `globex`") && !err.contains("acme"), "{err}");

    // globex can add the same name and version: a distinct plugin that acme cannot run.
    host.add_plugin_as(&globex, &plugin("quarry-test-swap-v2")).unwrap();
    host.add_plugin_as(&globex, &plugin("quarry-test-swap-v1")).unwrap();
    host.set_route("globex/live", route("swap@2.0.0", &[], json!({}))).unwrap();
    assert!(host.set_route("acme/live", route("swap@2.0.0", &[], json!({}))).is_err());
    let owners: Vec<(Owner, String)> = host.plugins().into_iter().map(|(o, p)| (o, p.reference.clone())).collect();
    assert!(owners.contains(&(acme.clone(), "swap@1.0.0".into())) && owners.contains(&(globex.clone(), "swap@1.0.0".into())), "{owners:?}");

    // A shared plugin serves every tenant, and its name cannot be taken by one.
    host.add_plugin_as(&Owner::Shared, &plugin("quarry-plugin-dense")).unwrap();
    assert_eq!(host.plugin_for("acme", "dense@0.3.0").unwrap().reference, "dense@0.3.0");
    assert_eq!(host.plugin_for("globex", "dense@0.3.0").unwrap().reference, "dense@0.3.0");
    let err = err_text(host.add_plugin_as(&acme, &plugin("quarry-plugin-dense")));
    assert!(err.contains("the name `dense` belongs to a shared plugin"), "{err}");
    // Nor can the operator publish a name tenants already use.
    let err = err_text(host.add_plugin_as(&Owner::Shared, &plugin("quarry-test-swap-v1")));
    assert!(err.contains("already used by") && err.contains("acme") && err.contains("globex"), "{err}");

    // Removing acme's plugin leaves globex's; a routed plugin is not removed.
    let err = format!("{:#}", host.remove_plugin_as(&acme, "swap@1.0.0").unwrap_err());
    assert!(err.contains("still serves collection(s) acme/live"), "{err}");
    host.remove_plugin_as(&globex, "swap@1.0.0").unwrap();
    assert!(host.plugin_for("acme", "swap@1.0.0").is_ok());
    assert!(host.plugin_for("globex", "swap@1.0.0").is_err());
}
