//! `avg`: generative retrieval with visual-token ("voken") identifiers, after AVG
//! (reference code: github.com/HongruCai/AVG). [`strategy`] is the plugin; [`codebook`] and
//! [`beam`] are its core: pure Rust, tested natively, and small enough in memory to run inside
//! a capped wasm sandbox.
//!
//! How the pieces fit:
//! - [`codebook`] learns ONE shared codebook of K codewords and applies it L times to
//!   successive residuals of an item's embedding. The L nearest codes are the item's
//!   identifier; items whose identifiers are equal share one trie leaf.
//! - [`beam`] searches the identifier trie with a beam: every step asks the trie for the
//!   allowed next codes of all beam prefixes in one batched call, then asks a scorer for
//!   all extensions in one batched call. Two scorers ship: a zero-shot one (the query
//!   against the codebook reconstruction) and an adapter over an autoregressive decoder's
//!   per-prefix log-probabilities.
//!
//! Where the trie lives (host collection or memory) and where the decoder runs (host) are
//! left to the caller through the [`beam::Trie`] and [`beam::Scorer`] traits.

#![warn(missing_docs)]

pub mod beam;
pub mod codebook;
pub mod strategy;
