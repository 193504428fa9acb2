//! [`SnapshotKernel`] for the in-process kernel model.

use crate::kernel::Interface;
use crate::kernel::{KernelIfError, LiveStats, SnapshotKernel};
use imasnap_kernel_model::{Kernel, KernelError, MeasFile, SnapshotHandle};
use imasnap_log::{HashAlgo, Record};
use imasnap_tpm::Tpm;
use std::io::Cursor;

/// Records per `read`: bounds the agent's buffer, and makes long lists take several reads.
pub const READ_CHUNK_RECORDS: usize = 64;

/// The model's open `snapshot` file plus the read position.
#[derive(Debug)]
pub struct ModelHandle {
    inner: SnapshotHandle,
    next: usize,
}

fn err(e: KernelError) -> KernelIfError {
    match e {
        KernelError::Busy(m) => KernelIfError::Busy(m.to_string()),
        KernelError::Exists(m) => KernelIfError::Exists(m.to_string()),
        KernelError::NoEntry(m) => KernelIfError::NoEntry(m.to_string()),
        e => KernelIfError::Failed(e.to_string()),
    }
}

/// The agent's process id in the model's reader/writer accounting.
pub const AGENT_PID: u32 = 1;

/// One staging command on `file`, opened for writing as the agent and closed again.
fn command<T: Tpm>(k: &mut Kernel<T>, file: MeasFile, cmd: &[u8]) -> Result<(), KernelIfError> {
    let fd = k.open(file, true, AGENT_PID, true).map_err(err)?;
    let r = k.write(&fd, cmd);
    k.close(fd);
    r.map(|_| ()).map_err(err)
}

impl<T: Tpm> SnapshotKernel for Kernel<T> {
    type Handle = ModelHandle;
    type Live = Cursor<Vec<u8>>;

    fn snapshot_open(&mut self) -> Result<ModelHandle, KernelIfError> {
        Ok(ModelHandle { inner: Kernel::snapshot_open(self).map_err(err)?, next: 0 })
    }

    fn snapshot_marker(&mut self, h: &ModelHandle) -> Result<(u64, Record), KernelIfError> {
        let n = h.inner.records;
        let e =
            self.entries().nth(n).ok_or_else(|| KernelIfError::Failed(format!("no record at marker position {n}")))?;
        Ok((n as u64, e.sha1_record(Kernel::banks(self))))
    }

    fn snapshot_read(&mut self, h: &mut ModelHandle) -> Result<Vec<u8>, KernelIfError> {
        let b = Kernel::snapshot_read(self, &h.inner, h.next, READ_CHUNK_RECORDS).map_err(err)?;
        h.next = (h.next + READ_CHUNK_RECORDS).min(h.inner.records);
        Ok(b)
    }

    fn snapshot_done(&mut self, h: &mut ModelHandle) -> Result<(), KernelIfError> {
        Kernel::snapshot_done(self, &h.inner).map(|_| ()).map_err(err)
    }

    fn snapshot_close(&mut self, h: ModelHandle) {
        Kernel::snapshot_close(self, h.inner)
    }

    fn live_list(&mut self) -> Result<Cursor<Vec<u8>>, KernelIfError> {
        // Through open(), so another process holding the files for writing is EBUSY here too.
        // Same SHA1 digests as `snapshot_read`, also when the TPM has no SHA1 bank.
        let fd = self.open(MeasFile::BINARY, false, AGENT_PID, true).map_err(err)?;
        let r = self.read(&fd);
        self.close(fd);
        Ok(Cursor::new(r.map_err(err)?))
    }

    fn live_list_at(&mut self, offset: u64) -> Result<Cursor<Vec<u8>>, KernelIfError> {
        let fd = self.open(MeasFile::BINARY, false, AGENT_PID, true).map_err(err)?;
        let r = self.read_at(&fd, offset);
        self.close(fd);
        Ok(Cursor::new(r.map_err(err)?))
    }

    fn live_head(&mut self) -> Result<Record, KernelIfError> {
        let e = self.entries().next().ok_or_else(|| KernelIfError::Failed("live list is empty".into()))?;
        Ok(e.sha1_record(Kernel::banks(self)))
    }

    fn live_stats(&mut self) -> Result<LiveStats, KernelIfError> {
        Ok(LiveStats { records: self.len() as u64, bytes: self.list_bytes() })
    }

    fn reset_count(&mut self) -> Result<u64, KernelIfError> {
        let ci = self.tpm_mut().clock_info().map_err(|e| KernelIfError::Failed(format!("TPM: {e}")))?;
        Ok(ci.reset_count as u64)
    }

    fn banks(&mut self) -> Result<Vec<HashAlgo>, KernelIfError> {
        Ok(Kernel::banks(self).to_vec())
    }

    fn quoting_tpm(&mut self) -> Option<&mut dyn Tpm> {
        Some(self.tpm_mut())
    }

    fn measurement_pcr_values(&mut self) -> Result<Vec<imasnap_log::PcrValue>, KernelIfError> {
        let pcr = self.measurement_pcr();
        crate::kernel::read_measurement_pcr(self.tpm_mut(), pcr)
    }

    fn measurement_pcr(&self) -> u32 {
        self.config().pcr
    }

    /// The model has both interfaces; without a choice in the configuration it is the RFC's.
    fn interface(&mut self) -> Interface {
        Interface::Snapshot
    }

    fn stage(&mut self) -> Result<(), KernelIfError> {
        command(self, MeasFile::BINARY_STAGED, b"A\n")
    }

    fn staged_list(&mut self) -> Result<Cursor<Vec<u8>>, KernelIfError> {
        let fd = self.open(MeasFile::BINARY_STAGED, false, AGENT_PID, true).map_err(err)?;
        let r = self.read(&fd);
        self.close(fd);
        Ok(Cursor::new(r.map_err(err)?))
    }

    fn delete_staged(&mut self) -> Result<(), KernelIfError> {
        command(self, MeasFile::BINARY_STAGED, b"D\n")
    }

    fn trim(&mut self, n: u64) -> Result<(), KernelIfError> {
        command(self, MeasFile::BINARY, format!("{n}\n").as_bytes())
    }
}
