//! TPM 2.0 wire structures from `imasnap-tpm` on arbitrary bytes. The first byte picks
//! the structure, the rest is its encoding:
//!
//! | byte % 6 | parsed with | asserted beyond "no panic" |
//! |---|---|---|
//! | 0 | `Attest::from_bytes` (TPMS_ATTEST) | re-marshals to the input; errors name an offset inside it |
//! | 1 | `Signature::from_bytes` (TPMT_SIGNATURE) | the same |
//! | 2 | `PublicArea::from_tpm2b` (TPM2B_PUBLIC), then `AkPublic::from_tpm2b_public` | the same; an AK keeps the area and its Name is nameAlg + digest |
//! | 3 | `PcrSelection::from_bytes` (TPML_PCR_SELECTION) | the same; every index is 0-23 and ascending |
//! | 4 | `Quote::from_bytes` (imasnap's quote framing) | the same |
//! | 5 | u16 length, a TPM2B_PUBLIC of that length, then a `Quote::from_bytes` | `verify_quote` under that AK: a success means the attest parses, answers the nonce (its own extraData) and carries a sha256/384/512 scheme, and `check_pcrs` with the quote's own values agrees with `compute_pcr_digest` |
#![no_main]

use imasnap_tpm::{
    compute_pcr_digest, verify_quote, AkPublic, Attest, PcrSelection, PublicArea, Quote, QuoteError, Signature,
    WireError,
};
use libfuzzer_sys::fuzz_target;

fn check_err(e: &WireError, len: usize) {
    assert!(e.offset() <= len, "{e} names offset {} of a {len}-byte input", e.offset());
    assert!(e.to_string().contains(&format!("byte {}", e.offset())), "{e}");
}

fn attest(b: &[u8]) {
    match Attest::from_bytes(b) {
        Ok(a) => assert_eq!(a.to_bytes(), b, "TPMS_ATTEST round trip"),
        Err(e) => check_err(&e, b.len()),
    }
}

fn signature(b: &[u8]) {
    match Signature::from_bytes(b) {
        Ok(s) => assert_eq!(s.to_bytes(), b, "TPMT_SIGNATURE round trip"),
        Err(e) => check_err(&e, b.len()),
    }
}

fn public(b: &[u8]) {
    match PublicArea::from_tpm2b(b) {
        Ok(p) => {
            assert_eq!(p.to_tpm2b(), b, "TPM2B_PUBLIC round trip");
            assert_eq!(PublicArea::from_bytes(&b[2..]).as_ref(), Ok(&p), "TPMT_PUBLIC alone");
            let name = p.name();
            assert_eq!(name.len(), 2 + p.name_alg.size());
            match AkPublic::from_tpm2b_public(b) {
                Ok(ak) => {
                    assert_eq!(ak.public_area(), Some(&p));
                    assert_eq!(ak.name(), Some(name));
                    assert_eq!(ak.scheme(), p.scheme);
                    // The PEM form loads back as the same key (without the TPM area).
                    let pem = ak.to_pem();
                    let back = AkPublic::from_pem(&pem).expect("an AK's own PEM loads");
                    assert_eq!(back.kind(), ak.kind());
                    assert_eq!(back.to_pem(), pem);
                }
                Err(imasnap_tpm::AkError::Wire(e)) => panic!("parsed area, then wire error {e}"),
                Err(_) => {}
            }
        }
        Err(e) => {
            check_err(&e, b.len());
            assert!(AkPublic::from_tpm2b_public(b).is_err());
        }
    }
}

fn selection(b: &[u8]) {
    match PcrSelection::from_bytes(b) {
        Ok(s) => {
            assert_eq!(s.to_bytes(), b, "TPML_PCR_SELECTION round trip");
            for (_, pcrs) in s.banks() {
                assert!(pcrs.windows(2).all(|w| w[0] < w[1]), "{pcrs:?}");
                assert!(pcrs.iter().all(|&p| p < 24), "{pcrs:?}");
            }
        }
        Err(e) => check_err(&e, b.len()),
    }
}

fn quote(b: &[u8]) -> Option<Quote> {
    match Quote::from_bytes(b) {
        Ok(q) => {
            assert_eq!(q.to_bytes(), b, "Quote round trip");
            for (bank, _, v) in &q.pcr_values {
                assert_eq!(v.algo(), *bank);
            }
            Some(q)
        }
        Err(e) => {
            check_err(&e, b.len());
            None
        }
    }
}

fn verify(b: &[u8]) {
    let Some(len) = b.get(..2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else { return };
    let Some(ak_bytes) = b.get(2..2 + len) else { return };
    let Ok(ak) = AkPublic::from_tpm2b_public(ak_bytes) else { return };
    let Some(q) = quote(&b[2 + len..]) else { return };
    // The nonce the quote itself carries, so that a well-formed quote can pass.
    let nonce = Attest::from_bytes(&q.attest).map(|a| a.extra_data).unwrap_or_default();
    match verify_quote(&q, &ak, &nonce) {
        Ok(v) => {
            let a = Attest::from_bytes(&q.attest).expect("a verified attest parses");
            assert_eq!(a.extra_data, nonce);
            assert_eq!(v.selection, a.pcr_select);
            assert_eq!(v.pcr_digest, a.pcr_digest);
            assert_eq!(v.clock_info, a.clock_info);
            let sig = Signature::from_bytes(&q.signature).expect("a verified signature parses");
            assert_eq!(v.digest_alg, sig.scheme().hash);
            assert!(matches!(
                v.digest_alg,
                imasnap_tpm::HashAlgo::Sha256 | imasnap_tpm::HashAlgo::Sha384 | imasnap_tpm::HashAlgo::Sha512
            ));
            if let Some(s) = ak.scheme() {
                assert_eq!(s, sig.scheme(), "the AK's fixed scheme");
            }
            let values = |bank, pcr| q.pcr_value(bank, pcr);
            let checked = v.check_pcrs(values);
            match compute_pcr_digest(v.digest_alg, &v.selection, values) {
                Ok(d) => assert_eq!(checked.is_ok(), d.as_bytes() == v.pcr_digest.as_slice()),
                Err(e) => assert_eq!(checked, Err(e)),
            }
            // Another nonce never verifies.
            let mut other = nonce.clone();
            other.push(0);
            assert!(matches!(verify_quote(&q, &ak, &other), Err(QuoteError::NonceMismatch { .. })));
        }
        Err(QuoteError::Malformed { offset, .. } | QuoteError::UnsupportedAlgorithm { offset, .. }) => {
            assert!(offset <= q.attest.len().max(q.signature.len()));
        }
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 6 {
        0 => attest(rest),
        1 => signature(rest),
        2 => public(rest),
        3 => selection(rest),
        4 => {
            quote(rest);
        }
        _ => verify(rest),
    }
});
