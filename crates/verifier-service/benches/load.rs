//! Load test (not a timed test): N in-process agent services (kernel model, soft TPM)
//! on loopback, each behind its own mTLS listener, against one verifier service with
//! SQLite. Each agent measures `--records` new events before answering each evidence
//! request, so every round verifies that many new records. Reports attestations/s and the
//! p50/p99 round latency (connect or reuse, evidence transfer, replay + quote check,
//! SQLite commit) over the measuring window, after a warm-up that includes every
//! host's first full-history round and TLS handshake.
//!
//!   cargo bench -p imasnap-verifier-service --bench load -- --hosts 1000 --records 100 --seconds 20
//!
//! Options: --hosts N --records N --seconds S --warmup S --concurrency N --poll-ms N
//!          --snapshot-records N (agent snapshot policy; 0 = never) --dir PATH (state; default a
//!          temporary directory under /dev/shm when present) --db-dir PATH (the verifier's
//!          SQLite database; default: with the state).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent_server::config::AgentServiceConfig;
use imasnap_agent_server::devpki::write_dev_pki;
use imasnap_agent_server::service as agent;
use imasnap_verifier_service::model::{HostSpec, LateJoin};
use imasnap_verifier_service::{Verifier, VerifierConfig};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn arg(name: &str, default: u64) -> u64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() {
    if std::env::args().any(|a| a == "--bench") && std::env::args().len() <= 2 {
        // `cargo bench` without arguments: the defaults below.
    }
    let hosts = arg("--hosts", 1000) as usize;
    let records = arg("--records", 100);
    let seconds = arg("--seconds", 20);
    let warmup = arg("--warmup", 10);
    let conc = arg("--concurrency", 16) as usize;
    let poll_ms = arg("--poll-ms", 100);
    let snap_records = arg("--snapshot-records", 1000);
    let base = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--dir")
        .map(|w| std::path::PathBuf::from(&w[1]))
        .unwrap_or_else(|| {
            if std::path::Path::new("/dev/shm").is_dir() {
                "/dev/shm".into()
            } else {
                std::env::temp_dir()
            }
        });
    let tmp = tempfile::Builder::new().prefix("imasnap-load-").tempdir_in(&base).unwrap();
    let dir = tmp.path();
    // The verifier's database may sit elsewhere (e.g. on disk while 1000 agents' stores,
    // which would each have their own disk in reality, sit on tmpfs).
    let db_tmp = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--db-dir")
        .map(|w| tempfile::Builder::new().prefix("imasnap-load-db-").tempdir_in(&w[1]).unwrap());
    let db_dir = db_tmp.as_ref().map_or(dir, |t| t.path()).to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let db_dir = &db_dir;
    rt.block_on(async move {
        let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
        let server_tls = pki.agent.server().unwrap();
        let t0 = Instant::now();
        let mut agents = Vec::with_capacity(hosts);
        for i in 0..hosts {
            let mut c = AgentServiceConfig::from_toml(&format!(
                "state_dir = {:?}\ntpm = \"soft:seed={}\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
                dir.join(format!("a{i}")),
                i + 1,
                pki.agent.cert,
                pki.agent.key,
                pki.ca
            ))
            .unwrap();
            c.workload.seed = i as u64;
            c.workload.records_per_evidence = records;
            if snap_records > 0 {
                c.snapshot.max_records = Some(snap_records);
            }
            let host = agent::open_host(&c).unwrap();
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tick = if snap_records > 0 { Duration::from_secs(1) } else { Duration::ZERO };
            agents.push(agent::spawn(l, server_tls.clone(), host, agent::Serve { tick, ..Default::default() }).unwrap());
        }
        eprintln!("{hosts} agents up in {:.1} s", t0.elapsed().as_secs_f64());
        let cfg = VerifierConfig {
            database: db_dir.join("verifier.db"),
            sqlite_synchronous_full: false,
            lease_ms: 10_000,
            replica_id: None,
            listen: "127.0.0.1:0".into(),
            max_concurrency: conc,
            timeout_ms: 60_000,
            max_evidence_bytes: 64 << 20,
            keep_verdicts: 100,
            tick_ms: 20,
            tls: pki.verifier.clone(),
            agent_tls: pki.verifier.clone(),
        };
        let v = Verifier::open(cfg.clone(), cfg.agent_tls.client().unwrap()).unwrap().with_latency_recording();
        for (i, a) in agents.iter().enumerate() {
            v.add_host(HostSpec {
                name: format!("h{i}"),
                address: a.addr.to_string(),
                server_name: Some("localhost".into()),
                ak: None,
                tofu: true,
                policy: None,
                agent_cert: None,
                poll_interval_ms: poll_ms,
                late_join: LateJoin::FullHistory,
            })
            .await
            .unwrap();
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let sched = tokio::spawn(v.clone().schedule(rx));
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        let r0 = v.stats.rounds.load(Ordering::Relaxed);
        let f0 = v.stats.failed.load(Ordering::Relaxed);
        v.latencies.lock().unwrap().clear();
        let m0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let el = m0.elapsed().as_secs_f64();
        let r1 = v.stats.rounds.load(Ordering::Relaxed);
        let f1 = v.stats.failed.load(Ordering::Relaxed);
        let mut lat = std::mem::take(&mut *v.latencies.lock().unwrap());
        let _ = tx.send(true);
        let _ = sched.await;
        let rounds = r1 - r0;
        let rate = rounds as f64 / el;
        let p50 = pct(&mut lat, 0.50);
        let p99 = pct(&mut lat, 0.99);
        let snaps: u64 = agents.iter().map(|a| a.service.lock().unwrap().metrics().snapshots).sum();
        println!(
            "{hosts} hosts x {records} records/round, concurrency {conc}, poll {poll_ms} ms: {rounds} attestations in {el:.1} s = {rate:.0}/s \
             ({} failed); round latency p50 {p50:.1} ms, p99 {p99:.1} ms; {snaps} agent snapshots in total",
            f1 - f0
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::process::exit(0);
    });
}
