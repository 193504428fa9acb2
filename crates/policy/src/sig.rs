//! IMA file signatures (`security.ima` type 0x03, `struct signature_v2_hdr` version 2),
//! verified over the file digest the way the kernel's `asymmetric_verify` and
//! `evmctl ima_measurement --verify-sig` do: RSA PKCS#1 v1.5 with the DigestInfo of the
//! header's hash algorithm, or ECDSA (DER signature) over the digest as the prehash.

use crate::keys::{KeyRing, PublicKey};
use imasnap_log::ImaSignature;

/// `EVM_IMA_XATTR_DIGSIG`.
pub const XATTR_DIGSIG: u8 = 0x03;
/// `IMA_VERITY_DIGSIG`.
pub const XATTR_VERITY_DIGSIG: u8 = 0x06;

/// Kernel `enum hash_algo` (include/uapi/linux/hash_info.h) names by index.
pub const KERNEL_HASH_ALGOS: &[&str] = &[
    "md4",
    "md5",
    "sha1",
    "rmd160",
    "sha256",
    "sha384",
    "sha512",
    "sha224",
    "rmd128",
    "rmd256",
    "rmd320",
    "wp256",
    "wp384",
    "wp512",
    "tgr128",
    "tgr160",
    "tgr192",
    "sm3",
    "streebog256",
    "streebog512",
    "sha3-256",
    "sha3-384",
    "sha3-512",
];

/// Kernel hash name for a `hash_algo` index.
pub fn kernel_hash_name(id: u8) -> Option<&'static str> {
    KERNEL_HASH_ALGOS.get(id as usize).copied()
}

/// Result of checking one signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigOutcome {
    /// Verified with the key of this id.
    Valid { keyid: u32 },
    /// No configured key has this id: the signature cannot be judged.
    UnknownKey { keyid: u32 },
    /// A key with this id exists and the signature does not verify with it (or the header
    /// names another hash algorithm than the measured digest).
    Invalid { keyid: u32, detail: String },
    /// The signature field is not a well-formed v2 header.
    Malformed(String),
    /// A well-formed signature of a kind this crate does not verify (fs-verity 0x06,
    /// version 3, an unsupported hash algorithm).
    Unsupported(String),
}

/// Checks the `sig` field `raw` over `digest` (of algorithm `digest_algo`, the kernel
/// name from the `d-ng` prefix) against `rings` in order.
pub fn verify(raw: &[u8], digest_algo: &str, digest: &[u8], rings: &[&KeyRing]) -> SigOutcome {
    if raw.len() < 2 {
        return SigOutcome::Malformed(format!("signature of {} bytes", raw.len()));
    }
    match (raw[0], raw[1]) {
        (XATTR_DIGSIG, 2) => {}
        (XATTR_DIGSIG, v) => return SigOutcome::Unsupported(format!("signature version {v}")),
        (XATTR_VERITY_DIGSIG, _) => return SigOutcome::Unsupported("fs-verity signature (type 0x06)".into()),
        (t, _) => return SigOutcome::Malformed(format!("xattr type 0x{t:02x} is not a signature")),
    }
    let sig = match ImaSignature::parse(raw) {
        Ok(s) => s,
        Err(e) => return SigOutcome::Malformed(e),
    };
    let keyid = sig.keyid;
    let Some(hname) = kernel_hash_name(sig.hash_algo) else {
        return SigOutcome::Malformed(format!("hash algorithm index {}", sig.hash_algo));
    };
    let candidates: Vec<_> = rings.iter().flat_map(|r| r.get(keyid).iter()).collect();
    if candidates.is_empty() {
        return SigOutcome::UnknownKey { keyid };
    }
    if hname != digest_algo {
        return SigOutcome::Invalid {
            keyid,
            detail: format!("signature is over a {hname} digest, the measured digest is {digest_algo}"),
        };
    }
    let mut last = String::new();
    for k in candidates {
        match verify_one(&k.key, hname, digest, sig.signature) {
            Ok(()) => return SigOutcome::Valid { keyid },
            Err(VerifyErr::Unsupported(e)) => return SigOutcome::Unsupported(e),
            Err(VerifyErr::Bad(e)) => last = e,
        }
    }
    SigOutcome::Invalid { keyid, detail: last }
}

enum VerifyErr {
    Unsupported(String),
    Bad(String),
}

fn verify_one(key: &PublicKey, hname: &str, digest: &[u8], sig: &[u8]) -> Result<(), VerifyErr> {
    use rsa::Pkcs1v15Sign;
    let want_len = match hname {
        "sha1" => 20,
        "sha224" => 28,
        "sha256" => 32,
        "sha384" => 48,
        "sha512" => 64,
        other => return Err(VerifyErr::Unsupported(format!("signature hash algorithm {other}"))),
    };
    if digest.len() != want_len {
        return Err(VerifyErr::Bad(format!("{hname} digest of {} bytes", digest.len())));
    }
    match key {
        PublicKey::Rsa(k) => {
            let scheme = match hname {
                "sha1" => Pkcs1v15Sign::new::<sha1::Sha1>(),
                "sha224" => Pkcs1v15Sign::new::<sha2::Sha224>(),
                "sha256" => Pkcs1v15Sign::new::<sha2::Sha256>(),
                "sha384" => Pkcs1v15Sign::new::<sha2::Sha384>(),
                _ => Pkcs1v15Sign::new::<sha2::Sha512>(),
            };
            k.verify(scheme, digest, sig).map_err(|e| VerifyErr::Bad(format!("RSA: {e}")))
        }
        PublicKey::P256(k) => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            let s =
                p256::ecdsa::Signature::from_der(sig).map_err(|e| VerifyErr::Bad(format!("ECDSA signature: {e}")))?;
            k.verify_prehash(digest, &s).map_err(|e| VerifyErr::Bad(format!("ECDSA P-256: {e}")))
        }
        PublicKey::P384(k) => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            let s =
                p384::ecdsa::Signature::from_der(sig).map_err(|e| VerifyErr::Bad(format!("ECDSA signature: {e}")))?;
            k.verify_prehash(digest, &s).map_err(|e| VerifyErr::Bad(format!("ECDSA P-384: {e}")))
        }
    }
}

/// Builds a v2 signature field (for tests and tools): header + `sig`.
pub fn encode_v2(hash_algo: u8, keyid: u32, sig: &[u8]) -> Vec<u8> {
    let mut v = vec![XATTR_DIGSIG, 2, hash_algo];
    v.extend_from_slice(&keyid.to_be_bytes());
    v.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    v.extend_from_slice(sig);
    v
}
