//! Quote-anchored checkpoints (docs/CHECKPOINTS.md): acceptance of each checkpoint, the
//! latest segment from the newest one, and full history as independent ranges between
//! consecutive checkpoints, verified in parallel.
//!
//! A checkpoint is accepted only if its quote is signed by the trusted AK over the
//! qualifyingData this verifier recomputes for its place in the chain, it was quoted in
//! the fresh quote's boot no later than the fresh quote, and (in the replay) the records
//! before it reach its PCR values exactly at its index.

use super::quoted::{self, Quoted};
use super::replay::Engine;
use super::segment::Seg;
use super::{full, incremental, prepare, CheckpointUse, Mode, Options, Outcome, RangeRef, Report, Verdict, MAX_INDEX};
use crate::evidence::Evidence;
use crate::quote::{same_key, QuoteEvidence, TpmQuote};
use crate::reason::Failure;
use crate::state::{BootIdentity, State};
use imasnap_log::PcrState;
use imasnap_tpm::AkPublic;
use imasnap_wire::{qualifying_data, BootClaim, CheckpointClaim};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A checkpoint whose quote is proven: its PCR values are facts at `index`.
#[derive(Clone)]
pub(super) struct Accepted {
    pub(super) seq: u64,
    pub(super) index: u64,
    pub(super) quoted: Quoted,
}

impl Accepted {
    /// The replay state at `index`: the measurement PCR as quoted (the only PCR the log
    /// extends; the platform PCRs are checked against the fresh quote, as in full history).
    fn state(&self, banks: &[imasnap_log::HashAlgo], pcr: u32) -> PcrState {
        let mut st = PcrState::new(banks);
        for &b in banks {
            if let Some(v) = self.quoted.get(b, pcr as usize) {
                st.set(pcr as usize, v);
            }
        }
        st.mark_touched(pcr as usize);
        st
    }
}

/// One checkpoint claim with where it sits: its segment's seq and end.
struct Link<'c> {
    seq: u64,
    seg_end: u64,
    claim: &'c CheckpointClaim,
}

fn links<'c>(segs: &'c [Seg<'_>]) -> Vec<Link<'c>> {
    segs.iter().filter_map(|s| Some(Link { seq: s.seq(), seg_end: s.end_index(), claim: s.checkpoint()? })).collect()
}

/// Checks the signature of checkpoint `i` of the chain over the qualifyingData this
/// verifier recomputes for its place, and reads its PCR values.
fn authenticate(
    chain: &[Link<'_>],
    i: usize,
    boot: &BootClaim,
    trusted: &AkPublic,
    banks: &[imasnap_log::HashAlgo],
    pcr: u32,
) -> Result<Quoted, Failure> {
    let Some(l) = chain.get(i) else {
        return Err(Failure::BadEvidence { detail: format!("no checkpoint {i}") });
    };
    let (seq, c) = (l.seq, l.claim);
    let prev = i.checked_sub(1).and_then(|j| chain.get(j)).map(|p| p.claim.quote.attest.as_slice());
    let qd = qualifying_data(boot.reset_count, &boot.boot_aggregate_sha1, seq, prev);
    let tq = TpmQuote { quote: &c.quote, trusted_ak: trusted, claimed_ak: None };
    quoted::authenticate(&tq, &qd, banks, pcr).map_err(|f| match f {
        Failure::QuoteNonceMismatch { found, .. } => Failure::CheckpointChainMismatch {
            seq,
            detail: format!("the quote names {found}, not segment {seq} after its predecessor in this boot"),
        },
        Failure::QuotePcrDigestMismatch { detail } => Failure::CheckpointPcrs { seq, detail },
        Failure::QuoteSelectionMissing { bank, pcr } => {
            Failure::CheckpointPcrs { seq, detail: format!("{bank} PCR {pcr} is not quoted") }
        }
        other => Failure::CheckpointBadSignature { seq, detail: other.to_string() },
    })
}

/// [`authenticate`] for every checkpoint of the chain, on up to `jobs` threads. Pure: the
/// checks in chain order then take each result in turn, so the first failure reported is
/// the same as when each signature is checked only once the checks before it passed.
fn authenticate_all(
    chain: &[Link<'_>],
    boot: &BootClaim,
    trusted: &AkPublic,
    banks: &[imasnap_log::HashAlgo],
    pcr: u32,
    jobs: usize,
) -> Vec<Option<Result<Quoted, Failure>>> {
    let n = chain.len();
    let mut out: Vec<Option<Result<Quoted, Failure>>> = (0..n).map(|_| None).collect();
    let jobs = jobs.clamp(1, 256).min(n);
    if jobs < 2 {
        return out;
    }
    let per = n.div_ceil(jobs).max(1);
    std::thread::scope(|s| {
        for (k, part) in out.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (j, slot) in part.iter_mut().enumerate() {
                    *slot = Some(authenticate(chain, k * per + j, boot, trusted, banks, pcr));
                }
            });
        }
    });
    out
}

/// Accepts the checkpoints of the chain (only the newest when `only_newest`: the others
/// then only supply the previous quote its qualifyingData names). In chain order. With
/// `jobs` > 1 (and not `only_newest`), the signatures are checked on that many threads first.
#[allow(clippy::too_many_arguments)]
fn accept(
    chain: &[Link<'_>],
    boot: &BootClaim,
    trusted: &AkPublic,
    fresh: &Quoted,
    banks: &[imasnap_log::HashAlgo],
    pcr: u32,
    only_newest: bool,
    jobs: usize,
) -> Result<Vec<Accepted>, Failure> {
    let mut out: Vec<Accepted> = Vec::new();
    let n = chain.len();
    let mut pre = if only_newest { Vec::new() } else { authenticate_all(chain, boot, trusted, banks, pcr, jobs) };
    for (i, l) in chain.iter().enumerate() {
        if only_newest && i + 1 < n {
            continue;
        }
        let seq = l.seq;
        let c = l.claim;
        let bad_index = |detail: &str| Err(Failure::CheckpointIndex { seq, index: c.index, detail: detail.into() });
        if c.index > MAX_INDEX {
            return bad_index("exceeds the largest index");
        }
        if c.index < l.seg_end {
            return bad_index("is before the end of its own segment");
        }
        if let Some(p) = out.last() {
            if c.index < p.index {
                return bad_index("is before the previous checkpoint's");
            }
        }
        if !same_key(&c.ak, trusted) {
            return Err(Failure::CheckpointAkMismatch {
                seq,
                detail: format!("{} key, not the trusted one", c.ak.kind()),
            });
        }
        let q = match pre.get_mut(i).and_then(Option::take) {
            Some(r) => r?,
            None => authenticate(chain, i, boot, trusted, banks, pcr)?,
        };
        if q.reset_count != fresh.reset_count {
            return Err(Failure::CheckpointOtherBoot { seq, reset_count: q.reset_count, quoted: fresh.reset_count });
        }
        if let (Some(cl), Some(fl)) = (q.clock, fresh.clock) {
            if cl > fl {
                return Err(Failure::CheckpointClock {
                    seq,
                    clock: cl,
                    later_than: fl,
                    what: "the fresh quote".into(),
                });
            }
        }
        if let (Some(cl), Some(pl)) = (q.clock, out.last().and_then(|p| p.quoted.clock)) {
            if cl < pl {
                return Err(Failure::CheckpointClock {
                    seq: out.last().map_or(seq, |p| p.seq),
                    clock: pl,
                    later_than: cl,
                    what: format!("the next checkpoint (segment {seq})"),
                });
            }
        }
        out.push(Accepted { seq, index: c.index, quoted: q });
    }
    Ok(out)
}

/// A state that starts verification at an accepted checkpoint.
fn start_state(a: &Accepted, banks: &[imasnap_log::HashAlgo], pcr: u32, segs: &[Seg<'_>], history: bool) -> State {
    State {
        boot: BootIdentity { reset_count: a.quoted.reset_count, boot_aggregate_sha1: None },
        checkpoint: a.index,
        pcrs: a.state(banks, pcr),
        // Segments wholly before the checkpoint are crossed without being opened.
        verified_snapshots: segs
            .iter()
            .filter(|s| s.claim.is_some() && s.end_index() <= a.index)
            .map(|s| s.seq())
            .max()
            .unwrap_or(0),
        last_attempt: None,
        history_verified: history,
    }
}

/// Latest segment from the newest checkpoint: its records after it must replay to the
/// fresh quote. History before it is not verified.
pub(super) fn latest(eng: Engine<'_>, segs: Vec<Seg<'_>>, boot: &BootClaim, ak: &AkPublic) -> Result<State, Failure> {
    let chain = links(&segs);
    let acc = accept(&chain, boot, ak, &eng.quoted, &eng.banks, eng.pcr, true, 1)?;
    let Some(newest) = acc.last() else {
        return Err(Failure::BadEvidence { detail: "no checkpoint".into() });
    };
    eng.report.checkpoints_checked += 1;
    eng.report.checkpoint_used = Some(CheckpointUse { seq: newest.seq, index: newest.index });
    let prior = start_state(newest, &eng.banks, eng.pcr, &segs, false);
    incremental::incremental_from(eng, segs, &prior, Mode::LatestSegment)
}

/// Full history in ranges: record 0 → first checkpoint → … → newest checkpoint → the fresh
/// quote, each range verified on its own by up to `jobs` threads. `make` builds a fresh
/// [`Evidence`] each time it is called (each range reads its own copy of the segments it
/// needs). Without checkpoints, or without a trusted AK, this is plain full history.
pub fn verify_segmented<'a>(
    opts: &Options,
    make: &(dyn Fn() -> Evidence<'a> + Sync),
    quote: &(dyn QuoteEvidence + Sync),
    nonce: &[u8],
    jobs: usize,
) -> Outcome {
    let mut report = Report::default();
    let plan = match plan(opts, make(), quote, nonce, &mut report, jobs) {
        Ok(Some(p)) => p,
        Ok(None) => {
            let o = Options { mode: Mode::FullHistory, ..opts.clone() };
            return super::verify(&o, make(), quote, nonce, None);
        }
        Err(failure) => return Outcome { verdict: Verdict::Rejected { failure }, report, state: None },
    };
    let n = plan.accepted.len() + 1;
    let results: Vec<Mutex<Option<RangeResult>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed_at = AtomicUsize::new(usize::MAX);
    let ropts = Options { parallel: false, ..opts.clone() };
    let work = || loop {
        let r = next.fetch_add(1, Ordering::Relaxed);
        if r >= n {
            break;
        }
        // A later range cannot change the verdict once an earlier one failed.
        if r > failed_at.load(Ordering::Relaxed) {
            continue;
        }
        let res = run_range(&ropts, &plan, r, make());
        if res.is_err() {
            failed_at.fetch_min(r, Ordering::Relaxed);
        }
        if let Some(slot) = results.get(r) {
            if let Ok(mut g) = slot.lock() {
                *g = Some(res);
            }
        }
    };
    let jobs = jobs.clamp(1, 256).min(n);
    std::thread::scope(|s| {
        for _ in 1..jobs {
            s.spawn(work);
        }
        work();
    });

    report.mode = Some(Mode::FullHistory);
    report.checkpoints_checked = plan.accepted.len() as u64;
    let mut last_state = None;
    let mut boot_aggregate = None;
    for (r, slot) in results.into_iter().enumerate() {
        let res = slot.into_inner().ok().flatten();
        match res {
            Some(Ok((rep, st))) => {
                report.ranges += 1;
                report.records_replayed += rep.records_replayed;
                report.records_skipped += rep.records_skipped;
                report.snapshots_replayed += rep.snapshots_replayed;
                report.markers_checked += rep.markers_checked;
                report.kexecs += rep.kexecs;
                report.end_markers_read += rep.end_markers_read;
                if r == 0 {
                    boot_aggregate = st.boot.boot_aggregate_sha1;
                }
                if r + 1 == n {
                    report.tail_records = rep.tail_records;
                    report.quote_matched_at = rep.quote_matched_at;
                    last_state = Some(st);
                }
            }
            Some(Err(failure)) => {
                report.failed_range = Some(plan.range(r));
                return Outcome { verdict: Verdict::Rejected { failure }, report, state: None };
            }
            None => {
                let failure = Failure::BadEvidence { detail: format!("range {r} was not verified") };
                return Outcome { verdict: Verdict::Rejected { failure }, report, state: None };
            }
        }
    }
    match last_state {
        Some(mut st) => {
            st.boot.boot_aggregate_sha1 = boot_aggregate;
            st.history_verified = true;
            Outcome { verdict: Verdict::Verified { history_verified: true }, report, state: Some(st) }
        }
        None => Outcome {
            verdict: Verdict::Rejected { failure: Failure::BadEvidence { detail: "no range".into() } },
            report,
            state: None,
        },
    }
}

/// One range's report and end state, or why it failed.
type RangeResult = Result<(Report, State), Failure>;

/// What every range needs: the accepted checkpoints and the fresh quote.
struct Plan {
    accepted: Vec<Accepted>,
    fresh: Quoted,
}

impl Plan {
    fn range(&self, r: usize) -> RangeRef {
        let from = r.checked_sub(1).and_then(|i| self.accepted.get(i)).map_or(0, |a| a.index);
        RangeRef { from, to: self.accepted.get(r).map(|a| a.index) }
    }
}

/// Authenticates the fresh quote and every checkpoint. `None`: nothing to split on.
fn plan(
    opts: &Options,
    ev: Evidence<'_>,
    quote: &dyn QuoteEvidence,
    nonce: &[u8],
    report: &mut Report,
    jobs: usize,
) -> Result<Option<Plan>, Failure> {
    let o = Options { mode: Mode::FullHistory, ..opts.clone() };
    let p = prepare(&o, ev, quote, nonce, report)?;
    let (Some(ak), Some(boot)) = (quote.trusted_ak(), &p.boot) else {
        return Ok(None);
    };
    let chain = links(&p.segs);
    if chain.is_empty() {
        return Ok(None);
    }
    let mut accepted = accept(&chain, boot, ak, &p.quoted, &p.banks, p.pcr, false, jobs)?;
    // Two checkpoints at one index bound an empty range: keep the first.
    accepted.dedup_by_key(|a| a.index);
    Ok(Some(Plan { accepted, fresh: p.quoted }))
}

/// Verifies range `r`: from checkpoint r-1 (record 0 for r = 0) to checkpoint r (the fresh
/// quote for the last range), over a fresh copy of the evidence.
fn run_range(opts: &Options, plan: &Plan, r: usize, ev: Evidence<'_>) -> RangeResult {
    let mut report = Report::default();
    let RangeRef { from, to } = plan.range(r);
    let (target, end_cp) = match plan.accepted.get(r) {
        Some(a) => (a.quoted.clone(), Some(a)),
        None => (plan.fresh.clone(), None),
    };
    // The fresh quote was authenticated once in `plan`; here the evidence is only laid out.
    let p = layout(opts, ev)?;
    let to_idx = to.unwrap_or(u64::MAX);
    let segs: Vec<Seg<'_>> = p
        .segs
        .into_iter()
        .filter(|s| (r == 0 || s.end_index() >= from) && (s.first_index < to_idx || s.first_index == 0))
        .collect();
    let mut eng = Engine::new(opts, p.banks.clone(), p.pcr, p.endian, target, &mut report);
    eng.stop_at_match = end_cp.is_some();
    let res = if r == 0 {
        full::full(eng, segs)
    } else {
        let start = plan.accepted.get(r - 1).ok_or_else(|| Failure::BadEvidence { detail: "range".into() })?;
        let prior = start_state(start, &p.banks, p.pcr, &segs, true);
        incremental::incremental(eng, segs, &prior)
    };
    let state = match (res, end_cp) {
        (Ok(st), _) => st,
        (Err(Failure::QuoteNotReached { .. }), Some(a)) => {
            return Err(Failure::CheckpointNotReached { seq: a.seq, from, index: a.index, matched: None });
        }
        (Err(f), _) => return Err(f),
    };
    if let Some(a) = end_cp {
        if report.quote_matched_at != Some(a.index) {
            return Err(Failure::CheckpointNotReached {
                seq: a.seq,
                from,
                index: a.index,
                matched: report.quote_matched_at,
            });
        }
    }
    Ok((report, state))
}

/// The segments of `ev`, with its claims checked but no quote: a range's copy.
struct Layout<'a> {
    banks: Vec<imasnap_log::HashAlgo>,
    pcr: u32,
    endian: imasnap_log::Endian,
    segs: Vec<Seg<'a>>,
}

fn layout<'a>(opts: &Options, ev: Evidence<'a>) -> Result<Layout<'a>, Failure> {
    super::validate(opts, &ev)?;
    let Evidence { banks, pcr, endian, snapshots, live, live_first_index, .. } = ev;
    let mut segs: Vec<Seg<'a>> = snapshots.into_iter().map(Seg::snapshot).collect();
    segs.push(Seg::live(live, live_first_index));
    Ok(Layout { banks, pcr, endian, segs })
}
