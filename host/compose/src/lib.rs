//! How Quarry combines and compares strategies, as pure functions over ranked lists:
//!
//! - [`fusion`]: reciprocal-rank fusion and weighted sums of normalised scores;
//! - [`interleave`]: team-draft interleaving (Radlinski, Kurup and Joachims, CIKM 2008) and
//!   the per-impression credit of clicks;
//! - [`assign`]: sticky, weighted arm assignment by a stable hash;
//! - [`stats`]: per-arm latency quantiles and click-through, and the interleaving verdict
//!   (Δ with its confidence interval and a binomial test).
//!
//! Nothing here runs a strategy; the host does, and hands the ranked lists in.

pub mod assign;
pub mod fusion;
pub mod interleave;
pub mod stats;
