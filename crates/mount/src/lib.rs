//! imasnap-mount: a read-only FUSE view of the whole boot's IMA log (docs/MOUNT.md).
//!
//! The directory looks like `/sys/kernel/security/ima`, but its files hold every record
//! of the boot: the committed snapshot files, then the kernel's records after them,
//! byte-identical to what the kernel would show had it never trimmed.
//!
//! [`view`] is the pure core (rendering, offsets, marks); [`source`] finds the records
//! (the agent's host, or a store plus securityfs); [`fs`] holds the state and the FUSE
//! adapter. The mount is made by `fuser` without libfuse: as root it calls mount(2).

pub mod fs;
pub mod source;
pub mod view;
mod window;

pub use fs::{Entry, Perms, View, ViewFs};
pub use source::{Interface, SegmentRef, Source, State, StoreSource};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How the view is mounted.
#[derive(Clone, Copy, Debug)]
pub struct MountOptions {
    /// Let users other than the mounting one in (FUSE `allow_other`); the mode still applies.
    pub allow_other: bool,
    /// Mode of the files (securityfs: 0440).
    pub mode: u16,
    /// Let the kernel read log files straight from the render caches where it can
    /// (FUSE passthrough, 6.9+); off: every read goes through the daemon and the page cache.
    pub passthrough: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self { allow_other: false, mode: 0o440, passthrough: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{}: {reason}", path.display())]
    Mountpoint { path: PathBuf, reason: String },
    #[error("reading the log: {0}")]
    Source(String),
    #[error("mounting at {}: {source} (needs /dev/fuse and root, or fusermount3 for a user)", path.display())]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("unmounting {}: {source}", path.display())]
    Unmount { path: PathBuf, source: std::io::Error },
}

/// A mounted view; [`Mounted::unmount`] (or dropping it) unmounts.
pub struct Mounted {
    session: fuser::BackgroundSession,
    pub mountpoint: PathBuf,
    pub files: Vec<String>,
    pub source: String,
}

impl Mounted {
    /// Unmounts. A reader that still holds a file open would make umount fail (EBUSY):
    /// the mount is then detached (MNT_DETACH), so it leaves the namespace at once and
    /// the reader's descriptor ends with the process.
    pub fn unmount(self) -> Result<(), MountError> {
        use nix::mount::{umount2, MntFlags};
        let path = self.mountpoint.clone();
        match self.session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
                umount2(&path, MntFlags::MNT_DETACH)
                    .map_err(|e| MountError::Unmount { path: path.clone(), source: e.into() })?;
                tracing::info!(mountpoint = %path.display(), "readers still open: unmounted lazily");
                Ok(())
            }
            Err(source) => Err(MountError::Unmount { path, source }),
        }
    }
}

/// Checks that `mp` is a directory with nothing mounted on it. A FUSE mount whose process
/// died answers ENOTCONN: say how to clear it.
/// SIGTERM, SIGINT and SIGHUP, blocked in the calling thread (and so in every thread it
/// starts afterwards) until [`Termination::wait`] takes one. Call it before [`mount`]:
/// a plain signal wait needs no async runtime, so the standalone view also runs on
/// minimal kernels (no AF_UNIX or eventfd, as in the QEMU guest).
pub struct Termination(nix::sys::signal::SigSet);

impl Termination {
    pub fn block() -> Result<Self, std::io::Error> {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        Ok(Self(set))
    }

    /// Waits for one of the signals; returns its name.
    pub fn wait(&self) -> Result<&'static str, std::io::Error> {
        Ok(self.0.wait()?.as_str())
    }
}

pub fn check_mountpoint(mp: &Path) -> Result<PathBuf, MountError> {
    let bad = |reason: String| MountError::Mountpoint { path: mp.to_path_buf(), reason };
    match std::fs::metadata(mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into())),
        Err(e) if e.raw_os_error() == Some(107) => {
            return Err(bad(format!("a stale FUSE mount (its process is gone): run `umount {}` first", mp.display())))
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    let abs = mp.canonicalize().map_err(|e| bad(e.to_string()))?;
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let want = abs.to_string_lossy().replace(' ', "\\040");
        if let Some(l) = mounts.lines().find(|l| l.split(' ').nth(1) == Some(want.as_str())) {
            let fuse = l.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse"));
            return Err(bad(if fuse {
                format!(
                    "a FUSE mount is already here (a stale one if its process is gone): run `umount {}` first",
                    abs.display()
                )
            } else {
                "something is already mounted here; unmount it first".into()
            }));
        }
    }
    Ok(abs)
}

/// How often a view with passthrough files open looks for new records: their readers
/// read the render cache directly, so a reader at the end sees records measured since
/// within this time (longer only when a refresh itself is slow, see `spawn_refresher`).
pub const REFRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// Keeps passthrough files complete until the view is dropped (the session holds the
/// only strong reference). A refresh reads the kernel's part whole, which on a legacy
/// kernel is the whole list: the pause is at least ten times the last refresh, so this
/// never takes more than a tenth of a core.
fn spawn_refresher(view: std::sync::Weak<Mutex<View>>) {
    let _ = std::thread::Builder::new().name("imasnap-view-refresh".into()).spawn(move || {
        let mut pause = REFRESH;
        loop {
            std::thread::sleep(pause);
            let Some(v) = view.upgrade() else { return };
            let Ok(mut v) = v.lock() else { return };
            let t0 = std::time::Instant::now();
            if let Err(e) = v.refresh_backing() {
                tracing::warn!(error = %e, "refresh of passthrough files failed");
            }
            pause = REFRESH.max(t0.elapsed() * 10);
        }
    });
}

/// Mounts a view of `source` at `mountpoint`, served by a background thread.
pub fn mount(source: Box<dyn Source>, mountpoint: &Path, opts: MountOptions) -> Result<Mounted, MountError> {
    let abs = check_mountpoint(mountpoint)?;
    // Files belong to the mounting user, as securityfs's belong to root.
    let me = std::fs::metadata("/proc/self").map(|m| (m.uid(), m.gid())).unwrap_or((0, 0));
    let perms = Perms { mode: opts.mode & 0o777, uid: me.0, gid: me.1 };
    let view = View::new(source, perms).map_err(|e| MountError::Source(e.to_string()))?;
    let files = view.entries().iter().map(|e| e.name()).collect();
    let source = view.describe();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("imasnap".into()),
        fuser::MountOption::Subtype("imasnap".into()),
        // The kernel checks the mode against the caller, as on securityfs.
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoExec,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    if opts.allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    let mut view = view;
    view.passthrough_allowed = opts.passthrough;
    let view = Arc::new(Mutex::new(view));
    let fs = ViewFs::new(view.clone());
    let session =
        fuser::spawn_mount(fs, &abs, &cfg).map_err(|source| MountError::Mount { path: abs.clone(), source })?;
    spawn_refresher(Arc::downgrade(&view));
    Ok(Mounted { session, mountpoint: abs, files, source })
}
