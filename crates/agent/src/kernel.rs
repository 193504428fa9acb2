//! What the agent needs from the kernel, as a trait: the RFC `snapshot` file, the live
//! list, and the TPM's resetCount. Back ends: the in-process kernel model (here), the real
//! securityfs files and upstream staging (later).

use imasnap_log::marker::EVENT_NAME;
use imasnap_log::{BinaryReader, Endian, HashAlgo, Record};
use std::io::Read;

/// A kernel interface failure. `Busy` is the exclusive-open EBUSY (another process
/// holds the measurement files: retry later).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KernelIfError {
    #[error("EBUSY: {0}")]
    Busy(String),
    /// Staging `A` while records are already staged.
    #[error("EEXIST: {0}")]
    Exists(String),
    /// Staging: nothing to stage (`A`), nothing staged (`D`), too few records (`N`).
    #[error("ENOENT: {0}")]
    NoEntry(String),
    #[error("{0}")]
    Failed(String),
}

/// How a kernel lets the agent trim its measurement list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interface {
    /// The RFC `snapshot` file (our kernel series): marked cuts.
    Snapshot,
    /// Upstream's export-and-delete files (`CONFIG_IMA_STAGING`, Linux 7.2).
    Staging,
    /// Neither: the list is read and copied, never trimmed.
    Legacy,
}

impl Interface {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Staging => "staging",
            Self::Legacy => "legacy",
        }
    }
}

const NO_STAGING: &str = "this kernel has no staging interface (CONFIG_IMA_STAGING)";

/// Size of the in-memory list, for the snapshot policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    pub records: u64,
    /// Bytes of the list in binary SHA1 form.
    pub bytes: u64,
}

pub trait SnapshotKernel {
    /// An open `snapshot` file description (closing it without `done` aborts).
    type Handle;
    /// The live list as `binary_runtime_measurements` (SHA1) bytes.
    type Live: Read;

    /// `open(snapshot, O_RDWR)`: starts an attempt; the kernel appends the marker.
    fn snapshot_open(&mut self) -> Result<Self::Handle, KernelIfError>;

    /// The open attempt's marker: its list position n (= records before it) and the
    /// marker record in SHA1 form. The default scans the live list for the last marker:
    /// only one attempt is open at a time, so the newest marker is this attempt's.
    fn snapshot_marker(&mut self, _h: &Self::Handle) -> Result<(u64, Record), KernelIfError> {
        last_marker(self.live_list()?)
    }

    /// Next chunk of the records before the marker (binary SHA1); empty at the end.
    fn snapshot_read(&mut self, h: &mut Self::Handle) -> Result<Vec<u8>, KernelIfError>;

    /// `write("done")`: the kernel drops every record before the marker.
    fn snapshot_done(&mut self, h: &mut Self::Handle) -> Result<(), KernelIfError>;

    /// `close`.
    fn snapshot_close(&mut self, h: Self::Handle);

    /// The live list, streaming.
    fn live_list(&mut self) -> Result<Self::Live, KernelIfError>;

    /// The live list from byte `offset` on, as a read after `lseek(offset)` gives it
    /// (past the end: nothing). The default reads the bytes before it and drops them.
    fn live_list_at(&mut self, offset: u64) -> Result<Self::Live, KernelIfError> {
        let mut live = self.live_list()?;
        std::io::copy(&mut (&mut live).take(offset), &mut std::io::sink())
            .map_err(|e| KernelIfError::Failed(format!("reading the live list: {e}")))?;
        Ok(live)
    }

    /// TPM resetCount (cold boots since TPM2_Clear).
    fn reset_count(&mut self) -> Result<u64, KernelIfError>;

    /// TPM banks in bank order (the banks markers list).
    fn banks(&mut self) -> Result<Vec<HashAlgo>, KernelIfError>;

    /// The measurement PCR (`CONFIG_IMA_MEASURE_PCR_IDX`).
    fn measurement_pcr(&self) -> u32;

    /// The measurement PCR's value in every bank, from the TPM (bank order).
    fn measurement_pcr_values(&mut self) -> Result<Vec<imasnap_log::PcrValue>, KernelIfError> {
        Err(KernelIfError::Failed("this back end cannot read PCRs".into()))
    }

    /// The TPM that quotes this kernel's PCRs, for checkpoints (docs/CHECKPOINTS.md).
    /// `None`: no checkpoints on this back end.
    fn quoting_tpm(&mut self) -> Option<&mut dyn imasnap_tpm::Tpm> {
        None
    }

    /// What this kernel offers. The default says the RFC snapshot interface.
    fn interface(&mut self) -> Interface {
        Interface::Snapshot
    }

    /// Staging `A`: the whole current list becomes the staged list.
    fn stage(&mut self) -> Result<(), KernelIfError> {
        Err(KernelIfError::Failed(NO_STAGING.into()))
    }

    /// The staged records (binary SHA1), streaming.
    fn staged_list(&mut self) -> Result<Self::Live, KernelIfError> {
        Err(KernelIfError::Failed(NO_STAGING.into()))
    }

    /// Staging `D`: frees the staged records.
    fn delete_staged(&mut self) -> Result<(), KernelIfError> {
        Err(KernelIfError::Failed(NO_STAGING.into()))
    }

    /// Staging `N`: deletes the first `n` records of the current list.
    fn trim(&mut self, _n: u64) -> Result<(), KernelIfError> {
        Err(KernelIfError::Failed(NO_STAGING.into()))
    }

    /// First record of the live list.
    fn live_head(&mut self) -> Result<Record, KernelIfError> {
        let live = self.live_list()?;
        let mut r = BinaryReader::new(live, imasnap_store::snapshot_format());
        match r.next() {
            Some(Ok(rec)) => Ok(rec),
            Some(Err(e)) => Err(KernelIfError::Failed(format!("live list: {e}"))),
            None => Err(KernelIfError::Failed("live list is empty".into())),
        }
    }

    /// Records and bytes in the live list. The default decodes the whole list.
    fn live_stats(&mut self) -> Result<LiveStats, KernelIfError> {
        let live = self.live_list()?;
        let mut r = BinaryReader::new(live, imasnap_store::snapshot_format());
        let mut slot = None;
        loop {
            match r.read_into(&mut slot) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(KernelIfError::Failed(format!("live list: {e}"))),
            }
        }
        Ok(LiveStats { records: r.next_index(), bytes: r.offset() })
    }
}

/// The measurement PCR of every bank of `tpm`, in bank order.
pub(crate) fn read_measurement_pcr<T: imasnap_tpm::Tpm + ?Sized>(
    tpm: &mut T,
    pcr: u32,
) -> Result<Vec<imasnap_log::PcrValue>, KernelIfError> {
    let mut out = Vec::new();
    for b in tpm.banks() {
        let v = tpm.pcr_read(b, &[pcr]).map_err(|e| KernelIfError::Failed(format!("TPM: {e}")))?;
        out.extend(v);
    }
    Ok(out)
}

/// Position and record of the last `snapshot_aggregate` in a binary SHA1 list.
pub fn last_marker(live: impl Read) -> Result<(u64, Record), KernelIfError> {
    let mut r = BinaryReader::new(live, imasnap_store::snapshot_format());
    let mut slot = None;
    let mut found = None;
    loop {
        match r.read_into(&mut slot) {
            Ok(Some(rec)) => {
                if rec.name(Endian::Little).as_deref() == Some(EVENT_NAME) {
                    found = Some((r.next_index() - 1, rec.clone()));
                }
            }
            Ok(None) => break,
            Err(e) => return Err(KernelIfError::Failed(format!("live list: {e}"))),
        }
    }
    found.ok_or_else(|| KernelIfError::Failed("no snapshot_aggregate in the live list".into()))
}

/// A borrowed kernel is a kernel: lets a caller keep ownership across agent restarts.
impl<K: SnapshotKernel + ?Sized> SnapshotKernel for &mut K {
    type Handle = K::Handle;
    type Live = K::Live;
    fn snapshot_open(&mut self) -> Result<Self::Handle, KernelIfError> {
        (**self).snapshot_open()
    }
    fn snapshot_marker(&mut self, h: &Self::Handle) -> Result<(u64, Record), KernelIfError> {
        (**self).snapshot_marker(h)
    }
    fn snapshot_read(&mut self, h: &mut Self::Handle) -> Result<Vec<u8>, KernelIfError> {
        (**self).snapshot_read(h)
    }
    fn snapshot_done(&mut self, h: &mut Self::Handle) -> Result<(), KernelIfError> {
        (**self).snapshot_done(h)
    }
    fn snapshot_close(&mut self, h: Self::Handle) {
        (**self).snapshot_close(h)
    }
    fn live_list(&mut self) -> Result<Self::Live, KernelIfError> {
        (**self).live_list()
    }
    fn live_list_at(&mut self, offset: u64) -> Result<Self::Live, KernelIfError> {
        (**self).live_list_at(offset)
    }
    fn reset_count(&mut self) -> Result<u64, KernelIfError> {
        (**self).reset_count()
    }
    fn banks(&mut self) -> Result<Vec<HashAlgo>, KernelIfError> {
        (**self).banks()
    }
    fn measurement_pcr(&self) -> u32 {
        (**self).measurement_pcr()
    }
    fn live_head(&mut self) -> Result<Record, KernelIfError> {
        (**self).live_head()
    }
    fn live_stats(&mut self) -> Result<LiveStats, KernelIfError> {
        (**self).live_stats()
    }
    fn interface(&mut self) -> Interface {
        (**self).interface()
    }
    fn quoting_tpm(&mut self) -> Option<&mut dyn imasnap_tpm::Tpm> {
        (**self).quoting_tpm()
    }
    fn measurement_pcr_values(&mut self) -> Result<Vec<imasnap_log::PcrValue>, KernelIfError> {
        (**self).measurement_pcr_values()
    }
    fn stage(&mut self) -> Result<(), KernelIfError> {
        (**self).stage()
    }
    fn staged_list(&mut self) -> Result<Self::Live, KernelIfError> {
        (**self).staged_list()
    }
    fn delete_staged(&mut self) -> Result<(), KernelIfError> {
        (**self).delete_staged()
    }
    fn trim(&mut self, n: u64) -> Result<(), KernelIfError> {
        (**self).trim(n)
    }
}

#[cfg(all(test, feature = "kernel-model"))]
mod tests {
    use super::*;
    use imasnap_kernel_model::{Config, Kernel};
    use imasnap_tpm::SoftTpm;

    #[test]
    fn default_marker_lookup_agrees_with_the_model() {
        let mut k = Kernel::boot(Config::default(), SoftTpm::new(3)).unwrap();
        k.measure_file(b"/a", &[1; 32]).unwrap();
        // An aborted attempt leaves an older marker behind.
        let old = Kernel::snapshot_open(&mut k).unwrap();
        Kernel::snapshot_close(&mut k, old);
        k.measure_file(b"/b", &[2; 32]).unwrap();
        let h = SnapshotKernel::snapshot_open(&mut k).unwrap();
        k.measure_file(b"/c", &[3; 32]).unwrap();
        let (n, rec) = k.snapshot_marker(&h).unwrap();
        assert_eq!(n, 4);
        assert_eq!(last_marker(k.live_list().unwrap()).unwrap(), (n, rec.clone()));
        let m = imasnap_log::marker::Marker::from_record(&rec, Endian::Little).unwrap().unwrap();
        assert_eq!(m.attempt, 2, "the open attempt's marker, not the aborted one");
    }
}
