//! imasnap-agent: agent logic as a library (docs/SNAPSHOTS.md).
//!
//! - [`SnapshotKernel`]: the kernel interface the agent drives (RFC `snapshot` file, live
//!   list, TPM resetCount); implemented here for the in-process kernel model and for a real kernel's securityfs
//!   ([`SecurityFs`]).
//! - [`Agent`]: the commit protocol step by step ([`Agent::snapshot_once`]), recovery and
//!   cold-boot retention ([`Agent::recover`]), the stitched log, evidence bundles.
//! - [`SnapshotPolicy`] / [`AgentConfig`]: when to snapshot, from TOML.

pub mod agent;
pub mod bundle;
pub mod checkpoint;
pub mod kernel;
#[cfg(feature = "kernel-model")]
pub mod model;
pub mod policy;
pub mod securityfs;
pub mod staging;

pub use agent::{Agent, AgentError, CrashPoint, RecoveryReport};
pub use bundle::{
    attest, quote_json, write_bundle_from, AkKey, BundleIndex, BundleInfo, Evidence, QuoteFile, BUNDLE_FORMAT,
};
pub use kernel::{Interface, KernelIfError, LiveStats, SnapshotKernel};
pub use policy::{AgentConfig, Checkpoints, InterfaceChoice, SnapshotPolicy, StagingFlavour, Trigger};
pub use securityfs::{SecurityFs, DEFAULT_IMA_DIR};
