//! Terminal conventions shared by every command: exit codes, progress, JSON.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAIL: u8 = 1;
pub const EXIT_INPUT: u8 = 2;

/// A byte progress bar on stderr, hidden when stderr is not a terminal or output is JSON.
pub fn bytes_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb
}

/// A count progress bar on stderr.
pub fn count_bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}})"
        ))
        .expect("static template")
        .progress_chars("=> "),
    );
    pb
}

pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON values serialize"));
}
