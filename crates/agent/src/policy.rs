//! When to snapshot, and the agent's TOML configuration.

use crate::kernel::LiveStats;
use imasnap_store::Retention;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Records,
    Bytes,
    Interval,
    OnDemand,
}

/// Snapshot triggers; any one that fires is enough. All off means on demand only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPolicy {
    /// Snapshot when the live list holds at least this many records.
    pub max_records: Option<u64>,
    /// Snapshot when the live list takes at least this many bytes (binary SHA1 form).
    pub max_bytes: Option<u64>,
    /// Snapshot this often, if the list holds anything beyond its head.
    pub interval_secs: Option<u64>,
    /// A quote-anchored checkpoint at every cut (docs/CHECKPOINTS.md): one TPM quote per
    /// cut, ~50-100 ms on a hardware TPM. On by default.
    #[serde(default)]
    pub checkpoints: Checkpoints,
}

/// Whether cuts take checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoints {
    /// Quote at every cut, and store the checkpoint before anything is deleted; a cut
    /// whose checkpoint fails is aborted (its records stay in the kernel).
    #[default]
    On,
    Off,
}

impl SnapshotPolicy {
    /// The trigger that fires for `stats`, `since_last` after the previous snapshot (or
    /// agent start). A list of only its head is never worth a snapshot.
    pub fn due(&self, stats: LiveStats, since_last: Duration) -> Option<Trigger> {
        if stats.records <= 1 {
            return None;
        }
        if self.max_records.is_some_and(|n| stats.records >= n) {
            return Some(Trigger::Records);
        }
        if self.max_bytes.is_some_and(|n| stats.bytes >= n) {
            return Some(Trigger::Bytes);
        }
        if self.interval_secs.is_some_and(|s| since_last >= Duration::from_secs(s)) {
            return Some(Trigger::Interval);
        }
        None
    }
}

/// Which kernel interface the agent trims the list with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceChoice {
    /// What the kernel has: the RFC `snapshot` file, else the `_staged` files, else legacy.
    #[default]
    Auto,
    Snapshot,
    Staging,
    Legacy,
}

/// How the staging back end cuts (docs/STAGING.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagingFlavour {
    /// Read the list, store it, then `N` for exactly what was stored. One record stays
    /// in the list (the next segment's head), so a restart can tell from the list's head
    /// whether `N` ran. Refused by the kernel with `ima_flush_htable`.
    #[default]
    Trim,
    /// `A`, read the staged list, store it, then `D`.
    Stage,
}

/// The agent's configuration file (`[snapshot]` holds the policy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The well-known store directory (`<state_dir>/boots`, `<state_dir>/archive`).
    pub state_dir: PathBuf,
    /// What to do with an earlier cold boot's snapshots.
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub snapshot: SnapshotPolicy,
    /// The kernel interface to trim with (`auto` detects it).
    #[serde(default)]
    pub interface: InterfaceChoice,
    /// The staging back end's flavour.
    #[serde(default)]
    pub staging: StagingFlavour,
}

impl AgentConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            retention: Retention::default(),
            snapshot: SnapshotPolicy::default(),
            interface: InterfaceChoice::Auto,
            staging: StagingFlavour::Trim,
        }
    }

    /// A configuration that trims with staging in `flavour`.
    pub fn staging(state_dir: impl Into<PathBuf>, flavour: StagingFlavour) -> Self {
        Self { interface: InterfaceChoice::Staging, staging: flavour, ..Self::new(state_dir) }
    }

    pub fn from_toml(s: &str) -> Result<Self, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_config() {
        let c = AgentConfig::from_toml(
            "state_dir = \"/var/lib/imasnap\"\nretention = \"delete\"\n[snapshot]\nmax_records = 5000\ninterval_secs = 3600\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/imasnap"));
        assert_eq!(c.retention, Retention::Delete);
        assert_eq!(
            c.snapshot,
            SnapshotPolicy {
                max_records: Some(5000),
                max_bytes: None,
                interval_secs: Some(3600),
                ..Default::default()
            }
        );
        let d = AgentConfig::from_toml("state_dir = \"/s\"\n").unwrap();
        assert_eq!(d.retention, Retention::Archive);
        assert_eq!(d.snapshot, SnapshotPolicy::default());
        assert!(AgentConfig::from_toml("state_dir = \"/s\"\n[snapshot]\nmax_record = 1\n").is_err(), "typo refused");
        assert!(AgentConfig::from_toml("state_dir = \"/s\"\nretention = \"keep\"\n").is_err());
    }

    #[test]
    fn triggers() {
        let p = SnapshotPolicy {
            max_records: Some(100),
            max_bytes: Some(10_000),
            interval_secs: Some(60),
            ..Default::default()
        };
        let s = |records, bytes| LiveStats { records, bytes };
        let t0 = Duration::ZERO;
        assert_eq!(p.due(s(10, 100), t0), None);
        assert_eq!(p.due(s(100, 100), t0), Some(Trigger::Records));
        assert_eq!(p.due(s(10, 10_000), t0), Some(Trigger::Bytes));
        assert_eq!(p.due(s(10, 100), Duration::from_secs(60)), Some(Trigger::Interval));
        assert_eq!(p.due(s(1, 1 << 30), Duration::from_secs(1 << 20)), None, "only the head");
        assert_eq!(SnapshotPolicy::default().due(s(1 << 20, 1 << 30), Duration::MAX), None, "on demand only");
    }
}
