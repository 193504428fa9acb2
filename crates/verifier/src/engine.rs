//! The verification engine (DESIGN §4.6): evidence + saved state in, verdict + new state
//! out. Single pass over the segments, record by record, in bounded batches.
//!
//! Trust model: only two things are facts — the authenticated quote and the verifier's
//! own saved [`State`]. Everything else (indices, manifest, marker contents, the bundle's
//! bank list) is a claim that the hash chain from a proven start to the quoted values
//! either confirms or refutes. A record sequence that extends a proven state to the quoted
//! state is the true one; markers and manifests only let us fail early and precisely.

use crate::evidence::{Evidence, Input, SnapshotClaim};
use crate::quote::{AttestedQuote, QuoteEvidence};
use crate::reason::{Failure, Segment};
use crate::state::{BootIdentity, State};
use imasnap_log::marker::{Marker, EVENT_NAME as MARKER_NAME};
use imasnap_log::replay::NUM_PCRS;
use imasnap_log::template::{Field, FieldId, TemplateCache};
use imasnap_log::{BinaryFormat, BinaryReader, Endian, HashAlgo, PcrState, PcrTarget, PcrValue, Record};
use imasnap_log::{ReplayOptions, Replayer};
use sha2::Digest as _;
use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

/// PCRs whose quoted values every marker and boot_aggregate is checked against.
const PLATFORM_PCRS: u32 = 10;
/// Largest record index or count a claim may name (2^48 records is ~100 PB of log).
/// Bounds all index arithmetic, so no claim can overflow it.
pub const MAX_INDEX: u64 = 1 << 48;

/// What to verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Replay from record 0 through every snapshot and the live list.
    FullHistory,
    /// Start from the marker heading the live list; history is not verified.
    LatestSegment,
    /// Continue from the saved state; full history on a cold boot or without state.
    Incremental,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Banks the evidence must be replayed in (and quoted in), whatever the bundle says.
    pub required_banks: Vec<HashAlgo>,
    /// Records per replay batch: bounds memory, and the granularity of the parallel hash.
    pub batch: usize,
    /// Hash template digests of a batch on several threads.
    pub parallel: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { mode: Mode::Incremental, required_banks: Vec::new(), batch: 4096, parallel: true }
    }
}

impl Options {
    pub fn new(mode: Mode) -> Self {
        Self { mode, ..Self::default() }
    }
}

/// Why an incremental verification started over from record 0.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// No saved state for this host.
    NoState,
    /// The quote's resetCount differs: a cold boot.
    ResetCountChanged { saved: u64, quoted: u64 },
    /// Record 0 differs from the saved boot_aggregate: another boot.
    BootAggregateChanged,
    /// The saved state is in other banks than the evidence.
    BanksChanged,
}

/// What the engine did, success or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Mode actually run (an incremental request may run full history).
    pub mode: Option<Mode>,
    pub restart: Option<Restart>,
    /// Records whose template digests were hashed and extended, up to the quote match.
    pub records_replayed: u64,
    /// Records before the checkpoint that were decoded but not hashed.
    pub records_skipped: u64,
    /// Snapshots with at least one replayed record.
    pub snapshots_replayed: u64,
    /// Snapshots entirely before the checkpoint (or ignored in latest-segment mode).
    pub snapshots_skipped: u64,
    /// End markers of skipped snapshots that were read (structure and claims only).
    pub end_markers_read: u64,
    /// Markers checked against the replay and the quote.
    pub markers_checked: u64,
    /// boot_aggregate records after record 0 (kexec'd kernels).
    pub kexecs: u64,
    /// Records after the quote match: not verified yet, carried over to the next run.
    pub tail_records: u64,
    /// Global index after which the replay equals the quote (the new checkpoint).
    pub quote_matched_at: Option<u64>,
    pub reset_count: Option<u64>,
}

/// The engine's judgement.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every record up to the checkpoint is proven by the quote. `history_verified` is
    /// false when verification started from a marker rather than from record 0.
    Verified {
        history_verified: bool,
    },
    Rejected {
        failure: Failure,
    },
}

impl Verdict {
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified { .. })
    }
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Rejected { failure } => Some(failure),
            Self::Verified { .. } => None,
        }
    }
}

/// Verdict, report, and the state to save. On rejection the state is the prior one,
/// unchanged: nothing unproven is ever saved.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub report: Report,
    pub state: Option<State>,
}

/// Verifies `evidence` against `quote` (which must answer `nonce`, the verifier's own
/// challenge), continuing from `prior` in incremental mode. Never panics.
pub fn verify(
    opts: &Options,
    evidence: Evidence<'_>,
    quote: &dyn QuoteEvidence,
    nonce: &[u8],
    prior: Option<&State>,
) -> Outcome {
    let mut report = Report::default();
    match run(opts, evidence, quote, nonce, prior, &mut report) {
        Ok(state) => Outcome {
            verdict: Verdict::Verified { history_verified: state.history_verified },
            report,
            state: Some(state),
        },
        Err(failure) => Outcome { verdict: Verdict::Rejected { failure }, report, state: prior.cloned() },
    }
}

// ---------------------------------------------------------------------------------------
// Quote facts

/// Authenticated quote content the replay is judged against.
struct Quoted {
    reset_count: u64,
    /// Proven value of every selected PCR, any bank.
    values: Vec<(HashAlgo, [Option<PcrValue>; NUM_PCRS])>,
    target: PcrTarget,
    /// PCRs selected in every replayed bank.
    mask: u32,
}

impl Quoted {
    fn get(&self, bank: HashAlgo, pcr: usize) -> Option<PcrValue> {
        self.values.iter().find(|(b, _)| *b == bank).and_then(|(_, v)| v.get(pcr).copied().flatten())
    }
}

fn authenticate(quote: &dyn QuoteEvidence, nonce: &[u8], banks: &[HashAlgo], pcr: u32) -> Result<Quoted, Failure> {
    let aq: Box<dyn AttestedQuote + '_> = quote.authenticate(nonce)?;
    for &bank in banks {
        for p in (0..PLATFORM_PCRS).chain([pcr]) {
            if !aq.selects(bank, p) {
                return Err(Failure::QuoteSelectionMissing { bank, pcr: p });
            }
        }
    }
    aq.check_pcrs(&|b, p| quote.pcr_value_hint(b, p))?;
    let mut values = Vec::new();
    let mut target = PcrTarget::default();
    for bank in HashAlgo::ALL {
        let mut v = [None; NUM_PCRS];
        for (p, slot) in v.iter_mut().enumerate() {
            if aq.selects(bank, p as u32) {
                // check_pcrs confirmed every selected value, so the hint is now a fact.
                *slot = quote.pcr_value_hint(bank, p as u32).filter(|x| x.algo() == bank);
            }
        }
        if v.iter().any(Option::is_some) {
            if banks.contains(&bank) {
                let t = target.values.entry(bank).or_default();
                for (p, x) in v.iter().enumerate() {
                    if let Some(x) = x {
                        t.insert(p, *x);
                    }
                }
            }
            values.push((bank, v));
        }
    }
    let mut mask = 0u32;
    for p in 0..NUM_PCRS as u32 {
        if banks.iter().all(|&b| aq.selects(b, p)) {
            mask |= 1 << p;
        }
    }
    Ok(Quoted { reset_count: aq.reset_count(), values, target, mask })
}

// ---------------------------------------------------------------------------------------
// Reading segments

/// Passes bytes through while hashing them (the manifest's file digest).
struct Hashing<'a> {
    inner: Input<'a>,
    h: Rc<RefCell<sha2::Sha256>>,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A reader claiming more than it was given is clamped, never trusted.
        let n = self.inner.read(buf)?.min(buf.len());
        if let Some(b) = buf.get(..n) {
            self.h.borrow_mut().update(b);
        }
        Ok(n)
    }
}

/// One segment's records, decoded one at a time.
struct SegReader<'a> {
    id: Segment,
    rd: BinaryReader<Hashing<'a>>,
    h: Rc<RefCell<sha2::Sha256>>,
    peeked: Option<Record>,
    /// Records decoded so far.
    count: u64,
}

impl<'a> SegReader<'a> {
    fn open(id: Segment, input: Input<'a>, endian: Endian, first_index: u64) -> Self {
        let h = Rc::new(RefCell::new(sha2::Sha256::new()));
        let fmt = BinaryFormat { endian, ..BinaryFormat::new(HashAlgo::Sha1) };
        let rd = BinaryReader::starting_at(Hashing { inner: input, h: h.clone() }, fmt, first_index);
        Self { id, rd, h, peeked: None, count: 0 }
    }

    fn read(&mut self) -> Result<Option<Record>, Failure> {
        match self.rd.next() {
            None => Ok(None),
            Some(Ok(r)) => {
                self.count += 1;
                Ok(Some(r))
            }
            Some(Err(e)) => {
                Err(Failure::Malformed { segment: self.id, index: e.at.record, offset: e.at.offset, reason: e.reason })
            }
        }
    }

    fn next(&mut self) -> Result<Option<Record>, Failure> {
        match self.peeked.take() {
            Some(r) => Ok(Some(r)),
            None => self.read(),
        }
    }

    fn peek(&mut self) -> Result<Option<&Record>, Failure> {
        if self.peeked.is_none() {
            self.peeked = self.read()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// sha256 of every byte read; call at end of input.
    fn digest(&self) -> [u8; 32] {
        self.h.borrow().clone().finalize().into()
    }
}

/// A segment before it is opened.
struct Seg<'a> {
    id: Segment,
    claim: Option<SnapshotClaim>,
    first_index: u64,
    input: Option<Input<'a>>,
    opened: Option<SegReader<'a>>,
}

impl<'a> Seg<'a> {
    fn seq(&self) -> u64 {
        self.claim.as_ref().map_or(0, |c| c.seq)
    }
    /// Only the first record (a skipped snapshot's head), read with the fewest bytes: in
    /// place for a byte slice, in small growing reads from a reader. Nothing is hashed, so
    /// crossing a snapshot costs the same whatever its size.
    fn first_record_only(&mut self, endian: Endian, index: u64) -> Result<Option<Record>, Failure> {
        if let Some(mut rd) = self.opened.take() {
            return rd.next();
        }
        let Some(input) = self.input.take() else {
            return Ok(None);
        };
        let fmt = BinaryFormat { endian, ..BinaryFormat::new(HashAlgo::Sha1) };
        let seg = self.id;
        let err = |(offset, reason)| Failure::Malformed { segment: seg, index, offset, reason };
        let mut cache = TemplateCache::default();
        let mut slot = None;
        let decode = |buf: &[u8], eof: bool, cache: &mut TemplateCache, slot: &mut Option<Record>| match fmt
            .decode(buf, cache, slot)
            .map_err(err)?
        {
            Some(_) => Ok(true),
            None if eof && buf.is_empty() => Ok(true),
            None if eof => Err(err(fmt.truncation(buf))),
            None => Ok(false),
        };
        match input {
            Input::Bytes(b) => {
                decode(b, true, &mut cache, &mut slot)?;
            }
            Input::Reader(mut r) => {
                let mut buf = Vec::new();
                let mut want = 4096usize;
                loop {
                    let mut eof = false;
                    while buf.len() < want {
                        let start = buf.len();
                        buf.resize(want, 0);
                        let n = loop {
                            match r.read(&mut buf[start..]) {
                                Ok(n) => break n.min(want - start),
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                                Err(e) => {
                                    return Err(err((start as u64, imasnap_log::Reason::Io(e.to_string()))));
                                }
                            }
                        };
                        buf.truncate(start + n);
                        if n == 0 {
                            eof = true;
                            break;
                        }
                    }
                    if decode(&buf, eof, &mut cache, &mut slot)? {
                        break;
                    }
                    // The codec refuses absurd lengths before asking for more, so this stays
                    // bounded by one legitimate record.
                    want = want.saturating_mul(2);
                }
            }
        }
        Ok(slot)
    }

    /// Opens the segment, naming its first record `index` in errors; `None` when its
    /// bytes were not supplied.
    fn take_reader(&mut self, endian: Endian, index: u64) -> Option<SegReader<'a>> {
        if let Some(r) = self.opened.take() {
            return Some(r);
        }
        self.input.take().map(|i| SegReader::open(self.id, i, endian, index))
    }
}

// ---------------------------------------------------------------------------------------
// Record classification

enum Kind {
    Ordinary,
    BootAggregate,
    Marker(Marker),
}

/// The event name (`n`/`n-ng` without NUL), without allocating.
fn event_name(rec: &Record, endian: Endian) -> Result<Option<&[u8]>, imasnap_log::Reason> {
    let Some(pos) = rec.template.fields().iter().position(|f| matches!(f, FieldId::N | FieldId::NNg)) else {
        return Ok(None);
    };
    let mut i = 0;
    let mut out = None;
    rec.template.walk(&rec.template_data, endian, |f| {
        if i == pos {
            out = Some(f);
        }
        i += 1;
    })?;
    Ok(out.map(|n| n.strip_suffix(&[0]).unwrap_or(n)))
}

/// Recognises markers (strictly: a record named snapshot_aggregate is never ordinary)
/// and boot_aggregates.
fn classify(rec: &Record, endian: Endian, pcr: u32, index: u64, seg: Segment) -> Result<Kind, Failure> {
    let name =
        event_name(rec, endian).map_err(|reason| Failure::Malformed { segment: seg, index, offset: 0, reason })?;
    match name {
        Some(b"boot_aggregate") => Ok(Kind::BootAggregate),
        Some(n) if n == MARKER_NAME.as_bytes() => parse_marker(rec, endian, pcr, index).map(Kind::Marker),
        _ => Ok(Kind::Ordinary),
    }
}

fn parse_marker(rec: &Record, endian: Endian, pcr: u32, index: u64) -> Result<Marker, Failure> {
    let bad = |detail: String| Failure::MalformedMarker { index, detail };
    if rec.template.name() != "ima-buf" {
        return Err(bad(format!("template {:?}, want ima-buf", rec.template.name())));
    }
    if rec.pcr != pcr {
        return Err(bad(format!("in PCR {}, want the measurement PCR {pcr}", rec.pcr)));
    }
    if rec.is_violation() {
        return Err(bad("recorded as a violation".into()));
    }
    let fields = rec.fields(endian).map_err(|e| bad(e.to_string()))?;
    let (Some(d), Some(buf)) = (fields.first(), fields.get(2)) else {
        return Err(bad("ima-buf record without its fields".into()));
    };
    let m = Marker::parse(buf).map_err(bad)?;
    match rec.template.field(0, d, endian).map_err(|e| bad(e.to_string()))? {
        Field::Digest { algo: Some(a), digest, .. } => {
            let algo = HashAlgo::from_name(a).ok_or_else(|| bad(format!("d-ng uses unknown hash {a:?}")))?;
            if algo.hash(&[buf]).as_bytes() != digest {
                return Err(Failure::MarkerBufDigestMismatch { index });
            }
        }
        _ => return Err(bad("no d-ng digest".into())),
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// The replay engine

/// Claims of the snapshot just read, checked once its end marker has been proven.
struct Pending {
    claim: SnapshotClaim,
    count: u64,
    digest: [u8; 32],
    /// Whether the whole file was read (crossed snapshots are not).
    read_all: bool,
}

struct Engine<'r> {
    ropts: ReplayOptions,
    banks: Vec<HashAlgo>,
    pcr: u32,
    endian: Endian,
    batch_size: usize,
    quoted: Quoted,
    replayer: Replayer,
    batch: Vec<Record>,
    /// Global index of the next record to enter the batch.
    next: u64,
    segment: Segment,
    armed: bool,
    matched: Option<(u64, PcrState)>,
    last_attempt: Option<u64>,
    boot_aggregate: Option<[u8; 20]>,
    verified_snapshots: u64,
    report: &'r mut Report,
}

impl<'r> Engine<'r> {
    fn new(
        opts: &Options,
        banks: Vec<HashAlgo>,
        pcr: u32,
        endian: Endian,
        quoted: Quoted,
        report: &'r mut Report,
    ) -> Self {
        let mut ropts = ReplayOptions::new(&banks);
        ropts.endian = endian;
        ropts.parallel = opts.parallel;
        let replayer = Replayer::new(ropts.clone());
        Self {
            ropts,
            banks,
            pcr,
            endian,
            batch_size: opts.batch.clamp(1, 1 << 16),
            quoted,
            replayer,
            batch: Vec::new(),
            next: 0,
            segment: Segment::Live,
            armed: false,
            matched: None,
            last_attempt: None,
            boot_aggregate: None,
            verified_snapshots: 0,
            report,
        }
    }

    /// Restarts the replay from a proven (or, in latest-segment mode, marker) state.
    fn start_at(&mut self, state: PcrState, index: u64) {
        self.replayer = Replayer::resume(self.ropts.clone(), state, index);
        self.next = index;
    }

    fn done(&self) -> bool {
        self.matched.is_some()
    }

    /// Replays the pending batch. Afterwards the replayer's state is exact at `self.next`,
    /// or the quote has matched somewhere in the batch.
    fn flush(&mut self) -> Result<(), Failure> {
        if self.batch.is_empty() || self.done() {
            self.batch.clear();
            return Ok(());
        }
        let start = self.replayer.next_index();
        let start_state = self.replayer.state();
        let fresh = Replayer::resume(self.ropts.clone(), PcrState::new(&self.banks), 0);
        let mut r = std::mem::replace(&mut self.replayer, fresh);
        let pushed = r.push_batch(&self.batch);
        let rep = r.finish();
        let matched = if self.armed { rep.matched_after } else { None };
        let cut = matched.unwrap_or(u64::MAX);
        // The earliest problem before the match wins; records after it are carried over.
        let mut fail: Option<(u64, Failure)> = None;
        if let Some(&i) = rep.template_digest_mismatches.first() {
            if i < cut {
                fail = Some((i, Failure::TemplateDigestMismatch { index: i }));
            }
        }
        if let Err(e) = pushed {
            let i = e.at.record;
            if i < cut && fail.as_ref().is_none_or(|(j, _)| i < *j) {
                fail = Some((
                    i,
                    Failure::Malformed { segment: self.segment, index: i, offset: e.at.offset, reason: e.reason },
                ));
            }
        }
        if let Some((_, f)) = fail {
            return Err(f);
        }
        let end_state = rep.state().clone();
        if let Some(m) = matched {
            let n = m.saturating_sub(start) as usize;
            let state = if m == rep.next_index {
                end_state
            } else {
                // Exact state at the match: re-run the batch prefix (at most one batch).
                let mut r2 = Replayer::resume(self.ropts.clone(), start_state, start);
                let _ = r2.push_batch(self.batch.get(..n).unwrap_or(&[]));
                r2.finish().state().clone()
            };
            self.report.records_replayed += n as u64;
            self.report.tail_records += rep.next_index.saturating_sub(m);
            self.report.quote_matched_at = Some(m);
            self.matched = Some((m, state));
        } else {
            self.report.records_replayed += self.batch.len() as u64;
            self.replayer = Replayer::resume(self.ropts.clone(), end_state, rep.next_index);
            if self.armed {
                self.replayer.set_target(&self.quoted.target);
            }
        }
        self.batch.clear();
        Ok(())
    }

    /// From here on, the replay is compared with the quote after every record.
    fn arm(&mut self) -> Result<(), Failure> {
        self.flush()?;
        if self.done() || self.armed {
            return Ok(());
        }
        self.armed = true;
        let state = self.replayer.state();
        let matches = state.touched().next().is_some()
            && self.banks.iter().all(|&b| state.touched().all(|p| state.get(b, p).copied() == self.quoted.get(b, p)));
        if matches {
            self.report.quote_matched_at = Some(self.next);
            self.matched = Some((self.next, state));
        } else {
            self.replayer.set_target(&self.quoted.target);
        }
        Ok(())
    }

    fn push(&mut self, rec: Record) -> Result<(), Failure> {
        self.batch.push(rec);
        self.next += 1;
        if self.batch.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    /// An ordinary position in the log: markers and boot_aggregates are checked, the rest
    /// is batched for replay.
    fn on_record(&mut self, rec: Record) -> Result<(), Failure> {
        let idx = self.next;
        if self.quoted.mask & (1u32 << rec.pcr.min(31)) == 0 {
            self.flush()?;
            if self.done() {
                self.report.tail_records += 1;
                return Ok(());
            }
            return Err(Failure::UnquotedPcr { index: idx, pcr: rec.pcr });
        }
        let kind = classify(&rec, self.endian, self.pcr, idx, self.segment);
        if let Ok(Kind::Ordinary) = kind {
            return self.push(rec);
        }
        // Everything before a special record is replayed first, so the earliest failure
        // is the one reported and marker checks see the exact state.
        self.flush()?;
        if self.done() {
            self.report.tail_records += 1;
            return Ok(());
        }
        match kind? {
            Kind::Marker(m) => self.check_marker(idx, &rec, &m, None)?,
            Kind::BootAggregate => self.check_boot_aggregate(idx, &rec)?,
            Kind::Ordinary => {}
        }
        self.push(rec)
    }

    fn check_marker_shape(&self, idx: u64, rec: &Record, m: &Marker) -> Result<(), Failure> {
        // The stored SHA1 digest identifies the marker (manifest end_marker): prove it.
        if HashAlgo::Sha1.hash(&[&rec.template_data]).as_bytes() != rec.digest.as_slice() {
            return Err(Failure::TemplateDigestMismatch { index: idx });
        }
        let listed: Vec<HashAlgo> = m.banks.iter().map(|(a, _)| *a).collect();
        if let Some(b) = self.banks.iter().find(|b| !listed.contains(b)) {
            return Err(Failure::MarkerBankMismatch { index: idx, detail: format!("marker lacks bank {b}") });
        }
        if let Some(b) = listed.iter().find(|b| !self.banks.contains(b)) {
            return Err(Failure::MarkerBankMismatch {
                index: idx,
                detail: format!("marker lists bank {b}, which the evidence does not replay"),
            });
        }
        for (bank, vals) in &m.banks {
            for (p, v) in vals.iter().enumerate().take(PLATFORM_PCRS as usize) {
                if self.quoted.get(*bank, p) != Some(*v) {
                    return Err(Failure::MarkerPlatformMismatch { index: idx, bank: *bank, pcr: p as u32 });
                }
            }
        }
        Ok(())
    }

    /// Full check of a marker at `idx` against the replay state just before it.
    /// `boundary`: the snapshot it ends, if it heads a file or the live list.
    fn check_marker(&mut self, idx: u64, rec: &Record, m: &Marker, boundary: Option<u64>) -> Result<(), Failure> {
        self.check_marker_shape(idx, rec, m)?;
        if let Some(prev) = self.last_attempt {
            if m.attempt <= prev {
                return Err(Failure::AttemptNotIncreasing { index: idx, attempt: m.attempt, previous: prev });
            }
        }
        let state = self.replayer.state();
        for p in state.touched() {
            for &bank in &self.banks {
                let want = state.get(bank, p);
                let got = m.bank(bank).and_then(|v| v.get(p));
                if want != got {
                    let pcr = p as u32;
                    return Err(match boundary {
                        Some(seq) => Failure::SnapshotEndMismatch { seq, index: idx, bank, pcr },
                        None => Failure::MarkerPcrMismatch { index: idx, bank, pcr },
                    });
                }
            }
        }
        self.last_attempt = Some(m.attempt);
        self.report.markers_checked += 1;
        Ok(())
    }

    fn check_boot_aggregate(&mut self, idx: u64, rec: &Record) -> Result<(), Failure> {
        let bad = |detail: String| Failure::BootAggregateMismatch { index: idx, detail };
        if rec.pcr != self.pcr {
            return Err(bad(format!("in PCR {}, want {}", rec.pcr, self.pcr)));
        }
        let quoted = |algo: HashAlgo| -> Option<Vec<PcrValue>> {
            (0..PLATFORM_PCRS as usize).map(|p| self.quoted.get(algo, p)).collect()
        };
        imasnap_log::digest::check_boot_aggregate(rec, self.endian, quoted).map_err(bad)?;
        if idx == 0 {
            self.boot_aggregate = <[u8; 20]>::try_from(rec.digest.as_slice()).ok();
        } else {
            // A kexec'd kernel: its snapshot attempt counter starts over.
            self.last_attempt = None;
            self.report.kexecs += 1;
        }
        Ok(())
    }

    /// The first record of a segment that follows snapshot `prev`: its end marker.
    fn on_boundary(&mut self, rec: Record, prev: &Pending, live: bool) -> Result<(), Failure> {
        let idx = self.next;
        self.flush()?;
        if self.done() {
            return Ok(());
        }
        let seq = prev.claim.seq;
        let not_marker = || {
            if live {
                Failure::LiveStartNotMarker { index: idx }
            } else {
                Failure::MissingEndMarker { seq, index: idx }
            }
        };
        if self.quoted.mask & (1u32 << rec.pcr.min(31)) == 0 {
            return Err(not_marker());
        }
        let m = match classify(&rec, self.endian, self.pcr, idx, self.segment)? {
            Kind::Marker(m) => m,
            _ => return Err(not_marker()),
        };
        self.check_marker(idx, &rec, &m, Some(seq))?;
        self.check_claims(prev, idx, &rec, &m)?;
        self.verified_snapshots += 1;
        self.push(rec)
    }

    /// The manifest's claims about snapshot `p`, now that the record after it is known.
    fn check_claims(&self, p: &Pending, idx: u64, rec: &Record, m: &Marker) -> Result<(), Failure> {
        let seq = p.claim.seq;
        if p.read_all {
            if p.count != p.claim.count {
                return Err(Failure::ManifestCountMismatch { seq, claimed: p.claim.count, actual: p.count });
            }
            if let Some(want) = p.claim.sha256 {
                if want != p.digest {
                    return Err(Failure::ManifestDigestMismatch {
                        seq,
                        claimed: hex::encode(want),
                        actual: hex::encode(p.digest),
                    });
                }
            }
        }
        check_end_marker_claim(&p.claim, idx, rec, m)?;
        if p.read_all {
            let state = self.replayer.state();
            for v in &p.claim.pcrs_end {
                if state.get(v.algo(), self.pcr as usize) != Some(v) {
                    return Err(Failure::ManifestPcrsEndMismatch { seq, bank: v.algo() });
                }
            }
        }
        Ok(())
    }

    /// Replays the rest of a segment; stops at the quote match, then counts the tail.
    fn drain(&mut self, rd: &mut SegReader<'_>) -> Result<(), Failure> {
        while !self.done() {
            match rd.next()? {
                Some(rec) => self.on_record(rec)?,
                None => return self.flush(),
            }
        }
        while rd.next()?.is_some() {
            self.report.tail_records += 1;
        }
        Ok(())
    }

    fn finish(self, history_verified: bool) -> Result<State, Failure> {
        let Some((checkpoint, pcrs)) = self.matched else {
            let state = self.replayer.state();
            let (bank, pcr) = state
                .touched()
                .flat_map(|p| self.banks.iter().map(move |&b| (b, p)))
                .find(|&(b, p)| state.get(b, p).copied() != self.quoted.get(b, p))
                .unwrap_or((self.banks.first().copied().unwrap_or(HashAlgo::Sha1), self.pcr as usize));
            return Err(Failure::QuoteNotReached { records: self.next, bank, pcr: pcr as u32 });
        };
        Ok(State {
            boot: BootIdentity { reset_count: self.quoted.reset_count, boot_aggregate_sha1: self.boot_aggregate },
            checkpoint,
            pcrs,
            verified_snapshots: self.verified_snapshots,
            last_attempt: self.last_attempt,
            history_verified,
        })
    }
}

fn check_end_marker_claim(claim: &SnapshotClaim, idx: u64, rec: &Record, m: &Marker) -> Result<(), Failure> {
    if let Some(em) = &claim.end_marker {
        let detail = if em.attempt != m.attempt {
            Some(format!("attempt {} found, manifest says {}", m.attempt, em.attempt))
        } else if em.sha1.as_slice() != rec.digest.as_slice() {
            Some(format!("digest {} found, manifest says {}", hex::encode(&rec.digest), hex::encode(em.sha1)))
        } else {
            None
        };
        if let Some(detail) = detail {
            return Err(Failure::ManifestEndMarkerMismatch { seq: claim.seq, index: idx, detail });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Modes

fn validate(opts: &Options, ev: &Evidence<'_>) -> Result<(), Failure> {
    let bad = |detail: String| Err(Failure::BadEvidence { detail });
    if ev.banks.is_empty() {
        return bad("no banks to replay".into());
    }
    if ev.banks.len() > HashAlgo::ALL.len() {
        return bad(format!("{} banks listed", ev.banks.len()));
    }
    for (i, b) in ev.banks.iter().enumerate() {
        if ev.banks[..i].contains(b) {
            return bad(format!("bank {b} listed twice"));
        }
    }
    if let Some(b) = opts.required_banks.iter().find(|b| !ev.banks.contains(b)) {
        return bad(format!("bank {b} is required but the evidence is not in it"));
    }
    if ev.pcr as usize >= NUM_PCRS || ev.pcr < PLATFORM_PCRS {
        return bad(format!("measurement PCR {} is not one of 10-23", ev.pcr));
    }
    if ev.live_first_index > MAX_INDEX {
        return bad(format!("live_first_index {} exceeds {MAX_INDEX}", ev.live_first_index));
    }
    for s in &ev.snapshots {
        let c = &s.claim;
        if c.first_index > MAX_INDEX || c.count > MAX_INDEX {
            return bad(format!("snapshot {} claims a range beyond {MAX_INDEX}", c.seq));
        }
    }
    Ok(())
}

/// Self-consistency of the manifest's ranges (pure claims; cheap, before any replay).
fn check_ranges(snaps: &[Seg<'_>], live_first_index: u64) -> Result<(), Failure> {
    let mut expected = 0u64;
    for (i, s) in snaps.iter().enumerate() {
        let Some(c) = &s.claim else { continue };
        let want_seq = i as u64 + 1;
        if c.seq != want_seq {
            return Err(Failure::ManifestSeqGap { position: i, expected: want_seq, found: c.seq });
        }
        if c.first_index != expected {
            return Err(Failure::ManifestNotContiguous { seq: c.seq, claimed: c.first_index, expected });
        }
        if c.count == 0 {
            return Err(Failure::EmptySegment { segment: Segment::Snapshot(c.seq) });
        }
        expected = c.end_index();
    }
    if live_first_index != expected {
        return Err(Failure::LiveFirstIndexMismatch { claimed: live_first_index, expected });
    }
    Ok(())
}

fn run(
    opts: &Options,
    ev: Evidence<'_>,
    quote: &dyn QuoteEvidence,
    nonce: &[u8],
    prior: Option<&State>,
    report: &mut Report,
) -> Result<State, Failure> {
    validate(opts, &ev)?;
    let quoted = authenticate(quote, nonce, &ev.banks, ev.pcr)?;
    report.reset_count = Some(quoted.reset_count);
    if let Some(b) = &ev.boot {
        if b.reset_count != quoted.reset_count {
            return Err(Failure::ManifestBootMismatch {
                detail: format!("manifest says resetCount {}, the quote {}", b.reset_count, quoted.reset_count),
            });
        }
    }
    let Evidence { banks, pcr, endian, boot, snapshots, live, live_first_index } = ev;
    let mut segs: Vec<Seg<'_>> = snapshots
        .into_iter()
        .map(|s| Seg {
            id: Segment::Snapshot(s.claim.seq),
            first_index: s.claim.first_index,
            claim: Some(s.claim),
            input: s.data,
            opened: None,
        })
        .collect();
    segs.push(Seg { id: Segment::Live, claim: None, first_index: live_first_index, input: Some(live), opened: None });

    // Record 0, if supplied: boot identity and the manifest's boot claim. Peeked, not
    // consumed: the reader is kept for the replay.
    let mut record0: Option<[u8; 20]> = None;
    if let Some(first) = segs.first_mut().filter(|s| s.first_index == 0) {
        if let Some(mut rd) = first.take_reader(endian, 0) {
            record0 = rd.peek()?.and_then(|r| <[u8; 20]>::try_from(r.digest.as_slice()).ok());
            first.opened = Some(rd);
        }
    }
    if let (Some(b), Some(r0)) = (&boot, record0) {
        if b.boot_aggregate_sha1 != r0 {
            return Err(Failure::ManifestBootMismatch {
                detail: format!(
                    "manifest boot_aggregate {} is not record 0's {}",
                    hex::encode(b.boot_aggregate_sha1),
                    hex::encode(r0)
                ),
            });
        }
    }

    let eng = Engine::new(opts, banks, pcr, endian, quoted, report);
    match opts.mode {
        Mode::FullHistory => full(eng, segs),
        Mode::LatestSegment => latest(eng, segs),
        Mode::Incremental => {
            let restart = match prior {
                None => Some(Restart::NoState),
                Some(p) if p.boot.reset_count != eng.quoted.reset_count => {
                    Some(Restart::ResetCountChanged { saved: p.boot.reset_count, quoted: eng.quoted.reset_count })
                }
                Some(p) if !same_banks(p.pcrs.banks(), &eng.banks) => Some(Restart::BanksChanged),
                Some(p) => match (p.boot.boot_aggregate_sha1, record0) {
                    (Some(a), Some(b)) if a != b => Some(Restart::BootAggregateChanged),
                    _ => None,
                },
            };
            match (restart, prior) {
                (None, Some(p)) => incremental(eng, segs, p),
                (r, _) => {
                    eng.report.restart = r;
                    full(eng, segs)
                }
            }
        }
    }
}

fn same_banks(a: &[HashAlgo], b: &[HashAlgo]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Replays one whole segment whose head is record 0 (`prev` = None) or the end marker of
/// the snapshot `prev`; leaves this segment's claims in `prev`.
fn replay_segment(
    eng: &mut Engine<'_>,
    seg: &mut Seg<'_>,
    prev: &mut Option<Pending>,
    live: bool,
) -> Result<(), Failure> {
    let Some(mut rd) = seg.take_reader(eng.endian, eng.next) else {
        return Err(Failure::SnapshotMissing { seq: seg.seq() });
    };
    eng.segment = seg.id;
    let Some(first) = rd.next()? else {
        return Err(Failure::EmptySegment { segment: seg.id });
    };
    match prev.as_ref() {
        None => {
            if eng.next != 0 || !matches!(classify(&first, eng.endian, eng.pcr, 0, seg.id)?, Kind::BootAggregate) {
                return Err(Failure::FirstRecordNotBootAggregate { index: eng.next });
            }
            eng.on_record(first)?;
        }
        Some(p) => eng.on_boundary(first, p, live)?,
    }
    if live {
        eng.arm()?;
    } else {
        eng.report.snapshots_replayed += 1;
    }
    eng.drain(&mut rd)?;
    *prev = seg.claim.clone().map(|claim| Pending { claim, count: rd.count, digest: rd.digest(), read_all: true });
    Ok(())
}

/// Full history: record 0 through every snapshot and the live list.
fn full(mut eng: Engine<'_>, mut segs: Vec<Seg<'_>>) -> Result<State, Failure> {
    eng.report.mode = Some(Mode::FullHistory);
    let n = segs.len();
    let (snaps, live) = segs.split_at(n - 1);
    check_ranges(snaps, live.first().map_or(0, |l| l.first_index))?;
    if let Some(s) = snaps.iter().find(|s| s.input.is_none() && s.opened.is_none()) {
        return Err(Failure::SnapshotMissing { seq: s.seq() });
    }
    eng.start_at(PcrState::new(&eng.banks), 0);
    let mut prev = None;
    for (k, seg) in segs.iter_mut().enumerate() {
        replay_segment(&mut eng, seg, &mut prev, k + 1 == n)?;
    }
    eng.finish(true)
}

/// Latest segment only: the live list's head marker is the start state.
fn latest(mut eng: Engine<'_>, mut segs: Vec<Seg<'_>>) -> Result<State, Failure> {
    eng.report.mode = Some(Mode::LatestSegment);
    eng.report.snapshots_skipped = segs.len().saturating_sub(1) as u64;
    let Some(live) = segs.last_mut() else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    let start = live.first_index;
    eng.segment = Segment::Live;
    let Some(mut rd) = live.take_reader(eng.endian, start) else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    let Some(head) = rd.peek()? else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    let m = match classify(head, eng.endian, eng.pcr, start, Segment::Live)? {
        Kind::Marker(m) => m,
        Kind::BootAggregate if start == 0 => {
            // No snapshot was ever taken: the live list is the whole history.
            eng.report.snapshots_skipped = 0;
            eng.report.mode = Some(Mode::FullHistory);
            eng.start_at(PcrState::new(&eng.banks), 0);
            live.opened = Some(rd);
            let mut prev = None;
            replay_segment(&mut eng, live, &mut prev, true)?;
            return eng.finish(true);
        }
        _ => return Err(Failure::LiveStartNotMarker { index: start }),
    };
    let Some(head) = rd.next()? else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    eng.check_marker_shape(start, &head, &m)?;
    // The snapshot before the live list names its end marker, the head: an incremental run
    // from the state saved here checks that claim, so accepting it unchecked here verified
    // evidence that the next round rejects.
    if let Some(claim) = segs.iter().rev().nth(1).and_then(|s| s.claim.as_ref()) {
        check_end_marker_claim(claim, start, &head, &m)?;
    }
    let mut state = PcrState::new(&eng.banks);
    for &bank in &eng.banks {
        if let Some(vals) = m.bank(bank) {
            for (p, v) in vals.iter().enumerate() {
                state.set(p, *v);
            }
        }
    }
    state.mark_touched(eng.pcr as usize);
    eng.start_at(state, start);
    eng.last_attempt = Some(m.attempt);
    eng.report.markers_checked += 1;
    eng.push(head)?;
    eng.arm()?;
    eng.drain(&mut rd)?;
    eng.finish(false)
}

/// Incremental: replay only from the saved checkpoint. Snapshots before it cost one
/// decoded record each (their end marker); the one holding it is decoded, not hashed, up
/// to the checkpoint.
fn incremental(mut eng: Engine<'_>, mut segs: Vec<Seg<'_>>, prior: &State) -> Result<State, Failure> {
    eng.report.mode = Some(Mode::Incremental);
    let n = segs.len();
    check_ranges(&segs[..n - 1], segs[n - 1].first_index)?;
    let c = prior.checkpoint;
    let mut state = PcrState::new(&eng.banks);
    for &bank in &eng.banks {
        if let Some(vals) = prior.pcrs.bank(bank) {
            for (p, v) in vals.iter().enumerate() {
                state.set(p, *v);
            }
        }
    }
    for p in prior.pcrs.touched() {
        state.mark_touched(p);
    }
    eng.boot_aggregate = prior.boot.boot_aggregate_sha1;
    eng.verified_snapshots = prior.verified_snapshots;
    eng.last_attempt = prior.last_attempt;

    // 1. Snapshots entirely before the checkpoint.
    let mut k = 0;
    let mut prev: Option<Pending> = None;
    while k + 1 < n && segs[k].claim.as_ref().is_some_and(|cl| cl.end_index() <= c) {
        let seg = &mut segs[k];
        eng.segment = seg.id;
        eng.report.snapshots_skipped += 1;
        // segs[k] opens with the end marker of snapshot k-1. Snapshots an earlier run
        // verified are not even opened, so the cost follows new snapshots, not history;
        // a snapshot first seen now has its end marker read and checked.
        let seen_before = (k as u64) <= prior.verified_snapshots;
        if let (Some(p), false) = (&prev, seen_before) {
            if let Some(rec) = seg.first_record_only(eng.endian, seg.first_index)? {
                crossed_end_marker(&mut eng, p, seg.first_index, &rec)?;
            }
        }
        prev = seg.claim.clone().map(|claim| Pending { claim, count: 0, digest: [0; 32], read_all: false });
        k += 1;
    }

    // 2. The segment holding the checkpoint.
    let live = k + 1 == n;
    let seg = &mut segs[k];
    eng.segment = seg.id;
    let Some(mut rd) = seg.take_reader(eng.endian, seg.first_index) else {
        return Err(Failure::CheckpointNotInEvidence { checkpoint: c, seq: seg.seq() });
    };
    let skip = c.saturating_sub(seg.first_index);
    eng.start_at(state, c);
    if skip == 0 {
        let Some(first) = rd.next()? else {
            return Err(if live {
                Failure::LogRolledBack { checkpoint: c, end: c }
            } else {
                Failure::EmptySegment { segment: seg.id }
            });
        };
        match &prev {
            Some(p) => eng.on_boundary(first, p, live)?,
            None => {
                // A checkpoint at record 0 proves nothing yet.
                if !matches!(classify(&first, eng.endian, eng.pcr, 0, seg.id)?, Kind::BootAggregate) {
                    return Err(Failure::FirstRecordNotBootAggregate { index: 0 });
                }
                eng.on_record(first)?;
            }
        }
    } else {
        for i in 0..skip {
            let Some(rec) = rd.next()? else {
                return Err(match &seg.claim {
                    Some(cl) => Failure::ManifestCountMismatch { seq: cl.seq, claimed: cl.count, actual: rd.count },
                    None => Failure::LogRolledBack { checkpoint: c, end: seg.first_index.saturating_add(rd.count) },
                });
            };
            if i == 0 {
                if let Some(p) = &prev {
                    crossed_end_marker(&mut eng, p, seg.first_index, &rec)?;
                }
            }
        }
        eng.report.records_skipped += skip;
    }
    if live {
        eng.arm()?;
    } else {
        eng.report.snapshots_replayed += 1;
    }
    eng.drain(&mut rd)?;
    prev = seg.claim.clone().map(|claim| Pending { claim, count: rd.count, digest: rd.digest(), read_all: true });

    // 3. Everything after it, exactly as in full history.
    for (j, seg) in segs.iter_mut().enumerate().skip(k + 1) {
        replay_segment(&mut eng, seg, &mut prev, j + 1 == n)?;
    }
    eng.finish(prior.history_verified)
}

/// The end marker of a snapshot entirely before the checkpoint: structure, platform
/// values and the manifest's identity claim. Its values were proven by an earlier run.
fn crossed_end_marker(eng: &mut Engine<'_>, prev: &Pending, idx: u64, rec: &Record) -> Result<(), Failure> {
    // Crossing proven history: the marker's identity (its SHA1 template digest, as the
    // manifest names it) is enough. A full parse (~3 KB of hex) would prove nothing new
    // — the checkpoint state is already proven — and made cost grow with the number of
    // snapshots. Anything that does not match takes the full, precise path below.
    if let Some(em) = &prev.claim.end_marker {
        let named_marker = matches!(event_name(rec, eng.endian), Ok(Some(n)) if n == MARKER_NAME.as_bytes());
        if em.sha1.as_slice() == rec.digest.as_slice() && rec.template.name() == "ima-buf" && named_marker {
            eng.report.end_markers_read += 1;
            return Ok(());
        }
    }
    let m = match classify(rec, eng.endian, eng.pcr, idx, eng.segment)? {
        Kind::Marker(m) => m,
        _ => return Err(Failure::MissingEndMarker { seq: prev.claim.seq, index: idx }),
    };
    eng.check_marker_shape(idx, rec, &m)?;
    check_end_marker_claim(&prev.claim, idx, rec, &m)?;
    eng.report.end_markers_read += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::SnapshotEvidence;
    use crate::TrustedPcrs;
    use imasnap_log::entry::{build, builtin, d_ng, n_ng};

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

    fn run_live(log: &Log, q: &TrustedPcrs, mode: Mode, first: u64, live: &[u8]) -> Outcome {
        let ev = Evidence {
            banks: BANKS.to_vec(),
            pcr: 10,
            endian: log.endian,
            boot: None,
            snapshots: Vec::new(),
            live: Input::Bytes(live),
            live_first_index: first,
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
                            end_marker: None,
                            pcrs_end: vec![],
                        },
                        data: None,
                    }],
                    live: Input::Bytes(&live),
                    live_first_index: first,
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
            assert_eq!(o.verdict.failure(), Some(&Failure::EmptySegment { segment: Segment::Live }));
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
                end_marker: Some(crate::evidence::EndMarkerClaim { attempt: 1, sha1 }),
                pcrs_end: vec![],
            };
            let ev = Evidence {
                banks: BANKS.to_vec(),
                pcr: 10,
                endian: Endian::Little,
                boot: None,
                snapshots: vec![SnapshotEvidence { claim, data: None }],
                live: Input::Bytes(&live),
                live_first_index: 4,
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
}
