//! The attested host as the service sees it: an [`Agent`] over a kernel back end with its
//! TPM, plus (for the kernel model) a synthetic workload so there is something to attest.
//!
//! [`HostKernel`] is the back-end trait on top of [`SnapshotKernel`]: it adds the TPM that
//! quotes and the model-only hooks. Implemented for the in-process kernel model and for a
//! real kernel's securityfs with the RFC `snapshot` file or upstream staging
//! ([`SecurityFs`]). A securityfs with neither is served by [`crate::legacy::LegacyHost`]
//! instead (read-only, own copy).

use crate::api::{self, AkJson, EvidenceHeader, SnapshotJson};
use imasnap_agent::{Agent, AgentConfig, AgentError, CrashPoint, SecurityFs, SnapshotKernel};
#[cfg(feature = "sim")]
use imasnap_kernel_model::Kernel;
use imasnap_log::{BinaryReader, HashAlgo};
#[cfg(feature = "sim")]
use imasnap_sim::workload::{Event, Workload};
use imasnap_store::SnapshotEntry;
use imasnap_tpm::{PcrSelection, Tpm};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A kernel back end the service can run: snapshots (through [`SnapshotKernel`]) and the
/// TPM that quotes its measurement PCR.
pub trait HostKernel: SnapshotKernel + Send + 'static {
    fn tpm(&mut self) -> &mut dyn Tpm;
    /// The back end's name, as logged and shown by `/v1/health`.
    fn mode(&self) -> &'static str;
    /// Applies a synthetic workload event (kernel model only).
    #[cfg(feature = "sim")]
    fn apply(&mut self, _ev: &Event) -> Result<bool, String> {
        Err("this back end has no synthetic workload (a real kernel measures by itself)".into())
    }
    /// Measures a file with its `security.ima` xattr (kernel model only).
    fn measure_xattr(&mut self, _path: &[u8], _digest: &[u8], _xattr: Option<&[u8]>) -> Result<bool, String> {
        Err("this back end has no synthetic workload (a real kernel measures by itself)".into())
    }
    /// The agent process died: the kernel closes its file descriptors.
    fn process_exit(&mut self) {}
    /// How long the last snapshot held the list lock, if the back end knows.
    fn last_pause(&self) -> Option<Duration> {
        None
    }
}

#[cfg(feature = "sim")]
impl<T: Tpm + 'static> HostKernel for Kernel<T> {
    fn tpm(&mut self) -> &mut dyn Tpm {
        self.tpm_mut()
    }
    fn mode(&self) -> &'static str {
        "model"
    }
    fn apply(&mut self, ev: &Event) -> Result<bool, String> {
        let r = match ev {
            Event::File { path, digest } => self.measure_file(path, digest),
            Event::Buffer { name, buf } => self.measure_buffer(name, buf),
            Event::Violation { path } => self.violation(path).map(|_| true),
        };
        r.map_err(|e| e.to_string())
    }
    fn measure_xattr(&mut self, path: &[u8], digest: &[u8], xattr: Option<&[u8]>) -> Result<bool, String> {
        self.measure_file_xattr(path, digest, xattr).map_err(|e| e.to_string())
    }
    fn process_exit(&mut self) {
        Kernel::process_exit(self)
    }
    fn last_pause(&self) -> Option<Duration> {
        Kernel::last_pause(self)
    }
}

/// A real kernel with the RFC `snapshot` file: the agent trims the kernel's list.
impl<T: Tpm + 'static> HostKernel for SecurityFs<T> {
    fn tpm(&mut self) -> &mut dyn Tpm {
        self.tpm_mut()
    }
    fn mode(&self) -> &'static str {
        "securityfs-snapshot"
    }
}

/// Records in a binary SHA1 list.
pub(crate) fn count_records(b: &[u8]) -> Result<u64, HostError> {
    // Parsed in place (every record checked), never copied out.
    let mut rd = BinaryReader::new(b, imasnap_store::snapshot_format());
    rd.visit_raw(usize::MAX, |_| true).map_err(|e| HostError::Other(format!("live list: {e}")))?;
    Ok(rd.next_index())
}

/// Byte offset of record `to` in a binary SHA1 list whose first record is `first`.
pub(crate) fn byte_offset(b: &[u8], first: u64, to: u64) -> Result<usize, HostError> {
    let mut rd = BinaryReader::starting_at(b, imasnap_store::snapshot_format(), first);
    let want = usize::try_from(to.saturating_sub(first)).unwrap_or(usize::MAX);
    rd.visit_raw(want, |_| true).map_err(|e| HostError::Other(format!("live list: {e}")))?;
    if rd.next_index() < to {
        return Err(HostError::Other(format!("live list ends before record {to}")));
    }
    Ok(rd.offset() as usize)
}

/// Byte offset in file `p` of record `to`, decoding from byte `start`, where record
/// `first` begins (a stored segment file, or a range of the legacy copy).
pub(crate) fn file_offset(p: &std::path::Path, start: u64, first: u64, to: u64) -> Result<u64, HostError> {
    use std::io::Seek;
    let mut f = std::fs::File::open(p).map_err(|e| HostError::Other(format!("{}: {e}", p.display())))?;
    f.seek(std::io::SeekFrom::Start(start)).map_err(|e| HostError::Other(format!("{}: {e}", p.display())))?;
    let mut rd = BinaryReader::starting_at(std::io::BufReader::new(f), imasnap_store::snapshot_format(), first);
    while rd.next_index() < to {
        match rd.next() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(HostError::Other(format!("{}: {e}", p.display()))),
            None => return Err(HostError::Other(format!("{} ends before record {to}", p.display()))),
        }
    }
    Ok(start + rd.offset())
}

/// Quotes PCR 0-9 and `pcr` in every bank with `nonce`; the AK as the agent ships it.
pub(crate) fn quote_tpm(
    tpm: &mut dyn Tpm,
    banks: &[HashAlgo],
    pcr: u32,
    nonce: &[u8],
) -> Result<(imasnap_tpm::Quote, AkJson), HostError> {
    let mut pcrs: Vec<u32> = (0..10).collect();
    pcrs.push(pcr);
    let sel = PcrSelection::uniform(banks, &pcrs)?;
    let q = tpm.quote(nonce, &sel)?;
    Ok((q, AkJson::from_public(&tpm.ak_public())))
}

/// A segment's bytes: file, byte offset of its first record, length.
pub(crate) type SegmentBytes = (PathBuf, u64, u64);

/// The segments an evidence request sends, whatever stores them.
pub(crate) struct SegmentView {
    /// The first record sent: the verifier's index, the newest checkpoint (latest), or
    /// the live list's head.
    pub from_index: u64,
    pub snapshots: Vec<SnapshotJson>,
    /// What to stream, in header order.
    pub files: Vec<SegmentBytes>,
    pub data_from: Option<u64>,
}

/// Header entries and data ranges for the segments of `m`, for a request `from` of a
/// verifier on this boot (`same_boot`) or not, when the list ends at record `end`.
/// `locate` gives a segment's bytes: a file, the byte offset of its first record and
/// its length (a whole snapshot file, or a range of the legacy back end's copy).
pub(crate) fn segment_view(
    m: &imasnap_store::Manifest,
    from: api::From,
    same_boot: bool,
    end: u64,
    locate: &dyn Fn(&SnapshotEntry) -> Result<SegmentBytes, HostError>,
) -> Result<SegmentView, HostError> {
    // Suffix evidence: a verifier that holds state names its index, and only the
    // records from there travel, whatever the back end.
    // The newest checkpoint lets a latest-segment verifier start there on any back end.
    let newest_cp = m.snapshots.iter().rev().find_map(|s| s.checkpoint.as_ref()).map(|c| c.index);
    let latest_cp = from == api::From::Latest && newest_cp.is_some();
    let from_index = match from {
        api::From::Latest => newest_cp.map_or(m.next_index, |c| c.min(end)),
        api::From::Index(i) if same_boot => i.min(end),
        api::From::Index(_) => 0,
    };
    let mut snapshots = Vec::with_capacity(m.snapshots.len());
    let mut files = Vec::new();
    let mut data_from = None;
    // A verifier with state needs no entry for segments that end before its index
    // (the one ending exactly there names the boundary the next segment starts with),
    // so the header, too, stays the size of what is new.
    let resume = matches!(from, api::From::Index(_)) && from_index > 0;
    let cp_keep: Vec<u64> =
        m.snapshots.iter().rev().filter(|s| s.checkpoint.is_some()).take(2).map(|s| s.seq).collect();
    for s in m.snapshots.iter().filter(|s| !resume || s.end_index() >= from_index) {
        let with_data = (from != api::From::Latest || latest_cp) && s.end_index() > from_index;
        // Latest: the newest checkpoint and the one before it (whose quote its
        // qualifyingData chains to) are enough; otherwise every listed one travels.
        let checkpoint = match from {
            api::From::Latest => s.checkpoint.clone().filter(|_| cp_keep.contains(&s.seq)),
            _ => s.checkpoint.clone(),
        };
        let mut j = SnapshotJson {
            seq: s.seq,
            first_index: s.first_index,
            count: s.count,
            sha256: None,
            cut: s.cut,
            end_marker: s.end_marker.clone(),
            next_sha1: s.next_sha1.clone(),
            pcrs_end: Default::default(),
            checkpoint,
            bytes: None,
        };
        if with_data {
            let (p, start, len) = locate(s)?;
            let off = if from_index > s.first_index {
                data_from = Some(from_index);
                file_offset(&p, start, s.first_index, from_index)? - start
            } else {
                j.sha256 = Some(s.sha256.clone());
                0
            };
            j.pcrs_end = s.pcrs_end.clone();
            j.bytes = Some(len - off);
            files.push((p, start + off, len - off));
        }
        snapshots.push(j);
    }
    Ok(SegmentView { from_index, snapshots, files, data_from })
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    #[error("TPM: {0}")]
    Tpm(#[from] imasnap_tpm::TpmError),
    #[error("{0}")]
    BadRequest(String),
    /// The request cannot be served in this mode (e.g. a snapshot on a legacy kernel).
    #[error("{0}")]
    Conflict(String),
    /// The answer would exceed `max_evidence_bytes` (413).
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Other(String),
}

/// What an evidence request produced: the header and the data to stream after it.
#[derive(Debug)]
pub struct EvidenceView {
    pub header: EvidenceHeader,
    /// Snapshot files to stream, in header order: path, byte offset to start at (a
    /// suffix), and the length the header states.
    pub files: Vec<(PathBuf, u64, u64)>,
    pub live: Vec<u8>,
}

/// The object-safe face of a host, for the HTTP layer.
pub trait HostOps: Send {
    fn evidence(
        &mut self,
        nonce: &[u8],
        from: api::From,
        boot_hint: Option<(u64, Option<String>)>,
    ) -> Result<EvidenceView, HostError>;
    /// Keylime's quote and stitched ASCII list ([`crate::keylime`]).
    fn keylime_quote(
        &mut self,
        req: &crate::keylime::QuoteRequest,
    ) -> Result<crate::keylime::KeylimeEvidence, HostError> {
        let _ = req;
        Err(HostError::Conflict(format!("the Keylime API is not served in mode {}", self.mode())))
    }
    fn snapshot(&mut self, crash_at: Option<CrashPoint>) -> Result<Option<SnapshotEntry>, HostError>;
    /// Policy snapshots and the interval workload; call periodically.
    fn tick(&mut self, now: Instant) -> Result<(), HostError>;
    fn add_records(&mut self, n: u64) -> Result<u64, HostError>;
    /// Measures one file, with its `security.ima` xattr if given (kernel model only).
    fn measure(&mut self, path: &[u8], digest: &[u8], xattr: Option<&[u8]>) -> Result<bool, HostError>;
    /// Measures a buffer (ima-buf: a key into a keyring, critical data; kernel model only).
    fn measure_buffer(&mut self, name: &[u8], buf: &[u8]) -> Result<bool, HostError>;
    /// The back end: `model`, `model-staging`, `securityfs-snapshot`, `securityfs-staging`
    /// or `securityfs-legacy`.
    fn mode(&self) -> &'static str;
    fn metrics(&mut self) -> api::AgentMetrics;
    fn manifest(&self) -> Option<imasnap_store::Manifest>;
    /// Path and entry of snapshot `seq` of the current boot (the path comes from the
    /// store's own naming, never from a request).
    fn snapshot_file(&self, seq: u64) -> Option<(PathBuf, SnapshotEntry)>;
    /// The whole boot's log as one consistent state: the committed snapshot files and the
    /// kernel's records after them (`imasnap mount`, `[mount]` in agent.toml).
    fn whole_log(&mut self) -> Result<imasnap_mount::State, HostError>;
    /// The TPM that quotes, for AK enrolment ([`crate::enrol`]): its EK and
    /// TPM2_ActivateCredential with the AK the quotes use.
    fn enrolment_tpm(&mut self) -> Option<&mut dyn Tpm> {
        None
    }
}

/// Bytes of `m`'s snapshot files (what trimming took out of the kernel), cached until the
/// manifest gains a snapshot or the boot changes. A file that cannot be read counts 0.
fn snapshot_bytes(
    cache: &mut Option<((u64, usize, u64), u64)>,
    dir: &imasnap_store::BootDir,
    m: &imasnap_store::Manifest,
) -> u64 {
    let key = (m.boot.reset_count, m.snapshots.len(), m.snapshots.last().map_or(0, |s| s.seq));
    if let Some((k, b)) = cache {
        if *k == key {
            return *b;
        }
    }
    let b = m.snapshots.iter().filter_map(|s| std::fs::metadata(dir.path().join(&s.file)).ok()).map(|x| x.len()).sum();
    *cache = Some((key, b));
    b
}

/// Why a build without the `sim` feature refuses workload requests.
#[cfg(not(feature = "sim"))]
const NO_SIM: &str = "this agent was built without the simulated back end (cargo feature `sim`): \
                      a real kernel measures by itself";

/// Synthetic workload settings (kernel model only).
#[derive(Clone, Debug, Default)]
pub struct WorkloadCfg {
    pub seed: u64,
    /// Records added per second by [`HostOps::tick`].
    pub records_per_second: u64,
    /// Records added before each evidence request (load tests).
    pub records_per_evidence: u64,
}

pub struct Host<K: HostKernel> {
    agent: Agent<K>,
    #[cfg(feature = "sim")]
    workload: Workload,
    wcfg: WorkloadCfg,
    last_tick: Instant,
    carry: f64,
    metrics: api::AgentMetrics,
    /// After EBUSY (another process holds the measurement files): no cut before this,
    /// and the wait that follows the next EBUSY.
    busy_until: Option<Instant>,
    busy_backoff: Duration,
    /// Bytes of the current boot's snapshot files, keyed by (reset count, snapshots, last
    /// seq): the evidence's `log_size` without a stat of every file each round.
    snap_bytes: Option<((u64, usize, u64), u64)>,
}

/// First and longest wait after the kernel answers EBUSY.
const BUSY_FIRST: Duration = Duration::from_millis(250);
const BUSY_MAX: Duration = Duration::from_secs(60);

fn is_busy(e: &AgentError) -> bool {
    matches!(e, AgentError::Kernel(imasnap_agent::KernelIfError::Busy(_)))
}

fn now_secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

impl<K: HostKernel> Host<K> {
    /// Starts the agent on `kernel` (recovery first).
    /// On a staging kernel recovery may meet another process holding the measurement
    /// files (EBUSY): it is retried with backoff for up to a minute, not fatal.
    pub fn start(kernel: K, cfg: AgentConfig, wcfg: WorkloadCfg) -> Result<Self, HostError> {
        let mut agent = Agent::new(kernel, cfg)?;
        let mut wait = BUSY_FIRST;
        let t0 = Instant::now();
        let mut busy = 0;
        let rep = loop {
            match agent.recover() {
                Ok(rep) => break rep,
                Err(e) if is_busy(&e) && t0.elapsed() < BUSY_MAX => {
                    busy += 1;
                    tracing::info!(error = %e, retry_in = ?wait, "recovery: the measurement files are busy");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(boot = %rep.boot, created = rep.created, retired = rep.retired.len(),
            pending = ?rep.pending, removed = rep.removed.len(), "agent recovered");
        Ok(Self {
            agent,
            #[cfg(feature = "sim")]
            workload: Workload::new(wcfg.seed),
            wcfg,
            last_tick: Instant::now(),
            carry: 0.0,
            metrics: api::AgentMetrics { kernel_busy: busy, ..Default::default() },
            busy_until: None,
            busy_backoff: BUSY_FIRST,
            snap_bytes: None,
        })
    }

    pub fn agent(&mut self) -> &mut Agent<K> {
        &mut self.agent
    }

    fn agent_ref(&self) -> &Agent<K> {
        &self.agent
    }

    /// The agent process dies here and a new one starts on the same kernel (which
    /// closes the dead one's descriptors): what a crash plus a service restart does.
    /// If the new one cannot start, the dead one stays in place and a retry may work.
    fn restart_agent(&mut self) -> Result<(), HostError> {
        self.agent.kernel_mut().process_exit();
        self.agent.restart()?;
        let rep = self.agent.recover()?;
        tracing::warn!(boot = %rep.boot, pending = ?rep.pending, removed = ?rep.removed, "agent restarted and recovered");
        Ok(())
    }

    #[cfg(not(feature = "sim"))]
    fn add(&mut self, n: u64) -> Result<u64, HostError> {
        match n {
            0 => Ok(0),
            _ => Err(HostError::Conflict(NO_SIM.into())),
        }
    }

    #[cfg(feature = "sim")]
    fn add(&mut self, n: u64) -> Result<u64, HostError> {
        let mut added = 0;
        for _ in 0..n {
            // The workload is endless; `None` would only mean nothing more to add.
            let Some(ev) = self.workload.next() else { break };
            added += self.agent().kernel_mut().apply(&ev).map_err(HostError::Other)? as u64;
        }
        Ok(added)
    }

    fn quote(&mut self, nonce: &[u8]) -> Result<(imasnap_tpm::Quote, AkJson), HostError> {
        let k = self.agent().kernel_mut();
        let banks = k.banks().map_err(AgentError::from)?;
        let pcr = k.measurement_pcr();
        quote_tpm(k.tpm(), &banks, pcr, nonce)
    }
}

impl<K: HostKernel> HostOps for Host<K> {
    fn enrolment_tpm(&mut self) -> Option<&mut dyn Tpm> {
        Some(self.agent.kernel_mut().tpm())
    }

    fn evidence(
        &mut self,
        nonce: &[u8],
        from: api::From,
        boot_hint: Option<(u64, Option<String>)>,
    ) -> Result<EvidenceView, HostError> {
        if nonce.is_empty() || nonce.len() > imasnap_tpm::MAX_NONCE {
            return Err(HostError::BadRequest(format!("nonce must be 1 to {} bytes", imasnap_tpm::MAX_NONCE)));
        }
        if self.wcfg.records_per_evidence > 0 {
            self.add(self.wcfg.records_per_evidence)?;
        }
        // Quote first: the list read afterwards can only run ahead of it (carried over).
        let (quote, ak) = self.quote(nonce)?;
        let k = self.agent().kernel_mut();
        let simulated = api::Simulated::parts(k.mode() == "model", k.tpm().is_simulated());
        let a = self.agent();
        let dir = a.boot_dir().cloned().ok_or(AgentError::NotRecovered)?;
        let m = a.manifest().cloned().ok_or(AgentError::NotRecovered)?;
        let same_boot = boot_hint.as_ref().is_none_or(|(rc, ba)| {
            *rc == m.boot.reset_count && ba.as_ref().is_none_or(|b| *b == m.boot.boot_aggregate_sha1)
        });
        // A verifier on this boot that names its index needs nothing before it: the
        // agent may then read only the list's new part (see `Agent::live_read`).
        let want = match from {
            api::From::Index(i) if same_boot => Some(i),
            _ => None,
        };
        let mut read = a.live_read(want)?;
        let end = read.first + read.records;
        let seg = segment_view(&m, from, same_boot, end, &|s| {
            let p = dir.path().join(&s.file);
            let len = std::fs::metadata(&p).map_err(|e| HostError::Other(format!("{}: {e}", p.display())))?.len();
            Ok((p, 0, len))
        })?;
        let (from_index, snapshots, files, mut data_from) = (seg.from_index, seg.snapshots, seg.files, seg.data_from);
        if from_index < read.first {
            // Only reached if the index is before the part read (not asked that way).
            read = a.live_read(None)?;
        }
        // The kernel's part as it stands: what was read plus what lay before the read.
        let kernel_records = end.saturating_sub(m.next_index);
        let kernel_bytes = read.offset.saturating_add(read.bytes.len() as u64);
        let snap_bytes = snapshot_bytes(&mut self.snap_bytes, &dir, &m);
        let mut live = read.bytes;
        if from_index > m.next_index {
            data_from = Some(from_index);
            let off = byte_offset(&live, read.first, from_index)?;
            live.drain(..off);
        }
        let header = EvidenceHeader {
            format: api::FORMAT.into(),
            banks: m.banks.clone(),
            pcr: m.pcr,
            boot: m.boot.clone(),
            quote,
            nonce: hex::encode(nonce),
            ak,
            from: from_index,
            snapshots,
            live_first_index: m.next_index,
            live_bytes: live.len() as u64,
            data_from,
            mode: Some(self.mode().into()),
            log_size: Some(api::LogSize {
                kernel_records,
                kernel_bytes,
                untrimmed_records: end,
                untrimmed_bytes: snap_bytes.saturating_add(kernel_bytes),
            }),
            simulated,
        };
        self.metrics.evidence_requests += 1;
        self.metrics.evidence_bytes += files.iter().map(|f| f.2).sum::<u64>() + live.len() as u64;
        Ok(EvidenceView { header, files, live })
    }

    fn keylime_quote(
        &mut self,
        req: &crate::keylime::QuoteRequest,
    ) -> Result<crate::keylime::KeylimeEvidence, HostError> {
        // The model's boots are process starts, which /proc/stat cannot tell apart.
        let boots = self.agent_ref().manifest().map_or(0, |m| m.boot.reset_count);
        let boottime = if self.mode().starts_with("model") { boots } else { crate::keylime::boottime(boots) };
        crate::keylime::host_evidence(self.agent(), req, boottime)
    }

    fn snapshot(&mut self, crash_at: Option<CrashPoint>) -> Result<Option<SnapshotEntry>, HostError> {
        let t0 = Instant::now();
        if let Some(p) = crash_at {
            self.agent().crash_at(p);
        }
        let r = self.agent().snapshot_once();
        self.metrics.last_snapshot_seconds = now_secs(t0);
        match r {
            Ok(e) => {
                tracing::info!(seq = e.seq, first = e.first_index, count = e.count, "snapshot committed");
                if let Some(p) = crash_at {
                    // A recovery-only crash point: it fires while the restarted agent recovers.
                    self.agent().crash_at(p);
                    if self.restart_agent().is_err() {
                        self.restart_agent()?;
                    }
                }
                Ok(Some(e))
            }
            Err(AgentError::Crashed(p)) => {
                tracing::warn!(point = ?p, "agent crashed during a snapshot (fault injection)");
                if let Err(e) = self.restart_agent() {
                    tracing::warn!(error = %e, "recovery failed; retrying");
                    self.restart_agent()?;
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn tick(&mut self, now: Instant) -> Result<(), HostError> {
        let dt = now.saturating_duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        if self.wcfg.records_per_second > 0 {
            self.carry += dt * self.wcfg.records_per_second as f64;
            let n = self.carry.floor() as u64;
            self.carry -= n as f64;
            self.add(n)?;
        }
        if self.busy_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        let t0 = Instant::now();
        match self.agent().maybe_snapshot(now) {
            Ok(Some((t, e))) => {
                self.metrics.last_snapshot_seconds = now_secs(t0);
                tracing::info!(trigger = ?t, seq = e.seq, first = e.first_index, count = e.count, cut = e.cut.as_str(),
                    "policy snapshot committed");
            }
            Ok(None) => {}
            // Retried with exponential backoff (reset by the next success), counted.
            Err(e) if is_busy(&e) => {
                self.metrics.kernel_busy += 1;
                self.busy_until = Some(now + self.busy_backoff);
                tracing::info!(error = %e, retry_in = ?self.busy_backoff, "snapshot: the measurement files are busy");
                self.busy_backoff = (self.busy_backoff * 2).min(BUSY_MAX);
                return Ok(());
            }
            // Staging: the cut deleted records it had stored before, or nothing was new.
            Err(AgentError::Aborted(why)) if why.contains("nothing new") => {}
            Err(e) => return Err(e.into()),
        }
        self.busy_until = None;
        self.busy_backoff = BUSY_FIRST;
        Ok(())
    }

    fn add_records(&mut self, n: u64) -> Result<u64, HostError> {
        self.add(n)
    }

    fn measure(&mut self, path: &[u8], digest: &[u8], xattr: Option<&[u8]>) -> Result<bool, HostError> {
        match xattr {
            #[cfg(not(feature = "sim"))]
            None => Err(HostError::Conflict(NO_SIM.into())),
            #[cfg(feature = "sim")]
            None => {
                let ev = Event::File { path: path.to_vec(), digest: digest.to_vec() };
                self.agent().kernel_mut().apply(&ev).map_err(HostError::Other)
            }
            Some(x) => self.agent().kernel_mut().measure_xattr(path, digest, Some(x)).map_err(HostError::Other),
        }
    }

    #[cfg(not(feature = "sim"))]
    fn measure_buffer(&mut self, _name: &[u8], _buf: &[u8]) -> Result<bool, HostError> {
        Err(HostError::Conflict(NO_SIM.into()))
    }

    #[cfg(feature = "sim")]
    fn measure_buffer(&mut self, name: &[u8], buf: &[u8]) -> Result<bool, HostError> {
        let ev = Event::Buffer { name: name.to_vec(), buf: buf.to_vec() };
        self.agent().kernel_mut().apply(&ev).map_err(HostError::Other)
    }

    fn mode(&self) -> &'static str {
        match (self.agent_ref().kernel().mode(), self.agent_ref().interface()) {
            ("model", imasnap_agent::Interface::Staging) => "model-staging",
            ("securityfs-snapshot", imasnap_agent::Interface::Staging) => "securityfs-staging",
            (m, _) => m,
        }
    }

    fn metrics(&mut self) -> api::AgentMetrics {
        let mut m = self.metrics.clone();
        if let Ok(s) = self.agent().kernel_mut().live_stats() {
            m.live_records = s.records;
            m.live_bytes = s.bytes;
        }
        m.last_pause_seconds = self.agent_ref().kernel().last_pause().map_or(0.0, |d| d.as_secs_f64());
        if let (Some(d), Some(man)) = (self.agent_ref().boot_dir(), self.agent_ref().manifest()) {
            m.snapshots = man.snapshots.len() as u64;
            m.snapshot_records = man.next_index;
            m.next_index = man.next_index;
            m.reset_count = man.boot.reset_count;
            m.bytes_on_disk = man
                .snapshots
                .iter()
                .filter_map(|s| std::fs::metadata(d.path().join(&s.file)).ok())
                .map(|x| x.len())
                .sum();
        }
        m
    }

    fn manifest(&self) -> Option<imasnap_store::Manifest> {
        self.agent_ref().manifest().cloned()
    }

    fn whole_log(&mut self) -> Result<imasnap_mount::State, HostError> {
        let a = self.agent();
        let dir = a.boot_dir().cloned().ok_or(AgentError::NotRecovered)?;
        let m = a.manifest().cloned().ok_or(AgentError::NotRecovered)?;
        let mut live = Vec::new();
        a.live_tail()?.read_to_end(&mut live).map_err(|e| HostError::Other(format!("reading the live list: {e}")))?;
        Ok(imasnap_mount::State::from_manifest(&dir, &m, live))
    }

    fn snapshot_file(&self, seq: u64) -> Option<(PathBuf, SnapshotEntry)> {
        let a = self.agent_ref();
        let e = a.manifest()?.snapshots.iter().find(|s| s.seq == seq)?.clone();
        Some((a.boot_dir()?.snap_path(seq), e))
    }
}
