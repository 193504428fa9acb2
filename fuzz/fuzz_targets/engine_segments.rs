//! The verification engine (`imasnap_verifier::verify`) on evidence built from the fuzzer's
//! bytes with `arbitrary`: a log of files (PCR 10 or 11), violations, `ima-buf` records,
//! markers, kexec'd boot_aggregates and snapshot cuts, in either byte order and in one to
//! three banks; quoted (through `TrustedPcrs`) after all but the last `tail` records; then
//! damaged by up to four tamperings (flipped bits, truncation, a dropped snapshot file,
//! claims off by a little, a wrong quote value, swapped segments, a wrong boot claim).
//! Segments are given as byte slices or through a reader that returns a few bytes a call.
//!
//! Every input is verified in the three modes. Asserted beyond "no panic":
//! - a verdict of success implies that every PCR the saved state touched equals the
//!   quote in every bank, and the checkpoint is within the records supplied;
//! - full history, when it succeeds: an independent replay (`imasnap_log::Replayer`) of
//!   the supplied bytes, records 0 to the checkpoint, has no template digest mismatch and
//!   ends in the quoted values (the engine accepted nothing the bytes do not prove);
//! - a failure leaves the prior state unchanged;
//! - without tampering (a log the generator built honestly): full history verifies at
//!   exactly the quote's position; latest segment verifies; an incremental run from the
//!   state an earlier quote gave verifies at the same checkpoint with the same PCRs.
#![no_main]

use imasnap_log::digest::boot_aggregate;
use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::marker::Marker;
use imasnap_log::{BinaryFormat, BinaryReader, Endian, HashAlgo, PcrValue, Record, ReplayOptions, Replayer};
use imasnap_verifier::{
    verify, BootClaim, EndMarkerClaim, Evidence, Input, Mode, Options, SnapshotClaim, SnapshotEvidence, State,
    TrustedPcrs,
};
use imasnap_wire::Cut;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sha2::Digest as _;

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    File {
        pcr11: bool,
        name: u8,
    },
    Violation {
        name: u8,
    },
    Buf {
        name: u8,
        data: Vec<u8>,
    },
    Marker,
    /// A snapshot: a marker is measured, and the snapshot file ends just before it.
    Snapshot,
    /// A kexec'd kernel's boot_aggregate (its attempt counter starts over).
    Kexec,
    /// The earlier quote, from which the incremental run continues.
    EarlierQuote,
}

#[derive(Arbitrary, Debug, Clone)]
enum Tamper {
    FlipBit {
        seg: u8,
        at: u16,
        bit: u8,
    },
    Truncate {
        seg: u8,
        keep: u16,
    },
    DropFile {
        seg: u8,
    },
    Count {
        seg: u8,
        delta: i8,
    },
    FirstIndex {
        seg: u8,
        delta: i8,
    },
    Seq {
        seg: u8,
        seq: u8,
    },
    Sha256 {
        seg: u8,
    },
    EndMarker {
        seg: u8,
        attempt: i8,
        digest: bool,
    },
    PcrsEnd {
        seg: u8,
    },
    LiveFirstIndex {
        delta: i8,
    },
    QuoteValue {
        bank: u8,
        pcr: u8,
    },
    DropQuoteValue {
        bank: u8,
        pcr: u8,
    },
    Swap {
        a: u8,
        b: u8,
    },
    BootResetCount,
    BootAggregate,
    RemoveSnapshot {
        seg: u8,
    },
    /// Claims a staging cut (no marker): `trim` naming the next record (right or wrong),
    /// or `stage`.
    Cut {
        seg: u8,
        trim: bool,
        right: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Plan {
    big_endian: bool,
    banks: u8,
    ops: Vec<Op>,
    tail: u8,
    batch: u8,
    chunk: Option<u8>,
    tamper: Vec<Tamper>,
}

const NAMES: [&str; 8] = ["/bin/sh", "/usr/bin/env", "/etc/passwd", "/lib/libc.so.6", "/a", "/b", "/sbin/init", ""];

fn name(i: u8) -> Vec<u8> {
    let mut n = NAMES[i as usize % NAMES.len()].as_bytes().to_vec();
    if i >= 8 {
        n.extend_from_slice(format!("-{i}").as_bytes());
    }
    n
}

/// The generated, honest log with its bookkeeping.
struct Log {
    endian: Endian,
    banks: Vec<HashAlgo>,
    recs: Vec<Record>,
    r: Replayer,
    /// PCR 0-9 per bank in `platform_banks`.
    platform: Vec<(HashAlgo, [PcrValue; 10])>,
    attempt: u64,
    /// Record index of each snapshot's end marker (= where the next segment starts).
    cuts: Vec<usize>,
    /// (record count, replay state) at the earlier quote.
    earlier: Option<(usize, imasnap_log::PcrState)>,
    /// `states[i]`: the replay state after `i` records.
    states: Vec<imasnap_log::PcrState>,
}

impl Log {
    fn new(endian: Endian, banks: Vec<HashAlgo>) -> Self {
        let mut pb = banks.clone();
        if !pb.contains(&HashAlgo::Sha256) {
            pb.push(HashAlgo::Sha256);
        }
        let platform =
            pb.iter().map(|&b| (b, std::array::from_fn(|p| b.hash(&[b"firmware", &[p as u8]])))).collect::<Vec<_>>();
        let mut ro = ReplayOptions::new(&banks);
        ro.endian = endian;
        ro.parallel = false;
        let mut l = Self {
            endian,
            banks,
            recs: Vec::new(),
            r: Replayer::new(ro),
            platform,
            attempt: 0,
            cuts: Vec::new(),
            earlier: None,
            states: Vec::new(),
        };
        l.states.push(imasnap_log::PcrState::new(&l.banks));
        l.boot_aggregate();
        l
    }
    fn plat(&self, b: HashAlgo) -> &[PcrValue; 10] {
        &self.platform.iter().find(|(x, _)| *x == b).expect("platform bank").1
    }
    fn push(&mut self, r: Record) {
        self.r.push(&r).expect("the generator builds decodable records");
        self.recs.push(r);
        self.states.push(self.r.state());
    }
    /// An honest log verified at `st.checkpoint` within `range`: the engine's touched PCRs
    /// are the generator's state there. (The engine may match before the quote's own
    /// position: when only a PCR it has not seen extended yet changes, the quote already
    /// matches every PCR replayed so far.)
    fn check_honest(&self, st: &State, range: std::ops::RangeInclusive<u64>, what: &str) {
        assert!(range.contains(&st.checkpoint), "{what}: checkpoint {} outside {range:?}", st.checkpoint);
        let want = &self.states[st.checkpoint as usize];
        for p in st.pcrs.touched() {
            for &b in &self.banks {
                assert_eq!(st.pcrs.get(b, p), want.get(b, p), "{what}: {b} PCR {p} at {}", st.checkpoint);
            }
        }
    }
    fn boot_aggregate(&mut self) {
        let agg = boot_aggregate(HashAlgo::Sha256, self.plat(HashAlgo::Sha256), true);
        let r = build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", agg.as_bytes()), &n_ng(b"boot_aggregate")],
            HashAlgo::Sha1,
            10,
            false,
            self.endian,
        );
        self.push(r);
    }
    fn file(&mut self, pcr: u32, n: &[u8], violation: bool) {
        let d = if violation { [0u8; 32] } else { sha2::Sha256::digest(n).into() };
        let r =
            build(&builtin("ima-ng"), &[&d_ng("sha256", &d), &n_ng(n)], HashAlgo::Sha1, pcr, violation, self.endian);
        self.push(r);
    }
    fn buf(&mut self, n: &[u8], data: &[u8]) {
        let d = HashAlgo::Sha256.hash(&[data]);
        let r = build(
            &builtin("ima-buf"),
            &[&d_ng("sha256", d.as_bytes()), &n_ng(n), data],
            HashAlgo::Sha1,
            10,
            false,
            self.endian,
        );
        self.push(r);
    }
    fn marker(&mut self) {
        self.attempt += 1;
        let s = self.r.state();
        let banks = self
            .banks
            .iter()
            .map(|&b| {
                let mut v = *s.bank(b).expect("replayed bank");
                v[..10].copy_from_slice(self.plat(b));
                (b, v)
            })
            .collect();
        let m = Marker { attempt: self.attempt, banks };
        self.push(m.to_record(10, HashAlgo::Sha256, HashAlgo::Sha1, self.endian));
    }
    /// Quote values: PCR 0-9 of the platform, 10 and 11 as replayed, in every bank.
    fn quote(&self, state: &imasnap_log::PcrState) -> TrustedPcrs {
        let mut values = Vec::new();
        for (b, plat) in &self.platform {
            for p in 0..12u32 {
                let v = if p < 10 { Some(plat[p as usize]) } else { state.get(*b, p as usize).copied() };
                if let Some(v) = v {
                    values.push((*b, p, v));
                }
            }
        }
        TrustedPcrs { reset_count: 7, values }
    }
    fn bytes(&self, r: std::ops::Range<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        for rec in &self.recs[r] {
            rec.encode(self.endian, &mut out);
        }
        out
    }
}

/// One segment as the evidence will carry it.
#[derive(Clone, Debug)]
struct Seg {
    claim: Option<SnapshotClaim>,
    data: Option<Vec<u8>>,
}

/// Snapshots for cuts before `upto` records, then the live list up to `upto`.
fn segments(l: &Log, cuts: &[usize], upto: usize) -> (Vec<Seg>, u64) {
    let mut segs = Vec::new();
    let mut start = 0usize;
    for (k, &c) in cuts.iter().enumerate() {
        let data = l.bytes(start..c);
        let marker = &l.recs[c];
        let m = Marker::from_record(marker, l.endian).ok().flatten().expect("cut at a marker");
        let pcrs_end = m.banks.iter().map(|(_, v)| v[10]).collect();
        let claim = SnapshotClaim {
            seq: k as u64 + 1,
            first_index: start as u64,
            count: (c - start) as u64,
            sha256: Some(sha2::Sha256::digest(&data).into()),
            cut: Cut::Marker,
            end_marker: Some(EndMarkerClaim { attempt: m.attempt, sha1: marker.digest.as_slice().try_into().unwrap() }),
            next_sha1: None,
            pcrs_end,
            checkpoint: None,
        };
        segs.push(Seg { claim: Some(claim), data: Some(data) });
        start = c;
    }
    segs.push(Seg { claim: None, data: Some(l.bytes(start..upto)) });
    (segs, start as u64)
}

/// Returns at most `n` bytes per read.
struct Chunked<'a> {
    b: &'a [u8],
    n: usize,
}

impl std::io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.n.min(buf.len()).min(self.b.len());
        buf[..k].copy_from_slice(&self.b[..k]);
        self.b = &self.b[k..];
        Ok(k)
    }
}

fn input(b: &[u8], chunk: Option<u8>) -> Input<'_> {
    match chunk {
        Some(n) => Input::Reader(Box::new(Chunked { b, n: n as usize % 64 + 1 })),
        None => Input::Bytes(b),
    }
}

struct Case<'a> {
    endian: Endian,
    banks: &'a [HashAlgo],
    segs: &'a [Seg],
    live_first_index: u64,
    boot: Option<BootClaim>,
    chunk: Option<u8>,
}

impl Case<'_> {
    fn evidence(&self) -> Evidence<'_> {
        let (snaps, live) = self.segs.split_at(self.segs.len() - 1);
        let snapshots = snaps
            .iter()
            .filter_map(|s| {
                Some(SnapshotEvidence {
                    claim: s.claim.clone()?,
                    data: s.data.as_deref().map(|d| input(d, self.chunk)),
                })
            })
            .collect();
        Evidence {
            banks: self.banks.to_vec(),
            pcr: 10,
            endian: self.endian,
            boot: self.boot.clone(),
            snapshots,
            live: input(live[0].data.as_deref().unwrap_or(&[]), self.chunk),
            live_first_index: self.live_first_index,
            data_from: None,
        }
    }
}

/// A verified state must equal the quote in every touched PCR of every bank.
fn check_success(st: &State, q: &TrustedPcrs, banks: &[HashAlgo], total: u64, what: &str) {
    let touched: Vec<usize> = st.pcrs.touched().collect();
    assert!(!touched.is_empty(), "{what}: verified without a touched PCR");
    for &p in &touched {
        for &b in banks {
            let want = q.values.iter().find(|(x, y, _)| *x == b && *y as usize == p).map(|(_, _, v)| *v);
            assert_eq!(st.pcrs.get(b, p).copied(), want, "{what}: verified {b} PCR {p} differs from the quote");
        }
    }
    assert!(st.checkpoint <= total, "{what}: checkpoint {} beyond the {total} records supplied", st.checkpoint);
}

/// Full history replayed independently from the supplied bytes, segments in order.
fn independent_replay(case: &Case<'_>, st: &State, q: &TrustedPcrs) {
    let mut all = Vec::new();
    for s in case.segs {
        all.extend_from_slice(s.data.as_deref().unwrap_or(&[]));
    }
    let fmt = BinaryFormat { endian: case.endian, ..BinaryFormat::new(HashAlgo::Sha1) };
    let mut ro = ReplayOptions::new(case.banks);
    ro.endian = case.endian;
    ro.parallel = false;
    let mut r = Replayer::new(ro);
    for rec in BinaryReader::new(&all[..], fmt).take(st.checkpoint as usize) {
        let rec = rec.expect("records before a verified checkpoint decode");
        r.push(&rec).expect("and replay");
    }
    let rep = r.finish();
    assert_eq!(rep.next_index, st.checkpoint, "fewer records than the checkpoint");
    assert!(rep.template_digest_mismatches.is_empty(), "verified past a template digest mismatch");
    for p in rep.state().touched() {
        for &b in case.banks {
            let want = q.values.iter().find(|(x, y, _)| *x == b && *y as usize == p).map(|(_, _, v)| *v);
            assert_eq!(rep.state().get(b, p).copied(), want, "independent replay: {b} PCR {p} is not the quote");
        }
    }
}

fn pick<T>(v: &mut [T], i: u8) -> Option<&mut T> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    v.get_mut(i as usize % n)
}

fn tamper(t: &Tamper, segs: &mut Vec<Seg>, live_first: &mut u64, q: &mut TrustedPcrs, boot: &mut BootClaim) {
    let nsnap = segs.len() - 1;
    // Index of a snapshot (never the live list, which is last).
    let snap = |_: &mut Vec<Seg>, i: u8| -> Option<usize> { (nsnap > 0).then(|| i as usize % nsnap) };
    match *t {
        Tamper::FlipBit { seg, at, bit } => {
            if let Some(d) = pick(segs, seg).and_then(|s| s.data.as_mut()).filter(|d| !d.is_empty()) {
                let i = at as usize % d.len();
                d[i] ^= 1 << (bit % 8);
            }
        }
        Tamper::Truncate { seg, keep } => {
            if let Some(d) = pick(segs, seg).and_then(|s| s.data.as_mut()) {
                let k = keep as usize % (d.len() + 1);
                d.truncate(k);
            }
        }
        Tamper::DropFile { seg } => {
            if let Some(k) = snap(segs, seg) {
                segs[k].data = None;
            }
        }
        Tamper::Count { seg, delta } => {
            if let Some(c) = snap(segs, seg).and_then(|k| segs[k].claim.as_mut()) {
                c.count = c.count.wrapping_add_signed(delta as i64);
            }
        }
        Tamper::FirstIndex { seg, delta } => {
            if let Some(c) = snap(segs, seg).and_then(|k| segs[k].claim.as_mut()) {
                c.first_index = c.first_index.wrapping_add_signed(delta as i64);
            }
        }
        Tamper::Seq { seg, seq } => {
            if let Some(c) = snap(segs, seg).and_then(|k| segs[k].claim.as_mut()) {
                c.seq = seq as u64;
            }
        }
        Tamper::Sha256 { seg } => {
            if let Some(c) = snap(segs, seg).and_then(|k| segs[k].claim.as_mut()) {
                c.sha256 = match c.sha256 {
                    Some(mut h) => {
                        h[0] ^= 1;
                        Some(h)
                    }
                    None => Some([0; 32]),
                };
            }
        }
        Tamper::EndMarker { seg, attempt, digest } => {
            if let Some(c) = snap(segs, seg).and_then(|k| segs[k].claim.as_mut()) {
                if let Some(m) = c.end_marker.as_mut() {
                    m.attempt = m.attempt.wrapping_add_signed(attempt as i64);
                    if digest {
                        m.sha1[19] ^= 1;
                    }
                }
            }
        }
        Tamper::PcrsEnd { seg } => {
            if let Some(c) = snap(segs, seg).and_then(|k| segs[k].claim.as_mut()) {
                if let Some(v) = c.pcrs_end.first_mut() {
                    *v = v.algo().hash(&[v.as_bytes()]);
                }
            }
        }
        Tamper::Cut { seg, trim, right } => {
            if let Some(c) = snap(segs, seg).and_then(|k| segs[k].claim.as_mut()) {
                let next = c.end_marker.take().map(|m| m.sha1);
                c.cut = if trim { Cut::Trim } else { Cut::Stage };
                c.next_sha1 = if trim { next.map(|d| if right { d } else { [0x5a; 20] }) } else { None };
            }
        }
        Tamper::LiveFirstIndex { delta } => *live_first = live_first.wrapping_add_signed(delta as i64),
        Tamper::QuoteValue { bank, pcr } => {
            if let Some(e) = pick(&mut q.values, bank.wrapping_add(pcr)) {
                e.2 = e.2.algo().hash(&[e.2.as_bytes()]);
            }
        }
        Tamper::DropQuoteValue { bank, pcr } => {
            if !q.values.is_empty() {
                let i = bank.wrapping_add(pcr) as usize % q.values.len();
                q.values.remove(i);
            }
        }
        Tamper::Swap { a, b } => {
            // Bytes change places, claims stay: a reordered or misplaced file.
            let n = segs.len();
            let (i, j) = (a as usize % n, b as usize % n);
            let (di, dj) = (segs[i].data.take(), segs[j].data.take());
            segs[i].data = dj;
            segs[j].data = di;
        }
        Tamper::BootResetCount => boot.reset_count ^= 1,
        Tamper::BootAggregate => boot.boot_aggregate_sha1[0] ^= 1,
        Tamper::RemoveSnapshot { seg } => {
            if let Some(k) = snap(segs, seg) {
                segs.remove(k);
            }
        }
    }
}

fn run(plan: Plan) {
    let endian = if plan.big_endian { Endian::Big } else { Endian::Little };
    let banks = match plan.banks % 4 {
        0 => vec![HashAlgo::Sha1, HashAlgo::Sha256],
        1 => vec![HashAlgo::Sha256],
        2 => vec![HashAlgo::Sha1],
        _ => vec![HashAlgo::Sha256, HashAlgo::Sha384, HashAlgo::Sha1],
    };
    let mut l = Log::new(endian, banks.clone());
    for op in plan.ops.iter().take(40) {
        match op {
            Op::File { pcr11, name: n } => l.file(if *pcr11 { 11 } else { 10 }, &name(*n), false),
            Op::Violation { name: n } => l.file(10, &name(*n), true),
            Op::Buf { name: n, data } => l.buf(&name(*n), &data[..data.len().min(64)]),
            Op::Marker => l.marker(),
            Op::Snapshot => {
                l.marker();
                l.cuts.push(l.recs.len() - 1);
            }
            Op::Kexec => {
                l.boot_aggregate();
                l.attempt = 0;
            }
            Op::EarlierQuote => {
                if l.earlier.is_none() {
                    l.earlier = Some((l.recs.len(), l.r.state()));
                }
            }
        }
    }
    let qpos = l.recs.len();
    let quote_state = l.r.state();
    for i in 0..plan.tail % 4 {
        l.file(10, format!("/tail/{i}").as_bytes(), false);
    }
    let total = l.recs.len();
    let q = l.quote(&quote_state);
    let boot =
        BootClaim { reset_count: q.reset_count, boot_aggregate_sha1: l.recs[0].digest.as_slice().try_into().unwrap() };
    let opts = |mode| Options { mode, required_banks: Vec::new(), batch: plan.batch as usize % 9 + 1, parallel: false };

    // The earlier round: the snapshots that existed then and the live list up to its quote.
    let prior: Option<State> = l.earlier.as_ref().and_then(|(n, st)| {
        let cuts: Vec<usize> = l.cuts.iter().copied().filter(|&c| c < *n).collect();
        let (segs, lfi) = segments(&l, &cuts, *n);
        let case = Case {
            endian,
            banks: &banks,
            segs: &segs,
            live_first_index: lfi,
            boot: Some(boot.clone()),
            chunk: plan.chunk,
        };
        let q1 = l.quote(st);
        let o = verify(&opts(Mode::FullHistory), case.evidence(), &q1, b"", None);
        let s = o.state.filter(|_| o.verdict.is_verified());
        let s = s.unwrap_or_else(|| panic!("the earlier honest round is rejected: {:?}", o.verdict));
        check_success(&s, &q1, &banks, *n as u64, "earlier round");
        l.check_honest(&s, 0..=*n as u64, "earlier round");
        Some(s)
    });

    let (mut segs, mut lfi) = segments(&l, &l.cuts, total);
    let mut q = q;
    let mut boot = boot;
    let honest = plan.tamper.is_empty();
    for t in plan.tamper.iter().take(4) {
        tamper(t, &mut segs, &mut lfi, &mut q, &mut boot);
    }
    let case = Case { endian, banks: &banks, segs: &segs, live_first_index: lfi, boot: Some(boot), chunk: plan.chunk };

    let full = verify(&opts(Mode::FullHistory), case.evidence(), &q, b"", None);
    if let (true, Some(st)) = (full.verdict.is_verified(), &full.state) {
        check_success(st, &q, &banks, total as u64, "full history");
        assert!(st.history_verified);
        independent_replay(&case, st, &q);
    } else {
        assert!(full.state.is_none(), "a failure saves no state");
    }
    if honest {
        let st = full.state.as_ref().unwrap_or_else(|| panic!("honest log rejected: {:?}", full.verdict));
        l.check_honest(st, lfi..=qpos as u64, "honest full history");
    }

    let latest = verify(&opts(Mode::LatestSegment), case.evidence(), &q, b"", None);
    match (&latest.verdict.is_verified(), &latest.state) {
        // Latest segment trusts the host's numbering of the live list (history unverified).
        (true, Some(st)) => check_success(st, &q, &banks, lfi.saturating_add(total as u64), "latest segment"),
        (false, s) => assert!(s.is_none()),
        (true, None) => panic!("verified without a state"),
    }
    if honest {
        let st = latest.state.as_ref().filter(|_| latest.verdict.is_verified());
        let st = st.unwrap_or_else(|| panic!("honest log, latest segment: {:?}", latest.verdict));
        l.check_honest(st, lfi..=qpos as u64, "honest latest segment");
    }

    let inc = verify(&opts(Mode::Incremental), case.evidence(), &q, b"", prior.as_ref());
    match (inc.verdict.is_verified(), &inc.state) {
        (true, Some(st)) => check_success(st, &q, &banks, lfi.saturating_add(total as u64), "incremental"),
        (false, s) => assert_eq!(s.as_ref(), prior.as_ref(), "a failure keeps the prior state"),
        (true, None) => panic!("verified without a state"),
    }
    if honest {
        let st = inc.state.as_ref().filter(|_| inc.verdict.is_verified());
        let st = st.unwrap_or_else(|| panic!("honest log, incremental from {prior:?}: {:?}", inc.verdict));
        let from = prior.as_ref().map_or(0, |p| p.checkpoint);
        l.check_honest(st, from..=qpos as u64, "honest incremental");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = Plan::arbitrary_take_rest(Unstructured::new(data)) {
        run(plan);
    }
});
