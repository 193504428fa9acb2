//! Round trips of every wire structure, known bytes, and no panics on any input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_tpm::*;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/swtpm/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn sample_attest() -> Attest {
    Attest {
        qualified_signer: [&[0x00, 0x0b][..], &[7; 32]].concat(),
        extra_data: b"nonce".to_vec(),
        clock_info: ClockInfo { clock: 0x0102_0304_0506_0708, reset_count: 3, restart_count: 2, safe: true },
        firmware_version: 0x2019_1023_0016_3636,
        pcr_select: PcrSelection::new([(HashAlgo::Sha256, vec![23, 0, 10]), (HashAlgo::Sha1, vec![])]).unwrap(),
        pcr_digest: vec![0xab; 32],
    }
}

#[test]
fn selection_known_bytes_and_round_trip() {
    let s = PcrSelection::new([(HashAlgo::Sha256, vec![10, 0, 1, 2, 23]), (HashAlgo::Sha1, vec![10])]).unwrap();
    let b = s.to_bytes();
    assert_eq!(hex::encode(&b), "00000002000b030704800004030004 00".replace(' ', ""));
    assert_eq!(PcrSelection::from_bytes(&b).unwrap(), s);
    assert_eq!(s.iter().collect::<Vec<_>>()[..2], [(HashAlgo::Sha256, 0), (HashAlgo::Sha256, 1)]);
    assert!(s.contains(HashAlgo::Sha1, 10) && !s.contains(HashAlgo::Sha1, 0));
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(json, r#"[["sha256",[0,1,2,10,23]],["sha1",[10]]]"#);
    assert_eq!(serde_json::from_str::<PcrSelection>(&json).unwrap(), s);
    assert!(serde_json::from_str::<PcrSelection>(r#"[["sha1",[24]]]"#).is_err());
    // A TPM rejects sizeofSelect other than 3, and so do we; unknown banks are named.
    let e = PcrSelection::from_bytes(&hex::decode("00000001000b0400000000").unwrap()).unwrap_err();
    assert!(matches!(e, WireError::Malformed { offset: 6, .. }), "{e}");
    let e = PcrSelection::from_bytes(&hex::decode("000000010027030000ff").unwrap()).unwrap_err();
    assert_eq!(e, WireError::UnsupportedAlg { what: "TPML_PCR_SELECTION", offset: 4, alg: 0x0027 });
    let e = PcrSelection::from_bytes(&hex::decode("ffffffff").unwrap()).unwrap_err();
    assert!(matches!(e, WireError::Malformed { offset: 0, .. }), "{e}");
}

#[test]
fn attest_clock_signature_round_trip() {
    let a = sample_attest();
    let b = a.to_bytes();
    assert_eq!(&b[..6], [0xff, 0x54, 0x43, 0x47, 0x80, 0x18]);
    assert_eq!(Attest::from_bytes(&b).unwrap(), a);
    let c = a.clock_info;
    assert_eq!(hex::encode(c.to_bytes()), "01020304050607080000000300000002".to_owned() + "01");
    assert_eq!(ClockInfo::from_bytes(&c.to_bytes()).unwrap(), c);
    assert!(ClockInfo::from_bytes(&[0; 16].iter().chain(&[2]).copied().collect::<Vec<_>>()).is_err());
    for s in [
        Signature::Ecdsa { hash: HashAlgo::Sha256, r: vec![1; 32], s: vec![2; 31] },
        Signature::RsaSsa { hash: HashAlgo::Sha384, sig: vec![3; 256] },
        Signature::RsaPss { hash: HashAlgo::Sha512, sig: vec![4; 384] },
    ] {
        assert_eq!(Signature::from_bytes(&s.to_bytes()).unwrap(), s);
    }
    assert_eq!(
        hex::encode(Signature::Ecdsa { hash: HashAlgo::Sha256, r: vec![1], s: vec![2] }.to_bytes()),
        "0018000b0001010001".to_owned() + "02"
    );
}

#[test]
fn public_area_round_trip_and_name() {
    for f in ["ak_ecc_ecdsa", "ak_ecc384_ecdsa", "ak_rsa_rsassa", "ak_rsa_rsapss"] {
        let b = fixture(&format!("{f}.tpm2b_public"));
        let a = PublicArea::from_tpm2b(&b).unwrap();
        assert_eq!(a.to_tpm2b(), b);
        assert_eq!(PublicArea::from_bytes(&a.to_bytes()).unwrap(), a);
        assert_eq!(a.name()[..2], a.name_alg.tpm_alg_id().to_be_bytes());
        // A size field that disagrees with the contents is malformed, not ignored.
        let mut bad = b.clone();
        bad[1] ^= 1;
        assert!(PublicArea::from_tpm2b(&bad).is_err());
    }
    // An unrestricted key is refused as an AK: it could sign a forged TPMS_ATTEST.
    let mut a = PublicArea::from_tpm2b(&fixture("ak_ecc_ecdsa.tpm2b_public")).unwrap();
    a.object_attributes &= !public::attrs::RESTRICTED;
    assert!(matches!(AkPublic::from_public_area(a), Err(AkError::NotRestrictedSigning { .. })));
    // A point off the curve is refused.
    let mut a = PublicArea::from_tpm2b(&fixture("ak_ecc_ecdsa.tpm2b_public")).unwrap();
    if let PublicKeyParams::Ecc { y, .. } = &mut a.params {
        y[31] ^= 1;
    }
    assert!(matches!(AkPublic::from_public_area(a), Err(AkError::InvalidKey(_))));
    assert!(matches!(
        AkPublic::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        Err(AkError::Pem(_))
    ));
}

#[test]
fn quote_bytes_and_json_round_trip() {
    let mut t = SoftTpm::new(11);
    let s = PcrSelection::uniform(&[HashAlgo::Sha1, HashAlgo::Sha256], &[0, 10]).unwrap();
    let q = t.quote(b"n", &s).unwrap();
    assert_eq!(Quote::from_bytes(&q.to_bytes()).unwrap(), q);
    let json = serde_json::to_string(&q).unwrap();
    assert!(json.contains(r#""attest":"ff544347"#), "{json}");
    assert!(json.contains(r#"{"bank":"sha1","pcr":0,"value":"0000000000000000000000000000000000000000"}"#), "{json}");
    assert_eq!(serde_json::from_str::<Quote>(&json).unwrap(), q);
    assert_eq!(q.parse_attest().unwrap().pcr_select, s);
    verify_quote(&Quote::from_bytes(&q.to_bytes()).unwrap(), &t.ak_public(), b"n").unwrap();
}

#[test]
fn p384_ak_signed_quote_verifies() {
    let key = p384::ecdsa::SigningKey::from_slice(&[0x42; 48]).unwrap();
    let pt = key.verifying_key().to_encoded_point(false);
    let area = PublicArea {
        name_alg: HashAlgo::Sha384,
        object_attributes: public::attrs::AK_DEFAULT,
        auth_policy: vec![],
        scheme: Some(SigScheme { alg: SigAlg::Ecdsa, hash: HashAlgo::Sha384 }),
        params: PublicKeyParams::Ecc {
            curve: EccCurve::P384,
            x: pt.x().unwrap().to_vec(),
            y: pt.y().unwrap().to_vec(),
        },
    };
    let ak = AkPublic::from_tpm2b_public(&area.to_tpm2b()).unwrap();
    assert_eq!(ak.kind(), AkKind::EccP384);
    let mut a = sample_attest();
    a.pcr_digest = compute_pcr_digest(HashAlgo::Sha384, &a.pcr_select, |b, _| Some(PcrValue::zero(b)))
        .unwrap()
        .as_bytes()
        .to_vec();
    let attest = a.to_bytes();
    let sig: p384::ecdsa::Signature = key.sign_prehash(HashAlgo::Sha384.hash(&[&attest]).as_bytes()).unwrap();
    let (r, s) = sig.split_bytes();
    let q = Quote {
        attest,
        signature: Signature::Ecdsa { hash: HashAlgo::Sha384, r: r.to_vec(), s: s.to_vec() }.to_bytes(),
        pcr_values: vec![],
    };
    let vq = verify_quote(&q, &ak, b"nonce").unwrap();
    assert_eq!(vq.digest_alg, HashAlgo::Sha384);
    assert_eq!(vq.clock_info, a.clock_info);
    assert_eq!(vq.firmware_version, a.firmware_version);
    assert_eq!(vq.qualified_signer, a.qualified_signer);
    vq.check_pcrs(|b, _| Some(PcrValue::zero(b))).unwrap();
}

/// Every parser, on one input. Results are ignored: only panics fail.
fn parse_all(b: &[u8]) {
    let _ = PcrSelection::from_bytes(b);
    let _ = Attest::from_bytes(b);
    let _ = ClockInfo::from_bytes(b);
    let _ = Signature::from_bytes(b);
    let _ = PublicArea::from_bytes(b);
    let _ = PublicArea::from_tpm2b(b);
    let _ = AkPublic::from_tpm2b_public(b);
    let _ = Quote::from_bytes(b);
    let _ = AkPublic::from_pem(&String::from_utf8_lossy(b));
}

fn seeds() -> Vec<Vec<u8>> {
    let mut t = SoftTpm::new(1);
    let q = t.quote(b"abc", &PcrSelection::uniform(&t.banks(), &[0, 10]).unwrap()).unwrap();
    let mut v = vec![q.attest.clone(), q.signature.clone(), q.to_bytes(), sample_attest().to_bytes()];
    for f in ["ak_ecc_ecdsa", "ak_rsa_rsassa"] {
        for ext in ["tpm2b_public", "quote.msg", "quote.sig", "pem"] {
            v.push(fixture(&format!("{f}.{ext}")));
        }
        v.push(fixture(&format!("{f}.tpm2b_public"))[2..].to_vec());
    }
    v
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    for s in seeds() {
        for n in 0..=s.len() {
            parse_all(&s[..n]);
        }
        for i in 0..s.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut m = s.clone();
                m[i] ^= x;
                parse_all(&m);
            }
        }
    }
}

#[test]
fn verify_quote_never_panics_on_mutations() {
    let mut t = SoftTpm::new(1);
    let ak = t.ak_public();
    let rsa = AkPublic::from_pem(&String::from_utf8(fixture("ak_rsa_rsassa.pem")).unwrap()).unwrap();
    let q = t.quote(b"abc", &PcrSelection::uniform(&t.banks(), &[0, 10]).unwrap()).unwrap();
    for i in (0..q.signature.len()).step_by(3) {
        let mut f = q.clone();
        f.signature[i] ^= 0xff;
        let _ = verify_quote(&f, &ak, b"abc");
        let _ = verify_quote(&f, &rsa, b"abc");
        f.signature.truncate(i);
        let _ = verify_quote(&f, &ak, b"abc");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_all(&b);
    }

    #[test]
    fn random_prefixed_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200), pick in 0usize..4) {
        // Valid-looking heads reach deeper parser states than uniform noise.
        let head: &[u8] = [&[0xff, 0x54, 0x43, 0x47, 0x80, 0x18][..], &[0x00, 0x18, 0x00, 0x0b], &[0x00, 0x23, 0x00, 0x0b], &[0, 0, 0, 1, 0, 0x0b, 3]][pick];
        let b = [head, &tail].concat();
        parse_all(&b);
        let mut framed = (b.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&b);
        parse_all(&framed);
        let q = Quote { attest: b.clone(), signature: tail.clone(), pcr_values: vec![] };
        let _ = verify_quote(&q, &SoftTpm::new(0).ak_public(), &tail);
    }

    #[test]
    fn selection_round_trips(banks in proptest::collection::vec((0usize..5, proptest::collection::vec(0u32..24, 0..24)), 0..5)) {
        let mut seen = Vec::new();
        let parts: Vec<_> = banks.into_iter().filter_map(|(b, p)| {
            let a = HashAlgo::ALL[b];
            if seen.contains(&a) { return None; }
            seen.push(a);
            Some((a, p))
        }).collect();
        let s = PcrSelection::new(parts).unwrap();
        prop_assert_eq!(PcrSelection::from_bytes(&s.to_bytes()).unwrap(), s);
    }
}
