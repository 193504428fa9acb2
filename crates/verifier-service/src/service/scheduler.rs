//! The scheduler: every tick, a round for each due host, with bounded concurrency (the
//! semaphore) and a deadline per round. Unusable hosts are never due.

use super::registry::{ApiError, Shared, Verifier};
use crate::model::VerdictRow;
use hyper::StatusCode;
use std::time::{Duration, Instant};
use tokio::sync::watch;

impl Verifier {
    /// Hosts due now, marked busy. With replicas, a host another replica holds is looked
    /// at again a second later (runs every tick over thousands of hosts: the cheap tests
    /// first, no copy of the lease set); a host claimed meanwhile is made due by its reload.
    fn take_due(&self, now: Instant) -> Vec<String> {
        let owned = self.replica.as_ref().map(|r| r.owned());
        let mut hosts = self.hosts();
        let mut due = Vec::new();
        for (n, h) in hosts.iter_mut() {
            // version -1: a refused write, wait for the reload.
            if h.busy || h.damage.is_some() || h.next_due > now || h.version < 0 {
                continue;
            }
            if owned.as_ref().is_some_and(|o| !o.contains(n)) {
                h.next_due = now + Duration::from_secs(1);
                continue;
            }
            h.busy = true;
            due.push(n.clone());
        }
        due
    }

    fn mark_busy(&self, name: &str) -> bool {
        let mut hosts = self.hosts();
        match hosts.get_mut(name) {
            Some(h) if !h.busy => {
                h.busy = true;
                true
            }
            _ => false,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn schedule(self: Shared, mut shutdown: watch::Receiver<bool>) {
        let mut iv = tokio::time::interval(Duration::from_millis(self.cfg.tick_ms.max(1)));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = iv.tick() => {}
                _ = shutdown.changed() => return,
            }
            for name in self.take_due(Instant::now()) {
                let v = self.clone();
                tokio::spawn(async move {
                    let hard = Duration::from_millis(v.cfg.timeout_ms.saturating_mul(2).max(1000));
                    if tokio::time::timeout(hard, v.attest(&name)).await.is_err() {
                        tracing::warn!(host = %name, "round exceeded its deadline");
                        let mut hosts = v.hosts();
                        if let Some(h) = hosts.get_mut(&name) {
                            h.busy = false;
                            h.conn = None;
                            h.next_due = v.next_attempt(&mut h.retry, h.spec.poll_interval_ms, true);
                        }
                    }
                });
            }
        }
    }

    /// `POST /v1/hosts/{name}/attest`: a round now (waits if one is running).
    pub async fn attest_now(self: &Shared, name: &str) -> Result<VerdictRow, ApiError> {
        if self.hosts().get(name).is_none() {
            return Err((StatusCode::NOT_FOUND, format!("no host {name}")));
        }
        self.claim_now(name).await.map_err(|e| (StatusCode::CONFLICT, e))?;
        let deadline = Instant::now() + Duration::from_millis(self.cfg.timeout_ms.saturating_mul(2));
        loop {
            match self.hosts().get(name) {
                None => return Err((StatusCode::NOT_FOUND, format!("no host {name}"))),
                Some(h) => {
                    if let Some(d) = &h.damage {
                        return Err((StatusCode::CONFLICT, format!("host {name} is unusable ({d}); reset it first")));
                    }
                }
            }
            if self.mark_busy(name) {
                return self.attest(name).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e));
            }
            if Instant::now() > deadline {
                return Err((StatusCode::SERVICE_UNAVAILABLE, "a round for this host is still running".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
