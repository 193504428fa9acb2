//! What the REST API and the database exchange: host registrations, per-host status and
//! verdict rows.

use serde::{Deserialize, Serialize};

/// What to do when the verifier first sees a host (or its state is gone) and the agent
/// has already taken snapshots: a per-host choice, stored and shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateJoin {
    /// Replay from record 0 through every snapshot (fetches the whole history once).
    #[default]
    FullHistory,
    /// Start from the marker heading the live list, trusting it on first use; the host is
    /// then shown with `history_verified: false` and the accepted marker.
    MarkerTofu,
}

impl LateJoin {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::FullHistory => "full_history",
            Self::MarkerTofu => "marker_tofu",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full_history" => Some(Self::FullHistory),
            "marker_tofu" => Some(Self::MarkerTofu),
            _ => None,
        }
    }
}

fn d_poll() -> u64 {
    30_000
}

/// A host as the operator registers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Unique name: letters, digits, `.`, `-`, `_` (at most 64).
    pub name: String,
    /// Agent address, `host:port`.
    pub address: String,
    /// TLS name the agent's certificate must carry; default: the host part of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Trusted AK public key (PEM, or hex TPM2B_PUBLIC). Required unless `tofu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak: Option<String>,
    /// Enrol the AK the agent presents in its first quote (trust on first use).
    #[serde(default)]
    pub tofu: bool,
    /// Runtime policy document (Keylime JSON runtime policy or sha256sum-style allowlist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The agent's TLS certificate (PEM): when set, the connection must present exactly it
    /// (pinning, on top of the CA check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_cert: Option<String>,
    #[serde(default = "d_poll")]
    pub poll_interval_ms: u64,
    #[serde(default)]
    pub late_join: LateJoin,
}

/// `PATCH /v1/hosts/{name}`: fields to change (`null`/absent = unchanged; an empty string
/// clears `policy`, `agent_cert` and `server_name`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPatch {
    pub address: Option<String>,
    pub server_name: Option<String>,
    pub ak: Option<String>,
    pub tofu: Option<bool>,
    pub policy: Option<String>,
    pub agent_cert: Option<String>,
    pub poll_interval_ms: Option<u64>,
    pub late_join: Option<LateJoin>,
}

pub const MAX_POLICY: usize = 32 << 20;
pub const MAX_PEM: usize = 64 << 10;

impl HostSpec {
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        {
            return Err(format!("host name {n:?}: 1-64 of letters, digits, '.', '-', '_'"));
        }
        if self.address.len() > 255 || !self.address.contains(':') {
            return Err(format!("address {:?} must be host:port", self.address));
        }
        if self.ak.is_none() && !self.tofu {
            return Err("either an AK (ak) or trust on first use (tofu: true) is required".into());
        }
        if let Some(ak) = &self.ak {
            if ak.len() > MAX_PEM {
                return Err("ak too large".into());
            }
            parse_ak(ak)?;
        }
        if self.policy.as_ref().is_some_and(|p| p.len() > MAX_POLICY) {
            return Err(format!("policy larger than {MAX_POLICY} bytes"));
        }
        if let Some(c) = &self.agent_cert {
            if c.len() > MAX_PEM {
                return Err("agent_cert too large".into());
            }
            pinned_der(c)?;
        }
        if !(100..=86_400_000).contains(&self.poll_interval_ms) {
            return Err("poll_interval_ms must be 100 to 86400000".into());
        }
        Ok(())
    }

    pub fn apply(&mut self, p: HostPatch) {
        let opt = |s: String| if s.is_empty() { None } else { Some(s) };
        if let Some(a) = p.address {
            self.address = a;
        }
        if let Some(s) = p.server_name {
            self.server_name = opt(s);
        }
        if let Some(a) = p.ak {
            self.ak = opt(a);
        }
        if let Some(t) = p.tofu {
            self.tofu = t;
        }
        if let Some(pol) = p.policy {
            self.policy = opt(pol);
        }
        if let Some(c) = p.agent_cert {
            self.agent_cert = opt(c);
        }
        if let Some(i) = p.poll_interval_ms {
            self.poll_interval_ms = i;
        }
        if let Some(l) = p.late_join {
            self.late_join = l;
        }
    }

    pub fn tls_name(&self) -> String {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        let host = self.address.rsplit_once(':').map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']').to_string()
    }
}

/// An AK from PEM or hex TPM2B_PUBLIC.
pub fn parse_ak(s: &str) -> Result<imasnap_tpm::AkPublic, String> {
    imasnap_wire::ak::parse_text(s).map_err(|e| format!("ak: {}", e.detail))
}

/// DER of a pinned certificate.
pub fn pinned_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| format!("agent_cert: {e}"))
}

/// One attestation round's outcome, as stored and shown.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerdictRow {
    #[serde(default)]
    pub id: i64,
    pub host: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `verified`, `rejected` (the evidence is wrong), `policy_violation` (proven records
    /// break the runtime policy) or `error` (no evidence: unreachable, timeout, refused).
    pub verdict: String,
    /// Failure kind (engine reason, `policy`, or the error class).
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// Global record index the failure names, if any.
    pub record: Option<u64>,
    pub checkpoint_before: Option<u64>,
    pub checkpoint: Option<u64>,
    pub records_replayed: u64,
    pub tail_records: u64,
    pub mode: Option<String>,
    /// Why the engine started over (cold boot, new boot_aggregate, no state).
    pub restart: Option<String>,
    pub duration_ms: f64,
    /// Every policy failure (record index, path, reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_failures: Vec<serde_json::Value>,
}

/// What `GET /v1/hosts/{name}` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostStatus {
    pub spec: HostSpec,
    /// `pending` (never attested), `verified`, `rejected`, `policy_violation`, `error`.
    pub status: String,
    /// Where the trusted AK came from: `registered`, `tofu` (enrolled from a first quote).
    pub ak_source: Option<String>,
    pub ak_enrolled_pem: Option<String>,
    pub checkpoint: Option<u64>,
    pub reset_count: Option<u64>,
    pub boot_aggregate_sha1: Option<String>,
    pub history_verified: Option<bool>,
    pub verified_snapshots: Option<u64>,
    /// With `late_join = marker_tofu`: the marker accepted on first use.
    pub accepted_marker: Option<serde_json::Value>,
    pub rounds: u64,
    pub last: Option<VerdictRow>,
    /// First unacknowledged rejection or policy violation (sticky until the next
    /// registration update).
    pub alert: Option<VerdictRow>,
    /// Keys learned from this boot's log (measured into a keyring the policy lists); they
    /// verify later ima-sig signatures.
    #[serde(default)]
    pub learned_keys: Vec<crate::policy::LearnedKey>,
}
