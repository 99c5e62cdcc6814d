//! Per-tenant quotas: a request-rate token bucket, a cap on requests in flight, and one compute
//! budget that the host's compute meter (guest time plus apportioned inference) draws down.

use crate::config::Quotas;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `level` tokens, refilled at `rate` per second up to `cap`. The level may go
/// below zero when work is charged after it ran; nothing is admitted until it is positive again.
#[derive(Debug, Clone)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(cap: f64, now: Instant) -> Self {
        Bucket { level: cap, at: now }
    }

    fn refill(&mut self, rate: f64, cap: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * rate).min(cap);
        self.at = now;
    }

    /// How long until the level reaches `need` at `rate`.
    fn wait_for(&self, need: f64, rate: f64) -> Duration {
        Duration::from_secs_f64(((need - self.level) / rate).clamp(0.0, 86_400.0))
    }
}

/// Which quota refused a request, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub enum Exceeded {
    RequestsPerSecond { limit: f64, retry_after: Duration },
    ConcurrentCalls { limit: u32 },
    Compute { per_second: f64, retry_after: Duration },
}

impl Exceeded {
    /// The quota's key, as in the tenant's `quotas` object.
    pub fn quota(&self) -> &'static str {
        match self {
            Exceeded::RequestsPerSecond { .. } => "requests_per_second",
            Exceeded::ConcurrentCalls { .. } => "concurrent_calls",
            Exceeded::Compute { .. } => "compute_per_second",
        }
    }

    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_seconds(&self) -> u64 {
        let wait = match self {
            Exceeded::RequestsPerSecond { retry_after, .. } | Exceeded::Compute { retry_after, .. } => *retry_after,
            Exceeded::ConcurrentCalls { .. } => Duration::from_secs(1),
        };
        wait.as_secs_f64().ceil().max(1.0) as u64
    }

    pub fn message(&self, tenant: &str) -> String {
        match self {
            Exceeded::RequestsPerSecond { limit, .. } => format!(
                "tenant `{tenant}` is over its quota `requests_per_second` ({limit}/s); retry after {} s or ask the operator to raise it",
                self.retry_after_seconds()
            ),
            Exceeded::ConcurrentCalls { limit } => {
                format!("tenant `{tenant}` already has {limit} requests in flight (quota `concurrent_calls`); wait for one to finish")
            }
            Exceeded::Compute { per_second, .. } => format!(
                "tenant `{tenant}` spent its compute budget (quota `compute_per_second`: {per_second} s of guest and inference time per second); retry after {} s",
                self.retry_after_seconds()
            ),
        }
    }
}

struct Usage {
    requests: Bucket,
    compute: Bucket,
    /// The tenant's compute meter reading already charged to `compute`.
    charged: Duration,
    in_flight: Arc<AtomicU32>,
}

/// Every tenant's quota state.
#[derive(Default)]
pub struct QuotaBook {
    tenants: Mutex<HashMap<String, Usage>>,
}

/// A request in flight; counts against `concurrent_calls` until dropped.
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A tenant's quota state, for reporting.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// Requests the rate bucket holds now.
    pub requests_available: f64,
    pub in_flight: u32,
    /// Compute seconds the budget holds now (negative after work that overran it).
    pub compute_available_seconds: f64,
    /// Compute seconds used since the server started.
    pub compute_used_seconds: f64,
}

impl QuotaBook {
    /// Admit one request of `tenant`, whose compute meter reads `compute_used`: charge the
    /// compute used since the last look, then check the budget (when the request `computes`:
    /// runs plugins or models), the rate and the concurrency.
    pub fn admit(&self, tenant: &str, quotas: &Quotas, compute_used: Duration, computes: bool) -> Result<InFlight, Exceeded> {
        let now = Instant::now();
        let mut tenants = self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let usage = tenants.entry(tenant.to_string()).or_insert_with(|| Usage {
            requests: Bucket::full(quotas.burst, now),
            compute: Bucket::full(quotas.compute_burst_seconds, now),
            charged: compute_used,
            in_flight: Arc::default(),
        });
        usage.requests.refill(quotas.requests_per_second, quotas.burst, now);
        usage.compute.refill(quotas.compute_per_second, quotas.compute_burst_seconds, now);
        usage.compute.level -= compute_used.saturating_sub(usage.charged).as_secs_f64();
        usage.charged = usage.charged.max(compute_used);
        if computes && usage.compute.level <= 0.0 {
            let retry_after = usage.compute.wait_for(quotas.compute_per_second.min(quotas.compute_burst_seconds) * 0.1, quotas.compute_per_second);
            return Err(Exceeded::Compute { per_second: quotas.compute_per_second, retry_after });
        }
        if usage.requests.level < 1.0 {
            return Err(Exceeded::RequestsPerSecond { limit: quotas.requests_per_second, retry_after: usage.requests.wait_for(1.0, quotas.requests_per_second) });
        }
        if usage.in_flight.load(Ordering::Acquire) >= quotas.concurrent_calls {
            return Err(Exceeded::ConcurrentCalls { limit: quotas.concurrent_calls });
        }
        usage.requests.level -= 1.0;
        usage.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(InFlight(usage.in_flight.clone()))
    }

    /// Charge the compute `tenant` used since the last look, and say whether its budget is
    /// spent (asked before each model run, so work queued earlier stops when it is).
    pub fn over_budget(&self, tenant: &str, quotas: &Quotas, compute_used: Duration) -> Option<Exceeded> {
        let now = Instant::now();
        let mut tenants = self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let usage = tenants.get_mut(tenant)?;
        usage.compute.refill(quotas.compute_per_second, quotas.compute_burst_seconds, now);
        usage.compute.level -= compute_used.saturating_sub(usage.charged).as_secs_f64();
        usage.charged = usage.charged.max(compute_used);
        (usage.compute.level <= 0.0).then(|| Exceeded::Compute {
            per_second: quotas.compute_per_second,
            retry_after: usage.compute.wait_for(quotas.compute_per_second.min(quotas.compute_burst_seconds) * 0.1, quotas.compute_per_second),
        })
    }

    pub fn report(&self, tenant: &str, quotas: &Quotas, compute_used: Duration) -> UsageReport {
        let now = Instant::now();
        let tenants = self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match tenants.get(tenant) {
            Some(usage) => {
                let (mut requests, mut compute) = (usage.requests.clone(), usage.compute.clone());
                requests.refill(quotas.requests_per_second, quotas.burst, now);
                compute.refill(quotas.compute_per_second, quotas.compute_burst_seconds, now);
                UsageReport {
                    requests_available: requests.level,
                    in_flight: usage.in_flight.load(Ordering::Acquire),
                    compute_available_seconds: compute.level - compute_used.saturating_sub(usage.charged).as_secs_f64(),
                    compute_used_seconds: compute_used.as_secs_f64(),
                }
            }
            None => UsageReport {
                requests_available: quotas.burst,
                in_flight: 0,
                compute_available_seconds: quotas.compute_burst_seconds,
                compute_used_seconds: compute_used.as_secs_f64(),
            },
        }
    }

    /// Forget a deleted tenant.
    pub fn forget(&self, tenant: &str) {
        self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        Quotas { requests_per_second: 10.0, burst: 3.0, concurrent_calls: 2, compute_per_second: 0.5, compute_burst_seconds: 1.0, plugin_memory_bytes: None, stored_bytes: None, plugin_bytes: 1 << 30 }
    }

    #[test]
    fn the_rate_bucket_refuses_past_the_burst_and_names_the_wait() {
        let book = QuotaBook::default();
        let held: Vec<_> = (0..2).map(|_| book.admit("a", &quotas(), Duration::ZERO, true).unwrap()).collect();
        let third = book.admit("a", &quotas(), Duration::ZERO, true);
        assert_eq!(third.err().map(|e| e.quota()), Some("concurrent_calls"));
        drop(held);
        book.admit("a", &quotas(), Duration::ZERO, true).unwrap();
        let err = book.admit("a", &quotas(), Duration::ZERO, true).err().unwrap();
        assert_eq!(err.quota(), "requests_per_second");
        assert_eq!(err.retry_after_seconds(), 1);
        assert!(err.message("a").contains("`requests_per_second` (10/s)"), "{}", err.message("a"));
        // Another tenant has its own buckets.
        book.admit("b", &quotas(), Duration::ZERO, true).unwrap();
    }

    #[test]
    fn compute_used_since_the_last_look_draws_the_budget_down() {
        let book = QuotaBook::default();
        drop(book.admit("a", &quotas(), Duration::from_secs(100), true));
        // 100 s were used before the first look: not this budget's business.
        drop(book.admit("a", &quotas(), Duration::from_secs(100), true));
        assert!(book.over_budget("a", &quotas(), Duration::from_secs(100)).is_none());
        assert!(book.over_budget("nobody", &quotas(), Duration::from_secs(103)).is_none(), "a tenant never admitted is not gated");
        // 3 s more (work admitted earlier, still running): the 1 s budget is 2 s short, which
        // takes 4 s to refill at 0.5/s; that work's next model run is refused.
        let spent = book.over_budget("a", &quotas(), Duration::from_secs(103)).expect("the budget is spent");
        assert_eq!(spent.quota(), "compute_per_second");
        // Requests that compute nothing (reads) are not held to the budget.
        drop(book.admit("a", &quotas(), Duration::from_secs(103), false).unwrap());
        let err = book.admit("a", &quotas(), Duration::from_secs(103), true).err().unwrap();
        assert_eq!(err.quota(), "compute_per_second");
        assert!((4..=5).contains(&err.retry_after_seconds()), "{}", err.retry_after_seconds());
        // Charged once: a second look does not charge the same seconds again.
        let report = book.report("a", &quotas(), Duration::from_secs(103));
        assert!(report.compute_available_seconds > -2.1 && report.compute_available_seconds < -1.9, "{report:?}");
    }
}
