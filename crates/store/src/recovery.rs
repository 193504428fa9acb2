//! The recovery rule of docs/SNAPSHOTS.md as a pure decision.

use crate::manifest::{Manifest, Pending};
use imasnap_log::Record;

/// What to do with a `pending.json` found on start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The kernel truncated (the live list begins with the pending marker): finish step 6.
    Commit,
    /// The manifest already holds this snapshot (crash after the manifest rename): only
    /// `pending.json` remains to be removed.
    AlreadyCommitted,
    /// The attempt was aborted: drop the tentative or renamed file and `pending.json`. The
    /// marker stays in the list and lands in the next snapshot.
    Drop,
}

/// Decides from the committed manifest, the intent, and the live list's head record
/// (parsed, SHA1 form).
pub fn decide(manifest: &Manifest, pending: &Pending, head: &Record) -> Decision {
    if manifest.snapshots.iter().any(|e| e.seq == pending.seq) {
        return Decision::AlreadyCommitted;
    }
    if pending.marker.matches(head) {
        Decision::Commit
    } else {
        Decision::Drop
    }
}
