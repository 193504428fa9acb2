//! `imasnap agent run`: the agent service (HTTPS evidence API with mutual TLS).

use anyhow::Result;
use clap::Args;
use imasnap_agent_server::config::{AgentServiceConfig, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the agent service: snapshots by policy and on request, evidence over HTTPS (mTLS).
///
/// Reads the TOML configuration (state_dir, listen, tpm, backend, [snapshot], [tls], …;
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

/// A daemon must survive peers that close connections: `main` restores SIGPIPE's default
/// (die quietly on `| head`), but TLS writes are vectored (`writev` has no MSG_NOSIGNAL),
/// so a write to a vanished peer would kill the service. Ignore SIGPIPE again here.
pub fn daemon_signals() {
    // SAFETY: changing one signal's disposition before the runtime starts its threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Structured logs on stderr (RUST_LOG, default info).
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    daemon_signals();
    init_logs(a.log_json);
    let text = crate::ui::read_small_text(&a.config, crate::ui::MAX_CONFIG_BYTES)?;
    let cfg = AgentServiceConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(imasnap_agent_server::service::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
