//! imasnap-store: the on-disk snapshot store (docs/SNAPSHOTS.md).
//!
//! This crate is the I/O edge. Every step of the commit protocol is its own function on
//! [`BootDir`], so callers (the agent, and the crash tests) can stop between any two steps.
//! The protocol's order and the recovery rule live with the caller and in [`recovery`].

pub mod error;
pub mod fsio;
pub mod layout;
pub mod lock;
/// `manifest.json` and `pending.json` live in `imasnap-wire` (one home for formats).
pub use imasnap_wire::manifest;
pub mod recovery;
pub mod stitch;
pub mod tentative;

pub use error::{Result, StoreError};
pub use layout::{BootDir, BootId, Retention, Store, MANIFEST, PENDING};
pub use lock::StoreLock;
pub use manifest::{snap_file_name, BootInfo, Manifest, MarkerRef, Pending, SnapshotEntry, MANIFEST_FORMAT};
pub use recovery::{decide, Decision};
pub use stitch::{Segment, StitchError, StitchReason, StitchedReader};
pub use tentative::{scan_file, snapshot_format, FileInfo, Tentative};
