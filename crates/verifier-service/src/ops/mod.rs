//! Operating the fleet (issue 15, part 4): Prometheus metrics ([`metrics`]), exponential
//! backoff for failing hosts ([`backoff`]) and revocation webhooks ([`webhook`]).
//!
//! The service calls in at a few points only (after a round, around each database write,
//! when it sets a host's next attempt), so the round, registry and database code stay as
//! they are.

pub mod backoff;
pub mod metrics;
pub mod webhook;

use crate::db::Op;
use crate::model::{HostState, VerdictRow};
use crate::service::Verifier;
use backoff::Retry;
use metrics::{Metrics, Snapshot, HOST_STATES};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use webhook::{RevocationEvent, Webhooks};

/// The operations side of a running verifier.
pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub webhooks: Webhooks,
}

impl Ops {
    /// Errors name the setting (a bad webhook URL, a missing CA).
    pub fn new(cfg: &crate::VerifierConfig) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::default());
        let webhooks = Webhooks::start(&cfg.webhooks, metrics.clone())?;
        Ok(Self { metrics, webhooks })
    }
}

/// A host's retry view in its status JSON (`retry`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryStatus {
    /// Failed attempts (`error`, `rejected`) since the last success.
    pub consecutive_failures: u32,
    /// The wait chosen after the last attempt, milliseconds (the poll interval, or the
    /// backed-off delay while failing).
    pub delay_ms: u64,
    /// When the scheduler tries the host next, Unix milliseconds (`null`: a round is
    /// running).
    pub next_attempt_ms: Option<i64>,
}

impl RetryStatus {
    pub(crate) fn of(r: &Retry, next_due: Instant, busy: bool) -> Self {
        let left = next_due.saturating_duration_since(Instant::now());
        let at = crate::service::registry::now_ms().saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX));
        Self { consecutive_failures: r.failures, delay_ms: r.delay_ms, next_attempt_ms: (!busy).then_some(at) }
    }
}

fn db_op_name(op: &Op) -> &'static str {
    match op {
        Op::PutHost { .. } => "put_host",
        Op::DeleteHost(_) => "delete_host",
        Op::ResetState(_) => "reset_state",
        Op::Round(_) => "round",
    }
}

impl Verifier {
    /// A database write, timed for `imasnap_verifier_db_write_duration_seconds`.
    pub(crate) async fn db_write(&self, op: Op) -> Result<i64, String> {
        let name = db_op_name(&op);
        let t0 = Instant::now();
        let r = self.db.write(op).await;
        self.ops.metrics.db_write(name, t0.elapsed().as_secs_f64());
        r
    }

    /// The database writer's counters (the load bench's per-round database work).
    pub fn db_stats(&self) -> std::sync::Arc<crate::db::WriteStats> {
        self.db.stats.clone()
    }

    /// When a host that just finished an attempt (`failed` or not) is tried next: its
    /// poll interval, or the backoff while it keeps failing.
    pub(crate) fn next_attempt(&self, retry: &mut Retry, poll_ms: u64, failed: bool) -> Instant {
        Instant::now() + retry.after(&self.cfg.backoff, poll_ms, failed)
    }

    /// After a saved round: a revocation event when the host turns from good, pending or
    /// unreachable to `rejected` or `policy_violation` (not on every failing round).
    pub(crate) fn on_saved_verdict(&self, previous: HostState, row: &VerdictRow, round: u64) {
        let was_failed = matches!(previous, HostState::Rejected | HostState::PolicyViolation);
        if row.verdict.is_alert() && !was_failed {
            self.ops.webhooks.send(RevocationEvent::new(row, round, previous.as_str()));
        }
    }

    /// `GET /metrics`: the counters plus the host table's gauges, read now.
    pub fn metrics_text(&self) -> String {
        let mut snap = Snapshot { hosts: [0; 6], hosts_backing_off: 0 };
        for h in self.hosts().values() {
            if let Some(i) = HOST_STATES.iter().position(|s| *s == h.status) {
                snap.hosts[i] += 1;
            }
            if h.retry.failures > 0 {
                snap.hosts_backing_off += 1;
            }
        }
        self.ops.metrics.encode(&snap)
    }

    /// The hosts this process holds a lease on (replicas); see [`Metrics::set_leases_held`].
    pub fn set_leases_held(&self, n: u64) {
        self.ops.metrics.set_leases_held(n);
    }
}

#[cfg(test)]
mod tests {
    use crate::VerifierConfig;

    const TLS: &str =
        "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n[agent_tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n";

    #[test]
    fn configuration_with_defaults_and_durations() {
        let c = VerifierConfig::from_toml(TLS).unwrap();
        assert_eq!((c.backoff.max_ms, c.backoff.jitter_percent), (600_000, 20));
        assert!(c.webhooks.urls.is_empty());
        assert_eq!((c.webhooks.attempts, c.webhooks.retry_ms, c.webhooks.timeout_ms), (5, 1000, 10_000));
        let c = VerifierConfig::from_toml(&format!(
            "[backoff]\nmax = \"5m\"\njitter_percent = 10\n[webhooks]\nurls = [\"https://hooks.example/imasnap\"]\nca = \"/etc/imasnap/hooks-ca.pem\"\nattempts = 3\nretry = \"250ms\"\ntimeout = \"3s\"\nqueue = 10\n{TLS}"
        ))
        .unwrap();
        assert_eq!((c.backoff.max_ms, c.backoff.jitter_percent), (300_000, 10));
        assert_eq!(c.webhooks.urls, ["https://hooks.example/imasnap"]);
        assert_eq!(
            (c.webhooks.attempts, c.webhooks.retry_ms, c.webhooks.timeout_ms, c.webhooks.queue),
            (3, 250, 3000, 10)
        );
        let e = VerifierConfig::from_toml(&format!("[backoff]\nmax = \"5\"\n{TLS}")).unwrap_err();
        assert!(e.contains("backoff.max"), "{e}");
        assert!(VerifierConfig::from_toml(&format!("[webhooks]\nurl = \"http://x\"\n{TLS}")).is_err(), "unknown key");
    }
}
