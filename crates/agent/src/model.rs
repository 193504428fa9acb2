//! [`SnapshotKernel`] for the in-process kernel model.

use crate::kernel::{KernelIfError, LiveStats, SnapshotKernel};
use imasnap_kernel_model::{Kernel, KernelError, SnapshotHandle};
use imasnap_log::{Endian, HashAlgo, Record};
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
        e => KernelIfError::Failed(e.to_string()),
    }
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
        // Same SHA1 digests as `snapshot_read`, also when the TPM has no SHA1 bank.
        let mut out = Vec::with_capacity(self.list_bytes() as usize);
        for e in self.entries() {
            e.sha1_record(Kernel::banks(self)).encode(Endian::Little, &mut out);
        }
        Ok(Cursor::new(out))
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

    fn measurement_pcr(&self) -> u32 {
        self.config().pcr
    }
}
