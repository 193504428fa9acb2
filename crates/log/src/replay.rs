//! Multi-bank PCR replay. Template digests are independent, so a batch is hashed in
//! parallel; only the extend chain is serial.

use crate::algo::{HashAlgo, PcrValue};
use crate::codec::{Endian, Record};
use crate::digest::{template_hash, violation_value, ExtendMode};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;

pub const NUM_PCRS: usize = 24;
/// Mismatching indices kept for reporting; the count is always exact.
pub const MAX_REPORTED_MISMATCHES: usize = 10_000;

/// PCR 0-23 of several banks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrState {
    banks: Vec<HashAlgo>,
    values: Vec<[PcrValue; NUM_PCRS]>,
    /// Bit i set: PCR i was extended by replay (or declared live by the caller).
    touched: u32,
}

impl PcrState {
    /// All PCRs zero, as after a TPM reset for PCR 0-15.
    pub fn new(banks: &[HashAlgo]) -> Self {
        Self {
            banks: banks.to_vec(),
            values: banks.iter().map(|&a| [PcrValue::zero(a); NUM_PCRS]).collect(),
            touched: 0,
        }
    }
    pub fn banks(&self) -> &[HashAlgo] {
        &self.banks
    }
    pub fn bank_index(&self, a: HashAlgo) -> Option<usize> {
        self.banks.iter().position(|&b| b == a)
    }
    pub fn get(&self, bank: HashAlgo, pcr: usize) -> Option<&PcrValue> {
        self.values.get(self.bank_index(bank)?)?.get(pcr)
    }
    pub fn bank(&self, bank: HashAlgo) -> Option<&[PcrValue; NUM_PCRS]> {
        Some(&self.values[self.bank_index(bank)?])
    }
    /// Sets a value; the value's algorithm must be one of the banks.
    pub fn set(&mut self, pcr: usize, v: PcrValue) -> bool {
        match (self.bank_index(v.algo()), pcr < NUM_PCRS) {
            (Some(b), true) => {
                self.values[b][pcr] = v;
                true
            }
            _ => false,
        }
    }
    pub fn touched(&self) -> impl Iterator<Item = usize> + '_ {
        (0..NUM_PCRS).filter(|i| self.touched & (1 << i) != 0)
    }
    pub fn mark_touched(&mut self, pcr: usize) {
        self.touched |= 1 << pcr;
    }
    /// `{"10": {"sha1": hex, ...}}` for touched PCRs, as the `log replay --json` contract says.
    pub fn to_map(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.touched()
            .map(|p| {
                let inner =
                    self.banks.iter().zip(&self.values).map(|(a, v)| (a.name().to_owned(), v[p].to_hex())).collect();
                (p.to_string(), inner)
            })
            .collect()
    }
}

/// Expected PCR values per bank, e.g. from a quote or evmctl-style PCR files.
#[derive(Clone, Debug, Default)]
pub struct PcrTarget {
    pub values: BTreeMap<HashAlgo, BTreeMap<usize, PcrValue>>,
}

/// Replay settings.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub banks: Vec<HashAlgo>,
    /// Bank of the digests stored in the log (SHA1 for the classic file).
    pub log_bank: HashAlgo,
    pub endian: Endian,
    /// Extend modes to replay. `[Native, PaddedSha1]` tries both per bank, as evmctl does.
    pub modes: Vec<ExtendMode>,
    pub parallel: bool,
}

impl ReplayOptions {
    pub fn new(banks: &[HashAlgo]) -> Self {
        let mut banks = banks.to_vec();
        banks.dedup();
        Self {
            banks,
            log_bank: HashAlgo::Sha1,
            endian: Endian::Little,
            modes: vec![ExtendMode::Native],
            parallel: true,
        }
    }
}

/// Per-record values to extend, computed independently of the chain.
#[derive(Clone, Copy)]
struct Extends {
    pcr: u32,
    violation: bool,
    digest_mismatch: bool,
    /// [mode][bank]
    v: [[PcrValue; 5]; 2],
}

/// Outcome of a replay.
#[derive(Clone, Debug)]
pub struct ReplayReport {
    /// Records replayed by this replayer.
    pub records: u64,
    /// Global index of the next record.
    pub next_index: u64,
    pub violations: u64,
    pub first_violation: Option<u64>,
    pub template_digest_mismatches: Vec<u64>,
    pub mismatch_count: u64,
    /// Final state per extend mode, same order as `ReplayOptions::modes`.
    pub states: Vec<(ExtendMode, PcrState)>,
    /// Number of records (global index) after which every targeted bank matched.
    pub matched_after: Option<u64>,
    /// Mode that matched, per targeted bank.
    pub matched_modes: Vec<(HashAlgo, ExtendMode)>,
}

impl ReplayReport {
    pub fn state(&self) -> &PcrState {
        &self.states[0].1
    }
}

struct Tracker {
    /// [bank][pcr] expected value.
    want: Vec<[Option<PcrValue>; NUM_PCRS]>,
    has_target: Vec<bool>,
    /// [mode][bank] touched PCRs whose value differs from the target.
    bad: Vec<Vec<u32>>,
    matched_after: Option<u64>,
    matched_modes: Vec<(HashAlgo, ExtendMode)>,
}

/// Replays records into PCR state.
pub struct Replayer {
    opts: ReplayOptions,
    states: Vec<PcrState>,
    next_index: u64,
    records: u64,
    violations: u64,
    first_violation: Option<u64>,
    mismatches: Vec<u64>,
    mismatch_count: u64,
    tracker: Option<Tracker>,
    scratch: Vec<std::result::Result<Extends, crate::error::Reason>>,
}

impl Replayer {
    pub fn new(opts: ReplayOptions) -> Self {
        let s = PcrState::new(&opts.banks);
        Self::resume(opts, s, 0)
    }

    /// Continues from `state` (e.g. a marker's PCR values or a checkpoint) at global index `next_index`.
    /// Every mode starts from the same state.
    pub fn resume(opts: ReplayOptions, state: PcrState, next_index: u64) -> Self {
        assert!(opts.banks.len() <= 5 && !opts.modes.is_empty() && opts.modes.len() <= 2);
        let mut state = state;
        if state.banks != opts.banks {
            // Reorder to the replay's bank order, filling missing banks with zero.
            let mut s = PcrState::new(&opts.banks);
            for (bi, a) in opts.banks.iter().enumerate() {
                if let Some(v) = state.bank(*a) {
                    s.values[bi] = *v;
                }
            }
            s.touched = state.touched;
            state = s;
        }
        let states = opts.modes.iter().map(|_| state.clone()).collect();
        Self {
            opts,
            states,
            next_index,
            records: 0,
            violations: 0,
            first_violation: None,
            mismatches: Vec::new(),
            mismatch_count: 0,
            tracker: None,
            scratch: Vec::new(),
        }
    }

    pub fn options(&self) -> &ReplayOptions {
        &self.opts
    }
    pub fn next_index(&self) -> u64 {
        self.next_index
    }
    pub fn state(&self) -> &PcrState {
        &self.states[0]
    }

    /// Watches for the first record after which all targeted banks equal `target`.
    /// Only PCRs the replay has touched are compared; a touched PCR without a target
    /// value never matches.
    pub fn set_target(&mut self, target: &PcrTarget) {
        let nb = self.opts.banks.len();
        let mut want = vec![[None; NUM_PCRS]; nb];
        let mut has_target = vec![false; nb];
        for (bi, a) in self.opts.banks.iter().enumerate() {
            if let Some(m) = target.values.get(a) {
                has_target[bi] = true;
                for (&p, v) in m {
                    if p < NUM_PCRS {
                        want[bi][p] = Some(*v);
                    }
                }
            }
        }
        let mut bad = vec![vec![0u32; nb]; self.opts.modes.len()];
        for (mi, s) in self.states.iter().enumerate() {
            for p in s.touched() {
                for bi in 0..nb {
                    if has_target[bi] && want[bi][p] != Some(s.values[bi][p]) {
                        bad[mi][bi] += 1;
                    }
                }
            }
        }
        self.tracker = Some(Tracker { want, has_target, bad, matched_after: None, matched_modes: Vec::new() });
        self.check_match();
    }

    fn compute(opts: &ReplayOptions, rec: &Record) -> std::result::Result<Extends, crate::error::Reason> {
        let zero = PcrValue::zero(HashAlgo::Sha1);
        let mut e = Extends { pcr: rec.pcr, violation: rec.is_violation(), digest_mismatch: false, v: [[zero; 5]; 2] };
        if rec.pcr as usize >= NUM_PCRS {
            return Err(crate::error::Reason::PcrIndex(rec.pcr as u64));
        }
        if e.violation {
            for (mi, m) in opts.modes.iter().enumerate() {
                for (bi, a) in opts.banks.iter().enumerate() {
                    e.v[mi][bi] = violation_value(*a, *m);
                }
            }
            return Ok(e);
        }
        let mut sha1 = None;
        let mut logd = None;
        for (bi, a) in opts.banks.iter().enumerate() {
            let h = template_hash(*a, rec, opts.endian)?;
            if *a == HashAlgo::Sha1 {
                sha1 = Some(h);
            }
            if *a == opts.log_bank {
                logd = Some(h);
            }
            for (mi, m) in opts.modes.iter().enumerate() {
                if *m == ExtendMode::Native {
                    e.v[mi][bi] = h;
                }
            }
        }
        let logd = match logd {
            Some(d) => d,
            None => template_hash(opts.log_bank, rec, opts.endian)?,
        };
        e.digest_mismatch = logd.as_bytes() != rec.digest.as_slice();
        if opts.modes.contains(&ExtendMode::PaddedSha1) {
            let s = match sha1 {
                Some(s) => s,
                None => template_hash(HashAlgo::Sha1, rec, opts.endian)?,
            };
            for (mi, m) in opts.modes.iter().enumerate() {
                if *m == ExtendMode::PaddedSha1 {
                    for (bi, a) in opts.banks.iter().enumerate() {
                        e.v[mi][bi] = PcrValue::from_slice(*a, s.as_bytes());
                    }
                }
            }
        }
        Ok(e)
    }

    fn apply(&mut self, e: &Extends) {
        let idx = self.next_index;
        let p = e.pcr as usize;
        if e.violation {
            self.violations += 1;
            self.first_violation.get_or_insert(idx);
        }
        if e.digest_mismatch {
            self.mismatch_count += 1;
            if self.mismatches.len() < MAX_REPORTED_MISMATCHES {
                self.mismatches.push(idx);
            }
        }
        let nb = self.opts.banks.len();
        for (mi, s) in self.states.iter_mut().enumerate() {
            let first = s.touched & (1 << p) == 0;
            s.touched |= 1 << p;
            for bi in 0..nb {
                let a = self.opts.banks[bi];
                let before = s.values[bi][p];
                a.extend(&mut s.values[bi][p], e.v[mi][bi].as_bytes());
                if let Some(t) = self.tracker.as_mut() {
                    if t.has_target[bi] {
                        let want = t.want[bi][p];
                        let was_bad = !first && want != Some(before);
                        let is_bad = want != Some(s.values[bi][p]);
                        match (was_bad, is_bad) {
                            (false, true) => t.bad[mi][bi] += 1,
                            (true, false) => t.bad[mi][bi] -= 1,
                            _ => {}
                        }
                    }
                }
            }
        }
        self.next_index += 1;
        self.records += 1;
        self.check_match();
    }

    fn check_match(&mut self) {
        let Some(t) = self.tracker.as_mut() else {
            return;
        };
        if t.matched_after.is_some() || self.states[0].touched == 0 || !t.has_target.iter().any(|&x| x) {
            return;
        }
        let mut modes = Vec::new();
        for (bi, a) in self.opts.banks.iter().enumerate() {
            if !t.has_target[bi] {
                continue;
            }
            match (0..self.opts.modes.len()).find(|&mi| t.bad[mi][bi] == 0) {
                Some(mi) => modes.push((*a, self.opts.modes[mi])),
                None => return,
            }
        }
        t.matched_after = Some(self.next_index);
        t.matched_modes = modes;
    }

    /// Replays one record.
    pub fn push(&mut self, rec: &Record) -> Result<()> {
        let e = Self::compute(&self.opts, rec).map_err(|r| Error::new(self.next_index, 0, r))?;
        self.apply(&e);
        Ok(())
    }

    /// Replays a batch, hashing template digests in parallel.
    pub fn push_batch(&mut self, recs: &[Record]) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let opts = &self.opts;
        if opts.parallel && recs.len() >= 64 {
            recs.par_iter().map(|r| Self::compute(opts, r)).collect_into_vec(&mut scratch);
        } else {
            scratch.clear();
            scratch.extend(recs.iter().map(|r| Self::compute(opts, r)));
        }
        let mut out = Ok(());
        for e in &scratch {
            match e {
                Ok(e) => self.apply(e),
                Err(r) => {
                    out = Err(Error::new(self.next_index, 0, r.clone()));
                    break;
                }
            }
        }
        self.scratch = scratch;
        out
    }

    pub fn finish(self) -> ReplayReport {
        let (matched_after, matched_modes) = match self.tracker {
            Some(t) => (t.matched_after, t.matched_modes),
            None => (None, Vec::new()),
        };
        ReplayReport {
            records: self.records,
            next_index: self.next_index,
            violations: self.violations,
            first_violation: self.first_violation,
            template_digest_mismatches: self.mismatches,
            mismatch_count: self.mismatch_count,
            states: self.opts.modes.iter().copied().zip(self.states).collect(),
            matched_after,
            matched_modes,
        }
    }
}

/// Replays a whole stream in batches of `batch` records, with memory bounded by the batch.
pub fn replay_stream<R: std::io::Read>(
    reader: &mut crate::reader::LogReader<R>,
    replayer: &mut Replayer,
    batch: usize,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let mut slots: Vec<Option<Record>> = (0..batch).map(|_| None).collect();
    let mut recs: Vec<Record> = Vec::with_capacity(batch);
    loop {
        let mut n = 0;
        while n < batch {
            if !reader.read_into(&mut slots[n])? {
                break;
            }
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        // Move filled slots into a contiguous batch and back, keeping their allocations.
        recs.extend(slots[..n].iter_mut().map(|s| s.take().expect("filled")));
        replayer.push_batch(&recs)?;
        for (s, r) in slots.iter_mut().zip(recs.drain(..)) {
            *s = Some(r);
        }
        progress(replayer.next_index());
        if n < batch {
            return Ok(());
        }
    }
}
