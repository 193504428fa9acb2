//! The in-process software TPM: the embedded default back end.

use crate::attest::{Attest, ClockInfo};
use crate::public::{p256_ak_area, AkPublic, PublicArea};
use crate::quote::Quote;
use crate::selection::PcrSelection;
use crate::signature::Signature;
use crate::{Tpm, TpmError, MAX_NONCE, NUM_PCRS};
use imasnap_log::{HashAlgo, PcrValue};

// The endorsement key and credential activation (AK enrolment).
mod ek;

/// TPM_RH_ENDORSEMENT: the hierarchy the software AK lives in, so clock info is not
/// obfuscated in its quotes (as with `tpm2_createak`).
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;
/// firmwareVersion reported by [`SoftTpm`].
pub const SOFT_TPM_FIRMWARE_VERSION: u64 = 0x2023_0619_0016_3636;
/// Milliseconds [`SoftTpm`]'s clock advances per command, so successive quotes differ.
pub const CLOCK_TICK_MS: u64 = 1;

/// A deterministic software TPM 2.0: PCR banks, an ECDSA P-256 (SHA-256) restricted
/// signing AK derived from a seed, quotes with real TPM 2.0 wire formats, and clock info.
///
/// PCR initial values follow the PC Client profile as swtpm shows them after
/// TPM2_Startup(CLEAR): PCRs 0-16 and 23 all zero, 17-22 all ones (they reset to
/// zero only through a locality-4 dynamic launch, which is not modelled). There are
/// no localities: any PCR 0-23 may be extended. Signatures are RFC 6979
/// deterministic, so equal seeds and equal command sequences give equal bytes.
/// `Clone` forks the whole TPM state, handy for crash and replay tests.
#[derive(Clone)]
pub struct SoftTpm {
    banks: Vec<HashAlgo>,
    /// `pcrs[bank][pcr]`, banks in `banks` order.
    pcrs: Vec<[PcrValue; NUM_PCRS]>,
    clock: ClockInfo,
    key: p256::ecdsa::SigningKey,
    ak: AkPublic,
    qualified_name: Vec<u8>,
}

impl std::fmt::Debug for SoftTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftTpm").field("banks", &self.banks).field("clock", &self.clock).finish_non_exhaustive()
    }
}

/// The default banks, as swtpm allocates them out of the box: SHA-1 then SHA-256.
pub const DEFAULT_BANKS: [HashAlgo; 2] = [HashAlgo::Sha1, HashAlgo::Sha256];

fn initial_value(bank: HashAlgo, pcr: usize) -> PcrValue {
    if (17..=22).contains(&pcr) {
        PcrValue::ones(bank)
    } else {
        PcrValue::zero(bank)
    }
}

impl SoftTpm {
    /// A TPM with the default banks (SHA-1, SHA-256) and an AK derived from `seed`.
    pub fn new(seed: u64) -> Self {
        Self::build(seed, DEFAULT_BANKS.to_vec())
    }

    /// A TPM with `banks` allocated in that order. Rejects no banks or a bank twice.
    pub fn with_banks(seed: u64, banks: &[HashAlgo]) -> Result<Self, TpmError> {
        if banks.is_empty() {
            return Err(TpmError::NoBanks);
        }
        for (i, b) in banks.iter().enumerate() {
            if banks[..i].contains(b) {
                return Err(TpmError::DuplicateBank(*b));
            }
        }
        Ok(Self::build(seed, banks.to_vec()))
    }

    fn build(seed: u64, banks: Vec<HashAlgo>) -> Self {
        let key = derive_key(seed);
        let area: PublicArea = p256_ak_area(key.verifying_key());
        let qualified_name = area.qualified_name_of_primary(TPM_RH_ENDORSEMENT);
        let ak = AkPublic::trusted_p256(*key.verifying_key(), area);
        let pcrs = banks.iter().map(|&b| std::array::from_fn(|i| initial_value(b, i))).collect();
        Self {
            banks,
            pcrs,
            clock: ClockInfo { clock: 0, reset_count: 0, restart_count: 0, safe: true },
            key,
            ak,
            qualified_name,
        }
    }

    /// Cold boot (TPM Reset: TPM2_Startup(CLEAR) after power loss or Shutdown(CLEAR)):
    /// PCRs to initial values, resetCount + 1, restartCount = 0. Clock keeps running.
    /// kexec is not a TPM event and must not call this.
    pub fn reset(&mut self) {
        for (bank, vals) in self.banks.iter().zip(self.pcrs.iter_mut()) {
            *vals = std::array::from_fn(|i| initial_value(*bank, i));
        }
        self.clock.reset_count = self.clock.reset_count.wrapping_add(1);
        self.clock.restart_count = 0;
        self.tick();
    }

    /// TPM Resume (TPM2_Shutdown(STATE) then TPM2_Startup(STATE), i.e. suspend/resume):
    /// PCRs are kept, restartCount + 1.
    pub fn restart(&mut self) {
        self.clock.restart_count = self.clock.restart_count.wrapping_add(1);
        self.tick();
    }

    /// Lets time pass without a command.
    pub fn advance_clock(&mut self, ms: u64) {
        self.clock.clock = self.clock.clock.saturating_add(ms);
    }

    fn tick(&mut self) {
        self.advance_clock(CLOCK_TICK_MS);
    }

    fn bank_index(&self, bank: HashAlgo) -> Result<usize, TpmError> {
        self.banks.iter().position(|&b| b == bank).ok_or(TpmError::BankNotAllocated(bank))
    }

    pub(crate) fn get(&self, bank: HashAlgo, pcr: u32) -> Result<PcrValue, TpmError> {
        let b = self.bank_index(bank)?;
        self.pcrs.get(b).and_then(|v| v.get(pcr as usize)).copied().ok_or(TpmError::PcrOutOfRange(pcr))
    }

    #[cfg(test)]
    pub(crate) fn signing_key(&self) -> &p256::ecdsa::SigningKey {
        &self.key
    }

    /// Signs the SHA-256 of `attest`, as the AK's ECDSA-SHA256 scheme prescribes. Private:
    /// a restricted key signs only what the TPM itself built.
    pub(crate) fn sign_attest(&self, attest: &[u8]) -> Result<Signature, TpmError> {
        let digest = HashAlgo::Sha256.hash(&[attest]);
        let mut prehash = [0u8; 32];
        prehash.copy_from_slice(digest.as_bytes());
        let (r, s) = crate::soft_sign::sign_prehash(self.key.as_nonzero_scalar().as_ref(), &prehash)
            .ok_or_else(|| TpmError::Backend("ECDSA sign: degenerate nonce".into()))?;
        Ok(Signature::Ecdsa { hash: HashAlgo::Sha256, r: r.to_vec(), s: s.to_vec() })
    }
}

/// Derives the AK private scalar: SHA-256("imasnap soft-tpm AK" || seed || counter),
/// retried in the negligible case the hash is not a valid scalar.
fn derive_key(seed: u64) -> p256::ecdsa::SigningKey {
    let mut ctr: u32 = 0;
    loop {
        let h = HashAlgo::Sha256.hash(&[b"imasnap soft-tpm AK", &seed.to_be_bytes(), &ctr.to_be_bytes()]);
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(h.as_bytes()) {
            return k;
        }
        ctr = ctr.wrapping_add(1);
    }
}

impl Tpm for SoftTpm {
    fn is_simulated(&self) -> bool {
        true
    }

    fn banks(&self) -> Vec<HashAlgo> {
        self.banks.clone()
    }

    fn pcr_read(&mut self, bank: HashAlgo, pcrs: &[u32]) -> Result<Vec<PcrValue>, TpmError> {
        let out = pcrs.iter().map(|&p| self.get(bank, p)).collect::<Result<Vec<_>, _>>()?;
        self.tick();
        Ok(out)
    }

    fn pcr_extend(&mut self, pcr: u32, digests: &[PcrValue]) -> Result<(), TpmError> {
        if pcr as usize >= NUM_PCRS {
            return Err(TpmError::PcrOutOfRange(pcr));
        }
        // Validate everything first so a bad list changes nothing.
        for (i, d) in digests.iter().enumerate() {
            if digests[..i].iter().any(|e| e.algo() == d.algo()) {
                return Err(TpmError::DuplicateBank(d.algo()));
            }
            self.bank_index(d.algo())?;
        }
        for d in digests {
            let b = self.bank_index(d.algo())?;
            if let Some(v) = self.pcrs.get_mut(b).and_then(|bank| bank.get_mut(pcr as usize)) {
                d.algo().extend(v, d.as_bytes());
            }
        }
        self.tick();
        Ok(())
    }

    fn pcr_reset(&mut self, pcr: u32) -> Result<(), TpmError> {
        if !crate::RESETTABLE_PCRS.contains(&pcr) {
            return Err(TpmError::Backend(format!("TPM2_PCR_Reset: PCR {pcr} is not resettable at locality 0")));
        }
        for (bank, vals) in self.banks.iter().zip(self.pcrs.iter_mut()) {
            if let Some(v) = vals.get_mut(pcr as usize) {
                *v = PcrValue::zero(*bank);
            }
        }
        self.tick();
        Ok(())
    }

    fn quote(&mut self, nonce: &[u8], selection: &PcrSelection) -> Result<Quote, TpmError> {
        if nonce.len() > MAX_NONCE {
            return Err(TpmError::NonceTooLong { len: nonce.len(), max: MAX_NONCE });
        }
        let mut pcr_values = Vec::new();
        let mut h = HashAlgo::Sha256.hasher();
        for (bank, pcr) in selection.iter() {
            let v = self.get(bank, pcr)?;
            h.update(v.as_bytes());
            pcr_values.push((bank, pcr, v));
        }
        self.tick();
        let attest = Attest {
            qualified_signer: self.qualified_name.clone(),
            extra_data: nonce.to_vec(),
            clock_info: self.clock,
            firmware_version: SOFT_TPM_FIRMWARE_VERSION,
            pcr_select: selection.clone(),
            pcr_digest: h.finish().as_bytes().to_vec(),
        }
        .to_bytes();
        let signature = self.sign_attest(&attest)?.to_bytes();
        Ok(Quote { attest, signature, pcr_values })
    }

    fn clock_info(&mut self) -> Result<ClockInfo, TpmError> {
        self.tick();
        Ok(self.clock)
    }

    fn ak_public(&self) -> AkPublic {
        self.ak.clone()
    }

    fn endorsement_key(&mut self) -> Result<crate::EkInfo, TpmError> {
        self.soft_endorsement_key()
    }

    fn activate_credential(&mut self, cred: &crate::Credential) -> Result<Vec<u8>, TpmError> {
        self.tick();
        self.soft_activate_credential(cred)
    }
}
