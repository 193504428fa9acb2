//! What every long-running `imasnap … run` service shares: signals and logs.

/// A daemon must survive peers that close connections: `main` restores SIGPIPE's default
/// (die quietly on `| head`), but TLS writes are vectored (`writev` has no MSG_NOSIGNAL),
/// so a write to a vanished peer would kill the service. Ignore SIGPIPE again here.
pub fn daemon_signals() {
    crate::ui::sigpipe(true);
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
