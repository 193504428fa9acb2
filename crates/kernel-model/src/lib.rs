//! imasnap-kernel-model: IMA's measurement list as the kernel keeps it (append, extend,
//! dedup, violations, boot_aggregate), plus the RFC snapshot interface and kexec, driven
//! in-process. Sans-IO: no files; the TPM is whatever implements [`imasnap_tpm::Tpm`].
//!
//! The model is single-threaded, so "the lock that serialises appends with extends" is the
//! `&mut self` borrow; the time spent inside it is measured as the snapshot pause.

mod list;
mod snapshot;

pub use list::{Config, Entry, Kernel, KernelError, PcrMode};
pub use snapshot::{Fault, SnapshotHandle};
