//! A strategy whose `describe` answers differently each time it runs (another patch version):
//! the host must take its identity from the one `describe` run at `plugin add`, never rename it.

use quarry_sdk::{Context, Descriptor, Hit, Item, Query, Result, Strategy};

struct Shifty;

impl Strategy for Shifty {
    fn describe() -> Descriptor {
        // RandomState's keys come from WASI randomness: a fresh patch version on every run.
        let patch = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8) % 1_000_000;
        Descriptor::new("shifty", &format!("1.0.{patch}")).description("describes itself differently each time")
    }

    fn ingest(_ctx: &Context, _items: Vec<Item>) -> Result<()> {
        Ok(())
    }

    fn search(_ctx: &Context, _query: Query) -> Result<Vec<Hit>> {
        Ok(vec![Hit::new("answer", 1.0)])
    }
}

quarry_sdk::export_strategy!(Shifty);
