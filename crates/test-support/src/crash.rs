//! The settings every crash matrix reads from the environment.

use std::path::PathBuf;

/// `IMASNAP_CRASH_RUNS` (default 100), `IMASNAP_CRASH_SEED` (default `default_seed`) and
/// `IMASNAP_CRASH_DIR`, where the runs' stores live (default: /dev/shm if present, so the
/// fsyncs cost nothing).
pub struct CrashEnv {
    pub runs: u64,
    pub seed: u64,
    pub dir: PathBuf,
}

impl CrashEnv {
    pub fn read(default_seed: u64) -> Self {
        let num = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
        let dir = std::env::var_os("IMASNAP_CRASH_DIR").map(PathBuf::from).unwrap_or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        });
        Self {
            runs: num("IMASNAP_CRASH_RUNS").unwrap_or(100),
            seed: num("IMASNAP_CRASH_SEED").unwrap_or(default_seed),
            dir,
        }
    }
}
