//! The verification engine: evidence + saved state in, verdict + new state
//! out. Single pass over the segments, record by record, in bounded batches.
//!
//! Trust model: only two things are facts — the authenticated quote and the verifier's
//! own saved [`State`]. Everything else (indices, manifest, marker contents, the bundle's
//! bank list) is a claim that the hash chain from a proven start to the quoted values
//! either confirms or refutes. A record sequence that extends a proven state to the quoted
//! state is the true one; markers and manifests only let us fail early and precisely.
//!
//! Layout: `quoted` turns the quote into facts, `segment` reads records, `classify`
//! recognises markers and boot_aggregates, `replay` is the engine every mode drives, and
//! `full`, `latest` and `incremental` are the three modes.

mod checkpoint;
mod classify;
mod full;
mod incremental;
mod latest;
mod quoted;
mod replay;
mod segment;
#[cfg(test)]
mod tests;

use crate::evidence::Evidence;
use crate::names::snake_case_enum;
use crate::quote::QuoteEvidence;
use crate::reason::Failure;
use crate::state::State;
pub use checkpoint::verify_segmented;
use imasnap_log::replay::NUM_PCRS;
use imasnap_log::HashAlgo;
use replay::Engine;
use segment::Seg;
use std::fmt;

/// PCRs whose quoted values every marker and boot_aggregate is checked against.
const PLATFORM_PCRS: u32 = 10;
/// Largest record index or count a claim may name (2^48 records is ~100 PB of log).
/// Bounds all index arithmetic, so no claim can overflow it.
pub const MAX_INDEX: u64 = 1 << 48;

snake_case_enum! {
    /// What to verify. Serialises and displays as its snake_case name.
    pub enum Mode("mode") {
        /// Replay from record 0 through every snapshot and the live list.
        FullHistory = "full_history",
        /// Start from the marker heading the live list; history is not verified.
        LatestSegment = "latest_segment",
        /// Continue from the saved state; full history on a cold boot or without state.
        Incremental = "incremental",
    }
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

/// Why an incremental verification started over from record 0. Serialises as an object
/// tagged `"kind"` (like [`Failure`]); displays as one line of text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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

impl Restart {
    /// The snake_case name of the variant (the `"kind"` tag): a stable short form for a
    /// database column or a log field.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoState => "no_state",
            Self::ResetCountChanged { .. } => "reset_count_changed",
            Self::BootAggregateChanged => "boot_aggregate_changed",
            Self::BanksChanged => "banks_changed",
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ResetCountChanged { saved, quoted } => {
                write!(f, "reset_count_changed (saved resetCount {saved}, quoted {quoted})")
            }
            other => f.write_str(other.as_str()),
        }
    }
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
    /// Latest segment from a checkpoint: the one verification started from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_used: Option<CheckpointUse>,
    /// Checkpoints whose signature, chain and boot were checked.
    pub checkpoints_checked: u64,
    /// Full history in ranges between checkpoints: how many ranges were verified.
    pub ranges: u64,
    /// The first range that failed, `[from, to)` (`to` absent: up to the fresh quote).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_range: Option<RangeRef>,
}

/// A checkpoint by its segment and absolute index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointUse {
    pub seq: u64,
    pub index: u64,
}

/// A range of records between two checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RangeRef {
    pub from: u64,
    pub to: Option<u64>,
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
    /// The verdict's class without its details.
    pub fn kind(&self) -> VerdictKind {
        match self {
            Self::Verified { .. } => VerdictKind::Verified,
            Self::Rejected { .. } => VerdictKind::Rejected,
        }
    }
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

snake_case_enum! {
    /// The class of an attestation result, as a stable snake_case name for JSON, logs and
    /// databases. The engine itself gives only `verified` or `rejected` ([`Verdict::kind`]);
    /// callers that add a runtime policy or fetch evidence over a network report the other two.
    pub enum VerdictKind("verdict") {
        /// Every record up to the checkpoint is proven by the quote.
        Verified = "verified",
        /// The evidence is wrong: forged, inconsistent or unprovable.
        Rejected = "rejected",
        /// The evidence is proven, but records in it break the runtime policy.
        PolicyViolation = "policy_violation",
        /// No evidence to judge: unreachable, timed out, refused.
        Error = "error",
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
// Evidence checks and mode dispatch

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

/// The evidence turned into facts and segments, before any mode runs.
struct Prepared<'a> {
    banks: Vec<HashAlgo>,
    pcr: u32,
    endian: imasnap_log::Endian,
    boot: Option<imasnap_wire::BootClaim>,
    segs: Vec<Seg<'a>>,
    quoted: quoted::Quoted,
    /// Record 0's SHA1 digest, when the evidence starts at record 0.
    record0: Option<[u8; 20]>,
}

/// Checks the evidence's shape, authenticates the fresh quote, and lays out the segments.
fn prepare<'a>(
    opts: &Options,
    ev: Evidence<'a>,
    quote: &dyn QuoteEvidence,
    nonce: &[u8],
    report: &mut Report,
) -> Result<Prepared<'a>, Failure> {
    validate(opts, &ev)?;
    let quoted = quoted::authenticate(quote, nonce, &ev.banks, ev.pcr)?;
    report.reset_count = Some(quoted.reset_count);
    if let Some(b) = &ev.boot {
        if b.reset_count != quoted.reset_count {
            return Err(Failure::ManifestBootMismatch {
                detail: format!("manifest says resetCount {}, the quote {}", b.reset_count, quoted.reset_count),
            });
        }
    }
    let Evidence { banks, pcr, endian, boot, snapshots, live, live_first_index, data_from } = ev;
    let with_checkpoints = snapshots.iter().any(|s| s.claim.checkpoint.is_some());
    let mut segs: Vec<Seg<'_>> = snapshots.into_iter().map(Seg::snapshot).collect();
    segs.push(Seg::live(live, live_first_index));
    if let Some(d) = data_from {
        suffix(&mut segs, d, opts.mode, with_checkpoints)?;
    }

    // Record 0, if supplied: boot identity and the manifest's boot claim. Peeked, not
    // consumed: the reader is kept for the replay.
    let mut record0: Option<[u8; 20]> = None;
    // Not in a suffix: its data starts later.
    if let Some(first) = segs.first_mut().filter(|s| s.data_first == 0) {
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
    Ok(Prepared { banks, pcr, endian, boot, segs, quoted, record0 })
}

fn run(
    opts: &Options,
    ev: Evidence<'_>,
    quote: &dyn QuoteEvidence,
    nonce: &[u8],
    prior: Option<&State>,
    report: &mut Report,
) -> Result<State, Failure> {
    let Prepared { banks, pcr, endian, boot, segs, quoted, record0 } = prepare(opts, ev, quote, nonce, report)?;
    let eng = Engine::new(opts, banks, pcr, endian, quoted, report);
    match opts.mode {
        Mode::FullHistory => full::full(eng, segs),
        Mode::LatestSegment => match (quote.trusted_ak(), &boot) {
            // Checkpoints make the latest segment verifiable on every back end.
            (Some(ak), Some(boot)) if segs.iter().any(|s| s.checkpoint().is_some()) => {
                checkpoint::latest(eng, segs, boot, ak)
            }
            _ => latest::latest(eng, segs),
        },
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
                (None, Some(p)) => incremental::incremental(eng, segs, p),
                (r, _) => {
                    eng.report.restart = r;
                    full::full(eng, segs)
                }
            }
        }
    }
}

/// Marks the first segment with data as starting at record `from`. Only incremental mode
/// and latest-segment from a checkpoint resume inside a segment; the index must lie inside it.
fn suffix(segs: &mut [Seg<'_>], from: u64, mode: Mode, with_checkpoints: bool) -> Result<(), Failure> {
    let bad = |detail: String| Err(Failure::BadEvidence { detail });
    // A latest-segment run from a checkpoint resumes inside a segment too.
    if mode != Mode::Incremental && !(mode == Mode::LatestSegment && with_checkpoints) {
        return bad(format!("data from record {from} (a suffix) in {mode} mode"));
    }
    if from > MAX_INDEX {
        return bad(format!("data_from {from} exceeds {MAX_INDEX}"));
    }
    let n = segs.len();
    let Some((k, seg)) = segs.iter_mut().enumerate().find(|(_, s)| s.input.is_some()) else {
        return bad("data_from without data".into());
    };
    let end = seg.claim.as_ref().map_or(u64::MAX, |c| c.end_index());
    if from < seg.first_index || (k + 1 < n && from >= end) {
        return bad(format!("data_from {from} is not inside {}", seg.id));
    }
    seg.data_first = from;
    Ok(())
}

fn same_banks(a: &[HashAlgo], b: &[HashAlgo]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}
