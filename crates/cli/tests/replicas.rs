//! Verifier replicas on PostgreSQL (issue 15): three `imasnap verifier run` processes share
//! one database and 300 agents (in this process, soft TPMs), then, in order:
//!
//! 1. failover: SIGKILL one replica; every host is verified again within two lease
//!    periods (plus one poll interval), and no state version has two verdicts;
//! 2. stale replica: SIGSTOP one past its lease, SIGCONT: its late writes are refused
//!    (logged), no host's checkpoint ever goes back;
//! 3. database restart (scripts/postgres.sh restart) in the middle of rounds: rounds
//!    resume, and every host's state row agrees with its verdict history.
//!
//! One test, phases in sequence: restarting the server must not hit other tests. Needs
//! IMASNAP_POSTGRES_URL and IMASNAP_POSTGRES_DIR (scripts/test.sh sets both), else it
//! fails, unless IMASNAP_SKIP_POSTGRES=1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use imasnap_agent_server::config::AgentServiceConfig;
use imasnap_agent_server::devpki::write_dev_pki;
use imasnap_agent_server::service as agent;
use imasnap_verifier_service::model::{HostSpec, LateJoin};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{start_service, Proc};
const HOSTS: usize = 300;
const LEASE_MS: i64 = 3000;
const POLL_MS: i64 = 2000;

/// `sql` through psql: rows of `|`-separated fields.
fn sql(url: &str, q: &str) -> Vec<Vec<String>> {
    let o = Command::new("psql").args([url, "-X", "-q", "-At", "-F", "|", "-c", q]).output().unwrap();
    assert!(o.status.success(), "psql {q}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

fn one(url: &str, q: &str) -> i64 {
    sql(url, q)[0][0].parse().unwrap()
}

fn db_now(url: &str) -> i64 {
    one(url, "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
}

/// Hosts without a verified round started in (from, to].
fn not_verified_in(url: &str, from: i64, to: i64) -> i64 {
    one(
        url,
        &format!(
            "SELECT count(*) FROM hosts h WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.host = h.name \
             AND v.verdict = 'verified' AND v.at_ms > {from} AND v.at_ms <= {to})"
        ),
    )
}

fn wait_all_verified_after(url: &str, from: i64, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let left = not_verified_in(url, from, i64::MAX);
        if left == 0 {
            return;
        }
        assert!(t0.elapsed() < limit, "{left} hosts not verified within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The invariants that hold whatever crashed: one verdict per state version, each host's
/// state row one version past its newest verdict and counting every verdict, and
/// checkpoints that never go back.
fn consistent(url: &str) {
    let dup = one(
        url,
        "SELECT count(*) FROM (SELECT host, state_version FROM verdicts GROUP BY host, state_version \
         HAVING count(*) > 1) d",
    );
    assert_eq!(dup, 0, "a state version was verified twice");
    let bad = sql(
        url,
        "SELECT s.name, s.version, s.rounds, max(v.state_version), count(v.id) FROM host_state s \
         JOIN verdicts v ON v.host = s.name GROUP BY s.name, s.version, s.rounds \
         HAVING max(v.state_version) + 1 <> s.version OR count(v.id) <> s.rounds",
    );
    assert!(bad.is_empty(), "state rows disagree with their verdicts: {bad:?}");
    let rows = sql(
        url,
        "SELECT host, coalesce(row::json->>'checkpoint', '') FROM verdicts WHERE verdict = 'verified' ORDER BY host, id",
    );
    let mut last: Option<(String, u64)> = None;
    for r in rows {
        let Ok(c) = r[1].parse::<u64>() else { continue };
        if let Some((h, prev)) = &last {
            if *h == r[0] {
                assert!(c >= *prev, "host {h}: checkpoint went back from {prev} to {c}");
            }
        }
        last = Some((r[0].clone(), c));
    }
}

fn with_db(url: &str, db: &str) -> String {
    let head = url.split('?').next().unwrap();
    let scheme_end = head.find("://").unwrap() + 3;
    let host_end = head[scheme_end..].find('/').map(|i| scheme_end + i).unwrap_or(head.len());
    format!("{}/{db}", &head[..host_end])
}

#[test]
fn replicas_failover_stale_replica_and_database_restart() {
    if std::env::var("IMASNAP_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        eprintln!("PostgreSQL test skipped: IMASNAP_SKIP_POSTGRES=1");
        return;
    }
    let (Ok(base), Ok(pg_dir)) = (std::env::var("IMASNAP_POSTGRES_URL"), std::env::var("IMASNAP_POSTGRES_DIR")) else {
        panic!(
            "this test needs PostgreSQL: run it through scripts/test.sh, or `D=$(mktemp -d); scripts/postgres.sh start \
             $D 55432` and set IMASNAP_POSTGRES_URL=postgres://imasnap@127.0.0.1:55432/postgres \
             IMASNAP_POSTGRES_DIR=$D, or set IMASNAP_SKIP_POSTGRES=1 to skip it"
        )
    };
    let dbname = format!("imasnap_replicas_{}", std::process::id());
    sql(&base, &format!("DROP DATABASE IF EXISTS {dbname}"));
    sql(&base, &format!("CREATE DATABASE {dbname}"));
    let url = with_db(&base, &dbname);

    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server_tls = pki.agent.server().unwrap();
    let t0 = Instant::now();
    let agents: Vec<agent::Running> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..HOSTS {
            let mut c = AgentServiceConfig::from_toml(&format!(
                "state_dir = {:?}\nbackend = \"model\"\ntpm = \"soft:seed={}\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
                dir.join(format!("a{i}")),
                i + 1,
                pki.agent.cert,
                pki.agent.key,
                pki.ca
            ))
            .unwrap();
            c.workload.seed = i as u64;
            c.workload.records_per_evidence = 5;
            let host = agent::open_host(&c).unwrap();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            v.push(agent::spawn(l, server_tls.clone(), host, agent::Serve::default()).unwrap());
        }
        v
    });
    eprintln!("{HOSTS} agents up in {:.1} s", t0.elapsed().as_secs_f64());

    let replica = |i: usize| {
        let cfg = format!(
            "database = {url:?}\nlisten = \"127.0.0.1:0\"\nlease = \"{LEASE_MS}ms\"\nreplica_id = \"r{i}\"\n\
             timeout = \"10s\"\nmax_concurrency = 32\n\
             [tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n[agent_tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            pki.verifier.cert, pki.verifier.key, pki.ca, pki.verifier.cert, pki.verifier.key, pki.ca
        );
        let p = dir.join(format!("verifier{i}.toml"));
        std::fs::write(&p, cfg).unwrap();
        start_service(&["verifier", "run", "--config", p.to_str().unwrap()], &dir.join(format!("verifier{i}.log")))
    };
    let mut reps: Vec<Option<Proc>> = (0..3).map(|i| Some(replica(i))).collect();

    // Hosts registered through replica 0 only: the others see them through the database.
    let addr0 = reps[0].as_ref().unwrap().addr.clone();
    let api = |addr: &str| {
        let mut c = imasnap_verifier_service::client::ApiClient::new(
            &format!("localhost:{}", addr.rsplit(':').next().unwrap()),
            pki.admin.client().unwrap(),
        );
        c.server_name = "localhost".into();
        c
    };
    rt.block_on(async {
        let c = api(&addr0);
        for (i, a) in agents.iter().enumerate() {
            let spec = HostSpec {
                name: format!("h{i:03}"),
                address: a.addr.to_string(),
                server_name: Some("localhost".into()),
                ak: None,
                tofu: true,
                policy: None,
                agent_cert: None,
                poll_interval_ms: POLL_MS as u64,
                late_join: LateJoin::FullHistory,
                simulated: true,
                ek_activate: false,
                ek: None,
                ak_enrolment: None,
            };
            c.ok(hyper::Method::POST, "/v1/hosts", Some(serde_json::to_value(&spec).unwrap())).await.unwrap();
        }
    });
    let start_ms = db_now(&url);
    wait_all_verified_after(&url, 0, Duration::from_secs(120));
    eprintln!("all {HOSTS} hosts verified {:.1} s after registration", (db_now(&url) - start_ms) as f64 / 1e3);
    // Every replica holds some hosts, and any replica serves every host.
    std::thread::sleep(Duration::from_millis(2 * LEASE_MS as u64));
    let addr2 = reps[2].as_ref().unwrap().addr.clone();
    let (health, hosts) = rt.block_on(async {
        let c = api(&addr2);
        (
            c.ok(hyper::Method::GET, "/v1/health", None).await.unwrap(),
            c.ok(hyper::Method::GET, "/v1/hosts", None).await.unwrap(),
        )
    });
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), HOSTS, "replica 2 lists every host");
    let listed = health["replicas"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{health}");
    for r in listed {
        assert!(r["leases"].as_i64().unwrap() > 0, "every replica holds leases: {health}");
    }
    consistent(&url);

    // 1. Failover: SIGKILL replica 1.
    let mut r1 = reps[1].take().unwrap();
    r1.child.kill().unwrap();
    r1.child.wait().unwrap();
    let kill_ms = db_now(&url);
    let bound = 2 * LEASE_MS + POLL_MS;
    std::thread::sleep(Duration::from_millis((bound + 1500) as u64));
    let late = not_verified_in(&url, kill_ms, kill_ms + bound);
    assert_eq!(late, 0, "{late} hosts not verified within two lease periods (+ one poll) of the SIGKILL");
    consistent(&url);
    eprintln!("failover: every host verified within {bound} ms of the SIGKILL");

    // 2. Stale replica: SIGSTOP replica 2 past its lease, then SIGCONT.
    let pid2 = reps[2].as_ref().unwrap().child.id().to_string();
    let log2_path = reps[2].as_ref().unwrap().log.clone();
    assert!(Command::new("kill").args(["-STOP", &pid2]).status().unwrap().success());
    let stop_ms = db_now(&url);
    std::thread::sleep(Duration::from_millis((2 * LEASE_MS + 1000) as u64));
    let before = std::fs::read_to_string(&log2_path).unwrap().len();
    assert!(Command::new("kill").args(["-CONT", &pid2]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(3000));
    let log2 = std::fs::read_to_string(&log2_path).unwrap();
    let log2 = log2.get(before..).unwrap_or("").to_string();
    let refused = log2.matches("late round refused").count();
    eprintln!("stale replica: {refused} late writes refused");
    assert!(refused > 0, "the woken replica's overdue rounds were not refused; its log:\n{log2}");
    consistent(&url);
    wait_all_verified_after(&url, stop_ms + 2 * LEASE_MS, Duration::from_secs(30));

    // 3. Database restart in the middle of rounds.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
    let o = Command::new(&script).args(["restart", &pg_dir]).output().unwrap();
    assert!(o.status.success(), "postgres restart: {}", String::from_utf8_lossy(&o.stderr));
    let back_ms = db_now(&url);
    wait_all_verified_after(&url, back_ms, Duration::from_secs(60));
    consistent(&url);
    let unsaved: usize = [0, 2]
        .iter()
        .map(|i| std::fs::read_to_string(&reps[*i].as_ref().unwrap().log).unwrap().matches("round not saved").count())
        .sum();
    eprintln!("database restart: {unsaved} rounds failed while the server was down (logged, nothing written)");
    eprintln!("database restart: every host verified again {} ms after the server came back", db_now(&url) - back_ms);
    let health = rt.block_on(async { api(&addr0).ok(hyper::Method::GET, "/v1/health", None).await.unwrap() });
    assert!(health["database_error"].is_null(), "{health}");

    drop(reps);
    drop(agents);
    sql(&base, &format!("DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"));
}
