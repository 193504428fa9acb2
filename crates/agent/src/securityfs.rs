//! [`SnapshotKernel`] on a real kernel: the IMA securityfs directory
//! (`/sys/kernel/security/ima`) plus a TPM for resetCount and the banks.
//!
//! With the RFC patch (kernel/) the directory has a `snapshot` file and the agent trims the
//! list with it. With upstream staging (`CONFIG_IMA_STAGING`, Linux 7.2, or our series)
//! it has `_staged` files and `A`/`D`/`N` commands. A stock kernel has neither: this is
//! then the read-only legacy back end — the live list can be read, copied and quoted, and
//! `snapshot_open` says why it cannot trim.

use crate::kernel::{Interface, KernelIfError, SnapshotKernel};
use imasnap_log::HashAlgo;
use imasnap_tpm::Tpm;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// Where Linux mounts IMA's securityfs files.
pub const DEFAULT_IMA_DIR: &str = "/sys/kernel/security/ima";

/// Bytes per `read` of the snapshot file: the kernel's seq_file hands out whole records
/// per call anyway, so this only bounds the agent's buffer.
const READ_CHUNK: usize = 64 * 1024;

/// The Linux errno for "device or resource busy": the exclusive-open refusal.
const EBUSY: i32 = 16;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// Upstream staging's files (`CONFIG_IMA_STAGING`): the `_staged` twin of the SHA1 list,
/// and the list `N` is written to.
pub const STAGED_FILE: &str = "binary_runtime_measurements_staged";
const LIST_FILE: &str = "binary_runtime_measurements";

/// A kernel's IMA directory and the TPM its IMA extends.
pub struct SecurityFs<T: Tpm> {
    dir: PathBuf,
    tpm: T,
    pcr: u32,
}

/// An open `snapshot` file description: dropping it is `close` (an abort before `done`).
#[derive(Debug)]
pub struct FsHandle {
    file: File,
}

impl<T: Tpm> SecurityFs<T> {
    /// `dir` is usually [`DEFAULT_IMA_DIR`]; `pcr` is `CONFIG_IMA_MEASURE_PCR_IDX` (10).
    pub fn new(dir: impl Into<PathBuf>, tpm: T, pcr: u32) -> Self {
        Self { dir: dir.into(), tpm, pcr }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tpm_mut(&mut self) -> &mut T {
        &mut self.tpm
    }

    pub fn tpm(&self) -> &T {
        &self.tpm
    }

    /// True when the kernel has the RFC `snapshot` file.
    pub fn can_snapshot(&self) -> bool {
        self.dir.join("snapshot").exists()
    }

    /// True when the kernel has upstream's staging files.
    pub fn can_stage(&self) -> bool {
        self.dir.join(STAGED_FILE).exists()
    }

    /// One staging command: open `name` for writing, write `cmd`, close. The kernel admits
    /// one writer or many readers: holding nothing between commands keeps readers waiting
    /// no longer than one write.
    fn command(&self, name: &str, cmd: &[u8]) -> Result<(), KernelIfError> {
        let p = self.path(name);
        let mut f = match OpenOptions::new().write(true).open(&p) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(EBUSY) => {
                return Err(KernelIfError::Busy(format!("{}: {e}", p.display())))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(KernelIfError::Failed(format!(
                    "{} does not exist: this kernel has no staging interface (CONFIG_IMA_STAGING)",
                    p.display()
                )))
            }
            Err(e) => return Err(failed("open", &p, e)),
        };
        let what = String::from_utf8_lossy(cmd).trim_end().to_string();
        match f.write(cmd) {
            Ok(n) if n == cmd.len() => Ok(()),
            Ok(n) => Err(KernelIfError::Failed(format!("write {what:?} to {}: {n} bytes taken", p.display()))),
            Err(e) => Err(match e.raw_os_error() {
                Some(EBUSY) => KernelIfError::Busy(format!("write {what:?} to {}: {e}", p.display())),
                Some(EEXIST) => KernelIfError::Exists(format!("write {what:?} to {}: {e}", p.display())),
                Some(ENOENT) => KernelIfError::NoEntry(format!("write {what:?} to {}: {e}", p.display())),
                _ => failed(&format!("write {what:?} to"), &p, e),
            }),
        }
    }

    fn open_list(&self, name: &str) -> Result<BufReader<File>, KernelIfError> {
        let p = self.path(name);
        match File::open(&p) {
            Ok(f) => Ok(BufReader::with_capacity(READ_CHUNK, f)),
            // Another process holds the files for writing: the kernel admits many readers or
            // one writer across the measurement files. Retry later.
            Err(e) if e.raw_os_error() == Some(EBUSY) => Err(KernelIfError::Busy(format!("{}: {e}", p.display()))),
            Err(e) => Err(failed("open", &p, e)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn failed(op: &str, path: &Path, e: std::io::Error) -> KernelIfError {
    KernelIfError::Failed(format!("{op} {}: {e}", path.display()))
}

impl<T: Tpm> SnapshotKernel for SecurityFs<T> {
    type Handle = FsHandle;
    type Live = BufReader<File>;

    fn snapshot_open(&mut self) -> Result<FsHandle, KernelIfError> {
        let p = self.path("snapshot");
        match OpenOptions::new().read(true).write(true).open(&p) {
            Ok(file) => Ok(FsHandle { file }),
            Err(e) if e.raw_os_error() == Some(EBUSY) => Err(KernelIfError::Busy(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(KernelIfError::Failed(format!(
                "{} does not exist: this kernel has no snapshot interface (legacy, read-only: \
                 the list can be read and quoted but not trimmed)",
                p.display()
            ))),
            Err(e) => Err(failed("open", &p, e)),
        }
    }

    fn snapshot_read(&mut self, h: &mut FsHandle) -> Result<Vec<u8>, KernelIfError> {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match h.file.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(failed("read", &self.path("snapshot"), e)),
            }
        }
    }

    fn snapshot_done(&mut self, h: &mut FsHandle) -> Result<(), KernelIfError> {
        h.file.write_all(b"done").map_err(|e| failed("write done to", &self.path("snapshot"), e))
    }

    fn snapshot_close(&mut self, h: FsHandle) {
        drop(h);
    }

    fn live_list(&mut self) -> Result<BufReader<File>, KernelIfError> {
        self.open_list(LIST_FILE)
    }

    /// The RFC `snapshot` file first (its marker lets a verifier check the newest segment
    /// alone), then staging, then legacy.
    fn interface(&mut self) -> Interface {
        if self.can_snapshot() {
            Interface::Snapshot
        } else if self.can_stage() {
            Interface::Staging
        } else {
            Interface::Legacy
        }
    }

    fn stage(&mut self) -> Result<(), KernelIfError> {
        self.command(STAGED_FILE, b"A\n")
    }

    fn staged_list(&mut self) -> Result<BufReader<File>, KernelIfError> {
        self.open_list(STAGED_FILE)
    }

    fn delete_staged(&mut self) -> Result<(), KernelIfError> {
        self.command(STAGED_FILE, b"D\n")
    }

    fn trim(&mut self, n: u64) -> Result<(), KernelIfError> {
        self.command(LIST_FILE, format!("{n}\n").as_bytes())
    }

    fn reset_count(&mut self) -> Result<u64, KernelIfError> {
        let ci = self.tpm.clock_info().map_err(|e| KernelIfError::Failed(format!("TPM: {e}")))?;
        Ok(ci.reset_count as u64)
    }

    fn banks(&mut self) -> Result<Vec<HashAlgo>, KernelIfError> {
        Ok(self.tpm.banks())
    }

    fn quoting_tpm(&mut self) -> Option<&mut dyn Tpm> {
        Some(&mut self.tpm)
    }

    fn measurement_pcr_values(&mut self) -> Result<Vec<imasnap_log::PcrValue>, KernelIfError> {
        let pcr = self.measurement_pcr();
        crate::kernel::read_measurement_pcr(&mut self.tpm, pcr)
    }

    fn measurement_pcr(&self) -> u32 {
        self.pcr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imasnap_tpm::SoftTpm;

    #[test]
    fn legacy_kernel_reads_but_cannot_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let log = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/real-kernel/ima-ng/binary_runtime_measurements"
        ))
        .unwrap();
        std::fs::write(d.path().join("binary_runtime_measurements"), &log).unwrap();
        let mut k = SecurityFs::new(d.path(), SoftTpm::new(1), 10);
        assert!(!k.can_snapshot());
        let err = k.snapshot_open().unwrap_err();
        assert!(err.to_string().contains("no snapshot interface"), "{err}");
        let st = k.live_stats().unwrap();
        assert_eq!(st.bytes, log.len() as u64);
        assert!(st.records > 1);
        let head = k.live_head().unwrap();
        assert_eq!(head.name(imasnap_log::Endian::Little).as_deref(), Some("boot_aggregate"));
    }

    #[test]
    fn snapshot_file_is_read_and_done_is_written() {
        // A plain file stands in for the kernel's: read returns its bytes, done is appended.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("snapshot"), b"records").unwrap();
        let mut k = SecurityFs::new(d.path(), SoftTpm::new(1), 10);
        let mut h = k.snapshot_open().unwrap();
        assert_eq!(k.snapshot_read(&mut h).unwrap(), b"records");
        assert!(k.snapshot_read(&mut h).unwrap().is_empty());
        k.snapshot_done(&mut h).unwrap();
        k.snapshot_close(h);
        assert_eq!(std::fs::read(d.path().join("snapshot")).unwrap(), b"recordsdone");
    }

    #[test]
    fn interface_is_detected_and_commands_are_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let mut k = SecurityFs::new(d.path(), SoftTpm::new(1), 10);
        assert_eq!(k.interface(), Interface::Legacy);
        assert!(k.stage().unwrap_err().to_string().contains("no staging interface"), "legacy cannot stage");
        // Plain files stand in for the kernel's: a command is one write of its bytes.
        std::fs::write(d.path().join(STAGED_FILE), b"").unwrap();
        std::fs::write(d.path().join(LIST_FILE), b"").unwrap();
        assert_eq!(k.interface(), Interface::Staging);
        k.stage().unwrap();
        k.trim(5000).unwrap();
        k.delete_staged().unwrap();
        assert_eq!(std::fs::read(d.path().join(STAGED_FILE)).unwrap(), b"D\n", "each command opens anew");
        assert_eq!(std::fs::read(d.path().join(LIST_FILE)).unwrap(), b"5000\n");
        std::fs::write(d.path().join("snapshot"), b"").unwrap();
        assert_eq!(k.interface(), Interface::Snapshot, "the RFC file wins when both exist");
    }
}
