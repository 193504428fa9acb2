//! Quote-anchored checkpoints at every cut (docs/CHECKPOINTS.md).
//!
//! The agent quotes PCR 0-9 and the measurement PCR, with no kernel lock held, then reads
//! the kernel's list and finds the index where the replay equals the quoted values. The
//! list is read after the quote, so every record the quote covers is in it. The search
//! starts from the last state the agent knows (the previous checkpoint, or the end of the
//! last stored segment), so it costs the records since then, never the boot's history.

use crate::agent::{Agent, AgentError, CrashPoint};
use crate::kernel::{Interface, KernelIfError, SnapshotKernel};
use crate::policy::Checkpoints;
use imasnap_log::{BinaryReader, PcrState, PcrTarget, PcrValue, ReplayOptions, Replayer};
use imasnap_store::Manifest;
use imasnap_wire::evidence::AkJson;
use imasnap_wire::{qualifying_data, CheckpointJson};
use std::io::Read;

/// Quotes taken per checkpoint before giving up (each retry re-reads the list).
pub const CHECKPOINT_ATTEMPTS: u32 = 3;

/// Checkpoints taken by this agent process and the time they took (quote, list read and
/// search; the kernel's list lock is never held meanwhile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointStats {
    pub taken: u64,
    /// Quotes taken, retries included.
    pub quotes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// The checkpoint chain's previous link and the replay start the search can use.
struct Start {
    prev_attest: Option<Vec<u8>>,
    index: u64,
    state: PcrState,
}

/// The measurement-PCR state at `index` as the manifest knows it: a checkpoint at that
/// index, else a segment boundary (`pcrs_end`), else record 0.
fn known_state(m: &Manifest, live_base: u64) -> Result<Start, String> {
    let p = m.pcr as usize;
    let prev = m.snapshots.iter().rev().find_map(|s| s.checkpoint.as_ref());
    let prev_attest = prev.map(|c| c.quote.attest.clone());
    if let Some(c) = prev.filter(|c| c.index >= live_base) {
        let mut state = PcrState::new(&m.banks);
        for &b in &m.banks {
            let v = c.quote.pcr_value(b, m.pcr).ok_or_else(|| format!("checkpoint at {} lacks {b}", c.index))?;
            state.set(p, v);
        }
        state.mark_touched(p);
        return Ok(Start { prev_attest, index: c.index, state });
    }
    let mut state = PcrState::new(&m.banks);
    if live_base > 0 {
        let s = m
            .snapshots
            .iter()
            .find(|s| s.end_index() == live_base)
            .ok_or_else(|| format!("no segment ends at the list's head {live_base}"))?;
        for (bank, hex) in &s.pcrs_end {
            state.set(p, PcrValue::from_hex(*bank, hex).map_err(|e| format!("pcrs_end.{bank}: {e}"))?);
        }
        state.mark_touched(p);
    }
    Ok(Start { prev_attest, index: live_base, state })
}

/// Where a checkpoint comes from: the TPM that quotes and the list the quote is located
/// in. The agent uses the kernel's list; the legacy back end its own copy of it.
pub trait CheckpointSource {
    /// The TPM that extends the measurement PCR.
    fn quoting_tpm(&mut self) -> Option<&mut dyn imasnap_tpm::Tpm>;
    /// Called after every quote (the agent's crash point and counters).
    fn quoted(&mut self) -> Result<(), AgentError> {
        Ok(())
    }
    /// The list, read after the quote, from a record at or before `from`; and the
    /// absolute index of its first record.
    fn list_from(&mut self, from: u64) -> Result<(Box<dyn Read + '_>, u64), AgentError>;
}

/// The checkpoint for segment `seq` about to be added to `m`, whose list (in `src`)
/// starts at `live_base`: quote, read the list, find the index; up to
/// [`CHECKPOINT_ATTEMPTS`] quotes, then [`AgentError::Aborted`].
pub fn quote_and_locate(
    src: &mut dyn CheckpointSource,
    m: &Manifest,
    seq: u64,
    live_base: u64,
) -> Result<CheckpointJson, AgentError> {
    let fail = |why: String| AgentError::Aborted(format!("checkpoint: {why}"));
    let start = known_state(m, live_base).map_err(fail)?;
    let boot_aggregate = hex::decode(&m.boot.boot_aggregate_sha1)
        .ok()
        .and_then(|v| <[u8; 20]>::try_from(v.as_slice()).ok())
        .ok_or_else(|| fail("the manifest's boot_aggregate_sha1 is not 20 bytes of hex".into()))?;
    let qd = qualifying_data(m.boot.reset_count, &boot_aggregate, seq, start.prev_attest.as_deref());
    let mut pcrs: Vec<u32> = (0..10).collect();
    if m.pcr >= 10 {
        pcrs.push(m.pcr);
    }
    let sel = imasnap_tpm::PcrSelection::uniform(&m.banks, &pcrs).map_err(|e| fail(e.to_string()))?;
    let mut last = String::new();
    for _ in 0..CHECKPOINT_ATTEMPTS {
        let tpm = src.quoting_tpm().ok_or_else(|| fail("no TPM".into()))?;
        let quote = tpm.quote(&qd, &sel).map_err(|e| fail(format!("quote: {e}")))?;
        let ak = AkJson::from_public(&tpm.ak_public());
        src.quoted()?;
        let want: Vec<PcrValue> = m.banks.iter().filter_map(|&b| quote.pcr_value(b, m.pcr)).collect();
        if want.len() != m.banks.len() {
            return Err(fail("the quote lacks a bank's measurement PCR".into()));
        }
        let (list, first) = src.list_from(start.index)?;
        match find_index(m, &start, &want, list, first)? {
            Some(index) => return Ok(CheckpointJson { index, quote, ak }),
            None => last = format!("no prefix of the list from record {} replays to the quote", start.index),
        }
    }
    Err(fail(format!("{last} after {CHECKPOINT_ATTEMPTS} quotes")))
}

/// The index after which the replay from `start` equals `want` (bank order of `m`);
/// `list` holds the records from absolute index `first` (at most `start.index`) on.
fn find_index(
    m: &Manifest,
    start: &Start,
    want: &[PcrValue],
    list: impl Read,
    first: u64,
) -> Result<Option<u64>, AgentError> {
    let p = m.pcr as usize;
    if want.iter().all(|v| start.state.get(v.algo(), p) == Some(v)) {
        return Ok(Some(start.index));
    }
    let mut target = PcrTarget::default();
    for v in want {
        target.values.entry(v.algo()).or_default().insert(p, *v);
    }
    let mut opts = ReplayOptions::new(&m.banks);
    opts.parallel = false;
    let mut rp = Replayer::resume(opts, start.state.clone(), start.index);
    rp.set_target(&target);
    let mut rd = BinaryReader::starting_at(list, imasnap_store::snapshot_format(), first);
    let skip = start.index.saturating_sub(first);
    let mut batch = Vec::with_capacity(1024);
    for (i, rec) in rd.by_ref().enumerate() {
        let rec = rec.map_err(|e| AgentError::Inconsistent(format!("list: {e}")))?;
        if i as u64 >= skip {
            batch.push(rec);
            if batch.len() == batch.capacity() {
                rp.push_batch(&batch).map_err(|e| AgentError::Inconsistent(format!("replay: {e}")))?;
                batch.clear();
            }
        }
    }
    rp.push_batch(&batch).map_err(|e| AgentError::Inconsistent(format!("replay: {e}")))?;
    Ok(rp.finish().matched_after)
}

impl<K: SnapshotKernel> CheckpointSource for Agent<K> {
    fn quoting_tpm(&mut self) -> Option<&mut dyn imasnap_tpm::Tpm> {
        self.kernel_mut().quoting_tpm()
    }

    fn quoted(&mut self) -> Result<(), AgentError> {
        self.checkpoint_stats.quotes += 1;
        self.point(CrashPoint::AfterQuote)
    }

    /// The kernel's list from `live_base`: the staged records (staging), then the current list.
    fn list_from(&mut self, _from: u64) -> Result<(Box<dyn Read + '_>, u64), AgentError> {
        let mut b = Vec::new();
        if self.interface() == Interface::Staging {
            match self.kernel_mut().staged_list() {
                Ok(mut r) => {
                    r.read_to_end(&mut b)
                        .map_err(|e| AgentError::Kernel(KernelIfError::Failed(format!("staged list: {e}"))))?;
                }
                Err(KernelIfError::Busy(e)) => return Err(KernelIfError::Busy(e).into()),
                Err(_) => {}
            }
        }
        let base = self.live_base();
        let live = self.kernel_mut().live_list()?;
        Ok((Box::new(std::io::Cursor::new(b).chain(live)), base))
    }
}

impl<K: SnapshotKernel> Agent<K> {
    /// Whether cuts take checkpoints on this agent.
    pub(crate) fn checkpoints_on(&mut self) -> bool {
        self.config().snapshot.checkpoints == Checkpoints::On && self.kernel_mut().quoting_tpm().is_some()
    }

    /// The checkpoint for the segment `seq` about to be added to `m` (None when off).
    /// Taken before the delete, so the records it covers are still in the kernel's list,
    /// which starts at `live_base`.
    pub(crate) fn take_checkpoint(&mut self, m: &Manifest, seq: u64) -> Result<Option<CheckpointJson>, AgentError> {
        if !self.checkpoints_on() {
            return Ok(None);
        }
        let t = std::time::Instant::now();
        let base = self.live_base();
        let r = quote_and_locate(self, m, seq, base);
        let ns = t.elapsed().as_nanos() as u64;
        if r.is_ok() {
            let s = &mut self.checkpoint_stats;
            s.taken += 1;
            s.total_ns += ns;
            s.max_ns = s.max_ns.max(ns);
        }
        r.map(Some)
    }

    /// What checkpoints cost this agent process so far.
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        self.checkpoint_stats
    }
}
