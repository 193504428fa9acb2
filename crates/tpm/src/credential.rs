//! TPM2_MakeCredential in pure Rust, and the matching unwrap used by the software TPM.
//!
//! A verifier proves that an attestation key lives in the same TPM as an endorsement
//! key by wrapping a fresh secret for the EK and binding it to the AK's Name (TPM 2.0
//! Part 1 §24, Part 3 TPM2_MakeCredential). Only a TPM that holds the EK's private
//! key *and* has an object with that Name loaded returns the secret from
//! TPM2_ActivateCredential. Nothing here needs a TPM.
//!
//! - seed: `nameAlg`-digest-sized random; for an RSA EK, RSA-OAEP(nameAlg, label
//!   `"IDENTITY\0"`); for an ECC EK, an ephemeral ECDH point and KDFe(`"IDENTITY"`).
//! - symKey = KDFa(nameAlg, seed, `"STORAGE"`, AK Name, ∅, EK symmetric key bits);
//!   encIdentity = AES-CFB(symKey, IV 0, TPM2B_DIGEST(secret)).
//! - HMACkey = KDFa(nameAlg, seed, `"INTEGRITY"`, ∅, ∅, digest bits);
//!   outerHMAC = HMAC(HMACkey, encIdentity ‖ AK Name).
//! - credentialBlob (TPM2B_ID_OBJECT) = TPM2B_DIGEST(outerHMAC) ‖ encIdentity.

use crate::public::{fixed, strip_zeros, TPM_ALG_ECC, TPM_ALG_RSA};
use crate::wire::{max, put_tpm2b, put_u16, put_u32, Reader, WireError, ALG_NULL};
use hmac::Mac as _;
use imasnap_log::HashAlgo;
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use rand_core::CryptoRngCore;

/// TPM_ALG_AES.
const TPM_ALG_AES: u16 = 0x0006;
/// TPM_ALG_CFB.
const TPM_ALG_CFB: u16 = 0x0043;
/// NV index of the RSA 2048 EK certificate (TCG EK Credential Profile).
pub const EK_CERT_NV_RSA: u32 = 0x01c0_0002;
/// NV index of the ECC P-256 EK certificate.
pub const EK_CERT_NV_ECC: u32 = 0x01c0_000a;
/// Largest secret a credential carries: a TPM2B_DIGEST of the EK's nameAlg; we use 32.
pub const SECRET_LEN: usize = 32;
/// Magic and version heading a `tpm2_makecredential` output file.
pub const TPM2_TOOLS_MAGIC: u32 = 0xBADC_C0DE;

/// TPMA_OBJECT bits of a storage key such as an EK.
mod attrs {
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// Why a credential could not be made or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("EK public key: {0}")]
    BadEk(String),
    #[error("secret of {len} bytes: want 1 to {max}")]
    SecretSize { len: usize, max: usize },
    #[error("encrypting the seed: {0}")]
    Encrypt(String),
    /// The outer HMAC does not match: wrong EK, another AK Name, or altered bytes.
    #[error("credential integrity check failed (the blob was made for another EK or AK Name)")]
    Integrity,
    #[error("credential blob: {0}")]
    Blob(String),
}

/// An endorsement key's public area (TPMT_PUBLIC of a restricted decryption key),
/// kept with its exact bytes so its Name is the TPM's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EkPublic {
    raw: Vec<u8>,
    name_alg: HashAlgo,
    sym_bits: u16,
    key: EkKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum EkKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::PublicKey),
}

impl EkPublic {
    /// Parses exactly one TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC).
    pub fn from_tpm2b(b: &[u8]) -> Result<Self, CredentialError> {
        let mut r = Reader::new(b, "EK TPM2B_PUBLIC");
        let inner = r.tpm2b(u16::MAX as usize, "size")?;
        r.finish()?;
        Self::parse(inner, 2)
    }

    /// Parses exactly one TPMT_PUBLIC.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CredentialError> {
        Self::parse(b, 0)
    }

    /// `base` is where `b` starts in the caller's buffer, so offsets in errors are the caller's.
    fn parse(b: &[u8], base: usize) -> Result<Self, CredentialError> {
        let shift = |e: WireError| match e {
            WireError::Malformed { what, offset, reason } => {
                WireError::Malformed { what, offset: offset + base, reason }
            }
            WireError::UnsupportedAlg { what, offset, alg } => {
                WireError::UnsupportedAlg { what, offset: offset + base, alg }
            }
        };
        let mut r = Reader::new(b, "EK TPMT_PUBLIC");
        let p = (|| {
            let at = r.pos();
            let ty = r.u16("type")?;
            if ty != TPM_ALG_RSA && ty != TPM_ALG_ECC {
                return Err(r.unsupported(at, ty));
            }
            let name_alg = r.hash_alg("nameAlg")?;
            if !matches!(name_alg, HashAlgo::Sha1 | HashAlgo::Sha256 | HashAlgo::Sha384) {
                return Err(r.unsupported(at + 2, name_alg.tpm_alg_id()));
            }
            let at = r.pos();
            let a = r.u32("objectAttributes")?;
            if a & attrs::RESTRICTED == 0 || a & attrs::DECRYPT == 0 || a & attrs::SIGN != 0 {
                return Err(r.err(at, format!("objectAttributes 0x{a:08x}: an EK is a restricted decryption key")));
            }
            r.tpm2b(max::DIGEST, "authPolicy")?;
            let at = r.pos();
            let sym = r.u16("symmetric")?;
            if sym != TPM_ALG_AES {
                return Err(r.err(at, format!("symmetric 0x{sym:04x}: want AES (0x0006)")));
            }
            let at = r.pos();
            let sym_bits = r.u16("symmetric keyBits")?;
            if sym_bits != 128 && sym_bits != 256 {
                return Err(r.err(at, format!("AES key of {sym_bits} bits: want 128 or 256")));
            }
            let at = r.pos();
            let mode = r.u16("symmetric mode")?;
            if mode != TPM_ALG_CFB {
                return Err(r.err(at, format!("symmetric mode 0x{mode:04x}: want CFB (0x0043)")));
            }
            let at = r.pos();
            let scheme = r.u16("scheme")?;
            if scheme != ALG_NULL {
                return Err(r.err(at, format!("scheme 0x{scheme:04x}: a storage key has TPM_ALG_NULL")));
            }
            let key = if ty == TPM_ALG_RSA {
                let at = r.pos();
                let bits = r.u16("keyBits")?;
                let exponent = r.u32("exponent")?;
                let modulus = r.tpm2b(max::RSA, "unique (modulus)")?;
                let n = strip_zeros(modulus);
                if !(2048..=4096).contains(&(bits as usize)) || n.len() * 8 != bits as usize {
                    return Err(r.err(at, format!("keyBits {bits} with a {}-byte modulus", modulus.len())));
                }
                let e = if exponent == 0 { 65537 } else { exponent };
                let k = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from(e))
                    .map_err(|e| r.err(at, format!("RSA key: {e}")))?;
                EkKey::Rsa(k)
            } else {
                let at = r.pos();
                let curve = r.u16("curveID")?;
                if curve != 0x0003 {
                    return Err(r.unsupported(at, curve));
                }
                let at = r.pos();
                let kdf = r.u16("kdf")?;
                if kdf != ALG_NULL {
                    return Err(r.err(at, format!("kdf 0x{kdf:04x}: want TPM_ALG_NULL")));
                }
                let at = r.pos();
                let x = fixed::<32>(r.tpm2b(max::ECC, "x")?);
                let y = fixed::<32>(r.tpm2b(max::ECC, "y")?);
                let (Some(x), Some(y)) = (x, y) else { return Err(r.err(at, "P-256 coordinate longer than 32 bytes")) };
                let pt = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                let k = Option::<p256::PublicKey>::from(p256::PublicKey::from_encoded_point(&pt))
                    .ok_or_else(|| r.err(at, "point is not on P-256"))?;
                EkKey::P256(k)
            };
            r.finish()?;
            Ok(Self { raw: b.to_vec(), name_alg, sym_bits, key })
        })();
        p.map_err(|e| CredentialError::Wire(shift(e)))
    }

    /// The marshalled TPMT_PUBLIC, as parsed.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.raw.clone()
    }

    /// TPM2B_PUBLIC.
    pub fn to_tpm2b(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.raw.len() + 2);
        put_tpm2b(&mut o, &self.raw);
        o
    }

    /// The EK's Name: nameAlg ‖ H(TPMT_PUBLIC).
    pub fn name(&self) -> Vec<u8> {
        let mut n = self.name_alg.tpm_alg_id().to_be_bytes().to_vec();
        n.extend_from_slice(self.name_alg.hash(&[&self.raw]).as_bytes());
        n
    }

    pub fn name_alg(&self) -> HashAlgo {
        self.name_alg
    }

    /// `rsa-2048`, `ecc-p256`.
    pub fn kind(&self) -> String {
        match &self.key {
            EkKey::Rsa(k) => format!("rsa-{}", rsa::traits::PublicKeyParts::size(k) * 8),
            EkKey::P256(_) => "ecc-p256".into(),
        }
    }

    /// The key as a DER SubjectPublicKeyInfo, to compare with an EK certificate's key.
    pub fn spki_der(&self) -> Result<Vec<u8>, CredentialError> {
        use p256::pkcs8::EncodePublicKey as _;
        let d = match &self.key {
            EkKey::Rsa(k) => k.to_public_key_der(),
            EkKey::P256(k) => k.to_public_key_der(),
        };
        d.map(|d| d.as_bytes().to_vec()).map_err(|e| CredentialError::BadEk(e.to_string()))
    }

    /// Whether a DER SubjectPublicKeyInfo (an EK certificate's) holds this key.
    pub fn matches_spki(&self, spki: &[u8]) -> bool {
        use p256::pkcs8::DecodePublicKey as _;
        match &self.key {
            EkKey::Rsa(k) => rsa::RsaPublicKey::from_public_key_der(spki).is_ok_and(|c| &c == k),
            EkKey::P256(k) => p256::PublicKey::from_public_key_der(spki).is_ok_and(|c| &c == k),
        }
    }

    /// The SHA-256 of [`EkPublic::spki_der`], hex: how operators pin an EK.
    pub fn fingerprint(&self) -> Result<String, CredentialError> {
        Ok(hex::encode(HashAlgo::Sha256.hash(&[&self.spki_der()?]).as_bytes()))
    }
}

/// The two outputs of TPM2_MakeCredential, as the TPM marshals them (without their
/// own TPM2B size fields, as tss-esapi's `IdObject` / `EncryptedSecret` hold them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// TPM2B_ID_OBJECT contents: TPM2B_DIGEST(outerHMAC) ‖ encIdentity.
    pub blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the OAEP ciphertext or a TPMS_ECC_POINT.
    pub secret: Vec<u8>,
}

impl Credential {
    /// The file `tpm2_makecredential -o` writes and `tpm2_activatecredential -i` reads:
    /// magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    pub fn to_tpm2_tools(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.blob.len() + self.secret.len() + 12);
        put_u32(&mut o, TPM2_TOOLS_MAGIC);
        put_u32(&mut o, 1);
        put_tpm2b(&mut o, &self.blob);
        put_tpm2b(&mut o, &self.secret);
        o
    }

    /// Parses a `tpm2_makecredential` output file.
    pub fn from_tpm2_tools(b: &[u8]) -> Result<Self, CredentialError> {
        let mut r = Reader::new(b, "tpm2-tools credential file");
        let magic = r.u32("magic")?;
        if magic != TPM2_TOOLS_MAGIC {
            return Err(r.err(0, format!("magic 0x{magic:08x}, want 0x{TPM2_TOOLS_MAGIC:08x}")).into());
        }
        let v = r.u32("version")?;
        if v != 1 {
            return Err(r.err(4, format!("version {v}, want 1")).into());
        }
        let blob = r.tpm2b(MAX_ID_OBJECT, "TPM2B_ID_OBJECT")?.to_vec();
        let secret = r.tpm2b(MAX_ENCRYPTED_SECRET, "TPM2B_ENCRYPTED_SECRET")?.to_vec();
        r.finish()?;
        Ok(Self { blob, secret })
    }
}

/// TPM2B_ID_OBJECT's buffer: sizeof(TPMS_ID_OBJECT) with SHA-512.
pub const MAX_ID_OBJECT: usize = 2 + 64 + 2 + 64;
/// TPM2B_ENCRYPTED_SECRET's buffer: sizeof(TPMU_ENCRYPTED_SECRET), RSA 4096.
pub const MAX_ENCRYPTED_SECRET: usize = 512;

/// TPM2_MakeCredential: wraps `secret` for `ek`, bound to the object Name `ak_name`.
pub fn make_credential(
    rng: &mut impl CryptoRngCore,
    ek: &EkPublic,
    ak_name: &[u8],
    secret: &[u8],
) -> Result<Credential, CredentialError> {
    let dlen = ek.name_alg.size();
    if secret.is_empty() || secret.len() > dlen {
        return Err(CredentialError::SecretSize { len: secret.len(), max: dlen });
    }
    let (seed, enc_secret) = match &ek.key {
        EkKey::Rsa(k) => {
            let mut seed = vec![0u8; dlen];
            rng.fill_bytes(&mut seed);
            let ct = oaep_encrypt(rng, k, ek.name_alg, &seed)?;
            (seed, ct)
        }
        EkKey::P256(k) => {
            let eph = p256::ecdh::EphemeralSecret::random(rng);
            let eph_pub = p256::EncodedPoint::from(eph.public_key());
            let z = eph.diffie_hellman(k);
            let ek_pt = k.to_encoded_point(false);
            let (ux, uy, vx) = (coord(eph_pub.x())?, coord(eph_pub.y())?, coord(ek_pt.x())?);
            let seed = kdfe(ek.name_alg, z.raw_secret_bytes(), b"IDENTITY", &ux, &vx, dlen);
            let mut pt = Vec::with_capacity(68);
            put_tpm2b(&mut pt, &ux);
            put_tpm2b(&mut pt, &uy);
            (seed, pt)
        }
    };
    let blob = wrap(ek, &seed, ak_name, secret)?;
    Ok(Credential { blob, secret: enc_secret })
}

fn coord(c: Option<&p256::FieldBytes>) -> Result<Vec<u8>, CredentialError> {
    c.map(|c| c.to_vec()).ok_or_else(|| CredentialError::BadEk("point at infinity".into()))
}

fn oaep_encrypt(
    rng: &mut impl CryptoRngCore,
    k: &rsa::RsaPublicKey,
    h: HashAlgo,
    seed: &[u8],
) -> Result<Vec<u8>, CredentialError> {
    // The label is "IDENTITY" with its terminating NUL, as the TPM hashes it.
    let label = "IDENTITY\0";
    let r = match h {
        HashAlgo::Sha1 => k.encrypt(rng, rsa::Oaep::new_with_label::<sha1::Sha1, _>(label), seed),
        HashAlgo::Sha384 => k.encrypt(rng, rsa::Oaep::new_with_label::<sha2::Sha384, _>(label), seed),
        _ => k.encrypt(rng, rsa::Oaep::new_with_label::<sha2::Sha256, _>(label), seed),
    };
    r.map_err(|e| CredentialError::Encrypt(format!("RSA-OAEP: {e}")))
}

/// The blob from the seed: encIdentity and its outer HMAC.
fn wrap(ek: &EkPublic, seed: &[u8], ak_name: &[u8], secret: &[u8]) -> Result<Vec<u8>, CredentialError> {
    let h = ek.name_alg;
    let sym_key = kdfa(h, seed, b"STORAGE", ak_name, &[], ek.sym_bits as usize / 8);
    let mut enc = Vec::with_capacity(secret.len() + 2);
    put_tpm2b(&mut enc, secret);
    aes_cfb(&sym_key, &mut enc, true)?;
    let hmac_key = kdfa(h, seed, b"INTEGRITY", &[], &[], h.size());
    let tag = hmac_parts(h, &hmac_key, &[&enc, ak_name])?;
    let mut blob = Vec::with_capacity(2 + tag.len() + enc.len());
    put_tpm2b(&mut blob, &tag);
    blob.extend_from_slice(&enc);
    Ok(blob)
}

/// TPM2_ActivateCredential's unwrap once the seed is recovered: checks the outer
/// HMAC over encIdentity ‖ `ak_name`, then decrypts.
pub(crate) fn unwrap_with_seed(
    ek: &EkPublic,
    seed: &[u8],
    ak_name: &[u8],
    blob: &[u8],
) -> Result<Vec<u8>, CredentialError> {
    let h = ek.name_alg;
    let mut r = Reader::new(blob, "TPM2B_ID_OBJECT");
    let tag = r.tpm2b(max::DIGEST, "integrityHMAC")?;
    if tag.len() != h.size() {
        return Err(CredentialError::Blob(format!("integrityHMAC of {} bytes, want {}", tag.len(), h.size())));
    }
    let enc = blob.get(r.pos()..).unwrap_or_default();
    if enc.len() < 2 {
        return Err(CredentialError::Blob("encIdentity shorter than 2 bytes".into()));
    }
    let hmac_key = kdfa(h, seed, b"INTEGRITY", &[], &[], h.size());
    verify_hmac(h, &hmac_key, &[enc, ak_name], tag)?;
    let sym_key = kdfa(h, seed, b"STORAGE", ak_name, &[], ek.sym_bits as usize / 8);
    let mut plain = enc.to_vec();
    aes_cfb(&sym_key, &mut plain, false)?;
    let mut r = Reader::new(&plain, "encIdentity");
    let v = r.tpm2b(h.size(), "credential")?.to_vec();
    r.finish()?;
    Ok(v)
}

/// ActivateCredential for a P-256 EK whose private scalar is at hand (the software TPM).
pub(crate) fn activate_p256(
    ek_secret: &p256::SecretKey,
    ek: &EkPublic,
    ak_name: &[u8],
    cred: &Credential,
) -> Result<Vec<u8>, CredentialError> {
    let mut r = Reader::new(&cred.secret, "TPMS_ECC_POINT");
    let at = r.pos();
    let x = fixed::<32>(r.tpm2b(max::ECC, "x")?);
    let y = fixed::<32>(r.tpm2b(max::ECC, "y")?);
    r.finish()?;
    let (Some(x), Some(y)) = (x, y) else { return Err(r.err(at, "coordinate longer than 32 bytes").into()) };
    let pt = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    let qe = Option::<p256::PublicKey>::from(p256::PublicKey::from_encoded_point(&pt))
        .ok_or_else(|| CredentialError::Blob("ephemeral point is not on P-256".into()))?;
    let z = p256::ecdh::diffie_hellman(ek_secret.to_nonzero_scalar(), qe.as_affine());
    let ek_pt = ek_secret.public_key().to_encoded_point(false);
    let vx = coord(ek_pt.x())?;
    let seed = kdfe(ek.name_alg, z.raw_secret_bytes(), b"IDENTITY", &x, &vx, ek.name_alg.size());
    unwrap_with_seed(ek, &seed, ak_name, &cred.blob)
}

/// KDFa (SP 800-108 counter mode with HMAC): HMAC(key, i ‖ label ‖ 0 ‖ ctxU ‖ ctxV ‖ bits).
pub fn kdfa(h: HashAlgo, key: &[u8], label: &[u8], ctx_u: &[u8], ctx_v: &[u8], bytes: usize) -> Vec<u8> {
    let bits = (bytes as u32).wrapping_mul(8).to_be_bytes();
    let mut out = Vec::with_capacity(bytes + h.size());
    let mut i: u32 = 1;
    while out.len() < bytes {
        let c = i.to_be_bytes();
        match hmac_parts(h, key, &[&c, label, &[0], ctx_u, ctx_v, &bits]) {
            Ok(t) => out.extend_from_slice(&t),
            Err(_) => break,
        }
        i = i.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

/// KDFe (SP 800-56A concatenation): H(i ‖ Z ‖ label ‖ 0 ‖ partyU ‖ partyV).
pub fn kdfe(h: HashAlgo, z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8], bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + h.size());
    let mut i: u32 = 1;
    while out.len() < bytes {
        out.extend_from_slice(h.hash(&[&i.to_be_bytes(), z, label, &[0], party_u, party_v]).as_bytes());
        i = i.wrapping_add(1);
    }
    out.truncate(bytes);
    out
}

macro_rules! with_mac {
    ($h:expr, $key:expr, |$m:ident| $body:expr) => {
        match $h {
            HashAlgo::Sha1 => {
                let mut $m =
                    hmac::Hmac::<sha1::Sha1>::new_from_slice($key).map_err(|e| CredentialError::Blob(e.to_string()))?;
                $body
            }
            HashAlgo::Sha384 => {
                let mut $m = hmac::Hmac::<sha2::Sha384>::new_from_slice($key)
                    .map_err(|e| CredentialError::Blob(e.to_string()))?;
                $body
            }
            HashAlgo::Sha256 => {
                let mut $m = hmac::Hmac::<sha2::Sha256>::new_from_slice($key)
                    .map_err(|e| CredentialError::Blob(e.to_string()))?;
                $body
            }
            other => return Err(CredentialError::BadEk(format!("nameAlg {other} is not supported for credentials"))),
        }
    };
}

fn hmac_parts(h: HashAlgo, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, CredentialError> {
    with_mac!(h, key, |m| {
        for p in parts {
            m.update(p);
        }
        Ok(m.finalize().into_bytes().to_vec())
    })
}

/// Constant-time comparison of the outer HMAC.
fn verify_hmac(h: HashAlgo, key: &[u8], parts: &[&[u8]], tag: &[u8]) -> Result<(), CredentialError> {
    with_mac!(h, key, |m| {
        for p in parts {
            m.update(p);
        }
        m.verify_slice(tag).map_err(|_| CredentialError::Integrity)
    })
}

/// AES-CFB with a zero IV, in place; the key is 16 or 32 bytes.
fn aes_cfb(key: &[u8], buf: &mut [u8], encrypt: bool) -> Result<(), CredentialError> {
    use cfb_mode::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
    let iv = [0u8; 16];
    let bad = |e: cfb_mode::cipher::InvalidLength| CredentialError::Blob(format!("AES key: {e}"));
    match (key.len(), encrypt) {
        (16, true) => cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key, &iv).map_err(bad)?.encrypt(buf),
        (16, false) => cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(key, &iv).map_err(bad)?.decrypt(buf),
        (32, true) => cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(key, &iv).map_err(bad)?.encrypt(buf),
        (32, false) => cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(key, &iv).map_err(bad)?.decrypt(buf),
        (n, _) => return Err(CredentialError::Blob(format!("AES key of {n} bytes"))),
    }
    Ok(())
}

/// The TCG default EK template's authPolicy: PolicySecret(TPM_RH_ENDORSEMENT) (SHA-256).
pub const EK_POLICY_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7,
    0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// The TPMT_PUBLIC of a P-256 EK built from the TCG default template (L-2) with the
/// given point: what the software TPM presents.
pub(crate) fn p256_ek_area(k: &p256::PublicKey) -> Vec<u8> {
    let pt = k.to_encoded_point(false);
    let mut o = Vec::with_capacity(128);
    put_u16(&mut o, TPM_ALG_ECC);
    put_u16(&mut o, HashAlgo::Sha256.tpm_alg_id());
    // fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|restricted|decrypt.
    put_u32(&mut o, 0x0003_00b2);
    put_tpm2b(&mut o, &EK_POLICY_SHA256);
    put_u16(&mut o, TPM_ALG_AES);
    put_u16(&mut o, 128);
    put_u16(&mut o, TPM_ALG_CFB);
    put_u16(&mut o, ALG_NULL); // scheme
    put_u16(&mut o, 0x0003); // NIST P-256
    put_u16(&mut o, ALG_NULL); // kdf
    put_tpm2b(&mut o, pt.x().map(|c| c.as_slice()).unwrap_or_default());
    put_tpm2b(&mut o, pt.y().map(|c| c.as_slice()).unwrap_or_default());
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng as _;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    fn p256_ek(seed: u8) -> (p256::SecretKey, EkPublic) {
        let sk = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
        let ek = EkPublic::from_bytes(&p256_ek_area(&sk.public_key())).unwrap();
        (sk, ek)
    }

    #[test]
    fn kdfa_matches_known_answer() {
        // Independent check: KDFa is HMAC in counter mode, one block for 32 bytes.
        let k = kdfa(HashAlgo::Sha256, b"key", b"STORAGE", b"ctx", &[], 16);
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"key").unwrap();
        m.update(&[0, 0, 0, 1]);
        m.update(b"STORAGE\0ctx");
        m.update(&128u32.to_be_bytes());
        assert_eq!(k, m.finalize().into_bytes()[..16].to_vec());
        assert_eq!(kdfa(HashAlgo::Sha256, b"k", b"L", &[], &[], 40).len(), 40);
    }

    #[test]
    fn p256_roundtrip_and_binding() {
        let (sk, ek) = p256_ek(3);
        let ak_name = [0x00, 0x0b].iter().chain([5u8; 32].iter()).copied().collect::<Vec<_>>();
        let cred = make_credential(&mut rng(), &ek, &ak_name, b"the secret").unwrap();
        assert_eq!(activate_p256(&sk, &ek, &ak_name, &cred).unwrap(), b"the secret");
        // Another AK Name: the outer HMAC fails.
        let mut other = ak_name.clone();
        other[5] ^= 1;
        assert_eq!(activate_p256(&sk, &ek, &other, &cred), Err(CredentialError::Integrity));
        // Another EK (another TPM): fails too.
        let (sk2, ek2) = p256_ek(4);
        assert_eq!(activate_p256(&sk2, &ek2, &ak_name, &cred), Err(CredentialError::Integrity));
        // A flipped blob byte.
        let mut bad = cred.clone();
        let last = bad.blob.len() - 1;
        bad.blob[last] ^= 0x80;
        assert_eq!(activate_p256(&sk, &ek, &ak_name, &bad), Err(CredentialError::Integrity));
        // tpm2-tools file round trip.
        assert_eq!(Credential::from_tpm2_tools(&cred.to_tpm2_tools()).unwrap(), cred);
    }

    #[test]
    fn rsa_roundtrip_via_private_key() {
        use rsa::traits::PublicKeyParts as _;
        let sk = rsa::RsaPrivateKey::new(&mut rng(), 2048).unwrap();
        let mut area = Vec::new();
        put_u16(&mut area, TPM_ALG_RSA);
        put_u16(&mut area, 0x000b);
        put_u32(&mut area, 0x0003_00b2);
        put_tpm2b(&mut area, &EK_POLICY_SHA256);
        for v in [TPM_ALG_AES, 128, TPM_ALG_CFB, ALG_NULL, 2048] {
            put_u16(&mut area, v);
        }
        put_u32(&mut area, 0);
        put_tpm2b(&mut area, &sk.n().to_bytes_be());
        let ek = EkPublic::from_bytes(&area).unwrap();
        assert_eq!(ek.kind(), "rsa-2048");
        let name = vec![0, 0x0b, 1, 2, 3];
        let cred = make_credential(&mut rng(), &ek, &name, &[9; 32]).unwrap();
        let seed = sk.decrypt(rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0"), &cred.secret).unwrap();
        assert_eq!(unwrap_with_seed(&ek, &seed, &name, &cred.blob).unwrap(), vec![9; 32]);
        assert!(make_credential(&mut rng(), &ek, &name, &[0; 33]).is_err());
    }

    #[test]
    fn ek_parser_names_offsets() {
        let (_, ek) = p256_ek(3);
        let b = ek.to_bytes();
        for cut in 0..b.len() {
            assert!(EkPublic::from_bytes(&b[..cut]).is_err());
        }
        let t = ek.to_tpm2b();
        assert_eq!(EkPublic::from_tpm2b(&t).unwrap(), ek);
        // A signing key is not an EK: the error names the attribute offset (4 + 2 prefix).
        let mut s = t.clone();
        s[2 + 5] |= 0x04;
        match EkPublic::from_tpm2b(&s) {
            Err(CredentialError::Wire(WireError::Malformed { offset, .. })) => assert_eq!(offset, 6),
            other => panic!("{other:?}"),
        }
    }
}
