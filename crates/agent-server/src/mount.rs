//! `[mount]` in agent.toml: the agent service mounts the whole-log view itself
//! (docs/MOUNT.md). The view reads its state under the host mutex, so a cut is never
//! seen half done.

use crate::service::SharedHost;
use imasnap_mount::{MountOptions, Mounted, Source, State};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn d_mode() -> String {
    "0440".into()
}

/// `[mount]`: where and for whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountToml {
    /// The mountpoint (an existing empty directory).
    pub path: PathBuf,
    /// Let other users in (FUSE `allow_other`); `mode` still applies.
    #[serde(default)]
    pub allow_other: bool,
    /// Octal mode of the files; securityfs's is 0440 (root only).
    #[serde(default = "d_mode")]
    pub mode: String,
    /// Let the kernel read log files straight from the view's caches (FUSE passthrough,
    /// Linux 6.9+; ignored where the kernel lacks it).
    #[serde(default = "d_true")]
    pub passthrough: bool,
}

fn d_true() -> bool {
    true
}

impl MountToml {
    pub fn options(&self) -> Result<MountOptions, String> {
        let mode = u16::from_str_radix(self.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("[mount] mode {:?}: want octal permission bits such as \"0440\"", self.mode))?;
        Ok(MountOptions { allow_other: self.allow_other, mode, passthrough: self.passthrough })
    }
}

/// The agent's host as the view's source.
pub struct HostSource {
    host: SharedHost,
    /// securityfs back ends: the kernel's `policy` is passed through.
    ima_dir: Option<PathBuf>,
}

impl HostSource {
    pub fn new(host: SharedHost, ima_dir: Option<PathBuf>) -> Self {
        Self { host, ima_dir }
    }
}

impl Source for HostSource {
    fn state(&mut self) -> Result<State, String> {
        self.host.lock().unwrap_or_else(|p| p.into_inner()).whole_log().map_err(|e| e.to_string())
    }

    fn has_policy(&self) -> bool {
        self.ima_dir.as_ref().is_some_and(|d| d.join("policy").exists())
    }

    fn policy(&mut self) -> Option<Result<Vec<u8>, String>> {
        let p = self.ima_dir.as_ref()?.join("policy");
        Some(std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display())))
    }

    fn describe(&self) -> String {
        let mode = self.host.lock().map(|h| h.mode()).unwrap_or("agent");
        format!("agent service ({mode})")
    }
}

/// Mounts the view of `host` as `cfg` says.
pub fn mount_host(host: SharedHost, cfg: &MountToml, ima_dir: Option<PathBuf>) -> anyhow::Result<Mounted> {
    let opts = cfg.options().map_err(anyhow::Error::msg)?;
    Ok(imasnap_mount::mount(Box::new(HostSource::new(host, ima_dir)), &cfg.path, opts)?)
}
