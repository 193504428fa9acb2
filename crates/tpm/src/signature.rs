//! TPMT_SIGNATURE and signing schemes (TPM 2.0 Part 2 §11.3).

use crate::wire::{max, put_tpm2b, put_u16, Reader, WireError};
use imasnap_log::HashAlgo;
use std::fmt;

/// A signature algorithm this crate can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigAlg {
    /// TPM_ALG_ECDSA.
    Ecdsa,
    /// TPM_ALG_RSASSA (PKCS#1 v1.5).
    RsaSsa,
    /// TPM_ALG_RSAPSS.
    RsaPss,
}

impl SigAlg {
    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            Self::Ecdsa => 0x0018,
            Self::RsaSsa => 0x0014,
            Self::RsaPss => 0x0016,
        }
    }

    pub fn from_tpm_alg_id(id: u16) -> Option<Self> {
        [Self::Ecdsa, Self::RsaSsa, Self::RsaPss].into_iter().find(|a| a.tpm_alg_id() == id)
    }
}

impl fmt::Display for SigAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ecdsa => "ecdsa",
            Self::RsaSsa => "rsassa",
            Self::RsaPss => "rsapss",
        })
    }
}

/// A signing scheme: algorithm plus the hash applied to the signed data (and, for
/// quotes, used to compute pcrDigest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SigScheme {
    pub alg: SigAlg,
    pub hash: HashAlgo,
}

impl fmt::Display for SigScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.alg, self.hash)
    }
}

/// A TPMT_SIGNATURE. Byte strings are kept as the TPM wrote them (ECDSA r/s are
/// not normalised here), so marshalling round-trips exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    Ecdsa { hash: HashAlgo, r: Vec<u8>, s: Vec<u8> },
    RsaSsa { hash: HashAlgo, sig: Vec<u8> },
    RsaPss { hash: HashAlgo, sig: Vec<u8> },
}

impl Signature {
    pub fn scheme(&self) -> SigScheme {
        match self {
            Self::Ecdsa { hash, .. } => SigScheme { alg: SigAlg::Ecdsa, hash: *hash },
            Self::RsaSsa { hash, .. } => SigScheme { alg: SigAlg::RsaSsa, hash: *hash },
            Self::RsaPss { hash, .. } => SigScheme { alg: SigAlg::RsaPss, hash: *hash },
        }
    }

    /// Marshalled TPMT_SIGNATURE.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(72);
        let s = self.scheme();
        put_u16(&mut out, s.alg.tpm_alg_id());
        put_u16(&mut out, s.hash.tpm_alg_id());
        match self {
            Self::Ecdsa { r, s, .. } => {
                put_tpm2b(&mut out, r);
                put_tpm2b(&mut out, s);
            }
            Self::RsaSsa { sig, .. } | Self::RsaPss { sig, .. } => put_tpm2b(&mut out, sig),
        }
        out
    }

    /// Parses exactly one TPMT_SIGNATURE. Other sigAlg values (HMAC, ECDAA, SM2,
    /// ECSCHNORR, NULL) give [`WireError::UnsupportedAlg`] at offset 0.
    pub fn from_bytes(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "TPMT_SIGNATURE");
        let id = r.u16("sigAlg")?;
        let alg = SigAlg::from_tpm_alg_id(id).ok_or_else(|| r.unsupported(0, id))?;
        let hash = r.hash_alg("hash")?;
        let sig = match alg {
            SigAlg::Ecdsa => {
                let rr = r.tpm2b(max::ECC, "signatureR")?.to_vec();
                let ss = r.tpm2b(max::ECC, "signatureS")?.to_vec();
                Self::Ecdsa { hash, r: rr, s: ss }
            }
            SigAlg::RsaSsa => Self::RsaSsa { hash, sig: r.tpm2b(max::RSA, "sig")?.to_vec() },
            SigAlg::RsaPss => Self::RsaPss { hash, sig: r.tpm2b(max::RSA, "sig")?.to_vec() },
        };
        r.finish()?;
        Ok(sig)
    }
}
