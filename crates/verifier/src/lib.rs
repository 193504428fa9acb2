//! imasnap-verifier: the pure verification engine for snapshotted IMA logs.
//!
//! Sans-IO: [`verify`] takes an [`Evidence`] bundle in memory (snapshot files with the
//! manifest's claims, the live list, the quote) and the verifier's saved [`State`], and
//! returns a [`Verdict`], a [`Report`] of what was replayed or skipped, and the new state.
//!
//! Three modes ([`Mode`]):
//! - **full history**: replay from record 0 through every snapshot and the live list;
//! - **latest segment**: start from the marker heading the live list
//!   (`history_verified: false`);
//! - **incremental**: continue from the saved checkpoint; cost depends on new records only.
//!
//! Nothing the host says is trusted: indices, manifests and marker contents are claims,
//! checked against the replay and the quote, and every mismatch has its own
//! [`Failure`] variant. Nothing panics on any input, and memory is bounded by one batch.

pub mod bundle;
pub mod dir;
mod engine;
pub mod evidence;
mod names;
pub mod quote;
pub mod reason;
pub mod state;

pub use engine::{
    verify, verify_segmented, CheckpointUse, Mode, Options, Outcome, RangeRef, Report, Restart, Verdict, VerdictKind,
};
pub use evidence::{BootClaim, EndMarkerClaim, Evidence, Input, SnapshotClaim, SnapshotEvidence};
pub use quote::{AttestedQuote, QuoteEvidence, TpmQuote, TrustedPcrs};
pub use reason::{Failure, FailureKind, Segment};
pub use state::{BootIdentity, State};
