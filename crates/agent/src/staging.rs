//! The staging back end (docs/STAGING.md): cuts without a marker, by `N` (trim) or by
//! `A`/`D` (stage), and the recovery that re-derives where the kernel's list starts.
//!
//! The kernel keeps no count of deleted records and writes no record when it deletes, so
//! the absolute index of the list's head (`live_base`) is the agent's own. It is never
//! stored on its own: on start it is re-derived by comparing the kernel's list with the
//! store, record by record (position and SHA1 template digest).
//!
//! Order, both flavours: store durably (file fsynced and renamed, manifest committed),
//! then delete. A crash before the delete leaves stored records in the kernel; the next
//! start finds them by comparison and the next cut deletes them without storing them
//! again. Nothing is deleted that the manifest does not hold.

use crate::agent::{Agent, AgentError, CrashPoint};
use crate::kernel::{KernelIfError, SnapshotKernel};
use crate::policy::StagingFlavour;
use imasnap_log::{BinaryReader, Endian, PcrState, PcrValue, Record, ReplayOptions, Replayer};
use imasnap_store::manifest::Cut;
use imasnap_store::{snap_file_name, BootDir, Manifest, SnapshotEntry, StoreError};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};

/// A measurement list read into memory: the kernel's bytes and where each record ends.
#[derive(Clone)]
pub(crate) struct ListCopy {
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: Vec<Record>,
    /// Byte offset one past each record.
    pub(crate) ends: Vec<usize>,
}

impl ListCopy {
    pub(crate) fn read(r: impl Read, what: &str) -> Result<Self, AgentError> {
        let mut bytes = Vec::new();
        let mut r = r;
        r.read_to_end(&mut bytes)
            .map_err(|e| AgentError::Kernel(KernelIfError::Failed(format!("read {what}: {e}"))))?;
        let mut rd = BinaryReader::new(bytes.as_slice(), imasnap_store::snapshot_format());
        let mut records = Vec::new();
        let mut ends = Vec::new();
        for rec in rd.by_ref() {
            match rec {
                Ok(rec) => records.push(rec),
                Err(e) => return Err(AgentError::Inconsistent(format!("{what}: {e}"))),
            }
        }
        // Offsets: re-walk the encoded lengths (the reader verified every record).
        let mut at = 0;
        for rec in &records {
            at += rec.encoded_len();
            ends.push(at);
        }
        Ok(Self { bytes, records, ends })
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Bytes of records `[from, to)`.
    pub(crate) fn slice(&self, from: usize, to: usize) -> &[u8] {
        let start = if from == 0 { 0 } else { self.ends[from - 1] };
        let end = if to == 0 { 0 } else { self.ends[to - 1] };
        &self.bytes[start..end]
    }

    pub(crate) fn concat(mut self, other: ListCopy) -> Self {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.records.extend(other.records);
        self.ends.extend(other.ends.into_iter().map(|e| e + base));
        self
    }
}

pub(crate) fn is_boot_aggregate(rec: &Record) -> bool {
    rec.name(Endian::Little).as_deref() == Some("boot_aggregate")
}

/// Records `[from, from + n)` of the boot as the store holds them (SHA1 digests only).
fn stored_digests(dir: &BootDir, m: &Manifest, from: u64, n: u64) -> Result<Vec<Vec<u8>>, AgentError> {
    let mut out = Vec::new();
    for s in m.snapshots.iter().filter(|s| s.end_index() > from && s.first_index < from + n) {
        let p = dir.path().join(&s.file);
        let f = File::open(&p).map_err(|source| StoreError::Io { op: "open", path: p.clone(), source })?;
        let rd = BinaryReader::starting_at(BufReader::new(f), imasnap_store::snapshot_format(), s.first_index);
        for (i, rec) in rd.enumerate() {
            let idx = s.first_index + i as u64;
            let rec = rec.map_err(|e| AgentError::Inconsistent(format!("{}: {e}", p.display())))?;
            if idx >= from && idx < from + n {
                out.push(rec.digest);
            }
        }
    }
    Ok(out)
}

/// Where the kernel's list (staged records first, then the current list) starts in the
/// boot's absolute numbering: at `next_index`, or earlier when records the store already
/// holds were not deleted (a crash before the delete, or kexec with records staged).
///
/// Candidates are checked by position and SHA1 template digest. A list that could start
/// at two places (a kexec'd kernel's boot_aggregate equals record 0 byte for byte, and
/// after an `A`/`D` cut nothing names the next record) is settled by the TPM: `pcr_now`,
/// read before the list, must equal the replay of the boot up to the candidate plus a
/// prefix of the list.
pub(crate) fn locate(
    dir: &BootDir,
    m: &Manifest,
    list: &ListCopy,
    pcr_now: Option<&[PcrValue]>,
) -> Result<u64, String> {
    let Some(first) = list.records.first() else {
        // Nothing in the kernel at all: everything up to here was stored and deleted.
        return Ok(m.next_index);
    };
    let mut candidates = Vec::new();
    let last = m.snapshots.last();
    // A head that the manifest names proves the position outright.
    let named = match last {
        None => m.check_boundary(0, first).is_ok(),
        Some(s) if s.cut == Cut::Stage => false,
        Some(_) => m.check_boundary(m.next_index, first).is_ok(),
    };
    if named {
        candidates.push(m.next_index);
    }
    // Stored records still in the kernel: the list must repeat them, whole. Newest first;
    // each failed delete adds one segment to the overlap, so look as far back as the list
    // is long.
    for s in m.snapshots.iter().rev() {
        let overlap = m.next_index - s.first_index;
        if (list.len() as u64) < overlap {
            break;
        }
        let d = stored_digests(dir, m, s.first_index, overlap).map_err(|e| e.to_string())?;
        if d.len() as u64 == overlap && d.iter().zip(&list.records).all(|(a, b)| *a == b.digest) {
            candidates.push(s.first_index);
        }
    }
    // After A/D nothing names the next record: the list may start where the store ends.
    if last.is_some_and(|s| s.cut == Cut::Stage) {
        candidates.push(m.next_index);
    }
    candidates.dedup();
    match (candidates.as_slice(), pcr_now) {
        ([one], _) => Ok(*one),
        ([], _) => Err(format!(
            "the kernel's list starts with sha1 {}, which is neither record {} as the manifest names it \
             nor a stored record left undeleted: records would be lost or duplicated",
            hex::encode(&first.digest),
            m.next_index
        )),
        (several, Some(pcr)) => {
            // Of those the TPM allows, the one with the longest overlap proven record by
            // record. (A later candidate fits too when every record after it arrived between
            // the PCR read and the list read, and those records repeat the store's: not a
            // case to bet records on.)
            let fits = several.iter().copied().filter(|&b| replay_reaches(m, b, &list.records, pcr)).min();
            fits.ok_or_else(|| {
                format!("the kernel's list could start at records {several:?}, and the TPM's PCR {} fits none", m.pcr)
            })
        }
        (several, None) => Err(format!("the kernel's list could start at records {several:?}")),
    }
}

/// The measurement PCR where segment boundary `index` is, per the manifest's `pcrs_end`.
fn state_at(m: &Manifest, index: u64) -> Option<PcrState> {
    let mut state = PcrState::new(&m.banks);
    if index == 0 {
        return Some(state);
    }
    let s = m.snapshots.iter().find(|s| s.end_index() == index)?;
    for (bank, hex) in &s.pcrs_end {
        state.set(m.pcr as usize, PcrValue::from_hex(*bank, hex).ok()?);
    }
    state.mark_touched(m.pcr as usize);
    Some(state)
}

/// Whether replaying `recs` from boundary `base` passes through `pcr` (bank order).
fn replay_reaches(m: &Manifest, base: u64, recs: &[Record], pcr: &[PcrValue]) -> bool {
    replay_reaches_opt(m, base, recs, pcr).is_some()
}

fn replay_reaches_opt(m: &Manifest, base: u64, recs: &[Record], pcr: &[PcrValue]) -> Option<()> {
    let start = state_at(m, base)?;
    let p = m.pcr as usize;
    let hits = |st: &PcrState| pcr.iter().all(|v| st.get(v.algo(), p) == Some(v));
    if hits(&start) {
        return Some(());
    }
    let mut opts = ReplayOptions::new(&m.banks);
    opts.parallel = false;
    let mut rp = Replayer::resume(opts, start, base);
    for r in recs {
        rp.push(r).ok()?;
        if hits(&rp.state()) {
            return Some(());
        }
    }
    None
}
/// The measurement PCR after `recs`, from the values after the manifest's last segment.
fn pcrs_after(m: &Manifest, recs: &[Record]) -> Result<BTreeMap<imasnap_log::HashAlgo, String>, AgentError> {
    let state = state_at(m, m.next_index)
        .ok_or_else(|| AgentError::Inconsistent("the manifest's last pcrs_end does not parse".into()))?;
    let mut opts = ReplayOptions::new(&m.banks);
    opts.parallel = false;
    let mut rp = Replayer::resume(opts, state, m.next_index);
    rp.push_batch(recs).map_err(|e| AgentError::Inconsistent(format!("replaying the new segment: {e}")))?;
    let st = rp.state();
    let mut out = BTreeMap::new();
    for &b in &m.banks {
        let v = st.get(b, m.pcr as usize).ok_or_else(|| AgentError::Inconsistent(format!("no bank {b}")))?;
        out.insert(b, v.to_hex());
    }
    Ok(out)
}

impl<K: SnapshotKernel> Agent<K> {
    /// One staging cut in the configured flavour. Returns the new segment, or `None` when
    /// nothing new was stored (only records already stored were deleted, or nothing).
    pub(crate) fn staging_once(&mut self) -> Result<Option<SnapshotEntry>, AgentError> {
        match self.config().staging {
            StagingFlavour::Trim => self.trim_once(),
            StagingFlavour::Stage => self.stage_once(),
        }
    }

    /// Trim: read the list, store all but its last record, then `N` for exactly what the
    /// store holds. The kept record heads the list and is named in the manifest, so a
    /// restart tells from the head alone whether `N` ran.
    fn trim_once(&mut self) -> Result<Option<SnapshotEntry>, AgentError> {
        let (dir, m) = self.current_state()?;
        let base = self.live_base();
        let list = ListCopy::read(self.kernel_mut().live_list()?, "the live list")?;
        let skip = (m.next_index - base) as usize;
        // The kept record must differ from the head, or a restart could not tell them apart.
        let head = list.records.first().map(|r| r.digest.clone());
        let keep = (skip + 1..list.len()).rev().find(|&e| Some(&list.records[e].digest) != head.as_ref());
        let (entry, delete) = match keep {
            Some(e) => {
                let next_sha1 = hex::encode(&list.records[e].digest);
                let entry = self.store_segment(&dir, &m, &list, skip, e, Cut::Trim, Some(next_sha1))?;
                (Some(entry), e as u64)
            }
            None => (None, skip as u64),
        };
        if delete > 0 {
            self.kernel_mut().trim(delete)?;
            self.point(CrashPoint::AfterDone)?;
        }
        self.set_live_base(base + delete);
        Ok(entry)
    }

    /// Stage: `A`, read the staged list, store what is new, then `D`.
    fn stage_once(&mut self) -> Result<Option<SnapshotEntry>, AgentError> {
        let mut first = None;
        for _ in 0..2 {
            match self.kernel_mut().stage() {
                Ok(()) => {}
                // Left staged by an earlier attempt (a failed read or D): finish that, then
                // stage what came since.
                Err(KernelIfError::Exists(_)) if first.is_none() => {
                    let staged = ListCopy::read(self.kernel_mut().staged_list()?, "the staged list")?;
                    first = Some(self.finish_staged(staged)?);
                    continue;
                }
                Err(KernelIfError::NoEntry(_)) => return Ok(first.flatten()),
                Err(e) => return Err(e.into()),
            }
            self.point(CrashPoint::AfterOpen)?;
            let staged = ListCopy::read(self.kernel_mut().staged_list()?, "the staged list")?;
            let e = self.finish_staged(staged)?;
            return Ok(e.or(first.flatten()));
        }
        Ok(first.flatten())
    }

    /// Stores the staged records the store lacks, then `D`.
    fn finish_staged(&mut self, staged: ListCopy) -> Result<Option<SnapshotEntry>, AgentError> {
        let (dir, m) = self.current_state()?;
        let base = self.live_base();
        let skip = (m.next_index - base) as usize;
        if staged.len() < skip {
            return Err(AgentError::Inconsistent(format!(
                "{} records staged, but {skip} stored records should still be in the kernel",
                staged.len()
            )));
        }
        let entry = match staged.len() > skip {
            true => Some(self.store_segment(&dir, &m, &staged, skip, staged.len(), Cut::Stage, None)?),
            false => None,
        };
        if !staged.records.is_empty() {
            self.kernel_mut().delete_staged()?;
            self.point(CrashPoint::AfterDone)?;
        }
        self.set_live_base(base + staged.len() as u64);
        Ok(entry)
    }

    /// Writes records `[from, to)` of `list` as the next segment and commits the manifest.
    #[allow(clippy::too_many_arguments)]
    fn store_segment(
        &mut self,
        dir: &BootDir,
        m: &Manifest,
        list: &ListCopy,
        from: usize,
        to: usize,
        cut: Cut,
        next_sha1: Option<String>,
    ) -> Result<SnapshotEntry, AgentError> {
        let seq = m.next_seq();
        let first_index = m.next_index;
        // A record that does not continue the store would be lost or duplicated: refuse.
        if let Some(first) = list.records.get(from) {
            m.check_boundary(first_index, first)
                .map_err(|why| AgentError::Inconsistent(format!("new segment: {why}")))?;
        }
        let mut t = dir.create_tentative(seq)?;
        let bytes = list.slice(from, to);
        let half = list.slice(from, from + (to - from) / 2).len();
        t.write(&bytes[..half])?;
        self.point(CrashPoint::DuringTmpWrite)?;
        t.write(&bytes[half..])?;
        self.point(CrashPoint::AfterTmpWrite)?;
        t.sync()?;
        self.point(CrashPoint::AfterFsync)?;
        let info = t.finish()?;
        if info.count != (to - from) as u64 {
            return Err(AgentError::Inconsistent(format!("wrote {} records, meant {}", info.count, to - from)));
        }
        dir.install_tentative(seq)?;
        self.point(CrashPoint::AfterRename)?;
        dir.sync()?;
        self.point(CrashPoint::AfterDirFsync)?;
        let pcrs_end = pcrs_after(m, &list.records[from..to])?;
        // Quoted after the segment is durable and before the manifest names it; a
        // failure leaves an uncommitted file that recovery removes.
        let checkpoint = self.take_checkpoint(m, seq)?;
        let entry = SnapshotEntry {
            seq,
            file: snap_file_name(seq),
            first_index,
            count: info.count,
            sha256: info.sha256,
            cut,
            end_marker: None,
            next_sha1,
            pcrs_end,
            checkpoint,
        };
        let mut next = m.clone();
        next.snapshots.push(entry.clone());
        next.next_index += info.count;
        dir.write_manifest_tmp(&next)?;
        self.point(CrashPoint::DuringManifestWrite)?;
        dir.install_manifest()?;
        dir.sync()?;
        self.set_manifest(next);
        self.point(CrashPoint::AfterManifestCommit)?;
        Ok(entry)
    }

    /// The staging half of [`Agent::recover`] once the boot directory is known: where the
    /// kernel's list starts, and a cut left between `A` and `D` finished.
    pub(crate) fn settle_staging(
        &mut self,
        staged: ListCopy,
        live: ListCopy,
        pcr_now: Option<&[PcrValue]>,
    ) -> Result<(), AgentError> {
        let (dir, m) = self.current_state()?;
        let n_staged = staged.len();
        let all = staged.concat(live);
        let base = locate(&dir, &m, &all, pcr_now).map_err(AgentError::Inconsistent)?;
        self.set_live_base(base);
        if n_staged > 0 {
            let mut staged = all;
            staged.records.truncate(n_staged);
            staged.ends.truncate(n_staged);
            let end = staged.ends.last().copied().unwrap_or(0);
            staged.bytes.truncate(end);
            self.finish_staged(staged)?;
        }
        Ok(())
    }

    /// Reads the staged and the current list for recovery (an empty staged list where the
    /// kernel has none).
    pub(crate) fn read_lists(&mut self) -> Result<(ListCopy, ListCopy), AgentError> {
        let staged = match self.kernel_mut().staged_list() {
            Ok(r) => ListCopy::read(r, "the staged list")?,
            Err(KernelIfError::Busy(e)) => return Err(KernelIfError::Busy(e).into()),
            Err(_) => ListCopy { bytes: Vec::new(), records: Vec::new(), ends: Vec::new() },
        };
        let live = ListCopy::read(self.kernel_mut().live_list()?, "the live list")?;
        Ok((staged, live))
    }
}
