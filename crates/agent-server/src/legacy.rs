//! The legacy securityfs back end: a stock kernel without the RFC `snapshot` file.
//!
//! The kernel keeps its whole measurement list and cannot trim it. The agent copies
//! `<ima_dir>/binary_runtime_measurements` incrementally into its own append-only file
//! (`<state_dir>/legacy/<boot-id>/binary_runtime_measurements`, fsync'd after every append):
//! it remembers the byte offset and record count already copied and reads only what
//! follows, whole records only (a record still being written is picked up next time).
//! Evidence is served from that copy, never from the kernel's file.
//!
//! Kernel access (the live list, resetCount, banks, the TPM) goes through
//! [`SecurityFs`], the same type the snapshot-capable mode uses.
//!
//! Start-up: the boot is identified by the TPM resetCount and record 0 (boot_aggregate),
//! as the snapshot store does. Another boot's copy is retired (archived or deleted, per
//! `retention`). The kept copy is compared with the kernel's list byte for byte: a copy
//! that is not a prefix of the kernel's list (tampered, or damaged) is moved aside as
//! `…corrupt-<unix seconds>` with an error in the log, and the copy starts over from the
//! kernel. A partial record at the end (a crash mid-append) is cut off.
//!
//! Checkpoints (docs/CHECKPOINTS.md) are taken on the copy by the agent's snapshot
//! policy: quote, copy what is new, find the index in the copy where the replay equals
//! the quote. They are kept in `checkpoints.json` beside the copy (a manifest whose
//! segments are the copy's ranges between checkpoints, cut `stage`), so evidence
//! describes the copy the way a staging host describes its segments and a verifier can
//! start at the newest checkpoint or check the ranges in parallel. Nothing is trimmed:
//! a snapshot request (HTTP POST) takes a checkpoint, and is refused (409) when
//! checkpoints are off.

use crate::api::{self, BootJson, EvidenceHeader};
use crate::host::{quote_tpm, segment_view, EvidenceView, HostError, HostOps};
use imasnap_agent::checkpoint::{quote_and_locate, CheckpointSource};
use imasnap_agent::{
    write_bundle_from, AgentConfig, AgentError, BundleInfo, Checkpoints, CrashPoint, Evidence, LiveStats, SecurityFs,
    SnapshotKernel, SnapshotPolicy,
};
use imasnap_log::{BinaryReader, Endian, HashAlgo, Reason};
use imasnap_store::manifest::Cut;
use imasnap_store::{fsio, BootId, BootInfo, Manifest, Retention, SnapshotEntry};
use imasnap_tpm::Tpm;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The copy's file name inside its boot directory.
pub const COPY_FILE: &str = "binary_runtime_measurements";
const BOOT_FILE: &str = "boot.json";
/// The checkpoints taken on the copy: a manifest of its ranges between them.
pub const CHECKPOINTS_FILE: &str = "checkpoints.json";
const CHUNK: usize = 1 << 20;

/// A legacy (read-only) kernel served from the agent's own copy of its list.
pub struct LegacyHost<T: Tpm> {
    fs: SecurityFs<T>,
    copy_path: PathBuf,
    copy: File,
    /// Bytes of whole records copied (the copy's length).
    offset: u64,
    /// Records copied.
    count: u64,
    boot: BootInfo,
    banks: Vec<HashAlgo>,
    pcr: u32,
    metrics: api::AgentMetrics,
    /// (record index, byte offset) pairs in the copy, one every [`MARK_EVERY`] records or
    /// more: a suffix request decodes from the nearest one instead of from record 0.
    marks: Vec<(u64, u64)>,
    /// The copy's ranges between checkpoints (`next_index`: the newest checkpoint's index).
    checkpoints: Manifest,
    /// Byte offset in the copy where each of those ranges ends.
    seg_ends: Vec<u64>,
    policy: SnapshotPolicy,
    last_checkpoint: Instant,
    /// After a failed policy checkpoint: no new try before this, and the next wait.
    retry_at: Option<Instant>,
    retry_wait: Duration,
}

/// First and longest wait after a policy checkpoint failed.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Records between two offset marks of the copy at least.
const MARK_EVERY: u64 = 1024;

fn other(what: impl std::fmt::Display) -> HostError {
    HostError::Other(what.to_string())
}

fn io(p: &Path, e: std::io::Error) -> HostError {
    HostError::Other(format!("{}: {e}", p.display()))
}

/// The length of the whole records at the start of `buf` and how many there are.
/// `first_index` only numbers errors. A truncated last record is not an error.
fn complete_prefix(buf: &[u8], first_index: u64) -> Result<(usize, u64), String> {
    let mut rd = BinaryReader::starting_at(buf, imasnap_store::snapshot_format(), first_index);
    let mut slot = None;
    loop {
        match rd.read_into(&mut slot) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if matches!(e.reason, Reason::Truncated { .. }) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((rd.offset() as usize, rd.next_index() - first_index))
}

fn sync_dir(p: &Path) -> Result<(), HostError> {
    File::open(p).and_then(|d| d.sync_all()).map_err(|e| io(p, e))
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl<T: Tpm> LegacyHost<T> {
    /// Opens (or starts) the copy for the kernel's current boot and catches up with it.
    /// Checkpoints follow `cfg.snapshot` (its triggers and its `checkpoints` switch).
    pub fn open(mut fs: SecurityFs<T>, cfg: &AgentConfig) -> Result<Self, HostError> {
        let (state_dir, retention) = (cfg.state_dir.as_path(), cfg.retention);
        let live = fs.dir().join("binary_runtime_measurements");
        if !live.exists() {
            return Err(other(format!("{} does not exist: not an IMA securityfs directory", live.display())));
        }
        let rc = fs.reset_count().map_err(other)?;
        let head = fs.live_head().map_err(other)?;
        if head.name(Endian::Little).as_deref() != Some("boot_aggregate") {
            return Err(other(format!(
                "{} does not start with boot_aggregate: a legacy kernel never trims its list",
                live.display()
            )));
        }
        let boot = BootInfo::from_boot_aggregate(rc, &head);
        let id = BootId::of(&boot);
        let root = state_dir.join("legacy");
        std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
        retire_others(&root, &state_dir.join("archive"), id.as_str(), retention)?;
        let dir = root.join(id.as_str());
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            let bf = dir.join(BOOT_FILE);
            let j = serde_json::to_vec_pretty(&boot).map_err(|e| other(format!("{}: {e}", bf.display())))?;
            std::fs::write(&bf, j).map_err(|e| io(&bf, e))?;
            File::open(&bf).and_then(|f| f.sync_all()).map_err(|e| io(&bf, e))?;
            sync_dir(&dir)?;
            sync_dir(&root)?;
            tracing::info!(boot = %id, dir = %dir.display(), "legacy mode: new copy for this boot");
        }
        let copy_path = dir.join(COPY_FILE);
        let (offset, count) = check_copy(&copy_path, &live)?;
        let copy = OpenOptions::new().create(true).append(true).open(&copy_path).map_err(|e| io(&copy_path, e))?;
        let banks = fs.banks().map_err(other)?;
        let pcr = fs.measurement_pcr();
        let marks = vec![(0, 0), (count, offset)];
        let (checkpoints, seg_ends) = load_checkpoints(&dir, &copy_path, &boot, &banks, pcr, count)?;
        let mut h = Self {
            fs,
            copy_path,
            copy,
            offset,
            count,
            boot,
            banks,
            pcr,
            metrics: Default::default(),
            marks,
            checkpoints,
            seg_ends,
            policy: cfg.snapshot.clone(),
            last_checkpoint: Instant::now(),
            retry_at: None,
            retry_wait: RETRY_FIRST,
        };
        let n = h.sync()?;
        tracing::info!(boot = %id, records = h.count, bytes = h.offset, copied_now = n,
            "legacy mode: copy of binary_runtime_measurements up to date");
        Ok(h)
    }

    /// Byte offset of record `to` in the copy (at most `count`), decoded from the nearest mark.
    fn offset_of(&self, to: u64) -> Result<u64, HostError> {
        let &(n, off) = self.marks.iter().rev().find(|&&(n, _)| n <= to).unwrap_or(&(0, 0));
        let mut f = File::open(&self.copy_path).map_err(|e| io(&self.copy_path, e))?;
        f.seek(SeekFrom::Start(off)).map_err(|e| io(&self.copy_path, e))?;
        let mut rd = BinaryReader::starting_at(std::io::BufReader::new(f), imasnap_store::snapshot_format(), n);
        while rd.next_index() < to {
            match rd.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(other(format!("{}: {e}", self.copy_path.display()))),
                None => return Err(other(format!("{} ends before record {to}", self.copy_path.display()))),
            }
        }
        Ok(off + rd.offset())
    }

    /// Records copied so far and the copy's length.
    pub fn copied(&self) -> (u64, u64) {
        (self.count, self.offset)
    }

    pub fn copy_path(&self) -> &Path {
        &self.copy_path
    }

    /// The checkpoints taken on the copy, as a manifest of its ranges between them.
    pub fn checkpoints(&self) -> &Manifest {
        &self.checkpoints
    }

    /// Byte range in the copy of the range between checkpoints `seq - 1` and `seq`.
    fn seg_range(&self, seq: u64) -> (u64, u64) {
        let k = seq.saturating_sub(1) as usize;
        let start = if k == 0 { 0 } else { self.seg_ends.get(k - 1).copied().unwrap_or(0) };
        (start, self.seg_ends.get(k).copied().unwrap_or(start))
    }

    /// Byte offset where the range after the newest checkpoint starts.
    fn tail_start(&self) -> u64 {
        self.seg_ends.last().copied().unwrap_or(0)
    }

    /// Writes an evidence bundle from the copy (caught up first): its ranges between
    /// checkpoints as segments, then the rest as the live list. Take the quote first.
    pub fn write_bundle(&mut self, out: &Path, ev: &Evidence<'_>) -> Result<BundleInfo, HostError> {
        self.sync()?;
        let copy = self.copy_path.clone();
        let range = move |start: u64, end: u64| -> Result<Box<dyn Read>, AgentError> {
            let mut f = File::open(&copy).map_err(|e| AgentError::Inconsistent(format!("{}: {e}", copy.display())))?;
            f.seek(SeekFrom::Start(start)).map_err(|e| AgentError::Inconsistent(format!("{}: {e}", copy.display())))?;
            Ok(Box::new(f.take(end.saturating_sub(start))))
        };
        let mut seg = |s: &SnapshotEntry| {
            let (start, end) = self.seg_range(s.seq);
            range(start, end)
        };
        let mut live = range(self.tail_start(), self.offset)?;
        Ok(write_bundle_from(out, &self.checkpoints, &mut seg, &mut live, ev)?)
    }

    /// Copies what is new and takes a checkpoint on the copy; `None` when the quote
    /// covers nothing after the previous checkpoint. Stored durably before it returns.
    pub fn checkpoint_now(&mut self) -> Result<Option<SnapshotEntry>, HostError> {
        if self.policy.checkpoints == Checkpoints::Off {
            return Err(HostError::Conflict(format!(
                "securityfs-legacy mode: {} has no snapshot file, the kernel cannot trim its list, \
                 and checkpoints are off ([snapshot] checkpoints = \"off\")",
                self.fs.dir().display()
            )));
        }
        self.sync()?;
        let m = self.checkpoints.clone();
        if self.count <= m.next_index {
            return Ok(None);
        }
        let seq = m.next_seq();
        let cp = quote_and_locate(self, &m, seq, 0)?;
        if cp.index <= m.next_index {
            return Ok(None);
        }
        let start = self.tail_start();
        let end = self.offset_of(cp.index)?;
        let mut f = File::open(&self.copy_path).map_err(|e| io(&self.copy_path, e))?;
        f.seek(SeekFrom::Start(start)).map_err(|e| io(&self.copy_path, e))?;
        let mut r = fsio::HashingReader::new(f.take(end - start));
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| io(&self.copy_path, e))?;
        let pcrs_end = m.banks.iter().filter_map(|&b| cp.quote.pcr_value(b, m.pcr).map(|v| (b, v.to_hex()))).collect();
        let e = SnapshotEntry {
            seq,
            file: COPY_FILE.into(),
            first_index: m.next_index,
            count: cp.index - m.next_index,
            sha256: r.finish_hex(),
            cut: Cut::Stage,
            end_marker: None,
            next_sha1: None,
            pcrs_end,
            checkpoint: Some(cp),
        };
        let mut next = m;
        next.snapshots.push(e.clone());
        next.next_index = e.end_index();
        let dir = self.copy_path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".tmp-{CHECKPOINTS_FILE}"));
        fsio::write_synced(&tmp, &next.to_json_pretty()).map_err(other)?;
        fsio::rename(&tmp, &dir.join(CHECKPOINTS_FILE)).map_err(other)?;
        fsio::fsync_dir(dir).map_err(other)?;
        self.checkpoints = next;
        self.seg_ends.push(end);
        self.last_checkpoint = Instant::now();
        tracing::info!(seq, index = e.end_index(), records = e.count, "legacy mode: checkpoint on the copy");
        Ok(Some(e))
    }

    pub fn securityfs(&mut self) -> &mut SecurityFs<T> {
        &mut self.fs
    }

    /// Appends the kernel's records after the ones already copied (whole records only),
    /// fsyncs, and returns how many were added.
    pub fn sync(&mut self) -> Result<u64, HostError> {
        let mut f = self.fs.live_list().map_err(other)?;
        f.seek(SeekFrom::Start(self.offset)).map_err(|e| other(format!("binary_runtime_measurements: {e}")))?;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; CHUNK];
        let mut added = 0u64;
        loop {
            let n = match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(other(format!("reading binary_runtime_measurements: {e}"))),
            };
            pending.extend_from_slice(&chunk[..n]);
            let (len, recs) = complete_prefix(&pending, self.count + added)
                .map_err(|e| other(format!("binary_runtime_measurements after byte {}: {e}", self.offset)))?;
            if len == 0 {
                continue;
            }
            if let Err(e) = self.copy.write_all(&pending[..len]) {
                // Cut a partial append back to the last whole record.
                let _ = self.copy.set_len(self.offset);
                return Err(io(&self.copy_path, e));
            }
            self.offset += len as u64;
            added += recs;
            self.count += recs;
            pending.drain(..len);
        }
        if self.marks.last().is_none_or(|&(n, _)| self.count >= n + MARK_EVERY) {
            self.marks.push((self.count, self.offset));
        }
        if added > 0 {
            self.copy.sync_data().map_err(|e| io(&self.copy_path, e))?;
            tracing::debug!(added, records = self.count, bytes = self.offset, "legacy copy appended");
        }
        Ok(added)
    }
}

/// `checkpoints.json` of the copy in `dir`, checked against this boot and the copy's
/// `count` records, with the byte offset where each range ends. One that does not fit
/// is moved aside (with an error in the log) and checkpoints start over: they are only
/// a verifier's shortcut, the copy itself is the evidence.
fn load_checkpoints(
    dir: &Path,
    copy: &Path,
    boot: &BootInfo,
    banks: &[HashAlgo],
    pcr: u32,
    count: u64,
) -> Result<(Manifest, Vec<u64>), HostError> {
    let fresh = || Manifest::new(boot.clone(), banks.to_vec(), pcr);
    let p = dir.join(CHECKPOINTS_FILE);
    let Some(b) = fsio::read_small(&p, 64 << 20).map_err(other)? else {
        return Ok((fresh(), Vec::new()));
    };
    let checked = Manifest::from_json(&b).map_err(|e| e.to_string()).and_then(|m| {
        if m.boot != *boot || m.banks != banks || m.pcr != pcr {
            return Err("another boot, bank set or PCR".to_string());
        }
        let mut at = 0;
        for (k, s) in m.snapshots.iter().enumerate() {
            if s.seq != k as u64 + 1 || s.first_index != at || s.count == 0 || s.checkpoint.is_none() {
                return Err(format!("entry {} is not the range after record {at} with a checkpoint", k + 1));
            }
            at = s.end_index();
        }
        if at != m.next_index || at > count {
            return Err(format!("ends at record {at}, the copy holds {count}"));
        }
        let ends: Vec<u64> = m.snapshots.iter().map(|s| s.end_index()).collect();
        let offs = offsets_at(copy, &ends)?;
        Ok((m, offs))
    });
    match checked {
        Ok(x) => Ok(x),
        Err(why) => {
            let aside = p.with_file_name(format!("{CHECKPOINTS_FILE}.corrupt-{}", unix_secs()));
            tracing::error!(file = %p.display(), reason = %why, moved_to = %aside.display(),
                "legacy checkpoints do not fit the copy: moved aside, starting over");
            std::fs::rename(&p, &aside).map_err(|e| io(&p, e))?;
            sync_dir(dir)?;
            Ok((fresh(), Vec::new()))
        }
    }
}

/// Byte offsets in the copy of the records at `indices` (ascending), in one pass.
fn offsets_at(copy: &Path, indices: &[u64]) -> Result<Vec<u64>, String> {
    let f = File::open(copy).map_err(|e| format!("{}: {e}", copy.display()))?;
    let mut rd = BinaryReader::new(std::io::BufReader::new(f), imasnap_store::snapshot_format());
    let mut out = Vec::with_capacity(indices.len());
    let mut slot = None;
    for &i in indices {
        while rd.next_index() < i {
            match rd.read_into(&mut slot) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("{} ends before record {i}", copy.display())),
                Err(e) => return Err(format!("{}: {e}", copy.display())),
            }
        }
        out.push(rd.offset());
    }
    Ok(out)
}

/// Checkpoints on the copy: the kernel's TPM quotes, the copy (caught up after the
/// quote, so it holds every record the quote covers) is searched.
impl<T: Tpm> CheckpointSource for LegacyHost<T> {
    fn quoting_tpm(&mut self) -> Option<&mut dyn Tpm> {
        self.fs.quoting_tpm()
    }

    fn list_from(&mut self, from: u64) -> Result<(Box<dyn Read + '_>, u64), AgentError> {
        let fail = |e: HostError| AgentError::Inconsistent(format!("legacy copy: {e}"));
        self.sync().map_err(fail)?;
        let off = self.offset_of(from).map_err(fail)?;
        let mut f = File::open(&self.copy_path).map_err(|e| fail(io(&self.copy_path, e)))?;
        f.seek(SeekFrom::Start(off)).map_err(|e| fail(io(&self.copy_path, e)))?;
        Ok((Box::new(std::io::BufReader::new(f.take(self.offset - off))), from))
    }
}

/// Moves (or deletes) every other boot's copy.
fn retire_others(root: &Path, archive: &Path, keep: &str, retention: Retention) -> Result<(), HostError> {
    for e in std::fs::read_dir(root).map_err(|e| io(root, e))? {
        let e = e.map_err(|e| io(root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == keep || !e.path().is_dir() {
            continue;
        }
        match retention {
            Retention::Delete => std::fs::remove_dir_all(e.path()).map_err(|x| io(&e.path(), x))?,
            Retention::Archive => {
                std::fs::create_dir_all(archive).map_err(|x| io(archive, x))?;
                let mut to = archive.join(format!("legacy-{name}"));
                let mut k = 1;
                while to.exists() {
                    to = archive.join(format!("legacy-{name}.{k}"));
                    k += 1;
                }
                std::fs::rename(e.path(), &to).map_err(|x| io(&to, x))?;
            }
        }
        tracing::info!(boot = %name, ?retention, "legacy mode: an earlier boot's copy retired");
    }
    sync_dir(root)
}

/// Scans the copy (cutting a partial last record) and checks it is a prefix of the
/// kernel's list; a copy that is not is moved aside. Returns (bytes, records) kept.
fn check_copy(copy: &Path, live: &Path) -> Result<(u64, u64), HostError> {
    let bytes = match std::fs::read(copy) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(copy, e)),
    };
    let verdict = match complete_prefix(&bytes, 0) {
        Err(e) => Err(format!("undecodable: {e}")),
        Ok((len, recs)) => {
            let mut k = File::open(live).map_err(|e| io(live, e))?;
            let mut kb = vec![0u8; len];
            match k.read_exact(&mut kb) {
                Err(_) => Err(format!("longer ({len} bytes) than the kernel's list")),
                Ok(()) if kb != bytes[..len] => {
                    let at = kb.iter().zip(&bytes).position(|(a, b)| a != b).unwrap_or(0);
                    Err(format!("differs from the kernel's list at byte {at}"))
                }
                Ok(()) => Ok((len, recs)),
            }
        }
    };
    match verdict {
        Ok((len, recs)) => {
            if len < bytes.len() {
                tracing::warn!(copy = %copy.display(), cut = bytes.len() - len, "legacy copy: partial last record cut");
                let f = OpenOptions::new().write(true).open(copy).map_err(|e| io(copy, e))?;
                f.set_len(len as u64).and_then(|()| f.sync_all()).map_err(|e| io(copy, e))?;
            }
            Ok((len as u64, recs))
        }
        Err(why) => {
            let aside = copy.with_file_name(format!("{COPY_FILE}.corrupt-{}", unix_secs()));
            tracing::error!(copy = %copy.display(), reason = %why, moved_to = %aside.display(),
                "legacy copy is not the kernel's list (tampered or damaged): moved aside, copying again");
            std::fs::rename(copy, &aside).map_err(|e| io(copy, e))?;
            if let Some(d) = copy.parent() {
                sync_dir(d)?;
            }
            Ok((0, 0))
        }
    }
}

const NO_WORKLOAD: &str = "securityfs-legacy back end: the kernel measures by itself (no test workload)";

impl<T: Tpm + 'static> HostOps for LegacyHost<T> {
    fn enrolment_tpm(&mut self) -> Option<&mut dyn Tpm> {
        Some(self.fs.tpm_mut())
    }

    fn evidence(
        &mut self,
        nonce: &[u8],
        from: api::From,
        boot_hint: Option<(u64, Option<String>)>,
    ) -> Result<EvidenceView, HostError> {
        if nonce.is_empty() || nonce.len() > imasnap_tpm::MAX_NONCE {
            return Err(HostError::BadRequest(format!("nonce must be 1 to {} bytes", imasnap_tpm::MAX_NONCE)));
        }
        // Quote first: the copy read afterwards can only run ahead of it (carried over).
        let (quote, ak) = quote_tpm(self.fs.tpm_mut(), &self.banks, self.pcr, nonce)?;
        self.sync()?;
        // The copy as the live list, from record 0 for a verifier without state, else from
        // its index on: the kernel never trimmed, but the wire carries only what is new.
        let same_boot = boot_hint.as_ref().is_none_or(|(rc, ba)| {
            *rc == self.boot.reset_count && ba.as_ref().is_none_or(|b| *b == self.boot.boot_aggregate_sha1)
        });
        // The copy's ranges between checkpoints go as segments (data from the newest
        // checkpoint for a latest request), then the range after the newest one.
        let mode = HostOps::mode(self);
        let m = &self.checkpoints;
        let seg = segment_view(m, from, same_boot, self.count, &|s| {
            let (start, end) = self.seg_range(s.seq);
            Ok((self.copy_path.clone(), start, end - start))
        })?;
        let mut files = seg.files;
        let mut data_from = seg.data_from;
        let off = if seg.from_index > m.next_index {
            data_from = Some(seg.from_index);
            self.offset_of(seg.from_index)?
        } else {
            self.tail_start()
        };
        let len = self.offset - off;
        files.push((self.copy_path.clone(), off, len));
        let header = EvidenceHeader {
            format: api::FORMAT.into(),
            banks: self.banks.clone(),
            pcr: self.pcr,
            boot: BootJson {
                reset_count: self.boot.reset_count,
                boot_aggregate_sha1: self.boot.boot_aggregate_sha1.clone(),
            },
            quote,
            nonce: hex::encode(nonce),
            ak,
            from: seg.from_index,
            snapshots: seg.snapshots,
            live_first_index: m.next_index,
            live_bytes: len,
            data_from,
            mode: Some(mode.into()),
            // Nothing is trimmed: the kernel holds the whole boot's log (the copy mirrors it).
            log_size: Some(api::LogSize {
                kernel_records: self.count,
                kernel_bytes: self.offset,
                untrimmed_records: self.count,
                untrimmed_bytes: self.offset,
            }),
            simulated: api::Simulated::parts(false, self.fs.tpm().is_simulated()),
        };
        let sent: u64 = files.iter().map(|f| f.2).sum();
        self.metrics.evidence_requests += 1;
        self.metrics.evidence_bytes += sent;
        // Streamed from the copy: exactly the stated ranges, even if it grows meanwhile.
        Ok(EvidenceView { header, files, live: Vec::new() })
    }

    /// Nothing is trimmed: a checkpoint on the copy is what a cut means here.
    fn snapshot(&mut self, _crash_at: Option<CrashPoint>) -> Result<Option<SnapshotEntry>, HostError> {
        match self.checkpoint_now()? {
            Some(e) => Ok(Some(e)),
            None => Err(HostError::Conflict("nothing measured since the last checkpoint".into())),
        }
    }

    /// Keeps the copy current, and takes a checkpoint when the snapshot policy is due.
    fn tick(&mut self, now: Instant) -> Result<(), HostError> {
        self.sync()?;
        if self.policy.checkpoints == Checkpoints::Off {
            return Ok(());
        }
        let stats =
            LiveStats { records: self.count - self.checkpoints.next_index, bytes: self.offset - self.tail_start() };
        if self.retry_at.is_some_and(|t| now < t) {
            return Ok(());
        }
        if let Some(t) = self.policy.due(stats, now.saturating_duration_since(self.last_checkpoint)) {
            match self.checkpoint_now() {
                Ok(e) => {
                    if let Some(e) = e {
                        tracing::info!(trigger = ?t, seq = e.seq, index = e.end_index(), "policy checkpoint on the legacy copy");
                    }
                    self.last_checkpoint = now;
                    (self.retry_at, self.retry_wait) = (None, RETRY_FIRST);
                }
                // A TPM that keeps failing is not asked three quotes every tick.
                Err(e) => {
                    self.retry_at = Some(now + self.retry_wait);
                    self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn add_records(&mut self, _n: u64) -> Result<u64, HostError> {
        Err(HostError::BadRequest(NO_WORKLOAD.into()))
    }

    fn measure(&mut self, _path: &[u8], _digest: &[u8], _xattr: Option<&[u8]>) -> Result<bool, HostError> {
        Err(HostError::BadRequest(NO_WORKLOAD.into()))
    }

    fn measure_buffer(&mut self, _name: &[u8], _buf: &[u8]) -> Result<bool, HostError> {
        Err(HostError::BadRequest(NO_WORKLOAD.into()))
    }

    fn mode(&self) -> &'static str {
        "securityfs-legacy"
    }

    fn metrics(&mut self) -> api::AgentMetrics {
        let mut m = self.metrics.clone();
        m.live_records = self.count;
        m.live_bytes = self.offset;
        m.reset_count = self.boot.reset_count;
        m.bytes_on_disk = std::fs::metadata(&self.copy_path).map(|x| x.len()).unwrap_or(0);
        m.snapshots = self.checkpoints.snapshots.len() as u64;
        m.next_index = self.checkpoints.next_index;
        m
    }

    /// The copy's ranges between checkpoints (their `file` is the copy itself).
    fn manifest(&self) -> Option<imasnap_store::Manifest> {
        Some(self.checkpoints.clone())
    }

    fn snapshot_file(&self, _seq: u64) -> Option<(PathBuf, SnapshotEntry)> {
        None
    }

    /// Never trimmed: the kernel's own list is the whole log.
    fn whole_log(&mut self) -> Result<imasnap_mount::State, HostError> {
        let p = self.fs.dir().join("binary_runtime_measurements");
        let live = std::fs::read(&p).map_err(|e| io(&p, e))?;
        let boot = BootId::of(&self.boot).to_string();
        Ok(imasnap_mount::State { boot, banks: self.banks.clone(), live, ..Default::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imasnap_log::entry::{build, builtin, d_ng, n_ng};
    use imasnap_log::PcrValue;
    use imasnap_test_support::records::{encode, file_record};
    use imasnap_tpm::SoftTpm;

    const FIXTURE: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/real-kernel/ima-ng/binary_runtime_measurements");

    fn rec(i: u64) -> Vec<u8> {
        let d = HashAlgo::Sha256.hash(&[&i.to_le_bytes()]);
        let r = build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", d.as_bytes()), &n_ng(format!("/usr/bin/f{i}").as_bytes())],
            HashAlgo::Sha1,
            10,
            false,
            Endian::Little,
        );
        let mut out = Vec::new();
        r.encode(Endian::Little, &mut out);
        out
    }

    fn config(state: &Path, checkpoints: Checkpoints) -> AgentConfig {
        let mut c = AgentConfig::new(state);
        c.retention = Retention::Archive;
        c.snapshot.checkpoints = checkpoints;
        c
    }

    fn append(p: &Path, b: &[u8]) {
        OpenOptions::new().append(true).open(p).unwrap().write_all(b).unwrap();
    }

    #[test]
    fn copies_incrementally_whole_records_only_and_refuses_snapshots() {
        let d = tempfile::tempdir().unwrap();
        let ima = d.path().join("ima");
        std::fs::create_dir_all(&ima).unwrap();
        let live = ima.join("binary_runtime_measurements");
        std::fs::copy(FIXTURE, &live).unwrap();
        let state = d.path().join("state");
        let fs = SecurityFs::new(&ima, SoftTpm::new(1), 10);
        let cfg = config(&state, Checkpoints::Off);
        let mut h = LegacyHost::open(fs, &cfg).unwrap();
        let (n0, b0) = h.copied();
        assert!(n0 > 1);
        assert_eq!(std::fs::read(h.copy_path()).unwrap(), std::fs::read(&live).unwrap());
        // Nothing new: nothing read.
        assert_eq!(h.sync().unwrap(), 0);
        // One whole record and half of the next: only the whole one is copied.
        let (r1, r2) = (rec(1), rec(2));
        append(&live, &r1);
        append(&live, &r2[..r2.len() / 2]);
        assert_eq!(h.sync().unwrap(), 1);
        assert_eq!(h.copied(), (n0 + 1, b0 + r1.len() as u64));
        append(&live, &r2[r2.len() / 2..]);
        assert_eq!(h.sync().unwrap(), 1);
        assert_eq!(std::fs::read(h.copy_path()).unwrap(), std::fs::read(&live).unwrap());
        let e = h.snapshot(None).unwrap_err();
        assert!(matches!(e, HostError::Conflict(_)) && e.to_string().contains("checkpoints are off"), "{e}");
        assert_eq!(h.mode(), "securityfs-legacy");
        assert!(h.add_records(1).is_err());

        // Restart: the copy is kept (same boot), a torn tail is cut, nothing re-read.
        let copy = h.copy_path().to_path_buf();
        drop(h);
        append(&copy, &rec(3)[..10]);
        let fs = SecurityFs::new(&ima, SoftTpm::new(1), 10);
        let h = LegacyHost::open(fs, &cfg).unwrap();
        assert_eq!(h.copied(), (n0 + 2, b0 + (r1.len() + r2.len()) as u64));
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&live).unwrap());

        // A copy that is not the kernel's list is moved aside and copied again.
        drop(h);
        let mut b = std::fs::read(&copy).unwrap();
        let n = b.len();
        b[n - 5] ^= 1;
        std::fs::write(&copy, &b).unwrap();
        let fs = SecurityFs::new(&ima, SoftTpm::new(1), 10);
        let h = LegacyHost::open(fs, &cfg).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&live).unwrap());
        let aside: Vec<_> = std::fs::read_dir(copy.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(aside.len(), 1);
        drop(h);

        // A cold boot (another resetCount): the old copy is archived, a new one started.
        let mut tpm = SoftTpm::new(1);
        tpm.reset();
        let fs = SecurityFs::new(&ima, tpm, 10);
        let h = LegacyHost::open(fs, &cfg).unwrap();
        assert_ne!(h.copy_path(), copy);
        assert!(!copy.exists());
        assert_eq!(std::fs::read_dir(state.join("archive")).unwrap().count(), 1);
    }

    /// A kernel's list: append the record, extend PCR 10 with its template digest per bank.
    fn measure(h: &mut LegacyHost<SoftTpm>, live: &Path, b: &[u8]) {
        append(live, b);
        extend(h.securityfs().tpm_mut(), b);
    }

    fn extend(tpm: &mut SoftTpm, b: &[u8]) {
        let r = BinaryReader::new(b, imasnap_store::snapshot_format()).next().unwrap().unwrap();
        let vals: Vec<_> = tpm
            .banks()
            .into_iter()
            .map(|a| imasnap_log::digest::template_hash(a, &r, Endian::Little).unwrap())
            .collect();
        tpm.pcr_extend(10, &vals).unwrap();
    }

    #[test]
    fn checkpoints_on_the_copy_survive_a_restart_and_anchor_latest_evidence() {
        let d = tempfile::tempdir().unwrap();
        let ima = d.path().join("ima");
        std::fs::create_dir_all(&ima).unwrap();
        let live = ima.join("binary_runtime_measurements");
        let hb = encode(&[file_record(b"boot_aggregate", &[7; 32], 10)]);
        std::fs::write(&live, &hb).unwrap();
        let mut tpm = SoftTpm::new(3);
        extend(&mut tpm, &hb);
        let state = d.path().join("state");
        let mut cfg = config(&state, Checkpoints::On);
        cfg.snapshot.max_records = Some(5);
        let mut h = LegacyHost::open(SecurityFs::new(&ima, tpm, 10), &cfg).unwrap();
        for i in 1..=20 {
            measure(&mut h, &live, &rec(i));
        }
        let e = h.checkpoint_now().unwrap().unwrap();
        assert_eq!((e.seq, e.first_index, e.count, e.cut), (1, 0, 21, Cut::Stage));
        assert_eq!(e.checkpoint.as_ref().unwrap().index, 21);
        // Records the copy has not seen yet, measured before the quote, are found too.
        for i in 21..=30 {
            measure(&mut h, &live, &rec(i));
        }
        let e2 = h.checkpoint_now().unwrap().unwrap();
        assert_eq!((e2.seq, e2.first_index, e2.count), (2, 21, 10));
        assert!(h.checkpoint_now().unwrap().is_none(), "nothing new: no checkpoint");
        measure(&mut h, &live, &rec(31));

        // Latest evidence: data from the newest checkpoint (record 31) on, both listed.
        let v = h.evidence(b"n", api::From::Latest, None).unwrap();
        assert_eq!((v.header.from, v.header.live_first_index, v.header.live_bytes), (31, 31, rec(31).len() as u64));
        assert_eq!(v.header.snapshots.len(), 2);
        assert!(v.header.snapshots.iter().all(|s| s.checkpoint.is_some() && s.bytes.is_none()));
        // A verifier without state gets everything, the ranges with their sha256.
        let v = h.evidence(b"n", api::From::Index(0), None).unwrap();
        let whole = std::fs::read(&live).unwrap();
        let mut sent = Vec::new();
        for (p, off, len) in &v.files {
            let b = std::fs::read(p).unwrap();
            sent.extend_from_slice(&b[*off as usize..(*off + *len) as usize]);
        }
        assert_eq!(sent, whole);
        assert_eq!(v.header.snapshots[1].sha256.as_deref(), Some(e2.sha256.as_str()));

        // Restart: the checkpoints are kept; a checkpoints.json that does not fit the
        // copy is moved aside and they start over.
        let tpm = std::mem::replace(h.securityfs().tpm_mut(), SoftTpm::new(9));
        drop(h);
        let mut h = LegacyHost::open(SecurityFs::new(&ima, tpm, 10), &cfg).unwrap();
        assert_eq!(h.checkpoints().snapshots.len(), 2);
        let cp = h.copy_path().with_file_name(CHECKPOINTS_FILE);
        let mut m = h.checkpoints().clone();
        m.snapshots[1].count += 100;
        m.next_index += 100;
        std::fs::write(&cp, m.to_json_pretty()).unwrap();
        let tpm = std::mem::replace(h.securityfs().tpm_mut(), SoftTpm::new(9));
        drop(h);
        let mut h = LegacyHost::open(SecurityFs::new(&ima, tpm, 10), &cfg).unwrap();
        assert!(h.checkpoints().snapshots.is_empty());
        assert!(!cp.exists());
        let e = h.checkpoint_now().unwrap().unwrap();
        assert_eq!((e.seq, e.first_index, e.count), (1, 0, 32));

        // By policy (max_records = 5): a tick past it takes one.
        for i in 32..40 {
            measure(&mut h, &live, &rec(i));
        }
        h.tick(Instant::now()).unwrap();
        assert_eq!(h.checkpoints().snapshots.len(), 2);
        assert_eq!(h.checkpoints().next_index, 40);

        // A TPM that does not hold the list's PCR 10: no checkpoint, nothing stored.
        measure(&mut h, &live, &rec(40));
        h.securityfs()
            .tpm_mut()
            .pcr_extend(10, &[PcrValue::ones(HashAlgo::Sha1), PcrValue::ones(HashAlgo::Sha256)])
            .unwrap();
        let e = h.checkpoint_now().unwrap_err();
        assert!(e.to_string().contains("no prefix of the list"), "{e}");
        assert_eq!(h.checkpoints().snapshots.len(), 2);
        // The policy's try fails too, and the next tick waits instead of quoting again.
        for i in 41..47 {
            measure(&mut h, &live, &rec(i));
        }
        let stored = || std::fs::read_to_string(&cp).map(|t| t.len()).unwrap_or(0);
        let before = stored();
        assert!(h.tick(Instant::now()).is_err());
        h.tick(Instant::now()).unwrap();
        assert_eq!((h.checkpoints().snapshots.len(), stored()), (2, before));
    }
}
