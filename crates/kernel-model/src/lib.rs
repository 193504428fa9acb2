//! imasnap-kernel-model: IMA's measurement list as the kernel keeps it (append, extend,
//! dedup, violations, boot_aggregate), plus the RFC snapshot interface, upstream's staging
//! interface (`A`/`D`/`N`) and kexec, driven
//! in-process. Sans-IO: no files; the TPM is whatever implements [`imasnap_tpm::Tpm`].
//!
//! The model is single-threaded, so "the lock that serialises appends with extends" is the
//! `&mut self` borrow; the time spent inside it is measured as the snapshot pause.

mod list;
mod snapshot;
mod staging;

pub use list::{Config, Entry, Kernel, KernelError, PcrMode};
pub use snapshot::{Fault, SnapshotHandle};
pub use staging::{MeasFd, MeasFile, StagingFault};
