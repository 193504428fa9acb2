//! Quote-anchored checkpoints (docs/CHECKPOINTS.md): a TPM quote whose measurement-PCR
//! values equal the replay of the boot's records up to a known absolute index. The agent
//! takes one at every cut and stores it with the segment before anything is deleted.
//!
//! Every field is a claim. The quote's `qualifyingData` is not a verifier's nonce: it is
//! [`qualifying_data`], a domain-separated hash that chains each checkpoint to the boot and
//! to the one before it, so a verifier recomputes it and any checkpoint that is dropped,
//! reordered, duplicated or taken from another chain fails the quote's nonce check.

use crate::evidence::AkJson;
use imasnap_tpm::Quote;
use serde::{Deserialize, Serialize};

/// Domain tag of a checkpoint's qualifyingData: no attestation nonce can collide with it.
pub const CHECKPOINT_DOMAIN: &[u8] = b"imasnap-checkpoint/1\0";

/// One checkpoint as `manifest.json`, `pending.json` and the evidence header carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointJson {
    /// Absolute index: the quoted PCRs equal the replay of records `[0, index)`.
    pub index: u64,
    /// The quote with the value of every PCR it selects, in every bank (the values are
    /// hints until the signed PCR digest confirms them).
    pub quote: Quote,
    /// The AK that signed it (a claim: the verifier uses the key it trusts).
    pub ak: AkJson,
}

/// What the checkpoint of segment `seq` binds its quote to: the boot (TPM resetCount and
/// record 0's SHA1 template digest), its own sequence number, and the previous
/// checkpoint's signed `TPMS_ATTEST` (`None` for the boot's first checkpoint).
pub fn qualifying_data(
    reset_count: u64,
    boot_aggregate_sha1: &[u8; 20],
    seq: u64,
    prev_attest: Option<&[u8]>,
) -> [u8; 32] {
    let prev = match prev_attest {
        Some(a) => imasnap_log::HashAlgo::Sha256.hash(&[a]),
        None => imasnap_log::HashAlgo::Sha256.hash(&[b"none".as_slice()]),
    };
    let h = imasnap_log::HashAlgo::Sha256.hash(&[
        CHECKPOINT_DOMAIN,
        &reset_count.to_be_bytes(),
        boot_aggregate_sha1,
        &seq.to_be_bytes(),
        prev.as_bytes(),
    ]);
    let mut out = [0u8; 32];
    out.copy_from_slice(h.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_value() {
        let base = qualifying_data(1, &[7; 20], 3, Some(b"attest"));
        assert_ne!(base, qualifying_data(2, &[7; 20], 3, Some(b"attest")));
        assert_ne!(base, qualifying_data(1, &[8; 20], 3, Some(b"attest")));
        assert_ne!(base, qualifying_data(1, &[7; 20], 4, Some(b"attest")));
        assert_ne!(base, qualifying_data(1, &[7; 20], 3, Some(b"attesT")));
        assert_ne!(base, qualifying_data(1, &[7; 20], 3, None));
        assert_eq!(base, qualifying_data(1, &[7; 20], 3, Some(b"attest")));
    }
}
