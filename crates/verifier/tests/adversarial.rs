//! The review concern (the RFC review's main objection): redundant data is attack surface.
//! Each test starts from honest evidence (kernel model + SoftTpm), applies one forgery,
//! and asserts the specific reason it is rejected for. Most forgers here are *consistent*:
//! after editing files they rewrite every manifest claim to match (`reseal`), so only the
//! hash chain, the markers and the quote stand in their way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;
use common::*;
use imasnap_log::marker::Marker;
use imasnap_log::{HashAlgo, PcrState, PcrValue, ReplayOptions, Replayer};
use imasnap_tpm::PcrSelection;
use imasnap_verifier::{Failure, Mode, Options, Segment, State};

use HashAlgo::{Sha1, Sha256};

/// The shared honest host (see `Host::busy`).
fn host(seed: u64) -> Host {
    Host::busy(seed)
}

const M1: u64 = 41;
const M2: u64 = 72;
const M2_IN_S2: usize = 31;
const M3: u64 = 93;
const M4: u64 = 119;

fn honest(seed: u64) -> (Host, Bundle) {
    let mut h = host(seed);
    let b = h.bundle(&nonce(seed));
    let o = b.verify(Mode::FullHistory, None);
    assert!(o.verdict.is_verified(), "honest evidence rejected: {:?}", o.verdict);
    assert_eq!(o.state.as_ref().unwrap().checkpoint, 130);
    (h, b)
}

fn full(b: &Bundle) -> Failure {
    // Records hashed in place on one thread (each range of `verify --jobs`) give the same
    // verdict and report as batches of records hashed in parallel, wherever a batch ends.
    for batch in [1, 7, 4096] {
        let o = |parallel| b.verify_with(&Options { batch, parallel, ..Options::new(Mode::FullHistory) }, None);
        let (par, one) = (o(true), o(false));
        assert_eq!(format!("{:?}", one.verdict), format!("{:?}", par.verdict), "batch {batch}");
        assert_eq!(format!("{:?}", one.report), format!("{:?}", par.report), "batch {batch}");
    }
    failure(&b.verify(Mode::FullHistory, None))
}

/// Replays the bundle's records up to global index `n` (what a forger can compute).
fn replay_upto(b: &Bundle, n: usize) -> PcrState {
    let mut all = Vec::new();
    for i in 0..b.snaps.len() {
        all.extend(b.snap_records(i));
    }
    all.extend(records(&b.live));
    let mut r = Replayer::new(ReplayOptions::new(&BANKS));
    r.push_batch(&all[..n]).unwrap();
    r.finish().state().clone()
}

fn edit_marker(b: &mut Bundle, snap: usize, pos: usize, f: impl FnOnce(&mut Marker)) {
    b.edit_snap(snap, |recs| {
        let mut m = marker_of(&recs[pos]).expect("a marker");
        f(&mut m);
        recs[pos] = marker_record(&m);
    });
}

fn other_value(a: HashAlgo) -> PcrValue {
    a.hash(&[b"forged"])
}

// ---- markers ------------------------------------------------------------------------------

#[test]
fn marker_pcr_value_altered_in_one_bank() {
    let (_, mut b) = honest(100);
    edit_marker(&mut b, 1, M2_IN_S2, |m| m.banks[1].1[10] = other_value(Sha256));
    b.reseal();
    assert_eq!(full(&b), Failure::MarkerPcrMismatch { index: M2, bank: Sha256, pcr: 10 });
}

#[test]
fn marker_platform_pcr_altered() {
    let (_, mut b) = honest(101);
    edit_marker(&mut b, 1, M2_IN_S2, |m| m.banks[0].1[4] = other_value(Sha1));
    b.reseal();
    assert_eq!(full(&b), Failure::MarkerPlatformMismatch { index: M2, bank: Sha1, pcr: 4 });
}

#[test]
fn marker_attempt_count_reused() {
    let (_, mut b) = honest(102);
    edit_marker(&mut b, 1, M2_IN_S2, |m| m.attempt = 1);
    b.reseal();
    assert_eq!(full(&b), Failure::AttemptNotIncreasing { index: M2, attempt: 1, previous: 1 });
}

#[test]
fn marker_attempt_count_decreasing() {
    let (_, mut b) = honest(103);
    // M3 heads S3: the end marker of S2, with a smaller count than the aborted M2.
    edit_marker(&mut b, 2, 0, |m| m.attempt = 1);
    b.reseal();
    assert_eq!(full(&b), Failure::AttemptNotIncreasing { index: M3, attempt: 1, previous: 2 });
}

#[test]
fn marker_moved() {
    let (_, mut b) = honest(104);
    b.edit_snap(1, |recs| {
        let m = recs.remove(M2_IN_S2);
        recs.insert(20, m);
    });
    b.reseal();
    assert_eq!(full(&b), Failure::MarkerPcrMismatch { index: M1 + 20, bank: Sha1, pcr: 10 });
}

#[test]
fn fake_marker_not_in_the_tpm_chain() {
    let (_, mut b) = honest(105);
    // A perfect-looking marker: next attempt, platform values copied, PCR 10 = the replay.
    let at = (M4 + 6) as usize;
    let state = replay_upto(&b, at);
    let mut m = marker_of(&records(&b.live)[0]).unwrap();
    m.attempt = 5;
    for (bank, vals) in &mut m.banks {
        vals[10] = *state.get(*bank, 10).unwrap();
    }
    b.edit_live(|recs| recs.insert(6, marker_record(&m)));
    let f = full(&b);
    assert!(matches!(f, Failure::QuoteNotReached { records: 131, pcr: 10, .. }), "{f:?}");
}

#[test]
fn marker_buf_altered_with_d_ng_kept() {
    let (_, mut b) = honest(106);
    b.edit_snap(1, |recs| {
        let old = &recs[M2_IN_S2];
        let f = old.fields(imasnap_log::Endian::Little).unwrap();
        let mut m = Marker::parse(f[2]).unwrap();
        m.banks[0].1[15] = other_value(Sha1);
        let buf = m.encode();
        let rec = imasnap_log::entry::build(
            &old.template,
            &[f[0], f[1], &buf],
            Sha1,
            PCR,
            false,
            imasnap_log::Endian::Little,
        );
        recs[M2_IN_S2] = rec;
    });
    b.reseal();
    assert_eq!(full(&b), Failure::MarkerBufDigestMismatch { index: M2 });
}

#[test]
fn malformed_marker_buf() {
    let (_, mut b) = honest(107);
    b.edit_snap(1, |recs| {
        let good = String::from_utf8(marker_of(&recs[M2_IN_S2]).unwrap().encode()).unwrap();
        let buf = good.replace("Count=2;", "Count=02;").into_bytes();
        let d = Sha256.hash(&[&buf]);
        recs[M2_IN_S2] = imasnap_log::entry::build(
            &imasnap_log::entry::builtin("ima-buf"),
            &[
                &imasnap_log::entry::d_ng("sha256", d.as_bytes()),
                &imasnap_log::entry::n_ng(b"snapshot_aggregate"),
                &buf,
            ],
            Sha1,
            PCR,
            false,
            imasnap_log::Endian::Little,
        );
    });
    b.reseal();
    assert!(matches!(full(&b), Failure::MalformedMarker { index: M2, .. }));
}

#[test]
fn marker_lacking_a_bank() {
    let (_, mut b) = honest(108);
    edit_marker(&mut b, 1, M2_IN_S2, |m| {
        m.banks.pop();
    });
    b.reseal();
    assert!(matches!(full(&b), Failure::MarkerBankMismatch { index: M2, .. }));
}

#[test]
fn bundle_hides_a_bank() {
    // The host claims a SHA1-only TPM; the markers (kernel-written) list SHA256 as well.
    let (_, mut b) = honest(109);
    b.banks = vec![Sha1];
    assert!(matches!(full(&b), Failure::MarkerBankMismatch { index: M1, .. }));
}

#[test]
fn forged_kexec_boot_aggregate_to_reset_the_attempt_counter() {
    let (_, mut b) = honest(119);
    // A boot_aggregate matching the quoted PCR 0-9 (anyone can compute it) makes a reused
    // attempt count look like a new kernel's; it is not in the TPM chain.
    let agg = b.snap_records(0)[0].clone();
    b.edit_snap(1, |recs| recs.insert(M2_IN_S2, agg));
    edit_marker(&mut b, 1, M2_IN_S2 + 1, |m| m.attempt = 1);
    b.reseal();
    assert_eq!(full(&b), Failure::MarkerPcrMismatch { index: M2 + 1, bank: Sha1, pcr: 10 });
}

// ---- records inside snapshots -------------------------------------------------------------

#[test]
fn record_modified_inside_a_snapshot() {
    let (_, mut b) = honest(110);
    b.edit_snap(0, |recs| recs[10] = fake_file_record("/usr/bin/innocent"));
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 1, index: M1, bank: Sha1, pcr: 10 });
}

#[test]
fn record_inserted_inside_a_snapshot() {
    let (_, mut b) = honest(111);
    b.edit_snap(0, |recs| recs.insert(20, fake_file_record("/usr/bin/innocent")));
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 1, index: M1 + 1, bank: Sha1, pcr: 10 });
}

#[test]
fn record_deleted_inside_a_snapshot() {
    let (_, mut b) = honest(112);
    b.edit_snap(0, |recs| {
        recs.remove(20);
    });
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 1, index: M1 - 1, bank: Sha1, pcr: 10 });
}

#[test]
fn records_reordered_inside_a_snapshot() {
    let (_, mut b) = honest(113);
    b.edit_snap(2, |recs| recs.swap(10, 11));
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 3, index: M4, bank: Sha1, pcr: 10 });
}

#[test]
fn template_digest_mismatch() {
    let (_, mut b) = honest(114);
    b.edit_snap(0, |recs| {
        let digest = recs[5].digest.clone();
        recs[5] = fake_file_record("/usr/bin/innocent");
        recs[5].digest = digest; // the digest the TPM saw, on different data
    });
    b.reseal();
    assert_eq!(full(&b), Failure::TemplateDigestMismatch { index: 5 });
}

#[test]
fn boot_aggregate_forged() {
    let (_, mut b) = honest(115);
    b.edit_snap(0, |recs| {
        let agg = Sha256.hash(&[b"a platform that booted something else"]);
        recs[0] = imasnap_log::entry::build(
            &imasnap_log::entry::builtin("ima-ng"),
            &[&imasnap_log::entry::d_ng("sha256", agg.as_bytes()), &imasnap_log::entry::n_ng(b"boot_aggregate")],
            Sha1,
            PCR,
            false,
            imasnap_log::Endian::Little,
        );
    });
    b.reseal();
    b.boot.as_mut().unwrap().boot_aggregate_sha1 = b.snap_records(0)[0].digest.clone().try_into().unwrap();
    assert!(matches!(full(&b), Failure::BootAggregateMismatch { index: 0, .. }));
}

#[test]
fn history_without_its_boot_aggregate() {
    let (_, mut b) = honest(116);
    b.edit_snap(0, |recs| {
        recs.remove(0);
    });
    b.reseal();
    b.boot = None;
    assert_eq!(full(&b), Failure::FirstRecordNotBootAggregate { index: 0 });
}

#[test]
fn record_in_an_unquoted_pcr() {
    let (_, mut b) = honest(117);
    b.edit_live(|recs| {
        let mut r = fake_file_record("/usr/bin/elsewhere");
        r.pcr = 11;
        recs.insert(3, r);
    });
    assert_eq!(full(&b), Failure::UnquotedPcr { index: M4 + 3, pcr: 11 });
}

#[test]
fn garbage_instead_of_records() {
    let (_, mut b) = honest(118);
    b.live = vec![0x0a, 0, 0, 0, 1, 2, 3];
    assert!(matches!(full(&b), Failure::Malformed { segment: Segment::Live, index: M4, .. }));
}

// ---- snapshot files -----------------------------------------------------------------------

#[test]
fn snapshot_file_deleted() {
    let (_, mut b) = honest(120);
    b.snaps[1].bytes = None;
    assert_eq!(full(&b), Failure::SnapshotMissing { seq: 2 });
}

#[test]
fn snapshot_deleted_and_manifest_rewritten() {
    let (_, mut b) = honest(121);
    b.snaps.remove(1);
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 1, index: M1, bank: Sha1, pcr: 10 });
}

#[test]
fn snapshot_duplicated() {
    let (_, mut b) = honest(122);
    let dup = b.snaps[1].clone();
    b.snaps.insert(2, dup);
    b.reseal();
    // The copy's head is M1 again, where M3 belongs.
    assert_eq!(full(&b), Failure::AttemptNotIncreasing { index: M3, attempt: 1, previous: 2 });
}

#[test]
fn snapshots_swapped() {
    let (_, mut b) = honest(123);
    b.snaps.swap(1, 2);
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 1, index: M1, bank: Sha1, pcr: 10 });
}

#[test]
fn snapshot_truncated_mid_record() {
    let (_, mut b) = honest(124);
    let bytes = b.snaps[1].bytes.as_mut().unwrap();
    bytes.truncate(bytes.len() - 7);
    match full(&b) {
        Failure::Malformed { segment: Segment::Snapshot(2), index: 92, reason, .. } => {
            assert!(matches!(reason, imasnap_log::Reason::Truncated { .. }), "{reason:?}")
        }
        f => panic!("{f:?}"),
    }
}

#[test]
fn snapshot_truncated_at_a_record_boundary() {
    let (_, mut b) = honest(125);
    b.edit_snap(2, |recs| recs.truncate(20));
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 3, index: M3 + 20, bank: Sha1, pcr: 10 });
}

#[test]
fn snapshot_from_another_boot_spliced_in() {
    let (_, mut b) = honest(126);
    // Another boot of the machine after a firmware update: other PCR 0-9.
    let (_, other) = honest(127);
    b.snaps[1] = other.snaps[1].clone();
    b.reseal();
    assert_eq!(full(&b), Failure::MarkerPlatformMismatch { index: M1, bank: Sha1, pcr: 0 });
}

#[test]
fn snapshot_from_another_boot_same_platform_spliced_in() {
    let (_, mut b) = honest(128);
    let mut other = host_with_platform(129, 128);
    let ob = other.bundle(&nonce(1));
    b.snaps[1] = ob.snaps[1].clone();
    b.reseal();
    assert_eq!(full(&b), Failure::SnapshotEndMismatch { seq: 1, index: M1, bank: Sha1, pcr: 10 });
}

fn host_with_platform(seed: u64, platform: u64) -> Host {
    let mut h = Host::boot_with(seed, platform);
    h.measure(40);
    h.snapshot();
    h.measure(30);
    h.aborted_snapshot();
    h.measure(20);
    h.snapshot();
    h
}

#[test]
fn old_snapshot_replayed_in_place_of_a_new_one() {
    let (mut h, b) = honest(130);
    let state: State = b.verify(Mode::Incremental, None).state.unwrap();
    assert_eq!(state.checkpoint, 130);
    h.measure(10);
    h.snapshot(); // S4 = [119, 140)
    h.measure(5);
    let mut b2 = h.bundle(&nonce(131));
    assert!(b2.verify(Mode::Incremental, Some(&state)).verdict.is_verified());
    // The agent serves S3 again as S4.
    b2.snaps[3].bytes = b2.snaps[2].bytes.clone();
    b2.reseal();
    assert_eq!(
        failure(&b2.verify(Mode::Incremental, Some(&state))),
        Failure::SnapshotEndMismatch { seq: 4, index: M4 + 26, bank: Sha1, pcr: 10 }
    );
    // Full history sees the stale marker at once.
    assert_eq!(full(&b2), Failure::AttemptNotIncreasing { index: M4, attempt: 3, previous: 3 });
}

#[test]
fn log_rolled_back_behind_the_checkpoint() {
    let (mut h, b) = honest(132);
    let state = b.verify(Mode::Incremental, None).state.unwrap();
    let mut b2 = h.bundle(&nonce(133));
    b2.edit_live(|recs| recs.truncate(6));
    assert_eq!(
        failure(&b2.verify(Mode::Incremental, Some(&state))),
        Failure::LogRolledBack { checkpoint: 130, end: M4 + 6 }
    );
}

// ---- manifest claims ----------------------------------------------------------------------

#[test]
fn manifest_lies_about_a_range() {
    let (_, mut b) = honest(140);
    b.snaps[1].claim.first_index += 5;
    assert_eq!(full(&b), Failure::ManifestNotContiguous { seq: 2, claimed: M1 + 5, expected: M1 });
}

#[test]
fn manifest_lies_about_counts_consistently() {
    let (_, mut b) = honest(141);
    b.snaps[0].claim.count -= 1;
    b.snaps[1].claim.first_index -= 1;
    b.snaps[1].claim.count += 1;
    assert_eq!(full(&b), Failure::ManifestCountMismatch { seq: 1, claimed: 40, actual: 41 });
}

#[test]
fn manifest_lies_about_a_file_digest() {
    let (_, mut b) = honest(142);
    b.snaps[1].claim.sha256 = Some([7; 32]);
    assert!(matches!(full(&b), Failure::ManifestDigestMismatch { seq: 2, .. }));
}

#[test]
fn manifest_names_another_end_marker() {
    let (_, mut b) = honest(143);
    b.snaps[0].claim.end_marker.as_mut().unwrap().attempt = 2;
    assert!(matches!(full(&b), Failure::ManifestEndMarkerMismatch { seq: 1, index: M1, .. }));
}

#[test]
fn manifest_lies_about_pcrs_end() {
    let (_, mut b) = honest(144);
    b.snaps[2].claim.pcrs_end[1] = other_value(Sha256);
    assert_eq!(full(&b), Failure::ManifestPcrsEndMismatch { seq: 3, bank: Sha256 });
}

#[test]
fn manifest_seq_gap() {
    let (_, mut b) = honest(145);
    b.snaps[2].claim.seq = 4;
    assert_eq!(full(&b), Failure::ManifestSeqGap { position: 2, expected: 3, found: 4 });
}

#[test]
fn bundle_lies_about_live_first_index() {
    let (_, mut b) = honest(146);
    b.live_first_index = 100;
    assert_eq!(full(&b), Failure::LiveFirstIndexMismatch { claimed: 100, expected: M4 });
}

/// Found by the evidence_body fuzz target: a manifest with a seq gap verified in
/// latest-segment mode, and the incremental round after it rejected the same evidence.
#[test]
fn latest_segment_checks_the_manifest_ranges() {
    let (_, mut b) = honest(170);
    b.snaps[1].claim.seq = 7;
    let o = b.verify(Mode::LatestSegment, None);
    assert_eq!(failure(&o), Failure::ManifestSeqGap { position: 1, expected: 2, found: 7 });
    let (_, mut b) = honest(171);
    b.live_first_index += 1;
    assert!(matches!(failure(&b.verify(Mode::LatestSegment, None)), Failure::LiveFirstIndexMismatch { .. }));
}

#[test]
fn manifest_lies_about_the_boot() {
    let (_, mut b) = honest(147);
    b.boot.as_mut().unwrap().reset_count = 5;
    assert!(matches!(full(&b), Failure::ManifestBootMismatch { .. }));
}

#[test]
fn live_list_not_beginning_with_the_end_marker() {
    let (_, mut b) = honest(148);
    b.edit_live(|recs| {
        recs.remove(0);
    });
    assert_eq!(full(&b), Failure::LiveStartNotMarker { index: M4 });
    // latest-segment mode has no other start
    assert_eq!(failure(&b.verify(Mode::LatestSegment, None)), Failure::LiveStartNotMarker { index: M4 });
}

#[test]
fn end_marker_missing_from_a_snapshot_head() {
    let (_, mut b) = honest(149);
    b.edit_snap(2, |recs| {
        recs.remove(0);
    });
    b.reseal();
    assert_eq!(full(&b), Failure::MissingEndMarker { seq: 2, index: M3 });
}

// ---- the quote ----------------------------------------------------------------------------

#[test]
fn quote_for_another_nonce() {
    let (_, mut b) = honest(150);
    b.nonce = nonce(9999); // our challenge; the quote answers another (replayed quote)
    assert!(matches!(full(&b), Failure::QuoteNonceMismatch { .. }));
}

#[test]
fn quote_with_a_bad_signature() {
    let (_, mut b) = honest(151);
    let n = b.quote.signature.len();
    b.quote.signature[n - 1] ^= 1;
    assert!(matches!(full(&b), Failure::QuoteBadSignature { .. }));
}

#[test]
fn quote_with_altered_attest() {
    let (_, mut b) = honest(152);
    let n = b.quote.attest.len();
    b.quote.attest[n - 1] ^= 1; // pcrDigest
    assert!(matches!(full(&b), Failure::QuoteBadSignature { .. }));
}

#[test]
fn quote_by_a_different_ak() {
    let (_, mut b) = honest(153);
    let mut other = host(154);
    b.quote = other.quote(&b.nonce);
    // shipping the other machine's AK is spotted before any cryptography
    b.claimed_ak = Some(other.ak());
    assert!(matches!(full(&b), Failure::AkMismatch { .. }));
    // without the claim, the signature does not verify under the trusted AK
    b.claimed_ak = None;
    assert!(matches!(full(&b), Failure::QuoteBadSignature { .. }));
}

#[test]
fn quote_selection_without_the_measurement_pcr() {
    let (mut h, mut b) = honest(155);
    let sel = PcrSelection::uniform(&BANKS, &(0..10).collect::<Vec<_>>()).unwrap();
    b.quote = imasnap_tpm::Tpm::quote(h.k().tpm_mut(), &b.nonce, &sel).unwrap();
    assert_eq!(full(&b), Failure::QuoteSelectionMissing { bank: Sha1, pcr: 10 });
}

#[test]
fn quote_selection_without_a_bank() {
    let (mut h, mut b) = honest(156);
    let sel = PcrSelection::uniform(&[Sha1], &(0..=10).collect::<Vec<_>>()).unwrap();
    b.quote = imasnap_tpm::Tpm::quote(h.k().tpm_mut(), &b.nonce, &sel).unwrap();
    assert_eq!(full(&b), Failure::QuoteSelectionMissing { bank: Sha256, pcr: 0 });
}

#[test]
fn quote_pcr_values_lie() {
    let (_, mut b) = honest(157);
    let fake = b.quote.pcr_values.iter_mut().find(|(bank, p, _)| *bank == Sha1 && *p == 10).unwrap();
    fake.2 = other_value(Sha1);
    assert!(matches!(full(&b), Failure::QuotePcrDigestMismatch { .. }));
}

#[test]
fn required_bank_not_replayed() {
    let (_, mut b) = honest(158);
    b.banks = vec![Sha1];
    let opts = Options { required_banks: vec![Sha256], ..Options::new(Mode::FullHistory) };
    assert!(matches!(failure(&b.verify_with(&opts, None)), Failure::BadEvidence { .. }));
}

// ---- robustness ---------------------------------------------------------------------------

/// Every single-byte change anywhere in the evidence is rejected, in every mode, and
/// nothing panics. (Markers make some bytes redundant; none may be ignorable.)
#[test]
fn byte_flips_everywhere_never_pass_or_panic() {
    let (_, b) = honest(160);
    let state = b.verify(Mode::Incremental, None).state.unwrap();
    let mut rng = imasnap_log::synth::Rng::new(160);
    let mut tried = 0;
    for _ in 0..300 {
        let mut m = b.clone();
        let target = rng.below(6);
        let buf: &mut Vec<u8> = match target {
            0..=2 => m.snaps[target as usize].bytes.as_mut().unwrap(),
            3 => &mut m.live,
            4 => &mut m.quote.attest,
            _ => &mut m.quote.signature,
        };
        let pos = rng.below(buf.len() as u64) as usize;
        let flip = 1 + rng.below(255) as u8;
        buf[pos] ^= flip;
        for mode in [Mode::FullHistory, Mode::LatestSegment] {
            let o = m.verify(mode, None);
            // Latest-segment mode ignores snapshot files by design.
            if mode == Mode::LatestSegment && target <= 2 {
                continue;
            }
            assert!(!o.verdict.is_verified(), "flip at {target}/{pos} passed in {mode:?}");
        }
        // Incremental never re-reads what it proved before (old snapshot contents, live
        // records before the checkpoint): only a flip in the quote must fail there.
        let inc = m.verify(Mode::Incremental, Some(&state));
        if target >= 4 {
            assert!(!inc.verdict.is_verified(), "quote flip at {target}/{pos} passed incrementally");
        }
        tried += 1;
    }
    assert_eq!(tried, 300);
}

/// Truncation at every length of a snapshot and of the live list: rejected, no panic.
#[test]
fn truncations_never_pass_or_panic() {
    let (_, b) = honest(161);
    let len = b.snaps[2].bytes.as_ref().unwrap().len();
    for cut in (0..len).step_by(13) {
        let mut m = b.clone();
        m.snaps[2].bytes.as_mut().unwrap().truncate(cut);
        assert!(!m.verify(Mode::FullHistory, None).verdict.is_verified(), "cut {cut}");
    }
    for cut in (0..b.live.len()).step_by(17) {
        let mut m = b.clone();
        m.live.truncate(cut);
        assert!(!m.verify(Mode::FullHistory, None).verdict.is_verified(), "live cut {cut}");
    }
}

/// A rejected verification never hands back a new state.
#[test]
fn rejection_keeps_the_prior_state() {
    let (mut h, b) = honest(162);
    let state = b.verify(Mode::Incremental, None).state.unwrap();
    h.measure(3);
    let mut b2 = h.bundle(&nonce(163));
    b2.nonce = nonce(0);
    let o = b2.verify(Mode::Incremental, Some(&state));
    assert!(!o.verdict.is_verified());
    assert_eq!(o.state.as_ref(), Some(&state));
}

/// Manifest and index claims set to random and extreme values: never a panic, never a pass
/// in any mode: latest-segment mode skips the snapshots' records but still checks the
/// manifest's ranges, which the next incremental round relies on.
#[test]
fn random_claims_never_pass_or_panic() {
    let (_, b) = honest(164);
    let state = b.verify(Mode::Incremental, None).state.unwrap();
    let mut rng = imasnap_log::synth::Rng::new(164);
    let pick = |rng: &mut imasnap_log::synth::Rng| match rng.below(5) {
        0 => 0,
        1 => u64::MAX,
        2 => u64::MAX / 2,
        3 => (1 << 48) + 1,
        _ => rng.below(200),
    };
    for _ in 0..200 {
        let mut m = b.clone();
        let i = rng.below(3) as usize;
        let v = pick(&mut rng);
        match rng.below(4) {
            0 => m.snaps[i].claim.first_index = v,
            1 => m.snaps[i].claim.count = v,
            2 => m.snaps[i].claim.seq = v,
            _ => m.live_first_index = v,
        }
        let unchanged =
            m.snaps.iter().zip(&b.snaps).all(|(x, y)| x.claim == y.claim) && m.live_first_index == b.live_first_index;
        for (mode, prior) in [(Mode::FullHistory, None), (Mode::Incremental, Some(&state)), (Mode::LatestSegment, None)]
        {
            let o = m.verify(mode, prior);
            if !unchanged {
                assert!(!o.verdict.is_verified(), "{mode:?} passed with {:?}", m.snaps[i].claim);
            }
        }
    }
}
