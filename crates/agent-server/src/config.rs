//! The agent service's TOML configuration (`/etc/imasnap/agent.toml`).

use crate::duration::{Key, Unit};
use crate::tls::TlsFiles;
use imasnap_agent::{AgentConfig, InterfaceChoice, SnapshotPolicy, StagingFlavour};
use imasnap_store::Retention;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "/etc/imasnap/agent.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/imasnap";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8891";
/// The TPM an agent uses when `tpm` is not set: the kernel's resource manager device.
pub const DEFAULT_TPM: &str = "device:/dev/tpmrm0";
/// The explicit choice of the simulated machine, as the refusal of the defaults names it.
pub const SIMULATION_HINT: &str = "to attest the simulated machine instead (demos, tests), \
     say so in agent.toml: backend = \"model\" and tpm = \"soft\"";

/// Where the measurement list comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The in-process kernel model, driven by a synthetic workload: a simulation, chosen
    /// only explicitly (its evidence says `simulated`).
    Model,
    /// A real kernel's securityfs directory (`ima_dir`): with the RFC `snapshot` file the
    /// agent snapshots and trims; without it, read-only legacy mode (own copy, no trimming).
    /// The default: an agent started without settings attests the machine it runs on.
    #[default]
    Securityfs,
}

/// `[workload]`: the synthetic workload of the kernel-model back end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadToml {
    #[serde(default)]
    pub seed: u64,
    /// Records measured per second, in the background.
    #[serde(default)]
    pub records_per_second: u64,
    /// Records measured before answering each evidence request (load tests).
    #[serde(default)]
    pub records_per_evidence: u64,
}

fn d_state() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn d_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn d_tpm() -> String {
    DEFAULT_TPM.into()
}
fn d_ima() -> PathBuf {
    "/sys/kernel/security/ima".into()
}
fn d_pcr() -> u32 {
    10
}
fn d_template() -> String {
    "ima-ng".into()
}
fn d_max() -> u64 {
    256 << 20
}
fn d_tick() -> u64 {
    1000
}
fn d_snap_burst() -> u32 {
    10
}
fn d_snap_every() -> u64 {
    10_000
}

/// The duration keys of `agent.toml` (`tick = "1s"`; the `_ms`/`_secs` keys are the older
/// spelling).
pub const DURATION_KEYS: &[Key] = &[
    Key { table: "", key: "tick", old_key: "tick_ms", unit: Unit::Millis },
    Key { table: "", key: "snapshot_request_interval", old_key: "snapshot_request_interval_ms", unit: Unit::Millis },
    Key { table: "snapshot", key: "interval", old_key: "interval_secs", unit: Unit::Secs },
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentServiceConfig {
    /// The snapshot store (`<state_dir>/boots`, `<state_dir>/archive`).
    #[serde(default = "d_state")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub retention: Retention,
    /// Address of the HTTPS API.
    #[serde(default = "d_listen")]
    pub listen: String,
    /// `soft`, `soft:seed=N`, `swtpm:host=H,port=P`, `device:/dev/tpmrm0`, `tabrmd`.
    #[serde(default = "d_tpm")]
    pub tpm: String,
    #[serde(default)]
    pub backend: Backend,
    /// The kernel interface to trim with: `auto` (the RFC `snapshot` file, else upstream
    /// staging, else legacy), `snapshot`, `staging` or `legacy`.
    #[serde(default)]
    pub interface: InterfaceChoice,
    /// Staging: `trim` (read, store, then `N`; the default) or `stage` (`A`, read, store,
    /// then `D`).
    #[serde(default)]
    pub staging: StagingFlavour,
    /// securityfs back end: the IMA directory.
    #[serde(default = "d_ima")]
    pub ima_dir: PathBuf,
    /// The measurement PCR.
    #[serde(default = "d_pcr")]
    pub pcr: u32,
    /// Kernel model: `ima_template` (`ima-ng`, `ima-sig`, …).
    #[serde(default = "d_template")]
    pub ima_template: String,
    /// Largest evidence response; a request that would exceed it gets 413.
    #[serde(default = "d_max")]
    pub max_evidence_bytes: u64,
    /// How often the snapshot policy and the background workload run, in milliseconds
    /// (`tick = "1s"` in the file).
    #[serde(default = "d_tick")]
    pub tick_ms: u64,
    /// `POST /v1/snapshots` rate limit: at most this many at once…
    #[serde(default = "d_snap_burst")]
    pub snapshot_request_burst: u32,
    /// …then one more per this many milliseconds (`snapshot_request_interval = "10s"`).
    #[serde(default = "d_snap_every")]
    pub snapshot_request_interval_ms: u64,
    /// Enables `/v1/test/*` (add records, measure a file) and `crash_at` fault injection.
    /// Never on in production.
    #[serde(default)]
    pub test_endpoints: bool,
    #[serde(default)]
    pub snapshot: SnapshotPolicy,
    #[serde(default)]
    pub workload: WorkloadToml,
    /// Keylime's agent API on the same listener (docs/KEYLIME.md).
    #[serde(default)]
    pub keylime: crate::keylime::KeylimeToml,
    /// `[mount]`: mount the whole-log view (docs/MOUNT.md).
    #[serde(default)]
    pub mount: Option<crate::mount::MountToml>,
    pub tls: TlsFiles,
}

impl AgentServiceConfig {
    pub fn from_toml(s: &str) -> Result<Self, String> {
        let c: Self = crate::duration::from_toml(s, DURATION_KEYS)?;
        c.keylime.settings().map_err(|e| format!("[keylime]: {e}"))?;
        Ok(c)
    }

    /// On the real-machine back end, what the configuration names but this machine lacks:
    /// the IMA directory and the TPM device node. One message naming every missing piece
    /// and how to choose the simulation explicitly; `None` when nothing is missing (or the
    /// back end is the model). The TPM itself is opened later (and fails on its own terms).
    pub fn missing_on_this_machine(&self) -> Option<String> {
        if self.backend != Backend::Securityfs {
            return None;
        }
        let mut missing = Vec::new();
        if !self.ima_dir.join("binary_runtime_measurements").exists() {
            missing.push(format!(
                "ima_dir = {:?}: no IMA measurement list there (securityfs not mounted, IMA not \
                 enabled, or not root)",
                self.ima_dir
            ));
        }
        // `device` alone means /dev/tpmrm0 (imasnap_tpm::open_tpm).
        let dev = match self.tpm.as_str() {
            "device" => Some("/dev/tpmrm0"),
            t => t.strip_prefix("device:"),
        };
        if let Some(d) = dev.filter(|d| !std::path::Path::new(d).exists()) {
            missing.push(format!("tpm = {:?}: {d} does not exist (no TPM 2.0, or its driver is not loaded)", self.tpm));
        }
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "backend = \"securityfs\" (the default: the real machine) cannot start: {}; {SIMULATION_HINT}",
            missing.join("; ")
        ))
    }

    pub fn agent_config(&self) -> AgentConfig {
        let mut a = AgentConfig::new(&self.state_dir);
        a.retention = self.retention;
        a.snapshot = self.snapshot.clone();
        a.interface = self.interface;
        a.staging = self.staging;
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_typos() {
        let c = AgentServiceConfig::from_toml(
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nca = \"/ca.pem\"\n[snapshot]\nmax_records = 1000\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.tpm, "device:/dev/tpmrm0");
        assert_eq!(c.backend, Backend::Securityfs);
        assert!(!c.test_endpoints);
        assert_eq!(c.agent_config().snapshot.max_records, Some(1000));
        assert!(AgentServiceConfig::from_toml("listen = \"x\"\n").is_err(), "[tls] is required");
        assert!(
            AgentServiceConfig::from_toml("lisen = \"x\"\n[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n").is_err()
        );
        assert_eq!(c.tick_ms, 1000);
        assert_eq!((c.snapshot_request_burst, c.snapshot_request_interval_ms), (10, 10_000));
        assert_eq!((c.interface, c.staging), (InterfaceChoice::Auto, StagingFlavour::Trim));
        let tls = "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n";
        let st =
            AgentServiceConfig::from_toml(&format!("interface = \"staging\"\nstaging = \"stage\"\n{tls}")).unwrap();
        let a = st.agent_config();
        assert_eq!((a.interface, a.staging), (InterfaceChoice::Staging, StagingFlavour::Stage));
        assert!(AgentServiceConfig::from_toml(&format!("interface = \"rfc\"\n{tls}")).is_err());
    }

    /// Issue 16: the defaults are the real machine; where it is missing, one message names
    /// what is missing and how to choose the simulation.
    #[test]
    fn issue16_defaults_are_the_real_machine() {
        let tls = "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n";
        let d = AgentServiceConfig::from_toml(tls).unwrap();
        assert_eq!((d.backend, d.tpm.as_str()), (Backend::Securityfs, "device:/dev/tpmrm0"));
        assert_eq!(d.ima_dir, PathBuf::from("/sys/kernel/security/ima"));
        // Whatever this machine has, a missing device is named.
        let mut gone = d.clone();
        gone.tpm = "device:/nonexistent/tpmrm0".into();
        gone.ima_dir = "/nonexistent/ima".into();
        let e = gone.missing_on_this_machine().unwrap();
        for want in ["/nonexistent/tpmrm0 does not exist", "/nonexistent/ima", "backend = \"model\"", "tpm = \"soft\""]
        {
            assert!(e.contains(want), "{want}: {e}");
        }
        // The default on a machine without /dev/tpmrm0 (this test's machine, when so).
        if !std::path::Path::new("/dev/tpmrm0").exists() {
            let e = d.missing_on_this_machine().unwrap();
            assert!(e.contains("/dev/tpmrm0 does not exist") && e.contains("tpm = \"soft\""), "{e}");
        }
        // The simulation, chosen explicitly, needs neither.
        let sim = AgentServiceConfig::from_toml(&format!("backend = \"model\"\ntpm = \"soft\"\n{tls}")).unwrap();
        assert_eq!(sim.missing_on_this_machine(), None);
        // Present paths: nothing missing (a fake IMA directory, a device node that exists).
        let t = std::env::temp_dir().join(format!("imasnap-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("binary_runtime_measurements"), "").unwrap();
        let mut ok = d.clone();
        ok.ima_dir = t.clone();
        ok.tpm = "device:/dev/null".into();
        assert_eq!(ok.missing_on_this_machine(), None);
        ok.tpm = "swtpm:host=127.0.0.1,port=1".into();
        assert_eq!(ok.missing_on_this_machine(), None, "only device nodes are checked up front");
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn keylime_section() {
        let tls = "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n";
        let off = AgentServiceConfig::from_toml(tls).unwrap();
        assert!(!off.keylime.enabled, "off unless asked for");
        let on = AgentServiceConfig::from_toml(&format!(
            "[keylime]\nenabled = true\napi_versions = [\"2.2\"]\nhash_alg = \"sha384\"\n{tls}"
        ))
        .unwrap();
        let s = on.keylime.settings().unwrap();
        assert!(s.enabled);
        assert_eq!((s.versions(), s.hash), (vec!["2.2".to_string()], imasnap_log::HashAlgo::Sha384));
        assert_eq!(crate::service::Serve::from_config(&on).keylime, s);
        let e = AgentServiceConfig::from_toml(&format!("[keylime]\napi_versions = [\"3.0\"]\n{tls}")).unwrap_err();
        assert!(e.contains("[keylime]") && e.contains("3.0"), "{e}");
        assert!(AgentServiceConfig::from_toml(&format!("[keylime]\nenable = true\n{tls}")).is_err(), "typo refused");
    }

    #[test]
    fn finding_3_durations_with_units_and_old_keys() {
        let tls = "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n";
        let c = AgentServiceConfig::from_toml(&format!(
            "tick = \"500ms\"\nsnapshot_request_interval = \"2m\"\n[snapshot]\ninterval = \"1h\"\n{tls}"
        ))
        .unwrap();
        assert_eq!(c.tick_ms, 500);
        assert_eq!(c.snapshot_request_interval_ms, 120_000);
        assert_eq!(c.snapshot.interval_secs, Some(3600));
        let old =
            AgentServiceConfig::from_toml(&format!("tick_ms = 250\n[snapshot]\ninterval_secs = 60\n{tls}")).unwrap();
        assert_eq!((old.tick_ms, old.snapshot.interval_secs), (250, Some(60)));
        let e = AgentServiceConfig::from_toml(&format!("tick = \"1s\"\ntick_ms = 5\n{tls}")).unwrap_err();
        assert!(e.contains("tick"), "{e}");
        assert!(AgentServiceConfig::from_toml(&format!("tick = \"soon\"\n{tls}")).is_err());
    }
}
