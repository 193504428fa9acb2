//! The checkpoint invariant both crash matrices check: every checkpoint in the manifest
//! is signed by the TPM's AK over its chain's qualifyingData, and its quoted PCR values
//! equal the replay of the true log up to its index.

use imasnap_log::{HashAlgo, Record, ReplayOptions, Replayer};
use imasnap_tpm::{verify_quote, AkPublic};
use imasnap_wire::{qualifying_data, Manifest};

/// Checks every checkpoint of `m` against `log` (every record of the boot, SHA1 form).
/// `require` also demands one on every segment.
pub fn check(m: &Manifest, log: &[Record], ak: &AkPublic, require: bool) -> Result<(), String> {
    let ba: [u8; 20] =
        hex::decode(&m.boot.boot_aggregate_sha1).ok().and_then(|v| v.try_into().ok()).ok_or("boot_aggregate_sha1")?;
    let mut prev: Option<&[u8]> = None;
    for s in &m.snapshots {
        let Some(c) = &s.checkpoint else {
            if require {
                return Err(format!("segment {} has no checkpoint", s.seq));
            }
            continue;
        };
        if c.index < s.end_index() || c.index > log.len() as u64 {
            return Err(format!(
                "segment {} [{}, {}): checkpoint index {}",
                s.seq,
                s.first_index,
                s.end_index(),
                c.index
            ));
        }
        let qd = qualifying_data(m.boot.reset_count, &ba, s.seq, prev);
        verify_quote(&c.quote, ak, &qd).map_err(|e| format!("segment {} checkpoint quote: {e}", s.seq))?;
        let mut opts = ReplayOptions::new(&m.banks);
        opts.parallel = false;
        let mut rp = Replayer::new(opts);
        rp.push_batch(&log[..c.index as usize]).map_err(|e| e.to_string())?;
        let st = rp.finish().state().clone();
        for &b in &m.banks {
            let want: Option<HashAlgo> = Some(b);
            let q = c.quote.pcr_value(b, m.pcr);
            if q.as_ref() != st.get(b, m.pcr as usize) {
                return Err(format!(
                    "segment {} checkpoint at {}: {want:?} PCR {} differs from the replay",
                    s.seq, c.index, m.pcr
                ));
            }
        }
        prev = Some(&c.quote.attest);
    }
    Ok(())
}
