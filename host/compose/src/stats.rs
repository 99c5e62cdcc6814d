//! What an experiment reports per arm, and the verdict of an interleaving experiment.

use hdrhistogram::Histogram;
use statrs::distribution::{Binomial, DiscreteCDF};

/// Calls, errors, latency and click-through of one arm.
#[derive(Debug, Clone)]
pub struct ArmStats {
    pub calls: u64,
    pub errors: u64,
    /// Microseconds, 1 µs to 10 min at 2 significant digits (about 12 kB, whatever the traffic).
    latency_us: Histogram<u32>,
    /// Impressions this arm served (or took part in, when interleaved).
    pub impressions: u64,
    /// Of those, the ones where a hit of this arm was clicked.
    pub clicked: u64,
}

/// Latency quantiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Default for ArmStats {
    fn default() -> Self {
        ArmStats { calls: 0, errors: 0, latency_us: Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds"), impressions: 0, clicked: 0 }
    }
}

impl ArmStats {
    /// Record one call: its latency, and whether it failed.
    pub fn record(&mut self, latency: std::time::Duration, failed: bool) {
        self.calls += 1;
        self.errors += u64::from(failed);
        self.latency_us.saturating_record(latency.as_micros().clamp(1, 600_000_000) as u64);
    }

    pub fn latency_ms(&self) -> Quantiles {
        let at = |q: f64| if self.latency_us.is_empty() { 0.0 } else { self.latency_us.value_at_quantile(q) as f64 / 1000.0 };
        Quantiles { p50: at(0.50), p95: at(0.95), p99: at(0.99) }
    }

    /// Clicked impressions over impressions (0 before any impression).
    pub fn click_through(&self) -> f64 {
        if self.impressions == 0 { 0.0 } else { self.clicked as f64 / self.impressions as f64 }
    }
}

/// The verdict of an interleaving experiment between arms A and B.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub impressions: u64,
    pub wins_a: u64,
    pub wins_b: u64,
    /// Impressions neither arm won (no clicks, or as many on each side).
    pub ties: u64,
    /// Δ_AB = (wins_A + ties / 2) / impressions − 0.5: positive when users prefer A.
    pub delta: f64,
    /// 95% confidence interval of Δ (normal approximation over per-impression credits 1, ½, 0).
    pub ci: (f64, f64),
    /// Two-sided exact binomial test of wins_A against wins_B (p = ½ under no preference).
    pub p_value: f64,
}

pub fn verdict(wins_a: u64, wins_b: u64, ties: u64) -> Verdict {
    let n = wins_a + wins_b + ties;
    if n == 0 {
        return Verdict { impressions: 0, wins_a, wins_b, ties, delta: 0.0, ci: (-0.5, 0.5), p_value: 1.0 };
    }
    let nf = n as f64;
    let mean = (wins_a as f64 + 0.5 * ties as f64) / nf;
    // Sample variance of credits in {1, ½, 0} around their mean.
    let sum_sq = wins_a as f64 * (1.0 - mean).powi(2) + ties as f64 * (0.5 - mean).powi(2) + wins_b as f64 * mean.powi(2);
    let se = if n > 1 { (sum_sq / (nf - 1.0) / nf).sqrt() } else { 0.5 };
    let delta = mean - 0.5;
    // Δ lies in [−½, ½] whatever the sample; so does its interval.
    let ci = ((delta - 1.96 * se).max(-0.5), (delta + 1.96 * se).min(0.5));
    Verdict { impressions: n, wins_a, wins_b, ties, delta, ci, p_value: binomial_test(wins_a, wins_b) }
}

/// Two-sided exact binomial test of `x` successes against `y` failures at p = ½.
pub fn binomial_test(x: u64, y: u64) -> f64 {
    let n = x + y;
    if n == 0 {
        return 1.0;
    }
    let binomial = Binomial::new(0.5, n).expect("p = 0.5 is a valid probability");
    (2.0 * binomial.cdf(x.min(y))).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_and_click_through() {
        let mut arm = ArmStats::default();
        for ms in 1..=100u64 {
            arm.record(Duration::from_millis(ms), ms % 10 == 0);
        }
        assert_eq!((arm.calls, arm.errors), (100, 10));
        let q = arm.latency_ms();
        assert!((q.p50 - 50.0).abs() < 0.6 && (q.p95 - 95.0).abs() < 1.0 && (q.p99 - 99.0).abs() < 1.0, "{q:?}");
        arm.impressions = 8;
        arm.clicked = 2;
        assert_eq!(arm.click_through(), 0.25);
        assert_eq!(ArmStats::default().latency_ms(), Quantiles::default());
    }

    #[test]
    fn binomial_test_matches_reference_values() {
        // scipy.stats.binomtest(k, n, 0.5).pvalue
        assert!((binomial_test(7, 3) - 0.34375).abs() < 1e-9);
        assert!((binomial_test(60, 40) - 0.056888933).abs() < 1e-6);
        assert!((binomial_test(5, 5) - 1.0).abs() < 1e-12);
        assert!(binomial_test(30, 0) < 2e-9);
        assert_eq!(binomial_test(0, 0), 1.0);
    }

    #[test]
    fn delta_counts_ties_as_half_and_its_interval_covers_zero_without_preference() {
        let v = verdict(30, 10, 60);
        assert!((v.delta - ((30.0 + 30.0) / 100.0 - 0.5)).abs() < 1e-12);
        assert!(v.ci.0 > 0.0, "{v:?}");
        let even = verdict(25, 25, 50);
        assert_eq!(even.delta, 0.0);
        assert!(even.ci.0 < 0.0 && even.ci.1 > 0.0);
        assert_eq!(even.p_value, 1.0);
        let one = verdict(0, 1, 0);
        assert_eq!((one.delta, one.ci.0), (-0.5, -0.5));
        assert!(one.ci.1 <= 0.5);
    }
}
