//! The agent service and the verifier service in one process, talking HTTPS with mutual
//! TLS on loopback (soft TPM, kernel model): rounds across snapshots, verifier restart
//! without full replay, agent crash in the middle of a snapshot, tampering, TLS refusal.
//! Every test runs twice: `::sqlite` and `::postgres` (see common::pg for the server).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent_server::devpki::{write_dev_pki, DevPkiFiles};
use imasnap_agent_server::{service as agent, tls};
use imasnap_verifier_service::model::{HostSpec, HostState, LateJoin, Verdict, VerdictRow};
use imasnap_verifier_service::service::Running;
use imasnap_verifier_service::Verifier;
use std::time::Duration;

mod common;
use common::{start_verifier_db, Backend};

struct Env {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    pki: DevPkiFiles,
    database: std::path::PathBuf,
    agent: agent::Running,
    verifier: Option<Running>,
}

impl Env {
    async fn new(late_join: LateJoin, b: Backend) -> Self {
        Self::with(late_join, "", b).await
    }

    /// `agent_toml`: more agent.toml lines (e.g. the staging interface).
    async fn with(late_join: LateJoin, agent_toml: &str, b: Backend) -> Self {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
        let acfg = common::agent_cfg(&dir, &pki.agent, &format!("test_endpoints = true\n{agent_toml}"));
        let a = common::start_agent(&acfg).await;
        let database = b.database(&dir);
        let v = start_verifier_db(database.clone(), &pki).await;
        let spec = HostSpec { late_join, ..common::tofu_host("h1", &a.addr.to_string()) };
        v.service.add_host(spec).await.unwrap();
        Self { _dir: d, dir, pki, database, agent: a, verifier: Some(v) }
    }

    fn v(&self) -> &std::sync::Arc<Verifier> {
        &self.verifier.as_ref().unwrap().service
    }

    fn add(&self, n: u64) {
        self.agent.service.lock().unwrap().add_records(n).unwrap();
    }

    fn snapshot(&self) {
        self.agent.service.lock().unwrap().snapshot(None).unwrap().expect("snapshot taken");
    }

    async fn round(&self) -> VerdictRow {
        self.v().attest_now("h1").await.unwrap()
    }
}

fn verified(r: &VerdictRow) {
    assert_eq!(r.verdict, Verdict::Verified, "{r:?}");
}

async fn rounds_across_snapshots_restart_and_tamper(b: Backend) {
    let mut env = Env::new(LateJoin::FullHistory, b).await;
    env.add(50);
    let r1 = env.round().await;
    verified(&r1);
    assert_eq!(r1.mode.as_deref(), Some("full_history"));
    let c1 = r1.checkpoint.unwrap();
    assert!(c1 >= 20, "{r1:?}");

    // Snapshots in between rounds: the verifier continues across them.
    env.snapshot();
    env.add(30);
    env.snapshot();
    env.add(20);
    let r2 = env.round().await;
    verified(&r2);
    assert_eq!(r2.mode.as_deref(), Some("incremental"));
    assert!(r2.records_replayed < 60, "only new records replayed: {r2:?}");
    assert!(r2.checkpoint.unwrap() > c1);

    // The verifier restarts: state comes from SQLite, no full replay.
    env.verifier.take().unwrap().stop().await;
    let v = start_verifier_db(env.database.clone(), &env.pki).await;
    env.verifier = Some(v);
    let st = env.v().host_status("h1").unwrap();
    assert_eq!(st.checkpoint, r2.checkpoint, "state survived the restart");
    assert_eq!(st.ak_source.as_deref(), Some("tofu"));
    env.add(10);
    let r3 = env.round().await;
    verified(&r3);
    assert_eq!(r3.mode.as_deref(), Some("incremental"));
    assert!(r3.records_replayed <= 12, "resumed, not replayed from 0: {r3:?}");

    // Agent crash in the middle of a snapshot (after `done`, before the manifest): the
    // restarted agent recovers and the next round verifies.
    env.add(15);
    let crashed = env.agent.service.lock().unwrap().snapshot(Some(imasnap_agent::CrashPoint::AfterDone)).unwrap();
    assert!(crashed.is_none(), "the crash fired");
    env.add(5);
    let r4 = env.round().await;
    verified(&r4);

    // Tamper with a snapshot the verifier has not proven yet: detected.
    env.add(25);
    env.snapshot();
    let seq = env.agent.service.lock().unwrap().manifest().unwrap().snapshots.last().unwrap().seq;
    let (path, _) = env.agent.service.lock().unwrap().snapshot_file(seq).unwrap();
    let mut b = std::fs::read(&path).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x55;
    std::fs::write(&path, &b).unwrap();
    let r5 = env.round().await;
    assert_eq!(r5.verdict, Verdict::Rejected, "{r5:?}");
    assert!(r5.detail.is_some());
    let st = env.v().host_status("h1").unwrap();
    assert_eq!(st.status, HostState::Rejected);
    assert_eq!(st.checkpoint, r4.checkpoint, "a rejection never moves the checkpoint");
    assert!(st.alert.is_some());
    let hist = env.v().verdicts("h1", 10).unwrap();
    assert_eq!(hist.len(), 5);
    assert_eq!(hist[0].verdict, Verdict::Rejected);
}

async fn late_join_by_marker_is_recorded(b: Backend) {
    // The agent has snapshots before the verifier first sees it.
    let env = Env::new(LateJoin::MarkerTofu, b).await;
    env.add(40);
    env.snapshot();
    env.add(10);
    let r = env.round().await;
    verified(&r);
    assert_eq!(r.mode.as_deref(), Some("latest_segment"));
    let st = env.v().host_status("h1").unwrap();
    assert_eq!(st.history_verified, Some(false));
    assert!(st.accepted_marker.is_some(), "{st:?}");
    env.add(10);
    env.snapshot();
    env.add(3);
    let r2 = env.round().await;
    verified(&r2);
    assert_eq!(r2.mode.as_deref(), Some("incremental"));
}

async fn late_join_on_a_staging_host_starts_at_the_newest_checkpoint(b: Backend) {
    // Staging cuts leave no marker: the verifier that joins late starts at the newest
    // quote-anchored checkpoint, over the network, and replays only what follows it.
    let env = Env::with(LateJoin::MarkerTofu, "interface = \"staging\"", b).await;
    let mode = env.agent.service.lock().unwrap().mode();
    assert_eq!(mode, "model-staging");
    env.add(40);
    env.snapshot();
    env.add(30);
    env.snapshot();
    env.add(10);
    let r = env.round().await;
    verified(&r);
    assert_eq!(r.mode.as_deref(), Some("latest_segment"), "{r:?}");
    assert!(r.records_replayed > 0 && r.records_replayed <= 10, "only the records after the checkpoint: {r:?}");
    let st = env.v().host_status("h1").unwrap();
    assert_eq!(st.history_verified, Some(false));
    env.add(5);
    env.snapshot();
    env.add(3);
    let r2 = env.round().await;
    verified(&r2);
    assert_eq!(r2.mode.as_deref(), Some("incremental"));
}

async fn clients_without_certificates_are_refused(b: Backend) {
    let env = Env::new(LateJoin::FullHistory, b).await;
    let roots = tls::roots_from_file(&env.pki.ca).unwrap();
    let anon = tls::client_config(None, roots.clone()).unwrap();
    // The agent's evidence API.
    let name = tls::server_name("localhost").unwrap();
    let r = imasnap_agent_server::http::Conn::connect(
        &env.agent.addr.to_string(),
        name.clone(),
        anon.clone(),
        Duration::from_secs(5),
    )
    .await;
    let refused = match r {
        Err(_) => true,
        // TLS 1.3: the server's refusal can arrive after the client's handshake completes.
        Ok(mut c) => c.request(hyper::Method::GET, "/v1/health", None, 1 << 20, Duration::from_secs(5)).await.is_err(),
    };
    assert!(refused, "agent served a client without a certificate");
    // The verifier's REST API.
    let vaddr = env.verifier.as_ref().unwrap().addr.to_string();
    let c = imasnap_verifier_service::client::ApiClient::new(&vaddr, anon);
    let mut c = c;
    c.server_name = "localhost".into();
    assert!(
        c.call(hyper::Method::GET, "/v1/hosts", None).await.is_err(),
        "verifier served a client without a certificate"
    );
    // A certificate from another CA is refused too.
    let other = write_dev_pki(&env.dir.join("other"), &["localhost"]).unwrap();
    let foreign =
        tls::client_config(Some(&tls::Identity::from_files(&other.admin.cert, &other.admin.key).unwrap()), roots)
            .unwrap();
    let mut c2 = imasnap_verifier_service::client::ApiClient::new(&vaddr, foreign);
    c2.server_name = "localhost".into();
    assert!(c2.call(hyper::Method::GET, "/v1/hosts", None).await.is_err());
    // With the right certificate it works.
    let mut ok = imasnap_verifier_service::client::ApiClient::new(&vaddr, env.pki.admin.client().unwrap());
    ok.server_name = "localhost".into();
    let hosts = ok.ok(hyper::Method::GET, "/v1/hosts", None).await.unwrap();
    assert_eq!(hosts["format"], "imasnap-verifier-api/1");
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 1);
}

async fn policy_violation_names_the_record(b: Backend) {
    let env = Env::new(LateJoin::FullHistory, b).await;
    env.add(20);
    verified(&env.round().await);
    let good = [7u8; 32];
    let allow = format!("{}  /usr/bin/good\n", hex::encode(good));
    env.v()
        .update_host("h1", imasnap_verifier_service::model::HostPatch { policy: Some(allow), ..Default::default() })
        .await
        .unwrap();
    {
        let mut h = env.agent.service.lock().unwrap();
        h.measure(b"/usr/bin/good", &good, None).unwrap();
    }
    env.snapshot();
    verified(&env.round().await);
    let evil_index = {
        let mut h = env.agent.service.lock().unwrap();
        let n = h.metrics();
        h.measure(b"/usr/bin/evil", &[9u8; 32], None).unwrap();
        n.next_index + n.live_records
    };
    let r = env.round().await;
    assert_eq!(r.verdict, Verdict::PolicyViolation, "{r:?}");
    assert_eq!(r.record, Some(evil_index), "{r:?}");
    assert!(r.detail.as_deref().unwrap().contains("/usr/bin/evil"), "{r:?}");
    assert_eq!(r.policy_failures.len(), 1);
    let st = env.v().host_status("h1").unwrap();
    assert_eq!(st.status, HostState::PolicyViolation);
    assert!(st.alert.is_some());
    // The records are proven all the same: the checkpoint moved past them.
    assert_eq!(st.checkpoint, r.checkpoint);
}

on_both_backends!(rounds_across_snapshots_restart_and_tamper);
on_both_backends!(late_join_by_marker_is_recorded);
on_both_backends!(late_join_on_a_staging_host_starts_at_the_newest_checkpoint);
on_both_backends!(clients_without_certificates_are_refused);
on_both_backends!(policy_violation_names_the_record);
