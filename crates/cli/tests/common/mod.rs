//! Helpers shared by the CLI integration tests: paths, running the built binary, and
//! splitting binary logs into raw records for tampering.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SCENARIOS: [&str; 4] = ["ima-ng", "ima-sig", "ima-buf", "violation"];

pub fn imasnap_bin() -> &'static str {
    env!("CARGO_BIN_EXE_imasnap")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn scenario_dir(scenario: &str) -> PathBuf {
    fixtures().join("real-kernel").join(scenario)
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs `imasnap` with `args`; never panics on a non-zero exit.
pub fn imasnap<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(imasnap_bin()).args(args).output().expect("run the imasnap binary")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or_else(|| panic!("killed by a signal: {:?}", o.status))
}

/// Parses a well-formed SHA1 binary log, and splits it into its records' raw bytes.
#[allow(unused_imports)] // each test binary uses its own subset
pub use imasnap_test_support::records::{parse as parse_records, split as split_records};

/// A violation has an all-zero template digest (bytes 4..24 of a SHA1 record).
pub fn is_violation(raw: &[u8]) -> bool {
    raw[4..24].iter().all(|&b| b == 0)
}

/// Offset, inside a raw record, of the first byte of the file digest in its first field
/// (`d-ng`/`d-ngv2`: after the `<algo>:` NUL prefix).
pub fn file_digest_offset(raw: &[u8]) -> usize {
    let name_len = u32::from_le_bytes(raw[24..28].try_into().unwrap()) as usize;
    let field0 = 28 + name_len + 4 + 4;
    let nul = raw[field0..].iter().position(|&b| b == 0).expect("d-ng prefix NUL");
    field0 + nul + 1
}

/// Replaces the value of `PCR-NN` in an evmctl-style PCR file with `f(old hex)`.
pub fn edit_pcr(text: &str, pcr: usize, f: impl Fn(&str) -> String) -> String {
    let key = format!("PCR-{pcr:02}: ");
    let mut found = false;
    let out: String = text
        .lines()
        .map(|l| match l.strip_prefix(&key) {
            Some(v) => {
                found = true;
                format!("{key}{}\n", f(v))
            }
            None => format!("{l}\n"),
        })
        .collect();
    assert!(found, "no {key} line");
    out
}

/// Flips the lowest bit of the last hex digit.
pub fn flip_hex(v: &str) -> String {
    let mut b = v.as_bytes().to_vec();
    let last = b.last_mut().unwrap();
    let d = (*last as char).to_digit(16).unwrap() ^ 1;
    *last = std::char::from_digit(d, 16).unwrap() as u8;
    String::from_utf8(b).unwrap()
}

/// `imasnap verify DIR --json EXTRA…`: exit code and the parsed JSON.
pub fn verify_json(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["verify", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let r = imasnap(&args);
    let v =
        serde_json::from_slice(&r.stdout).unwrap_or_else(|_| panic!("json: {}", String::from_utf8_lossy(&r.stdout)));
    (code(&r), v)
}

/// Copies a bundle directory (top-level files and `snapshots/`), for tampering.
pub fn copy_bundle(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("snapshots")).unwrap();
    for e in std::fs::read_dir(from).unwrap().chain(std::fs::read_dir(from.join("snapshots")).unwrap()) {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let rel = e.path().strip_prefix(from).unwrap().to_path_buf();
            std::fs::copy(e.path(), to.join(rel)).unwrap();
        }
    }
}

/// A service process (`imasnap agent run`, `imasnap verifier run`): killed when dropped
/// (after a SIGCONT, in case a test stopped it).
pub struct Proc {
    pub child: std::process::Child,
    /// What it printed after "listening on ".
    pub addr: String,
    /// Its stderr.
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `imasnap <args>` (logs at info into `log`) and waits for its "listening on ADDR" line.
pub fn start_service(args: &[&str], log: &Path) -> Proc {
    use std::io::{BufRead, BufReader};
    let err = std::fs::File::create(log).unwrap();
    let mut child = Command::new(imasnap_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send(a.to_string());
            }
        }
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(addr) => Proc { child, addr, log: log.to_path_buf() },
        Err(_) => {
            let _ = child.kill();
            panic!("{args:?} did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
}

/// `imasnap verifier run` with the development PKI's verifier identity (API and agent
/// links), on a free port; `verifier.toml` and `verifier.log` go in `dir`. `database` is
/// its `database = …` line.
pub fn start_verifier(dir: &Path, pki: &imasnap_agent_server::devpki::DevPkiFiles, database: &str) -> Proc {
    let (cert, key, ca) = (&pki.verifier.cert, &pki.verifier.key, &pki.ca);
    let cfg = format!(
        "{database}\nlisten = \"127.0.0.1:0\"\ntimeout = \"20s\"\n\
         [tls]\ncert = {cert:?}\nkey = {key:?}\nca = {ca:?}\n[agent_tls]\ncert = {cert:?}\nkey = {key:?}\nca = {ca:?}\n"
    );
    let c = dir.join("verifier.toml");
    std::fs::write(&c, cfg).unwrap();
    start_service(&["verifier", "run", "--config", c.to_str().unwrap()], &dir.join("verifier.log"))
}
