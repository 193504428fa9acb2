//! Helpers shared by the tests, benches and examples of the imasnap crates. Only ever a
//! dev-dependency: it panics freely, as tests do, and is never published.
//!
//! - [`kernel`]: boot the kernel model on a software TPM and measure numbered files;
//! - [`records`]: build, encode and parse IMA records;
//! - [`swtpm`]: a private `swtpm` process per test;
//! - [`keylime`]: the Keylime venv's python (or a skip);
//! - [`crash`]: the crash matrices' settings;
//! - [`checkpoints`]: proves every checkpoint in a manifest against the true log.

pub mod checkpoints;
pub mod crash;
pub mod kernel;
pub mod keylime;
pub mod records;
pub mod swtpm;
