//! imasnap-wire: every byte format imasnap writes or reads, in one pure crate. Bytes in,
//! typed values out: no files, no sockets, no TPM back end.
//!
//! | Format | Version string | Where | Rust type |
//! |---|---|---|---|
//! | `manifest.json` | `imasnap-manifest/1` (`format` field) | store boot directory, evidence bundle | [`manifest::Manifest`] |
//! | `pending.json` | none (store-private, same directory as the manifest) | store boot directory | [`manifest::Pending`] |
//! | `bundle.json` | `imasnap-bundle/1` (`format` field) | evidence bundle | [`bundle::BundleIndex`] |
//! | `quote.json` | none (the quote's own structure) | evidence bundle | [`bundle::QuoteFile`] |
//! | `ak.pub` / `ak.pem` / AK text | none (hex TPM2B_PUBLIC or PEM SubjectPublicKeyInfo) | bundle, API, CLI | [`ak`] |
//! | evidence body of `GET /v1/evidence` | `IMASNAP-EVIDENCE/1\n` magic, header `format` `imasnap-evidence/2` (`/1` still read) | agent HTTP API | [`evidence`] |
//! | AK enrolment (EK, EK certificate, AK; credential; secret) | `imasnap-enrolment/1` (`format` field of the presentation) | agent and verifier HTTP APIs | [`enrolment`] |
//!
//! The verifier engine consumes claims ([`claims`]), not JSON: [`claims`] holds the claim
//! types and the one checked conversion from these wire types into them (hex lengths,
//! plain file names, known banks). The claim types live here, below the engine, because
//! the conversion needs them and the engine crate parses bundles through this crate; the
//! verifier re-exports them under their old paths.
//!
//! Parsing is strict everywhere: a size limit on every input, no unknown JSON field,
//! exact hex lengths, the format string checked. A changed format gets a new version
//! string. Nothing here judges a claim: a well-formed lie is the verifier's business.

pub mod ak;
pub mod bundle;
pub mod checkpoint;
pub mod claims;
pub mod enrolment;
pub mod evidence;
pub mod manifest;
pub mod segment;

pub use bundle::{BundleIndex, QuoteFile};
pub use checkpoint::{qualifying_data, CheckpointJson};
pub use claims::{BootClaim, CheckpointClaim, EndMarkerClaim, ManifestClaims, SnapshotClaim};
pub use manifest::{BootInfo, Cut, Manifest, MarkerRef, Pending, SnapshotEntry};
pub use segment::Segment;

/// `format` of `manifest.json`.
pub const MANIFEST_FORMAT: &str = "imasnap-manifest/1";
/// `format` of `bundle.json`.
pub const BUNDLE_FORMAT: &str = "imasnap-bundle/1";
/// `format` of the evidence header the agent writes. `/2` added `simulated`; the framing
/// (magic, lengths) is unchanged, so the magic keeps its `/1`.
pub const EVIDENCE_FORMAT: &str = "imasnap-evidence/2";
/// Every evidence header format the verifier reads (`/1`: no `simulated`, read as empty).
pub const EVIDENCE_FORMATS_READ: &[&str] = &["imasnap-evidence/1", EVIDENCE_FORMAT];
/// First bytes of an evidence body.
pub const EVIDENCE_MAGIC: &[u8] = b"IMASNAP-EVIDENCE/1\n";
/// `content-type` of an evidence body.
pub const EVIDENCE_CONTENT_TYPE: &str = "application/vnd.imasnap.evidence";

/// Upper bound on a JSON file of a bundle (a manifest of a million snapshots is ~300 MB;
/// refuse more).
pub const MAX_JSON: usize = 256 << 20;
/// Upper bound on AK text (an RSA-4096 PEM is under 1 KiB).
pub const MAX_AK_TEXT: usize = 64 << 10;

/// Which format an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Manifest,
    Pending,
    Bundle,
    Quote,
    /// `ak.pub`: hex TPM2B_PUBLIC.
    AkPub,
    /// `ak.pem`.
    AkPem,
    /// AK text of either form.
    Ak,
    Evidence,
}

impl Part {
    pub fn err(self, detail: impl Into<String>) -> WireError {
        WireError { part: self, detail: detail.into() }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Manifest => "manifest.json",
            Self::Pending => "pending.json",
            Self::Bundle => "bundle.json",
            Self::Quote => "quote.json",
            Self::AkPub => "ak.pub",
            Self::AkPem => "ak.pem",
            Self::Ak => "AK",
            Self::Evidence => "evidence body",
        })
    }
}

/// A refused input: which format, and why (naming the field or entry).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{part}: {detail}")]
pub struct WireError {
    pub part: Part,
    pub detail: String,
}

/// Size-limited strict JSON.
pub(crate) fn json<'a, T: serde::Deserialize<'a>>(b: &'a [u8], part: Part, limit: usize) -> Result<T, WireError> {
    if b.len() > limit {
        return Err(part.err(format!("{} bytes, limit {limit}", b.len())));
    }
    serde_json::from_slice(b).map_err(|e| part.err(e.to_string()))
}

/// Pretty JSON plus a newline, as every file is written. These types serialise without
/// error (string map keys, no floats), so a failure can only be a bug: it yields an
/// empty file, which every reader refuses.
pub(crate) fn pretty<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Hex strings as byte vectors in serde (lowercase out; in: exact hex, no whitespace).
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s).map_err(serde::de::Error::custom)
    }
}
