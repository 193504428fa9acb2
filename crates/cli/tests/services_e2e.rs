//! The two services as real processes on loopback: `imasnap agent run` and
//! `imasnap verifier run`, driven through `imasnap verifier host …` and the agent's API.
//!
//! - several rounds with snapshots in between (soft TPM and swtpm);
//! - verifier killed (SIGKILL) and restarted: it resumes from SQLite without full replay;
//! - agent crash in the middle of a snapshot, then the next round verifies;
//! - agent process restart = cold boot of the embedded kernel model: detected, state reset;
//! - a policy violation names the record; the scheduler polls on its own;
//! - clients without a certificate are refused.
//!
//! The swtpm test fails when IMASNAP_SWTPM is unset (scripts/test.sh sets it), unless
//! IMASNAP_SKIP_SWTPM=1.

use imasnap_agent_server::devpki::{write_dev_pki, DevPkiFiles};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{start_service, Proc};

struct Env {
    t: tempfile::TempDir,
    pki: DevPkiFiles,
    /// `database =` and more verifier.toml lines; `None`: SQLite in the temporary directory.
    db: Option<String>,
}

impl Env {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let pki = write_dev_pki(&t.path().join("pki"), &["localhost"]).unwrap();
        Self { t, pki, db: None }
    }
    fn p(&self, n: &str) -> PathBuf {
        self.t.path().join(n)
    }
    /// An agent with `extra` top-level settings (e.g. `interface = "staging"`).
    /// The kernel model unless `extra` names a `backend` (the default is the real machine).
    fn agent_with(&self, tpm: &str, extra: &str) -> Proc {
        let backend = if extra.contains("backend") { "" } else { "backend = \"model\"\n" };
        let cfg = format!(
            "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\n{backend}tpm = {tpm:?}\ntest_endpoints = true\ntick_ms = 100\n{extra}\n\
             [tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            self.p("agent-state"),
            self.pki.agent.cert,
            self.pki.agent.key,
            self.pki.ca
        );
        std::fs::write(self.p("agent.toml"), cfg).unwrap();
        let c = self.p("agent.toml");
        start_service(&["agent", "run", "--config", c.to_str().unwrap(), "--log-json"], &self.p("agent.log"))
    }
    fn verifier(&self) -> Proc {
        let db = self.db.clone().unwrap_or_else(|| format!("database = {:?}", self.p("verifier.db")));
        common::start_verifier(self.t.path(), &self.pki, &db)
    }
    /// `imasnap verifier <args> --json` against `v`; returns (exit code, JSON).
    fn cli(&self, v: &Proc, args: &[&str]) -> (i32, serde_json::Value) {
        let port = v.addr.rsplit(':').next().unwrap();
        let o = Command::new(common::imasnap_bin())
            .arg("verifier")
            .args(args)
            .args(["--json", "--api", &format!("https://localhost:{port}")])
            .env("IMASNAP_CERT", &self.pki.admin.cert)
            .env("IMASNAP_KEY", &self.pki.admin.key)
            .env("IMASNAP_CA", &self.pki.ca)
            .output()
            .unwrap();
        let v = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&o.stderr).into()));
        (o.status.code().unwrap_or(-1), v)
    }
    /// A call to the agent's API with the admin certificate.
    fn agent_call(&self, a: &Proc, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let port = a.addr.rsplit(':').next().unwrap();
        let c = imasnap_verifier_service::client::ApiClient::new(
            &format!("localhost:{port}"),
            self.pki.admin.client().unwrap(),
        );
        let m = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        rt.block_on(c.ok(m, path, body)).unwrap()
    }
    fn attest(&self, v: &Proc) -> serde_json::Value {
        let (code, r) = self.cli(v, &["host", "attest", "h1"]);
        assert!(code == 0 || code == 1, "{r}");
        r
    }
}

fn verified(r: &serde_json::Value) {
    assert_eq!(r["verdict"], "verified", "{r}");
}

fn scenario(tpm: &str, restart_agent: bool) {
    scenario_with(tpm, restart_agent, "", "model")
}

/// Evidence bytes the agent has sent so far.
fn evidence_bytes(env: &Env, agent: &Proc) -> u64 {
    env.agent_call(agent, "GET", "/v1/health", None)["metrics"]["evidence_bytes"].as_u64().unwrap()
}

fn scenario_with(tpm: &str, restart_agent: bool, extra: &str, mode: &str) {
    scenario_on(Env::new(), tpm, restart_agent, extra, mode)
}

fn scenario_on(env: Env, tpm: &str, restart_agent: bool, extra: &str, mode: &str) {
    let mut agent = env.agent_with(tpm, extra);
    assert_eq!(env.agent_call(&agent, "GET", "/v1/health", None)["mode"], mode);
    let mut ver = env.verifier();
    let port = agent.addr.rsplit(':').next().unwrap().to_string();
    let (code, h) = env.cli(
        &ver,
        &[
            "host",
            "add",
            "h1",
            "--address",
            &format!("127.0.0.1:{port}"),
            "--server-name",
            "localhost",
            "--tofu",
            "--simulated",
            "--poll-interval-ms",
            "3600000",
        ],
    );
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["status"], "pending");

    // Rounds with snapshots in between.
    env.agent_call(&agent, "POST", "/v1/test/records?count=60", None);
    let r1 = env.attest(&ver);
    verified(&r1);
    // The scheduler may have run the first round (FullHistory) right at registration.
    let first = env.cli(&ver, &["host", "verdicts", "h1", "--limit", "100"]).1;
    assert_eq!(first["verdicts"].as_array().unwrap().last().unwrap()["mode"], "full_history", "{first}");
    for _ in 0..3 {
        env.agent_call(&agent, "POST", "/v1/test/records?count=40", None);
        env.agent_call(&agent, "POST", "/v1/snapshots", None);
        env.agent_call(&agent, "POST", "/v1/test/records?count=10", None);
        let r = env.attest(&ver);
        verified(&r);
        assert_eq!(r["mode"], "incremental", "{r}");
    }
    let metrics = env.agent_call(&agent, "GET", "/v1/health", None);
    assert_eq!(metrics["metrics"]["snapshots"], 3, "{metrics}");

    // The verifier is killed and restarted: it resumes from its database.
    let before = env.cli(&ver, &["host", "show", "h1"]).1;
    drop(ver);
    ver = env.verifier();
    let after = env.cli(&ver, &["host", "show", "h1"]).1;
    assert_eq!(before["checkpoint"], after["checkpoint"]);
    env.agent_call(&agent, "POST", "/v1/test/records?count=5", None);
    let sent = evidence_bytes(&env, &agent);
    let r = env.attest(&ver);
    verified(&r);
    assert_eq!(r["mode"], "incremental", "{r}");
    assert!(r["records_replayed"].as_u64().unwrap() <= 6, "resumed without full replay: {r}");
    // Only the records after the verifier's checkpoint travel (suffix evidence), not the
    // segment holding it: ~5 records of ~100 bytes, not the ~200 of the history.
    let round = evidence_bytes(&env, &agent) - sent;
    assert!(round < 2_000, "a round after 5 new records sent {round} bytes of log");

    // The agent crashes in the middle of a snapshot; the next round verifies.
    env.agent_call(&agent, "POST", "/v1/test/records?count=20", None);
    let c = env.agent_call(&agent, "POST", "/v1/snapshots?crash_at=AfterRename", None);
    assert_eq!(c["restarted"], true, "{c}");
    env.agent_call(&agent, "POST", "/v1/test/records?count=20", None);
    env.agent_call(&agent, "POST", "/v1/snapshots?crash_at=AfterDone", None);
    verified(&env.attest(&ver));

    // Runtime policy: a file not in it is flagged, naming the record.
    std::fs::write(env.p("allow.txt"), format!("{}  /usr/bin/ok\n", "ab".repeat(32))).unwrap();
    let pol = env.p("allow.txt");
    let (code, _) = env.cli(&ver, &["host", "update", "h1", "--policy", pol.to_str().unwrap()]);
    assert_eq!(code, 0);
    let m = env.agent_call(&agent, "GET", "/v1/health", None)["metrics"].clone();
    let evil_index = m["next_index"].as_u64().unwrap() + m["live_records"].as_u64().unwrap();
    env.agent_call(
        &agent,
        "POST",
        "/v1/test/measure",
        Some(serde_json::json!({"path": "/opt/evil", "digest": "cd".repeat(32)})),
    );
    env.attest(&ver);
    // The scheduler may have judged the record first (the update made the host due).
    let hist = env.cli(&ver, &["host", "verdicts", "h1", "--limit", "3"]).1;
    let r = hist["verdicts"].as_array().unwrap().iter().find(|v| v["verdict"] == "policy_violation").cloned();
    let r = r.unwrap_or_else(|| panic!("no policy violation in {hist}"));
    assert_eq!(r["record"], evil_index, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("/opt/evil"), "{r}");

    // Clients without a certificate are refused by both services.
    let o = Command::new(common::imasnap_bin())
        .args([
            "verifier",
            "host",
            "list",
            "--api",
            &format!("https://localhost:{}", ver.addr.rsplit(':').next().unwrap()),
        ])
        .args(["--ca", env.pki.ca.to_str().unwrap()])
        .env_remove("IMASNAP_CERT")
        .env_remove("IMASNAP_KEY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "no client certificate: refused before any request");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let anon = imasnap_agent_server::tls::client_config(
        None,
        imasnap_agent_server::tls::roots_from_file(&env.pki.ca).unwrap(),
    )
    .unwrap();
    for addr in [&agent.addr, &ver.addr] {
        let c = imasnap_verifier_service::client::ApiClient::new(
            &format!("localhost:{}", addr.rsplit(':').next().unwrap()),
            anon.clone(),
        );
        assert!(
            rt.block_on(c.call(hyper::Method::GET, "/v1/health", None)).is_err(),
            "{addr} served a client without a certificate"
        );
    }

    // The scheduler polls by itself.
    let (code, _) = env.cli(&ver, &["host", "update", "h1", "--poll-interval-ms", "200"]);
    assert_eq!(code, 0);
    let n0 = env.cli(&ver, &["host", "show", "h1"]).1["rounds"].as_u64().unwrap();
    let t0 = Instant::now();
    loop {
        let n = env.cli(&ver, &["host", "show", "h1"]).1["rounds"].as_u64().unwrap();
        if n >= n0 + 3 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "scheduler did not poll");
        std::thread::sleep(Duration::from_millis(200));
    }

    if restart_agent {
        // An agent process restart is a cold boot of the embedded machine (soft TPM):
        // the verifier sees a new resetCount and starts over from record 0.
        let (code, _) = env.cli(&ver, &["host", "update", "h1", "--poll-interval-ms", "3600000", "--no-policy"]);
        assert_eq!(code, 0);
        drop(agent);
        agent = env.agent_with(tpm, extra);
        let port2 = agent.addr.rsplit(':').next().unwrap().to_string();
        let (code, out) = env.cli(&ver, &["host", "update", "h1", "--address", &format!("127.0.0.1:{port2}")]);
        assert_eq!(code, 0, "{out}");
        env.agent_call(&agent, "POST", "/v1/test/records?count=10", None);
        let r = env.attest(&ver);
        verified(&r);
        // The scheduler may have run the first round after the address change itself.
        let hist = env.cli(&ver, &["host", "verdicts", "h1", "--limit", "3"]).1;
        assert!(hist["verdicts"].as_array().unwrap().iter().any(|v| v["restart"] == "reset_count_changed"), "{hist}");
    }
    let (code, hist) = env.cli(&ver, &["host", "verdicts", "h1", "--limit", "100"]);
    assert_eq!(code, 0);
    assert!(hist["verdicts"].as_array().unwrap().len() >= 8, "{hist}");
    drop(agent);
}

#[test]
fn services_on_loopback_with_soft_tpm() {
    scenario("soft:seed=7", true);
}

/// The same scenario with the verifier on PostgreSQL (its own database on the server
/// scripts/test.sh starts). A fixed `replica_id`: the restarted verifier is the same
/// replica and keeps its leases.
#[test]
fn services_on_loopback_with_soft_tpm_on_postgres() {
    if std::env::var("IMASNAP_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        eprintln!("PostgreSQL test skipped: IMASNAP_SKIP_POSTGRES=1");
        return;
    }
    let Ok(base) = std::env::var("IMASNAP_POSTGRES_URL") else {
        panic!(
            "this test needs PostgreSQL: run it through scripts/test.sh, or `D=$(mktemp -d); scripts/postgres.sh start \
             $D 55432` and set IMASNAP_POSTGRES_URL=postgres://imasnap@127.0.0.1:55432/postgres, \
             or set IMASNAP_SKIP_POSTGRES=1 to skip it"
        )
    };
    let name = format!("imasnap_e2e_{}", std::process::id());
    let psql = |q: &str| {
        let o = Command::new("psql").args([base.as_str(), "-X", "-q", "-c", q]).output().unwrap();
        assert!(o.status.success(), "psql {q}: {}", String::from_utf8_lossy(&o.stderr));
    };
    psql(&format!("DROP DATABASE IF EXISTS {name}"));
    psql(&format!("CREATE DATABASE {name}"));
    let head = base.split('?').next().unwrap();
    let url = format!("{}/{name}", &head[..head.rfind('/').unwrap()]);
    let mut env = Env::new();
    env.db = Some(format!("database = {url:?}\nreplica_id = \"e2e\"\nlease = \"5s\""));
    scenario_on(env, "soft:seed=10", true, "", "model");
    psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

/// The same rounds, crashes and restarts on upstream staging (the model's `_staged` files),
/// in both flavours: marker-less cuts, verified across trims.
#[test]
fn services_on_loopback_with_staging_trim() {
    scenario_with("soft:seed=8", false, "interface = \"staging\"\nstaging = \"trim\"", "model-staging");
}

#[test]
fn services_on_loopback_with_staging_stage() {
    scenario_with("soft:seed=9", true, "interface = \"staging\"\nstaging = \"stage\"", "model-staging");
}

#[cfg(feature = "tpm2")]
#[test]
fn services_on_loopback_with_swtpm() {
    let Some(sw) = imasnap_test_support::swtpm::Swtpm::for_test() else { return };
    scenario(&sw.tcti(), false);
}

impl Env {
    /// `imasnap verifier <args>` without --json: (exit code, stdout, stderr).
    fn cli_text(&self, v: &Proc, args: &[&str]) -> (i32, String, String) {
        let port = v.addr.rsplit(':').next().unwrap();
        let o = Command::new(common::imasnap_bin())
            .arg("verifier")
            .args(args)
            .args(["--api", &format!("https://localhost:{port}")])
            .env("IMASNAP_CERT", &self.pki.admin.cert)
            .env("IMASNAP_KEY", &self.pki.admin.key)
            .env("IMASNAP_CA", &self.pki.ca)
            .output()
            .unwrap();
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (o.status.code().unwrap_or(-1), s(&o.stdout), s(&o.stderr))
    }
}

/// Issue 10, finding 3: `host update` sets tofu, agent_cert and server_name; verdict lines
/// carry a time; `host remove` prints one human line (JSON only with --json); JSON output
/// names its format. No agent needed: the attestation round fails to connect.
#[test]
fn finding_3_host_update_flags_verdict_times_and_remove_line() {
    let env = Env::new();
    let ver = env.verifier();
    let (code, h) = env.cli(&ver, &["host", "add", "h1", "--address", "127.0.0.1:1", "--tofu"]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["format"], "imasnap-verifier-host/1", "{h}");
    let ak = env.p("ak.pem");
    std::fs::write(&ak, imasnap_tpm::Tpm::ak_public(&imasnap_tpm::SoftTpm::new(1)).to_pem()).unwrap();
    let (code, h) = env.cli(&ver, &["host", "update", "h1", "--ak", ak.to_str().unwrap()]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["spec"]["tofu"], false, "{h}");
    let cert = env.pki.agent.cert.to_str().unwrap();
    let (code, h) =
        env.cli(&ver, &["host", "update", "h1", "--tofu", "--server-name", "agent.example", "--agent-cert", cert]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["spec"]["tofu"], true, "{h}");
    assert!(h["spec"]["ak"].is_null(), "--tofu forgets the enrolled AK: {h}");
    assert_eq!(h["spec"]["server_name"], "agent.example", "{h}");
    assert!(h["spec"]["agent_cert"].as_str().is_some_and(|c| c.contains("BEGIN CERTIFICATE")), "{h}");
    let (code, h) = env.cli(&ver, &["host", "update", "h1", "--server-name", "", "--no-agent-cert"]);
    assert_eq!(code, 0, "{h}");
    assert!(h["spec"]["server_name"].is_null() && h["spec"]["agent_cert"].is_null(), "{h}");

    let (code, r) = env.cli(&ver, &["host", "attest", "h1"]);
    assert_eq!(code, 1, "{r}");
    let (code, out, err) = env.cli_text(&ver, &["host", "verdicts", "h1"]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().next().unwrap_or_default();
    let ts = line.split_whitespace().next().unwrap_or_default();
    assert!(
        ts.len() == 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
        "verdict line without a UTC time: {out}"
    );
    let (code, v) = env.cli(&ver, &["host", "verdicts", "h1"]);
    assert_eq!(code, 0);
    assert_eq!(v["format"], "imasnap-verifier-verdicts/1");
    assert!(v["verdicts"].as_array().is_some_and(|a| !a.is_empty()), "{v}");

    let (code, out, err) = env.cli_text(&ver, &["host", "remove", "h1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "removed host h1 with its state and verdict history");
    let (code, v) = env.cli(&ver, &["host", "list"]);
    assert_eq!(code, 0);
    assert_eq!(
        (v["format"].as_str(), v["hosts"].as_array().map(Vec::len)),
        (Some("imasnap-verifier-host-list/1"), Some(0))
    );
}

/// Issue 16: a real machine's agent (securityfs back end, a real TPM: swtpm) sends evidence
/// that does not say `simulated`; its host, registered without `--simulated`, verifies.
/// The "kernel" is a directory laid out like securityfs holding the kernel model's list,
/// which the model extended into swtpm's PCR 10 (read-only legacy mode: no snapshot file).
#[cfg(feature = "tpm2")]
#[test]
fn issue16_real_tpm_host_not_simulated_verifies() {
    use imasnap_log::HashAlgo;
    let Some(sw) = imasnap_test_support::swtpm::Swtpm::for_test() else { return };
    let env = Env::new();
    let ima = env.p("ima");
    std::fs::create_dir_all(&ima).unwrap();
    {
        let tpm = imasnap_tpm::open_tpm(&sw.tcti()).unwrap();
        let mut k = imasnap_test_support::kernel::boot_with(imasnap_kernel_model::Config::default(), tpm);
        imasnap_test_support::kernel::measure_files(&mut k, "/usr/bin/f", 0, 40);
        std::fs::write(ima.join("binary_runtime_measurements"), k.binary_measurements(HashAlgo::Sha1)).unwrap();
    } // the TPM connection closes here: swtpm serves one client at a time
    let agent =
        env.agent_with(&sw.tcti(), &format!("backend = \"securityfs\"\nima_dir = {ima:?}\ninterface = \"legacy\""));
    let health = env.agent_call(&agent, "GET", "/v1/health", None);
    assert_eq!(health["mode"], "securityfs-legacy", "{health}");
    let ver = env.verifier();
    let port = agent.addr.rsplit(':').next().unwrap().to_string();
    let (code, h) = env.cli(
        &ver,
        &["host", "add", "h1", "--address", &format!("127.0.0.1:{port}"), "--server-name", "localhost", "--tofu"],
    );
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["spec"]["simulated"], false, "{h}");
    let r = env.attest(&ver);
    verified(&r);
    let (_, text, _) = env.cli_text(&ver, &["host", "list"]);
    assert!(!text.contains("SIMULATED"), "{text}");
}

/// Issue 16: the same kind of host, but the agent runs the kernel model: the CLI's
/// `--simulated` flag is what lets it verify; `host update --simulated false` takes it
/// back and the next round is refused, naming the header field.
#[test]
fn issue16_simulated_flag_through_the_cli() {
    let env = Env::new();
    let agent = env.agent_with("soft", "");
    let ver = env.verifier();
    let port = agent.addr.rsplit(':').next().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let args = ["host", "add", "h1", "--address", &addr, "--server-name", "localhost", "--tofu", "--simulated"];
    let (code, h) = env.cli(&ver, &args);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["spec"]["simulated"], true, "{h}");
    env.agent_call(&agent, "POST", "/v1/test/records?count=10", None);
    verified(&env.attest(&ver));
    let (_, text, _) = env.cli_text(&ver, &["host", "list"]);
    assert!(text.contains("SIMULATED"), "{text}");
    let (code, h) = env.cli(&ver, &["host", "update", "h1", "--simulated", "false"]);
    assert_eq!(code, 0, "{h}");
    let r = env.attest(&ver);
    assert_eq!(r["verdict"], "rejected", "{r}");
    assert_eq!(r["reason"], "simulated_evidence", "{r}");
    assert!(r["detail"].as_str().unwrap().contains("`simulated`"), "{r}");
}

/// Issue 16: `imasnap agent run` with no settings but [tls] is the real machine; on a
/// machine without /dev/tpmrm0 (or without IMA in securityfs) it stops at once with one
/// message naming what is missing and how to choose the simulation explicitly.
#[test]
fn issue16_default_agent_config_names_what_is_missing() {
    let env = Env::new();
    let cfg = env.p("agent-default.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            env.p("st"),
            env.pki.agent.cert,
            env.pki.agent.key,
            env.pki.ca
        ),
    )
    .unwrap();
    let real = std::path::Path::new("/dev/tpmrm0").exists()
        && std::path::Path::new("/sys/kernel/security/ima/binary_runtime_measurements").exists();
    if real {
        eprintln!("this machine has /dev/tpmrm0 and IMA: the default agent would start; nothing to refuse");
        return;
    }
    let o = Command::new(common::imasnap_bin()).args(["agent", "run", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("backend = \"securityfs\" (the default"), "{err}");
    assert!(err.contains("backend = \"model\" and tpm = \"soft\""), "{err}");
    if !std::path::Path::new("/dev/tpmrm0").exists() {
        assert!(err.contains("/dev/tpmrm0 does not exist"), "{err}");
    }
}

/// Issue 16: `host add --ek-activate --ek FINGERPRINT` enrols the agent's AK by EK
/// credential activation (real agent and verifier processes); `host show` says so
/// plainly; a wrong pin leaves the host without a trusted AK and exits 1.
fn ek_activation_scenario(tpm: &str) {
    let env = Env::new();
    let agent = env.agent_with(tpm, "");
    let ver = env.verifier();
    let port = agent.addr.rsplit(':').next().unwrap().to_string();
    let p = env.agent_call(&agent, "GET", "/v1/enrolment", None);
    let ek = imasnap_tpm::EkPublic::from_tpm2b(&hex::decode(p["ek_public"].as_str().unwrap()).unwrap()).unwrap();
    let fpr = ek.fingerprint().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let add = |name: &str, pin: &str| {
        env.cli_text(
            &ver,
            &[
                "host",
                "add",
                name,
                "--address",
                &addr,
                "--server-name",
                "localhost",
                "--simulated",
                "--ek-activate",
                "--ek",
                pin,
            ],
        )
    };
    let (code, out, err) = add("h1", &fpr);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("AK ek_activated") && out.contains("AK proven by EK credential activation"), "{out}");
    assert!(out.contains(&fpr) && out.contains("trusted by pinned"), "{out}");
    let (_, h) = env.cli(&ver, &["host", "show", "h1"]);
    assert_eq!(h["ak_source"], "ek_activated", "{h}");
    assert_eq!(h["spec"]["ak_enrolment"]["ek_fingerprint"], fpr.as_str(), "{h}");
    env.agent_call(&agent, "POST", "/v1/test/records?count=5", None);
    verified(&env.attest(&ver));

    // Another EK pinned: refused, registered without a trusted AK.
    let (code, out, err) = add("h2", &"ab".repeat(32));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("not the EK pinned") && err.contains("host enrol h2"), "{err}");
    let (_, out, _) = env.cli_text(&ver, &["host", "show", "h2"]);
    assert!(out.contains("AK none") && out.contains("waiting for EK credential activation"), "{out}");
    let (code, _, err) = env.cli_text(&ver, &["host", "enrol", "h2"]);
    assert_eq!(code, 1, "{err}");
    // The right pin through `host update` enrols it at once.
    let (code, h) = env.cli(&ver, &["host", "update", "h2", "--ek", &fpr, "--ek-activate"]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["ak_source"], "ek_activated", "{h}");
    assert_eq!(h["spec"]["ek"], fpr.as_str(), "{h}");
    // --tofu takes EK activation back (and says so).
    let (code, h) = env.cli(&ver, &["host", "update", "h2", "--tofu"]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["spec"]["tofu"], true, "{h}");
    assert!(h["spec"]["ek_activate"].is_null() || h["spec"]["ek_activate"] == false, "{h}");
}

#[test]
fn issue16_ek_activation_with_the_soft_tpm() {
    ek_activation_scenario("soft:seed=16");
}

#[cfg(feature = "tpm2")]
#[test]
fn issue16_ek_activation_with_swtpm() {
    let Some(sw) = imasnap_test_support::swtpm::Swtpm::for_test() else { return };
    ek_activation_scenario(&sw.tcti());
}
