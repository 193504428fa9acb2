//! `<state_dir>/lock`: keeps a reader in another process (`imasnap mount`) from seeing a
//! cut half done. The agent holds it exclusively from the commit of a cut to the kernel's
//! trim or delete, and during recovery; a reader holds it shared while it reads the
//! manifest and the kernel's list, so the two always describe one state.

use crate::error::{io, Result};
use std::fs::{File, OpenOptions};
use std::path::Path;

pub const LOCK: &str = "lock";

/// A held `flock`; dropping it releases the lock.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    held: bool,
}

impl StoreLock {
    /// Waits for the exclusive lock (the agent, around a cut or recovery).
    pub fn exclusive(state_dir: &Path) -> Result<Self> {
        Self::take(state_dir, true)
    }

    /// Waits for a shared lock (a reader of manifest plus live list).
    pub fn shared(state_dir: &Path) -> Result<Self> {
        Self::take(state_dir, false)
    }

    // `File::lock` is flock(2) (Rust 1.89, the workspace's minimum).
    fn take(state_dir: &Path, exclusive: bool) -> Result<Self> {
        let path = state_dir.join(LOCK);
        let file =
            io("open", &path, OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path))?;
        let (what, r) =
            if exclusive { ("lock (exclusive)", file.lock()) } else { ("lock (shared)", file.lock_shared()) };
        match r {
            Ok(()) => Ok(Self { _file: file, held: true }),
            // A kernel built without CONFIG_FILE_LOCKING (ENOSYS): the agent must still
            // cut; only a reader in another process loses its guard (docs/MOUNT.md).
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(Self { _file: file, held: false }),
            Err(e) => io(what, &path, Err(e)),
        }
    }

    /// False on a kernel without flock(2): nothing is locked.
    pub fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_exclusive_waits() {
        let d = tempfile::tempdir().unwrap();
        let a = StoreLock::shared(d.path()).unwrap();
        let _b = StoreLock::shared(d.path()).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(d.path().join(LOCK)).unwrap();
        let busy = f.try_lock();
        assert!(busy.is_err(), "an exclusive lock must wait for the readers");
        drop(a);
        drop(_b);
        let free = f.try_lock();
        assert!(free.is_ok());
    }
}
