//! Per-call limits on strategy plugins, and the resource limiter that enforces the memory cap.

use serde::{Deserialize, Serialize};

/// Limits applied to every plugin call. All are configurable; the defaults suit interactive search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call, host calls included, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory one plugin instance may use, in bytes.
    pub memory_bytes: usize,
    /// Most hits a search may return.
    pub max_hits: usize,
    /// Most items, texts or images in one call's list argument, both ways.
    pub max_batch: usize,
    /// Most bytes in one call's argument or result (vectors, blobs, images), both ways.
    pub max_payload_bytes: usize,
    /// Plugin instances alive at once across the host (the pool size).
    pub max_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 10_000,
            memory_bytes: 256 << 20,
            max_hits: 10_000,
            max_batch: 4_096,
            max_payload_bytes: 64 << 20,
            max_instances: 64,
        }
    }
}

/// Enforces [`Limits::memory_bytes`] and remembers that it was hit, so a guest that dies of an
/// allocation failure is reported as over its memory cap rather than as a bare trap.
pub struct CallLimiter {
    pub memory_bytes: usize,
    pub memory_cap_hit: bool,
}

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_cap_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
