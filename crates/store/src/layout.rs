//! The directory tree: `<state_dir>/boots/<boot-id>/…` and `<state_dir>/archive/<boot-id>/`.
//! Each method is one I/O step of the protocol in docs/SNAPSHOTS.md.

use crate::error::{io, Result, StoreError};
use crate::fsio::{fsync_dir, read_small, remove_if_exists, rename, write_synced};
use crate::manifest::{snap_file_name, tmp_snap_file_name, BootInfo, Manifest, Pending};
use crate::tentative::{scan_file, FileInfo, Tentative};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
pub const PENDING: &str = "pending.json";
const MANIFEST_TMP: &str = ".tmp-manifest.json";
const PENDING_TMP: &str = ".tmp-pending.json";
/// Manifests and pending files are small; a huge one is corruption, not data.
const SMALL_LIMIT: u64 = 64 << 20;

/// `r<resetCount>-<first 16 hex of the boot_aggregate SHA1 template digest>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootId(String);

impl BootId {
    pub fn of(boot: &BootInfo) -> Self {
        let h = &boot.boot_aggregate_sha1;
        Self(format!("r{}-{}", boot.reset_count, &h[..16.min(h.len())]))
    }

    pub fn parse(s: &str) -> Result<Self> {
        let bad = || StoreError::BootId(s.to_string());
        let rest = s.strip_prefix('r').ok_or_else(bad)?;
        let (rc, h) = rest.split_once('-').ok_or_else(bad)?;
        let rc_ok = !rc.is_empty() && rc.bytes().all(|b| b.is_ascii_digit()) && rc.parse::<u64>().is_ok();
        let h_ok = h.len() == 16 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !rc_ok || !h_ok {
            return Err(bad());
        }
        Ok(Self(s.to_string()))
    }

    pub fn reset_count(&self) -> u64 {
        self.0[1..].split_once('-').and_then(|(rc, _)| rc.parse().ok()).unwrap_or(0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happens to an earlier cold boot's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Move to `archive/<boot-id>` (suffixed `.1`, `.2`, … if that name is taken).
    #[default]
    Archive,
    Delete,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) `<state_dir>` with `boots/` and `archive/`, and removes half-made or
    /// half-deleted boot directories left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let s = Self { root: root.into() };
        for d in [s.boots_dir(), s.archive_dir()] {
            io("create directory", &d, std::fs::create_dir_all(&d))?;
        }
        let boots = s.boots_dir();
        let mut removed = false;
        for e in io("list", &boots, std::fs::read_dir(&boots))? {
            let e = io("list", &boots, e)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.starts_with(".del-") {
                io("remove", &e.path(), std::fs::remove_dir_all(e.path()))?;
                removed = true;
            }
        }
        if removed {
            fsync_dir(&boots)?;
        }
        Ok(s)
    }

    /// The store at `root` as it is: nothing created or cleaned up (a reader in another
    /// process, such as `imasnap mount`, never changes the store).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn boots_dir(&self) -> PathBuf {
        self.root.join("boots")
    }
    pub fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }

    /// Boot directories present, sorted by name.
    pub fn list_boots(&self) -> Result<Vec<BootId>> {
        let dir = self.boots_dir();
        let mut v = Vec::new();
        for e in io("list", &dir, std::fs::read_dir(&dir))? {
            let e = io("list", &dir, e)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(id) = BootId::parse(&name) {
                v.push(id);
            }
        }
        v.sort();
        Ok(v)
    }

    /// Names under `archive/`, sorted.
    pub fn list_archive(&self) -> Result<Vec<String>> {
        let dir = self.archive_dir();
        let mut v = Vec::new();
        for e in io("list", &dir, std::fs::read_dir(&dir))? {
            v.push(io("list", &dir, e)?.file_name().to_string_lossy().into_owned());
        }
        v.sort();
        Ok(v)
    }

    /// The directory of boot `id`, if it exists.
    pub fn boot(&self, id: &BootId) -> Option<BootDir> {
        let path = self.boots_dir().join(id.as_str());
        path.is_dir().then(|| BootDir { id: id.clone(), path })
    }

    /// Creates a boot directory with an empty manifest, atomically: it is built under a
    /// temporary name and renamed, so a crash never leaves a directory without a manifest.
    pub fn create_boot(&self, manifest: &Manifest) -> Result<BootDir> {
        manifest.validate().map_err(|reason| StoreError::Manifest { path: MANIFEST.into(), reason })?;
        let id = BootId::of(&manifest.boot);
        let boots = self.boots_dir();
        let path = boots.join(id.as_str());
        if path.exists() {
            return Err(StoreError::Exists(path));
        }
        let tmp = boots.join(format!(".tmp-{id}"));
        if tmp.exists() {
            io("remove", &tmp, std::fs::remove_dir_all(&tmp))?;
        }
        io("create directory", &tmp, std::fs::create_dir(&tmp))?;
        let file = tmp.join(MANIFEST);
        write_synced(&file, &to_json(manifest, &file)?)?;
        fsync_dir(&tmp)?;
        rename(&tmp, &path)?;
        fsync_dir(&boots)?;
        Ok(BootDir { id, path })
    }

    /// Retires an earlier boot's directory. Returns the archive path, if archived.
    pub fn retire(&self, id: &BootId, retention: Retention) -> Result<Option<PathBuf>> {
        let boots = self.boots_dir();
        let src = boots.join(id.as_str());
        match retention {
            Retention::Archive => {
                let arch = self.archive_dir();
                let mut dst = arch.join(id.as_str());
                let mut n = 0;
                while dst.exists() {
                    n += 1;
                    dst = arch.join(format!("{id}.{n}"));
                }
                rename(&src, &dst)?;
                fsync_dir(&arch)?;
                fsync_dir(&boots)?;
                Ok(Some(dst))
            }
            Retention::Delete => {
                // Rename first: a crash mid-delete must not leave a plausible boot directory.
                let del = boots.join(format!(".del-{id}"));
                rename(&src, &del)?;
                fsync_dir(&boots)?;
                io("remove", &del, std::fs::remove_dir_all(&del))?;
                fsync_dir(&boots)?;
                Ok(None)
            }
        }
    }
}

/// Serialises `v` for the file at `path`; an error names that file.
fn to_json<T: Serialize>(v: &T, path: &Path) -> Result<Vec<u8>> {
    let mut b = io("serialise", path, serde_json::to_vec_pretty(v).map_err(std::io::Error::other))?;
    b.push(b'\n');
    Ok(b)
}

/// One boot's directory.
#[derive(Clone, Debug)]
pub struct BootDir {
    id: BootId,
    path: PathBuf,
}

impl BootDir {
    /// A boot directory at an arbitrary path (e.g. inside `archive/`).
    pub fn at(id: BootId, path: PathBuf) -> Self {
        Self { id, path }
    }

    pub fn id(&self) -> &BootId {
        &self.id
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn manifest_path(&self) -> PathBuf {
        self.path.join(MANIFEST)
    }
    pub fn pending_path(&self) -> PathBuf {
        self.path.join(PENDING)
    }
    pub fn snap_path(&self, seq: u64) -> PathBuf {
        self.path.join(snap_file_name(seq))
    }
    pub fn tmp_snap_path(&self, seq: u64) -> PathBuf {
        self.path.join(tmp_snap_file_name(seq))
    }

    /// fsync the directory.
    pub fn sync(&self) -> Result<()> {
        fsync_dir(&self.path)
    }

    /// Reads and validates `manifest.json`; it must belong to this directory's boot.
    pub fn load_manifest(&self) -> Result<Manifest> {
        let path = self.manifest_path();
        let bad = |reason: String| StoreError::Manifest { path: path.clone(), reason };
        let bytes = read_small(&path, SMALL_LIMIT)?.ok_or_else(|| bad("missing".into()))?;
        let m = Manifest::from_json(&bytes).map_err(|e| bad(e.detail))?;
        m.validate().map_err(bad)?;
        if BootId::of(&m.boot) != self.id {
            return Err(bad(format!("belongs to boot {}, not {}", BootId::of(&m.boot), self.id)));
        }
        Ok(m)
    }

    /// Manifest commit, step a: write and fsync `.tmp-manifest.json`.
    pub fn write_manifest_tmp(&self, m: &Manifest) -> Result<()> {
        m.validate().map_err(|reason| StoreError::Manifest { path: self.manifest_path(), reason })?;
        let file = self.path.join(MANIFEST_TMP);
        write_synced(&file, &to_json(m, &file)?)
    }

    /// Manifest commit, step b: rename the tmp file over `manifest.json`.
    pub fn install_manifest(&self) -> Result<()> {
        rename(&self.path.join(MANIFEST_TMP), &self.manifest_path())
    }

    /// Whole atomic manifest commit: tmp, fsync, rename, fsync directory.
    pub fn commit_manifest(&self, m: &Manifest) -> Result<()> {
        self.write_manifest_tmp(m)?;
        self.install_manifest()?;
        self.sync()
    }

    /// `pending.json`, if present. A present but unreadable one is an error: it is only
    /// ever installed by rename, so it cannot be torn.
    pub fn read_pending(&self) -> Result<Option<Pending>> {
        let path = self.pending_path();
        let Some(bytes) = read_small(&path, SMALL_LIMIT)? else { return Ok(None) };
        Pending::from_json(&bytes).map(Some).map_err(|e| StoreError::Pending { path, reason: e.detail })
    }

    /// Pending write, step a: write and fsync `.tmp-pending.json`.
    pub fn write_pending_tmp(&self, p: &Pending) -> Result<()> {
        let file = self.path.join(PENDING_TMP);
        write_synced(&file, &to_json(p, &file)?)
    }

    /// Pending write, step b: rename into place and fsync the directory.
    pub fn install_pending(&self) -> Result<()> {
        rename(&self.path.join(PENDING_TMP), &self.pending_path())?;
        self.sync()
    }

    /// Removes `pending.json` (the caller fsyncs the directory).
    pub fn remove_pending(&self) -> Result<bool> {
        remove_if_exists(&self.pending_path())
    }

    /// Starts `.tmp-<seq>.snap`.
    pub fn create_tentative(&self, seq: u64) -> Result<Tentative> {
        Tentative::create(self.tmp_snap_path(seq))
    }

    /// Renames `.tmp-<seq>.snap` to `<seq>.snap` (the caller fsyncs the directory).
    pub fn install_tentative(&self, seq: u64) -> Result<()> {
        rename(&self.tmp_snap_path(seq), &self.snap_path(seq))
    }

    /// Removes the tentative and the renamed file of `seq`, whichever exist.
    pub fn remove_snapshot(&self, seq: u64) -> Result<bool> {
        let a = remove_if_exists(&self.tmp_snap_path(seq))?;
        let b = remove_if_exists(&self.snap_path(seq))?;
        Ok(a || b)
    }

    /// Decodes `<seq>.snap` in full: record count, sha256, first record.
    pub fn scan_snapshot(&self, seq: u64, first_index: u64) -> Result<FileInfo> {
        scan_file(&self.snap_path(seq), first_index)
    }

    /// Files that must not exist in a quiescent directory: pending and tmp files, and
    /// snapshot files the manifest does not name.
    pub fn leftovers(&self, m: &Manifest) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in io("list", &self.path, std::fs::read_dir(&self.path))? {
            let name = io("list", &self.path, e)?.file_name().to_string_lossy().into_owned();
            let named = m.snapshots.iter().any(|s| s.file == name);
            if name == PENDING || name.starts_with(".tmp-") || (name.ends_with(".snap") && !named) {
                v.push(name);
            }
        }
        v.sort();
        Ok(v)
    }

    /// Removes tmp files and unnamed snapshot files. Refused while `pending.json` exists:
    /// recovery must decide about the pending file first. Returns the names removed.
    pub fn remove_leftovers(&self, m: &Manifest) -> Result<Vec<String>> {
        if self.pending_path().exists() {
            return Err(StoreError::Pending {
                path: self.pending_path(),
                reason: "resolve the pending snapshot before removing leftovers".into(),
            });
        }
        let v: Vec<String> = self.leftovers(m)?.into_iter().filter(|n| n != PENDING).collect();
        for n in &v {
            remove_if_exists(&self.path.join(n))?;
        }
        if !v.is_empty() {
            self.sync()?;
        }
        Ok(v)
    }
}
