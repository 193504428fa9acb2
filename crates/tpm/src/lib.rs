//! imasnap-tpm: the TPM component (docs/ARCHITECTURE.md).
//!
//! - [`Tpm`]: one object-safe interface for every back end (PCR read/extend, quote,
//!   clock info, AK public key).
//! - [`SoftTpm`]: a deterministic in-process software TPM, the embedded default.
//! - Real TPM 2.0 wire formats ([`Attest`], [`Signature`], [`PcrSelection`],
//!   [`PublicArea`]) so quotes from swtpm or hardware verify the same way.
//! - `EsapiTpm` (feature `esapi`, off by default: it links libtss2): a real TPM 2.0
//!   through tss-esapi;
//!   [`open_tpm`] picks a back end from a string such as `swtpm:host=127.0.0.1,port=2321`.
//! - [`verify_quote`]: pure-Rust verification that never needs a TPM.
//!
//! Nothing here panics on input: every parser of untrusted bytes returns a
//! [`WireError`] or [`QuoteError`] naming the structure and byte offset.

pub mod attest;
pub mod credential;
pub mod ekcert;
#[cfg(feature = "esapi")]
pub mod esapi;
pub mod public;
pub mod quote;
pub mod selection;
pub mod signature;
pub mod soft;
mod soft_sign;
mod wire;

#[cfg(test)]
mod tests;

pub use attest::{Attest, ClockInfo};
pub use credential::{make_credential, Credential, CredentialError, EkPublic};
#[cfg(feature = "esapi")]
pub use esapi::{AkAlg, AkHierarchy, AkSource, EsapiTpm};
pub use imasnap_log::{HashAlgo, PcrValue};
pub use public::{AkError, AkKind, AkPublic, EccCurve, PublicArea, PublicKeyParams};
pub use quote::{compute_pcr_digest, verify_quote, Quote, QuoteError, VerifiedQuote};
pub use selection::PcrSelection;
pub use signature::{SigAlg, SigScheme, Signature};
pub use soft::SoftTpm;
pub use wire::WireError;

/// PCRs of a PC Client TPM: 0-23.
pub const NUM_PCRS: usize = imasnap_log::replay::NUM_PCRS;

/// Largest nonce (qualifyingData) accepted: a TPM2B_DATA holds a TPMT_HA, 66 bytes
/// with SHA-512, but TPMs without SHA-512 allow less, so we cap at 64. Verifiers
/// should use 32 bytes, which every TPM accepts.
pub const MAX_NONCE: usize = 64;

/// PCR 0-23 of every bank, as returned by [`Tpm::pcr_read_all`]. The same type replay
/// uses, so a read can seed [`imasnap_log::Replayer::resume`] directly.
pub type PcrBanks = imasnap_log::PcrState;

/// The PCRs TPM2_PCR_Reset accepts at locality 0 (PC Client profile): 16 and 23.
pub const RESETTABLE_PCRS: [u32; 2] = [16, 23];

/// Why a TPM command failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    #[error("PCR index {0} out of range (0-23)")]
    PcrOutOfRange(u32),
    #[error("PCR bank {0} is not allocated")]
    BankNotAllocated(HashAlgo),
    #[error("PCR bank {0} listed twice")]
    DuplicateBank(HashAlgo),
    #[error("no PCR banks")]
    NoBanks,
    #[error("nonce of {len} bytes exceeds {max}")]
    NonceTooLong { len: usize, max: usize },
    /// A back end's own failure (transport, TPM response code, ...).
    #[error("TPM back end: {0}")]
    Backend(String),
}

/// A TPM 2.0 as imasnap uses it. Object-safe, so back ends are chosen at run time
/// (`Box<dyn Tpm>`). Commands take `&mut self` because each one changes TPM state
/// (at least the clock).
pub trait Tpm: Send {
    /// Allocated PCR banks, in TPM bank order (the order IMA's snapshot_aggregate lists them).
    fn banks(&self) -> Vec<HashAlgo>;

    /// TPM2_PCR_Read of `pcrs` (in that order) from one bank.
    fn pcr_read(&mut self, bank: HashAlgo, pcrs: &[u32]) -> Result<Vec<PcrValue>, TpmError>;

    /// PCR 0-23 of every allocated bank.
    fn pcr_read_all(&mut self) -> Result<PcrBanks, TpmError> {
        let banks = self.banks();
        let all: Vec<u32> = (0..NUM_PCRS as u32).collect();
        let mut out = PcrBanks::new(&banks);
        for bank in banks {
            for (i, v) in self.pcr_read(bank, &all)?.into_iter().enumerate() {
                if v.algo() != bank || !out.set(i, v) {
                    return Err(TpmError::Backend(format!("pcr_read returned a bad {bank} value for PCR {i}")));
                }
            }
        }
        Ok(out)
    }

    /// TPM2_PCR_Extend: `digests` holds at most one digest per bank (a TPML_DIGEST_VALUES);
    /// banks without a digest are left unchanged. All-or-nothing on error.
    fn pcr_extend(&mut self, pcr: u32, digests: &[PcrValue]) -> Result<(), TpmError>;

    /// TPM2_PCR_Reset at locality 0: only PCR 16 (debug) and 23 (application) allow
    /// it on a PC Client TPM. Keylime binds its agent's key into PCR 16 this way.
    fn pcr_reset(&mut self, pcr: u32) -> Result<(), TpmError> {
        Err(TpmError::Backend(format!("this TPM back end cannot reset PCR {pcr}")))
    }

    /// TPM2_Quote with the AK over `selection`, `nonce` as qualifyingData.
    fn quote(&mut self, nonce: &[u8], selection: &PcrSelection) -> Result<Quote, TpmError>;

    /// TPM2_ReadClock's clock info: reboot and suspend detection.
    fn clock_info(&mut self) -> Result<ClockInfo, TpmError>;

    /// The attestation key that signs [`Tpm::quote`].
    fn ak_public(&self) -> AkPublic;

    /// Whether this is a simulation inside the process (the soft TPM): evidence quoted by
    /// it says so (`simulated` in the evidence header). swtpm counts as a real TPM here:
    /// it is a separate TPM 2.0 implementation, reached like a device.
    fn is_simulated(&self) -> bool {
        false
    }

    /// The endorsement key (TCG default template) and its certificate from NV, if the
    /// TPM has one: what an agent presents for AK enrolment (docs/SERVICES.md).
    fn endorsement_key(&mut self) -> Result<EkInfo, TpmError> {
        Err(TpmError::Backend("this TPM back end has no endorsement key".into()))
    }

    /// TPM2_ActivateCredential with the AK as the credentialed object and the EK as the
    /// key that unwraps the seed: returns the secret only if `cred` was made for this
    /// TPM's EK and this AK's Name.
    fn activate_credential(&mut self, cred: &Credential) -> Result<Vec<u8>, TpmError> {
        let _ = cred;
        Err(TpmError::Backend("this TPM back end cannot activate credentials".into()))
    }
}

/// What [`Tpm::endorsement_key`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EkInfo {
    pub public: EkPublic,
    /// The EK certificate (DER) from NV index 0x01c00002 (RSA) or 0x01c0000a (ECC).
    pub cert: Option<Vec<u8>>,
}

/// Opens a TPM back end from a spec string:
///
/// - `soft` or `soft:seed=N`: the in-process [`SoftTpm`] (seed 0 by default);
/// - `swtpm:host=H,port=P`, `mssim:host=H,port=P`, `device[:/dev/tpmrm0]`, `tabrmd[:…]`:
///   a real TPM 2.0 through tss-esapi (feature `esapi`), with the default AK
///   ([`esapi::AkSource::default`]: ECC P-256 primary in the endorsement hierarchy).
pub fn open_tpm(spec: &str) -> Result<Box<dyn Tpm>, TpmError> {
    let spec = spec.trim();
    if spec == "soft" {
        return Ok(Box::new(SoftTpm::new(0)));
    }
    if let Some(rest) = spec.strip_prefix("soft:") {
        let seed = rest
            .strip_prefix("seed=")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| TpmError::Backend(format!("bad TPM spec {spec:?}: expected soft:seed=N")))?;
        return Ok(Box::new(SoftTpm::new(seed)));
    }
    let kind = spec.split(':').next().unwrap_or_default();
    if !matches!(kind, "swtpm" | "mssim" | "device" | "tabrmd") {
        return Err(TpmError::Backend(format!(
            "unknown TPM {spec:?}: use soft, swtpm:host=H,port=P, device:/dev/tpmrm0 or tabrmd"
        )));
    }
    open_esapi(spec)
}

#[cfg(feature = "esapi")]
fn open_esapi(spec: &str) -> Result<Box<dyn Tpm>, TpmError> {
    Ok(Box::new(EsapiTpm::open(spec, AkSource::default())?))
}

#[cfg(not(feature = "esapi"))]
fn open_esapi(spec: &str) -> Result<Box<dyn Tpm>, TpmError> {
    Err(TpmError::Backend(format!(
        "{spec}: this build has no real TPM 2.0 back end; rebuild with `--features tpm2` \
         (the `imasnap` binary) or `esapi` (imasnap-tpm), which needs libtss2-dev and pkg-config"
    )))
}

impl<T: Tpm + ?Sized> Tpm for Box<T> {
    fn banks(&self) -> Vec<HashAlgo> {
        (**self).banks()
    }
    fn pcr_read(&mut self, bank: HashAlgo, pcrs: &[u32]) -> Result<Vec<PcrValue>, TpmError> {
        (**self).pcr_read(bank, pcrs)
    }
    fn pcr_read_all(&mut self) -> Result<PcrBanks, TpmError> {
        (**self).pcr_read_all()
    }
    fn pcr_extend(&mut self, pcr: u32, digests: &[PcrValue]) -> Result<(), TpmError> {
        (**self).pcr_extend(pcr, digests)
    }
    fn pcr_reset(&mut self, pcr: u32) -> Result<(), TpmError> {
        (**self).pcr_reset(pcr)
    }
    fn quote(&mut self, nonce: &[u8], selection: &PcrSelection) -> Result<Quote, TpmError> {
        (**self).quote(nonce, selection)
    }
    fn clock_info(&mut self) -> Result<ClockInfo, TpmError> {
        (**self).clock_info()
    }
    fn ak_public(&self) -> AkPublic {
        (**self).ak_public()
    }
    fn is_simulated(&self) -> bool {
        (**self).is_simulated()
    }
    fn endorsement_key(&mut self) -> Result<EkInfo, TpmError> {
        (**self).endorsement_key()
    }
    fn activate_credential(&mut self, cred: &Credential) -> Result<Vec<u8>, TpmError> {
        (**self).activate_credential(cred)
    }
}
