//! What every long-running `imasnap … run` service shares: signals and logs.

use std::io::IsTerminal;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A daemon must survive peers that close connections: `main` restores SIGPIPE's default
/// (die quietly on `| head`), but TLS writes are vectored (`writev` has no MSG_NOSIGNAL),
/// so a write to a vanished peer would kill the service. Ignore SIGPIPE again here.
pub fn daemon_signals() {
    crate::ui::sigpipe(true);
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// `--log-json`: one JSON object per line (no colour).
    Json,
    /// stderr is the journal's stream (`JOURNAL_STREAM` names it): `<N>` syslog priority
    /// prefixes so journald records each line's level, no timestamps (journald adds its
    /// own), no colour.
    Journald,
    /// Human text with timestamps; ANSI colour only on a terminal (and without `NO_COLOR`).
    Text { ansi: bool },
}

/// The style for this process: `--log-json`, else journald when stderr is the stream
/// `JOURNAL_STREAM` (`DEV:INODE`) names, else text.
pub fn log_style(json: bool) -> LogStyle {
    if json {
        return LogStyle::Json;
    }
    if stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
        return LogStyle::Journald;
    }
    LogStyle::Text { ansi: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
}

/// Whether stderr is the journal stream `journal_stream` (`DEV:INODE`) names. systemd sets
/// the variable for the service; a child whose stderr was redirected must not take it for
/// the journal, hence the device and inode comparison (as sd_journal_stream_fd(3) says).
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    std::fs::File::from(fd).metadata().is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// sd-daemon(3) priority of a tracing level: error 3, warn 4, info 6, debug and trace 7.
pub fn syslog_priority(l: &tracing::Level) -> u8 {
    match *l {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// `<6>target: message key=value…`: what journald parses into PRIORITY and MESSAGE.
struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, ev: &tracing::Event<'_>) -> std::fmt::Result {
        let m = ev.metadata();
        write!(w, "<{}>{}: ", syslog_priority(m.level()), m.target())?;
        ctx.field_format().format_fields(w.by_ref(), ev)?;
        writeln!(w)
    }
}

/// Structured logs on stderr (RUST_LOG, default info), in [`log_style`].
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match log_style(json) {
        LogStyle::Json => b.json().try_init(),
        LogStyle::Journald => b.with_ansi(false).event_format(Journald).try_init(),
        LogStyle::Text { ansi } => b.with_ansi(ansi).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_and_journal_detection() {
        assert_eq!(syslog_priority(&tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(&tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(&tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(&tracing::Level::DEBUG), 7);
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:2")), "a stream that is not our stderr");
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned().unwrap()).metadata().unwrap();
        assert!(stderr_is_journal(Some(&format!("{}:{}", m.dev(), m.ino()))));
        assert_eq!(log_style(true), LogStyle::Json);
    }
}
