// Shared body of the swap test strategies. Each search reads a blob from the host (so the call
// spans host round trips while routes switch), then answers with a hit naming its own version.

use quarry_sdk::{Context, Descriptor, Hit, Item, Query, Result, Strategy};

struct Swap;

impl Strategy for Swap {
    fn describe() -> Descriptor {
        Descriptor::new("swap", VERSION).description("answers with its own version")
    }

    fn ingest(_ctx: &Context, _items: Vec<Item>) -> Result<()> {
        Ok(())
    }

    fn search(ctx: &Context, _query: Query) -> Result<Vec<Hit>> {
        for _ in 0..20 {
            ctx.collection().get_blob("marker")?;
        }
        quarry_sdk::log::counter("searches", 1.0);
        Ok(vec![Hit::new(format!("served-by-{VERSION}"), 1.0)])
    }
}

quarry_sdk::export_strategy!(Swap);
