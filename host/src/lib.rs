//! Quarry's native host: runs retrieval strategies as sandboxed WebAssembly components and
//! owns what they orchestrate: models ([`models`]), collections ([`store`], [`index`]).
//!
//! [`api::Quarry`] is the entry point; the `quarry` binary (`quarry-cli`) and the HTTP service
//! (`quarry-server`) are thin layers over it.

pub mod api;
pub mod capacity;
pub mod compose;
pub mod control;
pub mod eval;
pub mod experiments;
pub mod index;
pub mod models;
pub mod plugins;
pub mod printable;
pub mod routing;
pub mod sources;
pub mod store;

pub use api::{CollectionInfo, HostConfig, IngestReport, Quarry, SearchHit, SearchRequest, SearchResponse};
pub use plugins::registry::Route;
pub use routing::{Experiment, Pipeline, Target};
pub use plugins::host_api::Grants;
pub use plugins::limits::Limits;
pub use plugins::CallError;
pub use sources::NewItem;
