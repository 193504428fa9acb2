//! Keylime from PyPI, in the venv `scripts/keylime-venv.sh` builds (test.sh exports its
//! python as IMASNAP_KEYLIME_PYTHON). Tests that run Keylime's own code fail without it,
//! unless IMASNAP_SKIP_KEYLIME=1: the same rule as swtpm's.

use std::path::PathBuf;

pub const ENV_PYTHON: &str = "IMASNAP_KEYLIME_PYTHON";
pub const ENV_SKIP: &str = "IMASNAP_SKIP_KEYLIME";

/// The venv's python, or `None` when the test is to be skipped (IMASNAP_SKIP_KEYLIME=1).
pub fn python() -> Option<PathBuf> {
    if std::env::var(ENV_SKIP).is_ok_and(|v| v == "1") {
        eprintln!("Keylime test skipped: {ENV_SKIP}=1");
        return None;
    }
    let Some(py) = std::env::var_os(ENV_PYTHON) else {
        panic!(
            "this test needs Keylime from PyPI: run it through scripts/test.sh (which builds the venv and sets \
             {ENV_PYTHON}), or set {ENV_PYTHON}=$(scripts/keylime-venv.sh), or set {ENV_SKIP}=1 to skip it"
        );
    };
    let py = PathBuf::from(py);
    assert!(py.is_file(), "{ENV_PYTHON}={} is not a file: rebuild it with scripts/keylime-venv.sh", py.display());
    Some(py)
}
