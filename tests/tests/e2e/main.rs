//! The end-to-end tests, one module per feature, linked into one binary: each test binary links
//! the whole host (wasmtime, ONNX Runtime), so one binary instead of thirty saves minutes of
//! linking and gigabytes of disk. `hostile` stays apart because it measures its own process's RSS.

mod bad_input;
mod batching;
mod console;
mod contract;
mod crash;
mod cross_score;
mod dense;
mod etcd_store;
mod eval;
mod experiments;
mod fields;
mod foreign_plugins;
mod generation;
mod host_imports;
mod hot_swap;
mod images;
mod keyword_boost;
mod lincir;
mod packaged_sdk;
mod plugin_new;
mod replicas;
mod rough_edges;
mod sandbox;
mod serve;
mod shapes_world;
mod slots;
mod startup;
mod strategy_calls;
mod tenants;
mod tgdt;
