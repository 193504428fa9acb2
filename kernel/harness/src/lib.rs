//! imasnap-kernel-harness: the RFC patch series (kernel/patches) in a real kernel.
//!
//! - [`scenario`]: a scripted scenario (measure, snapshot, abort, busy, kexec) that
//!   becomes the guest's shell steps and drives the kernel model the same way;
//! - [`guest`]: boots the patched kernel in QEMU (TCG) with swtpm as its TPM, the
//!   host-built imasnap agent in the initramfs, the store on an ext4 disk the host reads
//!   back afterwards;
//! - [`model`]: the same scenario on the in-process kernel model;
//! - [`structure`]: what both must agree on, read from their evidence bundles.

pub mod guest;
pub mod model;
pub mod scenario;
pub mod structure;
