//! Keylime's own verifier code (PyPI `keylime` 7.14.3, in the venv of
//! scripts/keylime-venv.sh) attests an imasnap agent through its Keylime API
//! (`[keylime] enabled = true`) over mutual TLS: the kernel model with snapshots (RFC
//! cuts with markers, and upstream staging), the soft TPM and swtpm (tss-esapi). tests/keylime/keylime_verifier.py sends the verifier's
//! request and runs `cloud_verifier_common.process_quote_response` on the answer, keeping
//! Keylime's incremental state between rounds; it reimplements nothing.
//!
//! Accepted: entry 0, then an entry in the middle of a snapshot taken since, then an empty
//! list. Rejected: a snapshot record rewritten on disk (the manifest's sha256 fixed, as an
//! attacker on the host would; the running agent refuses it by itself, a restarted one
//! serves it and Keylime's replay fails), incrementally and by a fresh verifier; a list
//! edited in transit; a quote checked against another nonce.
//!
//! The tests fail when IMASNAP_KEYLIME_PYTHON is unset unless IMASNAP_SKIP_KEYLIME=1
//! (and the swtpm one when IMASNAP_SWTPM is unset unless IMASNAP_SKIP_SWTPM=1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use base64ct::{Base64, Encoding as _};
use imasnap_agent_server::config::AgentServiceConfig;
use imasnap_agent_server::devpki::write_dev_pki;
use imasnap_agent_server::service::{self, SharedHost};
use imasnap_log::{BinaryReader, HashAlgo};
use imasnap_policy::create::{CreateOptions, Creator};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use imasnap_test_support::keylime::python as keylime_python;

/// The Keylime verifier process: one JSON command in, one JSON answer out.
struct Verifier {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Verifier {
    fn round(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        eprintln!("{cmd} -> {}", line.trim_end());
        serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = self.child.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err);
            panic!("the Keylime script failed: {line:?}\n{err}")
        })
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    running: Option<service::Running>,
    host: SharedHost,
    files: u64,
}

impl Env {
    fn start(tpm: &str, extra: &str) -> (Self, PathBuf, imasnap_agent_server::devpki::DevPkiFiles, u16) {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
        // The simulated machine, named explicitly (the defaults are the real one).
        let cfg = AgentServiceConfig::from_toml(&format!(
            "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\nbackend = \"model\"\ntpm = {tpm:?}\n{extra}\n[keylime]\nenabled = true\n\
             [tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            dir.join("agent-state"),
            pki.agent.cert,
            pki.agent.key,
            pki.agent.ca
        ))
        .unwrap();
        let mut serve = service::Serve::from_config(&cfg);
        serve.tick = std::time::Duration::ZERO;
        assert!(serve.keylime.enabled);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let host = service::open_host(&cfg).unwrap();
        let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let running = {
            let _g = rt.enter();
            service::spawn(l, cfg.tls.server().unwrap(), host, serve).unwrap()
        };
        let port = running.addr.port();
        let host = running.service.clone();
        let env = Self { _dir: d, rt, running: Some(running), host, files: 0 };
        (env, dir, pki, port)
    }

    /// Measures `n` new files (`/usr/bin/tool-N`, its digest a hash of the name).
    fn measure(&mut self, n: u64) {
        for _ in 0..n {
            let path = tool(self.files);
            self.files += 1;
            let digest = HashAlgo::Sha256.hash(&[path.as_bytes()]);
            assert!(self.host.lock().unwrap().measure(path.as_bytes(), digest.as_bytes(), None).unwrap());
        }
    }

    fn snapshot(&self) {
        self.host.lock().unwrap().snapshot(None).unwrap().expect("snapshot taken");
    }

    /// The agent process dies while writing a cut and a new one recovers from what is on disk
    /// (the kernel model keeps running: no reboot).
    fn restart_agent(&self) {
        let r = self.host.lock().unwrap().snapshot(Some(imasnap_agent::CrashPoint::DuringTmpWrite)).unwrap();
        assert!(r.is_none(), "the agent crashed and restarted");
    }

    /// Rewrites the file digest of one record (index `at`) of the snapshot holding it,
    /// with its SHA-1 template digest recomputed and the manifest's sha256 fixed: what an
    /// attacker with root on the host can do to the files. Returns the snapshot's seq.
    fn tamper(&self, at: u64) -> u64 {
        let m = self.host.lock().unwrap().manifest().unwrap();
        let s = m.snapshots.iter().find(|s| s.first_index <= at && at < s.end_index()).expect("a snapshot holds it");
        let (path, _) = self.host.lock().unwrap().snapshot_file(s.seq).unwrap();
        let mut b = std::fs::read(&path).unwrap();
        let mut rd = BinaryReader::starting_at(&b[..], imasnap_store::snapshot_format(), s.first_index);
        let mut start = 0;
        while rd.next_index() < at {
            rd.next().unwrap().unwrap();
            start = rd.offset() as usize;
        }
        let rec = rd.next().unwrap().unwrap();
        assert_eq!(rec.template.name(), "ima-ng");
        assert!(rec.template_data.windows(14).any(|w| w == b"/usr/bin/tool-"), "record {at} is a file record");
        // pcr, digest[20], name length, "ima-ng", data length: then the template data.
        let data = start + 4 + 20 + 4 + 6 + 4;
        let dlen = u32::from_le_bytes(b[data - 4..data].try_into().unwrap()) as usize;
        // d-ng: field length, "sha256:\0", the file digest.
        let digest = data + 4 + 8;
        assert_eq!(&b[digest - 8..digest], b"sha256:\0");
        b[digest] ^= 0x01;
        let sha1 = HashAlgo::Sha1.hash(&[&b[data..data + dlen]]);
        b[start + 4..start + 24].copy_from_slice(sha1.as_bytes());
        std::fs::write(&path, &b).unwrap();
        let mp = path.parent().unwrap().join(imasnap_store::layout::MANIFEST);
        let mut mj: serde_json::Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
        let sha = hex::encode(HashAlgo::Sha256.hash(&[&b]).as_bytes());
        for e in mj["snapshots"].as_array_mut().unwrap() {
            if e["seq"] == s.seq {
                e["sha256"] = serde_json::Value::String(sha.clone());
            }
        }
        std::fs::write(&mp, serde_json::to_vec_pretty(&mj).unwrap()).unwrap();
        s.seq
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}

fn tool(i: u64) -> String {
    format!("/usr/bin/tool-{i}")
}

/// The runtime policy of files 0..n, made as `imasnap policy create --rootfs` makes it
/// (imasnap-policy's Creator), with the excludes an RFC host needs.
fn write_policy(p: &Path, n: u64) {
    let mut c = Creator::new(CreateOptions::default());
    // The cut markers of the RFC kernel (and the model) are in no file tree; the model's
    // boot_aggregate over its fresh PCRs is not what this test is about.
    c.add_excludes(&["^snapshot_aggregate$", "^boot_aggregate$"]).unwrap();
    c.set_log_hash_alg(HashAlgo::Sha1);
    for i in 0..n {
        let path = tool(i);
        c.add_file(path.as_bytes(), HashAlgo::Sha256.hash(&[path.as_bytes()]).as_bytes()).unwrap();
    }
    let (policy, _) = c.finish(None).unwrap();
    std::fs::write(p, serde_json::to_vec_pretty(&policy.to_keylime_json()).unwrap()).unwrap();
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keylime/keylime_verifier.py")
}

fn accepted(r: &serde_json::Value) {
    assert_eq!(r["accepted"], true, "Keylime rejected: {r}");
}

fn rejected_with(r: &serde_json::Value, event: &str) {
    assert_eq!(r["accepted"], false, "Keylime accepted: {r}");
    let ids: Vec<&str> = r["events"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    assert!(ids.iter().any(|i| i.contains(event)), "expected a {event} failure, got {ids:?}: {r}");
}

fn scenario(py: &Path, tpm: &str, ak_tpm2b: Vec<u8>, extra: &str) {
    let (mut env, dir, pki, port) = Env::start(tpm, extra);
    // ≥ 5 snapshots, then a live tail.
    for _ in 0..5 {
        env.measure(12);
        env.snapshot();
    }
    env.measure(7);
    let policy = dir.join("policy.json");
    // Every file the test will measure is in the policy from the start.
    write_policy(&policy, env.files + 40);
    let ak = dir.join("ak.b64");
    std::fs::write(&ak, Base64::encode_string(&ak_tpm2b)).unwrap();
    let child = Command::new(py)
        .arg(script())
        .args(["--url", &format!("https://localhost:{port}")])
        .arg("--ca")
        .arg(&pki.verifier.ca)
        .arg("--cert")
        .arg(&pki.verifier.cert)
        .arg("--key")
        .arg(&pki.verifier.key)
        .arg("--ak")
        .arg(&ak)
        .arg("--policy")
        .arg(&policy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Keylime venv's python");
    let mut child = child;
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut v = Verifier { child, stdin, stdout };
    edges(&env, &pki, port);
    let round = serde_json::json!({ "op": "round" });
    // The tenant's check of the identity quote, before it hands the host to the verifier.
    accepted(&v.round(serde_json::json!({ "op": "identity" })));

    // Round 1: the whole stitched log from entry 0, the key sent (partial=0).
    let r1 = v.round(round.clone());
    accepted(&r1);
    assert_eq!((r1["requested_entry"].as_u64(), r1["returned_entry"].as_u64()), (Some(0), Some(0)), "{r1}");
    assert_eq!(r1["has_pubkey"], true);
    let n1 = r1["next_entry"].as_u64().unwrap();
    assert!(n1 >= 5 * 12 + 7, "{r1}");

    // Between rounds the host measures and cuts: Keylime's next entry is now inside a
    // snapshot, and the agent serves it from that file.
    env.measure(9);
    env.snapshot();
    env.measure(4);
    let m = env.host.lock().unwrap().manifest().unwrap();
    let last = m.snapshots.last().unwrap();
    assert!(last.first_index < n1 && n1 < last.end_index(), "entry {n1} is in the middle of snapshot {last:?}");
    let r2 = v.round(round.clone());
    accepted(&r2);
    assert_eq!((r2["requested_entry"].as_u64(), r2["returned_entry"].as_u64()), (Some(n1), Some(n1)), "{r2}");
    assert_eq!(r2["has_pubkey"], false, "partial=1 once the verifier holds the key");
    let n2 = r2["next_entry"].as_u64().unwrap();
    assert_eq!(r2["lines"].as_u64().unwrap(), n2 - n1, "{r2}");

    // Nothing new: an empty list at the end is accepted.
    let r3 = v.round(round.clone());
    accepted(&r3);
    assert_eq!(r3["lines"].as_u64(), Some(0), "{r3}");

    // In transit: the list edited, then the quote checked against another nonce.
    env.measure(3);
    rejected_with(&v.round(serde_json::json!({ "op": "round", "tamper": "list" })), "pcr_mismatch");
    rejected_with(&v.round(serde_json::json!({ "op": "round", "tamper": "nonce", "fresh": true })), "quote_validation");

    // Every PCR but 23 in the mask: 23 PCRs with PCR 16, three TPML_DIGESTs in the blob.
    let wide = v.round(serde_json::json!({ "op": "round", "fresh": true, "mask": "0x7fffff" }));
    accepted(&wide);
    // A tpm_policy value for PCR 0 (fresh PCRs: zero): the quoted value is what is checked.
    let zero = "00".repeat(32);
    let pcr0 = |v: &str| serde_json::json!({ "op": "round", "fresh": true, "mask": "0x401", "pcrs": { "0": [v] } });
    accepted(&v.round(pcr0(&zero)));
    rejected_with(&v.round(pcr0(&"11".repeat(32))), "invalid_pcr_0");
    // A fresh verifier accepts the host as it is…
    let r4 = v.round(serde_json::json!({ "op": "round", "fresh": true }));
    accepted(&r4);
    let n4 = r4["next_entry"].as_u64().unwrap();
    // …then records arrive and are cut, and one of them is rewritten on disk before the
    // verifier has seen it: the incremental round rejects it, and so does a fresh one.
    env.measure(10);
    env.snapshot();
    env.measure(2);
    env.tamper(n4 + 4);
    // The running agent holds the manifest it wrote: it refuses to serve the file.
    let r5 = v.round(round.clone());
    assert_eq!(r5["http"], 500, "{r5}");
    assert!(r5["error"].as_str().unwrap().contains("does not match the manifest"), "{r5}");
    // Restarted, it reads the attacker's manifest; now Keylime's replay has to catch it.
    env.restart_agent();
    rejected_with(&v.round(round.clone()), "pcr_mismatch");
    rejected_with(&v.round(serde_json::json!({ "op": "round", "fresh": true })), "pcr_mismatch");
}

/// One GET over mTLS with `who`'s certificate: status and JSON body.
fn get(env: &Env, who: &imasnap_agent_server::tls::TlsFiles, port: u16, path: &str) -> (u16, serde_json::Value) {
    use imasnap_agent_server::{http::Conn, tls};
    env.rt.block_on(async {
        let t = std::time::Duration::from_secs(30);
        let addr = format!("127.0.0.1:{port}");
        let mut c =
            Conn::connect(&addr, tls::server_name("localhost").unwrap(), who.client().unwrap(), t).await.unwrap();
        let (st, b) = c.request(hyper::Method::GET, path, None, 64 << 20, t).await.unwrap();
        (st.as_u16(), serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null))
    })
}

/// The API's edges over the wire: versions, refusals in Keylime's envelope, roles, an
/// identity quote, an entry past the end.
fn edges(env: &Env, pki: &imasnap_agent_server::devpki::DevPkiFiles, port: u16) {
    let v = &pki.verifier;
    let (st, b) = get(env, v, port, "/version");
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["results"]["supported_versions"], serde_json::json!(["2.1", "2.2"]));
    assert_eq!(b["results"]["supported_version"], "2.2");
    for (path, why) in [
        ("/v2.2/quotes/integrity?nonce=abc&mask=0x1000000&partial=0", "selects PCR 24"),
        ("/v2.2/quotes/integrity?nonce=a-c&mask=0x400&partial=0", "alphanumeric"),
        ("/v2.2/quotes/integrity?nonce=abc&mask=0x400&partial=0&ima_ml_entry=99999999999999999999", "below 2^64"),
        ("/v2.2/quotes/integrity?nonce=abc&mask=0x400", "partial"),
        ("/v2.7/quotes/integrity?nonce=abc&mask=0x400&partial=0", "API version not supported"),
    ] {
        let (st, b) = get(env, v, port, path);
        assert_eq!(st, 400, "{path}: {b}");
        assert_eq!(b["code"], 400, "{b}");
        assert!(b["status"].as_str().unwrap().contains(why), "{path}: {b}");
    }
    assert_eq!(get(env, v, port, "/v2.2/keys/pubkey").0, 404);
    // A metrics scraper may not ask for quotes.
    assert_eq!(get(env, &pki.reader, port, "/v2.2/quotes/integrity?nonce=abc&mask=0x400&partial=0").0, 403);
    // Past the end: the whole list from 0, as the rust-keylime agent answers.
    let (st, b) = get(env, v, port, "/v2.2/quotes/integrity?nonce=abc&mask=0x400&partial=1&ima_ml_entry=1000000");
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["results"]["ima_measurement_list_entry"], 0);
    assert!(b["results"]["ima_measurement_list"].as_str().unwrap().starts_with("10 "));
    assert!(b["results"].get("pubkey").is_none());
    let (st, b) = get(env, v, port, "/v2.1/quotes/identity?nonce=abc");
    assert_eq!(st, 200, "{b}");
    assert!(b["results"]["pubkey"].as_str().unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(b["results"].get("ima_measurement_list").is_none());
    assert!(b["results"]["quote"].as_str().unwrap().starts_with('r'));
}

fn soft_ak() -> Vec<u8> {
    use imasnap_tpm::Tpm as _;
    imasnap_tpm::SoftTpm::new(0).ak_public().public_area().unwrap().to_tpm2b()
}

#[test]
fn keylime_verifier_accepts_and_rejects_soft_tpm() {
    let Some(py) = keylime_python() else { return };
    scenario(&py, "soft", soft_ak(), "");
}

/// Upstream staging's cut (no marker records) on the model: the same offsets hold.
#[test]
fn keylime_verifier_accepts_and_rejects_staging() {
    let Some(py) = keylime_python() else { return };
    scenario(&py, "soft", soft_ak(), "interface = \"staging\"");
}

#[test]
fn keylime_verifier_accepts_and_rejects_swtpm() {
    let Some(py) = keylime_python() else { return };
    let Some(sw) = imasnap_test_support::swtpm::Swtpm::for_test() else { return };
    // What Keylime's registrar would hold: the AK read before the agent starts (the
    // same primary is created again from the endorsement seed).
    let ak = {
        let t = imasnap_tpm::open_tpm(&sw.tcti()).unwrap_or_else(|e| {
            panic!("{e}: this test needs the tss-esapi back end (cargo feature imasnap-tpm/esapi)")
        });
        t.ak_public().public_area().unwrap().to_tpm2b()
    };
    scenario(&py, &sw.tcti(), ak, "");
}

/// A list above `max_evidence_bytes` is refused (413, in Keylime's envelope) rather than
/// cut short: a truncated list could never reach the quoted PCR 10.
#[test]
fn keylime_list_above_the_limit_is_413() {
    let (mut env, _dir, pki, port) = Env::start("soft", "max_evidence_bytes = 4000");
    env.measure(40);
    let q = "/v2.2/quotes/integrity?nonce=abc&mask=0x400&partial=1&ima_ml_entry=";
    let (st, b) = get(&env, &pki.verifier, port, &format!("{q}0"));
    assert_eq!(st, 413, "{b}");
    assert_eq!(b["code"], 413);
    assert!(b["status"].as_str().unwrap().contains("max_evidence_bytes (4000)"), "{b}");
    // The last few records fit.
    let (st, b) = get(&env, &pki.verifier, port, &format!("{q}38"));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["results"]["ima_measurement_list"].as_str().unwrap().lines().count(), 3);
}
