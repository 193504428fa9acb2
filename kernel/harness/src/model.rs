//! The scenario on the kernel model: same workload (same paths and file contents as the
//! guest writes), same agent, same evidence bundle.

use crate::scenario::{file_content, Scenario, Step};
use anyhow::{anyhow, bail, Result};
use imasnap_agent::{attest, Agent, AgentConfig, AgentError, Evidence, InterfaceChoice, KernelIfError, StagingFlavour};
use imasnap_kernel_model::{Config, Kernel, KernelError, MeasFile};
use imasnap_log::HashAlgo;
use imasnap_tpm::SoftTpm;
use sha2::{Digest, Sha256};
use std::path::Path;

/// What the model did besides the bundle: EBUSY refusals seen, snapshots taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelRun {
    pub busy_refusals: u64,
    pub snapshots: u64,
    /// Snapshot opens refused between kexec load and execute.
    pub kexec_refusals: u64,
    /// Staging cuts refused while another process held a `_staged` file for writing.
    pub writer_refusals: u64,
}

/// A process other than the agent (the guest's shell).
const SHELL: u32 = 77;

/// Runs `sc` on the model with a SoftTpm carrying the guest's banks (sha1, sha256), stores
/// snapshots under `state`, and writes the bundle to `out` with `nonce`.
pub fn run(sc: &Scenario, state: &Path, out: &Path, nonce: &[u8]) -> Result<ModelRun> {
    let tpm = SoftTpm::with_banks(7, &[HashAlgo::Sha1, HashAlgo::Sha256])?;
    let cfg = Config::default();
    // A scenario with staging steps runs the agent on the staging interface throughout
    // (the guest passes imasnap.iface=staging for recovery and the bundle).
    let staging = sc.uses_staging();
    let mut acfg = AgentConfig::new(state);
    if staging {
        acfg.interface = InterfaceChoice::Staging;
    }
    let (mut agent, _) = Agent::start(Kernel::boot(cfg.clone(), tpm)?, acfg.clone())?;
    let mut r = ModelRun::default();
    for (k, stage) in sc.stages().iter().enumerate() {
        for (i, step) in stage.iter().enumerate() {
            let tag = format!("s{k}x{i}");
            match step {
                Step::Measure(n) => {
                    // `cat /w/TAG/*`: the shell's glob order, names sorted as strings.
                    let mut names: Vec<String> = (0..*n).map(|j| j.to_string()).collect();
                    names.sort();
                    for name in names {
                        let j: u64 = name.parse().expect("decimal");
                        let d = Sha256::digest(file_content(&tag, j));
                        let path = format!("/w/{tag}/{name}");
                        agent.kernel_mut().measure_file(path.as_bytes(), &d)?;
                    }
                }
                Step::Snapshot => {
                    agent.snapshot_once()?;
                    r.snapshots += 1;
                }
                Step::Abort => {
                    let h = Kernel::snapshot_open(agent.kernel_mut())?;
                    Kernel::snapshot_close(agent.kernel_mut(), h);
                }
                Step::Busy => {
                    let h = Kernel::snapshot_open(agent.kernel_mut())?;
                    match agent.snapshot_once() {
                        Err(AgentError::Kernel(KernelIfError::Busy(_))) => r.busy_refusals += 1,
                        other => bail!("busy step: the agent got {other:?} instead of EBUSY"),
                    }
                    Kernel::snapshot_close(agent.kernel_mut(), h);
                }
                Step::Kexec | Step::KexecBusy(_) => {
                    let mut kernel = agent.into_kernel();
                    if let Step::KexecBusy(n) = step {
                        kernel.kexec_load();
                        for _ in 0..*n {
                            match kernel.snapshot_open() {
                                Err(KernelError::Busy(_)) => r.kexec_refusals += 1,
                                Ok(h) => kernel.snapshot_close(h),
                                Err(e) => bail!("kexec_busy step: {e}"),
                            }
                        }
                    }
                    let buf = kernel.kexec_save();
                    let k2 = Kernel::kexec_restore(cfg.clone(), kernel.into_tpm(), &buf)?;
                    agent = Agent::start(k2, acfg.clone())?.0;
                }
                // Reads only: the guest's view is checked against its own TPM.
                Step::Memory | Step::View => {}
                // Each guest cut is a new agent process with its own flavour: so here.
                Step::Trim | Step::Stage => {
                    let flavour = if *step == Step::Trim { StagingFlavour::Trim } else { StagingFlavour::Stage };
                    let c = AgentConfig { staging: flavour, ..acfg.clone() };
                    agent = Agent::start(agent.into_kernel(), c)?.0;
                    agent.snapshot_once()?;
                    r.snapshots += 1;
                }
                Step::WriterBusy => {
                    let fd = agent.kernel_mut().open(MeasFile::BINARY_STAGED, true, SHELL, true)?;
                    // `imasnap agent snapshot`: a new process, whose recovery reads the lists.
                    let mut a2 = Agent::new(agent.into_kernel(), acfg.clone())?;
                    match a2.recover() {
                        Err(AgentError::Kernel(KernelIfError::Busy(_))) => r.writer_refusals += 1,
                        Ok(_) => bail!("writer_busy step: the agent read the list while a writer held it"),
                        Err(e) => bail!("writer_busy step: the agent got {e} instead of EBUSY"),
                    }
                    let mut k = a2.into_kernel();
                    // `cat ascii_runtime_measurements` (a third process) is refused too.
                    if !matches!(k.open(MeasFile::ASCII, false, SHELL + 1, true), Err(KernelError::Busy(_))) {
                        bail!("writer_busy step: a reader opened the list while a writer held it");
                    }
                    k.close(fd);
                    agent = Agent::start(k, acfg.clone())?.0;
                }
                Step::StageOnly => {
                    let k = agent.kernel_mut();
                    let fd = k.open(MeasFile::BINARY_STAGED, true, SHELL, true)?;
                    let w = k.write(&fd, b"A\n");
                    k.close(fd);
                    w?;
                }
            }
        }
    }
    let (quote, ak) = attest(agent.kernel_mut().tpm_mut(), cfg.pcr, nonce).map_err(|e| anyhow!("quote: {e}"))?;
    agent.write_bundle(out, &Evidence { quote: &quote, nonce, ak: &ak })?;
    Ok(r)
}
