//! A private swtpm process for tests and benchmarks: fresh state, free ports on
//! 127.0.0.1, killed and removed on drop. Pure std; needs the `swtpm` binary.
//!
//! swtpm has no resource manager and serves one connection at a time, so tests that
//! share one would see each other's PCRs and transient objects. Each test starts
//! its own instead ([`Swtpm::for_test`]).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Set by `scripts/test.sh` (the swtpm it started); its presence says swtpm is
/// expected to work here.
pub const ENV_SWTPM: &str = "IMASNAP_SWTPM";
/// `IMASNAP_SKIP_SWTPM=1` lets tests that need swtpm pass without it.
pub const ENV_SKIP: &str = "IMASNAP_SKIP_SWTPM";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running `swtpm socket --tpm2` with its own state directory.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    dir: PathBuf,
    port: u16,
}

fn free_pair(port: u16) -> bool {
    let ok = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    ok(port) && ok(port + 1)
}

impl Swtpm {
    /// Starts swtpm (TPM 2.0, manufactured on first start with its default banks
    /// SHA-1, SHA-256, SHA-384, SHA-512; `startup-clear`, so PCRs are fresh) on two
    /// free consecutive ports and waits until it accepts connections.
    pub fn start() -> io::Result<Self> {
        Self::start_inner(None)
    }

    /// Like [`Swtpm::start`], but the TPM is first manufactured by `swtpm_setup` with
    /// an RSA 2048 and an ECC EK, their certificates in NV (0x01c00002 for RSA) and a
    /// platform certificate, issued by a swtpm-localca CA kept in `ca_dir` (created
    /// there on first use, so TPMs started with the same `ca_dir` share one CA, and
    /// nothing depends on /var/lib/swtpm-localca). PCR banks: SHA-1 and SHA-256.
    /// The CA's certificates are `ca_dir/issuercert.pem` (the EK certificates' issuer)
    /// and `ca_dir/swtpm-localca-rootca-cert.pem`.
    pub fn start_with_ek_cert(ca_dir: &Path) -> io::Result<Self> {
        Self::start_inner(Some(ca_dir))
    }

    /// [`Swtpm::start_with_ek_cert`] for a test, with [`Swtpm::for_test`]'s rules.
    pub fn for_test_with_ek_cert(ca_dir: &Path) -> Option<Self> {
        if !Self::test_gate() {
            return None;
        }
        Some(Self::start_with_ek_cert(ca_dir).unwrap_or_else(|e| panic!("cannot start a swtpm with EK certs: {e}")))
    }

    fn start_inner(ca_dir: Option<&Path>) -> io::Result<Self> {
        let pid = std::process::id();
        let mut last = io::Error::other("no free port pair");
        for _ in 0..20 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            // Spread processes and calls over 20000-59999 (even ports).
            let port = 20000 + ((pid.wrapping_mul(7919).wrapping_add(n.wrapping_mul(2))) % 20000 * 2) as u16;
            if !free_pair(port) {
                continue;
            }
            let dir = std::env::temp_dir().join(format!("imasnap-swtpm-{pid}-{n}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            if let Some(ca) = ca_dir {
                if let Err(e) = manufacture(&dir, ca) {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
            match Self::spawn(&dir, port) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn spawn(dir: &Path, port: u16) -> io::Result<Self> {
        let log = std::fs::File::create(dir.join("swtpm.log"))?;
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting swtpm (is it installed?): {e}")))?;
        let mut s = Self { child, dir: dir.to_path_buf(), port };
        let t0 = Instant::now();
        loop {
            if let Some(st) = s.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("swtpm.log")).unwrap_or_default();
                return Err(io::Error::other(format!("swtpm exited ({st}): {}", log.trim())));
            }
            if TcpStream::connect(("127.0.0.1", port + 1)).is_ok() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = s.child.kill();
                return Err(io::Error::other("swtpm did not listen within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A swtpm for a test, or `None` when `IMASNAP_SKIP_SWTPM=1`. Panics with a clear
    /// message when `IMASNAP_SWTPM` is unset (so CI cannot skip silently) or swtpm
    /// does not start.
    pub fn for_test() -> Option<Self> {
        if !Self::test_gate() {
            return None;
        }
        Some(Self::start().unwrap_or_else(|e| panic!("cannot start a private swtpm: {e}")))
    }

    /// `false` when `IMASNAP_SKIP_SWTPM=1`; panics when `IMASNAP_SWTPM` is unset.
    fn test_gate() -> bool {
        if std::env::var(ENV_SKIP).is_ok_and(|v| v == "1") {
            eprintln!("swtpm test skipped: {ENV_SKIP}=1");
            return false;
        }
        if std::env::var_os(ENV_SWTPM).is_none() {
            panic!(
                "this test needs swtpm: run it through scripts/test.sh (which starts swtpm and sets \
                 {ENV_SWTPM}), or set {ENV_SWTPM}=swtpm:host=127.0.0.1,port=PORT with swtpm installed, \
                 or set {ENV_SKIP}=1 to skip it"
            );
        }
        true
    }

    /// The TCTI string: `swtpm:host=127.0.0.1,port=P`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Runs one tpm2-tools command (`args[0]` is the tool) on this TPM in `dir` and
    /// answers its stdout; panics with its stderr if it fails (tests only). Transient
    /// objects are flushed after it: swtpm has no resource manager.
    pub fn tools(&self, dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let flushed = Command::new("tpm2_flushcontext").arg("-t").env("TPM2TOOLS_TCTI", self.tcti()).status();
        assert!(flushed.is_ok_and(|s| s.success()), "tpm2_flushcontext -t failed");
        out.stdout
    }

    /// `tpm2_activatecredential` of `cred` (a `tpm2_makecredential` file's bytes) with
    /// the `ak.ctx` and `ek.ctx` of [`Swtpm::tools_ek_and_ak`] in `dir`, the EK authorised
    /// by PolicySecret(endorsement): answers the secret the TPM released.
    pub fn tools_activate(&self, dir: &Path, cred: &[u8]) -> Vec<u8> {
        std::fs::write(dir.join("cred.out"), cred).unwrap_or_else(|e| panic!("cred.out: {e}"));
        self.tools(dir, &["tpm2_startauthsession", "--policy-session", "-S", "session.ctx"]);
        self.tools(dir, &["tpm2_policysecret", "-S", "session.ctx", "-c", "e"]);
        let activate = "tpm2_activatecredential -c ak.ctx -C ek.ctx -i cred.out -o secret.out -P session:session.ctx";
        self.tools(dir, &activate.split(' ').collect::<Vec<_>>());
        self.tools(dir, &["tpm2_flushcontext", "session.ctx"]);
        std::fs::read(dir.join("secret.out")).unwrap_or_else(|e| panic!("secret.out: {e}"))
    }

    /// tpm2-tools' own EK (TCG RSA template) and an ECC P-256 signing AK under it, in
    /// `dir`: `ek.ctx`, `ek.pub`, `ak.ctx`, `ak.pub`, `ak.name`.
    pub fn tools_ek_and_ak(&self, dir: &Path) {
        self.tools(dir, &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
        let ak = "tpm2_createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name";
        self.tools(dir, &ak.split(' ').collect::<Vec<_>>());
    }

    /// The command port (the control port is one above).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Runs `swtpm_setup` on `state` with a throwaway swtpm-localca configuration in `ca`.
fn manufacture(state: &Path, ca: &Path) -> io::Result<()> {
    std::fs::create_dir_all(ca)?;
    let ca = ca.canonicalize()?;
    let c = ca.display();
    let localca = ca.join("swtpm-localca.conf");
    std::fs::write(
        &localca,
        format!(
            "statedir = {c}\nsigningkey = {c}/signkey.pem\nissuercert = {c}/issuercert.pem\ncertserial = {c}/certserial\n"
        ),
    )?;
    let options = ca.join("swtpm-localca.options");
    std::fs::write(&options, "--platform-manufacturer imasnap\n--platform-version 2.1\n--platform-model test\n")?;
    let setup = ca.join("swtpm_setup.conf");
    std::fs::write(
        &setup,
        format!(
            "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha1,sha256\n",
            localca.display(),
            options.display()
        ),
    )?;
    // swtpm_localca creates the CA under a lock; TPMs sharing `ca` may be set up at once.
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--create-ek-cert", "--create-platform-cert", "--overwrite", "--pcr-banks", "sha1,sha256"])
        .arg("--tpmstate")
        .arg(state)
        .arg("--config")
        .arg(&setup)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running swtpm_setup (is swtpm-tools installed?): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "swtpm_setup failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_14_swtpm_launcher_serves_and_cleans_up() {
        let Some(sw) = Swtpm::for_test() else { return };
        assert_eq!(sw.tcti(), format!("swtpm:host=127.0.0.1,port={}", sw.port()));
        assert!(TcpStream::connect(("127.0.0.1", sw.port())).is_ok());
        let dir = sw.dir().to_path_buf();
        assert!(dir.is_dir());
        drop(sw);
        assert!(!dir.exists(), "state directory removed on drop");
    }
}
