pub mod agent;
pub mod agent_service;
pub mod demo;
pub mod log;
pub mod sim;
pub mod verify;
pub mod tpm;
pub mod verifier_service;
