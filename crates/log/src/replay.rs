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
    /// Native (5.8+) extend value per bank.
    native: [PcrValue; 5],
    /// SHA1 template digest, for padded-SHA1 mode.
    sha1: [u8; 20],
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

/// One hash chain: a bank under one extend mode. Chains are independent, so a batch is
/// extended on all of them in parallel.
#[derive(Clone)]
struct Chain {
    mode: ExtendMode,
    bank: usize,
    algo: HashAlgo,
    values: [PcrValue; NUM_PCRS],
    touched: u32,
    /// Target values, when this bank is targeted.
    want: Option<[Option<PcrValue>; NUM_PCRS]>,
    /// Touched PCRs whose value differs from the target.
    bad: u32,
    /// Per record of the current batch: did every touched PCR match afterwards?
    ok: Vec<bool>,
}

impl Chain {
    fn value_for(&self, e: &Extends) -> PcrValue {
        match (e.violation, self.mode) {
            (true, m) => violation_value(self.algo, m),
            (false, ExtendMode::Native) => e.native[self.bank],
            (false, ExtendMode::PaddedSha1) => PcrValue::from_slice(self.algo, &e.sha1),
        }
    }

    fn run(&mut self, batch: &[Extends]) {
        self.ok.clear();
        for e in batch {
            let p = e.pcr as usize;
            let first = self.touched & (1 << p) == 0;
            self.touched |= 1 << p;
            let before = self.values[p];
            let v = self.value_for(e);
            self.algo.extend(&mut self.values[p], v.as_bytes());
            if let Some(want) = &self.want {
                let was_bad = !first && want[p] != Some(before);
                let is_bad = want[p] != Some(self.values[p]);
                match (was_bad, is_bad) {
                    (false, true) => self.bad += 1,
                    (true, false) => self.bad -= 1,
                    _ => {}
                }
                self.ok.push(self.bad == 0);
            }
        }
    }
}

/// Replays records into PCR state.
pub struct Replayer {
    opts: ReplayOptions,
    chains: Vec<Chain>,
    next_index: u64,
    records: u64,
    violations: u64,
    first_violation: Option<u64>,
    mismatches: Vec<u64>,
    mismatch_count: u64,
    targeted: bool,
    matched_after: Option<u64>,
    matched_modes: Vec<(HashAlgo, ExtendMode)>,
    scratch: Vec<std::result::Result<Extends, crate::error::Reason>>,
    extends: Vec<Extends>,
}

impl Replayer {
    pub fn new(opts: ReplayOptions) -> Self {
        let s = PcrState::new(&opts.banks);
        Self::resume(opts, s, 0)
    }

    /// Continues from `state` (e.g. a marker's PCR values or a checkpoint) at global index
    /// `next_index`. Every mode starts from the same state; banks missing from it start at zero.
    pub fn resume(opts: ReplayOptions, state: PcrState, next_index: u64) -> Self {
        assert!(opts.banks.len() <= 5 && !opts.modes.is_empty() && opts.modes.len() <= 2);
        let mut chains = Vec::new();
        for &mode in &opts.modes {
            for (bank, &algo) in opts.banks.iter().enumerate() {
                let values = state.bank(algo).copied().unwrap_or([PcrValue::zero(algo); NUM_PCRS]);
                chains.push(Chain {
                    mode,
                    bank,
                    algo,
                    values,
                    touched: state.touched,
                    want: None,
                    bad: 0,
                    ok: Vec::new(),
                });
            }
        }
        Self {
            opts,
            chains,
            next_index,
            records: 0,
            violations: 0,
            first_violation: None,
            mismatches: Vec::new(),
            mismatch_count: 0,
            targeted: false,
            matched_after: None,
            matched_modes: Vec::new(),
            scratch: Vec::new(),
            extends: Vec::new(),
        }
    }

    pub fn options(&self) -> &ReplayOptions {
        &self.opts
    }
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Current state under extend mode `mode` (the first mode if absent).
    pub fn state_for(&self, mode: ExtendMode) -> PcrState {
        let mode = if self.opts.modes.contains(&mode) { mode } else { self.opts.modes[0] };
        let mut s = PcrState::new(&self.opts.banks);
        for c in self.chains.iter().filter(|c| c.mode == mode) {
            s.values[c.bank] = c.values;
            s.touched = c.touched;
        }
        s
    }

    /// Current state under the first extend mode.
    pub fn state(&self) -> PcrState {
        self.state_for(self.opts.modes[0])
    }

    /// Watches for the first record after which all targeted banks equal `target`.
    /// Only PCRs the replay has touched are compared; a touched PCR without a target
    /// value never matches.
    pub fn set_target(&mut self, target: &PcrTarget) {
        self.targeted = false;
        for c in &mut self.chains {
            c.want = target.values.get(&c.algo).map(|m| {
                let mut w = [None; NUM_PCRS];
                for (&p, v) in m.iter().filter(|(p, _)| **p < NUM_PCRS) {
                    w[p] = Some(*v);
                }
                w
            });
            if let Some(w) = &c.want {
                self.targeted = true;
                c.bad =
                    (0..NUM_PCRS).filter(|&p| c.touched & (1 << p) != 0 && w[p] != Some(c.values[p])).count() as u32;
            }
        }
        if self.chains[0].touched != 0 {
            let ok: Vec<bool> = self.chains.iter().map(|c| c.bad == 0).collect();
            self.check_match(|ci| ok[ci], self.next_index);
        }
    }

    /// Sets `matched_after` if every targeted bank matches under some mode.
    fn check_match(&mut self, ok: impl Fn(usize) -> bool, after: u64) -> bool {
        if !self.targeted || self.matched_after.is_some() {
            return self.matched_after.is_some();
        }
        let mut modes = Vec::new();
        for (bank, &algo) in self.opts.banks.iter().enumerate() {
            let mut targeted = false;
            let mut hit = None;
            for (ci, c) in self.chains.iter().enumerate().filter(|(_, c)| c.bank == bank) {
                let ok_ci = c.want.is_some() && ok(ci);
                targeted |= c.want.is_some();
                if hit.is_none() && ok_ci {
                    hit = Some(c.mode);
                }
            }
            match (targeted, hit) {
                (false, _) => {}
                (true, Some(m)) => modes.push((algo, m)),
                (true, None) => return false,
            }
        }
        self.matched_after = Some(after);
        self.matched_modes = modes;
        true
    }

    fn compute(opts: &ReplayOptions, rec: &Record) -> std::result::Result<Extends, crate::error::Reason> {
        let zero = PcrValue::zero(HashAlgo::Sha1);
        let mut e = Extends {
            pcr: rec.pcr,
            violation: rec.is_violation(),
            digest_mismatch: false,
            native: [zero; 5],
            sha1: [0; 20],
        };
        if rec.pcr as usize >= NUM_PCRS {
            return Err(crate::error::Reason::PcrIndex(rec.pcr as u64));
        }
        if e.violation {
            return Ok(e);
        }
        let padded = opts.modes.contains(&ExtendMode::PaddedSha1);
        let mut have_sha1 = false;
        let mut logd = None;
        for (bi, a) in opts.banks.iter().enumerate() {
            let h = template_hash(*a, rec, opts.endian)?;
            if *a == HashAlgo::Sha1 {
                e.sha1.copy_from_slice(h.as_bytes());
                have_sha1 = true;
            }
            if *a == opts.log_bank {
                logd = Some(h);
            }
            e.native[bi] = h;
        }
        let logd = match logd {
            Some(d) => d,
            None => template_hash(opts.log_bank, rec, opts.endian)?,
        };
        e.digest_mismatch = logd.as_bytes() != rec.digest.as_slice();
        if padded && !have_sha1 {
            e.sha1.copy_from_slice(template_hash(HashAlgo::Sha1, rec, opts.endian)?.as_bytes());
        }
        Ok(e)
    }

    /// Extends every chain with a batch of computed records, chains in parallel.
    fn apply(&mut self, batch: &[Extends]) {
        let parallel = self.opts.parallel && batch.len() >= 64 && self.chains.len() > 1;
        if parallel {
            self.chains.par_iter_mut().for_each(|c| c.run(batch));
        } else {
            self.chains.iter_mut().for_each(|c| c.run(batch));
        }
        let start = self.next_index;
        for (i, e) in batch.iter().enumerate() {
            let idx = start + i as u64;
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
        }
        if self.targeted && self.matched_after.is_none() {
            for i in 0..batch.len() {
                let mut ok = [false; 10];
                for (o, c) in ok.iter_mut().zip(&self.chains) {
                    *o = c.ok.get(i).copied().unwrap_or(false);
                }
                if self.check_match(|ci| ok[ci], start + i as u64 + 1) {
                    break;
                }
            }
        }
        self.next_index += batch.len() as u64;
        self.records += batch.len() as u64;
    }

    /// Replays one record.
    pub fn push(&mut self, rec: &Record) -> Result<()> {
        let e = Self::compute(&self.opts, rec).map_err(|r| Error::new(self.next_index, 0, r))?;
        self.apply(&[e]);
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
        let mut extends = std::mem::take(&mut self.extends);
        extends.clear();
        let mut out = Ok(());
        for e in &scratch {
            match e {
                Ok(e) => extends.push(*e),
                Err(r) => {
                    out = Err(Error::new(self.next_index + extends.len() as u64, 0, r.clone()));
                    break;
                }
            }
        }
        // Records before a bad one still count: the error names the first unreplayable index.
        self.apply(&extends);
        self.scratch = scratch;
        self.extends = extends;
        out
    }

    pub fn finish(self) -> ReplayReport {
        let states = self.opts.modes.iter().map(|&m| (m, self.state_for(m))).collect();
        ReplayReport {
            records: self.records,
            next_index: self.next_index,
            violations: self.violations,
            first_violation: self.first_violation,
            template_digest_mismatches: self.mismatches,
            mismatch_count: self.mismatch_count,
            states,
            matched_after: self.matched_after,
            matched_modes: self.matched_modes,
        }
    }
}

/// Replays a whole stream in batches of `batch` records. A second thread decodes the next
/// batch while this one hashes and extends; memory is bounded by three batches.
pub fn replay_stream<R: std::io::Read + Send>(
    reader: &mut crate::reader::LogReader<R>,
    replayer: &mut Replayer,
    batch: usize,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Result<Vec<Record>>>(1);
    let (empty_tx, empty_rx) = sync_channel::<Vec<Record>>(3);
    for _ in 0..2 {
        // Cannot fail: `empty_rx` is alive and the channel holds three.
        let _ = empty_tx.send(Vec::with_capacity(batch));
    }
    std::thread::scope(|sc| {
        sc.spawn(move || {
            while let Ok(mut recs) = empty_rx.recv() {
                // Refill, reusing the buffers of the records of the returned batch.
                let mut old = std::mem::take(&mut recs).into_iter();
                recs.reserve(batch);
                let res = loop {
                    if recs.len() == batch {
                        break Ok(());
                    }
                    match reader.read_owned(old.next()) {
                        Ok(Some(r)) => recs.push(r),
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                drop(old);
                let done = recs.len() < batch;
                let msg = match res {
                    Ok(()) => Ok(recs),
                    Err(e) => Err(e),
                };
                let failed = msg.is_err();
                if full_tx.send(msg).is_err() || done || failed {
                    return;
                }
            }
        });
        let mut result = Ok(());
        while let Ok(msg) = full_rx.recv() {
            let recs = match msg {
                Ok(r) => r,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if let Err(e) = replayer.push_batch(&recs) {
                result = Err(e);
                break;
            }
            progress(replayer.next_index());
            // The producer may already have finished; its last batch is still queued.
            let _ = empty_tx.send(recs);
        }
        drop(empty_tx);
        drop(full_rx);
        result
    })
}
