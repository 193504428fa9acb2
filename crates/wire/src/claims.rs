//! The verifier engine's view of a host's claims, and the one checked conversion into it
//! from the wire types (`manifest.json` entries and evidence-header entries alike).
//!
//! These types sit here rather than in the engine crate because the engine crate reads
//! bundles through this one: the conversion needs both sides, and a cycle is not allowed.
//! `imasnap-verifier` re-exports them where the engine always had them.

use crate::checkpoint::CheckpointJson;
use crate::evidence::{EvidenceHeader, SnapshotJson};
use crate::manifest::{check_file_name, check_hex, BootInfo, Cut, Manifest, MarkerRef, SnapshotEntry};
use crate::{Part, WireError};
use imasnap_log::{HashAlgo, PcrValue};
use std::collections::BTreeMap;

/// The manifest's claim about which marker ends a snapshot (SNAPSHOTS.md `end_marker`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndMarkerClaim {
    pub attempt: u64,
    /// SHA1 template digest of the marker record.
    pub sha1: [u8; 20],
}

/// The manifest's claims about one snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotClaim {
    pub seq: u64,
    pub first_index: u64,
    pub count: u64,
    /// sha256 of the file; `None` when the manifest states none (nothing to check).
    pub sha256: Option<[u8; 32]>,
    /// How the segment was cut: only a `marker` cut has an end marker to check.
    pub cut: Cut,
    pub end_marker: Option<EndMarkerClaim>,
    /// `trim` cuts: SHA1 template digest of the record after the segment.
    pub next_sha1: Option<[u8; 20]>,
    /// Measurement PCR after the snapshot's last record, per bank.
    pub pcrs_end: Vec<PcrValue>,
    /// The checkpoint taken at this cut, if the agent took one.
    pub checkpoint: Option<CheckpointClaim>,
}

/// A checkpoint's claims: the index, the quote (PCR values as hints) and the AK named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointClaim {
    pub index: u64,
    pub quote: imasnap_tpm::Quote,
    pub ak: imasnap_tpm::AkPublic,
}

impl CheckpointJson {
    /// The checkpoint as claims: a well-formed quote structure and AK text.
    pub fn claim(&self) -> Result<CheckpointClaim, String> {
        crate::bundle::check_pcr_values(&self.quote.pcr_values).map_err(|e| format!("checkpoint quote: {e}"))?;
        let ak = self.ak.public().map_err(|e| format!("checkpoint ak: {}", e.detail))?;
        Ok(CheckpointClaim { index: self.index, quote: self.quote.clone(), ak })
    }
}

impl SnapshotClaim {
    /// Claimed index one past the last record (saturating: a lying count cannot overflow).
    pub fn end_index(&self) -> u64 {
        self.first_index.saturating_add(self.count)
    }
}

/// The manifest's boot identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootClaim {
    pub reset_count: u64,
    pub boot_aggregate_sha1: [u8; 20],
}

/// `manifest.json` as claims: each snapshot with its file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestClaims {
    pub boot: BootClaim,
    pub banks: Vec<HashAlgo>,
    pub pcr: u32,
    /// (file name inside `snapshots/`, claims), in manifest order.
    pub snapshots: Vec<(String, SnapshotClaim)>,
    pub next_index: u64,
}

fn hex_n<const N: usize>(s: &str, what: &str) -> Result<[u8; N], String> {
    check_hex(what, s, N)?;
    let v = hex::decode(s).map_err(|e| format!("{what}: {e}"))?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| format!("{what}: {} bytes, want {N}", v.len()))
}

impl BootInfo {
    pub fn claim(&self) -> Result<BootClaim, String> {
        Ok(BootClaim {
            reset_count: self.reset_count,
            boot_aggregate_sha1: hex_n::<20>(&self.boot_aggregate_sha1, "boot.boot_aggregate_sha1")?,
        })
    }
}

/// A segment entry's fields, whichever format carried them.
struct Fields<'a> {
    seq: u64,
    first_index: u64,
    count: u64,
    sha256: Option<&'a str>,
    cut: Cut,
    end_marker: Option<&'a MarkerRef>,
    next_sha1: Option<&'a str>,
    pcrs_end: &'a BTreeMap<HashAlgo, String>,
    checkpoint: Option<&'a CheckpointJson>,
}

/// The one conversion of a snapshot entry's claims, whichever format carried them.
fn snapshot_claim(f: Fields<'_>) -> Result<SnapshotClaim, String> {
    let Fields { seq, first_index, count, sha256, cut, end_marker, next_sha1, pcrs_end, checkpoint } = f;
    let at = format!("snapshot {seq}");
    if cut != Cut::Marker && end_marker.is_some() {
        return Err(format!("{at}: a {} cut has no end_marker", cut.as_str()));
    }
    if cut != Cut::Trim && next_sha1.is_some() {
        return Err(format!("{at}: only a trim cut names next_sha1"));
    }
    let mut pcrs = Vec::with_capacity(pcrs_end.len());
    for (bank, v) in pcrs_end {
        let what = format!("{at}: pcrs_end.{bank}");
        check_hex(&what, v, bank.size())?;
        pcrs.push(PcrValue::from_hex(*bank, v).map_err(|d| format!("{what}: {d}"))?);
    }
    Ok(SnapshotClaim {
        seq,
        first_index,
        count,
        sha256: sha256.map(|s| hex_n::<32>(s, &format!("{at}: sha256"))).transpose()?,
        cut,
        next_sha1: next_sha1.map(|s| hex_n::<20>(s, &format!("{at}: next_sha1"))).transpose()?,
        end_marker: end_marker
            .map(|m| {
                Ok::<_, String>(EndMarkerClaim {
                    attempt: m.attempt,
                    sha1: hex_n::<20>(&m.sha1, &format!("{at}: end_marker.sha1"))?,
                })
            })
            .transpose()?,
        pcrs_end: pcrs,
        checkpoint: checkpoint.map(|c| c.claim().map_err(|e| format!("{at}: {e}"))).transpose()?,
    })
}

impl SnapshotEntry {
    /// This `manifest.json` entry as claims; the file name must be a plain name.
    pub fn claim(&self) -> Result<SnapshotClaim, WireError> {
        check_file_name(&self.file).map_err(|e| Part::Manifest.err(e))?;
        snapshot_claim(Fields {
            seq: self.seq,
            first_index: self.first_index,
            count: self.count,
            sha256: Some(&self.sha256),
            cut: self.cut,
            end_marker: self.end_marker.as_ref(),
            next_sha1: self.next_sha1.as_deref(),
            pcrs_end: &self.pcrs_end,
            checkpoint: self.checkpoint.as_ref(),
        })
        .map_err(|e| Part::Manifest.err(e))
    }
}

impl SnapshotJson {
    /// This evidence-header entry as claims (absent claims stay absent).
    pub fn claim(&self) -> Result<SnapshotClaim, WireError> {
        snapshot_claim(Fields {
            seq: self.seq,
            first_index: self.first_index,
            count: self.count,
            sha256: self.sha256.as_deref(),
            cut: self.cut,
            end_marker: self.end_marker.as_ref(),
            next_sha1: self.next_sha1.as_deref(),
            pcrs_end: &self.pcrs_end,
            checkpoint: self.checkpoint.as_ref(),
        })
        .map_err(|e| Part::Evidence.err(e))
    }
}

impl EvidenceHeader {
    pub fn boot_claim(&self) -> Result<BootClaim, WireError> {
        self.boot.claim().map_err(|e| Part::Evidence.err(e))
    }
}

impl ManifestClaims {
    /// Parses `manifest.json` ([`Manifest::from_json`]) and converts it to claims.
    pub fn from_json(b: &[u8]) -> Result<Self, WireError> {
        Self::from_manifest(&Manifest::from_json(b)?)
    }

    pub fn from_manifest(m: &Manifest) -> Result<Self, WireError> {
        let boot = m.boot.claim().map_err(|e| Part::Manifest.err(e))?;
        let snapshots =
            m.snapshots.iter().map(|e| Ok((e.file.clone(), e.claim()?))).collect::<Result<_, WireError>>()?;
        Ok(Self { boot, banks: m.banks.clone(), pcr: m.pcr, snapshots, next_index: m.next_index })
    }
}

/// A small `manifest.json` in the documented shape (one snapshot of 5,000 records):
/// the starting point of the tests of every crate that reads manifests.
pub const EXAMPLE_MANIFEST: &str = r#"{ "format": "imasnap-manifest/1",
      "boot": { "reset_count": 3, "boot_aggregate_sha1": "00112233445566778899aabbccddeeff00112233" },
      "banks": ["sha1", "sha256"], "pcr": 10,
      "snapshots": [
        { "seq": 1, "file": "000001.snap", "first_index": 0, "count": 5000,
          "sha256": "0000000000000000000000000000000000000000000000000000000000000001",
          "end_marker": { "attempt": 1, "sha1": "ffffffffffffffffffffffffffffffffffffffff" },
          "pcrs_end": { "sha1": "0101010101010101010101010101010101010101",
                        "sha256": "0202020202020202020202020202020202020202020202020202020202020202" } } ],
      "next_index": 5000 }"#;

#[cfg(test)]
mod tests {
    use super::*;

    use super::EXAMPLE_MANIFEST as MANIFEST;

    #[test]
    fn finding_9_claims_from_the_documented_manifest() {
        let m = ManifestClaims::from_json(MANIFEST.as_bytes()).unwrap();
        assert_eq!(m.boot.reset_count, 3);
        assert_eq!(m.boot.boot_aggregate_sha1[1], 0x11);
        let (file, c) = &m.snapshots[0];
        assert_eq!(file, "000001.snap");
        assert_eq!((c.seq, c.first_index, c.count, c.end_index()), (1, 0, 5000, 5000));
        assert_eq!(c.end_marker.as_ref().unwrap(), &EndMarkerClaim { attempt: 1, sha1: [0xff; 20] });
        assert_eq!(c.sha256.unwrap()[31], 1);
        assert_eq!(c.pcrs_end.len(), 2);
        assert_eq!(m.next_index, 5000);
    }

    #[test]
    fn finding_9_claims_refuse_traversal_and_bad_hex() {
        for (from, to, want) in [
            ("000001.snap", "../../etc/shadow", "plain file name"),
            ("000001.snap", "/abs", "plain file name"),
            ("000001.snap", "..", "plain file name"),
            ("\"sha256\": \"00000000", "\"sha256\": \"0000000g", "snapshot 1: sha256"),
            ("\"attempt\": 1, \"sha1\": \"ff", "\"attempt\": 1, \"sha1\": \"f", "end_marker.sha1"),
            ("\"boot_aggregate_sha1\": \"00", "\"boot_aggregate_sha1\": \"", "boot_aggregate_sha1"),
            ("\"sha1\": \"0101", "\"sha1\": \"01", "pcrs_end.sha1"),
            ("aabbccdd", "AABBCCDD", "lowercase"),
        ] {
            let bad = MANIFEST.replacen(from, to, 1);
            let e = ManifestClaims::from_json(bad.as_bytes()).unwrap_err();
            assert_eq!(e.part, Part::Manifest);
            assert!(e.detail.contains(want), "{to}: {e}");
        }
        assert!(ManifestClaims::from_json(b"{").is_err());
    }

    #[test]
    fn finding_9_evidence_entry_claims_share_the_conversion() {
        let m = Manifest::from_json(MANIFEST.as_bytes()).unwrap();
        let e = &m.snapshots[0];
        let j = SnapshotJson {
            seq: e.seq,
            first_index: e.first_index,
            count: e.count,
            sha256: Some(e.sha256.clone()),
            cut: e.cut,
            end_marker: e.end_marker.clone(),
            next_sha1: None,
            pcrs_end: e.pcrs_end.clone(),
            bytes: Some(1),
            checkpoint: None,
        };
        assert_eq!(j.claim().unwrap(), e.claim().unwrap());
        let bare = SnapshotJson { sha256: None, end_marker: None, pcrs_end: BTreeMap::new(), ..j.clone() };
        let c = bare.claim().unwrap();
        assert!(c.sha256.is_none() && c.end_marker.is_none() && c.pcrs_end.is_empty());
        let bad = SnapshotJson { sha256: Some("00".into()), ..j.clone() };
        assert_eq!(bad.claim().unwrap_err().part, Part::Evidence);
        // A staging cut: no marker, and only a trim names the next record.
        let trim = SnapshotJson { cut: Cut::Trim, end_marker: None, next_sha1: Some("ab".repeat(20)), ..j.clone() };
        let c = trim.claim().unwrap();
        assert_eq!((c.cut, c.next_sha1), (Cut::Trim, Some([0xab; 20])));
        for (bad, why) in [
            (SnapshotJson { cut: Cut::Stage, ..j.clone() }, "has no end_marker"),
            (SnapshotJson { next_sha1: Some("ab".repeat(20)), ..j.clone() }, "only a trim"),
            (SnapshotJson { next_sha1: Some("ab".into()), ..trim }, "next_sha1"),
        ] {
            assert!(bad.claim().unwrap_err().detail.contains(why), "{why}");
        }
    }
}
