//! What the REST API and the database exchange: host registrations, per-host status and
//! verdict rows.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `format` field of every JSON object the REST API answers with: scripts can check
/// it before reading the rest.
pub const API_FORMAT: &str = "imasnap-verifier-api/1";

/// One round's outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The evidence proved the log up to the new checkpoint.
    Verified,
    /// The evidence is wrong (replay, quote, AK, claims).
    Rejected,
    /// The proven records break the host's runtime policy.
    PolicyViolation,
    /// No evidence to judge: unreachable, timeout, refused, too large. Also the value of a
    /// row that has not been decided yet.
    #[default]
    Error,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Rejected => "rejected",
            Self::PolicyViolation => "policy_violation",
            Self::Error => "error",
        }
    }
    /// A finding about the host itself (raises the sticky alert).
    pub fn is_alert(&self) -> bool {
        matches!(self, Self::Rejected | Self::PolicyViolation)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host's status: its last verdict, `pending` before the first round, or `unusable` when
/// its stored data cannot be read (see [`Damage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Pending,
    Verified,
    Rejected,
    PolicyViolation,
    Error,
    Unusable,
}

impl HostState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Rejected => "rejected",
            Self::PolicyViolation => "policy_violation",
            Self::Error => "error",
            Self::Unusable => "unusable",
        }
    }
    /// The stored `host_state.status` text; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Verified, Self::Rejected, Self::PolicyViolation, Self::Error, Self::Unusable]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl From<Verdict> for HostState {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Verified => Self::Verified,
            Verdict::Rejected => Self::Rejected,
            Verdict::PolicyViolation => Self::PolicyViolation,
            Verdict::Error => Self::Error,
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a host is `unusable`: the stored value that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// SQLite table (`hosts`, `host_state`).
    pub table: String,
    /// Its column (`spec`, `state`, `learned_keys`, `ak_pem`, `status`).
    pub column: String,
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.table, self.column, self.reason)
    }
}

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
    /// Unique name: dot-separated labels of letters, digits, `-`, `_` (see [`check_name`]).
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
    /// The host is a simulation (kernel model and/or soft TPM): only then is evidence
    /// whose header says `simulated` accepted. Off by default: a real machine.
    #[serde(default)]
    pub simulated: bool,
    /// Trust no AK until it is bound to the TPM's endorsement key by credential
    /// activation (`POST /v1/hosts/{name}/enrol`); rounds before that fail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ek_activate: bool,
    /// This host's EK, pinned: the SHA-256 of its SubjectPublicKeyInfo (hex, as the
    /// enrolment reports it) or its TPM2B_PUBLIC (hex). For TPMs without an EK certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek: Option<String>,
    /// Written by the verifier when an enrolment succeeds (never accepted from a client):
    /// the EK the AK in `ak` was proven to share a TPM with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_enrolment: Option<Box<AkEnrolment>>,
}

/// How the AK in a registration was enrolled by EK credential activation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkEnrolment {
    /// SHA-256 of the EK's SubjectPublicKeyInfo, hex.
    pub ek_fingerprint: String,
    /// `rsa-2048`, `ecc-p256`.
    pub ek_kind: String,
    /// Why the EK was trusted: `ek_cert` (chains to a configured CA), `pinned` (the
    /// host's `ek`), `trusted_list` (`[ek] trusted` in verifier.toml).
    pub ek_trust: String,
    /// With `ek_cert`: the CA that issued the EK certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_issuer: Option<String>,
    /// Unix milliseconds.
    pub at_ms: i64,
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
    pub simulated: Option<bool>,
    pub ek_activate: Option<bool>,
    pub ek: Option<String>,
}

pub const MAX_POLICY: usize = 32 << 20;
pub const MAX_PEM: usize = 64 << 10;

impl HostSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        check_address(&self.address)?;
        if let Some(n) = &self.server_name {
            // An empty name would make TLS check nothing useful; absent means "from address".
            if n.is_empty() || n.len() > 253 || rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
                return Err(format!("server_name {n:?} is not a DNS name or IP address"));
            }
        }
        if self.ak.is_none() && !self.tofu && !self.ek_activate {
            return Err("an AK (ak), EK credential activation (ek_activate: true) or trust on first use (tofu: true) \
                 is required"
                .into());
        }
        if self.tofu && self.ek_activate {
            return Err("tofu and ek_activate exclude each other: choose one way to trust the AK".into());
        }
        if self.ak_enrolment.is_some() && self.ak.is_none() {
            return Err("ak_enrolment without ak".into());
        }
        if let Some(e) = &self.ek {
            crate::enrol::ek_fingerprint_of(e).map_err(|e| format!("ek: {e}"))?;
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
            // An AK given by hand was not proven by this verifier.
            self.ak_enrolment = None;
        }
        if let Some(e) = p.ek_activate {
            self.ek_activate = e;
        }
        if let Some(e) = p.ek {
            self.ek = opt(e);
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
        if let Some(sim) = p.simulated {
            self.simulated = sim;
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

/// A host name is used in URLs and logs: a DNS-like name (letters, digits, `-`, `_`, dots
/// between labels), so `.`, `..`, `a..b` and `-x` are refused.
pub fn check_name(n: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
            && l.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && l.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if n.is_empty() || n.len() > 64 || !n.split('.').all(label_ok) {
        return Err(format!(
            "host name {n:?}: 1-64 characters, dot-separated labels of letters, digits, '-', '_' \
             (each starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// `host:port`, `[v6]:port`: a non-empty host and a port 1-65535.
pub fn check_address(a: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("address {a:?}: {why} (want host:port)"));
    if a.len() > 255 {
        return bad("longer than 255 bytes");
    }
    let Some((host, port)) = a.rsplit_once(':') else { return bad("no port") };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("port must be 1-65535"),
    }
    let host = match host.strip_prefix('[') {
        Some(h) => match h.strip_suffix(']') {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => return Ok(()),
            _ => return bad("bad [IPv6] host"),
        },
        None => host,
    };
    if host.is_empty() || host.contains(':') || rustls::pki_types::ServerName::try_from(host).is_err() {
        return bad("bad host");
    }
    Ok(())
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
    pub verdict: Verdict,
    /// Failure kind (engine reason, `policy`, or the error class).
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// Global record index the failure names, if any.
    pub record: Option<u64>,
    pub checkpoint_before: Option<u64>,
    pub checkpoint: Option<u64>,
    pub records_replayed: u64,
    pub tail_records: u64,
    /// The engine's mode (`full_history`, `latest_segment`, `incremental`).
    pub mode: Option<String>,
    /// Why the engine started over: `no_state`, `reset_count_changed`,
    /// `boot_aggregate_changed`, `banks_changed`.
    pub restart: Option<String>,
    /// The restart's particulars, e.g. `saved 3, quoted 4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_detail: Option<String>,
    pub duration_ms: f64,
    /// Every policy failure (record index, path, reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_failures: Vec<serde_json::Value>,
    /// What the evidence of this round claimed about the host (back end, segments, log
    /// size): shown by the dashboard, never used to decide. Absent when no evidence was
    /// parsed (and in rows saved before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceSummary>,
}

/// Segments listed per verdict row at most (the newest ones): the history stays small.
pub const MAX_SUMMARY_SEGMENTS: usize = 32;

/// A round's evidence header in brief: claims for display, kept with the verdict row (so
/// its history is bounded by `keep_verdicts`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvidenceSummary {
    /// The agent's back end (`model`, `securityfs-staging`, …), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub reset_count: u64,
    /// The index data was sent from.
    pub from: u64,
    /// Where the live list (the kernel's part) starts.
    pub live_first_index: u64,
    pub live_bytes: u64,
    /// Segments the header lists (the newest [`MAX_SUMMARY_SEGMENTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentSummary>,
    /// Segments left out of `segments` (older ones).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub segments_omitted: u64,
    /// The kernel's list and the whole boot's log, as the agent reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_size: Option<imasnap_wire::evidence::LogSize>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One segment of the chain: records `[first_index, first_index + count)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSummary {
    pub seq: u64,
    pub first_index: u64,
    pub count: u64,
    /// How it was cut: `marker` (RFC snapshot), `trim` or `stage` (staging).
    pub cut: String,
    /// It carries a quote-anchored checkpoint.
    #[serde(default)]
    pub checkpoint: bool,
}

impl EvidenceSummary {
    pub fn of(h: &imasnap_wire::evidence::EvidenceHeader) -> Self {
        let skip = h.snapshots.len().saturating_sub(MAX_SUMMARY_SEGMENTS);
        Self {
            mode: h.mode.clone(),
            reset_count: h.boot.reset_count,
            from: h.from,
            live_first_index: h.live_first_index,
            live_bytes: h.live_bytes,
            segments: h
                .snapshots
                .iter()
                .skip(skip)
                .map(|s| SegmentSummary {
                    seq: s.seq,
                    first_index: s.first_index,
                    count: s.count,
                    cut: s.cut.as_str().to_string(),
                    checkpoint: s.checkpoint.is_some(),
                })
                .collect(),
            segments_omitted: skip as u64,
            log_size: h.log_size,
        }
    }
}

/// What `GET /v1/hosts/{name}` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostStatus {
    pub spec: HostSpec,
    /// `pending` (never attested), `verified`, `rejected`, `policy_violation`, `error`,
    /// `unusable` (stored data unreadable: see `damage`).
    pub status: HostState,
    /// With `unusable`: the table, column and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage: Option<Damage>,
    /// Where the trusted AK came from: `registered` (given by the operator), `tofu`
    /// (enrolled from a first quote, unproven), `ek_activated` (proven by EK credential
    /// activation; details in `spec.ak_enrolment`); absent while none is trusted.
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
    /// Consecutive failures and the next attempt (backoff while failing).
    #[serde(default)]
    pub retry: crate::ops::RetryStatus,
}
