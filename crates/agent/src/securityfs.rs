//! [`SnapshotKernel`] on a real kernel: the IMA securityfs directory
//! (`/sys/kernel/security/ima`) plus a TPM for resetCount and the banks.
//!
//! With the RFC patch (kernel/) the directory has a `snapshot` file and the agent trims the
//! list. A stock kernel has none: this is then the read-only legacy back end — the live
//! list can be read, copied and quoted, and `snapshot_open` says why it cannot trim.

use crate::kernel::{KernelIfError, SnapshotKernel};
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
        let p = self.path("binary_runtime_measurements");
        match File::open(&p) {
            Ok(f) => Ok(BufReader::with_capacity(READ_CHUNK, f)),
            // Another process holds the snapshot file: the kernel admits many readers or
            // one writer across the measurement files. Retry later, as for the snapshot.
            Err(e) if e.raw_os_error() == Some(EBUSY) => Err(KernelIfError::Busy(format!("{}: {e}", p.display()))),
            Err(e) => Err(failed("open", &p, e)),
        }
    }

    fn reset_count(&mut self) -> Result<u64, KernelIfError> {
        let ci = self.tpm.clock_info().map_err(|e| KernelIfError::Failed(format!("TPM: {e}")))?;
        Ok(ci.reset_count as u64)
    }

    fn banks(&mut self) -> Result<Vec<HashAlgo>, KernelIfError> {
        Ok(self.tpm.banks())
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
}
