//! `imasnap sim run`: the kernel model and the agent under a synthetic workload.

use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use imasnap_agent::CrashPoint;
use imasnap_kernel_model::{Config, PcrMode};
use imasnap_sim::SimOptions;
use imasnap_tpm::{SoftTpm, Tpm};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum SimCmd {
    /// Run the kernel model and the agent, then write an evidence bundle to --out.
    ///
    /// The workload counts events (file opens with re-opens, buffers, violations), not log
    /// records: a re-open of an unchanged file is not measured again, so 20,000 events give
    /// about 14,000 records.
    ///
    /// Example: imasnap sim run --out /tmp/b --events 20000 --snapshot-every 5000 --crash-at after-done
    /// Example: imasnap sim run --out /tmp/s --interface staging --staging stage
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Bundle directory to create (must not exist or be empty).
    #[arg(short = 'o', long, value_name = "DIR")]
    out: PathBuf,
    /// Workload events (file opens with re-opens, buffers, violations); the log gets fewer
    /// records, since re-opens of unchanged files are not measured again.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    events: u64,
    /// Renamed --events; refused with a hint.
    #[arg(long = "records", hide = true, value_name = "N")]
    old_records: Option<u64>,
    /// Snapshot after every K events.
    #[arg(long, value_name = "K", default_value_t = 2_500)]
    snapshot_every: u64,
    /// Seed of the workload and of the software TPM (same seed, same bundle).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// kexec into a new kernel after I events.
    #[arg(long)]
    kexec_at: Option<u64>,
    /// Crash the agent at this protocol step once, then restart and recover it.
    /// Steps: after-open, during-pending-write, after-pending-written, during-tmp-write,
    /// after-tmp-write, after-fsync, after-rename, after-dir-fsync, after-done,
    /// during-manifest-write, after-manifest-commit, abort-after-close, and recovery-* steps.
    #[arg(long, value_parser = parse_crash)]
    crash_at: Option<CrashPoint>,
    /// Abort every M-th snapshot attempt (close without done: the marker stays).
    #[arg(long)]
    abort_every: Option<u64>,
    /// Read all PCRs under the list lock (RFC) instead of only those IMA extended.
    #[arg(long)]
    tpm_under_lock: bool,
    /// TPM to extend and quote: soft (in-process, seeded by --seed), swtpm:host=H,port=P,
    /// device:/dev/tpmrm0 or tabrmd. A real TPM must be fresh (PCR 10 at zero), e.g.
    /// a new swtpm from scripts/swtpm.sh.
    #[arg(long, default_value = "soft")]
    tpm: String,
    /// The kernel interface the agent cuts with: snapshot (the RFC file: a marker per cut)
    /// or staging (upstream's A/D/N: no marker).
    #[arg(long, default_value = "snapshot", value_parser = ["snapshot", "staging"])]
    interface: String,
    /// Staging flavour: trim (read, store, N) or stage (A, read, store, D).
    #[arg(long, default_value = "trim", value_parser = ["trim", "stage"])]
    staging: String,
    /// Cut without quote-anchored checkpoints. By default every cut stores a TPM quote
    /// whose PCRs equal the replay up to a known record (docs/CHECKPOINTS.md), so
    /// `verify --latest-only` works on staging hosts too and `verify --jobs` splits history.
    #[arg(long)]
    no_checkpoints: bool,
    /// Agent store directory [default: DIR.state next to the bundle].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print the report as JSON (format "imasnap-sim-run/1").
    #[arg(long)]
    json: bool,
}

/// `after-done` → `CrashPoint::AfterDone`.
pub fn parse_crash(s: &str) -> Result<CrashPoint, String> {
    let norm: String = s.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_lowercase();
    CrashPoint::ALL
        .into_iter()
        .find(|p| format!("{p:?}").to_lowercase() == norm)
        .ok_or_else(|| format!("unknown crash point {s:?}; see --help"))
}

pub fn run(cmd: SimCmd) -> Result<ExitCode> {
    let SimCmd::Run(a) = cmd;
    if let Some(n) = a.old_records {
        anyhow::bail!("--records was renamed --events: it counts workload events, not log records (use --events {n})");
    }
    let state_dir = a.state_dir.clone().unwrap_or_else(|| a.out.with_extension("state"));
    let kernel = Config {
        pcr_mode: if a.tpm_under_lock { PcrMode::TpmUnderLock } else { PcrMode::ExtendedUnderLock },
        ..Config::default()
    };
    let opts = SimOptions {
        records: a.events,
        snapshot_every: a.snapshot_every,
        seed: a.seed,
        kexec_at: a.kexec_at,
        crash_at: a.crash_at,
        abort_every: a.abort_every,
        kernel,
        state_dir: state_dir.clone(),
        interface: serde_json::from_value(json!(a.interface)).context("--interface")?,
        staging: serde_json::from_value(json!(a.staging)).context("--staging")?,
        checkpoints: if a.no_checkpoints { imasnap_agent::Checkpoints::Off } else { imasnap_agent::Checkpoints::On },
    };
    let pb = ui::count_bar(a.events, "events", a.json);
    let tpm: Box<dyn Tpm> = if a.tpm.trim() == "soft" {
        Box::new(SoftTpm::new(a.seed))
    } else {
        imasnap_tpm::open_tpm(&a.tpm).with_context(|| format!("opening TPM {}", a.tpm))?
    };
    let rep = imasnap_sim::run::run_with_progress(&opts, tpm, &a.out, |n| pb.set_position(n))
        .with_context(|| format!("simulation writing {}", a.out.display()))?;
    pb.finish_and_clear();
    if a.json {
        ui::print_json_doc("imasnap-sim-run/1", json!({ "bundle": a.out, "state_dir": state_dir, "report": rep }));
    } else {
        println!(
            "bundle {}: {} events, {} snapshots, {} aborted, {} crash(es), {} kexec(s); live list {} records ({} bytes); max pause {:.1} µs",
            a.out.display(),
            rep.events,
            rep.snapshots,
            rep.aborted_attempts,
            rep.crashes,
            rep.kexecs,
            rep.live_records,
            rep.live_bytes,
            rep.max_pause_ns as f64 / 1000.0
        );
        let c = &rep.checkpoints;
        if c.taken > 0 {
            println!(
                "checkpoints: {} ({} quotes), {:.2} ms each on average, {:.2} ms at most; no kernel lock held",
                c.taken,
                c.quotes,
                c.total_ns as f64 / c.taken as f64 / 1e6,
                c.max_ns as f64 / 1e6
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
