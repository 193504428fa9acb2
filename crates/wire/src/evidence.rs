//! The agent's evidence body (`GET /v1/evidence`, header format `imasnap-evidence/2`; `/1`
//! is still read), encoded by the agent and decoded by the verifier:
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
//!
//! `/2` added one header field, `simulated`: which parts of the attested machine are
//! simulated (`kernel_model`, `soft_tpm`). A `/1` header has none and reads as `[]`. The
//! field is the agent's own statement, not a proof: it stops a simulated agent from being
//! taken for a real machine by mistake (the verifier refuses it unless the host is
//! registered as simulated); a lying agent still has to pass the quote under a trusted AK.

use crate::manifest::{BootInfo, Cut, MarkerRef};
use crate::{Part, WireError};
use imasnap_log::HashAlgo;
use imasnap_tpm::{AkPublic, Quote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::{EVIDENCE_CONTENT_TYPE as CONTENT_TYPE, EVIDENCE_FORMAT as FORMAT, EVIDENCE_MAGIC as MAGIC};

/// Largest header accepted (a manifest of ~50k snapshots).
pub const MAX_HEADER: usize = 16 << 20;

/// The header's boot identity: the same shape as `manifest.json`'s `boot`.
pub type BootJson = BootInfo;
/// A snapshot's end marker: the same shape as in `manifest.json`.
pub type MarkerJson = MarkerRef;

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

/// One manifest entry. `bytes` is set when the file follows in the body; entries entirely
/// before `from` come without data and without the heavy claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotJson {
    pub seq: u64,
    pub first_index: u64,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// How the segment was cut (absent: an RFC marker), as in `manifest.json`.
    #[serde(default, skip_serializing_if = "Cut::is_marker")]
    pub cut: Cut,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_marker: Option<MarkerJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sha1: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pcrs_end: BTreeMap<HashAlgo, String>,
    /// The cut's checkpoint, as in `manifest.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<crate::checkpoint::CheckpointJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// A simulated part of the attested machine (`simulated` in the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Simulated {
    /// The measurement list comes from the in-process kernel model (`backend = "model"`).
    KernelModel,
    /// Quotes come from the in-process software TPM (`tpm = "soft"`).
    SoftTpm,
}

impl Simulated {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::KernelModel => "kernel_model",
            Self::SoftTpm => "soft_tpm",
        }
    }

    /// The header's list for a back end: the kernel model and/or the soft TPM.
    pub fn parts(kernel_model: bool, soft_tpm: bool) -> Vec<Self> {
        let mut v = Vec::new();
        if kernel_model {
            v.push(Self::KernelModel);
        }
        if soft_tpm {
            v.push(Self::SoftTpm);
        }
        v
    }
}

/// The attestation key's public part, as the agent ships it (a claim: the verifier uses
/// its enrolled key, or enrols this one only with an explicit trust-on-first-use flag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm2b_public: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
}

impl AkJson {
    /// As the agent ships `ak`: the TPM2B_PUBLIC when the key has one, PEM otherwise.
    pub fn from_public(ak: &AkPublic) -> Self {
        match ak.public_area() {
            Some(p) => Self { tpm2b_public: Some(hex::encode(p.to_tpm2b())), pem: None },
            None => Self { tpm2b_public: None, pem: Some(ak.to_pem()) },
        }
    }

    /// The key it names (the TPM2B_PUBLIC wins when both are present).
    pub fn public(&self) -> Result<AkPublic, WireError> {
        match (&self.tpm2b_public, &self.pem) {
            (Some(t), _) => crate::ak::from_tpm2b_hex(t),
            (None, Some(p)) => crate::ak::from_pem(p),
            (None, None) => Err(Part::Evidence.err("the agent ships no AK")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceHeader {
    pub format: String,
    pub banks: Vec<HashAlgo>,
    pub pcr: u32,
    pub boot: BootJson,
    /// The TPM quote (only `attest` and `signature` are authenticated).
    pub quote: Quote,
    pub nonce: String,
    pub ak: AkJson,
    /// The index data is sent from, as the agent resolved the request (0 when the agent
    /// says the verifier's boot hint is not its current boot).
    pub from: u64,
    pub snapshots: Vec<SnapshotJson>,
    pub live_first_index: u64,
    pub live_bytes: u64,
    /// Suffix evidence: the first segment sent with data starts at this record (the
    /// verifier's checkpoint) instead of at its head. Absent: every segment is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_from: Option<u64>,
    /// `/2`: the simulated parts of the machine (empty: a real kernel and a real TPM).
    /// Always written by `/2` agents; absent in `/1` headers.
    #[serde(default)]
    pub simulated: Vec<Simulated>,
    /// The agent's back end (`model`, `model-staging`, `securityfs-snapshot`,
    /// `securityfs-staging`, `securityfs-legacy`): shown by the verifier, never trusted.
    /// Absent in evidence from agents before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// How large the kernel's list is now and would be without trimming (shown by the
    /// verifier's dashboard, never trusted). Absent in older evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_size: Option<LogSize>,
}

/// The in-kernel measurement list against the whole boot's log, in records and in bytes
/// of the binary SHA1 form. On a legacy kernel (nothing trimmed) both are the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSize {
    /// Records in the kernel's list now.
    pub kernel_records: u64,
    pub kernel_bytes: u64,
    /// Records this boot has measured: the snapshots' plus the kernel's list.
    pub untrimmed_records: u64,
    pub untrimmed_bytes: u64,
}

impl EvidenceHeader {
    /// Total body length for this header (as sent).
    pub fn body_len(&self, header_json_len: usize) -> u64 {
        let snaps: u64 = self.snapshots.iter().filter_map(|s| s.bytes).fold(0u64, |a, b| a.saturating_add(b));
        (MAGIC.len() + 4 + header_json_len) as u64 + snaps.saturating_add(self.live_bytes)
    }
}

/// Encodes magic + header; the caller streams the data after it.
pub fn encode_prefix(h: &EvidenceHeader) -> Result<Vec<u8>, WireError> {
    let j = serde_json::to_vec(h).map_err(|e| Part::Evidence.err(format!("header: {e}")))?;
    if j.len() > MAX_HEADER {
        return Err(Part::Evidence.err(format!("header of {} bytes exceeds {MAX_HEADER}", j.len())));
    }
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + j.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(j.len() as u32).to_be_bytes());
    out.extend_from_slice(&j);
    Ok(out)
}

/// A parsed body: the header and where each piece of data lies in `body`.
#[derive(Debug)]
pub struct Parsed {
    pub header: EvidenceHeader,
    /// Byte range of each snapshot with data, by position in `header.snapshots`.
    pub snapshot_data: Vec<Option<std::ops::Range<usize>>>,
    pub live: std::ops::Range<usize>,
}

/// Splits a body; checks that the lengths the header claims add up exactly. The error
/// text names the offset or the header field.
pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    let rest = body.strip_prefix(MAGIC).ok_or("not an imasnap evidence body (magic)")?;
    let len_bytes: [u8; 4] =
        rest.get(..4).and_then(|b| b.try_into().ok()).ok_or("truncated before the header length")?;
    let hlen = u32::from_be_bytes(len_bytes) as usize;
    if hlen > MAX_HEADER {
        return Err(format!("header of {hlen} bytes exceeds {MAX_HEADER}"));
    }
    let hstart = MAGIC.len() + 4;
    let hbytes = body.get(hstart..hstart + hlen).ok_or("truncated header")?;
    // Straight into typed values: the quote included, with no detour through a JSON tree.
    let header: EvidenceHeader = serde_json::from_slice(hbytes).map_err(|e| format!("header: {e}"))?;
    if !crate::EVIDENCE_FORMATS_READ.contains(&header.format.as_str()) {
        return Err(format!("format {:?}, want one of {:?}", header.format, crate::EVIDENCE_FORMATS_READ));
    }
    if header.format != FORMAT && !header.simulated.is_empty() {
        return Err(format!("header: simulated: not a field of {:?}", header.format));
    }
    crate::bundle::check_pcr_values(&header.quote.pcr_values).map_err(|e| format!("header: quote.{e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use imasnap_log::PcrValue;

    fn header() -> EvidenceHeader {
        let v = PcrValue::from_hex(HashAlgo::Sha256, &"cd".repeat(32)).unwrap();
        let mut pcrs_end = BTreeMap::new();
        pcrs_end.insert(HashAlgo::Sha256, "ef".repeat(32));
        EvidenceHeader {
            format: FORMAT.into(),
            banks: vec![HashAlgo::Sha256],
            pcr: 10,
            boot: BootJson { reset_count: 1, boot_aggregate_sha1: "00".repeat(20) },
            quote: Quote { attest: vec![1], signature: vec![2], pcr_values: vec![(HashAlgo::Sha256, 10, v)] },
            nonce: "00".into(),
            ak: AkJson { tpm2b_public: None, pem: Some("x".into()) },
            from: 0,
            snapshots: vec![
                SnapshotJson {
                    seq: 1,
                    first_index: 0,
                    count: 2,
                    sha256: None,
                    cut: Cut::Marker,
                    end_marker: None,
                    next_sha1: None,
                    pcrs_end: BTreeMap::new(),
                    bytes: None,
                    checkpoint: None,
                },
                SnapshotJson {
                    seq: 2,
                    first_index: 2,
                    count: 2,
                    sha256: Some("11".repeat(32)),
                    cut: Cut::Marker,
                    end_marker: Some(MarkerJson { attempt: 2, sha1: "22".repeat(20) }),
                    next_sha1: None,
                    pcrs_end,
                    bytes: Some(3),
                    checkpoint: None,
                },
            ],
            live_first_index: 4,
            live_bytes: 2,
            data_from: None,
            mode: None,
            log_size: None,
            simulated: vec![],
        }
    }

    fn body(h: &EvidenceHeader) -> Vec<u8> {
        let mut body = encode_prefix(h).unwrap();
        body.extend_from_slice(b"abcde");
        body
    }

    #[test]
    fn finding_9_evidence_round_trip_and_length_checks() {
        let h = header();
        let body = body(&h);
        let hl = body.len() - MAGIC.len() - 4 - 5;
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

    /// The header the agent sent before this crate existed (quote as a JSON tree, keys
    /// sorted) still parses: the format did not change.
    #[test]
    fn finding_9_evidence_header_reads_the_previous_encoding() {
        let h = header();
        let mut v = serde_json::to_value(&h).unwrap();
        let q = serde_json::to_value(&h.quote).unwrap();
        v["quote"] = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        let j = serde_json::to_vec(&v).unwrap();
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&(j.len() as u32).to_be_bytes());
        b.extend_from_slice(&j);
        b.extend_from_slice(b"abcde");
        assert_eq!(parse(&b).unwrap().header, h);
    }

    /// `mode` and `log_size` are optional: a header without them (an older agent) parses,
    /// and one with them round-trips.
    #[test]
    fn evidence_header_log_size_is_optional() {
        let old = header();
        let j = serde_json::to_string(&old).unwrap();
        assert!(!j.contains("log_size") && !j.contains("\"mode\""), "{j}");
        assert_eq!(parse(&body(&old)).unwrap().header, old);
        let mut h = header();
        h.mode = Some("model-staging".into());
        h.log_size =
            Some(LogSize { kernel_records: 3, kernel_bytes: 300, untrimmed_records: 10, untrimmed_bytes: 1000 });
        let p = parse(&body(&h)).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.header.log_size.unwrap().untrimmed_bytes, 1000);
    }

    /// `/2` carries `simulated`; a `/1` header (the field absent) still parses, as real.
    #[test]
    fn issue16_simulated_field_and_the_previous_version() {
        let mut h = header();
        h.simulated = Simulated::parts(true, true);
        let p = parse(&body(&h)).unwrap();
        assert_eq!(p.header.simulated, vec![Simulated::KernelModel, Simulated::SoftTpm]);
        let j = serde_json::to_string(&h).unwrap();
        assert!(j.contains("\"simulated\":[\"kernel_model\",\"soft_tpm\"]"), "{j}");
        let frame = |j: &str| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&(j.len() as u32).to_be_bytes());
            b.extend_from_slice(j.as_bytes());
            b.extend_from_slice(b"abcde");
            b
        };
        let mut v1 = serde_json::to_value(header()).unwrap();
        v1["format"] = "imasnap-evidence/1".into();
        v1.as_object_mut().unwrap().remove("simulated");
        let old = parse(&frame(&v1.to_string())).unwrap();
        assert_eq!(old.header.format, "imasnap-evidence/1");
        assert!(old.header.simulated.is_empty());
        // A /1 header cannot carry the /2 field.
        v1["simulated"] = serde_json::json!(["soft_tpm"]);
        assert!(parse(&frame(&v1.to_string())).unwrap_err().contains("simulated"));
        assert_eq!(Simulated::parts(false, true), vec![Simulated::SoftTpm]);
        assert_eq!(Simulated::SoftTpm.as_str(), "soft_tpm");
    }

    #[test]
    fn finding_9_evidence_header_rejections() {
        let good = serde_json::to_string(&header()).unwrap();
        for (from, to, want) in [
            ("\"live_bytes\"", "\"extra\":1,\"live_bytes\"", "unknown field"),
            ("imasnap-evidence/2", "imasnap-evidence/3", "want"),
            ("\"simulated\":[]", "\"simulated\":[\"qemu\"]", "unknown variant"),
            ("\"attest\":\"01\"", "\"attest\":\"zz\"", "header"),
            ("\"seq\":2", "\"seq\":2,\"file\":\"x\"", "unknown field"),
            ("\"pem\":\"x\"", "\"pem\":\"x\",\"der\":\"\"", "unknown field"),
            ("\"pcrs_end\":{\"sha256\"", "\"pcrs_end\":{\"md5\"", "unknown variant"),
        ] {
            let j = good.replacen(from, to, 1);
            assert_ne!(j, good, "{from}");
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&(j.len() as u32).to_be_bytes());
            b.extend_from_slice(j.as_bytes());
            b.extend_from_slice(b"abcde");
            let e = parse(&b).unwrap_err();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn finding_9_ak_json() {
        let ak = imasnap_tpm::SoftTpm::new(3);
        let k = imasnap_tpm::Tpm::ak_public(&ak);
        let j = AkJson::from_public(&k);
        assert_eq!(j.public().unwrap().to_pem(), k.to_pem());
        let pem = AkJson { tpm2b_public: None, pem: Some(k.to_pem()) };
        assert_eq!(pem.public().unwrap().to_pem(), k.to_pem());
        assert!(AkJson { tpm2b_public: None, pem: None }.public().unwrap_err().detail.contains("no AK"));
        assert_eq!(AkJson { tpm2b_public: Some("zz".into()), pem: None }.public().unwrap_err().part, Part::AkPub);
    }

    #[test]
    fn from_param() {
        assert_eq!(From::parse("latest"), Some(From::Latest));
        assert_eq!(From::parse("42"), Some(From::Index(42)));
        assert_eq!(From::parse("-1"), None);
        assert_eq!(From::Index(7).as_param(), "7");
    }
}
