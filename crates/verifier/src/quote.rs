//! The quote as the engine sees it: something that, given the verifier's challenge,
//! proves a TPM's resetCount and PCR values. The engine never looks at wire formats.

use crate::Failure;
use imasnap_log::{HashAlgo, PcrValue};
use imasnap_tpm::{verify_quote, AkPublic, Quote, QuoteError, VerifiedQuote};

/// A quote plus the AK the verifier trusts for the host.
pub trait QuoteEvidence {
    /// Checks the signature under the trusted AK, that the TPM built the structure, and
    /// that it answers `nonce`. Returns the signed content.
    fn authenticate(&self, nonce: &[u8]) -> Result<Box<dyn AttestedQuote + '_>, Failure>;

    /// The host-supplied value of `bank` PCR `pcr` (unauthenticated: a candidate that
    /// [`AttestedQuote::check_pcrs`] must confirm).
    fn pcr_value_hint(&self, bank: HashAlgo, pcr: u32) -> Option<PcrValue>;

    /// The AK the verifier trusts for this host, if the evidence is a TPM quote: the key
    /// checkpoints must be signed with. `None`: checkpoints cannot be authenticated.
    fn trusted_ak(&self) -> Option<&AkPublic> {
        None
    }
}

/// The authenticated content of a quote.
pub trait AttestedQuote {
    /// TPM resetCount: changes on every cold boot, never on kexec.
    fn reset_count(&self) -> u64;
    /// TPM clock (ms) when quoted, if known.
    fn clock(&self) -> Option<u64> {
        None
    }
    /// Whether the signed selection covers `pcr` of `bank`.
    fn selects(&self, bank: HashAlgo, pcr: u32) -> bool;
    /// Confirms candidate values against the signed PCR digest (every selected PCR).
    /// Fails with [`Failure::QuotePcrDigestMismatch`].
    fn check_pcrs(&self, values: &dyn Fn(HashAlgo, u32) -> Option<PcrValue>) -> Result<(), Failure>;
}

/// PCR values the caller already trusts, e.g. read on the machine itself or taken from a
/// quote it verified by other means. Ignores the nonce: use only where no quote applies.
#[derive(Clone, Debug, Default)]
pub struct TrustedPcrs {
    pub reset_count: u64,
    /// (bank, pcr, value); the selection is exactly the PCRs listed.
    pub values: Vec<(HashAlgo, u32, PcrValue)>,
}

impl TrustedPcrs {
    fn get(&self, bank: HashAlgo, pcr: u32) -> Option<PcrValue> {
        self.values.iter().find(|(b, p, _)| *b == bank && *p == pcr).map(|(_, _, v)| *v)
    }
}

impl QuoteEvidence for TrustedPcrs {
    fn authenticate(&self, _nonce: &[u8]) -> Result<Box<dyn AttestedQuote + '_>, Failure> {
        Ok(Box::new(self))
    }
    fn pcr_value_hint(&self, bank: HashAlgo, pcr: u32) -> Option<PcrValue> {
        self.get(bank, pcr)
    }
}

impl AttestedQuote for &TrustedPcrs {
    fn reset_count(&self) -> u64 {
        self.reset_count
    }
    fn selects(&self, bank: HashAlgo, pcr: u32) -> bool {
        self.get(bank, pcr).is_some()
    }
    fn check_pcrs(&self, values: &dyn Fn(HashAlgo, u32) -> Option<PcrValue>) -> Result<(), Failure> {
        for (b, p, v) in &self.values {
            if values(*b, *p) != Some(*v) {
                return Err(Failure::QuotePcrDigestMismatch { detail: format!("{b} PCR {p} differs") });
            }
        }
        Ok(())
    }
}

/// A TPM 2.0 quote (`imasnap-tpm`) with the AK the verifier enrolled for the host.
#[derive(Clone, Copy, Debug)]
pub struct TpmQuote<'a> {
    pub quote: &'a Quote,
    /// The AK the verifier trusts (from enrolment), never the one shipped with the evidence.
    pub trusted_ak: &'a AkPublic,
    /// The AK the evidence bundle ships (`ak.pub` / `ak.pem`), if any: a claim that must
    /// name the trusted key.
    pub claimed_ak: Option<&'a AkPublic>,
}

impl<'a> TpmQuote<'a> {
    pub fn new(quote: &'a Quote, trusted_ak: &'a AkPublic) -> Self {
        Self { quote, trusted_ak, claimed_ak: None }
    }
}

/// Same key material, however each was loaded (PEM or TPM2B_PUBLIC).
pub(crate) fn same_key(a: &AkPublic, b: &AkPublic) -> bool {
    a.kind() == b.kind() && a.to_pem() == b.to_pem() && !a.to_pem().is_empty()
}

pub(crate) fn quote_failure(e: QuoteError) -> Failure {
    match e {
        QuoteError::Malformed { .. } | QuoteError::UnsupportedAlgorithm { .. } => {
            Failure::QuoteMalformed { detail: e.to_string() }
        }
        QuoteError::UnsupportedScheme(_)
        | QuoteError::KeyMismatch { .. }
        | QuoteError::SchemeMismatch { .. }
        | QuoteError::BadSignature(_) => Failure::QuoteBadSignature { detail: e.to_string() },
        QuoteError::BadMagic { .. } | QuoteError::WrongType { .. } => {
            Failure::QuoteNotTpmGenerated { detail: e.to_string() }
        }
        QuoteError::NonceMismatch { expected, found } => {
            Failure::QuoteNonceMismatch { expected: hex::encode(expected), found: hex::encode(found) }
        }
        QuoteError::PcrDigestMismatch { .. } | QuoteError::MissingPcrValue { .. } | QuoteError::WrongPcrBank { .. } => {
            Failure::QuotePcrDigestMismatch { detail: e.to_string() }
        }
        QuoteError::SelectionMismatch { bank, pcr } => Failure::QuoteSelectionMissing { bank, pcr },
    }
}

impl QuoteEvidence for TpmQuote<'_> {
    fn authenticate(&self, nonce: &[u8]) -> Result<Box<dyn AttestedQuote + '_>, Failure> {
        if let Some(c) = self.claimed_ak {
            if !same_key(c, self.trusted_ak) {
                let fp = |k: &AkPublic| {
                    let h = HashAlgo::Sha256.hash(&[k.to_pem().as_bytes()]).to_hex();
                    format!("{} sha256:{}", k.kind(), &h[..16])
                };
                return Err(Failure::AkMismatch { claimed: fp(c), trusted: fp(self.trusted_ak) });
            }
        }
        let v = verify_quote(self.quote, self.trusted_ak, nonce).map_err(quote_failure)?;
        Ok(Box::new(v))
    }

    fn pcr_value_hint(&self, bank: HashAlgo, pcr: u32) -> Option<PcrValue> {
        self.quote.pcr_value(bank, pcr)
    }

    fn trusted_ak(&self) -> Option<&AkPublic> {
        Some(self.trusted_ak)
    }
}

impl AttestedQuote for VerifiedQuote {
    fn reset_count(&self) -> u64 {
        self.clock_info.reset_count as u64
    }
    fn clock(&self) -> Option<u64> {
        Some(self.clock_info.clock)
    }
    fn selects(&self, bank: HashAlgo, pcr: u32) -> bool {
        self.selection.contains(bank, pcr)
    }
    fn check_pcrs(&self, values: &dyn Fn(HashAlgo, u32) -> Option<PcrValue>) -> Result<(), Failure> {
        VerifiedQuote::check_pcrs(self, values).map_err(quote_failure)
    }
}
