//! The evidence bundle's JSON parts (docs/SNAPSHOTS.md), parsed from bytes. Still
//! sans-IO: the caller reads the files; `imasnap-wire` parses them strictly (sizes, hex,
//! file names) and turns them into the engine's typed claims. This module only maps its
//! errors to [`Failure`]s. Parsing judges nothing: a well-formed lie is the engine's
//! business.

use crate::Failure;
use imasnap_tpm::{AkPublic, Quote};
use imasnap_wire::{Part, WireError};

pub use imasnap_wire::{BundleIndex, BUNDLE_FORMAT, MANIFEST_FORMAT};

/// `manifest.json` as claims, with the file name of each snapshot.
pub type Manifest = imasnap_wire::ManifestClaims;

/// The failure class of each refused input.
impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        let detail = e.to_string();
        match e.part {
            Part::Manifest => Failure::ManifestMalformed { detail },
            Part::Quote => Failure::QuoteMalformed { detail },
            Part::Pending | Part::Bundle | Part::AkPub | Part::AkPem | Part::Ak | Part::Evidence => {
                Failure::BadEvidence { detail }
            }
        }
    }
}

/// `quote.json` (a quote plus the agent's `nonce`, which is ignored: the verifier checks
/// against its own challenge).
pub fn quote_from_json(b: &[u8]) -> Result<Quote, Failure> {
    Ok(imasnap_wire::QuoteFile::from_json(b)?.quote)
}

/// The AK shipped in the bundle: `ak.pub` (hex TPM2B_PUBLIC) or `ak.pem`.
pub fn ak_from_pub_hex(text: &str) -> Result<AkPublic, Failure> {
    Ok(imasnap_wire::ak::from_tpm2b_hex(text)?)
}

pub fn ak_from_pem(text: &str) -> Result<AkPublic, Failure> {
    Ok(imasnap_wire::ak::from_pem(text)?)
}

/// Claims that must agree between `bundle.json` and `manifest.json`.
pub fn check_against(m: &Manifest, index: &BundleIndex) -> Result<(), Failure> {
    if m.banks != index.banks || m.pcr != index.pcr {
        return Err(Failure::BadEvidence {
            detail: "bundle.json and manifest.json name different banks or PCR".into(),
        });
    }
    if m.next_index != index.live_first_index {
        return Err(Failure::LiveFirstIndexMismatch { claimed: index.live_first_index, expected: m.next_index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use imasnap_wire::claims::EXAMPLE_MANIFEST as MANIFEST;

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
        check_against(&m, &idx).unwrap();
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
            let f = Manifest::from_json(bad.as_bytes()).map_err(Failure::from);
            assert!(matches!(f, Err(Failure::ManifestMalformed { .. })), "{to}");
        }
        assert!(matches!(Manifest::from_json(b"{").map_err(Failure::from), Err(Failure::ManifestMalformed { .. })));
        assert!(matches!(quote_from_json(b"[]"), Err(Failure::QuoteMalformed { .. })));
        assert!(matches!(ak_from_pub_hex("zz"), Err(Failure::BadEvidence { .. })));
    }
}
