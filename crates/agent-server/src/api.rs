//! The agent's HTTP API types. The evidence body (`imasnap-evidence/2`) is defined in
//! `imasnap-wire` ([`imasnap_wire::evidence`]), shared with the verifier, and re-exported
//! here; the metrics below are the agent's own.

pub use imasnap_wire::evidence::*;
use serde::{Deserialize, Serialize};

/// `GET /v1/metrics` numbers (also served as JSON by `GET /v1/health`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentMetrics {
    pub live_records: u64,
    pub live_bytes: u64,
    pub snapshots: u64,
    pub snapshot_records: u64,
    pub last_pause_seconds: f64,
    pub last_snapshot_seconds: f64,
    pub bytes_on_disk: u64,
    pub evidence_requests: u64,
    pub evidence_bytes: u64,
    pub next_index: u64,
    pub reset_count: u64,
    /// Times the kernel answered EBUSY (another process held the measurement files).
    pub kernel_busy: u64,
}

impl AgentMetrics {
    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        let mut g = |name: &str, kind: &str, help: &str, v: f64| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        };
        g("imasnap_agent_live_records", "gauge", "Records in the kernel's measurement list.", self.live_records as f64);
        g(
            "imasnap_agent_live_bytes",
            "gauge",
            "Bytes of the kernel's list (binary SHA1 form).",
            self.live_bytes as f64,
        );
        g("imasnap_agent_snapshots", "gauge", "Committed snapshots of the current boot.", self.snapshots as f64);
        g("imasnap_agent_snapshot_records", "gauge", "Records held in snapshot files.", self.snapshot_records as f64);
        g(
            "imasnap_agent_last_snapshot_pause_seconds",
            "gauge",
            "How long the kernel list was locked during the last snapshot.",
            self.last_pause_seconds,
        );
        g(
            "imasnap_agent_last_snapshot_duration_seconds",
            "gauge",
            "Wall time of the last snapshot.",
            self.last_snapshot_seconds,
        );
        g("imasnap_agent_store_bytes", "gauge", "Bytes on disk in the snapshot store.", self.bytes_on_disk as f64);
        g(
            "imasnap_agent_evidence_requests_total",
            "counter",
            "Evidence requests served.",
            self.evidence_requests as f64,
        );
        g("imasnap_agent_evidence_bytes_total", "counter", "Evidence bytes sent.", self.evidence_bytes as f64);
        g(
            "imasnap_agent_kernel_busy_total",
            "counter",
            "Cuts or recoveries postponed because another process held the measurement files (EBUSY).",
            self.kernel_busy as f64,
        );
        s
    }
}
