//! The agent: the snapshot protocol of docs/SNAPSHOTS.md step by step, recovery on start,
//! and cold-boot retention. Every step boundary is a [`CrashPoint`]; arming one makes the
//! agent stop dead there, as if the process had been killed.

use crate::kernel::{Interface, KernelIfError, SnapshotKernel};
use crate::policy::{AgentConfig, InterfaceChoice, Trigger};
use crate::staging::is_boot_aggregate;
use imasnap_log::marker::Marker;
use imasnap_log::{BinaryReader, Endian, Record};
use imasnap_store::{
    decide, BootDir, BootId, BootInfo, Decision, FileInfo, Manifest, MarkerRef, Pending, SnapshotEntry, StitchedReader,
    Store, StoreError, StoreLock,
};
use std::time::Instant;

/// A step boundary where a crash can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrashPoint {
    /// Snapshot opened (marker appended); nothing on disk yet.
    AfterOpen,
    /// `.tmp-pending.json` written and fsynced, not renamed.
    DuringPendingWrite,
    /// `pending.json` installed.
    AfterPendingWritten,
    /// First chunk of records written to `.tmp-<seq>.snap`.
    DuringTmpWrite,
    /// All records written, file not fsynced.
    AfterTmpWrite,
    AfterFsync,
    /// Renamed to `<seq>.snap`, directory not fsynced.
    AfterRename,
    AfterDirFsync,
    /// The checkpoint's quote taken; nothing of it stored yet.
    AfterQuote,
    /// The checkpoint stored durably (RFC: in `pending.json`; staging: in the committed
    /// manifest), nothing deleted yet.
    AfterCheckpointStored,
    /// `done` written: the kernel has dropped the records.
    AfterDone,
    /// `.tmp-manifest.json` written, not renamed.
    DuringManifestWrite,
    /// Manifest renamed and directory fsynced; `pending.json` still present.
    AfterManifestCommit,
    /// An attempt being aborted: handle closed, files not yet removed.
    AbortAfterClose,
    /// Recovery retired an earlier boot's directory, the new one is not created yet.
    RecoveryAfterRetire,
    /// Recovery (commit path): `.tmp-manifest.json` written, not renamed.
    RecoveryDuringManifestWrite,
    /// Recovery (commit path): manifest committed, `pending.json` still present.
    RecoveryAfterManifestCommit,
    /// Recovery (drop path): snapshot file removed, `pending.json` still present.
    RecoveryAfterFileRemoved,
    /// Recovery: `pending.json` removed, directory not fsynced, leftovers not cleaned.
    RecoveryAfterPendingRemoved,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 19] = [
        Self::AfterOpen,
        Self::DuringPendingWrite,
        Self::AfterPendingWritten,
        Self::DuringTmpWrite,
        Self::AfterTmpWrite,
        Self::AfterFsync,
        Self::AfterRename,
        Self::AfterDirFsync,
        Self::AfterQuote,
        Self::AfterCheckpointStored,
        Self::AfterDone,
        Self::DuringManifestWrite,
        Self::AfterManifestCommit,
        Self::AbortAfterClose,
        Self::RecoveryAfterRetire,
        Self::RecoveryDuringManifestWrite,
        Self::RecoveryAfterManifestCommit,
        Self::RecoveryAfterFileRemoved,
        Self::RecoveryAfterPendingRemoved,
    ];

    pub fn in_recovery(self) -> bool {
        self >= Self::RecoveryAfterRetire
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A simulated crash: the agent is dead and must be dropped.
    #[error("simulated crash at {0:?}")]
    Crashed(CrashPoint),
    /// The kernel refused or failed before anything changed (e.g. EBUSY on open).
    #[error("kernel: {0}")]
    Kernel(#[from] KernelIfError),
    /// The attempt failed and was rolled back: marker left in the list, no files left.
    #[error("snapshot attempt aborted: {0}")]
    Aborted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The live list does not continue the store: records would be lost or duplicated.
    #[error("live list and store disagree: {0}")]
    Inconsistent(String),
    #[error("no boot directory: run recover() first")]
    NotRecovered,
}

/// What `recover` found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    pub boot: BootId,
    /// A new boot directory was created (first start in this cold boot).
    pub created: bool,
    /// Earlier boots' directories archived or deleted (a cold boot was detected).
    pub retired: Vec<BootId>,
    /// What was done with a `pending.json`, if there was one.
    pub pending: Option<Decision>,
    /// Stale tmp and uncommitted snapshot files removed.
    pub removed: Vec<String>,
}

impl RecoveryReport {
    pub fn cold_boot(&self) -> bool {
        !self.retired.is_empty()
    }
}

struct Current {
    dir: BootDir,
    manifest: Manifest,
}

/// The agent over kernel back end `K`.
pub struct Agent<K: SnapshotKernel> {
    kernel: K,
    store: Store,
    cfg: AgentConfig,
    current: Option<Current>,
    /// A failure after `done` (or a failed rollback) left `pending.json`: recover first.
    needs_recovery: bool,
    crash_at: Option<CrashPoint>,
    dead: Option<CrashPoint>,
    last_snapshot: Instant,
    /// The interface cuts use, resolved from the configuration and the kernel.
    interface: Interface,
    /// Absolute index of the kernel list's head (staging's first staged record, if any).
    /// Below `next_index` while stored records await deletion; RFC cuts keep it equal.
    live_base: u64,
    /// What checkpoints cost this process so far.
    pub(crate) checkpoint_stats: crate::checkpoint::CheckpointStats,
    /// Where the last [`Agent::live_read`] ended, so the next one can start there.
    live_mark: Option<LiveMark>,
}

/// The end of a read of the live list: its last record (absolute index, byte offset in
/// the live list, length, SHA1 digest) and the list head it was read under. Between two
/// cuts the kernel's list only grows, so the next read may start at that record; a cut,
/// restart or recovery drops the mark, and the record found there is checked anyway.
#[derive(Clone, Debug)]
struct LiveMark {
    head: u64,
    index: u64,
    offset: u64,
    len: usize,
    digest: Vec<u8>,
}

/// Records of the live list from index `first` on, and how many (see [`Agent::live_read`]).
#[derive(Debug)]
pub struct LiveRead {
    pub first: u64,
    pub records: u64,
    /// Where `bytes` starts in the kernel's part of the list (0 for a whole read), so the
    /// list's size is `offset + bytes.len()` without reading what came before.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The interface `choice` picks on `kernel`: `auto` prefers the RFC snapshot file (its
/// marker lets a verifier check the newest segment alone), then staging, then legacy.
fn resolve<K: SnapshotKernel>(choice: InterfaceChoice, kernel: &mut K) -> Interface {
    match choice {
        InterfaceChoice::Auto => kernel.interface(),
        InterfaceChoice::Snapshot => Interface::Snapshot,
        InterfaceChoice::Staging => Interface::Staging,
        InterfaceChoice::Legacy => Interface::Legacy,
    }
}

impl<K: SnapshotKernel> Agent<K> {
    /// An agent over `kernel` with the store at `cfg.state_dir`. Call [`Agent::recover`]
    /// before anything else.
    pub fn new(mut kernel: K, cfg: AgentConfig) -> Result<Self, AgentError> {
        let store = Store::open(&cfg.state_dir)?;
        let interface = resolve(cfg.interface, &mut kernel);
        Ok(Self {
            interface,
            live_base: 0,
            checkpoint_stats: Default::default(),
            live_mark: None,
            kernel,
            store,
            cfg,
            current: None,
            needs_recovery: true,
            crash_at: None,
            dead: None,
            last_snapshot: Instant::now(),
        })
    }

    /// A new agent process on the same kernel, as after a crash and a service restart:
    /// the store is reopened and every in-memory state is dropped, as [`Agent::new`] sets
    /// it. Call [`Agent::recover`] next. On error this agent is left as it was.
    pub fn restart(&mut self) -> Result<(), AgentError> {
        self.store = Store::open(&self.cfg.state_dir)?;
        self.current = None;
        self.live_mark = None;
        self.needs_recovery = true;
        self.crash_at = None;
        self.dead = None;
        self.last_snapshot = Instant::now();
        Ok(())
    }

    /// `new` then `recover`.
    pub fn start(kernel: K, cfg: AgentConfig) -> Result<(Self, RecoveryReport), AgentError> {
        let mut a = Self::new(kernel, cfg)?;
        let r = a.recover()?;
        Ok((a, r))
    }

    pub fn kernel(&self) -> &K {
        &self.kernel
    }
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }
    /// Ends the agent (normally, or after a simulated crash) and hands the kernel back.
    pub fn into_kernel(self) -> K {
        self.kernel
    }
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn boot_dir(&self) -> Option<&BootDir> {
        self.current.as_ref().map(|c| &c.dir)
    }
    /// The committed manifest of the current boot.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.current.as_ref().map(|c| &c.manifest)
    }

    /// Arms a crash at `p` (one-shot).
    pub fn crash_at(&mut self, p: CrashPoint) {
        self.crash_at = Some(p);
    }
    /// Disarms a crash armed with [`Agent::crash_at`] that has not fired.
    pub fn disarm(&mut self) {
        self.crash_at = None;
    }

    /// Where the agent crashed, if it did.
    pub fn crashed(&self) -> Option<CrashPoint> {
        self.dead
    }

    fn alive(&self) -> Result<(), AgentError> {
        match self.dead {
            Some(p) => Err(AgentError::Crashed(p)),
            None => Ok(()),
        }
    }

    /// The interface this agent trims with.
    pub fn interface(&self) -> Interface {
        self.interface
    }

    /// Absolute index of the first record in the kernel's list (staged records first).
    pub fn live_base(&self) -> u64 {
        self.live_base
    }

    /// Where the kernel's list (staged records first) starts. Only a delete moves it.
    pub(crate) fn set_live_base(&mut self, b: u64) {
        self.live_mark = None;
        self.live_base = b;
    }

    pub(crate) fn set_manifest(&mut self, m: Manifest) {
        if let Some(c) = self.current.as_mut() {
            c.manifest = m;
        }
    }

    pub(crate) fn current_state(&self) -> Result<(BootDir, Manifest), AgentError> {
        self.current()
    }

    pub(crate) fn point(&mut self, p: CrashPoint) -> Result<(), AgentError> {
        if self.crash_at == Some(p) {
            self.crash_at = None;
            self.dead = Some(p);
            return Err(AgentError::Crashed(p));
        }
        Ok(())
    }

    fn current(&self) -> Result<(BootDir, Manifest), AgentError> {
        let c = self.current.as_ref().ok_or(AgentError::NotRecovered)?;
        Ok((c.dir.clone(), c.manifest.clone()))
    }

    /// Snapshots if the policy says so at time `now`.
    pub fn maybe_snapshot(&mut self, now: Instant) -> Result<Option<(Trigger, SnapshotEntry)>, AgentError> {
        self.alive()?;
        let stats = self.kernel.live_stats()?;
        let Some(t) = self.cfg.snapshot.due(stats, now.saturating_duration_since(self.last_snapshot)) else {
            return Ok(None);
        };
        let e = self.snapshot_once()?;
        self.last_snapshot = now;
        Ok(Some((t, e)))
    }

    /// One cut now (on demand) with this agent's interface: the RFC snapshot protocol of
    /// docs/SNAPSHOTS.md, or a staging cut (docs/STAGING.md).
    pub fn snapshot_once(&mut self) -> Result<SnapshotEntry, AgentError> {
        self.alive()?;
        // Held from the commit to the kernel's trim: a reader in another process
        // (`imasnap mount`) never sees the store and the list disagree.
        let _lock = StoreLock::exclusive(self.store.root())?;
        if self.needs_recovery {
            self.recover_locked()?;
        }
        match self.interface {
            Interface::Snapshot => self.rfc_snapshot(),
            Interface::Staging => {
                let e = self.staging_once()?;
                self.last_snapshot = Instant::now();
                e.ok_or_else(|| AgentError::Aborted("nothing new to store".into()))
            }
            Interface::Legacy => Err(AgentError::Kernel(KernelIfError::Failed(
                "legacy interface: this kernel's list can be read and copied but not trimmed".into(),
            ))),
        }
    }

    fn rfc_snapshot(&mut self) -> Result<SnapshotEntry, AgentError> {
        let (dir, manifest) = self.current()?;
        // 1. open: the kernel appends marker M at list position n.
        let mut h = self.kernel.snapshot_open()?;
        self.point(CrashPoint::AfterOpen)?;

        // 2. learn M and record the intent.
        let (n, mrec) = match self.kernel.snapshot_marker(&h) {
            Ok(x) => x,
            Err(e) => return self.abort(h, &dir, &manifest, None, format!("marker: {e}")),
        };
        let marker = match (Marker::from_record(&mrec, Endian::Little), MarkerRef::from_record(&mrec)) {
            (Ok(Some(m)), Ok(r)) => (m, r),
            _ => return self.abort(h, &dir, &manifest, None, format!("record {n} is not a well-formed marker")),
        };
        let pending = Pending {
            seq: manifest.next_seq(),
            first_index: manifest.next_index,
            count: n,
            marker: marker.1,
            checkpoint: None,
        };
        let seq = pending.seq;
        if n == 0 {
            return self.abort(h, &dir, &manifest, None, "marker is the list head: nothing precedes it".into());
        }
        if let Err(e) = dir.write_pending_tmp(&pending) {
            return self.abort(h, &dir, &manifest, None, e.to_string());
        }
        self.point(CrashPoint::DuringPendingWrite)?;
        if let Err(e) = dir.install_pending() {
            return self.abort(h, &dir, &manifest, Some(seq), e.to_string());
        }
        self.point(CrashPoint::AfterPendingWritten)?;

        // 3. read the n records into the tentative file; fsync it.
        let info = match self.copy_out(&dir, &mut h, seq) {
            Ok(info) => info,
            Err(AgentError::Crashed(p)) => return Err(AgentError::Crashed(p)),
            Err(e) => return self.abort(h, &dir, &manifest, Some(seq), e.to_string()),
        };
        if info.count != n {
            let why = format!("kernel returned {} records, the marker is at position {n}", info.count);
            return self.abort(h, &dir, &manifest, Some(seq), why);
        }
        let first_ok = info.first.as_ref().map(|r| manifest.check_boundary(manifest.next_index, r));
        if let Some(Err(why)) = first_ok {
            return self.abort(h, &dir, &manifest, Some(seq), why);
        }

        // 4. rename into place; fsync the directory.
        if let Err(e) = dir.install_tentative(seq) {
            return self.abort(h, &dir, &manifest, Some(seq), e.to_string());
        }
        self.point(CrashPoint::AfterRename)?;
        if let Err(e) = dir.sync() {
            return self.abort(h, &dir, &manifest, Some(seq), e.to_string());
        }
        self.point(CrashPoint::AfterDirFsync)?;

        // 5. the checkpoint, quoted with no kernel lock held, stored with the intent.
        let mut pending = pending;
        match self.take_checkpoint(&manifest, seq) {
            Ok(Some(c)) => {
                pending.checkpoint = Some(c);
                let stored =
                    dir.write_pending_tmp(&pending).and_then(|_| dir.install_pending()).and_then(|_| dir.sync());
                if let Err(e) = stored {
                    return self.abort(h, &dir, &manifest, Some(seq), e.to_string());
                }
                self.point(CrashPoint::AfterCheckpointStored)?;
            }
            Ok(None) => {}
            Err(AgentError::Crashed(p)) => return Err(AgentError::Crashed(p)),
            Err(e) => return self.abort(h, &dir, &manifest, Some(seq), e.to_string()),
        }

        // 6. done. On an error the list head tells whether the kernel truncated anyway.
        if let Err(e) = self.kernel.snapshot_done(&mut h) {
            match self.kernel.live_head() {
                Ok(head) if pending.marker.matches(&head) => {}
                Ok(_) => return self.abort(h, &dir, &manifest, Some(seq), format!("done: {e}")),
                Err(e2) => {
                    self.kernel.snapshot_close(h);
                    self.needs_recovery = true;
                    return Err(AgentError::Kernel(KernelIfError::Failed(format!("done: {e}; live list: {e2}"))));
                }
            }
        }
        self.point(CrashPoint::AfterDone)?;
        self.kernel.snapshot_close(h);

        // 7. commit the manifest entry; remove the intent. From here on failures leave
        // pending.json for recovery: the records exist only in the renamed file now.
        self.needs_recovery = true;
        let entry = manifest.entry_for(&pending, &marker.0, info.sha256).map_err(AgentError::Inconsistent)?;
        let mut next = manifest;
        next.snapshots.push(entry.clone());
        next.next_index += pending.count;
        dir.write_manifest_tmp(&next)?;
        self.point(CrashPoint::DuringManifestWrite)?;
        dir.install_manifest()?;
        dir.sync()?;
        self.point(CrashPoint::AfterManifestCommit)?;
        dir.remove_pending()?;
        dir.sync()?;
        self.live_base = next.next_index;
        self.live_mark = None;
        self.current = Some(Current { dir, manifest: next });
        self.needs_recovery = false;
        self.last_snapshot = Instant::now();
        Ok(entry)
    }

    /// Step 3: streams the records before the marker into `.tmp-<seq>.snap` and fsyncs it.
    fn copy_out(&mut self, dir: &BootDir, h: &mut K::Handle, seq: u64) -> Result<FileInfo, AgentError> {
        let mut t = dir.create_tentative(seq)?;
        let mut first = true;
        loop {
            let chunk = self.kernel.snapshot_read(h)?;
            if chunk.is_empty() {
                break;
            }
            t.write(&chunk)?;
            if first {
                first = false;
                self.point(CrashPoint::DuringTmpWrite)?;
            }
        }
        self.point(CrashPoint::AfterTmpWrite)?;
        t.sync()?;
        self.point(CrashPoint::AfterFsync)?;
        Ok(t.finish()?)
    }

    /// Rolls an attempt back before `done`: close (the marker stays as an ordinary record),
    /// then remove the attempt's files and intent.
    fn abort<T>(
        &mut self,
        h: K::Handle,
        dir: &BootDir,
        manifest: &Manifest,
        seq: Option<u64>,
        cause: String,
    ) -> Result<T, AgentError> {
        self.kernel.snapshot_close(h);
        self.point(CrashPoint::AbortAfterClose)?;
        let cleanup = || -> Result<(), StoreError> {
            if let Some(seq) = seq {
                dir.remove_snapshot(seq)?;
            }
            dir.remove_pending()?;
            dir.remove_leftovers(manifest)?;
            dir.sync()
        };
        if let Err(e) = cleanup() {
            self.needs_recovery = true;
            return Err(e.into());
        }
        Err(AgentError::Aborted(cause))
    }

    /// On start: find (or create) this boot's directory, retire earlier cold boots', settle
    /// a pending snapshot by the recovery rule, remove leftovers, and check that the live
    /// list continues the store.
    pub fn recover(&mut self) -> Result<RecoveryReport, AgentError> {
        self.alive()?;
        let _lock = StoreLock::exclusive(self.store.root())?;
        self.recover_locked()
    }

    /// [`Agent::recover`] with the store lock already held.
    fn recover_locked(&mut self) -> Result<RecoveryReport, AgentError> {
        self.current = None;
        self.live_mark = None;
        self.needs_recovery = true;
        if self.interface == Interface::Staging {
            return self.recover_staging();
        }
        let rc = self.kernel.reset_count()?;
        let head = self.kernel.live_head()?;
        let mut retired = Vec::new();
        let mut created = false;
        let (dir, mut m) = if is_boot_aggregate(&head) {
            // The list starts at this kernel's cold boot: no snapshot of this boot was
            // taken. A directory with snapshots, even with the same identity, is a previous boot.
            let info = BootInfo::from_boot_aggregate(rc, &head);
            let id = BootId::of(&info);
            let mut found = None;
            for b in self.store.list_boots()? {
                if b == id {
                    if let Some(d) = self.store.boot(&b) {
                        if let Ok(m) = d.load_manifest() {
                            if m.boot == info && m.snapshots.is_empty() {
                                found = Some((d, m));
                                continue;
                            }
                        }
                    }
                }
                self.store.retire(&b, self.cfg.retention)?;
                retired.push(b);
                self.point(CrashPoint::RecoveryAfterRetire)?;
            }
            match found {
                Some(x) => x,
                None => {
                    let m = Manifest::new(info, self.kernel.banks()?, self.kernel.measurement_pcr());
                    created = true;
                    (self.store.create_boot(&m)?, m)
                }
            }
        } else {
            // A marker heads the list: the boot whose last end marker (or pending marker) it is.
            let mut found = None;
            for b in self.store.list_boots()? {
                if b.reset_count() != rc {
                    continue;
                }
                let Some(d) = self.store.boot(&b) else { continue };
                let Ok(m) = d.load_manifest() else { continue };
                let by_manifest = m.head_marker().is_some_and(|mk| mk.matches(&head));
                let by_pending = matches!(d.read_pending(), Ok(Some(p)) if p.marker.matches(&head));
                if by_manifest || by_pending {
                    found = Some((d, m));
                    break;
                }
            }
            let Some((d, m)) = found else {
                return Err(AgentError::Inconsistent(format!(
                    "the live list starts with {:?} (sha1 {}), which is no stored boot's end marker \
                     (resetCount {rc}): records before it are not in the store",
                    head.name(Endian::Little).unwrap_or_default(),
                    hex::encode(&head.digest)
                )));
            };
            for b in self.store.list_boots()? {
                if &b != d.id() {
                    self.store.retire(&b, self.cfg.retention)?;
                    retired.push(b);
                    self.point(CrashPoint::RecoveryAfterRetire)?;
                }
            }
            (d, m)
        };

        let pending = match dir.read_pending()? {
            Some(p) => Some(self.settle(&dir, &mut m, p, &head)?),
            None => None,
        };
        let removed = dir.remove_leftovers(&m)?;
        m.check_boundary(m.next_index, &head)
            .map_err(|why| AgentError::Inconsistent(format!("live list head: {why}")))?;
        let report = RecoveryReport { boot: dir.id().clone(), created, retired, pending, removed };
        self.live_base = m.next_index;
        self.live_mark = None;
        self.current = Some(Current { dir, manifest: m });
        self.needs_recovery = false;
        self.last_snapshot = Instant::now();
        Ok(report)
    }

    /// Recovery on a staging kernel. The boot is the one whose boot_aggregate still heads
    /// the kernel's list, else the one of this resetCount whose store the list continues;
    /// then where the list starts is re-derived from the store (docs/STAGING.md), and a
    /// cut left between `A` and `D` is finished.
    fn recover_staging(&mut self) -> Result<RecoveryReport, AgentError> {
        let rc = self.kernel.reset_count()?;
        // The PCR before the lists: the lists then hold at least what it reflects.
        let pcr_now = self.kernel.measurement_pcr_values().ok();
        let (staged, live) = self.read_lists()?;
        let all = staged.clone().concat(live.clone());
        let first = all.records.first().cloned();
        let boots = self.store.list_boots()?;
        let mut found = None;
        for b in boots.iter().filter(|b| b.reset_count() == rc) {
            let Some(d) = self.store.boot(b) else { continue };
            let Ok(m) = d.load_manifest() else { continue };
            let same = match &first {
                // Record 0, or a kexec'd kernel's boot_aggregate after everything before it
                // was stored and deleted (same resetCount and PCR 0-9: the same identity).
                Some(f) if is_boot_aggregate(f) => {
                    m.boot == BootInfo::from_boot_aggregate(rc, f)
                        && (m.snapshots.is_empty() || crate::staging::locate(&d, &m, &all, pcr_now.as_deref()).is_ok())
                }
                _ => !m.snapshots.is_empty() && crate::staging::locate(&d, &m, &all, pcr_now.as_deref()).is_ok(),
            };
            if same {
                found = Some((d, m));
                break;
            }
        }
        let mut created = false;
        let (dir, m) = match found {
            Some(x) => x,
            None => match first.as_ref().filter(|f| is_boot_aggregate(f)) {
                Some(f) => {
                    let m = Manifest::new(
                        BootInfo::from_boot_aggregate(rc, f),
                        self.kernel.banks()?,
                        self.kernel.measurement_pcr(),
                    );
                    created = true;
                    (self.store.create_boot(&m)?, m)
                }
                None => {
                    return Err(AgentError::Inconsistent(format!(
                        "the kernel's list starts with sha1 {}, which no stored boot of resetCount {rc} explains: \
                         records before it are not in the store",
                        first.map(|f| hex::encode(&f.digest)).unwrap_or_else(|| "(empty list)".into())
                    )))
                }
            },
        };
        let mut retired = Vec::new();
        for b in boots {
            if &b != dir.id() {
                self.store.retire(&b, self.cfg.retention)?;
                retired.push(b);
                self.point(CrashPoint::RecoveryAfterRetire)?;
            }
        }
        if dir.read_pending()?.is_some() {
            return Err(AgentError::Inconsistent(
                "pending.json of an RFC snapshot: start the agent with interface = \"snapshot\" to settle it".into(),
            ));
        }
        let removed = dir.remove_leftovers(&m)?;
        let boot = dir.id().clone();
        self.live_mark = None;
        self.current = Some(Current { dir, manifest: m });
        self.settle_staging(staged, live, pcr_now.as_deref())?;
        self.needs_recovery = false;
        self.last_snapshot = Instant::now();
        Ok(RecoveryReport { boot, created, retired, pending: None, removed })
    }

    /// The recovery rule for one `pending.json`.
    fn settle(&mut self, dir: &BootDir, m: &mut Manifest, p: Pending, head: &Record) -> Result<Decision, AgentError> {
        p.validate_against(m).map_err(|why| AgentError::Inconsistent(format!("pending.json: {why}")))?;
        let d = decide(m, &p, head);
        match d {
            Decision::AlreadyCommitted => {}
            Decision::Commit => {
                // The kernel dropped the records: the renamed file is now their only copy.
                let info = dir.scan_snapshot(p.seq, p.first_index)?;
                if info.count != p.count {
                    return Err(AgentError::Inconsistent(format!(
                        "{} holds {} records, pending.json says {}",
                        p.file_name(),
                        info.count,
                        p.count
                    )));
                }
                if let Some(first) = &info.first {
                    m.check_boundary(p.first_index, first).map_err(AgentError::Inconsistent)?;
                }
                let marker = Marker::from_record(head, Endian::Little).ok().flatten().ok_or_else(|| {
                    AgentError::Inconsistent("head matched the pending marker but does not parse".into())
                })?;
                let entry = m.entry_for(&p, &marker, info.sha256).map_err(AgentError::Inconsistent)?;
                let mut next = m.clone();
                next.snapshots.push(entry);
                next.next_index += p.count;
                dir.write_manifest_tmp(&next)?;
                self.point(CrashPoint::RecoveryDuringManifestWrite)?;
                dir.install_manifest()?;
                dir.sync()?;
                *m = next;
                self.point(CrashPoint::RecoveryAfterManifestCommit)?;
            }
            Decision::Drop => {
                dir.remove_snapshot(p.seq)?;
                self.point(CrashPoint::RecoveryAfterFileRemoved)?;
            }
        }
        dir.remove_pending()?;
        self.point(CrashPoint::RecoveryAfterPendingRemoved)?;
        dir.sync()?;
        Ok(d)
    }

    /// The whole log of this boot from global index `from`: snapshots, then the live list.
    pub fn stitched(&mut self, from: u64) -> Result<StitchedReader<LiveTail<K::Live>>, AgentError> {
        self.alive()?;
        let c = self.current.as_ref().ok_or(AgentError::NotRecovered)?;
        let (dir, m) = (c.dir.clone(), c.manifest.clone());
        let live = self.live_tail()?;
        Ok(dir.stitched(&m, live, from))
    }

    /// The kernel's records from `next_index` on, as [`Agent::live_tail`] gives them,
    /// counted and checked record by record; or, when a caller that needs nothing
    /// before record `want` asks again while the list has not been cut (RFC snapshot
    /// interface, no stored records left in the kernel), only the records past the
    /// previous read's last one: the read starts at that record's byte offset (the
    /// kernel walks to it without copying what lies before), and the record found there
    /// must be the one remembered, else the whole list is read.
    pub fn live_read(&mut self, want: Option<u64>) -> Result<LiveRead, AgentError> {
        let next = self.current.as_ref().ok_or(AgentError::NotRecovered)?.manifest.next_index;
        let plain = self.interface == Interface::Snapshot && self.live_base == next;
        let mark = self.live_mark.take().filter(|mk| plain && mk.head == next && want.is_some_and(|w| w > mk.index));
        if let Some(mk) = mark {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut self.kernel.live_list_at(mk.offset)?, &mut buf)
                .map_err(|e| AgentError::Inconsistent(format!("reading the live list: {e}")))?;
            let mut same = false;
            let _ = BinaryReader::new(&buf[..], imasnap_store::snapshot_format()).visit_raw(1, |r| {
                same = r.len == mk.len && r.digest == mk.digest.as_slice();
                true
            });
            if same {
                buf.drain(..mk.len);
                return self.finish_read(next, mk.index + 1, mk.offset + mk.len as u64, buf);
            }
        }
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut self.live_tail()?, &mut buf)
            .map_err(|e| AgentError::Inconsistent(format!("reading the live list: {e}")))?;
        if plain {
            // The tail starts at the list's head: byte 0.
            return self.finish_read(next, next, 0, buf);
        }
        let records = count_live(&buf, next)?.0;
        Ok(LiveRead { first: next, records, offset: 0, bytes: buf })
    }

    /// Counts `bytes` (the live list from record `first`, at byte `offset` of it) and
    /// marks its last record for the next [`Agent::live_read`].
    fn finish_read(&mut self, head: u64, first: u64, offset: u64, bytes: Vec<u8>) -> Result<LiveRead, AgentError> {
        let (records, last) = count_live(&bytes, first)?;
        self.live_mark = last.map(|(at, len, digest)| LiveMark {
            head,
            index: first + records - 1,
            offset: offset + at as u64,
            len,
            digest,
        });
        Ok(LiveRead { first, records, offset, bytes })
    }

    /// The kernel's records from `next_index` on: the staged list (staging), then the
    /// current list. Records the store already holds that the kernel has not deleted yet
    /// (a cut interrupted before its delete) are skipped, so nothing is sent or stitched
    /// twice, and staged records not yet stored are not left out.
    pub fn live_tail(&mut self) -> Result<LiveTail<K::Live>, AgentError> {
        let next = self.current.as_ref().ok_or(AgentError::NotRecovered)?.manifest.next_index;
        let mut skip_records = next.saturating_sub(self.live_base);
        let mut staged = Vec::new();
        if self.interface == Interface::Staging {
            let st = crate::staging::ListCopy::read(self.kernel.staged_list()?, "the staged list")?;
            let k = (skip_records as usize).min(st.len());
            staged = st.slice(k, st.len()).to_vec();
            skip_records -= k as u64;
        }
        let live = self.kernel.live_list()?;
        if skip_records == 0 {
            return Ok(LiveTail { staged: std::io::Cursor::new(staged), inner: live });
        }
        // One read of the live list: skip the stored records in place, then hand on what
        // the reader buffered past them and the rest of the same input.
        let mut rd = BinaryReader::new(live, imasnap_store::snapshot_format());
        let seen = rd
            .visit_raw(skip_records as usize, |_| true)
            .map_err(|e| AgentError::Inconsistent(format!("live list: {e}")))?;
        if seen as u64 != skip_records {
            return Err(AgentError::Inconsistent("the live list lost stored records".into()));
        }
        let (ahead, inner) = rd.into_parts();
        staged.extend_from_slice(&ahead);
        Ok(LiveTail { staged: std::io::Cursor::new(staged), inner })
    }
}

/// Staged records (and live bytes already read past the stored ones), then the rest of
/// the live list (see [`Agent::live_tail`]).
pub struct LiveTail<R> {
    /// Sent first.
    staged: std::io::Cursor<Vec<u8>>,
    inner: R,
}

impl<R: std::io::Read> std::io::Read for LiveTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.staged.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// A record's byte offset in a buffer, its length and its digest.
type LastRecord = (usize, usize, Vec<u8>);

/// Records in `b` (binary SHA1 records from index `first`), each parsed in place, and
/// the last one's byte offset, length and digest.
fn count_live(b: &[u8], first: u64) -> Result<(u64, Option<LastRecord>), AgentError> {
    let mut rd = BinaryReader::starting_at(b, imasnap_store::snapshot_format(), first);
    let (mut at, mut last) = (0usize, None::<(usize, usize)>);
    rd.visit_raw(usize::MAX, |r| {
        last = Some((at, r.len));
        at += r.len;
        true
    })
    .map_err(|e| AgentError::Inconsistent(format!("live list: {e}")))?;
    // The last record's digest, parsed again (one record) rather than copied for each.
    let last = last.and_then(|(at, len)| {
        let mut digest = None;
        let mut r = BinaryReader::new(b.get(at..at + len)?, imasnap_store::snapshot_format());
        r.visit_raw(1, |x| {
            digest = Some(x.digest.to_vec());
            true
        })
        .ok()?;
        digest.map(|d| (at, len, d))
    });
    Ok((rd.next_index() - first, last))
}
