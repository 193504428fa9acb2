//! Operating the fleet (issue 15, part 4), in process on loopback: `/metrics` scraped over
//! mutual TLS, failing hosts retried with backoff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use hyper::{Method, StatusCode};
use imasnap_agent_server::devpki::{write_dev_pki, DevPkiFiles};
use imasnap_agent_server::service as agent;
use imasnap_verifier_service::client::ApiClient;
use imasnap_verifier_service::model::{HostPatch, HostSpec, Verdict, VerdictRow};
use imasnap_verifier_service::service::Running;
use imasnap_verifier_service::{Verifier, VerifierConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

mod common;

const GOOD: [u8; 32] = [7u8; 32];

struct Env {
    _dir: tempfile::TempDir,
    pki: DevPkiFiles,
    agents: Vec<agent::Running>,
    verifier: Running,
}

impl Env {
    /// `hosts` agents (test endpoints on), registered as `h1`, `h2`, … with `poll_ms`.
    async fn new(hosts: usize, poll_ms: u64, edit: impl FnOnce(&mut VerifierConfig), schedule: bool) -> Self {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
        let verifier = common::start_verifier_with(&dir, &pki, edit, schedule).await;
        let mut agents = Vec::new();
        for i in 1..=hosts {
            let acfg = common::agent_cfg(&dir.join(format!("a{i}")), &pki.agent, "test_endpoints = true");
            let a = common::start_agent(&acfg).await;
            a.service.lock().unwrap().add_records(20).unwrap();
            let spec =
                HostSpec { poll_interval_ms: poll_ms, ..common::tofu_host(&format!("h{i}"), &a.addr.to_string()) };
            verifier.service.add_host(spec).await.unwrap();
            agents.push(a);
        }
        Self { _dir: d, pki, agents, verifier }
    }

    fn v(&self) -> &Arc<Verifier> {
        &self.verifier.service
    }

    fn agent(&self, host: &str) -> &agent::Running {
        &self.agents[host.trim_start_matches('h').parse::<usize>().unwrap() - 1]
    }

    async fn round(&self, host: &str) -> VerdictRow {
        self.v().attest_now(host).await.unwrap()
    }

    /// Gives `host` a policy that allows only GOOD (and proves a record of it).
    async fn allow_only_good(&self, host: &str) {
        // What the agent measured so far is proven (and judged) before the policy applies.
        assert_eq!(self.round(host).await.verdict, Verdict::Verified);
        let allow = format!("{}  /usr/bin/good\n", hex::encode(GOOD));
        self.v().update_host(host, HostPatch { policy: Some(allow), ..Default::default() }).await.unwrap();
        self.agent(host).service.lock().unwrap().measure(b"/usr/bin/good", &GOOD, None).unwrap();
        assert_eq!(self.round(host).await.verdict, Verdict::Verified);
    }

    /// Measures a file outside `host`'s policy; returns its record index.
    fn measure_evil(&self, host: &str, path: &str) -> u64 {
        let mut h = self.agent(host).service.lock().unwrap();
        let n = h.metrics();
        h.measure(path.as_bytes(), &[9u8; 32], None).unwrap();
        n.next_index + n.live_records
    }

    fn client(&self, who: &imasnap_agent_server::tls::TlsFiles, addr: &str) -> ApiClient {
        let mut c = ApiClient::new(addr, who.client().unwrap());
        c.server_name = "localhost".into();
        c
    }
}

/// `name{labels}` → value, from the text exposition (comments skipped, each sample once).
fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    let mut m = std::collections::HashMap::new();
    for l in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
        let v: f64 = v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}"));
        assert!(m.insert(k.to_string(), v).is_none(), "sample {k} twice");
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_over_mtls_match_the_verdict_api() {
    let env = Env::new(2, 3_600_000, |_| {}, false).await;
    for _ in 0..3 {
        env.agent("h1").service.lock().unwrap().add_records(5).unwrap();
        assert_eq!(env.round("h1").await.verdict, Verdict::Verified);
    }
    env.allow_only_good("h2").await;
    env.measure_evil("h2", "/usr/bin/evil");
    assert_eq!(env.round("h2").await.verdict, Verdict::PolicyViolation);

    // A scraper with the reader role, over mutual TLS.
    let addr = env.verifier.addr.to_string();
    let reader = env.client(&env.pki.reader, &addr);
    let (s, body) = reader.call(Method::GET, "/metrics", None).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{body}");
    let text = body.as_str().expect("text, not JSON").to_string();
    let m = parse_metrics(&text);

    let mut counted: std::collections::HashMap<String, f64> = Default::default();
    let mut total = 0.0;
    for h in ["h1", "h2"] {
        let rows = reader.ok(Method::GET, &format!("/v1/hosts/{h}/verdicts?limit=1000"), None).await.unwrap();
        for r in rows["verdicts"].as_array().unwrap() {
            *counted.entry(r["verdict"].as_str().unwrap().to_string()).or_default() += 1.0;
            total += 1.0;
        }
    }
    assert_eq!(total, 6.0);
    assert_eq!(m["imasnap_verifier_rounds_total"], total, "{text}");
    for result in ["verified", "rejected", "policy_violation", "error"] {
        let want = counted.get(result).copied().unwrap_or(0.0);
        assert_eq!(m[&format!("imasnap_verifier_verdicts_total{{result=\"{result}\"}}")], want, "{result}: {text}");
    }
    assert_eq!(m["imasnap_verifier_round_duration_seconds_count"], total);
    assert_eq!(m["imasnap_verifier_round_duration_seconds_bucket{le=\"+Inf\"}"], total);
    assert!(m["imasnap_verifier_round_duration_seconds_sum"] > 0.0);
    assert_eq!(m["imasnap_verifier_hosts{status=\"verified\"}"], 1.0);
    assert_eq!(m["imasnap_verifier_hosts{status=\"policy_violation\"}"], 1.0);
    assert_eq!(m["imasnap_verifier_hosts{status=\"pending\"}"], 0.0);
    assert_eq!(m["imasnap_verifier_leases_held"], 2.0, "single node: every usable host");
    // Every saved round is one database write; two registrations and one policy change.
    assert_eq!(m["imasnap_verifier_db_write_duration_seconds_count{op=\"round\"}"], total);
    assert_eq!(m["imasnap_verifier_db_write_duration_seconds_count{op=\"put_host\"}"], 3.0);
    assert_eq!(m["imasnap_verifier_db_write_duration_seconds_bucket{op=\"round\",le=\"+Inf\"}"], total);
    assert!(text.contains("# TYPE imasnap_verifier_round_duration_seconds histogram"));
    assert!(text.contains("# TYPE imasnap_verifier_hosts gauge"));
    // The lease hook a replica implementation will call.
    env.v().set_leases_held(1);
    assert_eq!(parse_metrics(&env.v().metrics_text())["imasnap_verifier_leases_held"], 1.0);

    // The agent's metrics at /metrics too (the same text as /v1/metrics), for the reader.
    let a = env.client(&env.pki.reader, &env.agent("h1").addr.to_string());
    let (s, at) = a.call(Method::GET, "/metrics", None).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    let am = parse_metrics(at.as_str().unwrap());
    assert!(am["imasnap_agent_live_records"] > 0.0);
    assert_eq!(am["imasnap_agent_evidence_requests_total"], 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_is_retried_with_backoff() {
    // A port nobody listens on: every connect is refused at once.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let poll = 100;
    let env = Env::new(
        1,
        poll,
        |c| {
            c.backoff.max_ms = 1600;
            c.backoff.jitter_percent = 20;
        },
        true,
    )
    .await;
    let dead_spec = HostSpec { poll_interval_ms: poll, ..common::tofu_host("dead", &dead) };
    env.v().add_host(dead_spec).await.unwrap();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (alive, gone) = (env.v().host_status("h1").unwrap(), env.v().host_status("dead").unwrap());
    let elapsed = t0.elapsed().as_millis();
    // At the poll rate the dead host would have had ~30 attempts. With backoff: 0, +200,
    // +400, +800, +1600 ms (±20 %) → at most 5 in 3 s, however loaded the machine.
    assert!((3..=6).contains(&gone.rounds), "{} attempts in {elapsed} ms: {:?}", gone.rounds, gone.retry);
    assert_eq!(gone.retry.consecutive_failures as u64, gone.rounds);
    assert_eq!(gone.last.as_ref().unwrap().reason.as_deref(), Some("unreachable"));
    assert!(gone.retry.delay_ms >= 400, "{:?}", gone.retry);
    // The healthy host meanwhile goes on at its poll rate.
    assert!(alive.rounds >= 10, "{} rounds of the healthy host in {elapsed} ms", alive.rounds);
    assert_eq!(alive.retry.consecutive_failures, 0);
    assert_eq!(alive.retry.delay_ms, poll);
    // Visible in the status JSON.
    let admin = env.client(&env.pki.admin, &env.verifier.addr.to_string());
    let j = admin.ok(Method::GET, "/v1/hosts/dead", None).await.unwrap();
    assert!(j["retry"]["consecutive_failures"].as_u64().unwrap() >= 3, "{j}");
    assert!(j["retry"]["delay_ms"].as_u64().is_some(), "{j}");
    let m = parse_metrics(&env.v().metrics_text());
    assert_eq!(m["imasnap_verifier_hosts_backing_off"], 1.0);

    // It comes back (pointed at a live agent): the next success resets the backoff.
    let back = env.agent("h1").addr.to_string();
    env.v().update_host("dead", HostPatch { address: Some(back), ..Default::default() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = env.v().host_status("dead").unwrap();
        if st.last.as_ref().is_some_and(|l| l.verdict == Verdict::Verified) {
            assert_eq!(st.retry.consecutive_failures, 0, "{:?}", st.retry);
            break;
        }
        assert!(Instant::now() < deadline, "never verified after it came back: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
