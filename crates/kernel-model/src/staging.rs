//! Upstream's export-and-delete interface (`CONFIG_IMA_STAGING`, docs/STAGING.md): `_staged`
//! twins of the measurement files, `A`/`D` written to a staged file, `N` written to an
//! original, and the many-readers-or-one-writer rule across all measurement files.
//!
//! The model keeps the kernel's order of checks, so the errno a caller sees for a given
//! state is the kernel's: open checks capability, then the reader/writer rule; a write
//! checks its length and shape, then the file kind, then the command's own state.

use crate::list::{Entry, Kernel, KernelError};
use imasnap_log::{Endian, HashAlgo};
use imasnap_tpm::Tpm;
use std::collections::{HashSet, VecDeque};

/// One measurement file of securityfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MeasFile {
    /// The digest bank the file shows (`binary_runtime_measurements` is SHA1).
    pub bank: HashAlgo,
    pub ascii: bool,
    /// The `_staged` twin.
    pub staged: bool,
}

impl MeasFile {
    /// `binary_runtime_measurements`, the file agents read.
    pub const BINARY: MeasFile = MeasFile { bank: HashAlgo::Sha1, ascii: false, staged: false };
    /// `binary_runtime_measurements_staged`.
    pub const BINARY_STAGED: MeasFile = MeasFile { bank: HashAlgo::Sha1, ascii: false, staged: true };
    /// `ascii_runtime_measurements`, the file Keylime's agent reads.
    pub const ASCII: MeasFile = MeasFile { bank: HashAlgo::Sha1, ascii: true, staged: false };

    /// The securityfs name of the per-bank file (`binary_runtime_measurements_sha256_staged`).
    pub fn name(&self) -> String {
        format!(
            "{}_runtime_measurements_{}{}",
            if self.ascii { "ascii" } else { "binary" },
            self.bank.name(),
            if self.staged { "_staged" } else { "" }
        )
    }
}

/// One-shot faults in the staging paths, each before the step changes anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagingFault {
    /// `open` fails (ENOMEM) before the reader/writer accounting.
    Open,
    /// `read` of any measurement file fails (EIO).
    Read,
    /// `A` fails before the swap.
    Stage,
    /// `D` fails before anything is freed.
    Delete,
    /// `N` fails before anything is removed.
    Trim,
}

/// An open file description of a measurement file.
#[derive(Debug, PartialEq, Eq)]
pub struct MeasFd {
    id: u64,
    pub file: MeasFile,
    pub write: bool,
    /// The opening process: the same writer may open several files.
    pub owner: u32,
}

#[derive(Default)]
pub(crate) struct StagingState {
    pub(crate) staged: VecDeque<Entry>,
    /// Open descriptors: (id, owner, write).
    pub(crate) opens: Vec<(u64, u32, bool)>,
    next_id: u64,
    fault: Option<StagingFault>,
    /// Records freed by `D` or removed by `N` in this kernel. Not visible in securityfs
    /// (the kernel exposes no such count); tests use it.
    pub(crate) deleted: u64,
}

impl StagingState {
    /// Whether a process other than `owner` holds the list for writing (or any reader,
    /// when `owner` wants to write).
    fn conflicts(&self, owner: u32, write: bool) -> bool {
        self.opens.iter().any(|&(_, o, w)| o != owner && (w || write))
    }

    pub(crate) fn any_open(&self) -> bool {
        !self.opens.is_empty()
    }
}

/// Largest write the staging files accept ("N" with ULONG_MAX digits plus '\n').
const MAX_WRITE: usize = 21;

impl<T: Tpm> Kernel<T> {
    /// Arms a one-shot staging fault.
    pub fn inject_staging(&mut self, f: StagingFault) {
        self.staging.fault = Some(f);
    }

    fn take_staging_fault(&mut self, f: StagingFault) -> Result<(), KernelError> {
        if self.staging.fault == Some(f) {
            self.staging.fault = None;
            return Err(KernelError::InjectedStaging(f));
        }
        Ok(())
    }

    /// `open()` of a measurement file by process `owner`. Writing needs CAP_SYS_ADMIN;
    /// many readers or one writer across all measurement files (and the RFC `snapshot`
    /// file, which is a writer too).
    pub fn open(
        &mut self,
        file: MeasFile,
        write: bool,
        owner: u32,
        cap_sys_admin: bool,
    ) -> Result<MeasFd, KernelError> {
        if file.staged && !self.cfg.staging {
            return Err(KernelError::NoEntry("no _staged files without CONFIG_IMA_STAGING"));
        }
        if !self.banks.contains(&file.bank) && file.bank != HashAlgo::Sha1 {
            return Err(KernelError::NoEntry("no measurement file for a bank the TPM lacks"));
        }
        if write && !self.cfg.staging {
            return Err(KernelError::Access("measurement files are read-only without CONFIG_IMA_STAGING"));
        }
        if write && !cap_sys_admin {
            return Err(KernelError::Perm("writing a measurement file needs CAP_SYS_ADMIN"));
        }
        self.take_staging_fault(StagingFault::Open)?;
        if self.staging.conflicts(owner, write) || (self.snapshot_is_open() && write) {
            return Err(KernelError::Busy(if write {
                "another process has a measurement file open"
            } else {
                "another process holds the measurement files for writing"
            }));
        }
        self.staging.next_id += 1;
        let id = self.staging.next_id;
        self.staging.opens.push((id, owner, write));
        Ok(MeasFd { id, file, write, owner })
    }

    /// `close()`.
    pub fn close(&mut self, fd: MeasFd) {
        self.staging.opens.retain(|&(id, _, _)| id != fd.id);
    }

    fn check_fd(&self, fd: &MeasFd) -> Result<(), KernelError> {
        if !self.staging.opens.iter().any(|&(id, _, _)| id == fd.id) {
            return Err(KernelError::Invalid("stale file descriptor".into()));
        }
        Ok(())
    }

    /// `read()` of the whole file: the current list, or the staged records for a `_staged`
    /// file, in the file's format and bank.
    pub fn read(&mut self, fd: &MeasFd) -> Result<Vec<u8>, KernelError> {
        self.check_fd(fd)?;
        self.take_staging_fault(StagingFault::Read)?;
        let entries = if fd.file.staged { &self.staging.staged } else { &self.list };
        self.render(entries.iter(), fd.file)
    }

    /// `read()` after `lseek(offset)`: the file's bytes from `offset` on (none past the
    /// end). Like the kernel's seq_file, the entries before it are walked, not rendered.
    pub fn read_at(&mut self, fd: &MeasFd, offset: u64) -> Result<Vec<u8>, KernelError> {
        self.check_fd(fd)?;
        self.take_staging_fault(StagingFault::Read)?;
        let entries = if fd.file.staged { &self.staging.staged } else { &self.list };
        if fd.file.ascii {
            let all = self.render(entries.iter(), fd.file)?;
            return Ok(all.get(usize::try_from(offset).unwrap_or(usize::MAX)..).unwrap_or_default().to_vec());
        }
        let bi = self.banks.iter().position(|&b| b == fd.file.bank);
        // `skip` entries end at byte `at` <= offset, and the next one ends past it.
        let (mut skip, mut at) = (0usize, 0u64);
        if !fd.file.staged && fd.file.bank == HashAlgo::Sha1 {
            // The SHA1 list's size is kept: walk back from its end, so a read near the
            // end (the agent's usual one) touches only the entries after the offset.
            (skip, at) = (entries.len(), self.bytes_in_list);
            for e in entries.iter().rev() {
                if at <= offset {
                    break;
                }
                at = at.saturating_sub(e.encoded_len_in(bi) as u64);
                skip -= 1;
            }
        } else {
            for e in entries.iter() {
                let len = e.encoded_len_in(bi) as u64;
                if at + len > offset {
                    break;
                }
                at += len;
                skip += 1;
            }
        }
        // Sized for what is rendered (known for the SHA1 list), not for the whole list.
        let cap =
            if fd.file.bank == HashAlgo::Sha1 && !fd.file.staged { self.bytes_in_list.saturating_sub(at) } else { 0 };
        let mut out = Vec::with_capacity(usize::try_from(cap).unwrap_or(0));
        for e in entries.range(skip.min(entries.len())..) {
            e.encode(bi, Endian::Little, &mut out);
        }
        // An offset inside a record: its remaining bytes come first, as from a file.
        out.drain(..usize::try_from(offset - at).unwrap_or(usize::MAX).min(out.len()));
        Ok(out)
    }

    /// The bytes of a measurement file for `entries`.
    pub(crate) fn render<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
        file: MeasFile,
    ) -> Result<Vec<u8>, KernelError> {
        let bi = self.banks.iter().position(|&b| b == file.bank);
        let mut out = Vec::new();
        if !file.ascii {
            // The usual read (binary): straight from the entries, in one buffer.
            out.reserve(self.list_bytes() as usize);
            for e in entries {
                e.encode(bi, Endian::Little, &mut out);
            }
            return Ok(out);
        }
        for e in entries {
            let r = match bi {
                Some(i) => e.record(i),
                None => e.sha1_record(&self.banks),
            };
            if file.ascii {
                imasnap_log::ascii::write_line(&r, Endian::Little, &mut out)
                    .map_err(|why| KernelError::Invalid(format!("ascii line: {why}")))?;
            } else {
                r.encode(Endian::Little, &mut out);
            }
        }
        Ok(out)
    }

    /// `write()` of `buf` to a measurement file opened for writing. Returns the bytes
    /// consumed (all of them) as the kernel does.
    pub fn write(&mut self, fd: &MeasFd, buf: &[u8]) -> Result<usize, KernelError> {
        self.check_fd(fd)?;
        if !fd.write {
            return Err(KernelError::BadFd("not opened for writing"));
        }
        if buf.len() < 2 || buf.len() > MAX_WRITE || buf.last() != Some(&b'\n') {
            return Err(KernelError::Invalid("a command is 2 to 21 bytes ending in a newline".into()));
        }
        let cmd = &buf[..buf.len() - 1];
        match (fd.file.staged, cmd) {
            (true, b"A") => self.stage()?,
            (true, b"D") => self.delete_staged()?,
            (true, _) => return Err(KernelError::Invalid("a staged file accepts A or D".into())),
            (false, digits) => {
                let n = std::str::from_utf8(digits)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| KernelError::Invalid("an original file accepts a record count N".into()))?;
                self.trim(n)?;
            }
        }
        Ok(buf.len())
    }

    /// `A`: the whole current list becomes the staged list, in one swap under the lock.
    fn stage(&mut self) -> Result<(), KernelError> {
        if self.suspended {
            return Err(KernelError::Access("measurements suspended for kexec"));
        }
        if !self.staging.staged.is_empty() {
            return Err(KernelError::Exists("records are already staged"));
        }
        if self.list.is_empty() {
            return Err(KernelError::NoEntry("the current list is empty"));
        }
        self.take_staging_fault(StagingFault::Stage)?;
        self.staging.staged = std::mem::take(&mut self.list);
        self.bytes_in_list = 0;
        Ok(())
    }

    /// `D`: frees the staged records. With `ima_flush_htable` the hash table is swapped
    /// for an empty one, so every file measured so far is measured again on next access.
    fn delete_staged(&mut self) -> Result<(), KernelError> {
        if self.suspended {
            return Err(KernelError::Stale("measurements suspended for kexec"));
        }
        if self.staging.staged.is_empty() {
            return Err(KernelError::NoEntry("nothing is staged"));
        }
        self.take_staging_fault(StagingFault::Delete)?;
        let n = self.staging.staged.len() as u64;
        self.staging.staged.clear();
        self.staging.deleted += n;
        if !self.cfg.keep_dedup_on_done {
            self.htable = HashSet::new();
        }
        Ok(())
    }

    /// `N`: removes the first `n` records of the current list at once.
    fn trim(&mut self, n: u64) -> Result<(), KernelError> {
        if n == 0 {
            return Err(KernelError::Invalid("N must be at least 1".into()));
        }
        if !self.cfg.keep_dedup_on_done {
            return Err(KernelError::Invalid("N is disabled by ima_flush_htable".into()));
        }
        if self.suspended {
            return Err(KernelError::Stale("measurements suspended for kexec"));
        }
        if (self.list.len() as u64) < n {
            return Err(KernelError::NoEntry("the current list has fewer records"));
        }
        self.take_staging_fault(StagingFault::Trim)?;
        for e in self.list.drain(..n as usize) {
            self.bytes_in_list -= e.encoded_len_in(None) as u64;
        }
        self.staging.deleted += n;
        Ok(())
    }

    /// `runtime_measurements_count`: the current list only (neither staged nor deleted
    /// records).
    pub fn runtime_measurements_count(&self) -> u64 {
        self.list.len() as u64
    }

    /// Records in the staged list.
    pub fn staged_len(&self) -> usize {
        self.staging.staged.len()
    }

    /// Records freed by `D` or removed by `N` in this kernel (a test's view; the kernel
    /// exposes no such count).
    pub fn staging_deleted(&self) -> u64 {
        self.staging.deleted
    }

    /// `binary_runtime_measurements_staged` content, without an open (tests).
    pub fn staged_measurements(&self, bank: HashAlgo) -> Vec<u8> {
        let file = MeasFile { bank, ascii: false, staged: true };
        self.render(self.staging.staged.iter(), file).unwrap_or_default()
    }
}
