//! The verifier's Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).
//!
//! A small hand-written encoder rather than the `prometheus-client` crate: the verifier has
//! a handful of fixed families with fixed label values, the agent already writes its text
//! by hand, and this keeps the dependency tree (and the fuzz lock file) unchanged.

use crate::model::{HostState, Verdict, VerdictRow};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Round latency buckets, seconds (a round is a TLS exchange, a replay and a commit).
const ROUND_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Database write buckets, seconds (a group commit is usually a few milliseconds).
const DB_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

const VERDICTS: [Verdict; 4] = [Verdict::Verified, Verdict::Rejected, Verdict::PolicyViolation, Verdict::Error];
pub(crate) const HOST_STATES: [HostState; 6] = [
    HostState::Pending,
    HostState::Verified,
    HostState::Rejected,
    HostState::PolicyViolation,
    HostState::Error,
    HostState::Unusable,
];
/// The database writes timed, by the `op` label.
pub(crate) const DB_OPS: [&str; 4] = ["round", "put_host", "reset_state", "delete_host"];
/// Webhook delivery outcomes, by the `outcome` label.
pub(crate) const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "gave_up", "dropped"];

/// A cumulative histogram with fixed buckets.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// `labels` is `k="v",` or empty.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() { String::new() } else { format!("{{{plain}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The counters and histograms the service updates; gauges that describe the host table
/// are read from it at scrape time ([`Snapshot`]).
pub struct Metrics {
    rounds: AtomicU64,
    verdicts: [AtomicU64; 4],
    round_seconds: Mutex<Histogram>,
    db_seconds: Mutex<Vec<Histogram>>,
    /// Set by a lease implementation (replicas); negative while none has: then the
    /// number of usable hosts (a single node verifies all of them).
    leases_held: AtomicI64,
    webhooks: [AtomicU64; 3],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rounds: AtomicU64::new(0),
            verdicts: Default::default(),
            round_seconds: Mutex::new(Histogram::new(ROUND_BUCKETS)),
            db_seconds: Mutex::new(DB_OPS.iter().map(|_| Histogram::new(DB_BUCKETS)).collect()),
            leases_held: AtomicI64::new(-1),
            webhooks: Default::default(),
        }
    }
}

/// What the host table says at scrape time.
pub struct Snapshot {
    /// Hosts per [`HOST_STATES`] entry.
    pub hosts: [u64; 6],
    pub hosts_backing_off: u64,
}

impl Metrics {
    /// One finished round (saved or not).
    pub fn round(&self, row: &VerdictRow) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = VERDICTS.iter().position(|v| *v == row.verdict) {
            self.verdicts[i].fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.round_seconds).observe(row.duration_ms / 1e3);
    }

    /// One database write of kind `op` (one of [`DB_OPS`]) that took `seconds`.
    pub fn db_write(&self, op: &str, seconds: f64) {
        if let Some(i) = DB_OPS.iter().position(|o| *o == op) {
            if let Some(h) = lock(&self.db_seconds).get_mut(i) {
                h.observe(seconds);
            }
        }
    }

    /// The hosts this process holds a lease on. A replica implementation calls this after
    /// every lease renewal; until one does, the gauge shows every usable host.
    pub fn set_leases_held(&self, n: u64) {
        self.leases_held.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// One webhook event's fate (one of [`WEBHOOK_OUTCOMES`]).
    pub fn webhook(&self, outcome: &str) {
        if let Some(i) = WEBHOOK_OUTCOMES.iter().position(|o| *o == outcome) {
            self.webhooks[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition (format 0.0.4).
    pub fn encode(&self, snap: &Snapshot) -> String {
        let mut s = String::with_capacity(4096);
        let p = "imasnap_verifier";
        head(&mut s, &format!("{p}_rounds_total"), "counter", "Attestation rounds finished.");
        let _ = writeln!(s, "{p}_rounds_total {}", self.rounds.load(Ordering::Relaxed));
        head(&mut s, &format!("{p}_verdicts_total"), "counter", "Round verdicts by result.");
        for (v, c) in VERDICTS.iter().zip(&self.verdicts) {
            let _ = writeln!(s, "{p}_verdicts_total{{result=\"{}\"}} {}", v.as_str(), c.load(Ordering::Relaxed));
        }
        let name = format!("{p}_round_duration_seconds");
        head(&mut s, &name, "histogram", "Wall time of one round (fetch, judge, save).");
        lock(&self.round_seconds).write(&mut s, &name, "");
        head(&mut s, &format!("{p}_hosts"), "gauge", "Registered hosts by status.");
        for (st, n) in HOST_STATES.iter().zip(snap.hosts) {
            let _ = writeln!(s, "{p}_hosts{{status=\"{}\"}} {n}", st.as_str());
        }
        head(
            &mut s,
            &format!("{p}_hosts_backing_off"),
            "gauge",
            "Hosts whose last rounds failed, retried with exponential backoff.",
        );
        let _ = writeln!(s, "{p}_hosts_backing_off {}", snap.hosts_backing_off);
        head(&mut s, &format!("{p}_leases_held"), "gauge", "Hosts this process verifies (holds the lease of).");
        let leases = self.leases_held.load(Ordering::Relaxed);
        let leases = u64::try_from(leases).unwrap_or_else(|_| {
            let unusable = snap.hosts[5];
            snap.hosts.iter().sum::<u64>() - unusable
        });
        let _ = writeln!(s, "{p}_leases_held {leases}");
        let name = format!("{p}_db_write_duration_seconds");
        head(&mut s, &name, "histogram", "Database writes, from submission to commit (group commit included), by op.");
        for (op, h) in DB_OPS.iter().zip(lock(&self.db_seconds).iter()) {
            h.write(&mut s, &name, &format!("op=\"{op}\","));
        }
        head(&mut s, &format!("{p}_webhook_events_total"), "counter", "Revocation webhook deliveries by outcome.");
        for (o, c) in WEBHOOK_OUTCOMES.iter().zip(&self.webhooks) {
            let _ = writeln!(s, "{p}_webhook_events_total{{outcome=\"{o}\"}} {}", c.load(Ordering::Relaxed));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name{labels} value` lines (comments skipped).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn exposition_text() {
        let m = Metrics::default();
        for (v, ms) in [(Verdict::Verified, 3.0), (Verdict::Verified, 40.0), (Verdict::Error, 2000.0)] {
            m.round(&VerdictRow { verdict: v, duration_ms: ms, ..Default::default() });
        }
        m.db_write("round", 0.002);
        m.db_write("unknown op", 1.0);
        let snap = Snapshot { hosts: [1, 2, 0, 0, 1, 1], hosts_backing_off: 1 };
        let t = m.encode(&snap);
        let s = samples(&t);
        let get = |k: &str| s.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("imasnap_verifier_rounds_total"), Some(3.0));
        assert_eq!(get("imasnap_verifier_verdicts_total{result=\"verified\"}"), Some(2.0));
        assert_eq!(get("imasnap_verifier_verdicts_total{result=\"error\"}"), Some(1.0));
        assert_eq!(get("imasnap_verifier_round_duration_seconds_bucket{le=\"0.005\"}"), Some(1.0));
        assert_eq!(get("imasnap_verifier_round_duration_seconds_bucket{le=\"0.05\"}"), Some(2.0));
        assert_eq!(get("imasnap_verifier_round_duration_seconds_bucket{le=\"+Inf\"}"), Some(3.0));
        assert_eq!(get("imasnap_verifier_round_duration_seconds_count"), Some(3.0));
        assert_eq!(get("imasnap_verifier_hosts{status=\"verified\"}"), Some(2.0));
        // No lease implementation yet: every usable host.
        assert_eq!(get("imasnap_verifier_leases_held"), Some(4.0));
        m.set_leases_held(7);
        assert_eq!(samples(&m.encode(&snap)).iter().find(|(n, _)| n == "imasnap_verifier_leases_held").unwrap().1, 7.0);
        assert_eq!(get("imasnap_verifier_db_write_duration_seconds_bucket{op=\"round\",le=\"0.0025\"}"), Some(1.0));
        assert_eq!(get("imasnap_verifier_db_write_duration_seconds_count{op=\"round\"}"), Some(1.0));
        assert_eq!(get("imasnap_verifier_db_write_duration_seconds_count{op=\"put_host\"}"), Some(0.0));
        // Every family has HELP and TYPE once.
        for fam in ["rounds_total", "verdicts_total", "round_duration_seconds", "hosts", "leases_held"] {
            assert_eq!(t.matches(&format!("# TYPE imasnap_verifier_{fam} ")).count(), 1, "{fam}");
        }
    }
}
