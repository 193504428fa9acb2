//! imasnap-agent-server: the agent as a network service (`imasnap agent run`). See docs/SERVICES.md.
//!
//! - [`service`]: the HTTPS API (mutual TLS) serving evidence, snapshots, health and
//!   Prometheus metrics, plus the policy/interval ticker.
//! - [`host`]: the agent over a kernel back end ([`host::HostKernel`]: the kernel model
//!   with a synthetic workload, or a real kernel's securityfs with the RFC `snapshot`
//!   file) and its TPM.
//! - [`legacy`]: a real securityfs without the `snapshot` file (read-only; the agent
//!   copies `binary_runtime_measurements` incrementally and serves its own copy).
//! - [`keylime`]: Keylime's agent pull API (`[keylime]` in agent.toml, docs/KEYLIME.md).
//! - [`mount`]: `[mount]`, the whole-log FUSE view mounted by the service.
//! - [`api`]: the agent's metrics; the `imasnap-evidence/2` body itself is defined in
//!   `imasnap-wire` and re-exported there.
//! - [`tls`], [`http`], [`devpki`]: re-exported from `imasnap-net`, the mutual-TLS kit
//!   shared by both services (the verifier depends on that crate, not on this one).
//! - [`config`][crate::config]: `/etc/imasnap/agent.toml`, with `"30s"`-style durations
//!   ([`duration`], from `imasnap-net`, shared by both services' files).
//!
//! Cargo feature `sim` (off by default; the `imasnap` CLI turns it on): the simulated back
//! end, `backend = "model"`, which runs the in-process kernel model with a synthetic
//! workload and the soft TPM. Without it the crate links no kernel model and no simulator,
//! the model back end is refused at start-up with a message naming the feature, and the
//! workload endpoints answer 409.

pub mod api;
pub mod config;
pub mod enrol;
pub mod host;
pub mod keylime;
pub mod legacy;
pub mod mount;
pub mod service;

pub use imasnap_net::{devpki, duration, http, tls};

pub use config::AgentServiceConfig;
