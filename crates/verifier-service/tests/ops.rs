//! Operating the fleet (issue 15, part 4), in process on loopback: `/metrics` scraped over
//! mutual TLS, failing hosts retried with backoff, revocation webhooks delivered (with
//! retries, and given up after the bound).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use imasnap_agent_server::devpki::{write_dev_pki, DevPkiFiles};
use imasnap_agent_server::service as agent;
use imasnap_verifier_service::client::ApiClient;
use imasnap_verifier_service::model::{HostPatch, HostSpec, Verdict, VerdictRow};
use imasnap_verifier_service::ops::webhook::RevocationEvent;
use imasnap_verifier_service::service::Running;
use imasnap_verifier_service::{Verifier, VerifierConfig};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
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

    /// Flips a byte of `host`'s newest snapshot (one the verifier has not proven yet).
    fn tamper(&self, host: &str) {
        let s = &self.agent(host).service;
        s.lock().unwrap().add_records(10).unwrap();
        s.lock().unwrap().snapshot(None).unwrap().expect("snapshot taken");
        let seq = s.lock().unwrap().manifest().unwrap().snapshots.last().unwrap().seq;
        let (path, _) = s.lock().unwrap().snapshot_file(seq).unwrap();
        let mut b = std::fs::read(&path).unwrap();
        let n = b.len();
        b[n - 3] ^= 0x55;
        std::fs::write(&path, &b).unwrap();
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

/// A webhook receiver: answers the statuses in `script` in turn (then 200), keeps the
/// bodies.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Bytes)>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> (Self, String) {
        let r = Self { got: Default::default(), script: Arc::new(Mutex::new(script.iter().copied().collect())) };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/revoked", l.local_addr().unwrap());
        let rr = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else { return };
                let rr = rr.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let rr = rr.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            rr.got.lock().unwrap().push((path, body));
                            let code = rr.script.lock().unwrap().pop_front().unwrap_or(200);
                            Ok::<_, std::convert::Infallible>(
                                Response::builder().status(code).body(Full::new(Bytes::from_static(b"{}"))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        (r, url)
    }

    fn events(&self) -> Vec<RevocationEvent> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(p, b)| {
                assert_eq!(p, "/hooks/revoked");
                serde_json::from_slice(b).unwrap()
            })
            .collect()
    }
}

async fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revocation_event_per_failing_host() {
    let (rx, url) = Receiver::start(&[]).await;
    let env = Env::new(3, 3_600_000, |c| c.webhooks.urls = vec![url], false).await;
    for h in ["h1", "h2", "h3"] {
        assert_eq!(env.round(h).await.verdict, Verdict::Verified);
    }
    // h1 measures a file outside its policy, twice; h2's evidence is tampered with, and
    // stays so for two rounds; h3 stays good.
    env.allow_only_good("h1").await;
    let evil = env.measure_evil("h1", "/usr/bin/evil");
    let v1 = env.round("h1").await;
    assert_eq!(v1.verdict, Verdict::PolicyViolation);
    env.measure_evil("h1", "/usr/bin/worse");
    assert_eq!(env.round("h1").await.verdict, Verdict::PolicyViolation, "still failing: no second event");
    env.tamper("h2");
    let v2 = env.round("h2").await;
    assert_eq!(v2.verdict, Verdict::Rejected, "{v2:?}");
    assert_eq!(env.round("h2").await.verdict, Verdict::Rejected);
    for _ in 0..2 {
        env.agent("h3").service.lock().unwrap().add_records(3).unwrap();
        assert_eq!(env.round("h3").await.verdict, Verdict::Verified);
    }
    wait_for("two events", 10, || rx.got.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // no third one comes
    let mut evs = rx.events();
    evs.sort_by(|a, b| a.host.cmp(&b.host));
    assert_eq!(evs.len(), 2, "{evs:?}");
    let (e1, e2) = (&evs[0], &evs[1]);
    assert_eq!((e1.event.as_str(), e1.format.as_str()), ("revocation", "imasnap-revocation/1"));
    assert_eq!(e1.host, "h1");
    assert_eq!(e1.verdict, "policy_violation");
    assert_eq!(e1.reason.as_deref(), Some("policy"));
    assert_eq!(e1.record, Some(evil));
    assert_eq!(e1.path.as_deref(), Some("/usr/bin/evil"));
    assert_eq!(e1.verdict_at_ms, v1.at_ms);
    assert_eq!(e1.previous_status, "verified");
    assert_eq!(e1.round, 4, "h1's fourth round");
    assert_eq!(e2.host, "h2");
    assert_eq!(e2.verdict, "rejected");
    assert_eq!(e2.reason, v2.reason);
    assert!(e2.reason.is_some());
    assert_eq!(e2.record, v2.record);
    assert_eq!(e2.detail, v2.detail);
    assert_eq!(e2.round, 2);
    let m = parse_metrics(&env.v().metrics_text());
    assert_eq!(m["imasnap_verifier_webhook_events_total{outcome=\"delivered\"}"], 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_are_bounded() {
    let (flaky, flaky_url) = Receiver::start(&[500, 500]).await;
    let (broken, broken_url) = Receiver::start(&[500; 10]).await;
    let dead = format!("http://{}/x", TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap());
    let env = Env::new(
        1,
        3_600_000,
        |c| {
            c.webhooks.urls = vec![flaky_url, broken_url, dead];
            c.webhooks.attempts = 4;
            c.webhooks.retry_ms = 30;
            c.webhooks.timeout_ms = 2000;
        },
        false,
    )
    .await;
    env.allow_only_good("h1").await;
    let evil = env.measure_evil("h1", "/usr/bin/evil");
    assert_eq!(env.round("h1").await.verdict, Verdict::PolicyViolation);
    // 30 + 60 + 120 ms of waits (±20 %) per URL: all settled well within the deadline.
    let m = || parse_metrics(&env.v().metrics_text());
    wait_for("every delivery settled", 15, || {
        let m = m();
        m["imasnap_verifier_webhook_events_total{outcome=\"delivered\"}"]
            + m["imasnap_verifier_webhook_events_total{outcome=\"gave_up\"}"]
            >= 3.0
    })
    .await;
    let m = m();
    assert_eq!(m["imasnap_verifier_webhook_events_total{outcome=\"delivered\"}"], 1.0);
    assert_eq!(m["imasnap_verifier_webhook_events_total{outcome=\"gave_up\"}"], 2.0);
    // 500, 500, then 200: the same event three times, accepted the third.
    let f = flaky.events();
    assert_eq!(f.len(), 3, "{f:?}");
    assert!(f.iter().all(|e| *e == f[0]));
    assert_eq!(f[0].record, Some(evil));
    // Always 500: exactly `attempts` tries, then given up.
    assert_eq!(broken.events().len(), 4);
}

/// An `https://` receiver with mutual TLS (the service's own server helper): records each
/// event with the client certificate it came with.
struct TlsReceiver {
    got: Mutex<Vec<(Option<Vec<u8>>, Bytes)>>,
}

impl imasnap_net::http::Handler for TlsReceiver {
    fn handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
        peer: imasnap_net::http::Peer,
    ) -> futures_util::future::BoxFuture<'static, Response<imasnap_net::http::Body>> {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            self.got.lock().unwrap().push((peer.cert.clone(), body));
            imasnap_net::http::json_response(StatusCode::OK, &serde_json::json!({}))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_over_https_with_the_configured_ca_and_identity() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}/hooks/revoked", l.local_addr().unwrap().port());
    let env = Env::new(
        1,
        3_600_000,
        |c| {
            c.webhooks.urls = vec![url];
            c.webhooks.ca = Some(c.tls.ca.clone());
            c.webhooks.cert = Some(c.tls.cert.clone());
            c.webhooks.key = Some(c.tls.key.clone());
        },
        false,
    )
    .await;
    let rx = Arc::new(TlsReceiver { got: Mutex::new(Vec::new()) });
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(imasnap_net::http::serve(l, env.pki.admin.server().unwrap(), rx.clone(), stop_rx));
    env.allow_only_good("h1").await;
    let evil = env.measure_evil("h1", "/usr/bin/evil");
    assert_eq!(env.round("h1").await.verdict, Verdict::PolicyViolation);
    wait_for("the event over https", 10, || !rx.got.lock().unwrap().is_empty()).await;
    let (cert, body) = rx.got.lock().unwrap()[0].clone();
    let ev: RevocationEvent = serde_json::from_slice(&body).unwrap();
    assert_eq!((ev.host.as_str(), ev.record), ("h1", Some(evil)));
    // The verifier presented its own identity (role verifier) to the receiver.
    let role = imasnap_net::tls::role_of(&cert.expect("a client certificate")).unwrap();
    assert_eq!(role, imasnap_net::tls::Role::Verifier);
}
