//! Suffix evidence (`data_from`): a verifier with state is sent only the records after its
//! checkpoint, inside a snapshot file or inside the live list. The engine resumes from its
//! own state; the suffix proves itself by replay to the quote, or fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;
use common::*;
use imasnap_verifier::{Evidence, FailureKind, Input, Mode, Options, SnapshotEvidence, State, TpmQuote};

/// What an agent sends from record `from`: segments wholly before it without data, the one
/// holding it cut to start there, the rest whole.
struct Suffix {
    snaps: Vec<(imasnap_verifier::SnapshotClaim, Option<Vec<u8>>)>,
    live: Vec<u8>,
    data_from: Option<u64>,
}

fn suffix(b: &Bundle, from: u64) -> Suffix {
    let mut data_from = None;
    let mut snaps = Vec::new();
    for (i, s) in b.snaps.iter().enumerate() {
        let c = s.claim.clone();
        let data = if c.end_index() <= from {
            None
        } else if c.first_index < from {
            data_from = Some(from);
            Some(encode(&b.snap_records(i)[(from - c.first_index) as usize..]))
        } else {
            s.bytes.clone()
        };
        snaps.push((c, data));
    }
    let mut live = b.live.clone();
    if from > b.live_first_index {
        data_from = Some(from);
        live = encode(&records(&b.live)[(from - b.live_first_index) as usize..]);
    }
    Suffix { snaps, live, data_from }
}

fn verify_suffix(b: &Bundle, s: &Suffix, mode: Mode, prior: Option<&State>) -> imasnap_verifier::Outcome {
    let ev = Evidence {
        banks: b.banks.clone(),
        pcr: PCR,
        endian: imasnap_log::Endian::Little,
        boot: b.boot.clone(),
        snapshots: s
            .snaps
            .iter()
            .map(|(c, d)| SnapshotEvidence { claim: c.clone(), data: d.as_deref().map(Input::Bytes) })
            .collect(),
        live: Input::Bytes(&s.live),
        live_first_index: b.live_first_index,
        data_from: s.data_from,
    };
    let q = TpmQuote { quote: &b.quote, trusted_ak: &b.trusted_ak, claimed_ak: b.claimed_ak.as_ref() };
    imasnap_verifier::verify(&Options::new(mode), ev, &q, &b.nonce, prior)
}

fn verified(o: &imasnap_verifier::Outcome) -> State {
    assert!(o.verdict.is_verified(), "rejected: {:?}\nreport: {:?}", o.verdict, o.report);
    o.state.clone().unwrap()
}

#[test]
fn a_suffix_in_the_live_list_verifies_and_carries_only_new_records() {
    let mut h = Host::busy(21);
    let s1 = verified(&h.bundle(&nonce(1)).verify(Mode::Incremental, None));
    h.measure(9);
    let b = h.bundle(&nonce(2));
    let whole = b.verify(Mode::Incremental, Some(&s1));
    let sfx = suffix(&b, s1.checkpoint);
    assert_eq!(sfx.data_from, Some(s1.checkpoint), "the checkpoint is inside the live list");
    assert!(sfx.snaps.iter().all(|(_, d)| d.is_none()), "no snapshot file travels");
    assert_eq!(records(&sfx.live).len(), 9);
    let o = verify_suffix(&b, &sfx, Mode::Incremental, Some(&s1));
    assert_eq!(verified(&o), verified(&whole), "same state as from the whole segment");
    assert_eq!(o.report.records_replayed, 9);
}

#[test]
fn a_suffix_inside_a_snapshot_file_verifies() {
    let mut h = Host::busy(22);
    h.measure(4);
    let s1 = verified(&h.bundle(&nonce(3)).verify(Mode::Incremental, None));
    // The checkpoint is now inside the live list; a snapshot moves it into a file.
    h.measure(6);
    h.snapshot();
    h.measure(3);
    let b = h.bundle(&nonce(4));
    let sfx = suffix(&b, s1.checkpoint);
    let holder = sfx.snaps.iter().position(|(c, d)| d.is_some() && c.first_index < s1.checkpoint);
    assert!(holder.is_some(), "the checkpoint lies inside a snapshot file");
    let o = verify_suffix(&b, &sfx, Mode::Incremental, Some(&s1));
    let s2 = verified(&o);
    assert_eq!(s2, verified(&b.verify(Mode::Incremental, Some(&s1))));
    assert_eq!(o.report.records_replayed, 6 + 1 + 3, "the new records and the new marker");
}

#[test]
fn segments_ending_before_the_checkpoint_may_be_left_out() {
    let mut h = Host::busy(26);
    h.measure(4);
    let s1 = verified(&h.bundle(&nonce(11)).verify(Mode::Incremental, None));
    h.measure(6);
    h.snapshot();
    h.measure(3);
    let b = h.bundle(&nonce(12));
    let mut sfx = suffix(&b, s1.checkpoint);
    let before = sfx.snaps.len();
    sfx.snaps.retain(|(c, _)| c.end_index() >= s1.checkpoint);
    assert!(sfx.snaps.len() < before, "older segments left out");
    let o = verify_suffix(&b, &sfx, Mode::Incremental, Some(&s1));
    assert_eq!(verified(&o), verified(&b.verify(Mode::Incremental, Some(&s1))));
    // Leaving out the segment that holds the checkpoint leaves a gap: refused.
    let mut gap = suffix(&b, s1.checkpoint);
    gap.snaps.retain(|(c, _)| c.first_index > s1.checkpoint);
    gap.data_from = None;
    let o = verify_suffix(&b, &gap, Mode::Incremental, Some(&s1));
    assert!(!o.verdict.is_verified(), "a manifest starting after the checkpoint passed");
}

#[test]
fn a_suffix_starting_after_the_checkpoint_is_refused() {
    let mut h = Host::busy(23);
    let s1 = verified(&h.bundle(&nonce(5)).verify(Mode::Incremental, None));
    h.measure(5);
    let b = h.bundle(&nonce(6));
    // Records the verifier has not seen are left out: the gap cannot be replayed.
    let sfx = suffix(&b, s1.checkpoint + 2);
    let o = verify_suffix(&b, &sfx, Mode::Incremental, Some(&s1));
    assert_eq!(failure(&o).kind(), FailureKind::CheckpointNotInEvidence, "{:?}", o.verdict);
}

#[test]
fn a_suffix_is_refused_outside_incremental_mode_and_outside_its_segment() {
    let mut h = Host::busy(24);
    let s1 = verified(&h.bundle(&nonce(7)).verify(Mode::Incremental, None));
    h.measure(5);
    let b = h.bundle(&nonce(8));
    let sfx = suffix(&b, s1.checkpoint);
    for mode in [Mode::FullHistory, Mode::LatestSegment] {
        let o = verify_suffix(&b, &sfx, mode, None);
        assert_eq!(failure(&o).kind(), FailureKind::BadEvidence, "{mode}: {:?}", o.verdict);
    }
    // A data_from before the segment that carries the data.
    let mut bad = suffix(&b, s1.checkpoint);
    bad.data_from = Some(b.live_first_index - 1);
    let o = verify_suffix(&b, &bad, Mode::Incremental, Some(&s1));
    assert_eq!(failure(&o).kind(), FailureKind::BadEvidence, "{:?}", o.verdict);
}

#[test]
fn a_forged_suffix_does_not_replay_to_the_quote() {
    let mut h = Host::busy(25);
    let s1 = verified(&h.bundle(&nonce(9)).verify(Mode::Incremental, None));
    h.measure(5);
    let b = h.bundle(&nonce(10));
    let mut sfx = suffix(&b, s1.checkpoint);
    let mut recs = records(&sfx.live);
    recs[2] = fake_file_record("/usr/bin/innocent");
    sfx.live = encode(&recs);
    let o = verify_suffix(&b, &sfx, Mode::Incremental, Some(&s1));
    assert!(!o.verdict.is_verified(), "a swapped record passed");
    // Records dropped from the suffix's head do not pass either.
    let mut short = suffix(&b, s1.checkpoint);
    short.live = encode(&records(&short.live)[1..]);
    let o = verify_suffix(&b, &short, Mode::Incremental, Some(&s1));
    assert!(!o.verdict.is_verified(), "a suffix missing its first record passed");
}
