//! Quote-anchored checkpoints: the honest host verifies from its newest checkpoint and in
//! parallel ranges, and every forgery class is rejected with its own reason, in both the
//! latest-segment and the segmented full-history path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::*;
use imasnap_log::HashAlgo;
use imasnap_verifier::{Failure, FailureKind, Mode, RangeRef, Verdict};

/// The honest bundle: 5 snapshots, each with its checkpoint, and a live list.
fn honest() -> (Host, Bundle) {
    let mut h = Host::busy_with_checkpoints(7);
    let b = h.bundle(&nonce(1));
    (h, b)
}

fn latest_failure(b: &Bundle) -> Failure {
    failure(&b.verify(Mode::LatestSegment, None))
}

fn segmented_failure(b: &Bundle) -> Failure {
    failure(&b.verify_segmented(2))
}

/// Rejected in both paths with `kind`.
fn rejected_both(b: &Bundle, kind: FailureKind) {
    let l = latest_failure(b);
    assert_eq!(l.kind(), kind, "latest: {l}");
    let s = segmented_failure(b);
    assert_eq!(s.kind(), kind, "segmented: {s}");
}

#[test]
fn honest_host_verifies_latest_and_segmented() {
    let (_, b) = honest();
    let l = b.verify(Mode::LatestSegment, None);
    assert_eq!(l.verdict, Verdict::Verified { history_verified: false }, "{:?}", l.verdict);
    let used = l.report.checkpoint_used.unwrap();
    assert_eq!(used.seq, 5);
    assert!(l.report.records_replayed <= 12, "latest replays only what follows the checkpoint: {:?}", l.report);
    assert_eq!(l.report.checkpoints_checked, 1);

    let full = b.verify(Mode::FullHistory, None);
    assert!(full.verdict.is_verified());
    for jobs in [1, 2, 4] {
        let s = b.verify_segmented(jobs);
        assert_eq!(s.verdict, Verdict::Verified { history_verified: true }, "jobs {jobs}: {:?}", s.verdict);
        assert_eq!(s.report.ranges, 6);
        assert_eq!(s.report.checkpoints_checked, 5);
        // Every record replayed once, as in one sequential pass.
        assert_eq!(s.report.records_replayed, full.report.records_replayed, "jobs {jobs}");
        assert_eq!(s.state.as_ref().unwrap().checkpoint, full.state.as_ref().unwrap().checkpoint);
        assert_eq!(s.state.as_ref().unwrap().pcrs, full.state.as_ref().unwrap().pcrs);
        assert_eq!(s.state.as_ref().unwrap().boot, full.state.as_ref().unwrap().boot);
    }
}

#[test]
fn a_latest_verdict_seeds_incremental_rounds() {
    let (mut h, b) = honest();
    let st = b.verify(Mode::LatestSegment, None).state.unwrap();
    h.measure(5);
    let b2 = h.bundle(&nonce(2));
    let o = b2.verify(Mode::Incremental, Some(&st));
    assert_eq!(o.verdict, Verdict::Verified { history_verified: false });
    assert_eq!(o.report.records_replayed, 5);
}

// ---- the forgery classes --------------------------------------------------------------

#[test]
fn f01_checkpoint_from_another_boot_with_its_own_chain() {
    // The same machine's previous boot: its qualifyingData names the old resetCount.
    let mut old = Host::busy_with_checkpoints(7);
    let stale = old.snaps[4].claim.checkpoint.clone().unwrap();
    old.reboot(7);
    let (_, mut b) = honest_after(old);
    *b.snaps[4].claim.checkpoint.as_mut().unwrap() = stale;
    rejected_both(&b, FailureKind::CheckpointChainMismatch);
}

/// The same machine rebuilt after a cold boot, with the checkpoints of a busy host.
fn honest_after(mut h: Host) -> (Host, Bundle) {
    h.busy_checkpointed_history();
    let b = h.bundle(&nonce(1));
    (h, b)
}

#[test]
fn f02_checkpoint_quoted_in_an_earlier_boot_for_this_one() {
    // A forger who held the AK in the previous boot precomputed this boot's chain value:
    // the signature and chain verify, the resetCount does not.
    let (mut h, _) = honest();
    let rc = h.reset_count();
    let ba = h.boot_aggregate();
    // The chain value of this boot's first checkpoint, quoted before the reboot.
    let qd_next_boot = imasnap_wire::qualifying_data(rc + 1, &ba, 1, None);
    let forged_quote = h.quote(&qd_next_boot);
    h.reboot(7);
    let (_, mut b) = honest_after(h);
    let ba_now: [u8; 20] = b.boot.as_ref().unwrap().boot_aggregate_sha1;
    assert_eq!(ba_now, ba, "same firmware and kernel: same boot_aggregate");
    b.snaps[0].claim.checkpoint.as_mut().unwrap().quote = forged_quote;
    let f = segmented_failure(&b);
    assert_eq!(f.kind(), FailureKind::CheckpointOtherBoot, "{f}");
}

#[test]
fn f03_checkpoint_from_another_ak() {
    let (_, mut b) = honest();
    let other = Host::busy_with_checkpoints(8);
    let foreign = other.snaps[4].claim.checkpoint.clone().unwrap();
    *b.snaps[4].claim.checkpoint.as_mut().unwrap() = foreign;
    rejected_both(&b, FailureKind::CheckpointAkMismatch);
}

#[test]
fn f04_another_tpms_quote_claiming_the_trusted_ak() {
    let (_, mut b) = honest();
    let other = Host::busy_with_checkpoints(8);
    let foreign = other.snaps[4].claim.checkpoint.clone().unwrap().quote;
    b.snaps[4].claim.checkpoint.as_mut().unwrap().quote = foreign;
    rejected_both(&b, FailureKind::CheckpointBadSignature);
}

#[test]
fn f05_checkpoint_replayed_at_another_index() {
    let (_, mut b) = honest();
    b.snaps[2].claim.checkpoint.as_mut().unwrap().index += 7;
    let f = segmented_failure(&b);
    assert_eq!(f.kind(), FailureKind::CheckpointNotReached, "{f}");
    // The newest one moved: the records after it do not reach the fresh quote.
    let (_, mut b) = honest();
    b.snaps[4].claim.checkpoint.as_mut().unwrap().index += 3;
    assert_eq!(latest_failure(&b).kind(), FailureKind::QuoteNotReached);
    assert_eq!(segmented_failure(&b).kind(), FailureKind::CheckpointNotReached);
}

#[test]
fn f06_index_claim_off_by_one() {
    for delta in [-1i64, 1] {
        let (_, mut b) = honest();
        let c = b.snaps[3].claim.checkpoint.as_mut().unwrap();
        c.index = (c.index as i64 + delta) as u64;
        let o = b.verify_segmented(2);
        match failure(&o) {
            Failure::CheckpointNotReached { seq: 4, .. } => {}
            Failure::CheckpointIndex { seq: 4, .. } => {}
            f => panic!("delta {delta}: {f}"),
        }
        assert!(o.report.failed_range.is_some());
    }
}

#[test]
fn f07_index_before_its_own_segment_ends() {
    let (_, mut b) = honest();
    let end = b.snaps[1].claim.end_index();
    b.snaps[1].claim.checkpoint.as_mut().unwrap().index = end - 1;
    let f = segmented_failure(&b);
    assert!(matches!(f, Failure::CheckpointIndex { seq: 2, .. }), "{f}");
}

#[test]
fn f08_altered_pcr_values() {
    let (_, mut b) = honest();
    let c = b.snaps[4].claim.checkpoint.as_mut().unwrap();
    let v = c.quote.pcr_values.iter_mut().find(|(bk, p, _)| *bk == HashAlgo::Sha256 && *p == PCR).unwrap();
    v.2 = HashAlgo::Sha256.hash(&[b"forged"]);
    rejected_both(&b, FailureKind::CheckpointPcrs);
}

#[test]
fn f09_altered_clock() {
    let (_, mut b) = honest();
    let c = b.snaps[4].claim.checkpoint.as_mut().unwrap();
    // TPMS_ATTEST: magic(4) type(2) signer name(2+n) extraData(2+n) then clockInfo.clock.
    let a = &mut c.quote.attest;
    let name_len = u16::from_be_bytes([a[6], a[7]]) as usize;
    let at = 8 + name_len;
    let xd_len = u16::from_be_bytes([a[at], a[at + 1]]) as usize;
    let clock_at = at + 2 + xd_len;
    a[clock_at + 7] ^= 0x01;
    rejected_both(&b, FailureKind::CheckpointBadSignature);
}

#[test]
fn f10_dropped_checkpoint() {
    let (_, mut b) = honest();
    b.snaps[2].claim.checkpoint = None;
    let f = segmented_failure(&b);
    assert!(matches!(f, Failure::CheckpointChainMismatch { seq: 4, .. }), "{f}");
    // The newest one's predecessor dropped: its chain names a quote that is not there.
    let (_, mut b) = honest();
    b.snaps[3].claim.checkpoint = None;
    assert_eq!(latest_failure(&b).kind(), FailureKind::CheckpointChainMismatch);
}

#[test]
fn f11_reordered_checkpoints() {
    let (_, mut b) = honest();
    let c2 = b.snaps[1].claim.checkpoint.take();
    let c3 = b.snaps[2].claim.checkpoint.take();
    b.snaps[1].claim.checkpoint = c3;
    b.snaps[2].claim.checkpoint = c2;
    let f = segmented_failure(&b);
    assert!(matches!(f, Failure::CheckpointChainMismatch { .. } | Failure::CheckpointIndex { .. }), "{f}");
    // Same index, so only the chain can tell: swap the quotes alone.
    let (_, mut b) = honest();
    let q2 = b.snaps[1].claim.checkpoint.as_ref().unwrap().quote.clone();
    let q3 = b.snaps[2].claim.checkpoint.as_ref().unwrap().quote.clone();
    b.snaps[1].claim.checkpoint.as_mut().unwrap().quote = q3;
    b.snaps[2].claim.checkpoint.as_mut().unwrap().quote = q2;
    assert_eq!(segmented_failure(&b).kind(), FailureKind::CheckpointChainMismatch);
}

#[test]
fn f12_duplicated_checkpoint() {
    let (_, mut b) = honest();
    let c = b.snaps[2].claim.checkpoint.clone();
    b.snaps[3].claim.checkpoint = c;
    let f = segmented_failure(&b);
    assert!(
        matches!(f, Failure::CheckpointChainMismatch { seq: 4, .. } | Failure::CheckpointIndex { seq: 4, .. }),
        "{f}"
    );
    // Duplicated as the newest: the same quote cannot be seq 5's.
    let (_, mut b) = honest();
    let c = b.snaps[3].claim.checkpoint.clone();
    b.snaps[4].claim.checkpoint = c;
    let f = latest_failure(&b);
    assert!(matches!(f.kind(), FailureKind::CheckpointChainMismatch | FailureKind::CheckpointIndex), "{f}");
}

#[test]
fn f13_checkpoint_later_than_the_fresh_quote() {
    let mut h = Host::busy_with_checkpoints(7);
    let b0 = h.bundle(&nonce(1));
    // The same chain value and PCRs, quoted again after the fresh quote.
    let mut b = b0.clone();
    let c = b0.snaps[4].claim.checkpoint.clone().unwrap();
    // qd of the newest checkpoint, recomputed as the verifier does.
    let prev = b0.snaps[3].claim.checkpoint.as_ref().unwrap().quote.attest.clone();
    let qd = imasnap_wire::qualifying_data(h.reset_count(), &h.boot_aggregate(), 5, Some(&prev));
    h.k().tpm_mut().advance_clock(60_000);
    let mut later = h.checkpoint_with(&qd);
    later.index = c.index;
    // Honest PCRs for the later state; its index claim is the old one.
    b.snaps[4].claim.checkpoint = Some(later);
    let f = latest_failure(&b);
    assert_eq!(f.kind(), FailureKind::CheckpointClock, "{f}");
}

#[test]
fn f14_segment_edited_between_two_valid_checkpoints() {
    let (_, mut b) = honest();
    // A careful forger: a record of snapshot 3 replaced, digests and claims redone.
    b.edit_snap(2, |recs| {
        recs[5] = fake_file_record("/usr/bin/backdoor");
    });
    let sha = sha256(b.snaps[2].bytes.as_ref().unwrap());
    b.snaps[2].claim.sha256 = Some(sha);
    let o = b.verify_segmented(2);
    let f = failure(&o);
    // The first check the edit meets: snapshot 3's end marker, inside the same range.
    assert!(
        matches!(f, Failure::CheckpointNotReached { seq: 3, .. } | Failure::SnapshotEndMismatch { seq: 3, .. }),
        "{f}"
    );
    let r = o.report.failed_range.unwrap();
    let from = b.snaps[1].claim.checkpoint.as_ref().unwrap().index;
    let to = b.snaps[2].claim.checkpoint.as_ref().unwrap().index;
    assert_eq!(r, RangeRef { from, to: Some(to) });
    // The latest segment lies after it: still verified, history not claimed.
    assert!(b.verify(Mode::LatestSegment, None).verdict.is_verified());
}

#[test]
fn f15_qualifying_data_from_another_chain() {
    let (mut h, mut b) = honest();
    // Same TPM, same boot, same PCRs: but quoted for a chain that starts over (prev none).
    let qd = imasnap_wire::qualifying_data(h.reset_count(), &h.boot_aggregate(), 5, None);
    let mut c = h.checkpoint_with(&qd);
    c.index = b.snaps[4].claim.checkpoint.as_ref().unwrap().index;
    b.snaps[4].claim.checkpoint = Some(c);
    rejected_both(&b, FailureKind::CheckpointChainMismatch);
}

#[test]
fn f16_an_attestation_quote_reused_as_a_checkpoint() {
    let (_, mut b) = honest();
    let q = b.quote.clone();
    b.snaps[4].claim.checkpoint.as_mut().unwrap().quote = q;
    rejected_both(&b, FailureKind::CheckpointChainMismatch);
}

#[test]
fn f17_checkpoint_without_the_measurement_pcr() {
    let (mut h, mut b) = honest();
    let prev = b.snaps[3].claim.checkpoint.as_ref().unwrap().quote.attest.clone();
    let qd = imasnap_wire::qualifying_data(h.reset_count(), &h.boot_aggregate(), 5, Some(&prev));
    let sel = imasnap_tpm::PcrSelection::uniform(&BANKS, &(0..10).collect::<Vec<u32>>()).unwrap();
    let q = imasnap_tpm::Tpm::quote(h.k().tpm_mut(), &qd, &sel).unwrap();
    b.snaps[4].claim.checkpoint.as_mut().unwrap().quote = q;
    rejected_both(&b, FailureKind::CheckpointPcrs);
}

#[test]
fn f18_truncated_or_garbled_quote_never_panics() {
    let (_, b0) = honest();
    let attest_len = b0.snaps[4].claim.checkpoint.as_ref().unwrap().quote.attest.len();
    for cut in [0, 1, 10, attest_len / 2, attest_len - 1] {
        let mut b = b0.clone();
        b.cp_attest_mut(4).truncate(cut);
        assert_eq!(latest_failure(&b).kind(), FailureKind::CheckpointBadSignature, "cut {cut}");
    }
    for i in 0..attest_len {
        let mut b = b0.clone();
        b.cp_attest_mut(2)[i] ^= 0x40;
        let f = segmented_failure(&b);
        assert!(f.kind().as_str().starts_with("checkpoint_"), "byte {i}: {f}");
    }
    let sig_len = b0.snaps[4].claim.checkpoint.as_ref().unwrap().quote.signature.len();
    for i in (0..sig_len).step_by(3) {
        let mut b = b0.clone();
        b.snaps[4].claim.checkpoint.as_mut().unwrap().quote.signature[i] ^= 0x01;
        assert!(!b.verify(Mode::LatestSegment, None).verdict.is_verified(), "sig byte {i}");
    }
}

#[test]
fn f19_forged_marker_next_to_valid_checkpoints() {
    // RFC markers and checkpoints are both checked: a marker whose PCR values disagree
    // with the replay between two valid checkpoints is refused.
    let (_, mut b) = honest();
    b.edit_snap(3, |recs| {
        let mut m = marker_of(&recs[0]).unwrap();
        let vals = m.banks.iter_mut().find(|(a, _)| *a == HashAlgo::Sha1).unwrap();
        vals.1[PCR as usize] = HashAlgo::Sha1.hash(&[b"x"]);
        recs[0] = marker_record(&m);
    });
    b.reseal();
    let f = segmented_failure(&b);
    assert!(
        matches!(
            f.kind(),
            FailureKind::SnapshotEndMismatch | FailureKind::MarkerPcrMismatch | FailureKind::CheckpointNotReached
        ),
        "{f}"
    );
}

#[test]
fn f20_checkpoint_of_the_fresh_quotes_nonce_in_latest_mode_is_not_history() {
    // A latest-segment verdict from a checkpoint never claims history.
    let (_, b) = honest();
    let o = b.verify(Mode::LatestSegment, None);
    assert_eq!(o.verdict, Verdict::Verified { history_verified: false });
    assert!(!o.state.unwrap().history_verified);
}
