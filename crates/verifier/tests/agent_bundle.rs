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
