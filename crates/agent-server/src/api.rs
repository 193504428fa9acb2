//! The agent's evidence wire format (`imasnap-evidence/1`), shared by the agent (encode)
//! and the verifier (decode). Pure: no I/O.
//!
//! Body of `GET /v1/evidence`:
//!
//! ```text
//! "IMASNAP-EVIDENCE/1\n"          magic
//! u32 big-endian                   length of the header JSON (at most MAX_HEADER)
//! header JSON                      EvidenceHeader
//! snapshot bytes                   for each header.snapshots[i] with `bytes`, in order
//! live bytes                       header.live_bytes bytes of the live list
//! ```
//!
//! Everything in the header except the quote's signed content is a claim: the verifier
//! gives it to the replay engine, which checks it against the quote.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MAGIC: &[u8] = b"IMASNAP-EVIDENCE/1\n";
pub const FORMAT: &str = "imasnap-evidence/1";
/// Largest header accepted (a manifest of ~50k snapshots).
pub const MAX_HEADER: usize = 16 << 20;
pub const CONTENT_TYPE: &str = "application/vnd.imasnap.evidence";

/// `from=` of an evidence request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// Records from this global index on (the segment holding it is sent whole).
    Index(u64),
    /// Only the live list (late join by marker, trust on first use).
    Latest,
}

impl From {
    pub fn parse(s: &str) -> Option<Self> {
        if s == "latest" {
            return Some(Self::Latest);
        }
        s.parse().ok().map(Self::Index)
    }
    pub fn as_param(&self) -> String {
        match self {
            Self::Index(i) => i.to_string(),
            Self::Latest => "latest".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootJson {
    pub reset_count: u64,
    pub boot_aggregate_sha1: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerJson {
    pub attempt: u64,
    pub sha1: String,
}

/// One manifest entry. `bytes` is set when the file follows in the body; entries entirely
/// before `from` come without data and without the heavy claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotJson {
    pub seq: u64,
    pub first_index: u64,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_marker: Option<MarkerJson>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pcrs_end: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// The attestation key's public part, as the agent ships it (a claim: the verifier uses
/// its enrolled key, or enrols this one only with an explicit trust-on-first-use flag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AkJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm2b_public: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceHeader {
    pub format: String,
    pub banks: Vec<imasnap_log::HashAlgo>,
    pub pcr: u32,
    pub boot: BootJson,
    /// `imasnap_tpm::Quote` in its serde form.
    pub quote: serde_json::Value,
    pub nonce: String,
    pub ak: AkJson,
    /// The index data is sent from, as the agent resolved the request (0 when the agent
    /// says the verifier's boot hint is not its current boot).
    pub from: u64,
    pub snapshots: Vec<SnapshotJson>,
    pub live_first_index: u64,
    pub live_bytes: u64,
}

impl EvidenceHeader {
    /// Total body length for this header (as sent).
    pub fn body_len(&self, header_json_len: usize) -> u64 {
        let snaps: u64 = self.snapshots.iter().filter_map(|s| s.bytes).fold(0u64, |a, b| a.saturating_add(b));
        (MAGIC.len() + 4 + header_json_len) as u64 + snaps.saturating_add(self.live_bytes)
    }
}

/// Encodes magic + header; the caller streams the data after it.
pub fn encode_prefix(h: &EvidenceHeader) -> Vec<u8> {
    let j = serde_json::to_vec(h).expect("plain data serialises");
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + j.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(j.len() as u32).to_be_bytes());
    out.extend_from_slice(&j);
    out
}

/// A parsed body: the header and where each piece of data lies in `body`.
#[derive(Debug)]
pub struct Parsed {
    pub header: EvidenceHeader,
    /// Byte range of each snapshot with data, by position in `header.snapshots`.
    pub snapshot_data: Vec<Option<std::ops::Range<usize>>>,
    pub live: std::ops::Range<usize>,
}

/// Splits a body; checks that the lengths the header claims add up exactly.
pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    let rest = body.strip_prefix(MAGIC).ok_or("not an imasnap-evidence/1 body (magic)")?;
    let len_bytes: [u8; 4] =
        rest.get(..4).and_then(|b| b.try_into().ok()).ok_or("truncated before the header length")?;
    let hlen = u32::from_be_bytes(len_bytes) as usize;
    if hlen > MAX_HEADER {
        return Err(format!("header of {hlen} bytes exceeds {MAX_HEADER}"));
    }
    let hstart = MAGIC.len() + 4;
    let hbytes = body.get(hstart..hstart + hlen).ok_or("truncated header")?;
    let header: EvidenceHeader = serde_json::from_slice(hbytes).map_err(|e| format!("header: {e}"))?;
    if header.format != FORMAT {
        return Err(format!("format {:?}, want {FORMAT:?}", header.format));
    }
    let mut at = hstart + hlen;
    let mut take = |n: u64, what: &str| -> Result<std::ops::Range<usize>, String> {
        let n = usize::try_from(n).map_err(|_| format!("{what}: length {n} too large"))?;
        let end = at
            .checked_add(n)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| format!("{what}: header claims {n} bytes at offset {at}, the body has {}", body.len()))?;
        let r = at..end;
        at = end;
        Ok(r)
    };
    let mut snapshot_data = Vec::with_capacity(header.snapshots.len());
    for s in &header.snapshots {
        snapshot_data.push(match s.bytes {
            Some(n) => Some(take(n, &format!("snapshot {}", s.seq))?),
            None => None,
        });
    }
    let live = take(header.live_bytes, "live list")?;
    if at != body.len() {
        return Err(format!("{} bytes after the live list", body.len() - at));
    }
    Ok(Parsed { header, snapshot_data, live })
}

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
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> EvidenceHeader {
        EvidenceHeader {
            format: FORMAT.into(),
            banks: vec![imasnap_log::HashAlgo::Sha256],
            pcr: 10,
            boot: BootJson { reset_count: 1, boot_aggregate_sha1: "00".repeat(20) },
            quote: serde_json::json!({}),
            nonce: "00".into(),
            ak: AkJson { tpm2b_public: None, pem: Some("x".into()) },
            from: 0,
            snapshots: vec![
                SnapshotJson {
                    seq: 1,
                    first_index: 0,
                    count: 2,
                    sha256: None,
                    end_marker: None,
                    pcrs_end: BTreeMap::new(),
                    bytes: None,
                },
                SnapshotJson {
                    seq: 2,
                    first_index: 2,
                    count: 2,
                    sha256: None,
                    end_marker: None,
                    pcrs_end: BTreeMap::new(),
                    bytes: Some(3),
                },
            ],
            live_first_index: 4,
            live_bytes: 2,
        }
    }

    #[test]
    fn round_trip_and_length_checks() {
        let h = header();
        let mut body = encode_prefix(&h);
        let hl = body.len() - MAGIC.len() - 4;
        body.extend_from_slice(b"abcde");
        assert_eq!(h.body_len(hl), body.len() as u64);
        let p = parse(&body).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(&body[p.snapshot_data[1].clone().unwrap()], b"abc");
        assert!(p.snapshot_data[0].is_none());
        assert_eq!(&body[p.live.clone()], b"de");
        // One byte short, one byte too many, bad magic, absurd header length.
        assert!(parse(&body[..body.len() - 1]).unwrap_err().contains("live list"));
        let mut long = body.clone();
        long.push(0);
        assert!(parse(&long).unwrap_err().contains("after the live list"));
        assert!(parse(b"GARBAGE").is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse(&huge).unwrap_err().contains("exceeds"));
    }

    #[test]
    fn from_param() {
        assert_eq!(From::parse("latest"), Some(From::Latest));
        assert_eq!(From::parse("42"), Some(From::Index(42)));
        assert_eq!(From::parse("-1"), None);
        assert_eq!(From::Index(7).as_param(), "7");
    }
}
