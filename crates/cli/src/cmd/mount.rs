//! `imasnap mount MOUNTPOINT`: the whole boot's log as a read-only FUSE directory.

use anyhow::{bail, Result};
use clap::Args;
use imasnap_agent::InterfaceChoice;
use imasnap_agent_server::config::{AgentServiceConfig, Backend};
use imasnap_mount::{Interface, MountOptions, StoreSource};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Mount the whole boot's IMA log, read-only, as files like /sys/kernel/security/ima.
///
/// After imasnap trims the kernel's list, tools that read the list from boot (evmctl,
/// Keylime, strongSwan) see only its tail. The view shows every record of the boot: the
/// committed snapshot files of the store, then the kernel's records after them, byte for
/// byte what the kernel would show had it never trimmed. Files:
/// binary_runtime_measurements, ascii_runtime_measurements, their per-bank twins
/// (`_sha1`, `_sha256`, … for the kernel's banks), runtime_measurements_count (the whole
/// boot), violations, and policy (the kernel's, passed through, where it has one).
///
/// Files report size 0 like securityfs: read them to EOF; a reader that keeps reading
/// sees records measured later. Writes fail with EROFS. Only the mounting user (root)
/// may read, unless --allow-other and --mode say otherwise. Runs until SIGINT or SIGTERM,
/// then unmounts. A snapshot file whose sha256 does not match the manifest is never
/// served: reads of it fail with EIO and the log names the file.
///
/// The agent (`imasnap agent snapshot` or `agent run`) may cut the list meanwhile: both
/// take `<state-dir>/lock`, so the view never sees a cut half done. A kernel-model agent
/// keeps its list in its own process: mount its view with `[mount]` in agent.toml.
///
/// Example: imasnap mount /run/imasnap/ima &
/// Example: cat /run/imasnap/ima/ascii_runtime_measurements | tail
/// Example: evmctl ima_measurement --pcrs sha256,/tmp/pcrs /run/imasnap/ima/binary_runtime_measurements
/// Example: imasnap mount --config /etc/imasnap/agent.toml --json /mnt/ima
#[derive(Args)]
pub struct MountArgs {
    /// An existing empty directory.
    mountpoint: PathBuf,
    /// The agent's snapshot store [default: the config's, else /var/lib/imasnap].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// IMA securityfs directory [default: the config's, else /sys/kernel/security/ima].
    #[arg(long)]
    ima_dir: Option<PathBuf>,
    /// How the agent trims the kernel's list [default: the config's, else auto]; legacy
    /// shows the kernel's own (never trimmed) list.
    #[arg(long, value_parser = ["auto", "snapshot", "staging", "legacy"])]
    interface: Option<String>,
    /// Take state_dir, ima_dir and interface from the agent's TOML.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Let other users in (FUSE allow_other); --mode still applies.
    #[arg(long)]
    allow_other: bool,
    /// Octal mode of the files (securityfs: 0440, root only).
    #[arg(long, default_value = "0440")]
    mode: String,
    /// Serve every read from this process (page cache), not by FUSE passthrough. By
    /// default, where the kernel allows it (6.9+, root), it reads the log files straight
    /// from the view's render caches, as fast as a plain file.
    #[arg(long)]
    no_passthrough: bool,
    /// Print the mount facts (mountpoint, files, source) as one JSON object once mounted
    /// (format "imasnap-mount/1").
    #[arg(long)]
    json: bool,
}

pub fn run(a: MountArgs) -> Result<ExitCode> {
    super::daemon::init_logs(false);
    let (mut state_dir, mut ima_dir, mut choice) =
        (PathBuf::from("/var/lib/imasnap"), PathBuf::from("/sys/kernel/security/ima"), InterfaceChoice::Auto);
    if let Some(p) = &a.config {
        let text = crate::ui::read_small_text(p, crate::ui::MAX_CONFIG_BYTES)?;
        let cfg = AgentServiceConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        if cfg.backend == Backend::Model {
            bail!(
                "{}: backend = \"model\": the model's list lives inside the agent process; \
                 mount its view with [mount] path = \"...\" in that agent.toml",
                p.display()
            );
        }
        (state_dir, ima_dir, choice) = (cfg.state_dir, cfg.ima_dir, cfg.interface);
    }
    state_dir = a.state_dir.unwrap_or(state_dir);
    ima_dir = a.ima_dir.unwrap_or(ima_dir);
    if let Some(i) = &a.interface {
        choice = serde_json::from_value(json!(i))?;
    }
    if !ima_dir.join("binary_runtime_measurements").exists() {
        bail!("{}: no binary_runtime_measurements: not an IMA securityfs directory", ima_dir.display());
    }
    let iface = match choice {
        InterfaceChoice::Auto => Interface::detect(&ima_dir),
        InterfaceChoice::Snapshot => Interface::Snapshot,
        InterfaceChoice::Staging => Interface::Staging,
        InterfaceChoice::Legacy => Interface::Legacy,
    };
    let mode = u16::from_str_radix(a.mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| anyhow::anyhow!("--mode {:?}: want octal permission bits such as 0440", a.mode))?;
    let src = StoreSource::new(state_dir, ima_dir, iface);
    let term = imasnap_mount::Termination::block()?;
    let m = imasnap_mount::mount(
        Box::new(src),
        &a.mountpoint,
        MountOptions { allow_other: a.allow_other, mode, passthrough: !a.no_passthrough },
    )?;
    if a.json {
        let j = json!({ "format": "imasnap-mount/1", "mountpoint": m.mountpoint, "files": m.files,
            "source": m.source, "interface": iface.as_str(), "mode": format!("{mode:04o}"),
            "allow_other": a.allow_other, "passthrough": !a.no_passthrough });
        println!("{j}");
    } else {
        println!("mounted {} ({} files; {})", m.mountpoint.display(), m.files.len(), m.source);
    }
    let sig = term.wait()?;
    eprintln!("{sig}: unmounting {}", m.mountpoint.display());
    m.unmount()?;
    Ok(ExitCode::SUCCESS)
}
