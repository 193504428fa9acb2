//! EK certificates: is this endorsement key one a trusted TPM manufacturer (or the
//! operator's own CA, such as swtpm's local CA) vouched for?
//!
//! Every certificate in the configured CA files is a trust anchor (roots and
//! intermediates alike, as Keylime's EK certificate store treats them): an EK
//! certificate is accepted when a configured certificate whose subject is its issuer
//! verifies its signature, it is within its validity period, and its public key is the
//! EK the TPM presented. Pure: the caller passes the time.

use crate::credential::EkPublic;
use der::{Decode as _, DecodePem as _, Encode as _};
use x509_cert::Certificate;

/// Why an EK certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("EK certificate: {0}")]
pub struct EkCertError(pub String);

fn err(s: impl Into<String>) -> EkCertError {
    EkCertError(s.into())
}

/// The configured EK CA certificates.
#[derive(Clone, Debug, Default)]
pub struct EkTrust {
    anchors: Vec<Certificate>,
}

impl EkTrust {
    /// Adds every `CERTIFICATE` in a PEM bundle; `source` names it in errors.
    pub fn add_pem(&mut self, pem: &str, source: &str) -> Result<usize, EkCertError> {
        // x509-cert 0.2's load_pem_chain underflows (`len() - 1`) on an input that is
        // empty after its trailing CR/LF are stripped: found by the fuzz smoke.
        if pem.trim().is_empty() {
            return Err(err(format!("{source}: no CERTIFICATE block")));
        }
        let certs = Certificate::load_pem_chain(pem.as_bytes()).map_err(|e| err(format!("{source}: {e}")))?;
        if certs.is_empty() {
            return Err(err(format!("{source}: no CERTIFICATE block")));
        }
        let n = certs.len();
        self.anchors.extend(certs);
        Ok(n)
    }

    /// Adds one DER certificate.
    pub fn add_der(&mut self, der: &[u8], source: &str) -> Result<(), EkCertError> {
        self.anchors.push(Certificate::from_der(der).map_err(|e| err(format!("{source}: {e}")))?);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Checks `cert` (DER or PEM) for `ek` at `now_unix` seconds. Returns the subject of
    /// the anchor that issued it.
    pub fn verify(&self, cert: &[u8], ek: &EkPublic, now_unix: u64) -> Result<String, EkCertError> {
        let c = parse(cert)?;
        let tbs = &c.tbs_certificate;
        let nb = tbs.validity.not_before.to_unix_duration().as_secs();
        let na = tbs.validity.not_after.to_unix_duration().as_secs();
        if now_unix < nb || now_unix > na {
            return Err(err(format!("not valid now (valid from {nb} to {na}, Unix seconds)")));
        }
        let spki = tbs.subject_public_key_info.to_der().map_err(|e| err(format!("subjectPublicKeyInfo: {e}")))?;
        if !ek.matches_spki(&spki) {
            return Err(err("its public key is not the EK the TPM presented"));
        }
        let issuer = tbs.issuer.to_string();
        let tbs_der = tbs.to_der().map_err(|e| err(format!("tbsCertificate: {e}")))?;
        let sig = c.signature.as_bytes().ok_or_else(|| err("signature has unused bits"))?;
        let alg = c.signature_algorithm.oid.to_string();
        let mut tried = 0;
        for a in self.anchors.iter().filter(|a| a.tbs_certificate.subject == tbs.issuer) {
            tried += 1;
            let key = a.tbs_certificate.subject_public_key_info.to_der().map_err(|e| err(e.to_string()))?;
            if verify_sig(&alg, &key, &tbs_der, sig).is_ok() {
                return Ok(a.tbs_certificate.subject.to_string());
            }
        }
        if tried == 0 {
            return Err(err(format!("issuer {issuer:?} is not among the configured EK CAs")));
        }
        Err(err(format!("signature by {issuer:?} does not verify with any configured CA of that name ({alg})")))
    }
}

/// Drops padding after the first DER element (NV indices are often larger than the
/// certificate they hold).
pub fn trim_der(b: &[u8]) -> &[u8] {
    let len = match b {
        [0x30, 0x82, h, l, ..] => 4 + ((*h as usize) << 8 | *l as usize),
        [0x30, 0x81, l, ..] => 3 + *l as usize,
        _ => b.len(),
    };
    b.get(..len).unwrap_or(b)
}

fn parse(b: &[u8]) -> Result<Certificate, EkCertError> {
    if b.starts_with(b"-----BEGIN") {
        Certificate::from_pem(b).map_err(|e| err(format!("PEM: {e}")))
    } else {
        Certificate::from_der(b).map_err(|e| err(format!("DER: {e}")))
    }
}

/// Verifies a certificate signature (RSA PKCS#1 v1.5 or ECDSA, SHA-1/256/384/512).
fn verify_sig(alg: &str, spki: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), EkCertError> {
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::signature::Verifier as _;
    let bad = |e: &dyn std::fmt::Display| err(format!("signature: {e}"));
    let rsa_key = || rsa::RsaPublicKey::from_public_key_der(spki).map_err(|e| bad(&e));
    let rsa_sig = || rsa::pkcs1v15::Signature::try_from(sig).map_err(|e| bad(&e));
    match alg {
        "1.2.840.113549.1.1.5" => {
            rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::new(rsa_key()?).verify(msg, &rsa_sig()?).map_err(|e| bad(&e))
        }
        "1.2.840.113549.1.1.11" => {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(rsa_key()?).verify(msg, &rsa_sig()?).map_err(|e| bad(&e))
        }
        "1.2.840.113549.1.1.12" => {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(rsa_key()?).verify(msg, &rsa_sig()?).map_err(|e| bad(&e))
        }
        "1.2.840.113549.1.1.13" => {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(rsa_key()?).verify(msg, &rsa_sig()?).map_err(|e| bad(&e))
        }
        "1.2.840.10045.4.3.2" | "1.2.840.10045.4.3.3" | "1.2.840.10045.4.3.4" => {
            let digest = match alg {
                "1.2.840.10045.4.3.2" => imasnap_log::HashAlgo::Sha256.hash(&[msg]),
                "1.2.840.10045.4.3.3" => imasnap_log::HashAlgo::Sha384.hash(&[msg]),
                _ => imasnap_log::HashAlgo::Sha512.hash(&[msg]),
            };
            use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
            if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
                let s = p256::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
                return k.verify_prehash(digest.as_bytes(), &s).map_err(|e| bad(&e));
            }
            let k = p384::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(|e| bad(&e))?;
            let s = p384::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
            k.verify_prehash(digest.as_bytes(), &s).map_err(|e| bad(&e))
        }
        other => Err(err(format!("signature algorithm {other} is not supported"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ek = {
            let sk = p256::SecretKey::from_slice(&[3; 32]).unwrap();
            EkPublic::from_bytes(&crate::credential::p256_ek_area(&sk.public_key())).unwrap()
        };
        let t = EkTrust::default();
        for b in [&b""[..], b"\x30\x03\x02\x01\x00", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
        {
            assert!(t.verify(b, &ek, 0).is_err());
        }
        // Empty and newline-only files (x509-cert underflowed on them; the fuzz smoke's find).
        for pem in ["nothing", "", "\n", "\r\n\n", "  "] {
            assert!(EkTrust::default().add_pem(pem, "x").is_err(), "{pem:?}");
        }
    }
}
