//! Unit tests that need the software TPM's private key to forge signed attests
//! (wrong magic, wrong type, truncation), so each check is reached past the signature.

use crate::*;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;

const NONCE: &[u8] = b"0123456789abcdef0123456789abcdef";

fn tpm_with_state() -> SoftTpm {
    let mut t = SoftTpm::new(1);
    for i in 0..5u8 {
        let d = [HashAlgo::Sha1.hash(&[&[i]]), HashAlgo::Sha256.hash(&[&[i]])];
        t.pcr_extend(10, &d).unwrap();
        t.pcr_extend(u32::from(i), &d).unwrap();
    }
    t
}

fn sel() -> PcrSelection {
    PcrSelection::uniform(&[HashAlgo::Sha1, HashAlgo::Sha256], &[0, 1, 2, 3, 4, 10, 17, 23]).unwrap()
}

/// Re-signs arbitrary attest bytes with the software TPM's AK, as only a broken TPM would.
fn resign(t: &SoftTpm, q: &Quote, attest: Vec<u8>) -> Quote {
    let signature = t.sign_attest(&attest).unwrap().to_bytes();
    Quote { attest, signature, pcr_values: q.pcr_values.clone() }
}

#[test]
fn quote_verifies_and_pcrs_check() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let vq = verify_quote(&q, &t.ak_public(), NONCE).unwrap();
    assert_eq!(vq.selection, sel());
    assert_eq!(vq.digest_alg, HashAlgo::Sha256);
    assert_eq!(vq.qualified_signer, t.ak_public().public_area().unwrap().qualified_name_of_primary(0x4000_000b));
    vq.check_pcrs(|b, p| q.pcr_value(b, p)).unwrap();
    let all = t.pcr_read_all().unwrap();
    vq.check_pcrs(|b, p| all.get(b, p as usize).copied()).unwrap();
    vq.require_selection(&PcrSelection::uniform(&[HashAlgo::Sha256], &[10]).unwrap()).unwrap();
}

#[test]
fn wrong_nonce() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let e = verify_quote(&q, &t.ak_public(), b"another nonce").unwrap_err();
    assert_eq!(e, QuoteError::NonceMismatch { expected: b"another nonce".to_vec(), found: NONCE.to_vec() });
}

#[test]
fn flipped_attest_or_signature_byte_is_bad_signature() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let ak = t.ak_public();
    for i in (0..q.attest.len()).step_by(5).chain([q.attest.len() - 1]) {
        let mut f = q.clone();
        f.attest[i] ^= 0x01;
        assert!(matches!(verify_quote(&f, &ak, NONCE), Err(QuoteError::BadSignature(_))), "attest byte {i}");
    }
    // Inside r and s (offsets past sigAlg, hash and the TPM2B sizes).
    for i in [6, 20, 37, 40, 60, q.signature.len() - 1] {
        let mut f = q.clone();
        f.signature[i] ^= 0x80;
        assert!(matches!(verify_quote(&f, &ak, NONCE), Err(QuoteError::BadSignature(_))), "signature byte {i}");
    }
}

#[test]
fn different_ak() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let other = SoftTpm::new(2).ak_public();
    assert_ne!(other, t.ak_public());
    assert!(matches!(verify_quote(&q, &other, NONCE), Err(QuoteError::BadSignature(_))));
    let from_pem = AkPublic::from_pem(&other.to_pem()).unwrap();
    assert!(matches!(verify_quote(&q, &from_pem, NONCE), Err(QuoteError::BadSignature(_))));
    // The right key through PEM (no scheme known) verifies.
    let right = AkPublic::from_pem(&t.ak_public().to_pem()).unwrap();
    assert!(right.public_area().is_none());
    verify_quote(&q, &right, NONCE).unwrap();
}

#[test]
fn changed_pcr_values() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let vq = verify_quote(&q, &t.ak_public(), NONCE).unwrap();
    let e = vq
        .check_pcrs(|b, p| if b == HashAlgo::Sha256 && p == 10 { Some(PcrValue::zero(b)) } else { q.pcr_value(b, p) })
        .unwrap_err();
    assert!(matches!(&e, QuoteError::PcrDigestMismatch { attested, .. } if *attested == vq.pcr_digest), "{e}");
    // A PCR extended after the quote no longer matches.
    t.pcr_extend(10, &[HashAlgo::Sha256.hash(&[b"late"])]).unwrap();
    let all = t.pcr_read_all().unwrap();
    let e = vq.check_pcrs(|b, p| all.get(b, p as usize).copied()).unwrap_err();
    assert!(matches!(e, QuoteError::PcrDigestMismatch { .. }));
    // Missing and wrong-bank values are named precisely.
    let e = vq.check_pcrs(|b, p| if p == 17 { None } else { q.pcr_value(b, p) }).unwrap_err();
    assert_eq!(e, QuoteError::MissingPcrValue { bank: HashAlgo::Sha1, pcr: 17 });
    let e = vq.check_pcrs(|_, p| q.pcr_value(HashAlgo::Sha256, p)).unwrap_err();
    assert_eq!(e, QuoteError::WrongPcrBank { bank: HashAlgo::Sha1, pcr: 0, found: HashAlgo::Sha256 });
}

#[test]
fn truncated_attest_is_malformed_with_offset() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let ak = t.ak_public();
    // Cut inside pcrDigest: the 32 digest bytes start right after its size field.
    let digest_at = q.attest.len() - 32;
    let f = resign(&t, &q, q.attest[..q.attest.len() - 5].to_vec());
    match verify_quote(&f, &ak, NONCE).unwrap_err() {
        QuoteError::Malformed { what, offset, reason } => {
            assert_eq!((what, offset), ("TPMS_ATTEST", digest_at), "{reason}");
            assert!(reason.contains("pcrDigest"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    for n in 0..q.attest.len() {
        let f = resign(&t, &q, q.attest[..n].to_vec());
        match verify_quote(&f, &ak, NONCE).unwrap_err() {
            QuoteError::Malformed { offset, .. } => assert!(offset <= n, "cut at {n}: offset {offset}"),
            e => panic!("cut at {n}: {e:?}"),
        }
    }
    // Trailing garbage is malformed too.
    let mut long = q.attest.clone();
    long.push(0);
    let f = resign(&t, &q, long);
    assert!(
        matches!(verify_quote(&f, &ak, NONCE), Err(QuoteError::Malformed { offset, .. }) if offset == q.attest.len())
    );
}

#[test]
fn wrong_magic_and_type() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let ak = t.ak_public();
    let mut a = q.attest.clone();
    a[..4].copy_from_slice(&0xff54_4348u32.to_be_bytes());
    assert_eq!(verify_quote(&resign(&t, &q, a), &ak, NONCE).unwrap_err(), QuoteError::BadMagic { found: 0xff54_4348 });
    let mut a = q.attest.clone();
    a[4..6].copy_from_slice(&0x8017u16.to_be_bytes()); // TPM_ST_ATTEST_CERTIFY
    assert_eq!(verify_quote(&resign(&t, &q, a), &ak, NONCE).unwrap_err(), QuoteError::WrongType { found: 0x8017 });
    // Sanity: the untouched attest, re-signed, still verifies.
    verify_quote(&resign(&t, &q, q.attest.clone()), &ak, NONCE).unwrap();
}

#[test]
fn scheme_checks() {
    let mut t = tpm_with_state();
    let q = t.quote(NONCE, &sel()).unwrap();
    let key = t.signing_key();
    let sign = |hash: HashAlgo| {
        let d = hash.hash(&[&q.attest]);
        let s: p256::ecdsa::Signature = key.sign_prehash(d.as_bytes()).unwrap();
        let (r, s) = s.split_bytes();
        Quote { signature: Signature::Ecdsa { hash, r: r.to_vec(), s: s.to_vec() }.to_bytes(), ..q.clone() }
    };
    // The TPM2B_PUBLIC AK is fixed to ECDSA-SHA256.
    let e = verify_quote(&sign(HashAlgo::Sha384), &t.ak_public(), NONCE).unwrap_err();
    assert!(matches!(e, QuoteError::SchemeMismatch { .. }), "{e}");
    // A PEM AK has no fixed scheme: SHA-384 is fine, SHA-1 is refused.
    let pem = AkPublic::from_pem(&t.ak_public().to_pem()).unwrap();
    let vq = verify_quote(&sign(HashAlgo::Sha384), &pem, NONCE).unwrap();
    assert_eq!(vq.digest_alg, HashAlgo::Sha384);
    assert!(matches!(verify_quote(&sign(HashAlgo::Sha1), &pem, NONCE), Err(QuoteError::UnsupportedScheme(_))));
    // An HMAC "signature" is not something we verify.
    let mut hmac = q.clone();
    hmac.signature[..2].copy_from_slice(&0x0005u16.to_be_bytes());
    assert!(matches!(verify_quote(&hmac, &pem, NONCE), Err(QuoteError::UnsupportedScheme(_))));
    // An RSA signature over the same bytes for an ECC key: key mismatch.
    let rsa =
        Quote { signature: Signature::RsaSsa { hash: HashAlgo::Sha256, sig: vec![1; 256] }.to_bytes(), ..q.clone() };
    let e = verify_quote(&rsa, &pem, NONCE).unwrap_err();
    assert_eq!(e, QuoteError::KeyMismatch { key: AkKind::EccP256, signature: SigAlg::RsaSsa });
    // r = 0 is out of range, r too long is rejected, not a panic.
    let zero = Quote {
        signature: Signature::Ecdsa { hash: HashAlgo::Sha256, r: vec![0; 32], s: vec![1; 32] }.to_bytes(),
        ..q.clone()
    };
    assert!(matches!(verify_quote(&zero, &pem, NONCE), Err(QuoteError::BadSignature(_))));
    let long = Quote {
        signature: Signature::Ecdsa { hash: HashAlgo::Sha256, r: vec![1; 33], s: vec![1; 32] }.to_bytes(),
        ..q.clone()
    };
    assert!(matches!(verify_quote(&long, &pem, NONCE), Err(QuoteError::BadSignature(_))));
}

#[test]
fn bank_order_is_kept_as_written() {
    let mut t = tpm_with_state();
    let s = PcrSelection::new([(HashAlgo::Sha256, vec![10, 0]), (HashAlgo::Sha1, vec![10])]).unwrap();
    let q = t.quote(NONCE, &s).unwrap();
    let vq = verify_quote(&q, &t.ak_public(), NONCE).unwrap();
    let order: Vec<_> = vq.selection.banks().iter().map(|(b, _)| *b).collect();
    assert_eq!(order, [HashAlgo::Sha256, HashAlgo::Sha1]);
    assert_eq!(vq.selection.banks()[0].1, [0, 10]);
    vq.check_pcrs(|b, p| q.pcr_value(b, p)).unwrap();
    // Hashing in another bank order would not match.
    let sorted = PcrSelection::new([(HashAlgo::Sha1, vec![10]), (HashAlgo::Sha256, vec![0, 10])]).unwrap();
    let other = compute_pcr_digest(HashAlgo::Sha256, &sorted, |b, p| q.pcr_value(b, p)).unwrap();
    assert_ne!(other.as_bytes(), vq.pcr_digest.as_slice());
    // The verifier asked for sha1 PCR 0 too, which this quote lacks.
    let want = PcrSelection::uniform(&[HashAlgo::Sha1], &[0, 10]).unwrap();
    assert_eq!(vq.require_selection(&want), Err(QuoteError::SelectionMismatch { bank: HashAlgo::Sha1, pcr: 0 }));
}

#[test]
fn pcr_digest_known_answer() {
    // SHA-256(sha256 PCR17 (all ones) || sha1 PCR0 (zero)), computed independently.
    let mut t = SoftTpm::new(9);
    let s = PcrSelection::new([(HashAlgo::Sha256, vec![17]), (HashAlgo::Sha1, vec![0])]).unwrap();
    let q = t.quote(&[], &s).unwrap();
    let a = Attest::from_bytes(&q.attest).unwrap();
    assert_eq!(hex::encode(&a.pcr_digest), "e98b461499be0c4467176db8ee009f04aa78aaa76072929f0345a515f5c3cb6b");
    let s = PcrSelection::uniform(&[HashAlgo::Sha256], &[0, 17]).unwrap();
    let d = compute_pcr_digest(HashAlgo::Sha256, &s, |b, p| t.get(b, p).ok()).unwrap();
    assert_eq!(d.to_hex(), "bba91ca85dc914b2ec3efb9e16e7267bf9193b14350d20fba8a8b406730ae30a");
    // Empty selection: the hash of nothing.
    let d = compute_pcr_digest(HashAlgo::Sha256, &PcrSelection::default(), |_, _| None).unwrap();
    assert_eq!(d.to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

#[test]
fn soft_tpm_lifecycle() {
    let mut t = SoftTpm::new(3);
    let all = t.pcr_read_all().unwrap();
    assert_eq!(all.banks(), [HashAlgo::Sha1, HashAlgo::Sha256]);
    for b in [HashAlgo::Sha1, HashAlgo::Sha256] {
        for p in 0..24 {
            let want = if (17..=22).contains(&p) { PcrValue::ones(b) } else { PcrValue::zero(b) };
            assert_eq!(all.get(b, p), Some(&want), "{b} PCR {p}");
        }
    }
    let c0 = t.clock_info().unwrap();
    assert_eq!((c0.reset_count, c0.restart_count, c0.safe), (0, 0, true));
    let d = HashAlgo::Sha256.hash(&[b"x"]);
    t.pcr_extend(10, &[d]).unwrap();
    let mut want = PcrValue::zero(HashAlgo::Sha256);
    HashAlgo::Sha256.extend(&mut want, d.as_bytes());
    assert_eq!(t.pcr_read(HashAlgo::Sha256, &[10]).unwrap(), [want]);
    assert_eq!(t.pcr_read(HashAlgo::Sha1, &[10]).unwrap(), [PcrValue::zero(HashAlgo::Sha1)], "sha1 untouched");

    t.restart();
    let c1 = t.clock_info().unwrap();
    assert_eq!((c1.reset_count, c1.restart_count), (0, 1));
    assert!(c1.clock > c0.clock);
    assert_eq!(t.pcr_read(HashAlgo::Sha256, &[10]).unwrap(), [want], "resume keeps PCRs");

    t.advance_clock(5000);
    t.reset();
    let c2 = t.clock_info().unwrap();
    assert_eq!((c2.reset_count, c2.restart_count), (1, 0));
    assert!(c2.clock > c1.clock + 5000);
    assert_eq!(t.pcr_read(HashAlgo::Sha256, &[10]).unwrap(), [PcrValue::zero(HashAlgo::Sha256)]);

    // Quotes carry the clock info.
    let q = t.quote(NONCE, &sel()).unwrap();
    let vq = verify_quote(&q, &t.ak_public(), NONCE).unwrap();
    assert_eq!((vq.clock_info.reset_count, vq.clock_info.restart_count), (1, 0));
    assert!(vq.clock_info.clock > c2.clock);
    assert_eq!(vq.firmware_version, soft::SOFT_TPM_FIRMWARE_VERSION);
}

#[test]
fn soft_tpm_errors() {
    let mut t = SoftTpm::new(3);
    let before = t.pcr_read_all().unwrap();
    let d1 = HashAlgo::Sha1.hash(&[b"x"]);
    let d384 = HashAlgo::Sha384.hash(&[b"x"]);
    assert_eq!(t.pcr_extend(24, &[d1]), Err(TpmError::PcrOutOfRange(24)));
    assert_eq!(t.pcr_extend(10, &[d1, d384]), Err(TpmError::BankNotAllocated(HashAlgo::Sha384)));
    assert_eq!(t.pcr_extend(10, &[d1, d1]), Err(TpmError::DuplicateBank(HashAlgo::Sha1)));
    assert_eq!(t.pcr_read_all().unwrap(), before, "failed extends change nothing");
    assert_eq!(t.pcr_read(HashAlgo::Sha384, &[0]), Err(TpmError::BankNotAllocated(HashAlgo::Sha384)));
    assert_eq!(t.pcr_read(HashAlgo::Sha1, &[0, 99]), Err(TpmError::PcrOutOfRange(99)));
    assert_eq!(t.quote(&[0; 65], &sel()).unwrap_err(), TpmError::NonceTooLong { len: 65, max: 64 });
    let s384 = PcrSelection::uniform(&[HashAlgo::Sha384], &[0]).unwrap();
    assert_eq!(t.quote(NONCE, &s384).unwrap_err(), TpmError::BankNotAllocated(HashAlgo::Sha384));
    assert_eq!(SoftTpm::with_banks(1, &[]).unwrap_err(), TpmError::NoBanks);
    assert_eq!(
        SoftTpm::with_banks(1, &[HashAlgo::Sha256, HashAlgo::Sha256]).unwrap_err(),
        TpmError::DuplicateBank(HashAlgo::Sha256)
    );
    assert_eq!(PcrSelection::uniform(&[HashAlgo::Sha1], &[24]), Err(TpmError::PcrOutOfRange(24)));
    assert_eq!(
        PcrSelection::uniform(&[HashAlgo::Sha1, HashAlgo::Sha1], &[0]),
        Err(TpmError::DuplicateBank(HashAlgo::Sha1))
    );
}

#[test]
fn soft_tpm_is_deterministic_and_object_safe() {
    let run = |seed| {
        let mut t: Box<dyn Tpm> = Box::new(SoftTpm::with_banks(seed, &HashAlgo::ALL).unwrap());
        t.pcr_extend(10, &HashAlgo::ALL.map(|a| a.hash(&[b"e"]))).unwrap();
        let s = PcrSelection::uniform(&t.banks(), &[0, 10, 23]).unwrap();
        let q = t.quote(NONCE, &s).unwrap();
        let vq = verify_quote(&q, &t.ak_public(), NONCE).unwrap();
        vq.check_pcrs(|b, p| q.pcr_value(b, p)).unwrap();
        q
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).signature, run(6).signature);
}
