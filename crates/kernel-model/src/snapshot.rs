//! The RFC snapshot interface (docs/SNAPSHOTS.md): open (exclusive, marker under the lock), read,
//! `done` (truncate), close without `done` (abort; the marker stays).

use crate::list::{Kernel, KernelError, PcrMode};
use imasnap_log::marker::Marker;
use imasnap_log::{Endian, PcrValue};
use imasnap_tpm::Tpm;
use std::time::Instant;

/// One-shot faults the model can inject, one per kernel-side step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `open` fails before the attempt counter moves (e.g. ENOMEM).
    OpenEarly,
    /// The TPM read for the marker fails: no marker is appended, the attempt is unspent.
    MarkerTpmRead,
    /// `read` fails (EIO).
    Read,
    /// `done` fails before removing anything.
    Done,
}

#[derive(Default)]
pub(crate) struct SnapState {
    open: Option<u64>,
    attempts: u64,
    /// List position of the open attempt's marker.
    marker_pos: usize,
    done: bool,
    fault: Option<Fault>,
    next_id: u64,
}

/// The open file description of `snapshot`. Only the holder may read or finish.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotHandle {
    id: u64,
    /// Attempt number written into this open's marker.
    pub attempt: u64,
    /// Records before the marker, which `read` returns and `done` removes.
    pub records: usize,
}

impl<T: Tpm> Kernel<T> {
    /// Arms a one-shot fault.
    pub fn inject(&mut self, f: Fault) {
        self.snapshot.fault = Some(f);
    }

    fn take_fault(&mut self, f: Fault) -> Result<(), KernelError> {
        if self.snapshot.fault == Some(f) {
            self.snapshot.fault = None;
            return Err(KernelError::Injected(f));
        }
        Ok(())
    }

    /// Attempts so far in this kernel (the counter in the markers).
    pub fn snapshot_attempts(&self) -> u64 {
        self.snapshot.attempts
    }

    /// `open("snapshot", O_RDWR)`: exclusive; counts an attempt and appends the marker.
    pub fn snapshot_open(&mut self) -> Result<SnapshotHandle, KernelError> {
        if self.snapshot.open.is_some() {
            return Err(KernelError::Busy("snapshot is already open"));
        }
        if self.staging.any_open() {
            return Err(KernelError::Busy("a measurement file is open"));
        }
        self.take_fault(Fault::OpenEarly)?;
        // Before the lock: the PCRs IMA has not extended (all of them in the RFC's mode,
        // read under the lock below instead). A failed read leaves the attempt unspent.
        let outside = if self.cfg.pcr_mode == PcrMode::ExtendedUnderLock { !self.extended } else { 0 };
        self.take_fault(Fault::MarkerTpmRead)?;
        let mut values = self.read_pcrs(outside & 0x00ff_ffff, None)?;
        let lock = Instant::now();
        if self.suspended || self.kexec_loaded {
            self.snapshot.attempts += 1;
            return Err(KernelError::Busy(if self.suspended {
                "measurements suspended for kexec"
            } else {
                "a kexec segment sized for the list is loaded"
            }));
        }
        // Under the lock: the rest (the PCRs IMA extended, or all of them).
        values = self.read_pcrs(!outside & 0x00ff_ffff, Some(values))?;
        self.snapshot.attempts += 1;
        let attempt = self.snapshot.attempts;
        let marker = Marker { attempt, banks: self.banks.iter().copied().zip(values).collect() };
        let buf = marker.encode();
        let t = imasnap_log::entry::builtin("ima-buf");
        let d = self.cfg.ima_hash.hash(&[&buf]);
        let fields = vec![
            imasnap_log::entry::d_ng(self.cfg.ima_hash.name(), d.as_bytes()),
            imasnap_log::entry::n_ng(imasnap_log::marker::EVENT_NAME.as_bytes()),
            buf,
        ];
        let e = self.make_entry(t, fields, false)?;
        let pos = self.list.len();
        self.append(e)?;
        let pause = lock.elapsed();
        self.last_pause = Some(pause);
        self.max_pause = self.max_pause.max(pause);
        self.snapshot.next_id += 1;
        let id = self.snapshot.next_id;
        self.snapshot.open = Some(id);
        self.snapshot.marker_pos = pos;
        self.snapshot.done = false;
        Ok(SnapshotHandle { id, attempt, records: pos })
    }

    /// Reads the PCRs in `mask` of every bank into `into` (zeros where nothing was read).
    fn read_pcrs(&mut self, mask: u32, into: Option<Vec<[PcrValue; 24]>>) -> Result<Vec<[PcrValue; 24]>, KernelError> {
        let mut out = into.unwrap_or_else(|| self.banks.iter().map(|&b| [PcrValue::zero(b); 24]).collect());
        let sel: Vec<u32> = (0..24).filter(|p| mask & (1 << p) != 0).collect();
        if sel.is_empty() {
            return Ok(out);
        }
        for (bi, &b) in self.banks.clone().iter().enumerate() {
            let v = self.tpm.pcr_read(b, &sel).map_err(|e| KernelError::Tpm(e.to_string()))?;
            for (&p, x) in sel.iter().zip(v) {
                out[bi][p as usize] = x;
            }
        }
        Ok(out)
    }

    fn check_handle(&self, h: &SnapshotHandle) -> Result<(), KernelError> {
        if self.snapshot.open != Some(h.id) {
            return Err(KernelError::Invalid("stale snapshot handle".into()));
        }
        Ok(())
    }

    /// `read`: records `[from, from + n)` of those before the marker, as a binary SHA1 log.
    pub fn snapshot_read(&mut self, h: &SnapshotHandle, from: usize, n: usize) -> Result<Vec<u8>, KernelError> {
        self.check_handle(h)?;
        self.take_fault(Fault::Read)?;
        let end = self.snapshot.marker_pos.min(from.saturating_add(n));
        let mut out = Vec::new();
        // The classic SHA1 records, encoded straight from the entries.
        for e in self.list.range(from.min(end)..end) {
            e.encode(None, Endian::Little, &mut out);
        }
        Ok(out)
    }

    /// `write("done")`: removes every record before the marker and frees it.
    pub fn snapshot_done(&mut self, h: &SnapshotHandle) -> Result<usize, KernelError> {
        self.check_handle(h)?;
        if self.suspended {
            return Err(KernelError::Busy("measurement suspended for kexec"));
        }
        if self.snapshot.done {
            return Err(KernelError::Invalid("done already written".into()));
        }
        self.take_fault(Fault::Done)?;
        let n = self.snapshot.marker_pos;
        for e in self.list.drain(..n) {
            self.bytes_in_list -= e.encoded_len_in(None) as u64;
            if !self.cfg.keep_dedup_on_done && !e.violation {
                self.htable.remove(&(e.pcr, e.digests[self.dedup_bank]));
            }
        }
        self.removed += n as u64;
        self.snapshot.marker_pos = 0;
        self.snapshot.done = true;
        Ok(n)
    }

    /// `close`: without `done` the attempt is aborted and the marker stays as an ordinary record.
    pub fn snapshot_close(&mut self, h: SnapshotHandle) {
        if self.snapshot.open == Some(h.id) {
            self.snapshot.open = None;
        }
    }

    /// The agent process died: the kernel closes its descriptors.
    pub fn process_exit(&mut self) {
        self.snapshot.open = None;
        self.staging.opens.clear();
    }

    pub(crate) fn snapshot_is_open(&self) -> bool {
        self.snapshot.open.is_some()
    }
}
