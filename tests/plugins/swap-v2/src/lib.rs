//! Version 2.0.0 of a strategy used to test hot swapping.
const VERSION: &str = "2.0.0";
include!("../../swap-common.rs");
