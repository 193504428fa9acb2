//! TPMT_PUBLIC / TPM2B_PUBLIC of attestation keys, object Names, and [`AkPublic`].

use crate::signature::{SigAlg, SigScheme};
use crate::wire::{max, put_tpm2b, put_u16, put_u32, Reader, WireError, ALG_NULL};
use imasnap_log::HashAlgo;
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};

/// TPM_ALG_RSA.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// TPM_ALG_ECC.
pub const TPM_ALG_ECC: u16 = 0x0023;

/// TPMA_OBJECT bits that make a key an attestation key.
pub mod attrs {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// Only signs TPM-generated data: it cannot sign a forged TPMS_ATTEST.
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
    /// What `tpm2_createak` sets: 0x00050072.
    pub const AK_DEFAULT: u32 = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN;
}

/// NIST curves we verify (TPM_ECC_CURVE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EccCurve {
    P256,
    P384,
}

impl EccCurve {
    pub const fn tpm_curve_id(self) -> u16 {
        match self {
            Self::P256 => 0x0003,
            Self::P384 => 0x0004,
        }
    }
    /// Coordinate / scalar size in bytes.
    pub const fn size(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
    fn from_id(id: u16) -> Option<Self> {
        [Self::P256, Self::P384].into_iter().find(|c| c.tpm_curve_id() == id)
    }
}

/// The type-specific part of a TPMT_PUBLIC (parameters plus unique).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKeyParams {
    /// TPMS_ECC_PARMS (symmetric and kdf NULL) and TPMS_ECC_POINT.
    Ecc { curve: EccCurve, x: Vec<u8>, y: Vec<u8> },
    /// TPMS_RSA_PARMS (symmetric NULL) and TPM2B_PUBLIC_KEY_RSA. `exponent` 0 means 65537.
    Rsa { key_bits: u16, exponent: u32, modulus: Vec<u8> },
}

/// A TPMT_PUBLIC of a signing key. Only the shapes an attestation key can have are
/// representable, so every value marshals to the exact bytes it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicArea {
    pub name_alg: HashAlgo,
    pub object_attributes: u32,
    pub auth_policy: Vec<u8>,
    /// The key's fixed signing scheme; `None` is TPM_ALG_NULL (caller picks).
    pub scheme: Option<SigScheme>,
    pub params: PublicKeyParams,
}

impl PublicArea {
    /// Marshalled TPMT_PUBLIC.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(400);
        let ty = match self.params {
            PublicKeyParams::Ecc { .. } => TPM_ALG_ECC,
            PublicKeyParams::Rsa { .. } => TPM_ALG_RSA,
        };
        put_u16(&mut o, ty);
        put_u16(&mut o, self.name_alg.tpm_alg_id());
        put_u32(&mut o, self.object_attributes);
        put_tpm2b(&mut o, &self.auth_policy);
        put_u16(&mut o, ALG_NULL); // symmetric
        match self.scheme {
            Some(s) => {
                put_u16(&mut o, s.alg.tpm_alg_id());
                put_u16(&mut o, s.hash.tpm_alg_id());
            }
            None => put_u16(&mut o, ALG_NULL),
        }
        match &self.params {
            PublicKeyParams::Ecc { curve, x, y } => {
                put_u16(&mut o, curve.tpm_curve_id());
                put_u16(&mut o, ALG_NULL); // kdf
                put_tpm2b(&mut o, x);
                put_tpm2b(&mut o, y);
            }
            PublicKeyParams::Rsa { key_bits, exponent, modulus } => {
                put_u16(&mut o, *key_bits);
                put_u32(&mut o, *exponent);
                put_tpm2b(&mut o, modulus);
            }
        }
        o
    }

    /// Marshalled TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC), as `tpm2_createak -u` writes.
    pub fn to_tpm2b(&self) -> Vec<u8> {
        let t = self.to_bytes();
        let mut o = Vec::with_capacity(t.len() + 2);
        put_tpm2b(&mut o, &t);
        o
    }

    /// Parses exactly one TPMT_PUBLIC.
    pub fn from_bytes(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "TPMT_PUBLIC");
        let p = Self::unmarshal(&mut r)?;
        r.finish()?;
        Ok(p)
    }

    /// Parses exactly one TPM2B_PUBLIC; its size field must match the TPMT_PUBLIC.
    pub fn from_tpm2b(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "TPM2B_PUBLIC");
        let size = r.u16("size")? as usize;
        let p = Self::unmarshal(&mut r)?;
        r.set_what("TPM2B_PUBLIC");
        if r.pos() - 2 != size {
            return Err(r.err(0, format!("size field {size} but TPMT_PUBLIC is {} bytes", r.pos() - 2)));
        }
        r.finish()?;
        Ok(p)
    }

    fn unmarshal(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.set_what("TPMT_PUBLIC");
        let at = r.pos();
        let ty = r.u16("type")?;
        if ty != TPM_ALG_ECC && ty != TPM_ALG_RSA {
            return Err(r.unsupported(at, ty));
        }
        let name_alg = r.hash_alg("nameAlg")?;
        let object_attributes = r.u32("objectAttributes")?;
        let auth_policy = r.tpm2b(max::DIGEST, "authPolicy")?.to_vec();
        let at = r.pos();
        let sym = r.u16("symmetric")?;
        if sym != ALG_NULL {
            return Err(r.err(at, format!("symmetric 0x{sym:04x}: a signing key has TPM_ALG_NULL")));
        }
        let at = r.pos();
        let scheme = match r.u16("scheme")? {
            ALG_NULL => None,
            id => {
                let alg = SigAlg::from_tpm_alg_id(id).ok_or_else(|| r.unsupported(at, id))?;
                let ok =
                    matches!((ty, alg), (TPM_ALG_ECC, SigAlg::Ecdsa) | (TPM_ALG_RSA, SigAlg::RsaSsa | SigAlg::RsaPss));
                if !ok {
                    return Err(r.err(at, format!("scheme {alg} does not fit key type 0x{ty:04x}")));
                }
                Some(SigScheme { alg, hash: r.hash_alg("scheme hashAlg")? })
            }
        };
        let params = if ty == TPM_ALG_ECC {
            let at = r.pos();
            let id = r.u16("curveID")?;
            let curve = EccCurve::from_id(id).ok_or_else(|| r.unsupported(at, id))?;
            let at = r.pos();
            let kdf = r.u16("kdf")?;
            if kdf != ALG_NULL {
                return Err(r.err(at, format!("kdf 0x{kdf:04x}: a signing key has TPM_ALG_NULL")));
            }
            let x = r.tpm2b(max::ECC, "x")?.to_vec();
            let y = r.tpm2b(max::ECC, "y")?.to_vec();
            PublicKeyParams::Ecc { curve, x, y }
        } else {
            let key_bits = r.u16("keyBits")?;
            let exponent = r.u32("exponent")?;
            let modulus = r.tpm2b(max::RSA, "modulus")?.to_vec();
            PublicKeyParams::Rsa { key_bits, exponent, modulus }
        };
        Ok(Self { name_alg, object_attributes, auth_policy, scheme, params })
    }

    /// The object's Name: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC).
    pub fn name(&self) -> Vec<u8> {
        let mut n = self.name_alg.tpm_alg_id().to_be_bytes().to_vec();
        n.extend_from_slice(self.name_alg.hash(&[&self.to_bytes()]).as_bytes());
        n
    }

    /// Qualified Name of a primary key under `hierarchy` (e.g. TPM_RH_ENDORSEMENT
    /// 0x4000000b): nameAlg || H(hierarchy handle || Name). This is what a TPM writes
    /// as qualifiedSigner when this key, created as a primary, signs a quote.
    pub fn qualified_name_of_primary(&self, hierarchy: u32) -> Vec<u8> {
        let mut n = self.name_alg.tpm_alg_id().to_be_bytes().to_vec();
        n.extend_from_slice(self.name_alg.hash(&[&hierarchy.to_be_bytes(), &self.name()]).as_bytes());
        n
    }
}

/// Why an attestation key could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AkError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("not a P-256, P-384 or RSA public key in PEM (SubjectPublicKeyInfo or PKCS#1): {0}")]
    Pem(String),
    #[error("invalid key material: {0}")]
    InvalidKey(String),
    /// Attributes 0x{attributes:08x} lack restricted|sign or set decrypt: such a key
    /// could sign a forged TPMS_ATTEST, so it must not be trusted as an AK.
    #[error(
        "objectAttributes 0x{attributes:08x}: an AK must be a restricted signing key (restricted|sign, no decrypt)"
    )]
    NotRestrictedSigning { attributes: u32 },
}

/// Key type and size of an AK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AkKind {
    EccP256,
    EccP384,
    Rsa { bits: usize },
}

/// `ecc-p256`, `ecc-p384`, `rsa-2048`: for messages and JSON, never Rust's Debug shape.
impl std::fmt::Display for AkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EccP256 => f.write_str("ecc-p256"),
            Self::EccP384 => f.write_str("ecc-p384"),
            Self::Rsa { bits } => write!(f, "rsa-{bits}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AkKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

/// Smallest RSA modulus accepted for an AK.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (the `rsa` crate's limit, and TPM2B_PUBLIC_KEY_RSA's).
pub const MAX_RSA_BITS: usize = 4096;

/// The public half of an attestation key, ready to verify quotes.
///
/// Loaded from a TPM2B_PUBLIC it also knows its TPM Name and fixed scheme; loaded
/// from PEM it knows neither, and any supported scheme for its key type is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AkPublic {
    pub(crate) key: AkKey,
    area: Option<PublicArea>,
}

impl AkPublic {
    /// From a marshalled TPM2B_PUBLIC (e.g. `tpm2_createak -u ak.pub`).
    pub fn from_tpm2b_public(b: &[u8]) -> Result<Self, AkError> {
        Self::from_public_area(PublicArea::from_tpm2b(b)?)
    }

    /// From a decoded TPMT_PUBLIC. Requires a restricted signing key.
    pub fn from_public_area(area: PublicArea) -> Result<Self, AkError> {
        let a = area.object_attributes;
        if a & attrs::RESTRICTED == 0 || a & attrs::SIGN == 0 || a & attrs::DECRYPT != 0 {
            return Err(AkError::NotRestrictedSigning { attributes: a });
        }
        let key = match &area.params {
            PublicKeyParams::Ecc { curve, x, y } => ecc_key(*curve, x, y)?,
            PublicKeyParams::Rsa { key_bits, exponent, modulus } => {
                let n = strip_zeros(modulus);
                if n.len() * 8 != *key_bits as usize {
                    return Err(AkError::InvalidKey(format!(
                        "keyBits {key_bits} but modulus is {} bytes",
                        modulus.len()
                    )));
                }
                let e = if *exponent == 0 { 65537 } else { *exponent };
                rsa_key(rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from(e)))?
            }
        };
        Ok(Self { key, area: Some(area) })
    }

    /// For keys this crate built itself (the software TPM's AK): no re-validation.
    pub(crate) fn trusted_p256(vk: p256::ecdsa::VerifyingKey, area: PublicArea) -> Self {
        Self { key: AkKey::P256(vk), area: Some(area) }
    }

    /// From a PEM `PUBLIC KEY` (SubjectPublicKeyInfo: EC P-256/P-384 or RSA) or
    /// `RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<Self, AkError> {
        let key = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            AkKey::P256(k)
        } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            AkKey::P384(k)
        } else {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            let k = rsa::RsaPublicKey::from_public_key_pem(pem)
                .or_else(|e| rsa::RsaPublicKey::from_pkcs1_pem(pem).map_err(|_| e))
                .map_err(|e| AkError::Pem(e.to_string()))?;
            rsa_key(Ok(k))?
        };
        Ok(Self { key, area: None })
    }

    /// SubjectPublicKeyInfo PEM, e.g. to hand a software TPM's AK to a verifier.
    pub fn to_pem(&self) -> String {
        let r = match &self.key {
            AkKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            AkKey::P384(k) => k.to_public_key_pem(LineEnding::LF),
            AkKey::Rsa(k) => k.to_public_key_pem(LineEnding::LF),
        };
        // Encoding a valid in-memory key cannot fail; fall back to empty, never panic.
        r.unwrap_or_default()
    }

    pub fn kind(&self) -> AkKind {
        match &self.key {
            AkKey::P256(_) => AkKind::EccP256,
            AkKey::P384(_) => AkKind::EccP384,
            AkKey::Rsa(k) => AkKind::Rsa { bits: rsa::traits::PublicKeyParts::size(k) * 8 },
        }
    }

    /// The TPMT_PUBLIC, if loaded from TPM bytes.
    pub fn public_area(&self) -> Option<&PublicArea> {
        self.area.as_ref()
    }

    /// The key's fixed signing scheme, if known.
    pub fn scheme(&self) -> Option<SigScheme> {
        self.area.as_ref().and_then(|a| a.scheme)
    }

    /// The TPM object Name, if loaded from TPM bytes.
    pub fn name(&self) -> Option<Vec<u8>> {
        self.area.as_ref().map(PublicArea::name)
    }
}

/// Drops leading zero bytes (TPM big-endian integers may be left-padded).
pub(crate) fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// Left-pads a big-endian integer to exactly `N` bytes; `None` if it does not fit.
pub(crate) fn fixed<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    let b = strip_zeros(b);
    let pad = N.checked_sub(b.len())?;
    let mut out = [0u8; N];
    out.get_mut(pad..)?.copy_from_slice(b);
    Some(out)
}

fn ecc_key(curve: EccCurve, x: &[u8], y: &[u8]) -> Result<AkKey, AkError> {
    let bad = |what: &str| AkError::InvalidKey(format!("{curve:?} {what}"));
    match curve {
        EccCurve::P256 => {
            let (x, y) =
                (fixed::<32>(x).ok_or_else(|| bad("x too long"))?, fixed::<32>(y).ok_or_else(|| bad("y too long"))?);
            let pt = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
            p256::ecdsa::VerifyingKey::from_encoded_point(&pt)
                .map(AkKey::P256)
                .map_err(|_| bad("point is not on the curve"))
        }
        EccCurve::P384 => {
            let (x, y) =
                (fixed::<48>(x).ok_or_else(|| bad("x too long"))?, fixed::<48>(y).ok_or_else(|| bad("y too long"))?);
            let pt = p384::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
            p384::ecdsa::VerifyingKey::from_encoded_point(&pt)
                .map(AkKey::P384)
                .map_err(|_| bad("point is not on the curve"))
        }
    }
}

fn rsa_key(k: Result<rsa::RsaPublicKey, rsa::Error>) -> Result<AkKey, AkError> {
    let k = k.map_err(|e| AkError::InvalidKey(format!("RSA: {e}")))?;
    let bits = rsa::traits::PublicKeyParts::n(&k).bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(AkError::InvalidKey(format!("RSA modulus of {bits} bits (want {MIN_RSA_BITS}-{MAX_RSA_BITS})")));
    }
    Ok(AkKey::Rsa(k))
}

/// Builds the TPMT_PUBLIC of a P-256 ECDSA-SHA256 restricted signing key, as
/// `tpm2_createak -G ecc -g sha256 -s ecdsa` would.
pub(crate) fn p256_ak_area(vk: &p256::ecdsa::VerifyingKey) -> PublicArea {
    let pt = vk.to_encoded_point(false);
    let x = pt.x().map(|c| c.to_vec()).unwrap_or_default();
    let y = pt.y().map(|c| c.to_vec()).unwrap_or_default();
    PublicArea {
        name_alg: HashAlgo::Sha256,
        object_attributes: attrs::AK_DEFAULT,
        auth_policy: Vec::new(),
        scheme: Some(SigScheme { alg: SigAlg::Ecdsa, hash: HashAlgo::Sha256 }),
        params: PublicKeyParams::Ecc { curve: EccCurve::P256, x, y },
    }
}
