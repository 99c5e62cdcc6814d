//! Ingests items one call at a time and prints `ack <id>` once each call has returned (its
//! writes committed). The crash-safety test kills it at a random point.
//!
//! Usage: ingest-child <data-dir> <cache-dir> <fields-plugin.wasm> <count>

use quarry_host::{Grants, HostConfig, NewItem, Quarry, Route};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, cache, wasm, count] = args.as_slice() else { anyhow::bail!("usage: ingest-child <data-dir> <cache-dir> <plugin.wasm> <count>") };
    let config = HostConfig { cache_dir: Some(cache.into()), ..HostConfig::new(data) };
    let host = Quarry::open(config)?;
    let plugin = host.add_plugin_file(wasm.as_ref())?;
    host.set_route("c", Route { strategy: plugin.reference.clone(), config: serde_json::json!({}), grants: Grants::default() })?;
    let mut out = std::io::stdout().lock();
    for i in 0..count.parse::<u32>()? {
        let id = format!("item-{i:05}");
        let item = NewItem { metadata: serde_json::json!({"point": [i, i + 1], "codes": [i % 7, i]}), ..NewItem::text(&id, &id) };
        host.ingest("c", vec![item], |_| {})?;
        writeln!(out, "ack {id}")?;
        out.flush()?;
    }
    Ok(())
}
