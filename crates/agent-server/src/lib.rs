//! imasnap-agent-server: the agent as a network service (DESIGN §4 component 5,
//! `imasnap agent run`). See docs/SERVICES.md.
//!
//! - [`service`]: the HTTPS API (mutual TLS) serving evidence, snapshots, health and
//!   Prometheus metrics, plus the policy/interval ticker.
//! - [`host`]: the agent over a kernel back end ([`host::HostKernel`]: the kernel model
//!   with a synthetic workload, or a real kernel's securityfs with the RFC `snapshot`
//!   file) and its TPM.
//! - [`legacy`]: a real securityfs without the `snapshot` file (read-only; the agent
//!   copies `binary_runtime_measurements` incrementally and serves its own copy).
//! - [`api`]: the `imasnap-evidence/1` wire format, shared with the verifier.
//! - [`tls`], [`http`]: rustls mutual TLS and HTTP/1.1 plumbing shared by both services.
//! - [`config`][crate::config]: `/etc/imasnap/agent.toml`; [`duration`]: `"30s"`-style
//!   durations in both services' files.

pub mod api;
pub mod config;
pub mod devpki;
pub mod duration;
pub mod host;
pub mod http;
pub mod legacy;
pub mod service;
pub mod tls;

pub use config::AgentServiceConfig;
