//! Engine unit tests on hand-built logs (both endiannesses, a second PCR, violations).

use super::*;
use crate::evidence::SnapshotEvidence;
use crate::evidence::{Input, SnapshotClaim};
use crate::TrustedPcrs;
use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::marker::Marker;
use imasnap_log::{Endian, PcrValue, Record, ReplayOptions, Replayer};

const BANKS: [HashAlgo; 2] = [HashAlgo::Sha1, HashAlgo::Sha256];

/// A hand-built log with its own PCR bookkeeping, quoted through `TrustedPcrs`.
struct Log {
    endian: Endian,
    recs: Vec<Record>,
    r: Replayer,
    platform: Vec<[PcrValue; 10]>,
    attempt: u64,
}

impl Log {
    fn new(endian: Endian) -> Self {
        let platform: Vec<[PcrValue; 10]> =
            BANKS.iter().map(|&b| std::array::from_fn(|p| b.hash(&[b"fw", &[p as u8]]))).collect();
        let mut ro = ReplayOptions::new(&BANKS);
        ro.endian = endian;
        let mut l = Self { endian, recs: Vec::new(), r: Replayer::new(ro), platform, attempt: 0 };
        let agg = imasnap_log::digest::boot_aggregate(HashAlgo::Sha256, &l.platform[1], true);
        l.push(build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", agg.as_bytes()), &n_ng(b"boot_aggregate")],
            HashAlgo::Sha1,
            10,
            false,
            endian,
        ));
        l
    }
    fn push(&mut self, r: Record) {
        self.r.push(&r).unwrap();
        self.recs.push(r);
    }
    fn file(&mut self, pcr: u32, name: &str) {
        let d = HashAlgo::Sha256.hash(&[name.as_bytes()]);
        let r = build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", d.as_bytes()), &n_ng(name.as_bytes())],
            HashAlgo::Sha1,
            pcr,
            false,
            self.endian,
        );
        self.push(r);
    }
    fn violation(&mut self, name: &str) {
        let r = build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", &[0; 32]), &n_ng(name.as_bytes())],
            HashAlgo::Sha1,
            10,
            true,
            self.endian,
        );
        self.push(r);
    }
    fn marker_value(&self) -> Marker {
        let s = self.r.state();
        let banks = BANKS
            .iter()
            .enumerate()
            .map(|(bi, &b)| {
                let mut v = *s.bank(b).unwrap();
                v[..10].copy_from_slice(&self.platform[bi]);
                (b, v)
            })
            .collect();
        Marker { attempt: self.attempt, banks }
    }
    fn marker(&mut self) {
        self.attempt += 1;
        let m = self.marker_value();
        self.push(m.to_record(10, HashAlgo::Sha256, HashAlgo::Sha1, self.endian));
    }
    fn quote(&self, pcrs: &[u32]) -> TrustedPcrs {
        let s = self.r.state();
        let mut values = Vec::new();
        for (bi, &b) in BANKS.iter().enumerate() {
            for &p in pcrs {
                let v = if p < 10 { self.platform[bi][p as usize] } else { *s.get(b, p as usize).unwrap() };
                values.push((b, p, v));
            }
        }
        TrustedPcrs { reset_count: 1, values }
    }
    fn bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        for r in &self.recs[range] {
            r.encode(self.endian, &mut out);
        }
        out
    }
}

/// The live list from `first`; records before it are one snapshot the manifest names but
/// the evidence leaves out (the manifest must cover them in every mode).
fn run_live(log: &Log, q: &TrustedPcrs, mode: Mode, first: u64, live: &[u8]) -> Outcome {
    let snapshots = if first == 0 {
        Vec::new()
    } else {
        let claim = SnapshotClaim {
            seq: 1,
            first_index: 0,
            count: first,
            sha256: None,
            cut: Default::default(),
            next_sha1: None,
            end_marker: None,
            pcrs_end: vec![],
            checkpoint: None,
        };
        vec![SnapshotEvidence { claim, data: None }]
    };
    let ev = Evidence {
        banks: BANKS.to_vec(),
        pcr: 10,
        endian: log.endian,
        boot: None,
        snapshots,
        live: Input::Bytes(live),
        live_first_index: first,
        data_from: None,
    };
    verify(&Options::new(mode), ev, q, b"", None)
}

fn two_pcr_log(endian: Endian) -> Log {
    let mut l = Log::new(endian);
    l.file(10, "/a");
    l.file(11, "/b");
    l.violation("/c");
    l.marker();
    l.file(11, "/d");
    l.file(10, "/e");
    l
}

#[test]
fn second_pcr_violations_and_big_endian() {
    for endian in [Endian::Little, Endian::Big] {
        let l = two_pcr_log(endian);
        let q = l.quote(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let live = l.bytes(0..l.recs.len());
        let o = run_live(&l, &q, Mode::FullHistory, 0, &live);
        assert!(o.verdict.is_verified(), "{endian:?}: {:?}", o.verdict);
        let s = o.state.unwrap();
        assert_eq!(s.pcrs.touched().collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(o.report.markers_checked, 1);
        // Latest segment from the marker (record 4): PCR 11 continues from its value.
        let tail = l.bytes(4..l.recs.len());
        let o = run_live(&l, &q, Mode::LatestSegment, 4, &tail);
        assert_eq!(o.verdict, Verdict::Verified { history_verified: false });
    }
}

#[test]
fn marker_checks_every_extended_pcr() {
    let mut l = two_pcr_log(Endian::Little);
    let q = l.quote(&(0..=11).collect::<Vec<_>>());
    let mut m = Marker::from_record(&l.recs[4], Endian::Little).unwrap().unwrap();
    m.banks[0].1[11] = HashAlgo::Sha1.hash(&[b"x"]);
    l.recs[4] = m.to_record(10, HashAlgo::Sha256, HashAlgo::Sha1, Endian::Little);
    let live = l.bytes(0..l.recs.len());
    let o = run_live(&l, &q, Mode::FullHistory, 0, &live);
    assert_eq!(o.verdict.failure(), Some(&Failure::MarkerPcrMismatch { index: 4, bank: HashAlgo::Sha1, pcr: 11 }));
}

#[test]
fn a_pcr_outside_the_quote_is_refused() {
    let l = two_pcr_log(Endian::Little);
    let q = l.quote(&(0..=10).collect::<Vec<_>>());
    let live = l.bytes(0..l.recs.len());
    let o = run_live(&l, &q, Mode::FullHistory, 0, &live);
    assert_eq!(o.verdict.failure(), Some(&Failure::UnquotedPcr { index: 2, pcr: 11 }));
}

#[test]
fn unusable_evidence_shapes() {
    let l = two_pcr_log(Endian::Little);
    let q = l.quote(&(0..=11).collect::<Vec<_>>());
    let live = l.bytes(0..l.recs.len());
    let shapes: Vec<(Vec<HashAlgo>, u32, u64)> = vec![
        (vec![], 10, 0),
        (vec![HashAlgo::Sha1, HashAlgo::Sha256, HashAlgo::Sha1], 10, 0),
        (BANKS.to_vec(), 3, 0),
        (BANKS.to_vec(), 24, 0),
        (BANKS.to_vec(), 10, u64::MAX),
    ];
    for (banks, pcr, first) in shapes {
        for mode in [Mode::FullHistory, Mode::LatestSegment, Mode::Incremental] {
            let ev = Evidence {
                banks: banks.clone(),
                pcr,
                endian: Endian::Little,
                boot: None,
                snapshots: vec![SnapshotEvidence {
                    claim: SnapshotClaim {
                        seq: 1,
                        first_index: u64::MAX,
                        count: u64::MAX,
                        sha256: None,
                        cut: Default::default(),
                        next_sha1: None,
                        end_marker: None,
                        pcrs_end: vec![],
                        checkpoint: None,
                    },
                    data: None,
                }],
                live: Input::Bytes(&live),
                live_first_index: first,
                data_from: None,
            };
            let o = verify(&Options::new(mode), ev, &q, b"", None);
            assert!(matches!(o.verdict.failure(), Some(Failure::BadEvidence { .. })), "{banks:?} {pcr} {first}");
        }
    }
}

#[test]
fn empty_and_headless_live_lists() {
    let l = two_pcr_log(Endian::Little);
    let q = l.quote(&(0..=11).collect::<Vec<_>>());
    for mode in [Mode::FullHistory, Mode::LatestSegment] {
        let o = run_live(&l, &q, mode, 0, &[]);
        assert_eq!(o.verdict.failure(), Some(&Failure::EmptySegment { segment: crate::reason::Segment::Live }));
    }
    let live = l.bytes(1..l.recs.len());
    let o = run_live(&l, &q, Mode::FullHistory, 0, &live);
    assert_eq!(o.verdict.failure(), Some(&Failure::FirstRecordNotBootAggregate { index: 0 }));
    let o = run_live(&l, &q, Mode::LatestSegment, 1, &live);
    assert_eq!(o.verdict.failure(), Some(&Failure::LiveStartNotMarker { index: 1 }));
}

/// Found by the `evidence_body` fuzz target: latest-segment mode accepted a manifest whose
/// last snapshot names another end marker than the live list's head, and the incremental
/// round from the state it saved then rejected the same evidence.
#[test]
fn fuzz_evidence_body_latest_segment_checks_the_end_marker_claim() {
    let l = two_pcr_log(Endian::Little);
    let q = l.quote(&(0..=11).collect::<Vec<_>>());
    let head = &l.recs[4];
    let live = l.bytes(4..l.recs.len());
    let run = |sha1: [u8; 20]| {
        let claim = SnapshotClaim {
            seq: 1,
            first_index: 0,
            count: 4,
            sha256: None,
            cut: Default::default(),
            next_sha1: None,
            end_marker: Some(crate::evidence::EndMarkerClaim { attempt: 1, sha1 }),
            pcrs_end: vec![],
            checkpoint: None,
        };
        let ev = Evidence {
            banks: BANKS.to_vec(),
            pcr: 10,
            endian: Endian::Little,
            boot: None,
            snapshots: vec![SnapshotEvidence { claim, data: None }],
            live: Input::Bytes(&live),
            live_first_index: 4,
            data_from: None,
        };
        verify(&Options::new(Mode::LatestSegment), ev, &q, b"", None)
    };
    let right: [u8; 20] = head.digest.as_slice().try_into().unwrap();
    assert_eq!(run(right).verdict, Verdict::Verified { history_verified: false });
    let mut wrong = right;
    wrong[5] ^= 0x20;
    let o = run(wrong);
    assert!(
        matches!(o.verdict.failure(), Some(Failure::ManifestEndMarkerMismatch { seq: 1, index: 4, .. })),
        "{:?}",
        o.verdict
    );
}

#[test]
fn a_quote_predating_the_live_head_never_matches_before_it() {
    // The state before the head marker equals the quote: impossible for an honest host
    // (the head is extended before any later quote), so it must not verify.
    let mut l = Log::new(Endian::Little);
    l.file(10, "/a");
    let q = l.quote(&(0..=10).collect::<Vec<_>>());
    l.marker();
    let head = l.recs.len() - 1;
    let live = l.bytes(head..l.recs.len());
    let o = run_live(&l, &q, Mode::LatestSegment, head as u64, &live);
    assert!(matches!(o.verdict.failure(), Some(Failure::QuoteNotReached { .. })), "{:?}", o.verdict);
}
