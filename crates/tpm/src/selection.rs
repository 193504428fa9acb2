//! TPML_PCR_SELECTION: which PCRs of which banks a quote covers.

use crate::wire::{put_u16, put_u32, Reader, WireError};
use crate::{TpmError, NUM_PCRS};
use imasnap_log::HashAlgo;

/// sizeofSelect of a 24-PCR (PC Client) TPM. The TPM rejects any other size
/// (PCR_SELECT_MIN = PCR_SELECT_MAX = 3), so we do too.
pub const SIZEOF_SELECT: u8 = 3;
/// Upper bound on TPML_PCR_SELECTION.count (HASH_COUNT is at most a handful).
const MAX_BANKS: u32 = 16;

/// An ordered list of (bank, PCR indices), i.e. a TPML_PCR_SELECTION.
///
/// Bank order matters: TPM2_Quote hashes banks in the order written, so it is
/// kept exactly as constructed or parsed. Indices within a bank are always
/// ascending and unique, because a bitmap cannot express anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<(HashAlgo, Vec<u32>)>", into = "Vec<(HashAlgo, Vec<u32>)>")]
pub struct PcrSelection {
    banks: Vec<(HashAlgo, Vec<u32>)>,
}

impl PcrSelection {
    /// Builds a selection; indices are sorted and deduplicated. Rejects PCR indices
    /// outside 0-23 and a bank listed twice (the TPM would hash it twice).
    pub fn new(banks: impl IntoIterator<Item = (HashAlgo, Vec<u32>)>) -> Result<Self, TpmError> {
        let mut out: Vec<(HashAlgo, Vec<u32>)> = Vec::new();
        for (bank, mut pcrs) in banks {
            if out.iter().any(|(b, _)| *b == bank) {
                return Err(TpmError::DuplicateBank(bank));
            }
            if let Some(&p) = pcrs.iter().find(|&&p| p as usize >= NUM_PCRS) {
                return Err(TpmError::PcrOutOfRange(p));
            }
            pcrs.sort_unstable();
            pcrs.dedup();
            out.push((bank, pcrs));
        }
        Ok(Self { banks: out })
    }

    /// The same PCRs in each of `banks`, in the given bank order.
    pub fn uniform(banks: &[HashAlgo], pcrs: &[u32]) -> Result<Self, TpmError> {
        Self::new(banks.iter().map(|&b| (b, pcrs.to_vec())))
    }

    /// Banks with their ascending PCR indices, in written order.
    pub fn banks(&self) -> &[(HashAlgo, Vec<u32>)] {
        &self.banks
    }

    /// Every (bank, pcr) in the order TPM2_Quote hashes them: banks in written order,
    /// PCRs ascending within a bank.
    pub fn iter(&self) -> impl Iterator<Item = (HashAlgo, u32)> + '_ {
        self.banks.iter().flat_map(|(b, p)| p.iter().map(move |&i| (*b, i)))
    }

    /// Whether `pcr` of `bank` is selected (in any entry for that bank).
    pub fn contains(&self, bank: HashAlgo, pcr: u32) -> bool {
        self.banks.iter().any(|(b, p)| *b == bank && p.binary_search(&pcr).is_ok())
    }

    /// True when no PCR is selected.
    pub fn is_empty(&self) -> bool {
        self.banks.iter().all(|(_, p)| p.is_empty())
    }

    /// Appends the TPML_PCR_SELECTION encoding.
    pub fn marshal(&self, out: &mut Vec<u8>) {
        put_u32(out, self.banks.len() as u32);
        for (bank, pcrs) in &self.banks {
            put_u16(out, bank.tpm_alg_id());
            out.push(SIZEOF_SELECT);
            let mut map = [0u8; SIZEOF_SELECT as usize];
            for &p in pcrs {
                if let Some(byte) = map.get_mut(p as usize / 8) {
                    *byte |= 1 << (p % 8);
                }
            }
            out.extend_from_slice(&map);
        }
    }

    /// TPML_PCR_SELECTION bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + 6 * self.banks.len());
        self.marshal(&mut v);
        v
    }

    /// Parses exactly one TPML_PCR_SELECTION (no trailing bytes).
    pub fn from_bytes(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "TPML_PCR_SELECTION");
        let s = Self::unmarshal(&mut r)?;
        r.finish()?;
        Ok(s)
    }

    /// Reads a selection as written: bank order and even a repeated bank are kept,
    /// because the pcrDigest a TPM signed was computed over exactly this.
    pub(crate) fn unmarshal(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let outer = r.set_what("TPML_PCR_SELECTION");
        let at = r.pos();
        let count = r.u32("count")?;
        if count > MAX_BANKS {
            return Err(r.err(at, format!("count {count} exceeds {MAX_BANKS}")));
        }
        let mut banks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let bank = r.hash_alg("hash")?;
            let at = r.pos();
            let size = r.u8("sizeofSelect")?;
            if size != SIZEOF_SELECT {
                return Err(r.err(at, format!("sizeofSelect {size}, want {SIZEOF_SELECT} (24-PCR TPM)")));
            }
            let map = r.take(size as usize, "pcrSelect")?;
            let pcrs = (0..NUM_PCRS as u32)
                .filter(|&i| map.get(i as usize / 8).is_some_and(|byte| byte & (1 << (i % 8)) != 0))
                .collect();
            banks.push((bank, pcrs));
        }
        r.set_what(outer);
        Ok(Self { banks })
    }
}

impl TryFrom<Vec<(HashAlgo, Vec<u32>)>> for PcrSelection {
    type Error = TpmError;
    fn try_from(v: Vec<(HashAlgo, Vec<u32>)>) -> Result<Self, TpmError> {
        Self::new(v)
    }
}

impl From<PcrSelection> for Vec<(HashAlgo, Vec<u32>)> {
    fn from(s: PcrSelection) -> Self {
        s.banks
    }
}
