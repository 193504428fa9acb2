//! `manifest.json` and `pending.json` (docs/SNAPSHOTS.md), with strict validation: the
//! store is read back after crashes, so a torn or inconsistent file must be refused, not
//! half-trusted. The same types are what a verifier reads in an evidence bundle.

use crate::checkpoint::CheckpointJson;
use crate::{json, Part, WireError, MAX_JSON};
use imasnap_log::marker::Marker;
use imasnap_log::{HashAlgo, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::MANIFEST_FORMAT;

/// Identity of a cold boot: TPM resetCount plus the SHA1 template digest of record 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootInfo {
    pub reset_count: u64,
    /// Full lowercase hex of the boot_aggregate record's SHA1 template digest.
    pub boot_aggregate_sha1: String,
}

impl BootInfo {
    /// From the first record of the boot (SHA1 binary log form).
    pub fn from_boot_aggregate(reset_count: u64, rec: &Record) -> Self {
        Self { reset_count, boot_aggregate_sha1: hex::encode(&rec.digest) }
    }
}

/// Which marker ends a snapshot (the marker itself is the first record after it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkerRef {
    pub attempt: u64,
    /// SHA1 template digest of the marker record, lowercase hex.
    pub sha1: String,
}

impl MarkerRef {
    /// Identifies a record that must be a well-formed marker.
    pub fn from_record(rec: &Record) -> Result<Self, String> {
        let m = Marker::from_record(rec, imasnap_log::Endian::Little)?
            .ok_or_else(|| "record is not a snapshot_aggregate marker".to_string())?;
        Ok(Self { attempt: m.attempt, sha1: hex::encode(&rec.digest) })
    }

    /// Whether `rec` is this marker: same SHA1 digest and same attempt.
    pub fn matches(&self, rec: &Record) -> bool {
        if hex::encode(&rec.digest) != self.sha1 {
            return false;
        }
        matches!(Marker::from_record(rec, imasnap_log::Endian::Little), Ok(Some(m)) if m.attempt == self.attempt)
    }
}

/// How a segment was cut from the kernel's list, which decides what follows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    /// The RFC `snapshot` file: the record after the segment is its end marker.
    #[default]
    Marker,
    /// Staging `N`: no marker; the record after the segment stayed in the kernel's list
    /// and `next_sha1` names it.
    Trim,
    /// Staging `A`/`D`: no marker, and nothing names the record after the segment.
    Stage,
}

impl Cut {
    pub fn is_marker(&self) -> bool {
        *self == Cut::Marker
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Cut::Marker => "marker",
            Cut::Trim => "trim",
            Cut::Stage => "stage",
        }
    }
}

/// One committed snapshot file (a *segment*: RFC snapshot or staging export).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotEntry {
    pub seq: u64,
    pub file: String,
    pub first_index: u64,
    pub count: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Absent (`marker`) for RFC snapshots, so their entries read as before.
    #[serde(default, skip_serializing_if = "Cut::is_marker")]
    pub cut: Cut,
    /// The end marker (`cut = marker` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_marker: Option<MarkerRef>,
    /// SHA1 template digest of the record after the segment (`cut = trim` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sha1: Option<String>,
    /// Measurement PCR after the last record, per bank (the end marker's values, or the
    /// agent's own replay for a cut without a marker).
    pub pcrs_end: BTreeMap<HashAlgo, String>,
    /// The checkpoint taken at this cut (docs/CHECKPOINTS.md); absent when checkpoints
    /// are off or the agent has no TPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointJson>,
}

impl SnapshotEntry {
    pub fn end_index(&self) -> u64 {
        self.first_index + self.count
    }
}

/// The committed state of one boot directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub boot: BootInfo,
    pub banks: Vec<HashAlgo>,
    pub pcr: u32,
    pub snapshots: Vec<SnapshotEntry>,
    /// Global index of the live list's head.
    pub next_index: u64,
}

/// File name of snapshot `seq`.
pub fn snap_file_name(seq: u64) -> String {
    format!("{seq:06}.snap")
}

/// File name of the tentative file of snapshot `seq`.
pub fn tmp_snap_file_name(seq: u64) -> String {
    format!(".tmp-{seq:06}.snap")
}

/// `s` is exactly `len` bytes as lowercase hex (the only form the agent writes).
pub fn check_hex(what: &str, s: &str, len: usize) -> Result<(), String> {
    if s.len() != len * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("{what} {s:?} is not {} lowercase hex digits", len * 2));
    }
    Ok(())
}

/// A snapshot file name a reader may join to its snapshot directory without leaving it.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    if !ok {
        return Err(format!("snapshot file name {name:?} is not a plain file name"));
    }
    Ok(())
}

impl Manifest {
    /// Parses `manifest.json` strictly (size limit, no unknown field, this format). Says
    /// nothing about consistency: the store calls [`Manifest::validate`], a verifier
    /// judges the claims itself.
    pub fn from_json(b: &[u8]) -> Result<Self, WireError> {
        let m: Self = json(b, Part::Manifest, MAX_JSON)?;
        if m.format != MANIFEST_FORMAT {
            return Err(Part::Manifest.err(format!("format {:?}, want {MANIFEST_FORMAT:?}", m.format)));
        }
        Ok(m)
    }

    /// The bytes written to disk: pretty JSON and a final newline.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        crate::pretty(self)
    }

    pub fn new(boot: BootInfo, banks: Vec<HashAlgo>, pcr: u32) -> Self {
        Self { format: MANIFEST_FORMAT.into(), boot, banks, pcr, snapshots: Vec::new(), next_index: 0 }
    }

    /// Sequence number the next snapshot gets.
    pub fn next_seq(&self) -> u64 {
        self.snapshots.last().map_or(1, |s| s.seq + 1)
    }

    /// Marker that heads the live list after the last commit, if the last cut has one.
    pub fn head_marker(&self) -> Option<&MarkerRef> {
        self.snapshots.last().and_then(|s| s.end_marker.as_ref())
    }

    /// Checks that `rec` can be record `index` where a segment starts (index 0 or the end
    /// of a committed snapshot): record 0 is this boot's boot_aggregate, a segment after
    /// an RFC snapshot starts with its end marker, after a trim with the record it names.
    /// After a staging `A`/`D` cut nothing names the next record: any record passes.
    pub fn check_boundary(&self, index: u64, rec: &Record) -> Result<(), String> {
        if index == 0 {
            let name = rec.name(imasnap_log::Endian::Little).unwrap_or_default();
            if name != "boot_aggregate" {
                return Err(format!("record 0 is {name:?}, not boot_aggregate"));
            }
            if hex::encode(&rec.digest) != self.boot.boot_aggregate_sha1 {
                return Err("record 0 is not the boot_aggregate this boot directory belongs to".into());
            }
            return Ok(());
        }
        let prev = self
            .snapshots
            .iter()
            .find(|s| s.end_index() == index)
            .ok_or_else(|| format!("no committed snapshot ends at record {index}"))?;
        match (prev.cut, &prev.end_marker, &prev.next_sha1) {
            (Cut::Marker, Some(m), _) if !m.matches(rec) => Err(format!(
                "record {index} should be the end marker of snapshot {} (attempt {}, sha1 {}), found sha1 {}",
                prev.seq,
                m.attempt,
                m.sha1,
                hex::encode(&rec.digest)
            )),
            (Cut::Trim, _, Some(want)) if *want != hex::encode(&rec.digest) => Err(format!(
                "record {index} should be the record that followed segment {} (sha1 {want}), found sha1 {}",
                prev.seq,
                hex::encode(&rec.digest)
            )),
            _ => Ok(()),
        }
    }

    /// Checks internal consistency; the message names the offending entry.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!("format {:?}, want {MANIFEST_FORMAT:?}", self.format));
        }
        check_hex("boot_aggregate_sha1", &self.boot.boot_aggregate_sha1, 20)?;
        if self.banks.is_empty() {
            return Err("no banks".into());
        }
        if self.pcr > 23 {
            return Err(format!("pcr {} out of range", self.pcr));
        }
        let mut next = 0u64;
        for (i, s) in self.snapshots.iter().enumerate() {
            let want_seq = i as u64 + 1;
            let at = format!("snapshots[{i}] (seq {})", s.seq);
            if s.seq != want_seq {
                return Err(format!("{at}: seq should be {want_seq}"));
            }
            check_file_name(&s.file).map_err(|e| format!("{at}: {e}"))?;
            if s.file != snap_file_name(s.seq) {
                return Err(format!("{at}: file {:?}, want {:?}", s.file, snap_file_name(s.seq)));
            }
            if s.first_index != next {
                return Err(format!("{at}: first_index {} but previous snapshots end at {next}", s.first_index));
            }
            if s.count == 0 {
                return Err(format!("{at}: empty snapshot"));
            }
            check_hex(&format!("{at}: sha256"), &s.sha256, 32)?;
            match (s.cut, &s.end_marker, &s.next_sha1) {
                (Cut::Marker, Some(m), None) => check_hex(&format!("{at}: end_marker.sha1"), &m.sha1, 20)?,
                (Cut::Trim, None, Some(n)) => check_hex(&format!("{at}: next_sha1"), n, 20)?,
                (Cut::Stage, None, None) => {}
                (c, _, _) => {
                    return Err(format!(
                        "{at}: a {} cut has {}",
                        c.as_str(),
                        match c {
                            Cut::Marker => "an end_marker and no next_sha1",
                            Cut::Trim => "a next_sha1 and no end_marker",
                            Cut::Stage => "neither end_marker nor next_sha1",
                        }
                    ))
                }
            }
            for b in &self.banks {
                let v = s.pcrs_end.get(b).ok_or_else(|| format!("{at}: pcrs_end lacks bank {b}"))?;
                check_hex(&format!("{at}: pcrs_end.{b}"), v, b.size())?;
            }
            if s.pcrs_end.len() != self.banks.len() {
                return Err(format!("{at}: pcrs_end names banks the manifest does not have"));
            }
            next = s.first_index.checked_add(s.count).ok_or_else(|| format!("{at}: index overflow"))?;
        }
        if self.next_index != next {
            return Err(format!("next_index {} but snapshots end at {next}", self.next_index));
        }
        Ok(())
    }

    /// The entry a pending snapshot becomes once committed. `marker` is the parsed end
    /// marker (it supplies the PCR values), `sha256` the file digest.
    pub fn entry_for(&self, p: &Pending, marker: &Marker, sha256: String) -> Result<SnapshotEntry, String> {
        let mut pcrs_end = BTreeMap::new();
        for b in &self.banks {
            let v = marker.bank(*b).ok_or_else(|| format!("end marker lacks bank {b}"))?;
            pcrs_end.insert(*b, v[self.pcr as usize].to_hex());
        }
        Ok(SnapshotEntry {
            seq: p.seq,
            file: snap_file_name(p.seq),
            first_index: p.first_index,
            count: p.count,
            sha256,
            cut: Cut::Marker,
            end_marker: Some(p.marker.clone()),
            next_sha1: None,
            pcrs_end,
            checkpoint: p.checkpoint.clone(),
        })
    }
}

/// Intent of an in-flight snapshot, written before anything is read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub seq: u64,
    pub first_index: u64,
    /// Records before the marker (the marker's list position n).
    pub count: u64,
    pub marker: MarkerRef,
    /// The cut's checkpoint, added (and fsynced) before `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointJson>,
}

impl Pending {
    /// Parses `pending.json` strictly.
    pub fn from_json(b: &[u8]) -> Result<Self, WireError> {
        json(b, Part::Pending, 1 << 20)
    }

    /// Checks the intent fits the committed manifest it extends.
    pub fn validate_against(&self, m: &Manifest) -> Result<(), String> {
        check_hex("marker.sha1", &self.marker.sha1, 20)?;
        if self.count == 0 {
            return Err("empty snapshot".into());
        }
        // Already committed (crash after the manifest rename): must be exactly that entry.
        if let Some(e) = m.snapshots.iter().find(|e| e.seq == self.seq) {
            if e.first_index != self.first_index || e.count != self.count || e.end_marker.as_ref() != Some(&self.marker)
            {
                return Err(format!("seq {} is committed with different contents", self.seq));
            }
            return Ok(());
        }
        if self.seq != m.next_seq() || self.first_index != m.next_index {
            return Err(format!(
                "seq {} first_index {} does not follow the manifest (next seq {}, next index {})",
                self.seq,
                self.first_index,
                m.next_seq(),
                m.next_index
            ));
        }
        Ok(())
    }

    pub fn file_name(&self) -> String {
        snap_file_name(self.seq)
    }
    pub fn tmp_file_name(&self) -> String {
        tmp_snap_file_name(self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let mut m = Manifest::new(
            BootInfo { reset_count: 3, boot_aggregate_sha1: "ab".repeat(20) },
            vec![HashAlgo::Sha1, HashAlgo::Sha256],
            10,
        );
        let mut pcrs = BTreeMap::new();
        pcrs.insert(HashAlgo::Sha1, "11".repeat(20));
        pcrs.insert(HashAlgo::Sha256, "22".repeat(32));
        m.snapshots.push(SnapshotEntry {
            seq: 1,
            file: "000001.snap".into(),
            first_index: 0,
            count: 5,
            sha256: "33".repeat(32),
            cut: Cut::Marker,
            end_marker: Some(MarkerRef { attempt: 1, sha1: "44".repeat(20) }),
            next_sha1: None,
            pcrs_end: pcrs,
            checkpoint: None,
        });
        m.next_index = 5;
        m
    }

    #[test]
    fn json_shape_matches_contract() {
        let m = manifest();
        m.validate().unwrap();
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["format"], "imasnap-manifest/1");
        assert_eq!(v["boot"]["reset_count"], 3);
        assert_eq!(v["banks"], serde_json::json!(["sha1", "sha256"]));
        assert_eq!(v["snapshots"][0]["end_marker"]["attempt"], 1);
        assert_eq!(v["snapshots"][0]["pcrs_end"]["sha256"], "22".repeat(32));
        assert_eq!(v["next_index"], 5);
        let back: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn finding_9_manifest_round_trip_is_byte_exact() {
        let m = manifest();
        let b = m.to_json_pretty();
        assert_eq!(Manifest::from_json(&b).unwrap(), m);
        assert_eq!(Manifest::from_json(&b).unwrap().to_json_pretty(), b);
        let p = Pending {
            seq: 2,
            first_index: 5,
            count: 3,
            marker: MarkerRef { attempt: 2, sha1: "55".repeat(20) },
            checkpoint: None,
        };
        assert_eq!(Pending::from_json(&crate::pretty(&p)).unwrap(), p);
    }

    #[test]
    fn finding_9_manifest_rejections() {
        let good = String::from_utf8(manifest().to_json_pretty()).unwrap();
        for (from, to, want) in [
            ("\"next_index\"", "\"extra\": 1, \"next_index\"", "unknown field"),
            ("\"reset_count\"", "\"x\": 0, \"reset_count\"", "unknown field"),
            ("\"attempt\"", "\"y\": 0, \"attempt\"", "unknown field"),
            ("imasnap-manifest/1", "imasnap-manifest/2", "want \"imasnap-manifest/1\""),
            ("\"pcr\": 10", "\"pcr\": \"10\"", "invalid type"),
        ] {
            let bad = good.replacen(from, to, 1);
            let e = Manifest::from_json(bad.as_bytes()).unwrap_err();
            assert_eq!(e.part, Part::Manifest);
            assert!(e.to_string().contains(want), "{to}: {e}");
        }
        assert!(Manifest::from_json(&vec![b' '; MAX_JSON + 1]).unwrap_err().detail.contains("limit"));
        assert!(Pending::from_json(br#"{"seq":1,"first_index":0,"count":1,"marker":{"attempt":1,"sha1":"aa"},"z":1}"#)
            .is_err());
        for bad in ["", ".", "..", "../x", "a/b", "x\0"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("000001.snap").unwrap();
    }

    #[test]
    fn validation_catches_inconsistency() {
        let good = manifest();
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("next_index", Box::new(|m| m.next_index = 6)),
            ("seq should be", Box::new(|m| m.snapshots[0].seq = 2)),
            ("first_index", Box::new(|m| m.snapshots[0].first_index = 1)),
            ("sha256", Box::new(|m| m.snapshots[0].sha256 = "XX".repeat(32))),
            ("pcrs_end lacks", Box::new(|m| drop(m.snapshots[0].pcrs_end.remove(&HashAlgo::Sha1)))),
            ("format", Box::new(|m| m.format = "x".into())),
            ("plain file name", Box::new(|m| m.snapshots[0].file = "../000001.snap".into())),
            ("empty snapshot", Box::new(|m| m.snapshots[0].count = 0)),
            ("a marker cut has", Box::new(|m| m.snapshots[0].end_marker = None)),
            ("a trim cut has", Box::new(|m| m.snapshots[0].cut = Cut::Trim)),
            ("a stage cut has", Box::new(|m| m.snapshots[0].cut = Cut::Stage)),
            (
                "next_sha1",
                Box::new(|m| {
                    let s = &mut m.snapshots[0];
                    (s.cut, s.end_marker, s.next_sha1) = (Cut::Trim, None, Some("zz".into()));
                }),
            ),
        ];
        for (want, f) in cases {
            let mut m = good.clone();
            f(&mut m);
            let e = m.validate().unwrap_err();
            assert!(e.contains(want), "{want}: got {e}");
        }
    }

    #[test]
    fn pending_must_follow_manifest() {
        let m = manifest();
        let mut p = Pending {
            seq: 2,
            first_index: 5,
            count: 3,
            marker: MarkerRef { attempt: 2, sha1: "55".repeat(20) },
            checkpoint: None,
        };
        p.validate_against(&m).unwrap();
        p.first_index = 4;
        assert!(p.validate_against(&m).is_err());
        // A pending that the manifest already holds must agree with it.
        let mut done = Pending {
            seq: 1,
            first_index: 0,
            count: 5,
            marker: m.snapshots[0].end_marker.clone().unwrap(),
            checkpoint: None,
        };
        done.validate_against(&m).unwrap();
        done.count = 4;
        assert!(done.validate_against(&m).is_err());
    }
}
