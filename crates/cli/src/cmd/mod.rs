#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "agent")]
pub mod agent_service;
#[cfg(any(feature = "agent", feature = "verifier"))]
pub mod daemon;
#[cfg(feature = "agent")]
pub mod demo;
pub mod gen;
pub mod log;
#[cfg(feature = "agent")]
pub mod mount;
pub mod policy;
mod policy_create;
mod policy_source;
#[cfg(feature = "agent")]
pub mod sim;
pub mod tpm;
#[cfg(feature = "verifier")]
pub mod verifier_service;
pub mod verify;
