//! Kernel figures for docs/PERFORMANCE.md: slab growth with and without snapshots, the
//! time inside the snapshot critical section in both PCR modes, and one snapshot's time
//! as the agent sees it.
//!
//!   cargo run --release -p imasnap-kernel-harness --example figures -- [RECORDS] [EVERY]
//!
//! Defaults: 100000 records, a snapshot every 5000. Three boots of the patched kernel;
//! `FIGURES=no_snapshots,snapshots_drop` picks runs (also: snapshots_shadow, snapshots_tpm).

use anyhow::{anyhow, Context, Result};
use imasnap_kernel_harness::guest::{self, GuestConfig, GuestRun};
use imasnap_kernel_harness::scenario::Scenario;
use std::time::Duration;

fn kv(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// (records in the list, Slab kB, VmallocUsed kB) of the first and last `memory` lines.
fn memory(g: &GuestRun) -> Result<[(u64, u64, u64); 2]> {
    let t = g.trace()?;
    let m: Vec<(u64, u64, u64)> = t
        .iter()
        .filter(|l| l.starts_with("memory "))
        .map(|l| (kv(l, "list").unwrap_or(0), kv(l, "Slab").unwrap_or(0), kv(l, "VmallocUsed").unwrap_or(0)))
        .collect();
    match (m.first(), m.last()) {
        (Some(a), Some(b)) if m.len() >= 2 => Ok([*a, *b]),
        _ => Err(anyhow!("trace has no two memory lines:\n{}", t.join("\n"))),
    }
}

/// Agent-side seconds of every snapshot (snap-*.json).
fn snapshot_seconds(g: &GuestRun) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(&g.out)? {
        let p = e?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.starts_with("snap-") && name.ends_with(".json") {
            let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p)?)?;
            v.push(j["seconds"].as_f64().context("seconds")?);
        }
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

fn scenario(records: u64, every: u64, snapshots: bool) -> Scenario {
    let mut s = String::from("memory\n");
    for _ in 0..records / every {
        s.push_str(&format!("measure {every}\n"));
        if snapshots {
            s.push_str("snapshot\n");
        }
    }
    s.push_str("memory\n");
    Scenario::parse(&s).expect("generated scenario")
}

fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let records = args.first().copied().unwrap_or(100_000);
    let every = args.get(1).copied().unwrap_or(5_000);
    let cfg = |cmdline: &str| -> Result<GuestConfig> {
        Ok(GuestConfig {
            kernel: guest::kernel_image()?,
            imasnap: guest::imasnap_binary()?,
            cmdline: cmdline.into(),
            memory_mb: 1024,
            timeout: Duration::from_secs(3600),
            modules: None,
        })
    };
    let work = tempfile::tempdir()?;
    let mut out = serde_json::Map::new();
    let runs = [
        ("no_snapshots", scenario(records, every, false), ""),
        ("snapshots", scenario(records, every, true), ""),
        ("snapshots_drop", scenario(records, every, true), "ima_snapshot_htable=drop"),
    ];
    let pick = std::env::var("FIGURES").unwrap_or_else(|_| "no_snapshots,snapshots".into());
    for (name, sc, cmdline) in runs {
        if !pick.split(',').any(|p| p == name) {
            continue;
        }
        eprintln!("figures: {name}: {records} records, boot args {cmdline:?}");
        let g = guest::run(&sc, &cfg(cmdline)?, &work.path().join(name))?;
        let [a, b] = memory(&g)?;
        let secs = snapshot_seconds(&g)?;
        let lock = std::fs::read_to_string(g.out.join("lock_ns.txt")).unwrap_or_default();
        let median = secs.get(secs.len() / 2).copied();
        eprintln!(
            "figures: {name}: list {} -> {} records, Slab {} -> {} kB (+{}), VmallocUsed {} -> {} kB (+{}), \
             {} snapshots, median {:?} s, guest {:.0} s; lock: {}",
            a.0,
            b.0,
            a.1,
            b.1,
            b.1 as i64 - a.1 as i64,
            a.2,
            b.2,
            b.2 as i64 - a.2 as i64,
            secs.len(),
            median,
            g.seconds,
            lock.replace('\n', " ")
        );
        out.insert(
            name.into(),
            serde_json::json!({
                "list_records": [a.0, b.0], "slab_kb": [a.1, b.1], "vmalloc_used_kb": [a.2, b.2],
                "grown_kb": (b.1 + b.2) as i64 - (a.1 + a.2) as i64,
                "snapshot_seconds_median": median, "snapshots": secs.len(),
                "lock_ns": lock, "guest_seconds": g.seconds,
            }),
        );
    }
    println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(out))?);
    Ok(())
}
