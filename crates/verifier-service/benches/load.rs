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
//!          --report-every S (a line every S seconds of the window: rounds, rate, failed,
//!          RSS) --separate-agents (the agents run in a child process, so RSS and CPU
//!          time are the verifier's alone; the agents' CPU time is reported beside).
//!
//! Soak (10 minutes, a line a minute): scripts/soak-verifier.sh.
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

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// `VmRSS` of a process in kB.
fn rss_kb(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (all threads).
fn cpu_s(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command; clock ticks.
    (t(11) + t(12)) / 100.0
}

/// Bytes this process caused to be written to storage (`write_bytes` of /proc/self/io).
fn storage_written() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Starts `hosts` agents (in the current runtime); returns them with their addresses.
async fn start_agents(
    hosts: usize,
    records: u64,
    snap_records: u64,
    dir: &std::path::Path,
    pki: &imasnap_net::tls::TlsFiles,
) -> Vec<agent::Running> {
    let server_tls = pki.server().unwrap();
    let mut agents = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let mut c = AgentServiceConfig::from_toml(&format!(
            "state_dir = {:?}\ntpm = \"soft:seed={}\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            dir.join(format!("a{i}")),
            i + 1,
            pki.cert,
            pki.key,
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
    agents
}

/// `--agents-child DIR`: the agents of a `--separate-agents` run. Writes their addresses
/// to DIR/agents.txt and serves until the parent closes stdin.
fn agents_child(dir: std::path::PathBuf, hosts: usize, records: u64, snap_records: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let pki = dir.join("pki");
        let files = imasnap_net::tls::TlsFiles {
            cert: pki.join("agent.pem"),
            key: pki.join("agent.key"),
            ca: pki.join("ca.pem"),
        };
        let agents = start_agents(hosts, records, snap_records, &dir, &files).await;
        let list: String = agents.iter().map(|a| format!("{}\n", a.addr)).collect();
        std::fs::write(dir.join("agents.tmp"), list).unwrap();
        std::fs::rename(dir.join("agents.tmp"), dir.join("agents.txt")).unwrap();
        let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
        std::process::exit(0);
    });
}

fn main() {
    if let Some(w) = std::env::args().collect::<Vec<_>>().windows(2).find(|w| w[0] == "--agents-child") {
        let snap = arg("--snapshot-records", 1000);
        return agents_child(w[1].clone().into(), arg("--hosts", 1000) as usize, arg("--records", 100), snap);
    }
    let hosts = arg("--hosts", 1000) as usize;
    let records = arg("--records", 100);
    let seconds = arg("--seconds", 20);
    let warmup = arg("--warmup", 10);
    let every = arg("--report-every", 0);
    let separate = flag("--separate-agents");
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
        let t0 = Instant::now();
        let mut agents = Vec::new();
        let mut child = None;
        let addrs: Vec<String> = if separate {
            let me = std::env::current_exe().unwrap();
            let c = std::process::Command::new(me)
                .args(["--agents-child", dir.to_str().unwrap(), "--hosts", &hosts.to_string()])
                .args(["--records", &records.to_string(), "--snapshot-records", &snap_records.to_string()])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child = Some(c);
            let list = dir.join("agents.txt");
            while !list.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            std::fs::read_to_string(&list).unwrap().lines().map(String::from).collect()
        } else {
            agents = start_agents(hosts, records, snap_records, dir, &pki.agent).await;
            agents.iter().map(|a| a.addr.to_string()).collect()
        };
        let child_pid = child.as_ref().map(|c| c.id().to_string());
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
            backoff: Default::default(),
            webhooks: Default::default(),
        };
        let v = Verifier::open(cfg.clone(), cfg.agent_tls.client().unwrap()).unwrap().with_latency_recording();
        for (i, a) in addrs.iter().enumerate() {
            v.add_host(HostSpec {
                name: format!("h{i}"),
                address: a.clone(),
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
        let db = v.db_stats();
        let db0 = [&db.transactions, &db.ops, &db.statements, &db.bound_bytes].map(|a| a.load(Ordering::Relaxed));
        let w0 = storage_written();
        let cpu0 = (cpu_s("self"), child_pid.as_deref().map_or(0.0, cpu_s));
        v.latencies.lock().unwrap().clear();
        let m0 = Instant::now();
        let step = if every > 0 { every } else { seconds };
        let (mut t, mut rl, mut fl) = (0, r0, f0);
        if every > 0 {
            let agents_rss = child_pid.as_deref().map(|p| format!(", agents RSS {} MB", rss_kb(p) / 1024));
            println!("t=   0 s  (end of warm-up)  RSS {} MB{}", rss_kb("self") / 1024, agents_rss.unwrap_or_default());
        }
        while t < seconds {
            let d = step.min(seconds - t);
            tokio::time::sleep_until(tokio::time::Instant::from_std(m0 + Duration::from_secs(t + d))).await;
            t += d;
            if every > 0 {
                let (r, f) = (v.stats.rounds.load(Ordering::Relaxed), v.stats.failed.load(Ordering::Relaxed));
                let agents_rss = child_pid.as_deref().map(|p| format!(", agents RSS {} MB", rss_kb(p) / 1024));
                println!(
                    "t={t:>4} s  rounds {:>7} ({:>5.0}/s)  failed {}  RSS {} MB{}",
                    r - rl,
                    (r - rl) as f64 / d as f64,
                    f - fl,
                    rss_kb("self") / 1024,
                    agents_rss.unwrap_or_default()
                );
                (rl, fl) = (r, f);
            }
        }
        let el = m0.elapsed().as_secs_f64();
        let r1 = v.stats.rounds.load(Ordering::Relaxed);
        let f1 = v.stats.failed.load(Ordering::Relaxed);
        let cpu1 = (cpu_s("self"), child_pid.as_deref().map_or(0.0, cpu_s));
        let db1 = [&db.transactions, &db.ops, &db.statements, &db.bound_bytes].map(|a| a.load(Ordering::Relaxed));
        let w1 = storage_written();
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
        let per = |i: usize| (db1[i] - db0[i]) as f64 / rounds.max(1) as f64;
        println!(
            "database per round: {:.2} statements, {:.0} B bound, {:.0} B written to storage (WAL + checkpoints); \
             {:.1} rounds per transaction",
            per(2),
            per(3),
            (w1 - w0) as f64 / rounds.max(1) as f64,
            (db1[1] - db0[1]) as f64 / (db1[0] - db0[0]).max(1) as f64
        );
        let (vc, ac) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
        let who = if separate { "verifier process" } else { "process (verifier + agents)" };
        println!(
            "CPU: {who} {vc:.1} s ({:.0} us/round){}",
            vc * 1e6 / rounds.max(1) as f64,
            if separate { format!(", agents process {ac:.1} s ({:.0} us/round)", ac * 1e6 / rounds.max(1) as f64) } else { String::new() }
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // The agents' child ends when its stdin closes; the state goes with the run
        // (`exit` skips the temporary directories' own clean-up).
        if let Some(mut c) = child {
            drop(c.stdin.take());
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(dir);
        if db_dir != dir {
            let _ = std::fs::remove_dir_all(db_dir);
        }
        std::process::exit(0);
    });
}
