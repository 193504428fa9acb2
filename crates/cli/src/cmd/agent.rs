//! `imasnap agent snapshot|bundle`: one-shot agent work on a real kernel's securityfs.

use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use imasnap_agent::{attest, Agent, AgentConfig, Evidence, Interface, SecurityFs, DEFAULT_IMA_DIR};
use imasnap_agent_server::legacy::LegacyHost;
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
    /// prefers the snapshot file when both exist. A kernel with neither (a stock kernel)
    /// cannot trim: the agent copies its list instead and takes a checkpoint (a TPM quote
    /// anchored at a record index) on the copy. Every cut takes a checkpoint unless
    /// `[snapshot] checkpoints = "off"`. Exit 0 on success, 2 when the kernel refuses
    /// (EBUSY: another process holds the measurement files), has no such interface, or
    /// nothing new was there to store.
    ///
    /// Example: imasnap agent snapshot --tpm device:/dev/tpmrm0 --state-dir /var/lib/imasnap --json
    /// Example: imasnap agent snapshot --interface staging --staging stage --tpm device:/dev/tpmrm0
    Snapshot(HostArgs),
    /// Quote the TPM and write an evidence bundle for `imasnap verify`.
    ///
    /// The quote covers PCR 0-9 and the measurement PCR in every bank and answers --nonce;
    /// the bundle holds the committed snapshots, the live list read after the quote, the
    /// quote and the AK's public key. On a stock kernel the agent's copy goes instead, split
    /// at its checkpoints.
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

/// What runs on this kernel: the snapshot agent (RFC or staging, after recovery), or on a
/// kernel that cannot trim, the legacy back end with its copy and checkpoints on it.
enum OneShot {
    Agent(Box<FsAgent>, serde_json::Value),
    Legacy(Box<LegacyHost<Box<dyn Tpm>>>),
}

fn config(h: &HostArgs) -> Result<AgentConfig> {
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
    Ok(cfg)
}

fn start(h: &HostArgs) -> Result<OneShot> {
    let cfg = config(h)?;
    let tpm = imasnap_tpm::open_tpm(&h.tpm).with_context(|| format!("opening TPM {}", h.tpm))?;
    let mut kernel = SecurityFs::new(&h.ima_dir, tpm, h.pcr);
    let interface = imasnap_agent_server::service::resolve_interface(&mut kernel, cfg.interface)?;
    if interface == Interface::Legacy {
        let l = LegacyHost::open(kernel, &cfg).context("opening the legacy copy")?;
        return Ok(OneShot::Legacy(Box::new(l)));
    }
    let (agent, rep) = Agent::start(kernel, cfg).context("starting the agent (recovery)")?;
    let rep = json!({
        "boot": rep.boot.to_string(),
        "created": rep.created,
        "retired": rep.retired.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        "pending": rep.pending.map(|d| format!("{d:?}")),
        "removed": rep.removed,
    });
    Ok(OneShot::Agent(Box::new(agent), rep))
}

pub fn run(cmd: AgentCmd) -> Result<ExitCode> {
    match cmd {
        AgentCmd::Run(a) => super::agent_service::run(a),
        AgentCmd::Snapshot(h) => snapshot(h),
        AgentCmd::Bundle(b) => bundle(b),
    }
}

fn snapshot(h: HostArgs) -> Result<ExitCode> {
    let (mut agent, recovery) = match start(&h)? {
        OneShot::Agent(a, r) => (a, r),
        OneShot::Legacy(l) => return legacy_checkpoint(&h, *l),
    };
    let t0 = Instant::now();
    let e = agent.snapshot_once().context("snapshot")?;
    let secs = t0.elapsed().as_secs_f64();
    if h.json {
        ui::print_json_doc(
            "imasnap-agent-snapshot/1",
            json!({
                "recovery": recovery,
                "interface": agent.interface().as_str(),
                "checkpoint": e.checkpoint.as_ref().map(|c| json!({ "index": c.index })),
                "snapshot": e,
                "seconds": secs,
            }),
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

/// A kernel that cannot trim: copy what is new and take a checkpoint on the copy.
fn legacy_checkpoint(h: &HostArgs, mut l: LegacyHost<Box<dyn Tpm>>) -> Result<ExitCode> {
    let t0 = Instant::now();
    let e = l.checkpoint_now().context("checkpoint on the legacy copy")?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: nothing measured since the last checkpoint (legacy kernel: the list is copied, never trimmed)",
            h.ima_dir.display()
        )
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let (records, _) = l.copied();
    if h.json {
        ui::print_json_doc(
            "imasnap-agent-snapshot/1",
            json!({
                "interface": "legacy",
                "checkpoint": e.checkpoint.as_ref().map(|c| json!({ "index": c.index })),
                "copy": { "path": l.copy_path(), "records": records },
                "snapshot": e,
                "seconds": secs,
            }),
        );
    } else {
        println!(
            "legacy kernel (nothing trimmed): checkpoint {} on the copy at record {} ({} records since the last), \
             {records} records copied, {:.1} ms",
            e.seq,
            e.end_index(),
            e.count,
            secs * 1e3
        );
    }
    Ok(ExitCode::from(ui::EXIT_OK))
}

fn bundle(b: BundleArgs) -> Result<ExitCode> {
    let nonce = hex::decode(b.nonce.trim()).with_context(|| format!("--nonce {:?} is not hex", b.nonce))?;
    let pcr = b.host.pcr;
    let (info, recovery) = match start(&b.host)? {
        OneShot::Agent(mut agent, recovery) => {
            let (quote, ak) = attest(agent.kernel_mut().tpm_mut(), pcr, &nonce).context("quote")?;
            let ev = Evidence { quote: &quote, nonce: &nonce, ak: &ak };
            (agent.write_bundle(&b.out, &ev).map_err(anyhow::Error::from), recovery)
        }
        OneShot::Legacy(mut l) => {
            let (quote, ak) = attest(l.securityfs().tpm_mut(), pcr, &nonce).context("quote")?;
            let ev = Evidence { quote: &quote, nonce: &nonce, ak: &ak };
            (l.write_bundle(&b.out, &ev).map_err(anyhow::Error::from), json!({ "interface": "legacy" }))
        }
    };
    let info = info.with_context(|| format!("writing {}", b.out.display()))?;
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
