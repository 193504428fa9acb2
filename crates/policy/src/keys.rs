//! Verification keys: X.509 certificates and public keys, indexed by IMA key id.
//!
//! The key id of a signature v2 header is 4 bytes. The kernel takes it from the
//! certificate's Subject Key Identifier (the asymmetric key's id). Keylime does the same
//! and, when there is no SKID (or a bare public key is given), uses the last 4 bytes of
//! SHA-1 over the subjectPublicKey bits (PKCS#1 `RSAPublicKey` for RSA, the X9.62 point
//! for EC), which is what `evmctl` (`calc_keyid_v2`) computes for every key. For a
//! certificate made by OpenSSL with default settings both rules give the same id.

use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::sync::Arc;
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

/// Largest key file or certificate accepted (a certificate chain in one PEM file fits).
pub const MAX_KEY_INPUT: usize = 1 << 20;
/// Most keys one ring holds.
pub const MAX_KEYS: usize = 1024;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_SKID: &str = "2.5.29.14";

/// A public key that can check IMA signatures.
#[derive(Clone, Debug)]
pub enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl PublicKey {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "rsa",
            Self::P256(_) => "ecdsa-p256",
            Self::P384(_) => "ecdsa-p384",
        }
    }
}

/// One key with its IMA key id and the source it came from.
#[derive(Clone)]
pub struct Key {
    pub keyid: u32,
    pub key: PublicKey,
    /// DER `SubjectPublicKeyInfo`, for serialisation (Keylime `verification-keys`).
    pub spki_der: Vec<u8>,
    /// Where the key came from: a file name, `verification-keys`, or a keyring name.
    pub source: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:08x} {} from {})", self.keyid, self.key.kind(), self.source)
    }
}

/// Why key material could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0}: key input of {1} bytes exceeds the limit of {MAX_KEY_INPUT}")]
    TooLarge(String, usize),
    #[error("{0}: not an X.509 certificate or public key (DER or PEM)")]
    NotAKey(String),
    #[error("{0}: unsupported key type {1} (RSA, ECDSA P-256 and P-384 are supported)")]
    Unsupported(String, String),
    #[error("{0}: bad key: {1}")]
    Bad(String, String),
    #[error("more than {MAX_KEYS} keys")]
    TooMany,
}

/// Parses the subjectPublicKey of an SPKI into a usable key.
fn key_from_spki(spki: &SubjectPublicKeyInfoOwned, source: &str) -> Result<PublicKey, KeyError> {
    let alg = spki.algorithm.oid.to_string();
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| KeyError::Bad(source.into(), "subjectPublicKey has unused bits".into()))?;
    match alg.as_str() {
        OID_RSA => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            rsa::RsaPublicKey::from_pkcs1_der(bits)
                .map(PublicKey::Rsa)
                .map_err(|e| KeyError::Bad(source.into(), e.to_string()))
        }
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok())
                .map(|o| o.to_string())
                .unwrap_or_default();
            match curve.as_str() {
                OID_P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map(PublicKey::P256)
                    .map_err(|e| KeyError::Bad(source.into(), e.to_string())),
                OID_P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map(PublicKey::P384)
                    .map_err(|e| KeyError::Bad(source.into(), e.to_string())),
                c => Err(KeyError::Unsupported(source.into(), format!("EC curve {c}"))),
            }
        }
        a => Err(KeyError::Unsupported(source.into(), format!("algorithm {a}"))),
    }
}

/// evmctl/Keylime fallback key id: last 4 bytes of SHA-1 over the subjectPublicKey bits.
pub fn keyid_from_spki(spki: &SubjectPublicKeyInfoOwned) -> u32 {
    let bits = spki.subject_public_key.raw_bytes();
    let h = Sha1::digest(bits);
    u32::from_be_bytes([h[16], h[17], h[18], h[19]])
}

fn skid(cert: &x509_cert::Certificate) -> Option<u32> {
    let exts = cert.tbs_certificate.extensions.as_ref()?;
    let ext = exts.iter().find(|e| e.extn_id.to_string() == OID_SKID)?;
    let os = x509_cert::der::asn1::OctetString::from_der(ext.extn_value.as_bytes()).ok()?;
    let b = os.as_bytes();
    (b.len() >= 4).then(|| u32::from_be_bytes([b[b.len() - 4], b[b.len() - 3], b[b.len() - 2], b[b.len() - 1]]))
}

fn from_spki(spki: SubjectPublicKeyInfoOwned, keyid: Option<u32>, source: &str) -> Result<Key, KeyError> {
    let key = key_from_spki(&spki, source)?;
    let spki_der = spki.to_der().map_err(|e| KeyError::Bad(source.into(), e.to_string()))?;
    Ok(Key { keyid: keyid.unwrap_or_else(|| keyid_from_spki(&spki)), key, spki_der, source: source.into() })
}

fn from_cert_der(der: &[u8], source: &str) -> Option<Result<Key, KeyError>> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let id = skid(&cert);
    Some(from_spki(cert.tbs_certificate.subject_public_key_info, id, source))
}

fn from_spki_der(der: &[u8], source: &str) -> Option<Result<Key, KeyError>> {
    let spki = SubjectPublicKeyInfoOwned::from_der(der).ok()?;
    Some(from_spki(spki, None, source))
}

/// PEM blocks (label, DER) in `text`; non-PEM text between blocks is skipped.
fn pem_blocks(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(s) = std::str::from_utf8(text) else { return out };
    let mut rest = s;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start..];
        let Some(label_end) = after[11..].find("-----") else { break };
        let label = &after[11..11 + label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = after.find(&end_marker) else { break };
        let block = &after[..end + end_marker.len()];
        if let Ok((l, der)) = pem_rfc7468_decode(block) {
            out.push((l, der));
        }
        rest = &after[end + end_marker.len()..];
    }
    out
}

fn pem_rfc7468_decode(block: &str) -> Result<(String, Vec<u8>), ()> {
    // Lenient base64 between the armour lines (accepts CRLF and trailing spaces).
    let mut lines = block.lines();
    let first = lines.next().ok_or(())?;
    let label = first.trim().strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")).ok_or(())?;
    let mut b64 = String::new();
    for l in lines {
        let l = l.trim();
        if l.starts_with("-----END ") {
            break;
        }
        if l.contains(':') {
            continue; // RFC 1421 headers
        }
        b64.push_str(l);
    }
    let der = base64ct::Base64::decode_vec(&b64).map_err(|_| ())?;
    Ok((label.to_string(), der))
}

use base64ct::Encoding as _;

/// Parses every key in `data`: DER certificate, DER SPKI, or PEM with any number of
/// `CERTIFICATE` / `PUBLIC KEY` blocks. `source` names the input in errors.
pub fn parse_keys(data: &[u8], source: &str) -> Result<Vec<Key>, KeyError> {
    if data.len() > MAX_KEY_INPUT {
        return Err(KeyError::TooLarge(source.into(), data.len()));
    }
    if let Some(k) = from_cert_der(data, source).or_else(|| from_spki_der(data, source)) {
        return Ok(vec![k?]);
    }
    let mut out = Vec::new();
    for (label, der) in pem_blocks(data) {
        let k = match label.as_str() {
            "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => from_cert_der(&der, source),
            "PUBLIC KEY" => from_spki_der(&der, source),
            "RSA PUBLIC KEY" => {
                use rsa::pkcs1::DecodeRsaPublicKey;
                use rsa::pkcs8::EncodePublicKey;
                let r = rsa::RsaPublicKey::from_pkcs1_der(&der)
                    .map_err(|e| KeyError::Bad(source.into(), e.to_string()))
                    .and_then(|k| k.to_public_key_der().map_err(|e| KeyError::Bad(source.into(), e.to_string())));
                match r {
                    Ok(spki) => from_spki_der(spki.as_bytes(), source),
                    Err(e) => Some(Err(e)),
                }
            }
            _ => None,
        };
        match k {
            Some(k) => out.push(k?),
            None if label.contains("CERTIFICATE") || label.contains("PUBLIC KEY") => {
                return Err(KeyError::NotAKey(format!("{source} ({label} block)")))
            }
            None => {}
        }
        if out.len() > MAX_KEYS {
            return Err(KeyError::TooMany);
        }
    }
    if out.is_empty() {
        return Err(KeyError::NotAKey(source.into()));
    }
    Ok(out)
}

/// Tries `data` as a key the way Keylime's `get_pubkey` does for an ima-buf payload:
/// `Ok(None)` when it is no key at all, an error when it is a key of an unsupported type.
pub fn try_parse_key(data: &[u8], source: &str) -> Result<Option<Key>, KeyError> {
    if data.len() > MAX_KEY_INPUT {
        return Ok(None);
    }
    if let Some(k) = from_cert_der(data, source).or_else(|| from_spki_der(data, source)) {
        return k.map(Some);
    }
    if data.starts_with(b"-----BEGIN") {
        return match parse_keys(data, source) {
            Ok(mut v) if !v.is_empty() => Ok(Some(v.swap_remove(0))),
            Ok(_) | Err(KeyError::NotAKey(_)) => Ok(None),
            Err(e) => Err(e),
        };
    }
    Ok(None)
}

/// Keys indexed by key id. Several keys may share an id; each is tried.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    by_id: HashMap<u32, Vec<Arc<Key>>>,
    order: Vec<Arc<Key>>,
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; a key whose SPKI is already present is not added twice.
    pub fn add(&mut self, key: Key) -> Result<(), KeyError> {
        if self.order.iter().any(|k| k.spki_der == key.spki_der && k.keyid == key.keyid) {
            return Ok(());
        }
        if self.order.len() >= MAX_KEYS {
            return Err(KeyError::TooMany);
        }
        let k = Arc::new(key);
        self.by_id.entry(k.keyid).or_default().push(k.clone());
        self.order.push(k);
        Ok(())
    }

    /// Parses and adds every key in `data` (see [`parse_keys`]).
    pub fn add_bytes(&mut self, data: &[u8], source: &str) -> Result<usize, KeyError> {
        let keys = parse_keys(data, source)?;
        let n = keys.len();
        for k in keys {
            self.add(k)?;
        }
        Ok(n)
    }

    pub fn extend(&mut self, other: &KeyRing) -> Result<(), KeyError> {
        for k in &other.order {
            self.add((**k).clone())?;
        }
        Ok(())
    }

    pub fn get(&self, keyid: u32) -> &[Arc<Key>] {
        self.by_id.get(&keyid).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.order.iter().map(|k| &**k)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_DER: &[u8] = include_bytes!("../../../tests/fixtures/real-kernel/ima-sig/signing-cert.der");
    const CERT_PEM: &[u8] = include_bytes!("../../../tests/fixtures/real-kernel/ima-sig/signing-cert.pem");
    const PUB_PEM: &[u8] = include_bytes!("../../../tests/fixtures/real-kernel/ima-sig/signing-key.pub.pem");

    #[test]
    fn fixture_key_ids_agree() {
        // evmctl prints `key 1: 3211fa6 signing-cert.der`.
        for (data, name) in [(CERT_DER, "der"), (CERT_PEM, "pem"), (PUB_PEM, "pub")] {
            let k = parse_keys(data, name).unwrap();
            assert_eq!(k.len(), 1, "{name}");
            assert_eq!(k[0].keyid, 0x03211fa6, "{name}");
            assert_eq!(k[0].key.kind(), "rsa");
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(matches!(parse_keys(b"hello", "x"), Err(KeyError::NotAKey(_))));
        assert!(try_parse_key(b"hello", "x").unwrap().is_none());
        assert!(try_parse_key(&CERT_DER[..100], "x").unwrap().is_none());
        assert!(try_parse_key(CERT_DER, "x").unwrap().is_some());
    }

    #[test]
    fn ec_keys() {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let der = sk.verifying_key().to_public_key_der().unwrap();
        let k = parse_keys(der.as_bytes(), "ec").unwrap();
        assert_eq!(k[0].key.kind(), "ecdsa-p256");
        let pt = sk.verifying_key().to_encoded_point(false);
        let h = Sha1::digest(pt.as_bytes());
        assert_eq!(k[0].keyid, u32::from_be_bytes([h[16], h[17], h[18], h[19]]));
    }
}
