//! Per-call limits on strategy plugins, and the resource limiter that enforces the memory cap.

use serde::{Deserialize, Serialize};

/// Limits applied to every plugin call. All are configurable (`limits.json` in the data
/// directory); the defaults suit interactive search. Every limit a call hits is named in its
/// error, with the key to raise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one call, host work included (model runs, scans, the final
    /// commit), in milliseconds.
    pub deadline_ms: u64,
    /// Deadline of a `build` call (learning codebooks and the like takes longer than a search),
    /// in milliseconds.
    pub build_deadline_ms: u64,
    /// Linear memory one plugin instance may use, in bytes.
    pub memory_bytes: usize,
    /// Most hits a search may return.
    pub max_hits: usize,
    /// Most items, texts, images, vectors or prefixes in one host call's list argument, both ways.
    pub max_batch: usize,
    /// Most bytes in one host call's argument or result (vectors, blobs, images, logits), both ways.
    pub max_payload_bytes: usize,
    /// Plugin calls running at once across the host. The instance pool holds this many, plus
    /// a quarter more as instances made ahead of calls, plus 16 being recycled.
    pub max_instances: u32,
    /// Most concurrent calls one tenant may have; a call past it is refused at once.
    /// 0 means a quarter of `max_instances`.
    pub max_calls_per_tenant: usize,
    /// Plugin calls (and model runs) computing at once, shared fairly between tenants.
    /// 0 means one per CPU core.
    pub compute_slots: usize,
    /// Bytes of text and images one call may send to encoders, rankers and decoders in all.
    pub max_input_bytes: usize,
    /// Bytes of one text or image sent to a model.
    pub max_item_bytes: usize,
    /// Bytes one call may write to collections (fields and blobs together).
    pub max_write_bytes: usize,
    /// Most token vectors in one token set (stored, or a late-interaction query).
    pub max_tokens: usize,
    /// Most codes in one code sequence (stored, or a prefix).
    pub max_codes: usize,
    /// Most prefix tokens (prefixes x length) in one decoder step.
    pub max_decoder_tokens: usize,
    /// Most multiply-adds in one late-interaction call (query tokens x stored tokens x dimension,
    /// over all candidates).
    pub max_maxsim_work: u64,
    /// Most distinct counter names per tenant and plugin.
    pub max_counters: usize,
    /// Most log lines one call may write.
    pub max_log_lines: usize,
    /// Most bytes of log lines one call may write.
    pub max_log_bytes: usize,
    /// Experiment impressions kept per tenant for click feedback; the oldest go first.
    pub max_impressions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 10_000,
            build_deadline_ms: 600_000,
            memory_bytes: 256 << 20,
            max_hits: 10_000,
            max_batch: 4_096,
            max_payload_bytes: 64 << 20,
            max_instances: 64,
            max_calls_per_tenant: 0,
            compute_slots: 0,
            max_input_bytes: 64 << 20,
            max_item_bytes: 16 << 20,
            max_write_bytes: 64 << 20,
            max_tokens: 4_096,
            max_codes: 4_096,
            max_decoder_tokens: 65_536,
            max_maxsim_work: 1 << 31,
            max_counters: 256,
            max_log_lines: 100,
            max_log_bytes: 64 << 10,
            max_impressions: 20_000,
        }
    }
}

impl Limits {
    /// Concurrent calls one tenant may have.
    pub fn calls_per_tenant(&self) -> usize {
        match self.max_calls_per_tenant {
            0 => (self.max_instances as usize / 4).max(1),
            n => n,
        }
    }

    /// Compute slots shared by all tenants.
    pub fn compute_slots(&self) -> usize {
        match self.compute_slots {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Check the limits make a usable host.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("deadline_ms", self.deadline_ms as usize),
            ("build_deadline_ms", self.build_deadline_ms as usize),
            ("memory_bytes", self.memory_bytes),
            ("max_batch", self.max_batch),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_instances", self.max_instances as usize),
            ("max_input_bytes", self.max_input_bytes),
            ("max_item_bytes", self.max_item_bytes),
            ("max_tokens", self.max_tokens),
            ("max_codes", self.max_codes),
            ("max_decoder_tokens", self.max_decoder_tokens),
            ("max_impressions", self.max_impressions),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            anyhow::bail!("limits.{key} is 0; it must be positive");
        }
        if self.max_instances < 2 {
            anyhow::bail!("limits.max_instances is {}; a host needs at least 2 (one call and one spare)", self.max_instances);
        }
        Ok(())
    }
}

/// Enforces [`Limits::memory_bytes`] and remembers that it was hit, so a guest that dies of an
/// allocation failure is reported as over its memory cap rather than as a bare trap.
pub struct CallLimiter {
    pub memory_bytes: usize,
    pub memory_cap_hit: bool,
    /// The most linear memory the instance grew to.
    pub peak_bytes: usize,
}

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_cap_hit = true;
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
