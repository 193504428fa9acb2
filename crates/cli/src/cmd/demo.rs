//! `imasnap demo`: the whole design on the embedded default, in under a minute.

use crate::ui;
use anyhow::{Context, Result};
use clap::Args;
use imasnap_kernel_model::{Config, PcrMode};
use imasnap_sim::demo::{run, DemoOptions};
use imasnap_tpm::SoftTpm;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the kernel model under a synthetic workload, with the agent snapshotting by policy
/// and the verifier attesting incrementally from a fresh TPM quote every round.
///
/// Everything is in-process: the kernel model and a software TPM (ECDSA P-256 AK). The
/// agent's store and each round's evidence bundle live under --work-dir (a temporary
/// directory by default). Exit code 0 when every round verified.
#[derive(Args)]
pub struct DemoArgs {
    /// Attestation rounds (workload, snapshots, fresh quote, incremental verification).
    #[arg(long, default_value_t = 30)]
    rounds: u32,
    /// Workload events per round (file opens with re-opens, buffers, violations).
    #[arg(long, default_value_t = 20_000)]
    events_per_round: u64,
    /// The agent snapshots when the kernel list holds this many records.
    #[arg(long, default_value_t = 5_000)]
    snapshot_records: u64,
    /// Seed of the workload and the software TPM (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Read all PCRs under the list lock (RFC) instead of only those IMA extended.
    #[arg(long)]
    tpm_under_lock: bool,
    /// Keep the agent's store and the bundles here [default: a temporary directory, removed].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Print the summary as JSON (format "imasnap-demo/1").
    #[arg(long)]
    json: bool,
}

pub fn run_demo(a: DemoArgs) -> Result<ExitCode> {
    let tmp;
    let work_dir = match &a.work_dir {
        Some(d) => d.clone(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let opts = DemoOptions {
        rounds: a.rounds,
        events_per_round: a.events_per_round,
        snapshot_records: a.snapshot_records,
        seed: a.seed,
        kernel: Config {
            pcr_mode: if a.tpm_under_lock { PcrMode::TpmUnderLock } else { PcrMode::ExtendedUnderLock },
            ..Config::default()
        },
        work_dir,
    };
    let pb = ui::count_bar(a.rounds as u64, "rounds", a.json);
    let s = run(&opts, SoftTpm::new(a.seed), |r| {
        pb.inc(1);
        pb.set_message(format!("round {}", r.round));
        if !r.verified {
            pb.println(format!("round {}: REJECTED: {}", r.round, r.reason.as_deref().unwrap_or("?")));
        }
    })
    .context("demo")?;
    pb.finish_and_clear();
    if a.json {
        ui::print_json_doc("imasnap-demo/1", serde_json::to_value(&s)?);
    } else {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!("imasnap demo: kernel model + software TPM, {} rounds", a.rounds);
        println!("  records measured          {:>10}", s.records_measured);
        println!("  snapshots taken           {:>10}", s.snapshots);
        println!(
            "  kernel list now           {:>10} records  {:>8.2} MiB log  {:>8.2} MiB slab (est.)",
            s.live_records,
            mib(s.live_bytes),
            mib(s.slab_bytes_now)
        );
        println!(
            "  without snapshotting      {:>10} records  {:>8.2} MiB log  {:>8.2} MiB slab (est.)",
            s.records_without_snapshotting,
            mib(s.bytes_without_snapshotting),
            mib(s.slab_bytes_without_snapshotting)
        );
        println!(
            "  verification per round    {:>10.2} ms mean, {:.2} ms max (incremental)",
            s.verify_ms_mean, s.verify_ms_max
        );
        println!("  snapshot pause            {:>10.1} µs max (appends blocked)", s.max_pause_us);
        println!("  verdicts                  {:>10} verified, {} rejected", s.rounds_verified, s.rounds_rejected);
        println!();
        println!("  round  records  snapshots  live  replayed  crossed  verify ms  verdict");
        for r in &s.rounds {
            println!(
                "  {:>5} {:>8} {:>10} {:>5} {:>9} {:>8} {:>10.2}  {}",
                r.round,
                r.records_total,
                r.snapshots,
                r.live_records,
                r.records_replayed,
                r.snapshots_crossed,
                r.verify_ms,
                if r.verified { "verified" } else { "REJECTED" }
            );
        }
    }
    Ok(ExitCode::from(if s.rounds_rejected == 0 { ui::EXIT_OK } else { ui::EXIT_FAIL }))
}

/// A temporary directory removed on drop (no extra dependency for one use).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!("imasnap-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
