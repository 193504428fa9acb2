pub mod agent;
pub mod demo;
pub mod log;
pub mod sim;
pub mod verify;
pub mod tpm;
