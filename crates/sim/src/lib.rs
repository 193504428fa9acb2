//! imasnap-sim: synthetic workloads that drive the kernel model, the agent and the
//! verifier together (`imasnap sim run`, `imasnap demo`).

pub mod demo;
pub mod run;
pub mod workload;

pub use run::{Machine, SimError, SimOptions, SimReport};
