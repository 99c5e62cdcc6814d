//! A strategy whose `describe` never returns: `plugin add` must fail at its deadline and
//! register nothing.

use quarry_sdk::{Context, Descriptor, Hit, Item, Query, Result, Strategy};

struct Stuck;

impl Strategy for Stuck {
    fn describe() -> Descriptor {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    fn ingest(_ctx: &Context, _items: Vec<Item>) -> Result<()> {
        Ok(())
    }

    fn search(_ctx: &Context, _query: Query) -> Result<Vec<Hit>> {
        Ok(Vec::new())
    }
}

quarry_sdk::export_strategy!(Stuck);
