//! The software TPM's endorsement key and TPM2_ActivateCredential.
//!
//! The EK is an ECC P-256 key in the shape of the TCG default template (L-2), derived
//! from the AK's private scalar (and so from the TPM's seed): equal seeds give equal
//! EKs, different seeds different ones. It has no certificate; a verifier pins it.

use super::SoftTpm;
use crate::credential::{activate_p256, p256_ek_area, Credential, EkPublic};
use crate::{EkInfo, TpmError};
use imasnap_log::HashAlgo;

impl SoftTpm {
    /// SHA-256("imasnap soft-tpm EK" ‖ AK scalar ‖ counter), retried in the negligible
    /// case the hash is not a valid scalar.
    fn ek_secret(&self) -> Result<p256::SecretKey, TpmError> {
        let ak = self.key.to_bytes();
        for ctr in 0u32..16 {
            let h = HashAlgo::Sha256.hash(&[b"imasnap soft-tpm EK", ak.as_slice(), &ctr.to_be_bytes()]);
            if let Ok(k) = p256::SecretKey::from_slice(h.as_bytes()) {
                return Ok(k);
            }
        }
        Err(TpmError::Backend("no valid EK scalar derived".into()))
    }

    pub(super) fn soft_endorsement_key(&self) -> Result<EkInfo, TpmError> {
        let area = p256_ek_area(&self.ek_secret()?.public_key());
        let public = EkPublic::from_bytes(&area).map_err(|e| TpmError::Backend(format!("software EK: {e}")))?;
        Ok(EkInfo { public, cert: None })
    }

    pub(super) fn soft_activate_credential(&self, cred: &Credential) -> Result<Vec<u8>, TpmError> {
        let sk = self.ek_secret()?;
        let ek = self.soft_endorsement_key()?.public;
        let name = self.ak.name().unwrap_or_default();
        activate_p256(&sk, &ek, &name, cred).map_err(|e| TpmError::Backend(format!("TPM2_ActivateCredential: {e}")))
    }
}
