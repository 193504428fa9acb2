//! Multi-bank PCR replay. Template digests are independent, so a batch is hashed in
//! parallel; only the extend chain is serial.

use crate::algo::{HashAlgo, PcrValue};
use crate::codec::{Endian, Record};
use crate::digest::{template_hash_data, violation_value, ExtendMode};
use crate::error::{Error, Reason, Result};
use crate::template::Template;
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

/// Where a record's computed digests sit in [`Computed::digests`].
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Offset of bank i's template digest (the native extend value).
    bank_off: [usize; 5],
    /// Offset of the SHA1 template digest (padded-SHA1 extends): the SHA1 bank's own, or an
    /// extra 20 bytes after the banks when padded mode is on without a SHA1 bank.
    sha1_off: usize,
    /// SHA1 digest stored apart from the banks.
    extra_sha1: bool,
    /// Bytes per record.
    stride: usize,
}

impl Layout {
    fn new(opts: &ReplayOptions) -> Self {
        let mut bank_off = [0; 5];
        let mut off = 0;
        let mut sha1 = None;
        for (o, a) in bank_off.iter_mut().zip(&opts.banks) {
            *o = off;
            if *a == HashAlgo::Sha1 {
                sha1 = Some(off);
            }
            off += a.size();
        }
        let padded = opts.modes.contains(&ExtendMode::PaddedSha1);
        let (sha1_off, extra_sha1) = match sha1 {
            Some(o) => (o, false),
            None if padded => (off, true),
            None => (0, false),
        };
        let stride = off + if extra_sha1 { 20 } else { 0 };
        Self { bank_off, sha1_off, extra_sha1, stride: stride.max(1) }
    }
}

/// Copies a digest into its place in a batch; the common sizes with fixed-length copies
/// (inlined moves rather than a `memcpy` call per record).
#[inline]
fn copy_digest(dst: Option<&mut [u8]>, src: &[u8]) {
    let Some(d) = dst else { return };
    // Array conversions give the copy a length the compiler knows (no `memcpy` call).
    if let (Ok(d), Ok(s)) = (<&mut [u8; 20]>::try_from(&mut *d), <&[u8; 20]>::try_from(src)) {
        *d = *s;
    } else if let (Ok(d), Ok(s)) = (<&mut [u8; 32]>::try_from(&mut *d), <&[u8; 32]>::try_from(src)) {
        *d = *s;
    } else if d.len() == src.len() {
        d.copy_from_slice(src);
    }
}

/// Per-record facts that do not depend on the chain.
#[derive(Clone, Copy)]
struct Meta {
    pcr: u8,
    violation: bool,
    digest_mismatch: bool,
}

/// The template digests of a batch, computed independently of the chains: one [`Meta`]
/// and `stride` bytes of digests per record, flat (no per-record allocation).
#[derive(Clone, Default)]
struct Computed {
    meta: Vec<Meta>,
    digests: Vec<u8>,
}

impl Computed {
    fn clear(&mut self) {
        self.meta.clear();
        self.digests.clear();
    }
    fn len(&self) -> usize {
        self.meta.len()
    }

    /// Appends one record: every bank's template digest, compared with the stored one.
    fn push(
        &mut self,
        opts: &ReplayOptions,
        lay: &Layout,
        pcr: u32,
        digest: &[u8],
        template: &Template,
        data: &[u8],
    ) -> std::result::Result<(), Reason> {
        if pcr as usize >= NUM_PCRS {
            return Err(Reason::PcrIndex(pcr as u64));
        }
        let violation = digest.iter().all(|&b| b == 0);
        let start = self.digests.len();
        self.digests.resize(start + lay.stride, 0);
        if !violation {
            if let Err(r) = self.hash_into(opts, lay, start, digest, template, data).map(|m| {
                self.meta.push(Meta { pcr: pcr as u8, violation, digest_mismatch: m });
            }) {
                self.digests.truncate(start);
                return Err(r);
            }
        } else {
            self.meta.push(Meta { pcr: pcr as u8, violation, digest_mismatch: false });
        }
        Ok(())
    }

    /// Fills the record at `start`; returns whether the stored digest mismatches.
    fn hash_into(
        &mut self,
        opts: &ReplayOptions,
        lay: &Layout,
        start: usize,
        digest: &[u8],
        template: &Template,
        data: &[u8],
    ) -> std::result::Result<bool, Reason> {
        let out = &mut self.digests[start..];
        let mut mismatch = None;
        for (a, &off) in opts.banks.iter().zip(&lay.bank_off) {
            let h = template_hash_data(*a, template, data, opts.endian)?;
            copy_digest(out.get_mut(off..off + a.size()), h.as_bytes());
            if *a == opts.log_bank {
                mismatch = Some(h.as_bytes() != digest);
            }
        }
        let mismatch = match mismatch {
            Some(m) => m,
            None => template_hash_data(opts.log_bank, template, data, opts.endian)?.as_bytes() != digest,
        };
        if lay.extra_sha1 {
            let h = template_hash_data(HashAlgo::Sha1, template, data, opts.endian)?;
            copy_digest(out.get_mut(lay.sha1_off..lay.sha1_off + 20), h.as_bytes());
        }
        Ok(mismatch)
    }
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
    /// Bit i: PCR i is touched and differs from the target.
    bad: u32,
    /// Per record of the current batch: did every touched PCR match afterwards?
    ok: Vec<bool>,
    /// Offset of this chain's input in a record's digests, and its length.
    input_off: usize,
    input_len: usize,
    /// What a violation extends.
    violation: PcrValue,
}

impl Chain {
    fn new(mode: ExtendMode, bank: usize, algo: HashAlgo, state: &PcrState, lay: &Layout) -> Self {
        let (input_off, input_len) = match mode {
            ExtendMode::Native => (lay.bank_off.get(bank).copied().unwrap_or(0), algo.size()),
            ExtendMode::PaddedSha1 => (lay.sha1_off, 20),
        };
        Chain {
            mode,
            bank,
            algo,
            values: state.bank(algo).copied().unwrap_or([PcrValue::zero(algo); NUM_PCRS]),
            touched: state.touched,
            want: None,
            bad: 0,
            ok: Vec::new(),
            input_off,
            input_len,
            violation: violation_value(algo, mode),
        }
    }

    fn run(&mut self, batch: &Computed, stride: usize) {
        self.run_on(&batch.meta, &batch.digests, stride);
    }

    /// [`Chain::run`] over records given as their metas and digests (a prefix of a batch).
    fn run_on(&mut self, meta: &[Meta], digests: &[u8], stride: usize) {
        self.ok.clear();
        let size = self.algo.size();
        // Padded mode: the SHA1 digest, zero-padded to the bank size (a longer bank only).
        let mut padded = [0u8; crate::algo::MAX_DIGEST];
        for (m, d) in meta.iter().zip(digests.chunks_exact(stride)) {
            let p = m.pcr as usize;
            let input: &[u8] = if m.violation {
                self.violation.as_bytes()
            } else {
                let src = d.get(self.input_off..self.input_off + self.input_len).unwrap_or_default();
                if self.input_len == size {
                    src
                } else {
                    padded[..src.len()].copy_from_slice(src);
                    &padded[..size]
                }
            };
            // `Computed::push` refused PCR indices past the bank.
            let Some(v) = self.values.get_mut(p) else { continue };
            self.algo.extend(v, input);
            self.touched |= 1 << p;
            if let Some(want) = &self.want {
                if want[p].as_ref() == Some(v) {
                    self.bad &= !(1 << p);
                } else {
                    self.bad |= 1 << p;
                }
                self.ok.push(self.bad == 0);
            }
        }
    }

    /// Takes the replay state of `o`, a chain that computes the same values.
    fn copy_state(&mut self, o: &Chain) {
        self.values = o.values;
        self.touched = o.touched;
        self.bad = o.bad;
        self.ok.clone_from(&o.ok);
    }
}

/// Replays records into PCR state.
pub struct Replayer {
    opts: ReplayOptions,
    layout: Layout,
    chains: Vec<Chain>,
    /// `(a, b)`: chain a computes exactly what chain b does (SHA1 bank, padded-SHA1 mode, is
    /// the native SHA1 chain), so it takes b's state instead of hashing again.
    aliases: Vec<(usize, usize)>,
    next_index: u64,
    records: u64,
    violations: u64,
    first_violation: Option<u64>,
    mismatches: Vec<u64>,
    mismatch_count: u64,
    targeted: bool,
    matched_after: Option<u64>,
    matched_modes: Vec<(HashAlgo, ExtendMode)>,
    scratch: Vec<(Computed, Option<Reason>)>,
    /// Records hashed by [`Replayer::queue`], waiting for [`Replayer::apply_queued`].
    queue: Computed,
    /// Records queued, counting those after one that could not be hashed.
    queued: usize,
    /// Why the first record that could not be hashed was refused (the queue ends there).
    queue_err: Option<Reason>,
}

/// What [`Replayer::apply_queued`] did with one batch.
#[derive(Clone, Debug)]
pub struct Applied {
    /// Global index of the batch's first record.
    pub start: u64,
    /// One past the last record extended (the batch, or up to the first record that could
    /// not be replayed), before any stop at the match.
    pub end: u64,
    /// First record of the batch whose stored template digest differs from the recomputed one.
    pub first_mismatch: Option<u64>,
    /// The first record that could not be replayed (its index), as [`Replayer::push_batch`] reports it.
    pub error: Option<Error>,
    /// As [`ReplayReport::matched_after`], so far.
    pub matched_after: Option<u64>,
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
        let layout = Layout::new(&opts);
        let mut chains = Vec::new();
        for &mode in &opts.modes {
            for (bank, &algo) in opts.banks.iter().enumerate() {
                chains.push(Chain::new(mode, bank, algo, &state, &layout));
            }
        }
        let mut aliases = Vec::new();
        for (a, c) in chains.iter().enumerate() {
            if c.mode == ExtendMode::PaddedSha1 && c.algo == HashAlgo::Sha1 {
                let same = |o: &Chain| o.mode == ExtendMode::Native && o.bank == c.bank;
                if let Some(b) = chains.iter().position(same) {
                    aliases.push((a, b));
                }
            }
        }
        Self {
            opts,
            layout,
            chains,
            aliases,
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
            queue: Computed::default(),
            queued: 0,
            queue_err: None,
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
                c.bad = (0..NUM_PCRS)
                    .filter(|&p| c.touched & (1 << p) != 0 && w[p] != Some(c.values[p]))
                    .fold(0, |m, p| m | 1 << p);
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

    /// Extends the chains with a computed batch, then counts and matches.
    fn apply(&mut self, batch: &Computed, parallel: bool) {
        let stride = self.layout.stride;
        let run: Vec<bool> = (0..self.chains.len()).map(|ci| !self.aliases.iter().any(|&(a, _)| a == ci)).collect();
        let parallel = parallel && batch.len() >= 64 && run.iter().filter(|r| **r).count() > 1;
        if parallel {
            self.chains.par_iter_mut().zip(&run).filter(|(_, r)| **r).for_each(|(c, _)| c.run(batch, stride));
        } else {
            self.chains.iter_mut().zip(&run).filter(|(_, r)| **r).for_each(|(c, _)| c.run(batch, stride));
        }
        self.copy_aliases();
        self.account(batch);
    }

    /// Chains that compute what another does take its state.
    fn copy_aliases(&mut self) {
        for &(a, b) in &self.aliases {
            if let Some(src) = self.chains.get(b).cloned() {
                if let Some(dst) = self.chains.get_mut(a) {
                    dst.copy_state(&src);
                }
            }
        }
    }

    /// Counts violations and mismatches of a batch the chains have extended, and looks for
    /// the first record after which the targets match.
    fn account(&mut self, batch: &Computed) {
        let start = self.next_index;
        for (i, m) in batch.meta.iter().enumerate() {
            let idx = start + i as u64;
            if m.violation {
                self.violations += 1;
                self.first_violation.get_or_insert(idx);
            }
            if m.digest_mismatch {
                self.mismatch_count += 1;
                if self.mismatches.len() < MAX_REPORTED_MISMATCHES {
                    self.mismatches.push(idx);
                }
            }
        }
        if self.targeted && self.matched_after.is_none() {
            for i in 0..batch.len() {
                let mut ok = [false; 10];
                let mut any = false;
                for (o, c) in ok.iter_mut().zip(&self.chains) {
                    *o = c.ok.get(i).copied().unwrap_or(false);
                    any |= *o;
                }
                // No chain matches: no bank can (the common case, checked cheaply).
                if any && self.check_match(|ci| ok[ci], start + i as u64 + 1) {
                    break;
                }
            }
        }
        self.next_index += batch.len() as u64;
        self.records += batch.len() as u64;
    }

    /// Computes `recs` into `out` until the first that cannot be replayed.
    fn compute(opts: &ReplayOptions, lay: &Layout, recs: &[Record], out: &mut (Computed, Option<Reason>)) {
        out.0.clear();
        out.1 = None;
        for r in recs {
            if let Err(e) = out.0.push(opts, lay, r.pcr, &r.digest, &r.template, &r.template_data) {
                out.1 = Some(e);
                return;
            }
        }
    }

    /// Hashes one record's template digests now, from wherever its bytes lie (e.g. a
    /// reader's buffer, [`crate::BinaryReader::visit_raw`]), and queues it for
    /// [`Replayer::apply_queued`]: no copy of the record is kept. As in
    /// [`Replayer::push_batch`], the batch ends at the first record that cannot be
    /// replayed; later ones are only counted.
    #[inline]
    pub fn queue(&mut self, pcr: u32, digest: &[u8], template: &Template, data: &[u8]) {
        self.queued += 1;
        if self.queue_err.is_some() {
            return;
        }
        if let Err(r) = self.queue.push(&self.opts, &self.layout, pcr, digest, template, data) {
            self.queue_err = Some(r);
        }
    }

    /// Records queued since the last [`Replayer::apply_queued`].
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Drops the queued records.
    pub fn discard_queued(&mut self) {
        self.queue.clear();
        self.queued = 0;
        self.queue_err = None;
    }

    /// Extends the chains with the queued records (on this thread) and empties the queue.
    /// With `stop_at_match`, a batch in which the targets are matched leaves the state
    /// exactly at the match (`next_index` = the match), from the digests already computed.
    pub fn apply_queued(&mut self, stop_at_match: bool) -> Applied {
        let q = std::mem::take(&mut self.queue);
        let start = self.next_index;
        let saved = (stop_at_match && self.targeted).then(|| self.chains.clone());
        self.apply(&q, false);
        let end = self.next_index;
        let first_mismatch = q.meta.iter().position(|m| m.digest_mismatch).map(|i| start + i as u64);
        let error = self.queue_err.take().map(|r| Error::new(end, 0, r));
        if let (Some(m), Some(chains)) = (self.matched_after, saved) {
            if m < end {
                // Back to the batch's start, then forward to the match.
                let n = (m.saturating_sub(start) as usize).min(q.len());
                let stride = self.layout.stride;
                self.chains = chains;
                let meta = q.meta.get(..n).unwrap_or_default();
                let digests = q.digests.get(..n * stride).unwrap_or_default();
                for (ci, c) in self.chains.iter_mut().enumerate() {
                    if !self.aliases.iter().any(|&(a, _)| a == ci) {
                        c.run_on(meta, digests, stride);
                    }
                }
                self.copy_aliases();
                self.next_index = start + n as u64;
            }
        }
        self.queue = q;
        self.queue.clear();
        self.queued = 0;
        Applied { start, end, first_mismatch, error, matched_after: self.matched_after }
    }

    /// Replays one record.
    pub fn push(&mut self, rec: &Record) -> Result<()> {
        self.push_batch(std::slice::from_ref(rec))
    }

    /// Replays a batch, hashing template digests in parallel.
    pub fn push_batch(&mut self, recs: &[Record]) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let (opts, lay) = (&self.opts, &self.layout);
        let parallel = opts.parallel && recs.len() >= 64;
        let parts = if parallel { rayon::current_num_threads().clamp(1, 64) } else { 1 };
        let per = recs.len().div_ceil(parts).max(1);
        let chunks: Vec<&[Record]> = recs.chunks(per).collect();
        scratch.resize_with(chunks.len().max(scratch.len()), Default::default);
        let work = &mut scratch[..chunks.len()];
        if parallel {
            work.par_iter_mut().zip(&chunks).for_each(|(w, c)| Self::compute(opts, lay, c, w));
        } else {
            work.iter_mut().zip(&chunks).for_each(|(w, c)| Self::compute(opts, lay, c, w));
        }
        let mut out = Ok(());
        for (c, err) in work.iter() {
            self.apply(c, self.opts.parallel);
            // Records before a bad one still count: the error names the first unreplayable index.
            if let Some(r) = err {
                out = Err(Error::new(self.next_index, 0, r.clone()));
                break;
            }
        }
        self.scratch = scratch;
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

/// Replays a whole stream in batches of `batch` records, on two threads. A binary log is
/// hashed where it lies in the read buffer: the reading thread decodes the next batch and
/// computes every template digest, while this thread extends the chains with the previous
/// batch and matches it. Memory is bounded by two batches.
pub fn replay_stream<R: std::io::Read + Send>(
    reader: &mut crate::reader::LogReader<R>,
    replayer: &mut Replayer,
    batch: usize,
    progress: impl FnMut(u64),
) -> Result<()> {
    match reader {
        crate::reader::LogReader::Binary(r) => replay_binary(r, replayer, batch.max(1), progress),
        _ => replay_records(reader, replayer, batch.max(1), progress),
    }
}

/// A batch travelling between the two threads of [`replay_binary`].
#[derive(Default)]
struct Work {
    computed: Computed,
    /// Why the batch ended early: the records before it are in `computed`.
    err: Option<Error>,
}

fn replay_binary<R: std::io::Read + Send>(
    reader: &mut crate::reader::BinaryReader<R>,
    rp: &mut Replayer,
    batch: usize,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    use std::sync::mpsc::sync_channel;
    let (opts, lay) = (rp.opts.clone(), rp.layout);
    let (full_tx, full_rx) = sync_channel::<Work>(2);
    let (empty_tx, empty_rx) = sync_channel::<Work>(2);
    for _ in 0..2 {
        // Cannot fail: `empty_rx` is alive and the channel holds two.
        let _ = empty_tx.send(Work::default());
    }
    std::thread::scope(|sc| {
        sc.spawn(move || {
            while let Ok(mut w) = empty_rx.recv() {
                w.computed.clear();
                let first = reader.next_index();
                let mut bad = None;
                let res = reader.visit_raw(batch, |raw| {
                    match w.computed.push(&opts, &lay, raw.pcr, raw.digest, &raw.template, raw.data) {
                        Ok(()) => true,
                        Err(r) => {
                            bad = Some(r);
                            false
                        }
                    }
                });
                let n = w.computed.len();
                w.err = match (res, bad) {
                    (Err(e), _) => Some(e),
                    (Ok(_), Some(r)) => Some(Error::new(first + n as u64, 0, r)),
                    (Ok(_), None) => None,
                };
                let last = w.err.is_some() || n < batch;
                if full_tx.send(w).is_err() || last {
                    return;
                }
            }
        });
        let mut result = Ok(());
        while let Ok(mut w) = full_rx.recv() {
            rp.apply(&w.computed, false);
            progress(rp.next_index());
            if let Some(e) = w.err.take() {
                result = Err(e);
                break;
            }
            // The reader may already have finished; its last batch is still queued.
            let _ = empty_tx.send(w);
        }
        drop(empty_tx);
        drop(full_rx);
        result
    })
}

/// [`replay_stream`] for readers that produce owned records (ASCII): a second thread
/// decodes the next batch while this one hashes and extends.
fn replay_records<R: std::io::Read + Send>(
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
