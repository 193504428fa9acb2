//! The evidence bundle's JSON parts (docs/SNAPSHOTS.md), parsed from bytes. Still
//! sans-IO: the caller reads the files; this turns them into the engine's typed claims.
//! Parsing is strict (sizes, hex, file names) but judges nothing: a well-formed lie is the
//! engine's business.

use crate::evidence::{BootClaim, EndMarkerClaim, SnapshotClaim};
use crate::Failure;
use imasnap_log::{HashAlgo, PcrValue};
use imasnap_tpm::{AkPublic, Quote};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const BUNDLE_FORMAT: &str = "imasnap-bundle/1";
pub const MANIFEST_FORMAT: &str = "imasnap-manifest/1";

/// Upper bound on JSON inputs (a manifest of a million snapshots is ~300 MB; refuse more).
const MAX_JSON: usize = 256 << 20;

/// `bundle.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleIndex {
    pub banks: Vec<HashAlgo>,
    pub pcr: u32,
    pub live_first_index: u64,
    /// The nonce the agent says it was asked for (the engine uses the verifier's own).
    pub nonce: Vec<u8>,
}

/// `manifest.json`: the snapshot claims, with the file name of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub boot: BootClaim,
    pub banks: Vec<HashAlgo>,
    pub pcr: u32,
    /// (file name inside `snapshots/`, claims), in manifest order.
    pub snapshots: Vec<(String, SnapshotClaim)>,
    pub next_index: u64,
}

fn bundle_err(detail: String) -> Failure {
    Failure::BadEvidence { detail }
}

fn manifest_err(detail: String) -> Failure {
    Failure::ManifestMalformed { detail }
}

fn json<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str, err: fn(String) -> Failure) -> Result<T, Failure> {
    if b.len() > MAX_JSON {
        return Err(err(format!("{what} is {} bytes, limit {MAX_JSON}", b.len())));
    }
    serde_json::from_slice(b).map_err(|e| err(format!("{what}: {e}")))
}

fn hex_exact<const N: usize>(s: &str, what: &str) -> Result<[u8; N], Failure> {
    if s.len() != 2 * N || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(manifest_err(format!("{what} {s:?} is not {} hex digits", 2 * N)));
    }
    let v = hex::decode(s).map_err(|e| manifest_err(format!("{what}: {e}")))?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| manifest_err(format!("{what}: wrong length")))
}

/// A snapshot file name the caller may join to `snapshots/` without leaving it.
fn check_file_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    if !ok {
        return Err(manifest_err(format!("snapshot file name {name:?} is not a plain file name")));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexJson {
    format: String,
    banks: Vec<HashAlgo>,
    pcr: u32,
    live_first_index: u64,
    nonce: String,
}

impl BundleIndex {
    pub fn from_json(b: &[u8]) -> Result<Self, Failure> {
        let j: IndexJson = json(b, "bundle.json", bundle_err)?;
        if j.format != BUNDLE_FORMAT {
            return Err(bundle_err(format!("bundle.json format {:?}, want {BUNDLE_FORMAT:?}", j.format)));
        }
        let nonce = hex::decode(&j.nonce).map_err(|e| bundle_err(format!("bundle.json nonce: {e}")))?;
        Ok(Self { banks: j.banks, pcr: j.pcr, live_first_index: j.live_first_index, nonce })
    }
}

#[derive(Deserialize)]
struct BootJson {
    reset_count: u64,
    boot_aggregate_sha1: String,
}

#[derive(Deserialize)]
struct MarkerRefJson {
    attempt: u64,
    sha1: String,
}

#[derive(Deserialize)]
struct EntryJson {
    seq: u64,
    file: String,
    first_index: u64,
    count: u64,
    sha256: String,
    end_marker: MarkerRefJson,
    pcrs_end: BTreeMap<HashAlgo, String>,
}

#[derive(Deserialize)]
struct ManifestJson {
    format: String,
    boot: BootJson,
    banks: Vec<HashAlgo>,
    pcr: u32,
    snapshots: Vec<EntryJson>,
    next_index: u64,
}

impl Manifest {
    pub fn from_json(b: &[u8]) -> Result<Self, Failure> {
        let j: ManifestJson = json(b, "manifest.json", manifest_err)?;
        if j.format != MANIFEST_FORMAT {
            return Err(manifest_err(format!("format {:?}, want {MANIFEST_FORMAT:?}", j.format)));
        }
        let boot = BootClaim {
            reset_count: j.boot.reset_count,
            boot_aggregate_sha1: hex_exact::<20>(&j.boot.boot_aggregate_sha1, "boot.boot_aggregate_sha1")?,
        };
        let mut snapshots = Vec::with_capacity(j.snapshots.len());
        for e in j.snapshots {
            let at = format!("snapshot {}", e.seq);
            check_file_name(&e.file)?;
            let mut pcrs_end = Vec::new();
            for (bank, v) in &e.pcrs_end {
                let v =
                    PcrValue::from_hex(*bank, v).map_err(|d| manifest_err(format!("{at}: pcrs_end.{bank}: {d}")))?;
                pcrs_end.push(v);
            }
            let claim = SnapshotClaim {
                seq: e.seq,
                first_index: e.first_index,
                count: e.count,
                sha256: Some(hex_exact::<32>(&e.sha256, &format!("{at}: sha256"))?),
                end_marker: Some(EndMarkerClaim {
                    attempt: e.end_marker.attempt,
                    sha1: hex_exact::<20>(&e.end_marker.sha1, &format!("{at}: end_marker.sha1"))?,
                }),
                pcrs_end,
            };
            snapshots.push((e.file, claim));
        }
        Ok(Self { boot, banks: j.banks, pcr: j.pcr, snapshots, next_index: j.next_index })
    }
}

/// `quote.json` (the serde form of [`imasnap_tpm::Quote`] plus the agent's `nonce`, which
/// is ignored: the verifier checks against its own challenge).
pub fn quote_from_json(b: &[u8]) -> Result<Quote, Failure> {
    json(b, "quote.json", |d| Failure::QuoteMalformed { detail: d })
}

/// The AK shipped in the bundle: `ak.pub` (hex TPM2B_PUBLIC) or `ak.pem`.
pub fn ak_from_pub_hex(text: &str) -> Result<AkPublic, Failure> {
    let b = hex::decode(text.trim()).map_err(|e| bundle_err(format!("ak.pub: {e}")))?;
    AkPublic::from_tpm2b_public(&b).map_err(|e| bundle_err(format!("ak.pub: {e}")))
}

pub fn ak_from_pem(text: &str) -> Result<AkPublic, Failure> {
    AkPublic::from_pem(text).map_err(|e| bundle_err(format!("ak.pem: {e}")))
}

impl Manifest {
    /// Claims that must agree between `bundle.json` and `manifest.json`.
    pub fn check_against(&self, index: &BundleIndex) -> Result<(), Failure> {
        if self.banks != index.banks || self.pcr != index.pcr {
            return Err(bundle_err("bundle.json and manifest.json name different banks or PCR".into()));
        }
        if self.next_index != index.live_first_index {
            return Err(Failure::LiveFirstIndexMismatch { claimed: index.live_first_index, expected: self.next_index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{ "format": "imasnap-manifest/1",
      "boot": { "reset_count": 3, "boot_aggregate_sha1": "00112233445566778899aabbccddeeff00112233" },
      "banks": ["sha1", "sha256"], "pcr": 10,
      "snapshots": [
        { "seq": 1, "file": "000001.snap", "first_index": 0, "count": 5000,
          "sha256": "0000000000000000000000000000000000000000000000000000000000000001",
          "end_marker": { "attempt": 1, "sha1": "ffffffffffffffffffffffffffffffffffffffff" },
          "pcrs_end": { "sha1": "0101010101010101010101010101010101010101",
                        "sha256": "0202020202020202020202020202020202020202020202020202020202020202" } } ],
      "next_index": 5000 }"#;

    #[test]
    fn parses_the_documented_manifest() {
        let m = Manifest::from_json(MANIFEST.as_bytes()).unwrap();
        assert_eq!(m.boot.reset_count, 3);
        assert_eq!(m.snapshots.len(), 1);
        let (file, c) = &m.snapshots[0];
        assert_eq!(file, "000001.snap");
        assert_eq!((c.seq, c.first_index, c.count), (1, 0, 5000));
        assert_eq!(c.end_marker.as_ref().unwrap().attempt, 1);
        assert_eq!(c.pcrs_end.len(), 2);
        let idx = BundleIndex::from_json(
            br#"{ "format": "imasnap-bundle/1", "banks": ["sha1", "sha256"], "pcr": 10,
                  "live_first_index": 5000, "nonce": "0a0b" }"#,
        )
        .unwrap();
        assert_eq!(idx.nonce, vec![10, 11]);
        m.check_against(&idx).unwrap();
    }

    #[test]
    fn refuses_path_traversal_and_bad_hex() {
        for (from, to) in [
            ("000001.snap", "../../etc/shadow"),
            ("000001.snap", "/abs"),
            ("000001.snap", ".."),
            ("\"sha256\": \"00000000", "\"sha256\": \"0000000g"),
            ("\"attempt\": 1, \"sha1\": \"ff", "\"attempt\": 1, \"sha1\": \"f"),
        ] {
            let bad = MANIFEST.replacen(from, to, 1);
            assert!(matches!(Manifest::from_json(bad.as_bytes()), Err(Failure::ManifestMalformed { .. })), "{to}");
        }
        assert!(matches!(Manifest::from_json(b"{"), Err(Failure::ManifestMalformed { .. })));
        assert!(matches!(quote_from_json(b"[]"), Err(Failure::QuoteMalformed { .. })));
    }
}
