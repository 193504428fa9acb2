//! Operating the fleet (issue 15, part 4): Prometheus metrics ([`metrics`]).
//!
//! The service calls in at a few points only (after a round, around each database write,
//! when it sets a host's next attempt), so the round, registry and database code stay as
//! they are.

pub mod metrics;

use crate::db::Op;
use crate::service::Verifier;
use metrics::{Metrics, Snapshot, HOST_STATES};
use std::sync::Arc;
use std::time::Instant;

/// The operations side of a running verifier.
pub struct Ops {
    pub metrics: Arc<Metrics>,
}

impl Ops {
    /// Errors name the setting.
    pub fn new(_cfg: &crate::VerifierConfig) -> Result<Self, String> {
        Ok(Self { metrics: Arc::new(Metrics::default()) })
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
    pub(crate) async fn db_write(&self, op: Op) -> Result<(), String> {
        let name = db_op_name(&op);
        let t0 = Instant::now();
        let r = self.db.write(op).await;
        self.ops.metrics.db_write(name, t0.elapsed().as_secs_f64());
        r
    }

    /// `GET /metrics`: the counters plus the host table's gauges, read now.
    pub fn metrics_text(&self) -> String {
        let mut snap = Snapshot { hosts: [0; 6] };
        for h in self.hosts().values() {
            if let Some(i) = HOST_STATES.iter().position(|s| *s == h.status) {
                snap.hosts[i] += 1;
            }
        }
        self.ops.metrics.encode(&snap)
    }

    /// The hosts this process holds a lease on (replicas); see [`Metrics::set_leases_held`].
    pub fn set_leases_held(&self, n: u64) {
        self.ops.metrics.set_leases_held(n);
    }
}
