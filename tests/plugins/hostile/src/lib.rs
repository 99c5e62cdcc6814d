//! A strategy that misbehaves on request, to test the sandbox. The query text picks the
//! misbehaviour; `params.target` names a file, variable or address where one is needed.

use quarry_sdk::{encoders, Context, Descriptor, Error, Hit, Item, Query, Result, Strategy};

struct Hostile;

fn target(query: &Query) -> String {
    let params: serde_json::Value = serde_json::from_str(&query.params).unwrap_or_default();
    params["target"].as_str().unwrap_or_default().to_string()
}

fn recurse(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    if depth == u64::MAX { pad[0] } else { recurse(depth + 1) + pad[1] }
}

impl Strategy for Hostile {
    fn describe() -> Descriptor {
        Descriptor::new("hostile", "0.1.0").description("misbehaves on request")
    }

    fn ingest(_ctx: &Context, _items: Vec<Item>) -> Result<()> {
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let found = |what: String| Ok(vec![Hit { id: what, score: 1.0 }]);
        match query.text.as_deref().unwrap_or_default() {
            // One host round trip and nothing else.
            "ping" => {
                ctx.collection().get_blob("ping")?;
                Ok(Vec::new())
            }
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("the hostile plugin panicked on purpose"),
            "recurse" => found(recurse(0).to_string()),
            "huge" => Ok((0..200_000).map(|i| Hit { id: format!("h{i}"), score: 0.0 }).collect()),
            "ungranted-model" => {
                encoders::embed_text("secret-model", "let me in")?;
                found("embedded with an ungranted model".into())
            }
            "other-collection" => {
                quarry_sdk::Collection::new(&target(&query)).get_blob("secrets")?;
                found("read another collection".into())
            }
            "read-file" => match std::fs::read_to_string(target(&query)) {
                Ok(text) => found(text),
                Err(e) => Err(Error::internal(format!("cannot read the file: {e}"))),
            },
            "read-env" => match std::env::var(target(&query)) {
                Ok(value) => found(value),
                Err(e) => Err(Error::internal(format!("cannot read the variable: {e}"))),
            },
            "open-socket" => match std::net::TcpStream::connect(target(&query)) {
                Ok(_) => found("connected".into()),
                Err(e) => Err(Error::internal(format!("cannot connect: {e}"))),
            },
            "wall-clock" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                found(now.as_secs().to_string())
            }
            other => Err(Error::invalid(format!("unknown misbehaviour `{other}`"))),
        }
    }
}

quarry_sdk::export_strategy!(Hostile);
