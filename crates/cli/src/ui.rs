//! Terminal conventions shared by every command: exit codes, input files, progress, JSON.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;

/// Verified, or the command did its job.
pub const EXIT_OK: u8 = 0;
/// The evidence was read and is wrong: a verification or policy failure.
pub const EXIT_FAIL: u8 = 1;
/// An input could not be used (missing, not a regular file, too large, malformed) or the
/// command line is wrong. Nothing was verified.
pub const EXIT_INPUT: u8 = 2;

/// Limits of the small files the CLI reads whole; big inputs (logs, live.bin) stream.
pub const MAX_AK_BYTES: u64 = imasnap_verifier::dir::MAX_AK_BYTES;
pub const MAX_PCR_FILE_BYTES: u64 = 64 << 10;
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
pub const MAX_CERT_BYTES: u64 = 1 << 20;
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Reads a small regular file whole; FIFOs, devices and directories are refused, and so
/// is a file above `limit` (the error names the path and the limit).
pub fn read_small_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    Ok(imasnap_verifier::dir::read_small_file(path, limit)?)
}

/// [`read_small_file`] as UTF-8 text.
pub fn read_small_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_small_file(path, limit)?).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))
}

/// Opens a streamed input (a log): regular files only, so a FIFO cannot hang the command;
/// pipes go through `-` (stdin).
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    Ok(imasnap_verifier::dir::open_regular(path)?)
}

/// The error chain, joined by ": ", without the repeats that appear when an error's text
/// already includes its source's text ("b2 already exists: b2 already exists").
pub fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if parts.last().is_some_and(|prev| prev.contains(&m)) {
            continue;
        }
        parts.push(m);
    }
    parts.join(": ")
}

/// A byte progress bar on stderr, hidden when stderr is not a terminal or output is JSON.
pub fn bytes_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// A count progress bar on stderr.
pub fn count_bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template(&format!("{{spinner}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}})"))
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Prints one `--json` document. Every document is an object whose `format` field names
/// the command and its version, `imasnap-<command>/<N>` (`imasnap-verify/1`): N grows when
/// a field is removed, renamed or changes type, never for an added field. Lists are
/// wrapped in an object (see [`wrap`]).
pub fn print_json_doc(format: &str, v: serde_json::Value) {
    let mut obj = match v {
        serde_json::Value::Object(m) => m,
        other => {
            let mut m = serde_json::Map::new();
            m.insert("items".into(), other);
            m
        }
    };
    obj.insert("format".into(), format.into());
    println!("{}", serde_json::to_string_pretty(&obj).unwrap_or_default());
}

/// Sets SIGPIPE's disposition: ignored (`true`, daemons: a vanished peer is an error on
/// the write) or the default (`false`, tools: die quietly when the reader goes away).
/// The only `unsafe` of the CLI: the standard library offers no way to set it.
/// Call it before any thread starts.
#[allow(unsafe_code)]
pub fn sigpipe(ignore: bool) {
    #[cfg(unix)]
    // SAFETY: `signal` with SIG_IGN/SIG_DFL installs no handler code; callers run this
    // before spawning threads, so no other thread races on the disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, if ignore { libc::SIG_IGN } else { libc::SIG_DFL });
    }
    #[cfg(not(unix))]
    let _ = ignore;
}

/// Unix seconds as UTC (year, month, day, hour, minute, second), by H. Hinnant's
/// civil-from-days algorithm (no date library for two timestamps).
pub fn utc_civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod civil_tests {
    #[test]
    fn utc_civil_known_dates() {
        assert_eq!(super::utc_civil(0), (1970, 1, 1, 0, 0, 0));
        // A leap day, and a second before midnight.
        assert_eq!(super::utc_civil(951_782_400 + 86_399), (2000, 2, 29, 23, 59, 59));
        assert_eq!(super::utc_civil(-1), (1969, 12, 31, 23, 59, 59));
    }
}
