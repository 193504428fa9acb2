//! Evidence bytes per attestation round, on every back end, after N records of history.
//!
//! For each back end (kernel model with RFC snapshots, model with staging trim, model with
//! staging stage, legacy securityfs), builds a boot with `history` records (cut every 5,000
//! records where the back end can cut), answers a first evidence request from record 0 as a
//! verifier without state would send, adds 100 records, and answers the next request from
//! the first round's end, as a verifier with state does. Prints one line per back end and,
//! with --json, a JSON document. Evidence is counted as it goes on the wire: magic, header
//! length, header JSON, snapshot bytes and live bytes.
//!
//! cargo run --release -p imasnap-agent-server --features sim --example bytes_per_round -- 10000 1000000

use imasnap_agent::{AgentConfig, InterfaceChoice, StagingFlavour};
use imasnap_agent_server::api;
use imasnap_agent_server::host::{EvidenceView, Host, HostOps, WorkloadCfg};
use imasnap_agent_server::legacy::LegacyHost;
use imasnap_kernel_model::{Config, Kernel};
use imasnap_log::HashAlgo;
use imasnap_store::Retention;
use imasnap_tpm::SoftTpm;
use std::time::Instant;

const NEW: u64 = 100;
const CUT_EVERY: u64 = 5_000;

fn wire_bytes(v: &EvidenceView) -> u64 {
    let prefix = imasnap_wire::evidence::encode_prefix(&v.header).map(|p| p.len() as u64).unwrap_or(0);
    prefix + v.files.iter().map(|f| f.2).sum::<u64>() + v.live.len() as u64
}

fn file_digest(i: u64) -> Vec<u8> {
    HashAlgo::Sha256.hash(&[&i.to_le_bytes()]).as_bytes().to_vec()
}

fn measure(k: &mut Kernel<SoftTpm>, from: u64, n: u64) -> Result<(), String> {
    for i in from..from + n {
        k.measure_file(format!("/usr/lib/app/file{i}").as_bytes(), &file_digest(i)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Row {
    backend: &'static str,
    history: u64,
    first_round: u64,
    next_round: u64,
}

/// History through an agent on the model, cutting every CUT_EVERY records.
fn model(history: u64, interface: InterfaceChoice, staging: StagingFlavour, name: &'static str) -> Result<Row, String> {
    let d = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cfg = AgentConfig::new(d.path().join("state"));
    cfg.interface = interface;
    cfg.staging = staging;
    let k = Kernel::boot(Config::default(), SoftTpm::new(1)).map_err(|e| e.to_string())?;
    let mut h = Host::start(k, cfg, WorkloadCfg::default()).map_err(|e| e.to_string())?;
    let mut done = 0;
    while done < history {
        let n = CUT_EVERY.min(history - done);
        measure(h.agent().kernel_mut(), done, n)?;
        done += n;
        h.snapshot(None).map_err(|e| e.to_string())?;
    }
    rounds(&mut h, history, name)
}

fn rounds(h: &mut dyn HostOps, history: u64, name: &'static str) -> Result<Row, String> {
    let first = h.evidence(b"round one", api::From::Index(0), None).map_err(|e| e.to_string())?;
    let first_round = wire_bytes(&first);
    // What the verifier proved: everything it was sent.
    let live_records = imasnap_log::BinaryReader::new(first.live.as_slice(), imasnap_store::snapshot_format()).count();
    let checkpoint = first.header.live_first_index + live_records as u64;
    Ok(Row { backend: name, history, first_round, next_round: next(h, checkpoint)? })
}

fn next(h: &mut dyn HostOps, checkpoint: u64) -> Result<u64, String> {
    NEXT.with(|f| f.borrow_mut()(h))?;
    let v = h.evidence(b"round two", api::From::Index(checkpoint), None).map_err(|e| e.to_string())?;
    Ok(wire_bytes(&v))
}

thread_local! {
    /// How to add NEW records to the host under test.
    static NEXT: std::cell::RefCell<Box<dyn FnMut(&mut dyn HostOps) -> Result<(), String>>> =
        std::cell::RefCell::new(Box::new(|_| Ok(())));
}

/// A legacy kernel: its whole list in a securityfs-like directory, never trimmed.
fn legacy(history: u64) -> Result<Row, String> {
    let d = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ima = d.path().join("ima");
    std::fs::create_dir_all(&ima).map_err(|e| e.to_string())?;
    let mut k = Kernel::boot(Config::default(), SoftTpm::new(2)).map_err(|e| e.to_string())?;
    measure(&mut k, 0, history)?;
    let live = ima.join("binary_runtime_measurements");
    std::fs::write(&live, k.binary_measurements(HashAlgo::Sha1)).map_err(|e| e.to_string())?;
    let fs = imasnap_agent::SecurityFs::new(&ima, SoftTpm::new(2), 10);
    let mut cfg = imasnap_agent::AgentConfig::new(d.path().join("state"));
    cfg.retention = Retention::Delete;
    let mut h = LegacyHost::open(fs, &cfg).map_err(|e| e.to_string())?;
    let first = h.evidence(b"round one", api::From::Index(0), None).map_err(|e| e.to_string())?;
    let first_round = wire_bytes(&first);
    let checkpoint = h.copied().0;
    measure(&mut k, history, NEW)?;
    std::fs::write(&live, k.binary_measurements(HashAlgo::Sha1)).map_err(|e| e.to_string())?;
    let v = h.evidence(b"round two", api::From::Index(checkpoint), None).map_err(|e| e.to_string())?;
    Ok(Row { backend: "securityfs-legacy", history, first_round, next_round: wire_bytes(&v) })
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    args.retain(|a| a != "--json");
    let sizes: Vec<u64> =
        if args.is_empty() { vec![10_000] } else { args.iter().filter_map(|a| a.parse().ok()).collect() };
    let mut rows = Vec::new();
    for &n in &sizes {
        let t0 = Instant::now();
        let mut add = 1_000_000_000u64;
        NEXT.with(|f| {
            *f.borrow_mut() = Box::new(move |h: &mut dyn HostOps| {
                for i in 0..NEW {
                    h.measure(format!("/opt/new/{add}-{i}").as_bytes(), &file_digest(add + i), None)
                        .map_err(|e| e.to_string())?;
                }
                add += NEW;
                Ok(())
            })
        });
        for (iface, fl, name) in [
            (InterfaceChoice::Snapshot, StagingFlavour::Trim, "model-snapshot"),
            (InterfaceChoice::Staging, StagingFlavour::Trim, "model-staging-trim"),
            (InterfaceChoice::Staging, StagingFlavour::Stage, "model-staging-stage"),
        ] {
            match model(n, iface, fl, name) {
                Ok(r) => rows.push(r),
                Err(e) => eprintln!("{name} at {n}: {e}"),
            }
        }
        match legacy(n) {
            Ok(r) => rows.push(r),
            Err(e) => eprintln!("legacy at {n}: {e}"),
        }
        eprintln!("history {n}: {:.1?}", t0.elapsed());
    }
    for r in &rows {
        println!(
            "{:<22} history {:>9}: first round {:>11} bytes, next round ({NEW} new records) {:>7} bytes",
            r.backend, r.history, r.first_round, r.next_round
        );
    }
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"backend": r.backend, "history": r.history, "first_round_bytes": r.first_round,
                "next_round_bytes": r.next_round, "new_records": NEW})
            })
            .collect();
        println!("{}", serde_json::json!({ "format": "imasnap-bytes-per-round/1", "rows": v }));
    }
}
