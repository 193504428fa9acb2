pub mod log;
pub mod sim;
