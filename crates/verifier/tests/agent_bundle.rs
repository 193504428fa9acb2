//! The agent's real bundle directory (crates/agent `write_bundle`) read back through
//! `bundle` and verified: the contract of docs/SNAPSHOTS.md, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent::{quote_json, Agent, AgentConfig, AkKey, Evidence as AgentEvidence};
use imasnap_kernel_model::Kernel;
use imasnap_log::{Endian, HashAlgo};
use imasnap_test_support::kernel;
use imasnap_tpm::{PcrSelection, SoftTpm, Tpm};
use imasnap_verifier::bundle::{ak_from_pub_hex, quote_from_json, BundleIndex, Manifest};
use imasnap_verifier::{verify, Evidence, Failure, Input, Mode, Options, SnapshotEvidence, TpmQuote};
use std::path::Path;

fn measure(k: &mut Kernel<SoftTpm>, from: u64, n: u64) {
    kernel::measure_files(k, "/usr/bin/f", from, n);
}

/// Reads a bundle directory the way a verifier service would, then runs the engine.
fn verify_dir(dir: &Path, trusted: &imasnap_tpm::AkPublic, nonce: &[u8], mode: Mode) -> imasnap_verifier::Outcome {
    let read = |p: &str| std::fs::read(dir.join(p)).unwrap();
    let index = BundleIndex::from_json(&read("bundle.json")).unwrap();
    let manifest = Manifest::from_json(&read("manifest.json")).unwrap();
    imasnap_verifier::bundle::check_against(&manifest, &index).unwrap();
    let quote = quote_from_json(&read("quote.json")).unwrap();
    let claimed = ak_from_pub_hex(&String::from_utf8(read("ak.pub")).unwrap()).unwrap();
    let files: Vec<Vec<u8>> = manifest.snapshots.iter().map(|(f, _)| read(&format!("snapshots/{f}"))).collect();
    let live = read("live.bin");
    let ev = Evidence {
        banks: index.banks.clone(),
        pcr: index.pcr,
        endian: Endian::Little,
        boot: Some(manifest.boot.clone()),
        snapshots: manifest
            .snapshots
            .iter()
            .zip(&files)
            .map(|((_, c), b)| SnapshotEvidence { claim: c.clone(), data: Some(Input::Bytes(b)) })
            .collect(),
        live: Input::Bytes(&live),
        live_first_index: index.live_first_index,
        data_from: None,
    };
    let q = TpmQuote { quote: &quote, trusted_ak: trusted, claimed_ak: Some(&claimed) };
    verify(&Options::new(mode), ev, &q, nonce, None)
}

#[test]
fn agent_bundle_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::new(tmp.path().join("state"));
    let mut k = kernel::boot(7);
    measure(&mut k, 0, 40);
    let (mut a, _) = Agent::start(k, cfg).unwrap();
    a.snapshot_once().unwrap();
    measure(a.kernel_mut(), 40, 7);
    a.snapshot_once().unwrap();
    measure(a.kernel_mut(), 47, 3);

    let nonce = [0x5a; 32];
    let sel = PcrSelection::uniform(&[HashAlgo::Sha1, HashAlgo::Sha256], &(0..=10).collect::<Vec<_>>()).unwrap();
    let q = a.kernel_mut().tpm_mut().quote(&nonce, &sel).unwrap();
    measure(a.kernel_mut(), 50, 2); // the log runs ahead of the quote
    let ak = a.kernel().tpm().ak_public();
    let ak_bytes = AkKey::Tpm2bPublic(ak.public_area().unwrap().to_tpm2b());
    let out = tmp.path().join("bundle");
    a.write_bundle(&out, &AgentEvidence { quote: &quote_json(&q, &nonce), nonce: &nonce, ak: &ak_bytes }).unwrap();

    for mode in [Mode::FullHistory, Mode::LatestSegment, Mode::Incremental] {
        let o = verify_dir(&out, &ak, &nonce, mode);
        assert!(o.verdict.is_verified(), "{mode:?}: {:?}", o.verdict);
        assert_eq!(o.report.tail_records, 2);
    }
    let full = verify_dir(&out, &ak, &nonce, Mode::FullHistory);
    assert_eq!(full.state.unwrap().verified_snapshots, 2);

    // The same bundle under another machine's trusted AK, and under a stale challenge.
    let other = SoftTpm::new(8).ak_public();
    assert!(matches!(
        verify_dir(&out, &other, &nonce, Mode::FullHistory).verdict.failure(),
        Some(Failure::AkMismatch { .. })
    ));
    assert!(matches!(
        verify_dir(&out, &ak, &[0x5b; 32], Mode::FullHistory).verdict.failure(),
        Some(Failure::QuoteNonceMismatch { .. })
    ));
}

/// An agent on the staging interface in `flavour`: three cuts with records in between,
/// then a bundle. Returns the bundle directory, the AK and the nonce.
fn staging_bundle(
    tmp: &Path,
    flavour: imasnap_agent::StagingFlavour,
    tail: u64,
) -> (std::path::PathBuf, imasnap_tpm::AkPublic, [u8; 32]) {
    let cfg = AgentConfig::staging(tmp.join("state"), flavour);
    let mut k = kernel::boot(9);
    measure(&mut k, 0, 30);
    let (mut a, _) = Agent::start(k, cfg).unwrap();
    for round in 0..3 {
        let e = a.snapshot_once().unwrap();
        assert_eq!(e.cut.as_str(), if flavour == imasnap_agent::StagingFlavour::Trim { "trim" } else { "stage" });
        measure(a.kernel_mut(), 100 + 10 * round, 5);
    }
    a.snapshot_once().unwrap();
    measure(a.kernel_mut(), 500, tail);
    let nonce = [0x3c; 32];
    let sel = PcrSelection::uniform(&[HashAlgo::Sha1, HashAlgo::Sha256], &(0..=10).collect::<Vec<_>>()).unwrap();
    let q = a.kernel_mut().tpm_mut().quote(&nonce, &sel).unwrap();
    let ak = a.kernel().tpm().ak_public();
    let ak_bytes = AkKey::Tpm2bPublic(ak.public_area().unwrap().to_tpm2b());
    let out = tmp.join("bundle");
    a.write_bundle(&out, &AgentEvidence { quote: &quote_json(&q, &nonce), nonce: &nonce, ak: &ak_bytes }).unwrap();
    (out, ak, nonce)
}

#[test]
fn staging_bundles_verify_in_full_history_and_as_latest_segment_from_a_checkpoint() {
    use imasnap_agent::StagingFlavour::{Stage, Trim};
    // A stage cut may leave the kernel's list empty (tail 0): the quote then ends the last segment.
    for (flavour, tail) in [(Trim, 4), (Stage, 4), (Stage, 0)] {
        let tmp = tempfile::tempdir().unwrap();
        let (out, ak, nonce) = staging_bundle(tmp.path(), flavour, tail);
        let m = Manifest::from_json(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m.snapshots.len(), 4, "{flavour:?}");
        for mode in [Mode::FullHistory, Mode::Incremental] {
            let o = verify_dir(&out, &ak, &nonce, mode);
            assert!(o.verdict.is_verified(), "{flavour:?} {mode:?}: {:?}", o.verdict);
            assert_eq!(o.state.unwrap().verified_snapshots, 4, "{flavour:?}");
        }
        // No marker heads the list, but the newest checkpoint anchors the latest segment.
        let o = verify_dir(&out, &ak, &nonce, Mode::LatestSegment);
        assert_eq!(o.verdict, imasnap_verifier::Verdict::Verified { history_verified: false }, "{flavour:?}");
        assert_eq!(o.report.checkpoint_used.map(|c| c.seq), Some(4), "{flavour:?}");
        // Without checkpoints the newest segment alone proves nothing.
        let path = out.join("manifest.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for s in m["snapshots"].as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("checkpoint");
        }
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let o = verify_dir(&out, &ak, &nonce, Mode::LatestSegment);
        assert!(!o.verdict.is_verified(), "{flavour:?}: latest segment without a marker or checkpoint passed");
    }
}

#[test]
fn staging_manifest_claims_are_checked() {
    use imasnap_agent::StagingFlavour::{Stage, Trim};
    for flavour in [Trim, Stage] {
        let tmp = tempfile::tempdir().unwrap();
        let (out, ak, nonce) = staging_bundle(tmp.path(), flavour, 3);
        let path = out.join("manifest.json");
        let good = std::fs::read_to_string(&path).unwrap();
        let mut edits: Vec<(&str, Box<dyn Fn(&mut serde_json::Value)>)> = vec![
            ("pcrs_end", Box::new(|m| m["snapshots"][1]["pcrs_end"]["sha256"] = "00".repeat(32).into())),
            ("sha256", Box::new(|m| m["snapshots"][2]["sha256"] = "11".repeat(32).into())),
        ];
        if flavour == Trim {
            edits.push(("next_sha1", Box::new(|m| m["snapshots"][1]["next_sha1"] = "22".repeat(20).into())));
        }
        for (what, edit) in edits {
            let mut m: serde_json::Value = serde_json::from_str(&good).unwrap();
            edit(&mut m);
            std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
            let o = verify_dir(&out, &ak, &nonce, Mode::FullHistory);
            assert!(!o.verdict.is_verified(), "{flavour:?}: a forged {what} passed");
        }
        // A record swapped inside a stored segment, with the manifest's file digest resealed.
        std::fs::write(&path, &good).unwrap();
        let m = Manifest::from_json(good.as_bytes()).unwrap();
        let f = out.join("snapshots").join(&m.snapshots[1].0);
        let mut recs = imasnap_test_support::records::parse(&std::fs::read(&f).unwrap());
        recs[1] = imasnap_test_support::records::file_record(b"/usr/bin/innocent", &[7; 32], 10);
        let bytes = imasnap_test_support::records::encode(&recs);
        std::fs::write(&f, &bytes).unwrap();
        let mut mj: serde_json::Value = serde_json::from_str(&good).unwrap();
        mj["snapshots"][1]["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)).into();
        std::fs::write(&path, serde_json::to_vec_pretty(&mj).unwrap()).unwrap();
        let o = verify_dir(&out, &ak, &nonce, Mode::FullHistory);
        assert!(!o.verdict.is_verified(), "{flavour:?}: a swapped record passed");
    }
}
