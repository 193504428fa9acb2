//! `imasnap agent run`: the agent service (HTTPS evidence API with mutual TLS).

use anyhow::Result;
use clap::Args;
use imasnap_agent_server::config::{AgentServiceConfig, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the agent service: snapshots by policy and on request, evidence over HTTPS (mTLS).
///
/// Reads the TOML configuration (state_dir, listen, tpm, backend, [snapshot], [keylime], [tls], …;
/// see docs/SERVICES.md), recovers the snapshot store, then serves until SIGINT/SIGTERM.
/// Prints "listening on ADDR" once bound. Logs go to stderr (RUST_LOG filters them).
///
/// Example: imasnap agent run --config /etc/imasnap/agent.toml --log-json
#[derive(Args)]
pub struct RunArgs {
    /// Configuration file (TOML; see docs/SERVICES.md).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Structured logs as JSON lines.
    #[arg(long)]
    log_json: bool,
}

use super::daemon::{daemon_signals, init_logs};

pub fn run(a: RunArgs) -> Result<ExitCode> {
    daemon_signals();
    init_logs(a.log_json);
    let text = crate::ui::read_small_text(&a.config, crate::ui::MAX_CONFIG_BYTES)?;
    let cfg = AgentServiceConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(imasnap_agent_server::service::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
