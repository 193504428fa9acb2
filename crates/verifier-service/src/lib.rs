//! imasnap-verifier-service: the verifier as a network service (`imasnap verifier
//! run`). See docs/SERVICES.md.
//!
//! - [`service`]: host registry, scheduler (bounded concurrency, timeouts), rounds and
//!   REST API; [`roles`]: who may call which route.
//! - [`attest`]: one round: evidence from the agent + saved state → the pure engine
//!   (`imasnap-verifier`) → verdict, new state, policy findings.
//! - [`db`]: SQLite (embedded default) or PostgreSQL (replicas), one schema and migrations;
//!   per-host state saved after every round (group commit, compare-and-swap).
//! - [`model`]: host registrations, status and verdict rows.
//! - [`client`]: REST client (CLI, tests).
//! - [`enrol`]: AK enrolment by EK credential activation (EK trust, challenges).
//! - [`ops`]: Prometheus metrics, backoff for failing hosts, revocation webhooks.
//! - [`dashboard`]: the web dashboard (read-only, same listener and roles as the API).

pub mod attest;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod enrol;
pub mod model;
pub mod ops;
pub mod policy;
pub mod roles;
pub mod service;

pub use config::VerifierConfig;
pub use service::Verifier;
