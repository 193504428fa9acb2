//! The verifier's web dashboard in a real browser: headless Chromium, driven through
//! chromedriver's WebDriver HTTP API, loads the dashboard over mutual TLS from an
//! `imasnap verifier run` process attesting three `imasnap agent run` processes (kernel
//! model, soft TPM: RFC snapshots, staging, and one host that goes bad).
//!
//! - the fleet page lists what `GET /v1/hosts` says (status, checkpoint, back end, records
//!   per round, rounds), failing hosts first;
//! - a host page shows the segment chain the agent's manifest holds and the log-size chart;
//! - a host turns red on the open fleet page (live updates, no reload) after its agent
//!   measures a file outside its policy, and its page names the record index, path and
//!   reason the API names;
//! - screenshots go to `$IMASNAP_SCREENSHOTS` (default
//!   `$CARGO_TARGET_TMPDIR/dashboard-screenshots`).
//!
//! The client certificate: Chromium on Linux reads it from the NSS database in
//! `$HOME/.pki/nssdb` (a throwaway HOME here, filled with `certutil`/`pk12util`) and picks
//! one without a dialog only where the `auto_select_certificate` content setting names the
//! site. That setting lives in the profile's `Preferences`, so the test writes it into a
//! throwaway `--user-data-dir` (the same setting the `AutoSelectCertificateForUrls` policy
//! fills): no root, no file under /etc.
//!
//! Needs /usr/bin/chromium, /usr/bin/chromedriver, certutil, pk12util and openssl
//! (scripts/install-deps.sh); fails without them unless IMASNAP_SKIP_BROWSER=1.

use imasnap_agent_server::devpki::{write_dev_pki, DevPkiFiles};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{start_service, Proc};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn tool_missing() -> Option<String> {
    for t in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(t).exists() {
            return Some(t.to_string());
        }
    }
    for t in ["certutil", "pk12util", "openssl"] {
        let ok = Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success());
        if !ok {
            return Some(t.to_string());
        }
    }
    None
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---- a small WebDriver client (HTTP/1.1 over loopback, one request per connection) -------

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    http_t(port, method, path, body, Duration::from_secs(90))
}

fn http_t(port: u16, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("chromedriver: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))?;
    // chromedriver keeps the connection open despite `Connection: close`: read the header,
    // then exactly `content-length` bytes (or chunks up to the last one).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let mut want: Option<usize> = None;
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let body = raw.len() - split - 4;
            let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
            want = len.map(|n: usize| split + 4 + n);
            let chunked_done = head.contains("transfer-encoding: chunked") && raw.ends_with(b"0\r\n\r\n") && body > 0;
            if want.is_some_and(|w| raw.len() >= w) || chunked_done {
                break;
            }
        }
        let n = s.read(&mut buf).map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    if let Some(w) = want {
        raw.truncate(w);
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(format!("{method} {path}: no HTTP header"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut payload = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload)?;
    }
    let v: Value = serde_json::from_slice(&payload)
        .map_err(|e| format!("{method} {path}: {e}: {}", String::from_utf8_lossy(&payload)))?;
    let status_ok = head.starts_with("http/1.1 2");
    if !status_ok {
        return Err(format!("{method} {path}: {}: {}", head.lines().next().unwrap_or(""), v["value"]));
    }
    Ok(v["value"].clone())
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(eol + 2..eol + 2 + n).ok_or("short chunk")?);
        b = b.get(eol + 4 + n..).ok_or("short chunk")?;
    }
}

/// Chromium under chromedriver, with a throwaway HOME (NSS database) and profile. Dropped:
/// the session is ended and chromedriver, plus any Chromium still using our profile, killed.
struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
    profile: PathBuf,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = http(self.port, "DELETE", &format!("/session/{s}"), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Anything left that runs with our profile directory is ours (by pid, nothing else).
        let needle = self.profile.to_string_lossy().to_string();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
                }
            }
        }
    }
}

impl Browser {
    /// `site`: `https://localhost:PORT`, the origin the certificate is chosen for.
    fn start(dir: &Path, pki: &DevPkiFiles, site: &str, shots: &Path) -> Self {
        let home = dir.join("browser-home");
        let nss = home.join(".pki/nssdb");
        std::fs::create_dir_all(&nss).unwrap();
        let db = format!("sql:{}", nss.display());
        run(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]));
        run(Command::new("certutil").args(["-A", "-d", &db, "-n", "imasnap-test-ca", "-t", "C,,", "-i"]).arg(&pki.ca));
        let p12 = dir.join("reader.p12");
        run(Command::new("openssl")
            .args(["pkcs12", "-export", "-passout", "pass:", "-name", "imasnap-reader", "-in"])
            .arg(&pki.reader.cert)
            .arg("-inkey")
            .arg(&pki.reader.key)
            .arg("-out")
            .arg(&p12));
        run(Command::new("pk12util").args(["-d", &db, "-W", "", "-i"]).arg(&p12));
        // The content setting behind AutoSelectCertificateForUrls, as the profile stores it.
        let profile = dir.join("browser-profile");
        std::fs::create_dir_all(profile.join("Default")).unwrap();
        let prefs = json!({"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {
            format!("{site},*"): {"last_modified": "13300000000000000",
                "setting": {"filters": [{"ISSUER": {"CN": "imasnap development CA"}}]}}}}}}});
        std::fs::write(profile.join("Default/Preferences"), prefs.to_string()).unwrap();

        let (driver, port) = start_driver(dir, &home);
        let mut b = Browser { driver, port, session: None, profile: profile.clone(), shots: shots.to_path_buf() };
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1360,1000", "--hide-scrollbars", "--no-first-run",
                     format!("--user-data-dir={}", profile.display())],
        }}}});
        let s = http(port, "POST", "/session", Some(&caps)).unwrap_or_else(|e| panic!("new session: {e}"));
        b.session = Some(s["sessionId"].as_str().expect("sessionId").to_string());
        b.cmd("POST", "timeouts", json!({"pageLoad": 30000, "script": 30000}));
        b
    }

    fn cmd(&self, method: &str, what: &str, body: Value) -> Value {
        let s = self.session.as_deref().unwrap_or("");
        let body = (method == "POST").then_some(&body);
        http(self.port, method, &format!("/session/{s}/{what}"), body).unwrap_or_else(|e| {
            self.shot("failure");
            panic!("webdriver {what}: {e}")
        })
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "url", json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd("POST", "execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Resizes the window (screenshots show the viewport only).
    fn size(&self, w: u32, h: u32) {
        self.cmd("POST", "window/rect", json!({ "width": w, "height": h }));
    }

    /// Saves a PNG screenshot as `<name>.png`; returns its path.
    fn shot(&self, name: &str) -> PathBuf {
        let s = self.session.as_deref().unwrap_or("");
        let p = self.shots.join(format!("{name}.png"));
        if let Ok(v) = http(self.port, "GET", &format!("/session/{s}/screenshot"), None) {
            if let Some(b) = v.as_str().and_then(b64) {
                let _ = std::fs::write(&p, b);
            }
        }
        p
    }

    /// Waits until `script` returns true, or fails with `what`, the page's text and a
    /// screenshot.
    fn wait(&self, what: &str, script: &str, limit: Duration) {
        let t0 = Instant::now();
        loop {
            if self.js(script) == Value::Bool(true) {
                return;
            }
            if t0.elapsed() > limit {
                let text = self.js("return document.body ? document.body.innerText : ''");
                let p = self.shot(&format!("timeout-{}", what.replace(' ', "-")));
                panic!("timed out after {limit:?} waiting for {what}; screenshot {}; page: {text}", p.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Starts chromedriver on a free port and waits for it to answer `/status`. The port is
/// picked by binding port 0 and letting go, so another process may take it first (busy
/// machines): then chromedriver cannot bind, and it is started again on another port.
fn start_driver(dir: &Path, home: &Path) -> (Child, u16) {
    let mut why = String::new();
    for attempt in 1..=4 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join(format!("chromedriver-{attempt}.log"));
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .env("HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e}"));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(st)) = driver.try_wait() {
                why = format!("chromedriver exited ({st}): {}", std::fs::read_to_string(&log).unwrap_or_default());
                break;
            }
            // Only chromedriver's own answer counts (another process may hold the port).
            match http_t(port, "GET", "/status", None, Duration::from_secs(2)) {
                Ok(v) if v["ready"] == true && v["message"].as_str().unwrap_or("").contains("ChromeDriver") => {
                    return (driver, port);
                }
                Ok(v) => why = format!("port {port}: not chromedriver or not ready: {v}"),
                Err(e) => why = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = driver.kill();
        let _ = driver.wait();
    }
    panic!("chromedriver did not start: {why}");
}

/// Standard base64 (the screenshot), no padding checks.
fn b64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        acc = (acc << 6) | val(c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

// ---- the services -----------------------------------------------------------------------

struct Env {
    t: tempfile::TempDir,
    pki: DevPkiFiles,
}

impl Env {
    fn p(&self, n: &str) -> PathBuf {
        self.t.path().join(n)
    }

    /// An agent on the kernel model and the soft TPM (set explicitly: the defaults are a
    /// real machine's).
    fn agent(&self, name: &str, seed: u64, extra: &str) -> Proc {
        let cfg = format!(
            "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\nbackend = \"model\"\ntpm = \"soft:seed={seed}\"\n\
             test_endpoints = true\ntick = \"100ms\"\n{extra}\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            self.p(&format!("{name}-state")),
            self.pki.agent.cert,
            self.pki.agent.key,
            self.pki.ca
        );
        let c = self.p(&format!("{name}.toml"));
        std::fs::write(&c, cfg).unwrap();
        start_service(&["agent", "run", "--config", c.to_str().unwrap()], &self.p(&format!("{name}.log")))
    }

    fn verifier(&self) -> Proc {
        common::start_verifier(self.t.path(), &self.pki, &format!("database = {:?}", self.p("verifier.db")))
    }

    /// A REST call as `who` (`admin` or `reader`) to the service at `addr`.
    fn call(&self, who: &str, addr: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let port = addr.rsplit(':').next().unwrap();
        let id = if who == "admin" { &self.pki.admin } else { &self.pki.reader };
        let c = imasnap_verifier_service::client::ApiClient::new(&format!("localhost:{port}"), id.client().unwrap());
        let m = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        rt.block_on(c.ok(m, path, body)).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// The back end the dashboard shows for the agent's mode.
fn backend_of(mode: &str) -> &'static str {
    if mode.contains("legacy") {
        "legacy"
    } else if mode.contains("staging") {
        "staging"
    } else {
        "snapshot"
    }
}

/// Waits until every host in `hosts` has been verified at least `n` times.
fn wait_rounds(env: &Env, v: &Proc, hosts: &[&str], n: u64) {
    let t0 = Instant::now();
    loop {
        let l = env.call("reader", &v.addr, "GET", "/v1/hosts", None);
        let ready = hosts.iter().all(|h| {
            l["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["spec"]["name"] == *h && x["rounds"].as_u64() >= Some(n) && x["status"] == "verified")
        });
        if ready {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "hosts not verified {n} times: {l}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until the fleet stops moving (two reads 0.7 s apart alike, every host in `hosts`
/// with `rounds >= n`): call it once rounds are off.
fn settle(env: &Env, v: &Proc, hosts: &[&str], n: u64) -> Value {
    let t0 = Instant::now();
    let mut prev = Value::Null;
    loop {
        let l = env.call("reader", &v.addr, "GET", "/v1/hosts", None);
        let ready = hosts.iter().all(|h| {
            l["hosts"].as_array().unwrap().iter().any(|x| x["spec"]["name"] == *h && x["rounds"].as_u64() >= Some(n))
        });
        let sig: Vec<_> =
            l["hosts"].as_array().unwrap().iter().map(|x| (x["rounds"].clone(), x["status"].clone())).collect();
        let sig = json!(sig);
        if ready && sig == prev {
            return l;
        }
        prev = sig;
        assert!(t0.elapsed() < Duration::from_secs(120), "hosts did not settle: {l}");
        std::thread::sleep(Duration::from_millis(700));
    }
}

/// The fleet table as the page shows it.
const FLEET_ROWS: &str = "return Array.from(document.querySelectorAll('#fleet tbody tr')).map(tr => {
    const f = (k) => { const c = tr.querySelector('[data-field=' + k + ']'); return c ? (c.dataset.value ?? c.textContent) : null; };
    return { name: tr.dataset.host, status: tr.dataset.status, failing: tr.classList.contains('failing'),
             checkpoint: f('checkpoint'), backend: f('backend'), records_per_round: f('records_per_round'),
             rounds: f('rounds'), last_verdict: f('last_verdict'), kernel_bytes: f('kernel_bytes'),
             untrimmed_bytes: f('untrimmed_bytes'), age: tr.querySelector('[data-field=age]').textContent };
  });";

fn num(v: &Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
}

/// Asserts that each fleet row matches the host's `GET /v1/hosts` entry.
fn fleet_matches_api(rows: &Value, api: &Value) {
    let hosts = api["hosts"].as_array().unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), hosts.len(), "{rows:?}");
    for r in rows {
        let h = hosts.iter().find(|h| h["spec"]["name"] == r["name"]).unwrap_or_else(|| panic!("{r} not in the API"));
        assert_eq!(r["status"], h["status"], "{r} vs {h}");
        assert_eq!(num(&r["checkpoint"]), h["checkpoint"].as_u64(), "{r} vs {h}");
        assert_eq!(num(&r["rounds"]), h["rounds"].as_u64(), "{r} vs {h}");
        assert_eq!(num(&r["records_per_round"]), h["last"]["records_replayed"].as_u64(), "{r} vs {h}");
        assert_eq!(r["last_verdict"], h["last"]["verdict"], "{r} vs {h}");
        let mode = h["last"]["evidence"]["mode"].as_str().unwrap_or_else(|| panic!("no mode in {h}"));
        assert_eq!(r["backend"], backend_of(mode), "{r} vs {h}");
        let ls = &h["last"]["evidence"]["log_size"];
        assert_eq!(num(&r["kernel_bytes"]), ls["kernel_bytes"].as_u64(), "{r} vs {h}");
        assert_eq!(num(&r["untrimmed_bytes"]), ls["untrimmed_bytes"].as_u64(), "{r} vs {h}");
        assert!(r["age"].as_str().unwrap().ends_with("ago"), "{r}");
    }
    // Failing hosts first.
    let sev: Vec<u8> = rows
        .iter()
        .map(|r| match r["status"].as_str().unwrap() {
            "rejected" | "policy_violation" | "unusable" => 0,
            "error" => 1,
            "pending" => 2,
            _ => 3,
        })
        .collect();
    assert!(sev.windows(2).all(|w| w[0] <= w[1]), "not failing first: {rows:?}");
}

#[test]
fn dashboard_in_headless_chromium() {
    if let Some(t) = tool_missing() {
        if std::env::var("IMASNAP_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("skipped: {t} missing and IMASNAP_SKIP_BROWSER=1");
            return;
        }
        panic!("{t} is missing: run scripts/install-deps.sh (chromium chromium-driver libnss3-tools), or set IMASNAP_SKIP_BROWSER=1");
    }
    let started = Instant::now();
    let shots = std::env::var_os("IMASNAP_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let t = tempfile::tempdir().unwrap();
    let pki = write_dev_pki(&t.path().join("pki"), &["localhost"]).unwrap();
    let env = Env { t, pki };

    // Three hosts: RFC snapshots with a steady workload, staging with the same, and one
    // quiet host (only what the test measures) that will break its policy.
    let snap = "[snapshot]\nmax_records = 60\n[workload]\nrecords_per_second = 40\n";
    let web1 = env.agent("web1", 1, snap);
    let web2 = env.agent("web2", 2, &format!("interface = \"staging\"\nstaging = \"trim\"\n{snap}"));
    let db1 = env.agent("db1", 3, "");
    let ver = env.verifier();
    for (name, a) in [("web1", &web1), ("web2", &web2), ("db1", &db1)] {
        let port = a.addr.rsplit(':').next().unwrap();
        env.call(
            "admin",
            &ver.addr,
            "POST",
            "/v1/hosts",
            Some(json!({"name": name, "address": format!("127.0.0.1:{port}"), "server_name": "localhost",
                        "tofu": true, "simulated": true, "poll_interval_ms": 700})),
        );
    }
    // db1: history with snapshots, by hand.
    for _ in 0..3 {
        env.call("admin", &db1.addr, "POST", "/v1/test/records?count=30", None);
        env.call("admin", &db1.addr, "POST", "/v1/snapshots", None);
    }
    wait_rounds(&env, &ver, &["web1", "web2", "db1"], 6);

    let port = ver.addr.rsplit(':').next().unwrap().to_string();
    let site = format!("https://localhost:{port}");
    let b = Browser::start(env.t.path(), &env.pki, &site, &shots);

    // Live fleet page (while rounds run): it loads, and the root redirects to it.
    b.goto(&format!("{site}/"));
    b.wait(
        "the fleet table",
        "return location.pathname === '/dashboard/' && !!document.querySelector('#fleet tbody tr')",
        Duration::from_secs(30),
    );
    let n0 = b.js("return Number(document.body.dataset.refreshes || 0)").as_u64().unwrap();
    b.wait(
        "a live update",
        &format!("return Number(document.body.dataset.refreshes || 0) > {n0}"),
        Duration::from_secs(30),
    );
    assert!(b.js("return document.getElementById('live').textContent").as_str().unwrap().contains("live"));

    // Freeze the fleet (no more rounds), then the page must match the API exactly.
    for h in ["web1", "web2", "db1"] {
        env.call("admin", &ver.addr, "PATCH", &format!("/v1/hosts/{h}"), Some(json!({"poll_interval_ms": 3_600_000})));
    }
    let api = settle(&env, &ver, &["web1", "web2", "db1"], 6);
    // The page catches up by itself (event stream): wait until it shows the same rounds.
    let t0 = Instant::now();
    let rows = loop {
        let rows = b.js(FLEET_ROWS);
        let same = api["hosts"].as_array().unwrap().iter().all(|h| {
            rows.as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == h["spec"]["name"] && num(&r["rounds"]) == h["rounds"].as_u64())
        });
        if same {
            break rows;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            b.shot("timeout-settled-rounds");
            panic!("the page did not catch up with the API: {rows} vs {api}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    fleet_matches_api(&rows, &api);
    assert!(rows.as_array().unwrap().iter().all(|r| r["status"] == "verified"), "{rows}");
    let backends: Vec<_> =
        rows.as_array().unwrap().iter().map(|r| r["backend"].as_str().unwrap().to_string()).collect();
    assert!(backends.contains(&"staging".to_string()) && backends.contains(&"snapshot".to_string()), "{backends:?}");
    b.size(1360, 560);
    b.shot("fleet-verified");
    b.size(1360, 1000);

    // Host page: the chain holds the agent's snapshots; the size chart has both lines and
    // the newest point says what the API's last evidence says.
    b.goto(&format!("{site}/dashboard/hosts/web1"));
    b.wait(
        "the web1 page",
        "return !!document.querySelector('#chain-chart') && !!document.querySelector('#size-kernel')",
        Duration::from_secs(20),
    );
    let man = env.call("admin", &web1.addr, "GET", "/v1/snapshots", None);
    let want_seqs: Vec<u64> = man["snapshots"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert!(want_seqs.len() >= 2, "web1 took too few snapshots: {man}");
    let shown: Vec<u64> = serde_json::from_value(b.js(
        "return Array.from(document.querySelectorAll('#chain-chart rect[data-seq]')).map(r => Number(r.dataset.seq))",
    ))
    .unwrap();
    // The page was drawn from the frozen state; the agent may have cut one more since.
    assert!(
        !shown.is_empty() && shown.iter().all(|s| want_seqs.contains(s)),
        "chain {shown:?} vs manifest {want_seqs:?}"
    );
    assert_eq!(shown, want_seqs[..shown.len()].to_vec(), "the chain must start at the boot's first snapshot");
    let h1 = env.call("reader", &ver.addr, "GET", "/v1/hosts/web1", None);
    let page = b.js("const v = (k) => document.querySelector('.facts [data-field=' + k + '] .v'); \
         return { checkpoint: v('checkpoint').dataset.value, rounds: v('rounds').dataset.value, \
                  shown: v('checkpoint').textContent, backend: v('backend').textContent }");
    assert_eq!(num(&page["checkpoint"]), h1["checkpoint"].as_u64(), "{page} vs {h1}");
    assert_eq!(num(&page["rounds"]), h1["rounds"].as_u64(), "{page} vs {h1}");
    assert_eq!(page["shown"].as_str().unwrap().replace(',', ""), h1["checkpoint"].to_string(), "{page}");
    assert!(page["backend"].as_str().unwrap().starts_with("snapshot (model)"), "{page}");
    let ls = &h1["last"]["evidence"]["log_size"];
    assert!(ls["untrimmed_bytes"].as_u64() > ls["kernel_bytes"].as_u64(), "trimming saved nothing? {ls}");
    let dashboard_json = env.call("reader", &ver.addr, "GET", "/dashboard/api/hosts/web1", None);
    let last = dashboard_json["log_size"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kernel_bytes"], ls["kernel_bytes"], "{last} vs {ls}");
    assert!(dashboard_json["log_size"].as_array().unwrap().len() >= 3, "{dashboard_json}");
    b.size(1360, 1400);
    b.shot("host-web1");
    b.size(1360, 1000);

    // db1 turns red: a policy, then a file outside it. The fleet page stays open and
    // must update by itself.
    b.goto(&format!("{site}/dashboard/"));
    b.wait(
        "the fleet table again",
        "return !!document.querySelector('#fleet tbody tr[data-host=db1]')",
        Duration::from_secs(20),
    );
    let policy = format!("{}  /usr/bin/ok\n", "ab".repeat(32));
    env.call("admin", &ver.addr, "PATCH", "/v1/hosts/db1", Some(json!({"policy": policy})));
    settle(&env, &ver, &["db1"], 0);
    let m = env.call("admin", &db1.addr, "GET", "/v1/health", None)["metrics"].clone();
    let evil = m["next_index"].as_u64().unwrap() + m["live_records"].as_u64().unwrap();
    env.call(
        "admin",
        &db1.addr,
        "POST",
        "/v1/test/measure",
        Some(json!({"path": "/opt/evil", "digest": "cd".repeat(32)})),
    );
    env.call("admin", &ver.addr, "POST", "/v1/hosts/db1/attest", None);
    b.wait(
        "db1 to turn red on the open page",
        "const tr = document.querySelector('#fleet tbody tr'); \
         return !!tr && tr.dataset.host === 'db1' && tr.dataset.status === 'policy_violation' && tr.classList.contains('failing')",
        Duration::from_secs(30),
    );
    let red = b.js("return getComputedStyle(document.querySelector('tr[data-host=db1] td')).backgroundColor");
    assert_eq!(red, "rgb(253, 236, 234)", "the failing row's background");
    let api = env.call("reader", &ver.addr, "GET", "/v1/hosts", None);
    fleet_matches_api(&b.js(FLEET_ROWS), &api);
    b.size(1360, 560);
    b.shot("fleet-db1-red");
    b.size(1360, 1000);

    // Its page names the record, the path and the reason, as the API does.
    let st = env.call("reader", &ver.addr, "GET", "/v1/hosts/db1", None);
    assert_eq!(st["status"], "policy_violation", "{st}");
    assert_eq!(st["alert"]["record"].as_u64(), Some(evil), "{st}");
    b.goto(&format!("{site}/dashboard/hosts/db1"));
    b.wait(
        "the failure panel",
        "return !!document.querySelector('#failure [data-field=path]')",
        Duration::from_secs(20),
    );
    let f = b.js("const q = (k) => document.querySelector('#failure [data-field=' + k + ']'); \
         return { record: q('record').dataset.value, path: q('path').textContent, reason: q('reason').textContent, \
                  title: document.getElementById('host-title').dataset.status }");
    assert_eq!(num(&f["record"]), Some(evil), "{f}");
    assert_eq!(f["path"], "/opt/evil", "{f}");
    assert!(f["reason"].as_str().unwrap().starts_with(st["alert"]["reason"].as_str().unwrap()), "{f} vs {st}");
    assert_eq!(f["title"], "policy_violation");
    b.size(1360, 1400);
    b.shot("host-db1-policy-violation");

    // No certificate, no dashboard: the handshake itself is refused.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let anon = imasnap_agent_server::tls::client_config(
        None,
        imasnap_agent_server::tls::roots_from_file(&env.pki.ca).unwrap(),
    )
    .unwrap();
    let c = imasnap_verifier_service::client::ApiClient::new(&format!("localhost:{port}"), anon);
    assert!(rt.block_on(c.call(hyper::Method::GET, "/dashboard/", None)).is_err(), "served without a certificate");
    // The agent's certificate (role agent) is refused too.
    let ag =
        imasnap_verifier_service::client::ApiClient::new(&format!("localhost:{port}"), env.pki.agent.client().unwrap());
    let (s, _) = rt.block_on(ag.call(hyper::Method::GET, "/dashboard/api/fleet", None)).unwrap();
    assert_eq!(s, hyper::StatusCode::FORBIDDEN);

    drop(b);
    eprintln!("dashboard test: screenshots in {} ({:.1} s)", shots.display(), started.elapsed().as_secs_f64());
}
