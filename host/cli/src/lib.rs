//! The `quarry` command line: a thin layer over [`quarry_host::Quarry`] in-process, and over
//! [`quarry_server`] for `quarry serve`.

mod cli;
mod remote;
pub mod scaffold;

// The CLI names the host's modules from the crate root.
use quarry_host::{api, eval, models, plugins, printable, sources, store};

pub use cli::{DEMO_QUERIES, DEMO_SENTENCES, main};
