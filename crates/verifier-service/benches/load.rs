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
//!          --agent-procs N (with --separate-agents, implied: the agents in N child processes,
//!          default one per 4,000 hosts: descriptors are limited per process, ~2 per agent).
//!          --database URL (PostgreSQL instead of the SQLite file: the bench creates a
//!          fresh database beside the one URL names, and drops it at the end)
//!          --replicas N (PostgreSQL: N verifiers in this process, each with its own
//!          replica id and leases, on the same database; hosts registered through the first;
//!          rounds, latencies and write counters summed over all; also reports the server's
//!          WAL bytes, transactions and backend CPU time per round).
//!
//!   scripts/postgres.sh start /tmp/pgbench 55511   # prints the URL
//!   cargo bench -p imasnap-verifier-service --bench load -- --database postgres://imasnap@127.0.0.1:55511/postgres --replicas 2
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

// The `imasnap` binary's allocator, so the bench measures the process operators run.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn str_arg(name: &str) -> Option<String> {
    std::env::args().collect::<Vec<_>>().windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

/// `url` with its database name replaced by `db`.
fn with_dbname(url: &str, db: &str) -> String {
    let (main, query) = url.split_once('?').map_or((url, None), |(m, q)| (m, Some(q)));
    let scheme_end = main.find("://").map_or(0, |i| i + 3);
    let base = match main[scheme_end..].find('/') {
        Some(i) => &main[..scheme_end + i],
        None => main,
    };
    format!("{base}/{db}{}", query.map(|q| format!("?{q}")).unwrap_or_default())
}

/// PostgreSQL counters: WAL position (bytes), this database's committed and rolled-back
/// transactions, rows returned/fetched/inserted/updated/deleted (the statistics collector
/// lags by up to about a second), and the CPU seconds of every server process now
/// running (backends and background workers, from /proc). Blocking: call off the runtime.
fn pg_counters(url: &str) -> ([i64; 8], f64) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let r = c
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, xact_commit, xact_rollback, tup_returned,
                    tup_fetched, tup_inserted, tup_updated, tup_deleted
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .unwrap();
    let v: [i64; 8] = std::array::from_fn(|i| r.get(i));
    let pids = c.query("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()", &[]).unwrap();
    let cpu = pids.iter().map(|r| cpu_s(&r.get::<_, i32>(0).to_string())).sum();
    (v, cpu)
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
    first: usize,
    hosts: usize,
    records: u64,
    snap_records: u64,
    dir: &std::path::Path,
    pki: &imasnap_net::tls::TlsFiles,
) -> Vec<agent::Running> {
    let server_tls = pki.server().unwrap();
    let mut agents = Vec::with_capacity(hosts);
    for i in first..first + hosts {
        let mut c = AgentServiceConfig::from_toml(&format!(
            "state_dir = {:?}\nbackend = \"model\"\ntpm = \"soft:seed={}\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
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

/// `--agents-child DIR --first K`: agents K.. of a `--separate-agents` run (one of
/// `--agent-procs` children: a process's descriptors are limited, ~2 per agent). Writes
/// their addresses to DIR/agents-K.txt and serves until the parent closes stdin.
fn agents_child(dir: std::path::PathBuf, first: usize, hosts: usize, records: u64, snap_records: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let pki = dir.join("pki");
        let files = imasnap_net::tls::TlsFiles {
            cert: pki.join("agent.pem"),
            key: pki.join("agent.key"),
            ca: pki.join("ca.pem"),
        };
        let agents = start_agents(first, hosts, records, snap_records, &dir, &files).await;
        let list: String = agents.iter().map(|a| format!("{}\n", a.addr)).collect();
        std::fs::write(dir.join(format!("agents-{first}.tmp")), list).unwrap();
        std::fs::rename(dir.join(format!("agents-{first}.tmp")), dir.join(format!("agents-{first}.txt"))).unwrap();
        let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
        std::process::exit(0);
    });
}

fn main() {
    if let Some(w) = std::env::args().collect::<Vec<_>>().windows(2).find(|w| w[0] == "--agents-child") {
        let snap = arg("--snapshot-records", 1000);
        let (first, n) = (arg("--first", 0) as usize, arg("--hosts", 1000) as usize);
        return agents_child(w[1].clone().into(), first, n, arg("--records", 100), snap);
    }
    let hosts = arg("--hosts", 1000) as usize;
    let records = arg("--records", 100);
    let seconds = arg("--seconds", 20);
    let warmup = arg("--warmup", 10);
    let every = arg("--report-every", 0);
    // Agent processes: each needs ~2 descriptors per agent under the same (per-process)
    // limit as this one, so large runs need several (default: 4,000 agents each).
    let procs = arg("--agent-procs", 0) as usize;
    let separate = flag("--separate-agents") || procs > 0;
    let procs = if procs > 0 { procs } else { hosts.div_ceil(4000) }.max(1);
    let conc = arg("--concurrency", 16) as usize;
    let poll_ms = arg("--poll-ms", 100);
    let snap_records = arg("--snapshot-records", 1000);
    let replicas = arg("--replicas", 1).max(1) as usize;
    // PostgreSQL: a fresh database per run, so the measured one holds only this run's rows.
    let pg_admin = str_arg("--database");
    let pg_name = format!("imasnap_load_{}", std::process::id());
    let pg_url = pg_admin.as_ref().map(|url| {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {pg_name}")).unwrap();
        with_dbname(url, &pg_name)
    });
    assert!(replicas == 1 || pg_url.is_some(), "--replicas needs --database postgres://… (SQLite has one owner)");
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
    let (pg_url, pg_admin, pg_name) = (&pg_url, &pg_admin, &pg_name);
    rt.block_on(async move {
        let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
        let t0 = Instant::now();
        let mut agents = Vec::new();
        let mut children = Vec::new();
        let addrs: Vec<String> = if separate {
            let me = std::env::current_exe().unwrap();
            let per = hosts.div_ceil(procs);
            let mut lists = Vec::new();
            for first in (0..hosts).step_by(per.max(1)) {
                let n = per.min(hosts - first);
                let c = std::process::Command::new(&me)
                    .args(["--agents-child", dir.to_str().unwrap(), "--first", &first.to_string()])
                    .args(["--hosts", &n.to_string(), "--records", &records.to_string()])
                    .args(["--snapshot-records", &snap_records.to_string()])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                children.push(c);
                lists.push(dir.join(format!("agents-{first}.txt")));
            }
            let mut addrs = Vec::new();
            for list in lists {
                while !list.exists() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                addrs.extend(std::fs::read_to_string(&list).unwrap().lines().map(String::from));
            }
            addrs
        } else {
            agents = start_agents(0, hosts, records, snap_records, dir, &pki.agent).await;
            agents.iter().map(|a| a.addr.to_string()).collect()
        };
        let child_pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
        let agents_cpu = || child_pids.iter().map(|p| cpu_s(p)).sum::<f64>();
        let agents_rss = || {
            (!child_pids.is_empty())
                .then(|| format!(", agents RSS {} MB", child_pids.iter().map(|p| rss_kb(p)).sum::<u64>() / 1024))
        };
        eprintln!("{hosts} agents up in {:.1} s", t0.elapsed().as_secs_f64());
        let cfg = VerifierConfig {
            database: pg_url.as_ref().map_or_else(|| db_dir.join("verifier.db"), std::path::PathBuf::from),
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
            ek: Default::default(),
        };
        let vs: Vec<_> = (0..replicas)
            .map(|i| {
                let cfg = VerifierConfig { replica_id: pg_url.as_ref().map(|_| format!("bench-r{i}")), ..cfg.clone() };
                Verifier::open(cfg.clone(), cfg.agent_tls.client().unwrap()).unwrap().with_latency_recording()
            })
            .collect();
        // Replicas: every one heartbeats before the hosts exist, so the first lease cycle
        // after registration shares them out (a replica alone would claim them all).
        for v in &vs {
            v.sync_once().await;
        }
        let v = &vs[0];
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
                simulated: true,
                ek_activate: false,
                ek: None,
                ak_enrolment: None,
            })
            .await
            .unwrap();
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for v in &vs {
            tasks.push(tokio::spawn(v.clone().schedule(rx.clone())));
            // Leases and the reload of other replicas' changes (a no-op with SQLite).
            tasks.push(tokio::spawn(v.clone().sync(rx.clone())));
        }
        let sum = |f: &dyn Fn(&Verifier) -> u64| vs.iter().map(|v| f(v)).sum::<u64>();
        let rounds_now = || sum(&|v| v.stats.rounds.load(Ordering::Relaxed));
        let failed_now = || sum(&|v| v.stats.failed.load(Ordering::Relaxed));
        let dbs: Vec<_> = vs.iter().map(|v| v.db_stats()).collect();
        let db_now = || {
            let mut t = [0u64; 4];
            for db in &dbs {
                for (x, a) in t.iter_mut().zip([&db.transactions, &db.ops, &db.statements, &db.bound_bytes]) {
                    *x += a.load(Ordering::Relaxed);
                }
            }
            t
        };
        let pg_now = || {
            let url = pg_url.clone();
            tokio::task::spawn_blocking(move || url.map(|u| pg_counters(&u)))
        };
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        let r0 = rounds_now();
        let f0 = failed_now();
        let db0 = db_now();
        let pg0 = pg_now().await.unwrap();
        let w0 = storage_written();
        let cpu0 = (cpu_s("self"), agents_cpu());
        for v in &vs {
            v.latencies.lock().unwrap().clear();
        }
        let m0 = Instant::now();
        let step = if every > 0 { every } else { seconds };
        let (mut t, mut rl, mut fl) = (0, r0, f0);
        if every > 0 {
            println!("t=   0 s  (end of warm-up)  RSS {} MB{}", rss_kb("self") / 1024, agents_rss().unwrap_or_default());
        }
        while t < seconds {
            let d = step.min(seconds - t);
            tokio::time::sleep_until(tokio::time::Instant::from_std(m0 + Duration::from_secs(t + d))).await;
            t += d;
            if every > 0 {
                let (r, f) = (rounds_now(), failed_now());
                println!(
                    "t={t:>4} s  rounds {:>7} ({:>5.0}/s)  failed {}  RSS {} MB{}",
                    r - rl,
                    (r - rl) as f64 / d as f64,
                    f - fl,
                    rss_kb("self") / 1024,
                    agents_rss().unwrap_or_default()
                );
                (rl, fl) = (r, f);
            }
        }
        let el = m0.elapsed().as_secs_f64();
        let r1 = rounds_now();
        let f1 = failed_now();
        let cpu1 = (cpu_s("self"), agents_cpu());
        let db1 = db_now();
        let pg1 = pg_now().await.unwrap();
        let w1 = storage_written();
        let mut lat = Vec::new();
        for v in &vs {
            lat.append(&mut v.latencies.lock().unwrap());
        }
        let per_replica: Vec<u64> = vs.iter().map(|v| v.stats.rounds.load(Ordering::Relaxed)).collect();
        let _ = tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let rounds = r1 - r0;
        let rate = rounds as f64 / el;
        // Rounds whose write was saved (a replica's late write refused after its lease moved
        // on is counted by `stats.rounds` but records no latency).
        let saved = lat.len();
        let p50 = pct(&mut lat, 0.50);
        let p99 = pct(&mut lat, 0.99);
        let snaps: u64 = agents.iter().map(|a| a.service.lock().unwrap().metrics().snapshots).sum();
        println!(
            "{hosts} hosts x {records} records/round, concurrency {conc}, poll {poll_ms} ms: {rounds} attestations in {el:.1} s = {rate:.0}/s \
             ({} failed; {saved} saved = {:.0}/s); round latency p50 {p50:.1} ms, p99 {p99:.1} ms; {snaps} agent snapshots in total",
            f1 - f0,
            saved as f64 / el
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
        if let (Some((a, ac0)), Some((b, ac1))) = (&pg0, &pg1) {
            let d = |i: usize| (b[i] - a[i]) as f64;
            let n = rounds.max(1) as f64;
            println!(
                "PostgreSQL per round ({replicas} replica(s); rounds by replica over the whole run: {per_replica:?}): \
                 {:.0} B WAL, {:.2} transactions committed ({:.0}/s), {:.2} rolled back; rows returned {:.1}, fetched {:.1}, \
                 inserted {:.2}, updated {:.2}, deleted {:.2}; server CPU {:.0} us/round ({:.2} s); WAL {:.0} kB/s",
                d(0) / n,
                d(1) / n,
                d(1) / el,
                d(2) / n,
                d(3) / n,
                d(4) / n,
                d(5) / n,
                d(6) / n,
                d(7) / n,
                (ac1 - ac0) * 1e6 / n,
                ac1 - ac0,
                d(0) / el / 1000.0
            );
            let url = pg_url.clone().unwrap();
            let counts = tokio::task::spawn_blocking(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let r = c
                    .query_one("SELECT count(*), count(DISTINCT (host, state_version)), count(DISTINCT host) FROM verdicts", &[])
                    .unwrap();
                (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2))
            })
            .await
            .unwrap();
            println!(
                "verdict rows: {} ({} distinct host+state version, {} hosts); rounds counted by the replicas: {}",
                counts.0,
                counts.1,
                counts.2,
                per_replica.iter().sum::<u64>()
            );
        }
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
        for c in &mut children {
            drop(c.stdin.take());
        }
        for mut c in children {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(dir);
        if let Some(admin) = pg_admin.clone() {
            let drop_db = format!("DROP DATABASE {pg_name} WITH (FORCE)");
            let _ = tokio::task::spawn_blocking(move || {
                postgres::Client::connect(&admin, postgres::NoTls).and_then(|mut c| c.batch_execute(&drop_db))
            })
            .await;
        }
        if db_dir != dir {
            let _ = std::fs::remove_dir_all(db_dir);
        }
        std::process::exit(0);
    });
}
