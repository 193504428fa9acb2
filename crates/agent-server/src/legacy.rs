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
//! Snapshots are refused ([`HostError::Conflict`], HTTP 409) with the reason.

use crate::api::{self, BootJson, EvidenceHeader};
use crate::host::{quote_tpm, EvidenceView, HostError, HostOps};
use imasnap_agent::{CrashPoint, SecurityFs, SnapshotKernel};
use imasnap_log::{BinaryReader, Endian, HashAlgo, Reason};
use imasnap_store::{BootId, BootInfo, Retention, SnapshotEntry};
use imasnap_tpm::Tpm;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The copy's file name inside its boot directory.
pub const COPY_FILE: &str = "binary_runtime_measurements";
const BOOT_FILE: &str = "boot.json";
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
}

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
    pub fn open(mut fs: SecurityFs<T>, state_dir: &Path, retention: Retention) -> Result<Self, HostError> {
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
        let mut h = Self { fs, copy_path, copy, offset, count, boot, banks, pcr, metrics: Default::default(), marks };
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
        let from_index = match from {
            api::From::Index(i) if same_boot => i.min(self.count),
            // No marker heads a legacy list: "latest" is the whole copy, as for a stranger.
            _ => 0,
        };
        let off = if from_index > 0 { self.offset_of(from_index)? } else { 0 };
        let len = self.offset - off;
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
            from: from_index,
            snapshots: Vec::new(),
            live_first_index: 0,
            live_bytes: len,
            data_from: (from_index > 0).then_some(from_index),
        };
        self.metrics.evidence_requests += 1;
        self.metrics.evidence_bytes += len;
        // Streamed from the copy: exactly `len` bytes, even if it grows meanwhile.
        Ok(EvidenceView { header, files: vec![(self.copy_path.clone(), off, len)], live: Vec::new() })
    }

    fn snapshot(&mut self, _crash_at: Option<CrashPoint>) -> Result<Option<SnapshotEntry>, HostError> {
        Err(HostError::Conflict(format!(
            "securityfs-legacy mode: {} has no snapshot file, the kernel cannot trim its list \
             (read-only; the agent keeps its own copy instead)",
            self.fs.dir().display()
        )))
    }

    fn tick(&mut self, _now: Instant) -> Result<(), HostError> {
        self.sync().map(|_| ())
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
        m
    }

    fn manifest(&self) -> Option<imasnap_store::Manifest> {
        None
    }

    fn snapshot_file(&self, _seq: u64) -> Option<(PathBuf, SnapshotEntry)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imasnap_log::entry::{build, builtin, d_ng, n_ng};
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
        let mut h = LegacyHost::open(fs, &state, Retention::Archive).unwrap();
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
        assert!(matches!(e, HostError::Conflict(_)) && e.to_string().contains("cannot trim"), "{e}");
        assert_eq!(h.mode(), "securityfs-legacy");
        assert!(h.add_records(1).is_err());

        // Restart: the copy is kept (same boot), a torn tail is cut, nothing re-read.
        let copy = h.copy_path().to_path_buf();
        drop(h);
        append(&copy, &rec(3)[..10]);
        let fs = SecurityFs::new(&ima, SoftTpm::new(1), 10);
        let h = LegacyHost::open(fs, &state, Retention::Archive).unwrap();
        assert_eq!(h.copied(), (n0 + 2, b0 + (r1.len() + r2.len()) as u64));
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&live).unwrap());

        // A copy that is not the kernel's list is moved aside and copied again.
        drop(h);
        let mut b = std::fs::read(&copy).unwrap();
        let n = b.len();
        b[n - 5] ^= 1;
        std::fs::write(&copy, &b).unwrap();
        let fs = SecurityFs::new(&ima, SoftTpm::new(1), 10);
        let h = LegacyHost::open(fs, &state, Retention::Archive).unwrap();
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
        let h = LegacyHost::open(fs, &state, Retention::Archive).unwrap();
        assert_ne!(h.copy_path(), copy);
        assert!(!copy.exists());
        assert_eq!(std::fs::read_dir(state.join("archive")).unwrap().count(), 1);
    }
}
