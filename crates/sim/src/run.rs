//! `imasnap sim run`: the kernel model and the agent under a workload, ending in a bundle.

use crate::workload::{Event, Workload};
use imasnap_agent::{Agent, AgentConfig, AgentError, CrashPoint, Evidence};
use imasnap_kernel_model::{Config, Kernel, KernelError};
use imasnap_tpm::Tpm;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    #[error("TPM: {0}")]
    Tpm(#[from] imasnap_tpm::TpmError),
    #[error("{0}")]
    Other(String),
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Workload events to measure (file opens, buffers, violations; re-opens dedup).
    pub records: u64,
    /// Snapshot after every this many events.
    pub snapshot_every: u64,
    pub seed: u64,
    /// kexec into a new kernel after this many events (the TPM and the list carry over).
    pub kexec_at: Option<u64>,
    /// Crash the agent at this step of its first snapshot after the halfway point.
    pub crash_at: Option<CrashPoint>,
    /// Every M-th snapshot attempt is aborted (closed without `done`).
    pub abort_every: Option<u64>,
    pub kernel: Config,
    /// The agent's store.
    pub state_dir: PathBuf,
    /// Cut with the RFC snapshot file (markers) or upstream staging (no marker), and the
    /// staging flavour.
    pub interface: imasnap_agent::InterfaceChoice,
    pub staging: imasnap_agent::StagingFlavour,
    /// A quote-anchored checkpoint at every cut (on unless turned off).
    pub checkpoints: imasnap_agent::Checkpoints,
}

/// What happened, for the summary and the tests.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SimReport {
    pub events: u64,
    pub records_appended: u64,
    pub snapshots: u64,
    pub aborted_attempts: u64,
    pub crashes: u64,
    pub kexecs: u64,
    pub live_records: u64,
    pub live_bytes: u64,
    pub max_pause_ns: u64,
    /// Checkpoints taken at the cuts and what they cost (no kernel lock held).
    pub checkpoints: imasnap_agent::checkpoint::CheckpointStats,
}

/// The simulated host: a kernel model on some TPM, with its agent.
pub struct Machine<T: Tpm> {
    agent: Agent<Kernel<T>>,
    cfg: Config,
    pub report: SimReport,
    appended_base: u64,
}

impl<T: Tpm> Machine<T> {
    /// Cold boot on `tpm`, then the agent starts (and recovers whatever its store holds).
    pub fn boot(cfg: Config, tpm: T, agent_cfg: AgentConfig) -> Result<Self, SimError> {
        let k = Kernel::boot(cfg.clone(), tpm)?;
        let (agent, _) = Agent::start(k, agent_cfg)?;
        Ok(Self { agent, cfg, report: SimReport::default(), appended_base: 0 })
    }

    pub fn agent(&mut self) -> &mut Agent<Kernel<T>> {
        &mut self.agent
    }

    pub fn kernel(&mut self) -> &mut Kernel<T> {
        self.agent().kernel_mut()
    }

    /// Applies one workload event. Returns whether a record was appended.
    pub fn apply(&mut self, ev: &Event) -> Result<bool, SimError> {
        self.report.events += 1;
        let k = self.kernel();
        Ok(match ev {
            Event::File { path, digest } => k.measure_file(path, digest)?,
            Event::Buffer { name, buf } => k.measure_buffer(name, buf)?,
            Event::Violation { path } => {
                k.violation(path)?;
                true
            }
        })
    }

    /// One snapshot through the agent, or an aborted attempt (RFC only). Returns the
    /// records the cut added to the log: the marker, or none for staging.
    pub fn snapshot(&mut self, abort: bool) -> Result<u64, SimError> {
        let rfc = self.agent.interface() == imasnap_agent::Interface::Snapshot;
        if abort && rfc {
            let h = self.kernel().snapshot_open()?;
            self.kernel().snapshot_close(h);
            self.report.aborted_attempts += 1;
            return Ok(1);
        }
        match self.agent().snapshot_once() {
            Ok(_) => self.report.snapshots += 1,
            // Staging: every record was stored already (only a violation run since).
            Err(AgentError::Aborted(why)) if !rfc && why.contains("nothing new") => {}
            Err(e) => return Err(e.into()),
        }
        Ok(u64::from(rfc))
    }

    /// Arms a crash, snapshots, and restarts the agent as a new process would. Returns the
    /// records the cut added (as [`Machine::snapshot`]).
    pub fn snapshot_with_crash(&mut self, at: CrashPoint) -> Result<u64, SimError> {
        let rfc = self.agent.interface() == imasnap_agent::Interface::Snapshot;
        self.agent().crash_at(at);
        match self.agent().snapshot_once() {
            Err(AgentError::Crashed(_)) => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {
                // Recovery-only points (and RFC-only steps on staging) do not fire here.
                self.report.snapshots += 1;
                self.agent().crash_at(at);
            }
        }
        self.report.crashes += 1;
        self.restart_agent(Some(at))?;
        // A marker is appended at open, whatever happened after.
        Ok(u64::from(rfc))
    }

    /// The agent process dies (the kernel closes its descriptors) and starts again.
    pub fn restart_agent(&mut self, crash_in_recovery: Option<CrashPoint>) -> Result<(), SimError> {
        let a = &mut self.agent;
        a.kernel_mut().process_exit();
        a.restart()?;
        if let Some(p) = crash_in_recovery.filter(|p| p.in_recovery()) {
            a.crash_at(p);
            if a.recover().is_err() {
                a.kernel_mut().process_exit();
                a.restart()?;
            }
        }
        a.recover()?;
        Ok(())
    }

    /// kexec: the list goes through the hand-over buffer, the TPM carries over.
    pub fn kexec(&mut self) -> Result<(), SimError> {
        // The new kernel starts a new agent process.
        self.agent.kernel_mut().kexec()?;
        self.agent.restart()?;
        self.agent.recover()?;
        self.report.kexecs += 1;
        Ok(())
    }

    /// Quotes PCR 0-9 and the measurement PCR in every bank with `nonce`, and writes the bundle.
    pub fn write_bundle(&mut self, out: &Path, nonce: &[u8]) -> Result<(), SimError> {
        let pcr = self.cfg.pcr;
        let (qj, ak) = imasnap_agent::attest(self.kernel().tpm_mut(), pcr, nonce)?;
        self.agent().write_bundle(out, &Evidence { quote: &qj, nonce, ak: &ak })?;
        Ok(())
    }

    pub fn finish_report(&mut self) -> SimReport {
        let mut r = self.report.clone();
        r.snapshots = self.agent().manifest().map(|m| m.snapshots.len() as u64).unwrap_or(0);
        let k = self.kernel();
        r.live_records = k.len() as u64;
        r.live_bytes = k.list_bytes();
        r.max_pause_ns = k.max_pause().as_nanos() as u64;
        r.records_appended = self.appended_base;
        r.checkpoints = self.agent().checkpoint_stats();
        r
    }
}

/// The kernel model starts its measurement list at boot, so the TPM's measurement
/// PCR must be at its reset value (zero) in every bank, as after TPM2_Startup(CLEAR).
/// A real TPM that was used before (a reused swtpm) would make every quote disagree
/// with the list; refuse it up front with a clear message.
pub fn check_fresh(tpm: &mut impl Tpm, pcr: u32) -> Result<(), SimError> {
    for bank in tpm.banks() {
        let v = tpm.pcr_read(bank, &[pcr])?;
        if !matches!(v.first(), Some(v) if *v == imasnap_log::PcrValue::zero(bank)) {
            return Err(SimError::Other(format!(
                "{bank} PCR {pcr} of the TPM is not zero: the kernel model needs a TPM fresh from \
                 TPM2_Startup(CLEAR) (start a new swtpm, e.g. scripts/swtpm.sh start DIR PORT)"
            )));
        }
    }
    Ok(())
}

/// Runs a whole simulation and writes the bundle to `out`.
pub fn run(opts: &SimOptions, tpm: impl Tpm, out: &Path) -> Result<SimReport, SimError> {
    run_with_progress(opts, tpm, out, |_| {})
}

/// [`run`], reporting the number of events applied.
pub fn run_with_progress(
    opts: &SimOptions,
    tpm: impl Tpm,
    out: &Path,
    mut progress: impl FnMut(u64),
) -> Result<SimReport, SimError> {
    let mut tpm = tpm;
    check_fresh(&mut tpm, opts.kernel.pcr)?;
    let mut agent_cfg = AgentConfig::new(&opts.state_dir);
    agent_cfg.snapshot = imasnap_agent::SnapshotPolicy { checkpoints: opts.checkpoints, ..Default::default() };
    agent_cfg.interface = opts.interface;
    agent_cfg.staging = opts.staging;
    let mut m = Machine::boot(opts.kernel.clone(), tpm, agent_cfg)?;
    let mut appended = 1u64; // boot_aggregate
    let mut crash = opts.crash_at;
    let mut attempts = 0u64;
    for (i, ev) in Workload::new(opts.seed).take(opts.records as usize).enumerate() {
        let i = i as u64 + 1;
        appended += m.apply(&ev)? as u64;
        if i.is_multiple_of(1024) {
            progress(i);
        }
        if opts.kexec_at == Some(i) {
            m.kexec()?;
            appended += 1; // the new kernel's boot_aggregate
        }
        if opts.snapshot_every > 0 && i.is_multiple_of(opts.snapshot_every) {
            attempts += 1;
            let abort = opts.abort_every.is_some_and(|n| n > 0 && attempts.is_multiple_of(n));
            appended += match crash {
                Some(p) if !abort && i >= opts.records / 2 => {
                    crash = None;
                    m.snapshot_with_crash(p)?
                }
                _ => m.snapshot(abort)?,
            };
        }
    }
    m.appended_base = appended;
    let nonce = imasnap_log::HashAlgo::Sha256.hash(&[b"imasnap sim nonce", &opts.seed.to_le_bytes()]);
    m.write_bundle(out, &nonce.as_bytes()[..32])?;
    Ok(m.finish_report())
}
