//! Issue 10, service side: roles on the API (finding 4), damaged rows that neither stop the
//! start nor hide a host (5), limits and validation (8), no Debug text in JSON and a
//! `format` field (12), the PATCH fields SERVICES.md documents (3).
//!
//! Everything over real HTTPS with mutual TLS on loopback: the in-process agent (kernel
//! model, soft TPM) and the verifier with its SQLite database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent_server::config::AgentServiceConfig;
use imasnap_agent_server::devpki::{DevCa, DevPkiFiles};
use imasnap_agent_server::http::{self, Body, Handler, Peer};
use imasnap_agent_server::tls::{self, Role, TlsFiles};
use imasnap_agent_server::{api, service as agent};
use imasnap_verifier_service::client::ApiClient;
use imasnap_verifier_service::model::{HostState, LateJoin, Verdict};
use imasnap_verifier_service::service::Running;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

mod common;
use common::{start_agent, start_verifier, tofu_host as spec};

/// A PKI with every role, and a certificate from the same CA with no role.
struct Pki {
    files: DevPkiFiles,
    none: TlsFiles,
}

fn pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ca = DevCa::new("test CA").unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let mk = |who: &str, role: Option<Role>| {
        let l = ca.leaf_with_role(who, &["localhost", "127.0.0.1"], role).unwrap();
        let (cert, key) = l.write(dir, who).unwrap();
        TlsFiles { cert, key, ca: ca_path.clone() }
    };
    Pki {
        files: DevPkiFiles {
            ca: ca_path.clone(),
            agent: mk("agent", Some(Role::Agent)),
            verifier: mk("verifier", Some(Role::Verifier)),
            admin: mk("admin", Some(Role::Admin)),
            reader: mk("reader", Some(Role::Reader)),
        },
        none: mk("none", None),
    }
}

struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    pki: Pki,
    acfg: AgentServiceConfig,
    agent: agent::Running,
    verifier: Option<Running>,
}

fn agent_cfg(dir: &Path, p: &DevPkiFiles) -> AgentServiceConfig {
    common::agent_cfg(dir, &p.agent, "test_endpoints = true")
}

impl Env {
    /// Agent, verifier, hosts `h1` and `h2` (both the same agent), each verified once.
    async fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let pki = pki(&dir.join("pki"));
        let acfg = agent_cfg(&dir, &pki.files);
        let a = start_agent(&acfg).await;
        let v = start_verifier(&dir, &pki.files).await;
        let env = Self { _dir: d, dir, pki, acfg, agent: a, verifier: Some(v) };
        env.agent.service.lock().unwrap().add_records(30).unwrap();
        for h in ["h1", "h2"] {
            env.v().add_host(spec(h, &env.agent.addr.to_string())).await.unwrap();
            assert_eq!(env.v().attest_now(h).await.unwrap().verdict, Verdict::Verified);
        }
        env
    }

    fn v(&self) -> &Arc<imasnap_verifier_service::Verifier> {
        &self.verifier.as_ref().unwrap().service
    }

    fn addr(&self) -> String {
        self.verifier.as_ref().unwrap().addr.to_string()
    }

    fn client(&self, who: &TlsFiles) -> ApiClient {
        let mut c = ApiClient::new(&self.addr(), who.client().unwrap());
        c.server_name = "localhost".into();
        c
    }

    async fn call(&self, who: &TlsFiles, m: hyper::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, v) = self.client(who).call(m, path, body).await.unwrap();
        (s.as_u16(), v)
    }

    async fn restart_verifier(&mut self) {
        self.verifier.take().unwrap().stop().await;
        self.verifier = Some(start_verifier(&self.dir, &self.pki.files).await);
    }

    fn sql(&self, s: &str) {
        let c = rusqlite::Connection::open(self.dir.join("verifier.db")).unwrap();
        let n = c.execute(s, []).unwrap();
        assert!(n > 0, "{s} changed nothing");
    }
}

/// One raw HTTP/1.1 request over mutual TLS (to send what the client kit never would):
/// the status and the whole answer as text.
async fn raw(addr: &str, who: &TlsFiles, head: &str, body: &[u8]) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cfg = who.client().unwrap();
    let mut s =
        tokio_rustls::TlsConnector::from(cfg).connect(tls::server_name("localhost").unwrap(), tcp).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"\r\n").await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_each_role_refused_exactly_where_it_should_be() {
    let env = Env::new().await;
    let p = &env.pki.files;
    let h2_before = env.v().host_status("h2").unwrap().spec;
    let reads = ["/v1/health", "/v1/hosts", "/v1/hosts/h1", "/v1/hosts/h1/verdicts?limit=3", "/metrics"];
    let new_host = json!({ "name": "h9", "address": "127.0.0.1:1", "tofu": true });
    let writes: Vec<(hyper::Method, &str, Option<Value>)> = vec![
        (hyper::Method::POST, "/v1/hosts", Some(new_host.clone())),
        (hyper::Method::PATCH, "/v1/hosts/h2", Some(json!({ "poll_interval_ms": 5000 }))),
        (hyper::Method::POST, "/v1/hosts/h2/attest", None),
        (hyper::Method::POST, "/v1/hosts/h2/reset", None),
        (hyper::Method::DELETE, "/v1/hosts/h2", None),
    ];
    // Agent, verifier and role-less certificates: refused on every route.
    for who in [&p.agent, &p.verifier, &env.pki.none] {
        for r in reads {
            let (s, b) = env.call(who, hyper::Method::GET, r, None).await;
            assert_eq!(s, 403, "{} GET {r}: {b}", who.cert.display());
        }
        for (m, r, b) in &writes {
            let (s, a) = env.call(who, m.clone(), r, b.clone()).await;
            assert_eq!(s, 403, "{} {m} {r}: {a}", who.cert.display());
        }
    }
    let (_, why) = env.call(&env.pki.none, hyper::Method::GET, "/v1/hosts", None).await;
    assert!(why["error"].as_str().unwrap().contains("no role"), "{why}");
    // The attack: an attested host's agent certificate re-registers another host.
    let (s, _) = env
        .call(
            &p.agent,
            hyper::Method::PATCH,
            "/v1/hosts/h2",
            Some(json!({ "address": "127.0.0.1:9", "ak": "00", "tofu": true })),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(env.v().host_status("h2").unwrap().spec, h2_before, "h2 unchanged");
    // Reader: every read, no write.
    for r in reads {
        let (s, b) = env.call(&p.reader, hyper::Method::GET, r, None).await;
        assert_eq!(s, 200, "reader GET {r}: {b}");
    }
    for (m, r, b) in &writes {
        let (s, a) = env.call(&p.reader, m.clone(), r, b.clone()).await;
        assert_eq!(s, 403, "reader {m} {r}: {a}");
        assert!(a["error"].as_str().unwrap().contains("read-only"), "{a}");
    }
    assert_eq!(env.v().host_status("h2").unwrap().spec, h2_before, "h2 unchanged");
    // Admin: everything.
    for r in reads {
        assert_eq!(env.call(&p.admin, hyper::Method::GET, r, None).await.0, 200);
    }
    let expect = [201, 200, 200, 200, 200];
    for ((m, r, b), want) in writes.iter().zip(expect) {
        let (s, a) = env.call(&p.admin, m.clone(), r, b.clone()).await;
        assert_eq!(s, want, "admin {m} {r}: {a}");
    }
    assert!(env.v().host_status("h2").is_none(), "the admin removed h2");
}

/// The agent's own API: the verifier (and an operator) may call it; a scraper sees health
/// and metrics; another host's agent certificate, or one without a role, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_the_agent_api_checks_roles_too() {
    let env = Env::new().await;
    let p = &env.pki.files;
    let a = env.agent.addr.to_string();
    let nonce = hex::encode([3u8; 32]);
    let evidence = format!("GET /v1/evidence?nonce={nonce}&from=0 HTTP/1.1");
    let routes: [(&str, &str); 7] = [
        ("GET /v1/health HTTP/1.1", "health"),
        ("GET /v1/metrics HTTP/1.1", "metrics"),
        ("GET /metrics HTTP/1.1", "metrics at the scrapers' default path"),
        (evidence.as_str(), "evidence"),
        ("GET /v1/snapshots HTTP/1.1", "snapshots"),
        ("POST /v1/snapshots HTTP/1.1", "snapshot"),
        ("POST /v1/test/records?count=1 HTTP/1.1", "records"),
    ];
    let cases: [(&TlsFiles, &str, [u16; 7]); 5] = [
        (&p.verifier, "verifier", [200; 7]),
        (&p.admin, "admin", [200; 7]),
        (&p.reader, "reader", [200, 200, 200, 403, 403, 403, 403]),
        (&p.agent, "agent", [403; 7]),
        (&env.pki.none, "none", [403; 7]),
    ];
    for (who, name, want) in cases {
        for ((line, route), want) in routes.iter().zip(want) {
            env.agent.service.lock().unwrap().add_records(1).unwrap();
            let head = format!("{line}\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n");
            let (s, text) = raw(&a, who, &head, b"").await;
            assert_eq!(s, want, "{name} {route}: {text}");
        }
    }
    let head = "GET /v1/health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n";
    let (_, text) = raw(&a, &p.agent, head, b"").await;
    assert!(text.contains("role agent is not a client"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_4_snapshot_requests_to_an_agent_are_rate_limited() {
    let env = Env::new().await;
    let a = env.agent.addr.to_string();
    let head = "POST /v1/snapshots HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n";
    let mut statuses = Vec::new();
    for _ in 0..11 {
        env.agent.service.lock().unwrap().add_records(2).unwrap();
        statuses.push(raw(&a, &env.pki.files.verifier, head, b"").await);
    }
    assert!(statuses[..10].iter().all(|(s, _)| *s == 200), "{:?}", statuses.iter().map(|s| s.0).collect::<Vec<_>>());
    let (s, text) = &statuses[10];
    assert_eq!(*s, 429, "{text}");
    let retry = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_string()))
        .expect("Retry-After header");
    let secs: u64 = retry.parse().unwrap();
    assert!((1..=10).contains(&secs), "{retry}");
}

/// The columns whose garbage must make exactly that host `unusable`.
const DAMAGE: &[(&str, &str, &str)] = &[
    ("host_state", "state", "UPDATE host_state SET state = 'garbage' WHERE name = 'h2'"),
    ("host_state", "learned_keys", "UPDATE host_state SET learned_keys = 'garbage' WHERE name = 'h2'"),
    ("host_state", "ak_pem", "UPDATE host_state SET ak_pem = 'garbage' WHERE name = 'h2'"),
    ("host_state", "status", "UPDATE host_state SET status = 'garbage' WHERE name = 'h2'"),
    ("hosts", "spec", "UPDATE hosts SET spec = 'garbage' WHERE name = 'h2'"),
    ("hosts", "spec", "UPDATE hosts SET spec = X'00ff' WHERE name = 'h2'"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_5_one_bad_row_neither_stops_the_start_nor_hides_the_host() {
    let mut env = Env::new().await;
    let admin = env.pki.files.admin.clone();
    for (table, column, sql) in DAMAGE {
        env.verifier.take().unwrap().stop().await;
        env.sql(sql);
        env.verifier = Some(start_verifier(&env.dir, &env.pki.files).await);
        let what = format!("{table}.{column}");
        // The damaged host is listed, with the table, column and reason.
        let (s, list) = env.call(&admin, hyper::Method::GET, "/v1/hosts", None).await;
        assert_eq!(s, 200, "{what}");
        let hosts = list["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 2, "{what}: {list}");
        let (s, h2) = env.call(&admin, hyper::Method::GET, "/v1/hosts/h2", None).await;
        assert_eq!(s, 200, "{what}: {h2}");
        assert_eq!(h2["status"], "unusable", "{what}: {h2}");
        assert_eq!(h2["damage"]["table"], *table, "{what}: {h2}");
        assert_eq!(h2["damage"]["column"], *column, "{what}: {h2}");
        assert!(!h2["damage"]["reason"].as_str().unwrap().is_empty());
        let (_, health) = env.call(&admin, hyper::Method::GET, "/v1/health", None).await;
        assert_eq!(health["status"], "degraded", "{what}: {health}");
        assert_eq!(health["unusable"], json!(["h2"]));
        // Every other host keeps being attested; the damaged one is not.
        env.agent.service.lock().unwrap().add_records(3).unwrap();
        assert_eq!(env.v().attest_now("h1").await.unwrap().verdict, Verdict::Verified, "{what}");
        let (s, e) = env.call(&admin, hyper::Method::POST, "/v1/hosts/h2/attest", None).await;
        assert_eq!(s, 409, "{what}: {e}");
        // The repair: a reset; for an unreadable registration, remove and register again.
        let (s, r) = env.call(&admin, hyper::Method::POST, "/v1/hosts/h2/reset", None).await;
        if *table == "hosts" {
            assert_eq!(s, 409, "{what}: {r}");
            assert!(r["error"].as_str().unwrap().contains("register it again"), "{r}");
            assert_eq!(env.call(&admin, hyper::Method::DELETE, "/v1/hosts/h2", None).await.0, 200);
            let body = serde_json::to_value(spec("h2", &env.agent.addr.to_string())).unwrap();
            assert_eq!(env.call(&admin, hyper::Method::POST, "/v1/hosts", Some(body)).await.0, 201);
        } else {
            assert_eq!(s, 200, "{what}: {r}");
            assert_eq!(r["status"], "pending", "{what}: {r}");
        }
        let (s, row) = env.call(&admin, hyper::Method::POST, "/v1/hosts/h2/attest", None).await;
        assert_eq!((s, row["verdict"].as_str()), (200, Some("verified")), "{what}: {row}");
        let (_, health) = env.call(&admin, hyper::Method::GET, "/v1/health", None).await;
        assert_eq!(health["status"], "ok", "{what}: {health}");
    }
    // Garbage in a verdict row: the start goes on, the host is attested, the row is skipped.
    env.verifier.take().unwrap().stop().await;
    env.sql("UPDATE verdicts SET row = 'garbage' WHERE host = 'h1'");
    env.restart_verifier_after_stop().await;
    let st = env.v().host_status("h1").unwrap();
    assert_ne!(st.status, HostState::Unusable);
    assert_eq!(env.v().attest_now("h1").await.unwrap().verdict, Verdict::Verified);
    let (s, hist) = env.call(&admin, hyper::Method::GET, "/v1/hosts/h1/verdicts", None).await;
    assert_eq!(s, 200, "{hist}");
    assert_eq!(hist["verdicts"].as_array().unwrap().len(), 1, "only the new, readable row: {hist}");
    env.restart_verifier().await;
}

impl Env {
    async fn restart_verifier_after_stop(&mut self) {
        self.verifier = Some(start_verifier(&self.dir, &self.pki.files).await);
    }
}

#[test]
fn finding_8_names_addresses_and_server_names() {
    let ok = spec("web-1.example", "127.0.0.1:8891");
    ok.validate().unwrap();
    for n in [".", "..", "a..b", "-x", "x-", ".x", "x.", "", "a/b", "a b", &"x".repeat(65)] {
        assert!(spec(n, "127.0.0.1:1").validate().is_err(), "name {n:?} accepted");
    }
    for a in ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1", ":80", "host:", "[::1:80", "a b:80", "h:-1"] {
        assert!(spec("h", a).validate().is_err(), "address {a:?} accepted");
    }
    for a in ["[::1]:8891", "localhost:1", "web1.example:65535"] {
        spec("h", a).validate().unwrap();
    }
    let mut s = spec("h", "127.0.0.1:1");
    s.server_name = Some(String::new());
    assert!(s.validate().is_err(), "empty server_name accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_8_the_api_refuses_bad_input() {
    let env = Env::new().await;
    let admin = &env.pki.files.admin;
    for body in [
        json!({ "name": "..", "address": "127.0.0.1:1", "tofu": true }),
        json!({ "name": "x", "address": "127.0.0.1:99999", "tofu": true }),
        json!({ "name": "x", "address": "127.0.0.1:1", "tofu": true, "server_name": "" }),
    ] {
        let (s, e) = env.call(admin, hyper::Method::POST, "/v1/hosts", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {e}");
    }
    let (s, e) = env.call(admin, hyper::Method::GET, "/v1/hosts/h1/verdicts?limit=abc", None).await;
    assert_eq!(s, 400, "{e}");
    let addr = env.addr();
    let body = br#"{"name":"x","address":"127.0.0.1:1","tofu":true}"#;
    let head = format!(
        "POST /v1/hosts HTTP/1.1\r\nhost: localhost\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    let (s, text) = raw(&addr, admin, &head, body).await;
    assert_eq!(s, 415, "{text}");
    // A 10 GB body is refused on its header: nothing follows it, and the answer comes.
    let t0 = Instant::now();
    let head = "PATCH /v1/hosts/h1 HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\nconnection: close\r\n";
    let (s, text) = raw(&addr, admin, head, b"").await;
    assert_eq!(s, 413, "{text}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(env.v().host_status("x").is_none());
}

/// An "agent" that announces a 10 GB evidence body and then sends almost nothing.
struct Liar;

impl Handler for Liar {
    fn handle(
        self: Arc<Self>,
        _req: hyper::Request<hyper::body::Incoming>,
        _peer: Peer,
    ) -> futures_util::future::BoxFuture<'static, hyper::Response<Body>> {
        Box::pin(async {
            use http_body_util::BodyExt;
            let chunks = futures_util::stream::unfold(0u8, |n| async move {
                if n == 0 {
                    Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from_static(b"IMASNAP"))), 1))
                } else {
                    std::future::pending::<()>().await;
                    None
                }
            });
            hyper::Response::builder()
                .status(200)
                .header("content-length", "10000000000")
                .body(http_body_util::StreamBody::new(chunks).boxed())
                .unwrap()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_8_evidence_refused_by_its_content_length() {
    let env = Env::new().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar = l.local_addr().unwrap().to_string();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(http::serve(l, env.pki.files.agent.server().unwrap(), Arc::new(Liar), rx));
    env.v().add_host(spec("liar", &liar)).await.unwrap();
    let t0 = Instant::now();
    let r = env.v().attest_now("liar").await.unwrap();
    assert_eq!(r.verdict, Verdict::Error, "{r:?}");
    assert_eq!(r.reason.as_deref(), Some("transfer"), "{r:?}");
    assert!(r.detail.as_deref().unwrap().contains("content-length 10000000000"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "refused at once, not after the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_8_duplicate_pcr_values_rejected() {
    let env = Env::new().await;
    let name = tls::server_name("localhost").unwrap();
    let mut c = http::Conn::connect(
        &env.agent.addr.to_string(),
        name,
        env.pki.files.verifier.client().unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let nonce = [7u8; 32];
    let path = format!("/v1/evidence?nonce={}&from=0", hex::encode(nonce));
    let (s, body) = c.request(hyper::Method::GET, &path, None, 64 << 20, Duration::from_secs(10)).await.unwrap();
    assert_eq!(s, 200);
    let run = |b: &[u8]| {
        imasnap_verifier_service::attest::run_round(b, &nonce, None, LateJoin::FullHistory, None, true, None, true)
    };
    // As sent, it verifies.
    assert!(run(&body).unwrap().outcome.verdict.is_verified());
    // The same evidence with one PCR value listed twice (same value: first-wins would pass).
    let p = api::parse(&body).unwrap();
    let mut h = p.header.clone();
    let first = h.quote.pcr_values[0];
    h.quote.pcr_values.push(first);
    let m = api::MAGIC.len();
    let data_start = m + 4 + u32::from_be_bytes(body[m..m + 4].try_into().unwrap()) as usize;
    let mut forged = api::encode_prefix(&h).unwrap();
    forged.extend_from_slice(&body[data_start..]);
    match run(&forged) {
        Err(f) => assert!(f.to_string().contains("listed twice"), "{f}"),
        Ok(r) => panic!("duplicate pcr_values accepted: {:?}", r.outcome.verdict),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_12_json_has_enums_format_and_no_debug_text() {
    let mut env = Env::new().await;
    let admin = env.pki.files.admin.clone();
    // A cold boot of the agent's machine: the next round restarts with a reason.
    env.agent.shutdown.send(true).unwrap();
    let a = std::mem::replace(&mut env.agent, start_agent(&env.acfg).await);
    a.stop().await;
    let addr = env.agent.addr.to_string();
    let (s, _) = env.call(&admin, hyper::Method::PATCH, "/v1/hosts/h1", Some(json!({ "address": addr }))).await;
    assert_eq!(s, 200);
    env.agent.service.lock().unwrap().add_records(5).unwrap();
    let (s, row) = env.call(&admin, hyper::Method::POST, "/v1/hosts/h1/attest", None).await;
    assert_eq!(s, 200, "{row}");
    assert_eq!(row["format"], "imasnap-verifier-api/1");
    assert_eq!(row["verdict"], "verified", "{row}");
    assert_eq!(row["restart"], "reset_count_changed", "{row}");
    let detail = row["restart_detail"].as_str().unwrap();
    assert!(detail.contains("saved") && detail.contains("quoted"), "{row}");
    let mode = row["mode"].as_str().unwrap();
    assert!(["full_history", "incremental"].contains(&mode), "{row}");
    for path in ["/v1/hosts", "/v1/hosts/h1", "/v1/hosts/h1/verdicts", "/v1/health"] {
        let (_, v) = env.call(&admin, hyper::Method::GET, path, None).await;
        assert_eq!(v["format"], "imasnap-verifier-api/1", "{path}: {v}");
        let text = v.to_string();
        for debug in ["Some(", "{ saved", "ResetCountChanged", "FullHistory", "Incremental"] {
            assert!(!text.contains(debug), "{path} carries Debug text {debug:?}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_patch_accepts_tofu_agent_cert_and_server_name() {
    let env = Env::new().await;
    let admin = &env.pki.files.admin;
    let agent_pem = std::fs::read_to_string(&env.pki.files.agent.cert).unwrap();
    let (s, st) = env
        .call(
            admin,
            hyper::Method::PATCH,
            "/v1/hosts/h1",
            Some(json!({ "server_name": "127.0.0.1", "agent_cert": agent_pem, "tofu": true })),
        )
        .await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["spec"]["server_name"], "127.0.0.1");
    assert_eq!(st["spec"]["agent_cert"], agent_pem.as_str());
    let (_, row) = env.call(admin, hyper::Method::POST, "/v1/hosts/h1/attest", None).await;
    assert_eq!(row["verdict"], "verified", "pinned certificate matches: {row}");
    // Another pinned certificate: the connection is refused.
    let other = std::fs::read_to_string(&env.pki.files.reader.cert).unwrap();
    let (s, _) = env.call(admin, hyper::Method::PATCH, "/v1/hosts/h1", Some(json!({ "agent_cert": other }))).await;
    assert_eq!(s, 200);
    let (_, row) = env.call(admin, hyper::Method::POST, "/v1/hosts/h1/attest", None).await;
    assert_eq!((row["verdict"].as_str(), row["reason"].as_str()), (Some("error"), Some("tls_pin")), "{row}");
    // `tofu: false` without an AK is refused; clearing the pin with "" works.
    let (s, e) = env.call(admin, hyper::Method::PATCH, "/v1/hosts/h2", Some(json!({ "tofu": false }))).await;
    assert_eq!(s, 400, "{e}");
    let (s, st) = env.call(admin, hyper::Method::PATCH, "/v1/hosts/h1", Some(json!({ "agent_cert": "" }))).await;
    assert_eq!(s, 200);
    assert!(st["spec"].get("agent_cert").is_none(), "{st}");
}
