//! Retrying failing hosts with exponential backoff and jitter: an unreachable or rejected
//! host is asked again after `min(poll × 2^failures, max)` ± `jitter_percent`, not at its
//! normal poll rate, so a dead part of the fleet neither floods the logs and the database
//! nor takes the round slots from healthy hosts. A success resets it.

use crate::model::Verdict;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

fn d_max() -> u64 {
    600_000
}
fn d_jitter() -> u32 {
    20
}

/// `[backoff]` in `verifier.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Longest wait between a failing host's attempts, milliseconds (`max = "10m"`). Never
    /// shorter than the host's poll interval; `"0s"` turns backoff off.
    #[serde(default = "d_max")]
    pub max_ms: u64,
    /// Each backed-off delay is spread by up to this many percent either way, so hosts
    /// that failed together (a network outage) do not come back in lockstep.
    #[serde(default = "d_jitter")]
    pub jitter_percent: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { max_ms: d_max(), jitter_percent: d_jitter() }
    }
}

/// Whether a verdict counts as a failed attempt: no evidence (`error`) or evidence that
/// does not prove the log (`rejected`). A policy violation is a proven log whose records
/// break the policy: the host is polled on, so that later records are judged on time.
pub fn is_failure(v: Verdict) -> bool {
    matches!(v, Verdict::Error | Verdict::Rejected)
}

/// A host's retry state (in memory; a restart polls every host at once).
#[derive(Clone, Copy, Debug, Default)]
pub struct Retry {
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The wait chosen after the last attempt, milliseconds.
    pub delay_ms: u64,
}

impl BackoffConfig {
    /// The wait before the next attempt of a host polled every `poll_ms` that has failed
    /// `failures` times in a row.
    pub fn delay(&self, poll_ms: u64, failures: u32, rng: &mut impl Rng) -> Duration {
        if failures == 0 || self.max_ms == 0 {
            return Duration::from_millis(poll_ms);
        }
        let cap = self.max_ms.max(poll_ms);
        let base = poll_ms.saturating_mul(1u64 << failures.min(40)).min(cap);
        let j = u64::from(self.jitter_percent.min(100));
        let lo = base.saturating_mul(100 - j) / 100;
        let hi = base.saturating_mul(100 + j) / 100;
        Duration::from_millis(if hi > lo { rng.gen_range(lo..=hi) } else { base })
    }
}

impl Retry {
    /// Records the outcome of an attempt and returns the wait before the next one.
    pub fn after(&mut self, cfg: &BackoffConfig, poll_ms: u64, failed: bool) -> Duration {
        self.failures = if failed { self.failures.saturating_add(1) } else { 0 };
        let d = cfg.delay(poll_ms, self.failures, &mut rand::thread_rng());
        self.delay_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn doubles_up_to_the_cap_with_jitter() {
        let c = BackoffConfig { max_ms: 10_000, jitter_percent: 20 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(c.delay(1000, 0, &mut rng), Duration::from_millis(1000), "no failure: the poll interval");
        for (failures, base) in [(1u32, 2000u64), (2, 4000), (3, 8000), (4, 10_000), (30, 10_000), (200, 10_000)] {
            for _ in 0..50 {
                let d = c.delay(1000, failures, &mut rng).as_millis() as u64;
                assert!(d >= base * 8 / 10 && d <= base * 12 / 10, "{failures} failures: {d} ms, base {base}");
            }
        }
        // The jitter spreads: not every draw is the same.
        let draws: std::collections::HashSet<_> = (0..20).map(|_| c.delay(1000, 2, &mut rng)).collect();
        assert!(draws.len() > 5);
        // The cap is never below the poll interval; 0 turns backoff off.
        let c2 = BackoffConfig { max_ms: 500, jitter_percent: 0 };
        assert_eq!(c2.delay(1000, 5, &mut rng), Duration::from_millis(1000));
        let off = BackoffConfig { max_ms: 0, jitter_percent: 20 };
        assert_eq!(off.delay(1000, 5, &mut rng), Duration::from_millis(1000));
    }

    #[test]
    fn success_resets() {
        let c = BackoffConfig { max_ms: 60_000, jitter_percent: 0 };
        let mut r = Retry::default();
        assert_eq!(r.after(&c, 100, true), Duration::from_millis(200));
        assert_eq!(r.after(&c, 100, true), Duration::from_millis(400));
        assert_eq!(r.failures, 2);
        assert_eq!(r.after(&c, 100, false), Duration::from_millis(100));
        assert_eq!((r.failures, r.delay_ms), (0, 100));
        assert!(is_failure(Verdict::Error) && is_failure(Verdict::Rejected));
        assert!(!is_failure(Verdict::Verified) && !is_failure(Verdict::PolicyViolation));
    }
}
