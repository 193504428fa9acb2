//! End to end on a real TPM 2.0 (swtpm through tss-esapi): `sim run --tpm swtpm:…`
//! extends the TPM's PCR 10 from the kernel model and quotes it; `verify` accepts the
//! bundle, also against the TPM's AK given as trusted, and rejects it once tampered.
//!
//! Each test starts a private swtpm (fresh PCRs). They fail when IMASNAP_SWTPM is
//! unset (scripts/test.sh sets it), unless IMASNAP_SKIP_SWTPM=1. They need the `tpm2`
//! feature, which scripts/test.sh enables.
#![cfg(feature = "tpm2")]

use imasnap_test_support::swtpm::Swtpm;
use imasnap_tpm::Tpm as _;
use std::path::Path;
use std::process::Output;

mod common;
use common::{copy_bundle, imasnap, verify_json};

fn sim(tpm: &str, out: &Path, extra: &[&str]) -> Output {
    let o = out.to_str().unwrap();
    let mut args =
        vec!["sim", "run", "--tpm", tpm, "--out", o, "--events", "3000", "--snapshot-every", "1000", "--json"];
    args.extend_from_slice(extra);
    imasnap(&args)
}

#[test]
fn sim_on_swtpm_verifies_and_tampering_is_rejected() {
    let Some(sw) = Swtpm::for_test() else { return };
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    let r = sim(&sw.tcti(), &good, &[]);
    assert!(r.status.success(), "sim run --tpm {}: {}", sw.tcti(), String::from_utf8_lossy(&r.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(rep["report"]["snapshots"].as_u64().unwrap() >= 2, "{rep}");

    let (code, v) = verify_json(&good, &["--trust-bundle-ak"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["verdict"], "verified");
    assert_eq!(v["ak_trust"], "bundle_untrusted");

    // The quote is the swtpm's: its AK, loaded from the TPM itself, is a trusted --ak.
    let ak_pem = t.path().join("ak.pem");
    let real_pcr10;
    {
        let mut tpm = imasnap_tpm::open_tpm(&sw.tcti()).unwrap();
        std::fs::write(&ak_pem, tpm.ak_public().to_pem()).unwrap();
        real_pcr10 = tpm.pcr_read(imasnap_tpm::HashAlgo::Sha256, &[10]).unwrap()[0];
    }
    let (code, v) = verify_json(&good, &["--ak", ak_pem.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    // The bundle's quote carries the TPM's real PCR 10 (the kernel model extended it).
    let quote = std::fs::read_to_string(good.join("quote.json")).unwrap();
    assert!(quote.to_lowercase().contains(&real_pcr10.to_hex().to_lowercase()), "PCR 10 {real_pcr10:?} not in {quote}");
    assert_ne!(real_pcr10, imasnap_tpm::PcrValue::zero(imasnap_tpm::HashAlgo::Sha256));

    // Another TPM's AK (the software TPM's) is not trusted for this quote.
    let soft_pem = t.path().join("soft.pem");
    std::fs::write(&soft_pem, imasnap_tpm::SoftTpm::new(1).ak_public().to_pem()).unwrap();
    let (code, v) = verify_json(&good, &["--ak", soft_pem.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");

    // A flipped byte inside a snapshot.
    let bad = t.path().join("flip");
    copy_bundle(&good, &bad);
    let snap = std::fs::read_dir(bad.join("snapshots")).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let mut b = std::fs::read(&snap).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&snap, b).unwrap();
    let ak = ak_pem.to_str().unwrap();
    let (code, v) = verify_json(&bad, &["--ak", ak]);
    assert_eq!((code, v["verdict"].as_str()), (1, Some("rejected")), "{v}");

    // A forged signed attest (the TPM's signature no longer matches).
    let bad = t.path().join("attest");
    copy_bundle(&good, &bad);
    let mut q: serde_json::Value = serde_json::from_str(&quote).unwrap();
    let attest = find_hex_field(&mut q, "attest").expect("quote.json has an attest field");
    let mut bytes = hex::decode(attest.as_str().unwrap()).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    *attest = serde_json::Value::String(hex::encode(bytes));
    std::fs::write(bad.join("quote.json"), serde_json::to_string_pretty(&q).unwrap()).unwrap();
    let (code, v) = verify_json(&bad, &["--ak", ak]);
    assert_eq!((code, v["verdict"].as_str()), (1, Some("rejected")), "{v}");

    // A nonce the quote does not answer.
    let (code, v) = verify_json(&good, &["--ak", ak, "--nonce", &"00".repeat(32)]);
    assert_eq!((code, v["reason"].as_str()), (1, Some("quote_nonce_mismatch")), "{v}");
}

/// The first string field named `name` anywhere in `v`.
fn find_hex_field<'a>(v: &'a mut serde_json::Value, name: &str) -> Option<&'a mut serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get(name).is_some_and(|x| x.is_string()) {
                return m.get_mut(name);
            }
            m.values_mut().find_map(|x| find_hex_field(x, name))
        }
        serde_json::Value::Array(a) => a.iter_mut().find_map(|x| find_hex_field(x, name)),
        _ => None,
    }
}

#[test]
fn sim_on_swtpm_with_pcr_reads_under_the_lock() {
    let Some(sw) = Swtpm::for_test() else { return };
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("b");
    let r = sim(&sw.tcti(), &dir, &["--tpm-under-lock", "--crash-at", "after-done"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for mode in [&["--trust-bundle-ak"][..], &["--trust-bundle-ak", "--latest-only"][..]] {
        let (code, v) = verify_json(&dir, mode);
        assert_eq!(code, 0, "{mode:?}: {v}");
    }
}

#[test]
fn sim_refuses_a_used_tpm() {
    let Some(sw) = Swtpm::for_test() else { return };
    let t = tempfile::tempdir().unwrap();
    let r = sim(&sw.tcti(), &t.path().join("first"), &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // PCR 10 now holds the first run's measurements: a second kernel model cannot start on it.
    let r = sim(&sw.tcti(), &t.path().join("second"), &[]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("PCR 10") && err.contains("not zero"), "{err}");
}
