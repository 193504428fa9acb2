//! The software TPM's ECDSA P-256 signer: the p256 crate's deterministic signature
//! (RFC 6979 nonce, no low-s normalisation, byte for byte the same as
//! `SigningKey::sign_prehash`), with k·G taken from a precomputed table of multiples
//! of the generator. The generic multiplication costs 256 doublings and 64 additions
//! per signature; the table needs 64 mixed additions, and the soft TPM signs a quote
//! every round.

use std::sync::OnceLock;

use imasnap_log::HashAlgo;
use p256::elliptic_curve::ops::{Invert, Reduce};
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::subtle::{ConditionallySelectable, ConstantTimeEq as _};
use p256::elliptic_curve::{Curve as _, Field as _, FieldBytesEncoding as _, PrimeField as _};
use p256::{AffinePoint, FieldBytes, NistP256, ProjectivePoint, Scalar, U256};

/// 4-bit windows of a 256-bit scalar.
const WINDOWS: usize = 64;

/// `table()[i][j]` = j · 16^i · G, for j in 0..16 (j = 0 is the identity).
fn table() -> &'static [[AffinePoint; 16]] {
    static TABLE: OnceLock<Vec<[AffinePoint; 16]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rows = Vec::with_capacity(WINDOWS);
        let mut base = ProjectivePoint::GENERATOR;
        for _ in 0..WINDOWS {
            let mut row = [AffinePoint::IDENTITY; 16];
            let mut acc = ProjectivePoint::IDENTITY;
            for entry in row.iter_mut() {
                *entry = acc.to_affine();
                acc += base;
            }
            rows.push(row);
            base = acc; // 16 · base
        }
        rows
    })
}

/// k · G from the table. Each window's entry is picked by a constant-time scan of
/// its row, so the time does not depend on the nonce's digits.
pub(crate) fn mul_generator(k: &Scalar) -> ProjectivePoint {
    let bytes = k.to_bytes(); // big-endian
    let mut acc = ProjectivePoint::IDENTITY;
    for (i, row) in table().iter().enumerate() {
        let byte = bytes.get(31 - i / 2).copied().unwrap_or(0);
        let digit = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        let mut p = AffinePoint::IDENTITY;
        for (j, entry) in (0u8..).zip(row.iter()) {
            p.conditional_assign(entry, j.ct_eq(&digit));
        }
        acc += &p;
    }
    acc
}

/// Signs the 32-byte `prehash` with secret scalar `d`: returns (r, s) big-endian, or
/// `None` in the negligible cases the p256 crate also refuses (k, r or s zero).
pub(crate) fn sign_prehash(d: &Scalar, prehash: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
    let z_bytes = FieldBytes::from(*prehash);
    let order: FieldBytes = NistP256::ORDER.encode_field_bytes();
    let k_bytes = rfc6979::generate_k::<sha2::Sha256, _>(&d.to_repr(), &order, &z_bytes, &[]);
    let k = Option::<Scalar>::from(Scalar::from_repr(k_bytes))?;
    if bool::from(k.is_zero()) {
        return None;
    }
    let z = <Scalar as Reduce<U256>>::reduce_bytes(&z_bytes);
    // k⁻¹ = b·(k·b)⁻¹: the fast variable-time inversion only ever sees k·b, with b a
    // secret blinding factor derived from the key and the nonce (any b ≠ 0 gives the
    // same k⁻¹, so the signature does not change).
    let b_hash = HashAlgo::Sha256.hash(&[b"imasnap soft-tpm blind", &d.to_repr(), &k_bytes]);
    let b = <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::clone_from_slice(b_hash.as_bytes()));
    let b = Scalar::conditional_select(&b, &Scalar::ONE, b.is_zero());
    let k_inv = Option::<Scalar>::from(Invert::invert_vartime(&(k * b)))? * b;
    let big_r = mul_generator(&k).to_affine();
    let r = <Scalar as Reduce<U256>>::reduce_bytes(&big_r.x());
    let s = k_inv * (z + r * d);
    if bool::from(r.is_zero() | s.is_zero()) {
        return None;
    }
    Some((r.to_bytes().into(), s.to_bytes().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;

    #[test]
    fn table_multiplication_matches_generic() {
        let mut k = Scalar::ONE;
        for i in 0u64..200 {
            k = k * Scalar::from(0x9e37_79b9_7f4a_7c15u64) + Scalar::from(i);
            assert_eq!(mul_generator(&k).to_affine(), (ProjectivePoint::GENERATOR * k).to_affine(), "k #{i}");
        }
        for k in [Scalar::ZERO, Scalar::ONE, -Scalar::ONE, Scalar::from(15u64), Scalar::from(16u64)] {
            assert_eq!(mul_generator(&k).to_affine(), (ProjectivePoint::GENERATOR * k).to_affine());
        }
    }

    #[test]
    fn signatures_byte_identical_to_p256_crate() {
        for seed in 0u64..40 {
            let h = imasnap_log::HashAlgo::Sha256.hash(&[b"key", &seed.to_be_bytes()]);
            let Ok(key) = p256::ecdsa::SigningKey::from_slice(h.as_bytes()) else { continue };
            let d: Scalar = **key.as_nonzero_scalar();
            for m in 0u64..10 {
                let digest = imasnap_log::HashAlgo::Sha256.hash(&[b"msg", &seed.to_be_bytes(), &m.to_be_bytes()]);
                let mut pre = [0u8; 32];
                pre.copy_from_slice(digest.as_bytes());
                let theirs: p256::ecdsa::Signature = key.sign_prehash(&pre).unwrap();
                let (r, s) = sign_prehash(&d, &pre).unwrap();
                let (tr, ts) = theirs.split_bytes();
                assert_eq!((r.as_slice(), s.as_slice()), (tr.as_slice(), ts.as_slice()), "seed {seed} msg {m}");
            }
        }
        // A random-looking scalar near the order and an all-ones digest.
        let d = -Scalar::from(12345u64);
        let key = p256::ecdsa::SigningKey::from_bytes(&d.to_bytes()).unwrap();
        let pre = [0xffu8; 32];
        let theirs: p256::ecdsa::Signature = key.sign_prehash(&pre).unwrap();
        let (r, s) = sign_prehash(&d, &pre).unwrap();
        let (tr, ts) = theirs.split_bytes();
        assert_eq!((r.as_slice(), s.as_slice()), (tr.as_slice(), ts.as_slice()));
    }
}
