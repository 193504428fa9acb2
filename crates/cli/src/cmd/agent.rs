//! `imasnap agent snapshot|bundle`: one-shot agent work on a real kernel's securityfs.

use crate::ui;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use imasnap_agent::{attest, Agent, AgentConfig, Evidence, SecurityFs, DEFAULT_IMA_DIR};
use imasnap_tpm::Tpm;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Run the agent service: snapshots by policy and on request, evidence over HTTPS (mTLS).
    Run(super::agent_service::RunArgs),
    /// Cut the kernel's list now: store its older records, then have the kernel free them.
    ///
    /// Recovers the store first (a crash in an earlier run is settled), then cuts with the
    /// kernel's interface: the RFC `snapshot` file (our kernel series: every record before
    /// a fresh snapshot_aggregate marker, then `done`), or upstream staging
    /// (CONFIG_IMA_STAGING, Linux 7.2: `trim` reads the list, stores it and writes `N`;
    /// `stage` writes `A`, stores the staged records and writes `D`). `--interface auto`
    /// prefers the snapshot file when both exist. Exit 0 on success, 2 when the kernel
    /// refuses (EBUSY: another process holds the measurement files), has no such interface,
    /// or nothing new was there to store.
    ///
    /// Example: imasnap agent snapshot --tpm device:/dev/tpmrm0 --state-dir /var/lib/imasnap --json
    /// Example: imasnap agent snapshot --interface staging --staging stage --tpm device:/dev/tpmrm0
    Snapshot(HostArgs),
    /// Quote the TPM and write an evidence bundle for `imasnap verify`.
    ///
    /// The quote covers PCR 0-9 and the measurement PCR in every bank and answers --nonce;
    /// the bundle holds the committed snapshots, the live list read after the quote, the
    /// quote and the AK's public key. Works on stock kernels too (no snapshots then).
    ///
    /// Example: imasnap agent bundle --tpm device:/dev/tpmrm0 --nonce 00112233 --out /tmp/ev
    Bundle(BundleArgs),
}

#[derive(Args)]
pub struct HostArgs {
    /// IMA securityfs directory.
    #[arg(long, default_value = DEFAULT_IMA_DIR)]
    ima_dir: PathBuf,
    /// Snapshot store (one directory per boot below it) [default: the config's, else
    /// /var/lib/imasnap].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Agent TOML (state_dir, retention, [snapshot]); --state-dir wins over its state_dir.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The TPM the kernel extends: device:/dev/tpmrm0, swtpm:host=H,port=P, tabrmd.
    #[arg(long, default_value = "device:/dev/tpmrm0")]
    tpm: String,
    /// The measurement PCR (CONFIG_IMA_MEASURE_PCR_IDX).
    #[arg(long, default_value_t = 10)]
    pcr: u32,
    /// The kernel interface to cut with [default: the config's, else auto].
    #[arg(long, value_parser = ["auto", "snapshot", "staging", "legacy"])]
    interface: Option<String>,
    /// Staging flavour: trim (N) or stage (A/D) [default: the config's, else trim].
    #[arg(long, value_parser = ["trim", "stage"])]
    staging: Option<String>,
    /// Print the result as JSON (format "imasnap-agent-snapshot/1" or "imasnap-agent-bundle/1").
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BundleArgs {
    #[command(flatten)]
    host: HostArgs,
    /// The verifier's nonce, hex (at most 64 bytes).
    #[arg(long, value_name = "HEX")]
    nonce: String,
    /// Bundle directory to create (must not exist or be empty).
    #[arg(short = 'o', long, value_name = "DIR")]
    out: PathBuf,
}

type FsAgent = Agent<SecurityFs<Box<dyn Tpm>>>;

fn start(h: &HostArgs) -> Result<(FsAgent, serde_json::Value)> {
    let mut cfg = match &h.config {
        Some(p) => {
            let text = ui::read_small_text(p, ui::MAX_CONFIG_BYTES)?;
            AgentConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => AgentConfig::new("/var/lib/imasnap"),
    };
    if let Some(d) = &h.state_dir {
        cfg.state_dir = d.clone();
    }
    // The names are the config file's: one spelling for both.
    if let Some(i) = &h.interface {
        cfg.interface = serde_json::from_value(json!(i)).context("--interface")?;
    }
    if let Some(f) = &h.staging {
        cfg.staging = serde_json::from_value(json!(f)).context("--staging")?;
    }
    let tpm = imasnap_tpm::open_tpm(&h.tpm).with_context(|| format!("opening TPM {}", h.tpm))?;
    let mut kernel = SecurityFs::new(&h.ima_dir, tpm, h.pcr);
    imasnap_agent_server::service::resolve_interface(&mut kernel, cfg.interface)?;
    let (agent, rep) = Agent::start(kernel, cfg).context("starting the agent (recovery)")?;
    let rep = json!({
        "boot": rep.boot.to_string(),
        "created": rep.created,
        "retired": rep.retired.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        "pending": rep.pending.map(|d| format!("{d:?}")),
        "removed": rep.removed,
    });
    Ok((agent, rep))
}

pub fn run(cmd: AgentCmd) -> Result<ExitCode> {
    match cmd {
        AgentCmd::Run(a) => super::agent_service::run(a),
        AgentCmd::Snapshot(h) => snapshot(h),
        AgentCmd::Bundle(b) => bundle(b),
    }
}

fn snapshot(h: HostArgs) -> Result<ExitCode> {
    let (mut agent, recovery) = start(&h)?;
    if agent.interface() == imasnap_agent::Interface::Legacy {
        bail!(
            "{}: neither a `snapshot` file nor `_staged` files; this kernel cannot trim its list (legacy read-only mode)",
            h.ima_dir.display()
        );
    }
    let t0 = Instant::now();
    let e = agent.snapshot_once().context("snapshot")?;
    let secs = t0.elapsed().as_secs_f64();
    if h.json {
        ui::print_json_doc(
            "imasnap-agent-snapshot/1",
            json!({ "recovery": recovery, "interface": agent.interface().as_str(), "snapshot": e, "seconds": secs }),
        );
    } else {
        println!(
            "snapshot {} ({}, {} cut): records {}..{} ({}), sha256 {}, {:.1} ms",
            e.seq,
            e.file,
            e.cut.as_str(),
            e.first_index,
            e.end_index(),
            e.count,
            e.sha256,
            secs * 1e3
        );
    }
    Ok(ExitCode::from(ui::EXIT_OK))
}

fn bundle(b: BundleArgs) -> Result<ExitCode> {
    let nonce = hex::decode(b.nonce.trim()).with_context(|| format!("--nonce {:?} is not hex", b.nonce))?;
    let (mut agent, recovery) = start(&b.host)?;
    let pcr = b.host.pcr;
    let (quote, ak) = attest(agent.kernel_mut().tpm_mut(), pcr, &nonce).context("quote")?;
    let info = agent
        .write_bundle(&b.out, &Evidence { quote: &quote, nonce: &nonce, ak: &ak })
        .with_context(|| format!("writing {}", b.out.display()))?;
    if b.host.json {
        ui::print_json_doc(
            "imasnap-agent-bundle/1",
            json!({
                "recovery": recovery,
                "bundle": info.dir,
                "snapshots": info.snapshots,
                "live_first_index": info.index.live_first_index,
                "live_bytes": info.live_bytes,
                "banks": info.index.banks,
            }),
        );
    } else {
        println!(
            "bundle {}: {} snapshot(s), live list from record {} ({} bytes)",
            info.dir.display(),
            info.snapshots,
            info.index.live_first_index,
            info.live_bytes
        );
    }
    Ok(ExitCode::from(ui::EXIT_OK))
}
