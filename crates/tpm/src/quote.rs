//! Quotes and their pure-Rust verification.

use crate::attest::{Attest, ClockInfo, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};
use crate::public::{fixed, AkKey, AkKind, AkPublic};
use crate::selection::PcrSelection;
use crate::signature::{SigAlg, SigScheme, Signature};
use crate::wire::{max, put_tpm2b, put_u16, put_u32, Reader, WireError};
use imasnap_log::{HashAlgo, PcrValue};
use std::fmt;

/// A TPM2_Quote result as carried in evidence.
///
/// Only `attest` and `signature` are authenticated. `pcr_values` is what the quoting
/// host says it read; a verifier may use it as a hint, checked through
/// [`VerifiedQuote::check_pcrs`], never as fact.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quote {
    /// TPM2B_ATTEST contents: a marshalled TPMS_ATTEST (tpm2_quote's `-m` file).
    #[serde(with = "hex_bytes")]
    pub attest: Vec<u8>,
    /// A marshalled TPMT_SIGNATURE (tpm2_quote's `-s` file).
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// (bank, pcr, value) in the quote's selection order. Untrusted.
    #[serde(with = "pcr_list")]
    pub pcr_values: Vec<(HashAlgo, u32, PcrValue)>,
}

/// Upper bound on `pcr_values` entries read by [`Quote::from_bytes`] (24 PCRs x 5 banks, with slack).
const MAX_PCR_VALUES: u32 = 24 * 8;

impl Quote {
    /// The helper value for `pcr` of `bank`, if the quoter supplied one.
    pub fn pcr_value(&self, bank: HashAlgo, pcr: u32) -> Option<PcrValue> {
        self.pcr_values.iter().find(|(b, p, _)| *b == bank && *p == pcr).map(|(_, _, v)| *v)
    }

    /// Decodes `attest` without authenticating it (for display; verify with [`verify_quote`]).
    pub fn parse_attest(&self) -> Result<Attest, WireError> {
        Attest::from_bytes(&self.attest)
    }

    /// Decodes `signature`.
    pub fn parse_signature(&self) -> Result<Signature, WireError> {
        Signature::from_bytes(&self.signature)
    }

    /// imasnap's binary framing: TPM2B_ATTEST, then the TPMT_SIGNATURE as a
    /// u16-size-prefixed blob, then u32 count of (hash alg u16, pcr u32, TPM2B_DIGEST).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.attest.len() + self.signature.len() + 8 + self.pcr_values.len() * 40);
        put_tpm2b(&mut o, &self.attest);
        put_tpm2b(&mut o, &self.signature);
        put_u32(&mut o, self.pcr_values.len() as u32);
        for (bank, pcr, v) in &self.pcr_values {
            put_u16(&mut o, bank.tpm_alg_id());
            put_u32(&mut o, *pcr);
            put_tpm2b(&mut o, v.as_bytes());
        }
        o
    }

    /// Inverse of [`Quote::to_bytes`]. Attest and signature are only framed here,
    /// not parsed; helper values must have their bank's digest size.
    pub fn from_bytes(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "Quote");
        let attest = r.tpm2b(u16::MAX as usize, "attest")?.to_vec();
        let signature = r.tpm2b(u16::MAX as usize, "signature")?.to_vec();
        let at = r.pos();
        let n = r.u32("pcr value count")?;
        if n > MAX_PCR_VALUES {
            return Err(r.err(at, format!("{n} PCR values exceed {MAX_PCR_VALUES}")));
        }
        let mut pcr_values = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let bank = r.hash_alg("bank")?;
            let pcr = r.u32("pcr")?;
            let at = r.pos();
            let d = r.tpm2b(max::DIGEST, "value")?;
            let v = PcrValue::new(bank, d).map_err(|e| r.err(at, e))?;
            pcr_values.push((bank, pcr, v));
        }
        r.finish()?;
        Ok(Self { attest, signature, pcr_values })
    }
}

/// Why a quote was rejected. Each forgery class has its own variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// Bytes of `what` (TPMS_ATTEST, TPMT_SIGNATURE, ...) could not be decoded at `offset`.
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed { what: &'static str, offset: usize, reason: String },
    /// A well-formed algorithm id inside `what` that this verifier does not implement.
    #[error("{what} at byte {offset}: unsupported algorithm 0x{alg:04x}")]
    UnsupportedAlgorithm { what: &'static str, offset: usize, alg: u16 },
    /// The signature's scheme or hash is one we refuse (e.g. SHA-1, SM3).
    #[error("unsupported signature scheme: {0}")]
    UnsupportedScheme(String),
    /// The signature's algorithm cannot come from this key type (ECDSA vs RSA).
    #[error("signature algorithm {signature} cannot be made by a {key:?} key")]
    KeyMismatch { key: AkKind, signature: SigAlg },
    /// The AK has a fixed scheme and the signature used another.
    #[error("AK scheme is {key} but the quote is signed with {signature}")]
    SchemeMismatch { key: SigScheme, signature: SigScheme },
    /// Cryptographic verification failed: the attest was altered or signed by another key.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// Signed, but not TPM_GENERATED_VALUE: the TPM did not build this structure.
    #[error("magic 0x{found:08x} is not TPM_GENERATED_VALUE (0xff544347)")]
    BadMagic { found: u32 },
    /// Signed TPM data of another kind (certify, time, ...), not a quote.
    #[error("attestation type 0x{found:04x} is not TPM_ST_ATTEST_QUOTE (0x8018)")]
    WrongType { found: u16 },
    /// extraData differs from our nonce: a replayed or foreign quote.
    #[error("extraData {} does not match the nonce {}", hex::encode(found), hex::encode(expected))]
    NonceMismatch { expected: Vec<u8>, found: Vec<u8> },
    /// The supplied PCR values do not hash to the signed pcrDigest.
    #[error(
        "pcrDigest mismatch: quote has {}, the supplied PCR values give {}",
        hex::encode(attested),
        hex::encode(computed)
    )]
    PcrDigestMismatch { attested: Vec<u8>, computed: Vec<u8> },
    /// No value was supplied for a PCR the quote covers.
    #[error("no {bank} value supplied for PCR {pcr}, which the quote covers")]
    MissingPcrValue { bank: HashAlgo, pcr: u32 },
    /// A supplied value is of another bank than asked for.
    #[error("value supplied for {bank} PCR {pcr} is a {found} digest")]
    WrongPcrBank { bank: HashAlgo, pcr: u32, found: HashAlgo },
    /// The quote does not cover a PCR the verifier requires.
    #[error("quote selection does not cover {bank} PCR {pcr}")]
    SelectionMismatch { bank: HashAlgo, pcr: u32 },
}

impl QuoteError {
    fn wire(e: WireError) -> Self {
        match e {
            WireError::Malformed { what, offset, reason } => Self::Malformed { what, offset, reason },
            WireError::UnsupportedAlg { what, offset, alg } => Self::UnsupportedAlgorithm { what, offset, alg },
        }
    }
}

/// The authenticated content of a quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// pcrSelect exactly as signed; bank order is the TPM's hashing order and is
    /// not normalised (tss-esapi, for one, may reorder banks relative to the request).
    pub selection: PcrSelection,
    /// The signed pcrDigest.
    pub pcr_digest: Vec<u8>,
    /// Hash of the signing scheme: the algorithm pcrDigest was computed with.
    pub digest_alg: HashAlgo,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    /// Qualified Name of the signing key as the TPM stated it.
    pub qualified_signer: Vec<u8>,
}

impl VerifiedQuote {
    /// Checks that `values` (bank, pcr) -> value hash to the signed pcrDigest, in the
    /// order TPM2_Quote uses: selection banks as written, PCRs ascending in each.
    pub fn check_pcrs(&self, values: impl Fn(HashAlgo, u32) -> Option<PcrValue>) -> Result<(), QuoteError> {
        let computed = compute_pcr_digest(self.digest_alg, &self.selection, values)?;
        if computed.as_bytes() != self.pcr_digest.as_slice() {
            return Err(QuoteError::PcrDigestMismatch {
                attested: self.pcr_digest.clone(),
                computed: computed.as_bytes().to_vec(),
            });
        }
        Ok(())
    }

    /// Checks that the signed selection covers every PCR of `required` (order-insensitive);
    /// a host must not get away with quoting fewer PCRs than asked for.
    pub fn require_selection(&self, required: &PcrSelection) -> Result<(), QuoteError> {
        match required.iter().find(|&(b, p)| !self.selection.contains(b, p)) {
            Some((bank, pcr)) => Err(QuoteError::SelectionMismatch { bank, pcr }),
            None => Ok(()),
        }
    }
}

/// TPM2_Quote's pcrDigest: `hash` over the concatenated values of `selection`, banks in
/// selection order, PCRs ascending within each bank.
pub fn compute_pcr_digest(
    hash: HashAlgo,
    selection: &PcrSelection,
    values: impl Fn(HashAlgo, u32) -> Option<PcrValue>,
) -> Result<PcrValue, QuoteError> {
    let mut h = hash.hasher();
    for (bank, pcr) in selection.iter() {
        let v = values(bank, pcr).ok_or(QuoteError::MissingPcrValue { bank, pcr })?;
        if v.algo() != bank {
            return Err(QuoteError::WrongPcrBank { bank, pcr, found: v.algo() });
        }
        h.update(v.as_bytes());
    }
    Ok(h.finish())
}

/// Verifies a quote against an AK and the nonce the verifier chose.
///
/// Order: the signature is checked first, so nothing unauthenticated is reported as a
/// finding; then magic, type, structure, and nonce. PCR values are checked separately
/// with [`VerifiedQuote::check_pcrs`], because they usually come from log replay.
pub fn verify_quote(quote: &Quote, ak: &AkPublic, nonce: &[u8]) -> Result<VerifiedQuote, QuoteError> {
    let sig = Signature::from_bytes(&quote.signature).map_err(|e| match e {
        WireError::UnsupportedAlg { offset: 0, alg, .. } => {
            QuoteError::UnsupportedScheme(format!("signature algorithm 0x{alg:04x}"))
        }
        e => QuoteError::wire(e),
    })?;
    verify_signature(ak, &sig, &quote.attest)?;

    let mut r = Reader::new(&quote.attest, "TPMS_ATTEST");
    let magic = r.u32("magic").map_err(QuoteError::wire)?;
    if magic != TPM_GENERATED_VALUE {
        return Err(QuoteError::BadMagic { found: magic });
    }
    let ty = r.u16("type").map_err(QuoteError::wire)?;
    if ty != TPM_ST_ATTEST_QUOTE {
        return Err(QuoteError::WrongType { found: ty });
    }
    let a = Attest::from_bytes(&quote.attest).map_err(QuoteError::wire)?;
    if a.extra_data != nonce {
        return Err(QuoteError::NonceMismatch { expected: nonce.to_vec(), found: a.extra_data });
    }
    Ok(VerifiedQuote {
        selection: a.pcr_select,
        pcr_digest: a.pcr_digest,
        digest_alg: sig.scheme().hash,
        clock_info: a.clock_info,
        firmware_version: a.firmware_version,
        qualified_signer: a.qualified_signer,
    })
}

/// Verifies `sig` over `msg` (the attest bytes) with `ak`.
pub(crate) fn verify_signature(ak: &AkPublic, sig: &Signature, msg: &[u8]) -> Result<(), QuoteError> {
    let scheme = sig.scheme();
    if let Some(k) = ak.scheme() {
        if k != scheme {
            return Err(QuoteError::SchemeMismatch { key: k, signature: scheme });
        }
    }
    if !matches!(scheme.hash, HashAlgo::Sha256 | HashAlgo::Sha384 | HashAlgo::Sha512) {
        return Err(QuoteError::UnsupportedScheme(format!("{scheme}: hash must be sha256, sha384 or sha512")));
    }
    let digest = scheme.hash.hash(&[msg]);
    let digest = digest.as_bytes();
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    const ECDSA_FAIL: &str = "ECDSA verification failed";
    match (&ak.key, sig) {
        (AkKey::P256(k), Signature::Ecdsa { r, s, .. }) => {
            let (r, s) = (fixed::<32>(r), fixed::<32>(s));
            let (Some(r), Some(s)) = (r, s) else { return Err(QuoteError::BadSignature("ECDSA r or s too long")) };
            let sig = p256::ecdsa::Signature::from_scalars(r, s)
                .map_err(|_| QuoteError::BadSignature("ECDSA r or s out of range"))?;
            if scheme.hash == HashAlgo::Sha256 {
                // The same check through ring's assembly P-256 (several times faster than
                // the pure-Rust arithmetic; a verifier checks one quote per round).
                let point = k.to_encoded_point(false);
                let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
                return key.verify(msg, &sig.to_bytes()).map_err(|_| QuoteError::BadSignature(ECDSA_FAIL));
            }
            k.verify_prehash(digest, &sig).map_err(|_| QuoteError::BadSignature(ECDSA_FAIL))
        }
        (AkKey::P384(k), Signature::Ecdsa { r, s, .. }) => {
            let (r, s) = (fixed::<48>(r), fixed::<48>(s));
            let (Some(r), Some(s)) = (r, s) else { return Err(QuoteError::BadSignature("ECDSA r or s too long")) };
            let sig = p384::ecdsa::Signature::from_scalars(r, s)
                .map_err(|_| QuoteError::BadSignature("ECDSA r or s out of range"))?;
            k.verify_prehash(digest, &sig).map_err(|_| QuoteError::BadSignature(ECDSA_FAIL))
        }
        (AkKey::Rsa(k), Signature::RsaSsa { sig: s, .. } | Signature::RsaPss { sig: s, .. }) => {
            verify_rsa(k, scheme, digest, s)
        }
        (_, _) => Err(QuoteError::KeyMismatch { key: ak.kind(), signature: scheme.alg }),
    }
}

fn verify_rsa(k: &rsa::RsaPublicKey, scheme: SigScheme, digest: &[u8], sig: &[u8]) -> Result<(), QuoteError> {
    use rsa::traits::PublicKeyParts as _;
    use rsa::{Pkcs1v15Sign, Pss};
    use sha2::{Sha256, Sha384, Sha512};
    let size = k.size();
    if sig.len() != size {
        return Err(QuoteError::BadSignature("RSA signature length differs from the modulus size"));
    }
    const FAIL: &str = "RSA verification failed";
    let ok = match scheme.alg {
        SigAlg::RsaSsa => {
            let pad = match scheme.hash {
                HashAlgo::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
                HashAlgo::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
                _ => Pkcs1v15Sign::new::<Sha512>(),
            };
            k.verify(pad, digest, sig).is_ok()
        }
        _ => {
            // TPMs use salt = hash size (current spec) or the largest salt that fits
            // (older ones): accept either, as tpm2-tools does.
            let h = scheme.hash.size();
            let em_len = (k.n().bits().saturating_sub(1)).div_ceil(8);
            let max_salt = em_len.saturating_sub(h + 2);
            [h, max_salt].into_iter().any(|salt| {
                let pss = match scheme.hash {
                    HashAlgo::Sha256 => Pss::new_with_salt::<Sha256>(salt),
                    HashAlgo::Sha384 => Pss::new_with_salt::<Sha384>(salt),
                    _ => Pss::new_with_salt::<Sha512>(salt),
                };
                k.verify(pss, digest, sig).is_ok()
            })
        }
    };
    if ok {
        Ok(())
    } else {
        Err(QuoteError::BadSignature(FAIL))
    }
}

impl fmt::Display for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quote ({} attest bytes, {} signature bytes)", self.attest.len(), self.signature.len())
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s.trim()).map_err(serde::de::Error::custom)
    }
}

mod pcr_list {
    use imasnap_log::{HashAlgo, PcrValue};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Entry {
        bank: HashAlgo,
        pcr: u32,
        value: String,
    }

    pub fn serialize<S: Serializer>(v: &[(HashAlgo, u32, PcrValue)], s: S) -> Result<S::Ok, S::Error> {
        let e: Vec<Entry> = v.iter().map(|(b, p, x)| Entry { bank: *b, pcr: *p, value: x.to_hex() }).collect();
        e.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(HashAlgo, u32, PcrValue)>, D::Error> {
        Vec::<Entry>::deserialize(d)?
            .into_iter()
            .map(|e| {
                let v = PcrValue::from_hex(e.bank, &e.value).map_err(serde::de::Error::custom)?;
                Ok((e.bank, e.pcr, v))
            })
            .collect()
    }
}
