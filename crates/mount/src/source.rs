//! Where the view's records come from: committed snapshot files plus the kernel's records
//! after them, read as one consistent state.
//!
//! Two sources exist: the agent service's host (in `imasnap-agent-server`, read under the
//! host mutex) and [`StoreSource`] here, for `imasnap mount` beside an agent in another
//! process (read under the store's shared lock).

use imasnap_log::{BinaryReader, HashAlgo};
use imasnap_store::{snapshot_format, BootDir, Manifest, Store, StoreLock};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A committed snapshot file, as the manifest names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    pub seq: u64,
    pub path: PathBuf,
    pub sha256: String,
    pub first_index: u64,
    pub count: u64,
}

/// One consistent state of the whole log.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Identity of the boot (a boot directory's name); a new one starts a new view.
    pub boot: String,
    /// TPM banks (the per-bank files).
    pub banks: Vec<HashAlgo>,
    pub segments: Vec<SegmentRef>,
    /// Index of the first record of `live`: the end of the last segment.
    pub live_first: u64,
    /// The kernel's records from `live_first` on, binary SHA1 form.
    pub live: Vec<u8>,
}

impl State {
    /// The state of boot `dir` as `m` describes it, with the kernel's records after it.
    pub fn from_manifest(dir: &BootDir, m: &Manifest, live: Vec<u8>) -> Self {
        let segments = m
            .snapshots
            .iter()
            .map(|s| SegmentRef {
                seq: s.seq,
                path: dir.path().join(&s.file),
                sha256: s.sha256.clone(),
                first_index: s.first_index,
                count: s.count,
            })
            .collect();
        Self { boot: dir.id().to_string(), banks: m.banks.clone(), segments, live_first: m.next_index, live }
    }
}

/// A source of the view.
pub trait Source: Send + 'static {
    /// The current state (called when a read goes past the known end).
    fn state(&mut self) -> Result<State, String>;
    /// The kernel's `policy`, where the kernel has one (read at each open).
    fn policy(&mut self) -> Option<Result<Vec<u8>, String>> {
        None
    }
    /// Whether a `policy` file is shown.
    fn has_policy(&self) -> bool {
        false
    }
    /// What this source is, for `--json` and logs.
    fn describe(&self) -> String;
}

/// How the kernel's list is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// RFC `snapshot` file: the list is trimmed; its head is the last end marker.
    Snapshot,
    /// Upstream staging: staged records (if any) come before the current list.
    Staging,
    /// Never trimmed: the kernel's list is the whole log.
    Legacy,
}

impl Interface {
    /// `auto`: the RFC file, else staging, else legacy (as `imasnap agent snapshot`).
    pub fn detect(ima_dir: &Path) -> Self {
        if ima_dir.join("snapshot").exists() {
            Self::Snapshot
        } else if ima_dir.join(STAGED).exists() {
            Self::Staging
        } else {
            Self::Legacy
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Staging => "staging",
            Self::Legacy => "legacy",
        }
    }
}

const LIST: &str = "binary_runtime_measurements";
const EBUSY: i32 = 16;
const STAGED: &str = "binary_runtime_measurements_staged";

/// The store of an agent that runs in another process, plus the kernel's securityfs.
pub struct StoreSource {
    state_dir: PathBuf,
    ima_dir: PathBuf,
    interface: Interface,
    /// Manifests as last parsed, by path, with the identity of the file they came from.
    /// A manifest only changes by an atomic rename (a new inode), and a refresh runs at
    /// every stat and open: parsing a long boot's manifest each time would dominate.
    manifests: std::collections::HashMap<PathBuf, (FileKey, std::sync::Arc<Manifest>)>,
}

/// Identity and version of a file: equal keys, same bytes (it is replaced, never edited).
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileKey {
    fn of(p: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

impl StoreSource {
    pub fn new(state_dir: PathBuf, ima_dir: PathBuf, interface: Interface) -> Self {
        Self { state_dir, ima_dir, interface, manifests: Default::default() }
    }

    fn manifest(&mut self, dir: &BootDir) -> Result<std::sync::Arc<Manifest>, String> {
        let path = dir.manifest_path();
        let key = FileKey::of(&path);
        if let (Some(k), Some((ck, m))) = (key, self.manifests.get(&path)) {
            if k == *ck {
                return Ok(m.clone());
            }
        }
        let m = std::sync::Arc::new(dir.load_manifest().map_err(|e| e.to_string())?);
        if let Some(k) = key {
            self.manifests.insert(path, (k, m.clone()));
        }
        Ok(m)
    }

    /// Reads a whole securityfs file. Staging kernels allow many readers or one writer
    /// across the measurement files: a writer elsewhere (not our agent, which cuts under
    /// the store lock) gives EBUSY for a moment, so that is retried for up to 2 s.
    fn read_kernel(&self, name: &str) -> Result<Vec<u8>, String> {
        let p = self.ima_dir.join(name);
        let mut tries = 0;
        loop {
            let mut b = Vec::new();
            match std::fs::File::open(&p).and_then(|mut f| f.read_to_end(&mut b)) {
                Ok(_) => return Ok(b),
                Err(e) if e.raw_os_error() == Some(EBUSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
    }

    /// Staged records (staging), then the current list.
    fn kernel_list(&self) -> Result<Vec<u8>, String> {
        let mut b = Vec::new();
        if self.interface == Interface::Staging && self.ima_dir.join(STAGED).exists() {
            b = self.read_kernel(STAGED)?;
        }
        b.extend(self.read_kernel(LIST)?);
        Ok(b)
    }

    /// The TPM banks, from the per-bank files the kernel shows.
    fn kernel_banks(&self) -> Vec<HashAlgo> {
        HashAlgo::ALL.into_iter().filter(|a| self.ima_dir.join(format!("{LIST}_{}", a.name())).exists()).collect()
    }
}

impl Source for StoreSource {
    fn state(&mut self) -> Result<State, String> {
        let legacy = || State { boot: "kernel".into(), ..Default::default() };
        if self.interface == Interface::Legacy {
            return Ok(State { live: self.kernel_list()?, banks: self.kernel_banks(), ..legacy() });
        }
        // Shared with other readers, exclusive against a cut or a recovery in progress.
        let _lock = StoreLock::shared(&self.state_dir).map_err(|e| e.to_string())?;
        let live = self.kernel_list()?;
        let head = match BinaryReader::new(&live[..], snapshot_format()).next() {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => return Err(format!("{}/{LIST}: {e}", self.ima_dir.display())),
            None => None,
        };
        let store = store_read_only(&self.state_dir)?;
        let mut tried = Vec::new();
        for id in store.list_boots().map_err(|e| e.to_string())? {
            let Some(dir) = store.boot(&id) else { continue };
            let m = self.manifest(&dir)?;
            let fits = match &head {
                Some(h) => m.check_boundary(m.next_index, h),
                // Only a staging A/D cut leaves the list empty.
                None => Err("the kernel's list is empty".into()),
            };
            match fits {
                Ok(()) => return Ok(State::from_manifest(&dir, &m, live)),
                Err(why) => tried.push(format!("{id}: {why}")),
            }
        }
        // No cut on this boot yet: the kernel's list is still whole.
        if let Some(h) = &head {
            if h.name(imasnap_log::Endian::Little).as_deref() == Some("boot_aggregate") {
                return Ok(State { live, banks: self.kernel_banks(), ..legacy() });
            }
        }
        Err(format!(
            "no boot directory in {} continues the kernel's list ({}); an interrupted cut is settled \
             when the agent next runs (`imasnap agent snapshot` or `agent run`)",
            store.boots_dir().display(),
            if tried.is_empty() { "there is none".to_string() } else { tried.join("; ") }
        ))
    }

    fn has_policy(&self) -> bool {
        self.ima_dir.join("policy").exists()
    }

    fn policy(&mut self) -> Option<Result<Vec<u8>, String>> {
        self.has_policy().then(|| self.read_kernel("policy"))
    }

    fn describe(&self) -> String {
        format!(
            "store {} + securityfs {} ({})",
            self.state_dir.display(),
            self.ima_dir.display(),
            self.interface.as_str()
        )
    }
}

/// The store without [`Store::open`]'s clean-up: a reader never changes it.
fn store_read_only(root: &Path) -> Result<Store, String> {
    if !root.join("boots").is_dir() {
        return Err(format!("{}: not an imasnap state directory (no boots/)", root.display()));
    }
    Ok(Store::at(root))
}
