//! Quotes made by a real TPM 2.0 (swtpm/libtpms via tpm2-tools; see
//! fixtures/swtpm/gen.sh) verify with our pure-Rust code, and our marshalling
//! reproduces the TPM's bytes exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_tpm::*;
use std::path::PathBuf;

const AKS: [&str; 4] = ["ak_ecc_ecdsa", "ak_ecc384_ecdsa", "ak_rsa_rsassa", "ak_rsa_rsapss"];

fn fx(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swtpm").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fx_str(name: &str) -> String {
    String::from_utf8(fx(name)).unwrap()
}

fn nonce() -> Vec<u8> {
    hex::decode(fx_str("nonce.hex").trim()).unwrap()
}

/// `tpm2_pcrread` YAML: `  sha256:` then `    10: 0xHEX` lines.
fn pcrs() -> Vec<(HashAlgo, u32, PcrValue)> {
    let mut bank = None;
    let mut out = Vec::new();
    for line in fx_str("pcrs.yaml").lines() {
        let (k, v) = line.split_once(':').unwrap();
        if v.trim().is_empty() {
            bank = HashAlgo::from_name(k.trim());
        } else {
            let b = bank.unwrap();
            out.push((b, k.trim().parse().unwrap(), PcrValue::from_hex(b, v.trim()).unwrap()));
        }
    }
    out
}

fn quote(ak: &str) -> Quote {
    Quote { attest: fx(&format!("{ak}.quote.msg")), signature: fx(&format!("{ak}.quote.sig")), pcr_values: pcrs() }
}

#[test]
fn real_quotes_verify() {
    for ak in AKS {
        let q = quote(ak);
        for key in [
            AkPublic::from_tpm2b_public(&fx(&format!("{ak}.tpm2b_public"))).unwrap(),
            AkPublic::from_pem(&fx_str(&format!("{ak}.pem"))).unwrap(),
        ] {
            let vq = verify_quote(&q, &key, &nonce()).unwrap_or_else(|e| panic!("{ak}: {e}"));
            // tpm2-tools was asked for sha256 first; the signed selection says so.
            let want = PcrSelection::new([(HashAlgo::Sha256, vec![0, 10, 17, 23]), (HashAlgo::Sha1, vec![0, 10])]);
            assert_eq!(vq.selection, want.unwrap(), "{ak}");
            vq.check_pcrs(|b, p| q.pcr_value(b, p)).unwrap_or_else(|e| panic!("{ak}: {e}"));
            // A fresh swtpm has done one TPM Reset (its first Startup(CLEAR)).
            assert_eq!((vq.clock_info.reset_count, vq.clock_info.restart_count), (1, 0));
            assert!(vq.clock_info.safe);
        }
    }
}

#[test]
fn real_pcr_values_match_our_extend() {
    let mut s256 = PcrValue::zero(HashAlgo::Sha256);
    let mut s1 = PcrValue::zero(HashAlgo::Sha1);
    for m in [b"a", b"b"] {
        HashAlgo::Sha256.extend(&mut s256, HashAlgo::Sha256.hash(&[m]).as_bytes());
        HashAlgo::Sha1.extend(&mut s1, HashAlgo::Sha1.hash(&[m]).as_bytes());
    }
    let q = quote("ak_ecc_ecdsa");
    assert_eq!(q.pcr_value(HashAlgo::Sha256, 10), Some(s256));
    assert_eq!(q.pcr_value(HashAlgo::Sha1, 10), Some(s1));
    assert_eq!(q.pcr_value(HashAlgo::Sha256, 17), Some(PcrValue::ones(HashAlgo::Sha256)));
    // The software TPM yields the same state, hence the same pcrDigest.
    let mut t = SoftTpm::new(0);
    for m in [b"a", b"b"] {
        t.pcr_extend(10, &[HashAlgo::Sha1.hash(&[m]), HashAlgo::Sha256.hash(&[m])]).unwrap();
    }
    let real = Attest::from_bytes(&q.attest).unwrap();
    let soft = Attest::from_bytes(&t.quote(&nonce(), &real.pcr_select).unwrap().attest).unwrap();
    assert_eq!(soft.pcr_digest, real.pcr_digest);
}

#[test]
fn real_bytes_round_trip() {
    for ak in AKS {
        let pubb = fx(&format!("{ak}.tpm2b_public"));
        let area = PublicArea::from_tpm2b(&pubb).unwrap();
        assert_eq!(area.to_tpm2b(), pubb, "{ak}");
        assert_eq!(PublicArea::from_bytes(&pubb[2..]).unwrap(), area);
        assert_eq!(area.object_attributes, public::attrs::AK_DEFAULT);
        let key = AkPublic::from_public_area(area.clone()).unwrap();
        assert_eq!(key.name().unwrap(), fx(&format!("{ak}.name")), "{ak}: Name");
        let pem = AkPublic::from_pem(&fx_str(&format!("{ak}.pem"))).unwrap();
        assert_eq!(AkPublic::from_pem(&key.to_pem()).unwrap(), pem);
        assert_eq!(pem.kind(), key.kind());

        let q = quote(ak);
        assert_eq!(Attest::from_bytes(&q.attest).unwrap().to_bytes(), q.attest);
        assert_eq!(Signature::from_bytes(&q.signature).unwrap().to_bytes(), q.signature);
        assert_eq!(key.scheme(), Some(q.parse_signature().unwrap().scheme()));
    }
    let rsa = AkPublic::from_pem(&fx_str("ak_rsa_rsassa.pem")).unwrap();
    assert_eq!(AkPublic::from_pem(&fx_str("ak_rsa_rsassa.pkcs1.pem")).unwrap(), rsa);
    assert_eq!(rsa.kind(), AkKind::Rsa { bits: 2048 });
}

#[test]
fn real_quote_forgeries() {
    let n = nonce();
    for ak in AKS {
        let q = quote(ak);
        let key = AkPublic::from_pem(&fx_str(&format!("{ak}.pem"))).unwrap();
        for i in [0, 5, 40, q.attest.len() - 1] {
            let mut f = q.clone();
            f.attest[i] ^= 1;
            assert!(matches!(verify_quote(&f, &key, &n), Err(QuoteError::BadSignature(_))), "{ak} attest byte {i}");
        }
        let mut f = q.clone();
        let last = f.signature.len() - 1;
        f.signature[last] ^= 1;
        assert!(matches!(verify_quote(&f, &key, &n), Err(QuoteError::BadSignature(_))), "{ak} signature");
        assert!(matches!(verify_quote(&q, &key, &n[1..]), Err(QuoteError::NonceMismatch { .. })));
        let mut changed = q.clone();
        changed.pcr_values[1].2 = PcrValue::zero(HashAlgo::Sha256);
        let vq = verify_quote(&changed, &key, &n).unwrap();
        assert!(matches!(vq.check_pcrs(|b, p| changed.pcr_value(b, p)), Err(QuoteError::PcrDigestMismatch { .. })));
    }
    // Signatures under another key or key type.
    let ecc = AkPublic::from_pem(&fx_str("ak_ecc_ecdsa.pem")).unwrap();
    let ecc384 = AkPublic::from_pem(&fx_str("ak_ecc384_ecdsa.pem")).unwrap();
    let rsassa = AkPublic::from_pem(&fx_str("ak_rsa_rsassa.pem")).unwrap();
    let rsapss = AkPublic::from_pem(&fx_str("ak_rsa_rsapss.pem")).unwrap();
    let e = verify_quote(&quote("ak_rsa_rsassa"), &ecc, &n).unwrap_err();
    assert_eq!(e, QuoteError::KeyMismatch { key: AkKind::EccP256, signature: SigAlg::RsaSsa });
    let e = verify_quote(&quote("ak_ecc_ecdsa"), &rsassa, &n).unwrap_err();
    assert_eq!(e, QuoteError::KeyMismatch { key: AkKind::Rsa { bits: 2048 }, signature: SigAlg::Ecdsa });
    assert!(matches!(verify_quote(&quote("ak_ecc384_ecdsa"), &ecc, &n), Err(QuoteError::BadSignature(_))));
    assert!(matches!(verify_quote(&quote("ak_ecc_ecdsa"), &ecc384, &n), Err(QuoteError::BadSignature(_))));
    assert!(matches!(verify_quote(&quote("ak_rsa_rsassa"), &rsapss, &n), Err(QuoteError::BadSignature(_))));
    // With the TPM2B_PUBLIC the key's fixed scheme is known: mismatch is named as such.
    let fixed = AkPublic::from_tpm2b_public(&fx("ak_rsa_rsassa.tpm2b_public")).unwrap();
    assert!(matches!(verify_quote(&quote("ak_rsa_rsapss"), &fixed, &n), Err(QuoteError::SchemeMismatch { .. })));
}
