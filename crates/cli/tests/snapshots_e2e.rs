//! End to end through the binary: `sim run` writes a bundle, `verify` accepts it, rejects
//! tampered copies, continues incrementally from saved state; `demo` verifies every round.

use std::path::Path;

mod common;
use common::{copy_bundle, imasnap};

fn sim(out: &Path, extra: &[&str]) {
    let o = out.to_str().unwrap();
    let mut args = vec!["sim", "run", "--out", o, "--events", "6000", "--snapshot-every", "1500"];
    args.extend_from_slice(extra);
    let r = imasnap(&args);
    assert!(r.status.success(), "sim run {extra:?}: {}", String::from_utf8_lossy(&r.stderr));
}

/// The enrolled AK of `sim run` bundles: the software TPM with the default seed 1.
fn enrolled_ak(dir: &Path) -> String {
    let p = dir.join("enrolled-ak.pem");
    std::fs::write(&p, imasnap_tpm::Tpm::ak_public(&imasnap_tpm::SoftTpm::new(1)).to_pem()).unwrap();
    p.to_str().unwrap().to_string()
}

/// `verify --json` against the enrolled AK.
fn verify_json(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let ak = enrolled_ak(dir.parent().unwrap());
    let mut args = vec!["--ak", ak.as_str()];
    args.extend_from_slice(extra);
    common::verify_json(dir, &args)
}

#[test]
fn sim_bundles_verify_in_every_scenario() {
    let t = tempfile::tempdir().unwrap();
    let scenarios: &[(&str, &[&str])] = &[
        ("plain", &[]),
        ("crash-after-done", &["--crash-at", "after-done"]),
        ("crash-after-rename", &["--crash-at", "after-rename"]),
        ("aborts", &["--abort-every", "2"]),
        ("kexec", &["--kexec-at", "3100"]),
        ("under-lock", &["--tpm-under-lock"]),
    ];
    for (name, extra) in scenarios {
        let dir = t.path().join(name);
        sim(&dir, extra);
        for mode in [&[][..], &["--latest-only"][..]] {
            let (code, v) = verify_json(&dir, mode);
            assert_eq!(code, 0, "{name} {mode:?}: {v}");
            assert_eq!(v["verdict"], "verified");
            assert_eq!(v["history_verified"], mode.is_empty(), "{name}");
        }
    }
}

#[test]
fn tampering_is_rejected_with_reason() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("good");
    sim(&good, &[]);
    let snaps: Vec<_> = std::fs::read_dir(good.join("snapshots")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(snaps.len() >= 3);

    // A byte inside a snapshot record.
    let bad = t.path().join("flip");
    copy_bundle(&good, &bad);
    let f = bad.join("snapshots/000002.snap");
    let mut b = std::fs::read(&f).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    std::fs::write(&f, b).unwrap();
    let (code, v) = verify_json(&bad, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["verdict"], "rejected");
    assert!(v["reason"].is_string() && v["detail"].is_string(), "{v}");

    // A snapshot file deleted.
    let bad = t.path().join("missing");
    copy_bundle(&good, &bad);
    std::fs::remove_file(bad.join("snapshots/000001.snap")).unwrap();
    let (code, v) = verify_json(&bad, &[]);
    assert_eq!((code, v["reason"].as_str()), (1, Some("snapshot_missing")), "{v}");

    // A nonce the quote does not answer.
    let (code, v) = verify_json(&good, &["--nonce", &"00".repeat(32)]);
    assert_eq!((code, v["reason"].as_str()), (1, Some("quote_nonce_mismatch")), "{v}");

    // Unreadable bundle: bad input, exit 2.
    let (code, _) = verify_json(&t.path().join("nope"), &[]);
    assert_eq!(code, 2);
}

#[test]
fn saved_state_makes_the_next_run_incremental() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("b");
    sim(&dir, &[]);
    let st = t.path().join("state.json");
    let (code, v) = verify_json(&dir, &["--save-state", st.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    let full = v["report"]["records_replayed"].as_u64().unwrap();
    let (code, v) = verify_json(&dir, &["--from-state", st.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ak_trust"], "enrolled", "--ak wins over the saved state's AK");
    let (code, v) = common::verify_json(&dir, &["--from-state", st.to_str().unwrap()]);
    assert_eq!(code, 0, "{v}");
    assert_eq!((v["ak_trust"].as_str(), v["ak_first_trust"].as_str()), (Some("saved_state"), Some("enrolled")));
    assert!(v["report"]["records_replayed"].as_u64().unwrap() < full / 10, "{v}");
    assert!(v["report"]["snapshots_skipped"].as_u64().unwrap() >= 3, "{v}");
}

#[test]
fn demo_verifies_every_round() {
    let r = imasnap(["demo", "--rounds", "4", "--events-per-round", "3000", "--snapshot-records", "1000", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["rounds_verified"], 4);
    assert_eq!(v["rounds_rejected"], 0);
    assert!(v["snapshots"].as_u64().unwrap() >= 4);
    assert!(v["live_records"].as_u64().unwrap() < v["records_without_snapshotting"].as_u64().unwrap() / 3);
}
