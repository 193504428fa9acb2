//! Honest evidence verifies in every mode, and incremental verification costs only the
//! new records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;
use common::*;
use imasnap_verifier::{Input, Mode, Options, Restart, State, Verdict};

fn verified(o: &imasnap_verifier::Outcome) -> &State {
    assert!(o.verdict.is_verified(), "rejected: {:?}\nreport: {:?}", o.verdict, o.report);
    o.state.as_ref().unwrap()
}

/// The shared honest host (see `Host::busy`).
fn busy_host(seed: u64) -> Host {
    Host::busy(seed)
}

#[test]
fn full_history_without_snapshots() {
    let mut h = Host::boot(1);
    h.measure(50);
    let b = h.bundle(&nonce(1));
    let o = b.verify(Mode::FullHistory, None);
    let s = verified(&o);
    assert_eq!(o.verdict, Verdict::Verified { history_verified: true });
    assert_eq!(s.checkpoint, 51);
    assert_eq!(o.report.records_replayed, 51);
    assert_eq!(s.verified_snapshots, 0);
    assert_eq!(s.last_attempt, None);
    assert!(s.boot.boot_aggregate_sha1.is_some());
}

#[test]
fn full_history_with_snapshots_and_an_aborted_attempt() {
    let mut h = busy_host(2);
    let b = h.bundle(&nonce(2));
    let total = b.live_first_index + records(&b.live).len() as u64;
    let o = b.verify(Mode::FullHistory, None);
    let s = verified(&o);
    assert_eq!(s.checkpoint, total);
    assert_eq!(o.report.records_replayed, total);
    assert_eq!(o.report.snapshots_replayed, 3);
    assert_eq!(s.verified_snapshots, 3);
    // three end markers and the aborted attempt's intermediate marker
    assert_eq!(o.report.markers_checked, 4);
    assert_eq!(s.last_attempt, Some(4));
    assert_eq!(o.report.tail_records, 0);
}

#[test]
fn latest_segment_only() {
    let mut h = busy_host(3);
    let b = h.bundle(&nonce(3));
    let live_n = records(&b.live).len() as u64;
    let o = b.verify(Mode::LatestSegment, None);
    let s = verified(&o);
    assert_eq!(o.verdict, Verdict::Verified { history_verified: false });
    assert!(!s.history_verified);
    assert_eq!(s.checkpoint, b.live_first_index + live_n);
    assert_eq!(o.report.records_replayed, live_n);
    assert_eq!(o.report.snapshots_skipped, 3);
    assert_eq!(s.boot.boot_aggregate_sha1, None);
    // The snapshot files are not even needed.
    let mut b2 = b.clone();
    for s in &mut b2.snaps {
        s.bytes = None;
    }
    verified(&b2.verify(Mode::LatestSegment, None));
}

#[test]
fn latest_segment_without_any_snapshot_is_full_history() {
    let mut h = Host::boot(4);
    h.measure(12);
    let o = h.bundle(&nonce(4)).verify(Mode::LatestSegment, None);
    assert_eq!(o.verdict, Verdict::Verified { history_verified: true });
}

#[test]
fn incremental_replays_only_new_records() {
    let mut h = busy_host(5);
    let o1 = h.bundle(&nonce(50)).verify(Mode::Incremental, None);
    let s1 = verified(&o1).clone();
    assert_eq!(o1.report.restart, Some(Restart::NoState));
    assert_eq!(o1.report.mode, Some(Mode::FullHistory));

    // Nothing new: nothing replayed.
    let o2 = h.bundle(&nonce(51)).verify(Mode::Incremental, Some(&s1));
    let s2 = verified(&o2).clone();
    assert_eq!(o2.report.mode, Some(Mode::Incremental));
    assert_eq!(o2.report.records_replayed, 0);
    assert_eq!(s2.checkpoint, s1.checkpoint);
    assert_eq!(o2.report.snapshots_skipped, 3);

    // N more snapshots with records in between: only those records are replayed.
    let mut new = 0;
    for round in 0..3 {
        h.measure(15 + round);
        new += 15 + round as u64;
        h.snapshot();
        new += 1; // the new marker
    }
    h.measure(7);
    new += 7;
    let b3 = h.bundle(&nonce(52));
    let o3 = b3.verify(Mode::Incremental, Some(&s2));
    let s3 = verified(&o3).clone();
    assert_eq!(o3.report.records_replayed, new, "{:?}", o3.report);
    assert_eq!(s3.checkpoint, s2.checkpoint + new);
    // the three old snapshots are crossed without hashing; only the end marker that no
    // earlier run counted (snapshot 3's, then the live head) is read — the others are
    // proven history and not even opened. The old live list now sits in snapshot 4,
    // decoded but not hashed.
    assert_eq!(o3.report.snapshots_skipped, 3);
    assert_eq!(o3.report.end_markers_read, 1);
    assert_eq!(o3.report.snapshots_replayed, 3);
    assert_eq!(o3.report.records_skipped, s2.checkpoint - b3.snaps[3].claim.first_index);
    assert_eq!(s3.verified_snapshots, 6);
    assert_eq!(s3.last_attempt, Some(7));
    assert!(s3.history_verified);

    // Same answer as a full verification of the same evidence.
    let full = b3.verify(Mode::FullHistory, None);
    assert_eq!(full.state.as_ref().unwrap().pcrs, s3.pcrs);
    assert_eq!(full.state.as_ref().unwrap().checkpoint, s3.checkpoint);
    assert_eq!(full.report.records_replayed, s3.checkpoint);
    assert_eq!(o3.report.records_replayed + s2.checkpoint, s3.checkpoint);

    // Old snapshot files are not needed at all by an incremental verifier.
    let mut b4 = b3.clone();
    for s in b4.snaps.iter_mut().take(3) {
        s.bytes = None;
    }
    let o4 = b4.verify(Mode::Incremental, Some(&s2));
    assert_eq!(o4.state, o3.state);
}

#[test]
fn quote_lag_tail_is_carried_over() {
    let mut h = busy_host(6);
    let n = nonce(6);
    let q = h.quote(&n);
    h.measure(9); // the log runs ahead of the quote
    let b = h.bundle_with_quote(&n, q);
    let total = b.live_first_index + records(&b.live).len() as u64;
    let o = b.verify(Mode::FullHistory, None);
    let s = verified(&o).clone();
    assert_eq!(o.report.tail_records, 9);
    assert_eq!(s.checkpoint, total - 9);
    assert_eq!(o.report.quote_matched_at, Some(total - 9));

    // Next round: the tail is replayed then.
    h.measure(4);
    let o2 = h.bundle(&nonce(7)).verify(Mode::Incremental, Some(&s));
    let s2 = verified(&o2);
    assert_eq!(o2.report.records_replayed, 13);
    assert_eq!(o2.report.tail_records, 0);
    assert_eq!(s2.checkpoint, total + 4);
}

#[test]
fn quote_lag_across_a_snapshot_and_small_batches() {
    let mut h = busy_host(8);
    let n = nonce(8);
    let q = h.quote(&n);
    h.measure(3);
    h.aborted_snapshot();
    h.measure(50);
    let b = h.bundle_with_quote(&n, q);
    for batch in [1, 2, 7, 64, 4096] {
        // Hashed in parallel per batch, and in place on one thread (the ranges' path).
        for parallel in [true, false] {
            let opts = Options { batch, parallel, ..Options::new(Mode::FullHistory) };
            let o = b.verify_with(&opts, None);
            verified(&o);
            assert_eq!(o.report.tail_records, 54, "batch {batch}, parallel {parallel}");
        }
    }
}

#[test]
fn kexec_in_the_middle() {
    let mut h = Host::boot(9);
    h.measure(20);
    h.snapshot();
    h.measure(10);
    h.aborted_snapshot();
    h.kexec(); // new kernel: boot_aggregate after the restored records, attempt counter restarts
    h.measure(15);
    h.snapshot(); // attempt 1 again
    h.measure(5);
    let b = h.bundle(&nonce(9));
    let o = b.verify(Mode::FullHistory, None);
    let s = verified(&o);
    assert_eq!(o.report.kexecs, 1);
    assert_eq!(s.last_attempt, Some(1));
    verified(&b.verify(Mode::LatestSegment, None));
}

#[test]
fn cold_boot_restarts_from_scratch() {
    let mut h = busy_host(10);
    let s1 = verified(&h.bundle(&nonce(10)).verify(Mode::Incremental, None)).clone();
    h.reboot(10);
    h.measure(8);
    h.snapshot();
    h.measure(3);
    let o = h.bundle(&nonce(11)).verify(Mode::Incremental, Some(&s1));
    let s = verified(&o);
    assert_eq!(o.report.restart, Some(Restart::ResetCountChanged { saved: 0, quoted: 1 }));
    assert_eq!(o.report.mode, Some(Mode::FullHistory));
    assert_eq!(s.boot.reset_count, 1);
    assert_eq!(s.checkpoint, 13);
}

#[test]
fn incremental_after_latest_segment_keeps_history_unverified() {
    let mut h = busy_host(11);
    let s1 = verified(&h.bundle(&nonce(12)).verify(Mode::LatestSegment, None)).clone();
    h.measure(5);
    h.snapshot();
    h.measure(5);
    let o = h.bundle(&nonce(13)).verify(Mode::Incremental, Some(&s1));
    let s = verified(&o);
    assert_eq!(o.verdict, Verdict::Verified { history_verified: false });
    assert_eq!(o.report.records_replayed, 11);
    assert_eq!(s.verified_snapshots, 1);
}

#[test]
fn readers_work_like_bytes_and_state_round_trips() {
    let mut h = busy_host(12);
    let b = h.bundle(&nonce(14));
    let mut ev = b.evidence();
    let live = b.live.clone();
    ev.live = Input::Reader(Box::new(std::io::Cursor::new(live)));
    for s in &mut ev.snapshots {
        if let Some(Input::Bytes(bytes)) = s.data.take() {
            // one byte at a time: the worst reader
            struct Trickle<'a>(&'a [u8]);
            impl std::io::Read for Trickle<'_> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    match (self.0.split_first(), buf.first_mut()) {
                        (Some((b, rest)), Some(out)) => {
                            *out = *b;
                            self.0 = rest;
                            Ok(1)
                        }
                        _ => Ok(0),
                    }
                }
            }
            s.data = Some(Input::Reader(Box::new(Trickle(bytes))));
        }
    }
    let q = imasnap_verifier::TpmQuote::new(&b.quote, &b.trusted_ak);
    let o = imasnap_verifier::verify(&Options::new(Mode::FullHistory), ev, &q, &b.nonce, None);
    let s = verified(&o);
    assert_eq!(Some(s), b.verify(Mode::FullHistory, None).state.as_ref());
    let back = State::from_json(&s.to_json()).unwrap();
    assert_eq!(&back, s);
}

#[test]
fn kexec_between_two_incremental_rounds() {
    let mut h = Host::boot(13);
    h.measure(10);
    h.snapshot();
    h.measure(5);
    h.aborted_snapshot();
    let s1 = verified(&h.bundle(&nonce(15)).verify(Mode::Incremental, None)).clone();
    assert_eq!(s1.last_attempt, Some(2));
    h.kexec(); // the new kernel's counter restarts: its first marker is attempt 1 again
    h.measure(6);
    h.snapshot();
    h.measure(2);
    let o = h.bundle(&nonce(16)).verify(Mode::Incremental, Some(&s1));
    let s2 = verified(&o);
    assert_eq!(o.report.mode, Some(Mode::Incremental));
    assert_eq!(o.report.kexecs, 1);
    assert_eq!(s2.last_attempt, Some(1));
    assert_eq!(o.report.records_replayed, 1 + 6 + 1 + 2);
}
