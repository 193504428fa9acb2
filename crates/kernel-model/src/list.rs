//! The measurement list (`ima_queue.c`): entries with one template digest per bank.

use imasnap_log::digest::{boot_aggregate, boot_aggregate_includes_8_9, template_hash};
use imasnap_log::entry::{builtin, d_ng, n_ng};
use imasnap_log::{Endian, HashAlgo, PcrValue, Record, Template};
use imasnap_tpm::Tpm;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How the marker obtains PCR values (docs/SNAPSHOTS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcrMode {
    /// RFC-faithful: read PCR 0-23 of every bank from the TPM while holding the list lock.
    /// The kernel series no longer has it; kept to measure what the other mode saves.
    TpmUnderLock,
    /// The kernel's: PCRs IMA has not extended are read before taking the lock (the lock
    /// does not serialise them anyway); under it, only the PCRs IMA extended, from the TPM.
    ExtendedUnderLock,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `CONFIG_IMA_MEASURE_PCR_IDX`.
    pub pcr: u32,
    /// `ima_hash`: file digests and the `d-ng` of buffers.
    pub ima_hash: HashAlgo,
    /// `ima_template`.
    pub template: String,
    pub pcr_mode: PcrMode,
    /// Keep removed records' digests in the dedup table (the default; the kernel's
    /// `ima_flush_htable` analogue drops them). Off also means: staging's `D` swaps in an
    /// empty hash table and `N` is refused, as upstream's `ima_flush_htable` does.
    pub keep_dedup_on_done: bool,
    /// `CONFIG_IMA_STAGING`: the `_staged` files and the `A`/`D`/`N` commands.
    pub staging: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pcr: 10,
            ima_hash: HashAlgo::Sha256,
            template: "ima-ng".into(),
            pcr_mode: PcrMode::ExtendedUnderLock,
            keep_dedup_on_done: true,
            staging: true,
        }
    }
}

/// One list entry: the record with a template digest per TPM bank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pcr: u32,
    pub template: Arc<Template>,
    pub template_data: Vec<u8>,
    /// Template digest per bank, in the TPM's bank order. All zero for a violation.
    pub digests: Vec<PcrValue>,
    /// SHA1 template digest, which the classic list shows even without a SHA1 bank.
    pub sha1: Vec<u8>,
    pub violation: bool,
}

impl Entry {
    /// The record as the classic (SHA1) binary list shows it. A kernel always has a SHA1
    /// digest, even when the TPM has no SHA1 bank.
    pub fn sha1_record(&self, _banks: &[HashAlgo]) -> Record {
        Record {
            pcr: self.pcr,
            digest: self.sha1.clone(),
            template: self.template.clone(),
            template_data: self.template_data.clone(),
        }
    }

    /// Appends the record as the binary list of bank `bank_idx` shows it (`None`: the
    /// classic SHA1 list), without copying it into a [`Record`] first.
    pub fn encode(&self, bank_idx: Option<usize>, endian: Endian, out: &mut Vec<u8>) {
        let digest = match bank_idx {
            Some(i) => self.digests[i].as_bytes(),
            None => &self.sha1,
        };
        imasnap_log::codec::encode_parts(self.pcr, digest, &self.template, &self.template_data, endian, out)
    }

    /// Bytes of the record in the binary list of bank `bank_idx`.
    pub fn encoded_len(&self, bank_idx: usize) -> usize {
        let data_len = if self.template.is_legacy_ima() { 0 } else { 4 };
        4 + self.digests[bank_idx].as_bytes().len()
            + 4
            + self.template.name().len()
            + data_len
            + self.template_data.len()
    }

    /// Bytes of the record in the binary list of bank `bank_idx` (`None`: the classic
    /// SHA1 list), as [`Entry::encode`] writes it.
    pub fn encoded_len_in(&self, bank_idx: Option<usize>) -> usize {
        let digest = match bank_idx {
            Some(i) => self.digests[i].as_bytes().len(),
            None => self.sha1.len(),
        };
        let data_len = if self.template.is_legacy_ima() { 0 } else { 4 };
        4 + digest + 4 + self.template.name().len() + data_len + self.template_data.len()
    }

    /// The record as it appears in the binary list of `bank`.
    pub fn record(&self, bank_idx: usize) -> Record {
        Record {
            pcr: self.pcr,
            digest: self.digests[bank_idx].as_bytes().to_vec(),
            template: self.template.clone(),
            template_data: self.template_data.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("EBUSY: {0}")]
    Busy(&'static str),
    /// A measurement refused once the list was copied for kexec (after the dedup check,
    /// as the kernel does: a duplicate is still just a duplicate).
    #[error("ENODEV: {0}")]
    NoDevice(&'static str),
    #[error("EINVAL: {0}")]
    Invalid(String),
    #[error("EEXIST: {0}")]
    Exists(&'static str),
    #[error("ENOENT: {0}")]
    NoEntry(&'static str),
    #[error("EACCES: {0}")]
    Access(&'static str),
    #[error("ESTALE: {0}")]
    Stale(&'static str),
    #[error("EPERM: {0}")]
    Perm(&'static str),
    #[error("EBADF: {0}")]
    BadFd(&'static str),
    #[error("EIO: TPM: {0}")]
    Tpm(String),
    #[error("injected fault: {0:?}")]
    Injected(crate::snapshot::Fault),
    #[error("injected fault: {0:?}")]
    InjectedStaging(crate::staging::StagingFault),
}

impl KernelError {
    /// The errno name the kernel would return (`EBUSY`…; injected faults are `EIO`).
    pub fn errno(&self) -> &'static str {
        match self {
            Self::Busy(_) => "EBUSY",
            Self::NoDevice(_) => "ENODEV",
            Self::Invalid(_) => "EINVAL",
            Self::Exists(_) => "EEXIST",
            Self::NoEntry(_) => "ENOENT",
            Self::Access(_) => "EACCES",
            Self::Stale(_) => "ESTALE",
            Self::Perm(_) => "EPERM",
            Self::BadFd(_) => "EBADF",
            Self::Tpm(_) | Self::Injected(_) | Self::InjectedStaging(_) => "EIO",
        }
    }
}

/// The kernel's IMA state for one boot (or one kexec segment of a boot).
pub struct Kernel<T: Tpm> {
    pub(crate) cfg: Config,
    pub(crate) tpm: T,
    pub(crate) banks: Vec<HashAlgo>,
    pub(crate) list: VecDeque<Entry>,
    /// Dedup table: (pcr, template digest in the ima_hash bank).
    pub(crate) htable: HashSet<(u32, PcrValue)>,
    pub(crate) dedup_bank: usize,
    pub(crate) violations: u64,
    /// PCRs IMA has extended in this kernel (bit p for PCR p).
    pub(crate) extended: u32,
    /// `kexec_file_load` added an IMA segment: snapshots are refused until the next boot.
    pub(crate) kexec_loaded: bool,
    pub(crate) snapshot: crate::snapshot::SnapState,
    pub(crate) staging: crate::staging::StagingState,
    /// Records removed by `done` since this kernel started.
    pub(crate) removed: u64,
    pub(crate) suspended: bool,
    pub(crate) last_pause: Option<Duration>,
    pub(crate) max_pause: Duration,
    pub(crate) bytes_in_list: u64,
    /// `cfg.template` parsed once (the config is fixed for the kernel's life); `None`
    /// when the name is bad, reported by [`Kernel::template`] on each measurement.
    pub(crate) parsed_template: Option<Arc<Template>>,
}

impl<T: Tpm> Kernel<T> {
    fn empty(cfg: Config, tpm: T) -> Self {
        let banks = tpm.banks();
        let dedup_bank = banks.iter().position(|&b| b == cfg.ima_hash).unwrap_or(0);
        let parsed_template = imasnap_log::entry::template(&cfg.template).ok();
        Self {
            parsed_template,
            cfg,
            tpm,
            banks,
            list: VecDeque::new(),
            htable: HashSet::new(),
            dedup_bank,
            violations: 0,
            extended: 0,
            kexec_loaded: false,
            snapshot: Default::default(),
            staging: Default::default(),
            removed: 0,
            suspended: false,
            last_pause: None,
            max_pause: Duration::ZERO,
            bytes_in_list: 0,
        }
    }

    /// Cold boot: IMA initialises and measures boot_aggregate over the TPM's PCR 0-9.
    pub fn boot(cfg: Config, tpm: T) -> Result<Self, KernelError> {
        let mut k = Self::empty(cfg, tpm);
        k.measure_boot_aggregate()?;
        Ok(k)
    }

    /// The configured template; a bad name in the config is an error, not a panic.
    fn template(&self) -> Result<Arc<Template>, KernelError> {
        if let Some(t) = &self.parsed_template {
            return Ok(t.clone());
        }
        imasnap_log::entry::template(&self.cfg.template)
            .map_err(|r| KernelError::Invalid(format!("template {:?}: {r}", self.cfg.template)))
    }

    /// The bank boot_aggregate uses: the ima_hash bank, else the last SHA256, else SHA1.
    fn boot_aggregate_bank(&self) -> HashAlgo {
        if self.banks.contains(&self.cfg.ima_hash) {
            return self.cfg.ima_hash;
        }
        if self.banks.contains(&HashAlgo::Sha256) {
            return HashAlgo::Sha256;
        }
        HashAlgo::Sha1
    }

    fn measure_boot_aggregate(&mut self) -> Result<(), KernelError> {
        let bank = self.boot_aggregate_bank();
        let pcrs =
            self.tpm.pcr_read(bank, &(0..10).collect::<Vec<_>>()).map_err(|e| KernelError::Tpm(e.to_string()))?;
        let agg = boot_aggregate(bank, &pcrs, boot_aggregate_includes_8_9(bank));
        let t = self.template()?;
        let fields = self.name_fields(&t, bank.name(), agg.as_bytes(), b"boot_aggregate", None);
        self.add(t, fields, false)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn banks(&self) -> &[HashAlgo] {
        &self.banks
    }
    pub fn tpm(&self) -> &T {
        &self.tpm
    }
    pub fn tpm_mut(&mut self) -> &mut T {
        &mut self.tpm
    }
    pub fn into_tpm(self) -> T {
        self.tpm
    }

    fn name_fields(&self, t: &Template, algo: &str, digest: &[u8], name: &[u8], buf: Option<&[u8]>) -> Vec<Vec<u8>> {
        self.name_sig_fields(t, algo, digest, name, buf, None)
    }

    fn name_sig_fields(
        &self,
        t: &Template,
        algo: &str,
        digest: &[u8],
        name: &[u8],
        buf: Option<&[u8]>,
        sig: Option<&[u8]>,
    ) -> Vec<Vec<u8>> {
        use imasnap_log::FieldId::*;
        t.fields()
            .iter()
            .map(|f| match f {
                DNg | DModsig => d_ng(algo, digest),
                D => digest.get(..20).map(|d| d.to_vec()).unwrap_or_else(|| vec![0; 20]),
                NNg => n_ng(name),
                N => name.to_vec(),
                Buf => buf.unwrap_or_default().to_vec(),
                Sig => sig.unwrap_or_default().to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// A file measurement (`ima_store_measurement`) with the configured template.
    pub fn measure_file(&mut self, path: &[u8], file_digest: &[u8]) -> Result<bool, KernelError> {
        let t = self.template()?;
        let f = self.name_fields(&t, self.cfg.ima_hash.name(), file_digest, path, None);
        self.add_checked(t, f, false)
    }

    /// A file measurement with the file's `security.ima` xattr, as `ima_store_measurement`
    /// passes it to the template: the `sig` field (templates `ima-sig`, `ima-modsig`…)
    /// carries the whole xattr value when it is a signature — type
    /// `EVM_IMA_XATTR_DIGSIG` (0x03) or `IMA_VERITY_DIGSIG` (0x06), as
    /// `ima_eventsig_init` checks — and is empty otherwise (no xattr, or a hash xattr).
    /// Templates without a `sig` field ignore the xattr.
    pub fn measure_file_xattr(
        &mut self,
        path: &[u8],
        file_digest: &[u8],
        xattr: Option<&[u8]>,
    ) -> Result<bool, KernelError> {
        const EVM_IMA_XATTR_DIGSIG: u8 = 0x03;
        const IMA_VERITY_DIGSIG: u8 = 0x06;
        let sig = xattr.filter(|x| matches!(x.first(), Some(&EVM_IMA_XATTR_DIGSIG | &IMA_VERITY_DIGSIG)));
        let t = self.template()?;
        let f = self.name_sig_fields(&t, self.cfg.ima_hash.name(), file_digest, path, None, sig);
        self.add_checked(t, f, false)
    }

    /// A buffer measurement (`ima_measure_critical_data`, `kexec-cmdline`): template ima-buf.
    pub fn measure_buffer(&mut self, name: &[u8], buf: &[u8]) -> Result<bool, KernelError> {
        static IMA_BUF: std::sync::OnceLock<Arc<Template>> = std::sync::OnceLock::new();
        let t = IMA_BUF.get_or_init(|| builtin("ima-buf")).clone();
        let d = self.cfg.ima_hash.hash(&[buf]);
        let f = self.name_fields(&t, self.cfg.ima_hash.name(), d.as_bytes(), name, Some(buf));
        self.add_checked(t, f, false)
    }

    /// A ToMToU / open-writers violation: digest fields zeroed, template digests zero,
    /// and 0xff extended into every bank.
    pub fn violation(&mut self, path: &[u8]) -> Result<(), KernelError> {
        let t = self.template()?;
        let zero = vec![0u8; self.cfg.ima_hash.size()];
        let f = self.name_fields(&t, self.cfg.ima_hash.name(), &zero, path, None);
        self.violations += 1;
        self.add(t, f, true)
    }

    /// Adds a measurement unless it is a duplicate. Returns whether it was added.
    fn add_checked(&mut self, t: Arc<Template>, fields: Vec<Vec<u8>>, violation: bool) -> Result<bool, KernelError> {
        let e = self.make_entry(t, fields, violation)?;
        if !violation && self.htable.contains(&(e.pcr, e.digests[self.dedup_bank])) {
            return Ok(false);
        }
        self.append(e)?;
        Ok(true)
    }

    fn add(&mut self, t: Arc<Template>, fields: Vec<Vec<u8>>, violation: bool) -> Result<(), KernelError> {
        let e = self.make_entry(t, fields, violation)?;
        self.append(e)
    }

    pub(crate) fn make_entry(
        &self,
        template: Arc<Template>,
        fields: Vec<Vec<u8>>,
        violation: bool,
    ) -> Result<Entry, KernelError> {
        let refs: Vec<&[u8]> = fields.iter().map(|f| f.as_slice()).collect();
        let template_data = Record::encode_fields(&template, &refs, Endian::Little);
        let probe = Record { pcr: self.cfg.pcr, digest: Vec::new(), template, template_data };
        let hash = |a: HashAlgo| {
            if violation {
                Ok(PcrValue::zero(a))
            } else {
                template_hash(a, &probe, Endian::Little)
                    .map_err(|r| KernelError::Invalid(format!("template {}: {r}", probe.template.name())))
            }
        };
        let digests = self.banks.iter().map(|&a| hash(a)).collect::<Result<Vec<_>, _>>()?;
        // The SHA1 bank's digest when there is one: the same hash, computed once.
        let sha1 = match self.banks.iter().position(|&b| b == HashAlgo::Sha1) {
            Some(i) => digests[i].as_bytes().to_vec(),
            None => hash(HashAlgo::Sha1)?.as_bytes().to_vec(),
        };
        Ok(Entry {
            pcr: probe.pcr,
            template: probe.template,
            template_data: probe.template_data,
            digests,
            sha1,
            violation,
        })
    }

    /// `ima_add_template_entry`: append under the lock, then extend every bank.
    pub(crate) fn append(&mut self, e: Entry) -> Result<(), KernelError> {
        // After kexec_save the list is frozen in the hand-over buffer: like the kernel
        // (`ima_measurements_suspended`), neither append nor extend.
        if self.suspended {
            return Err(KernelError::NoDevice("measurements suspended for kexec"));
        }
        let values: Vec<PcrValue> =
            self.banks.iter().zip(&e.digests).map(|(&a, d)| if e.violation { PcrValue::ones(a) } else { *d }).collect();
        if !e.violation {
            self.htable.insert((e.pcr, e.digests[self.dedup_bank]));
        }
        let p = e.pcr as usize;
        self.bytes_in_list += e.encoded_len_in(None) as u64;
        self.list.push_back(e);
        self.extended |= 1 << p;
        self.tpm.pcr_extend(p as u32, &values).map_err(|e| KernelError::Tpm(e.to_string()))?;
        Ok(())
    }

    /// Records in the in-memory list.
    pub fn len(&self) -> usize {
        self.list.len()
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// Records removed by `done` since this kernel started (the securityfs counter).
    pub fn removed(&self) -> u64 {
        self.removed
    }
    pub fn violations(&self) -> u64 {
        self.violations
    }
    /// Bytes the list would take as a binary SHA1 log.
    pub fn list_bytes(&self) -> u64 {
        self.bytes_in_list
    }
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.list.iter()
    }

    /// `binary_runtime_measurements[_<bank>]` of the current list.
    pub fn binary_measurements(&self, bank: HashAlgo) -> Vec<u8> {
        let bi = self.banks.iter().position(|&b| b == bank).unwrap_or(0);
        let mut out = Vec::new();
        for e in &self.list {
            let mut r = e.record(bi);
            if bank != self.banks[bi] {
                r.digest = vec![0; bank.size()];
            }
            r.encode(Endian::Little, &mut out);
        }
        out
    }

    /// Snapshot pause of the last marker (time appends were blocked) and the maximum seen.
    pub fn last_pause(&self) -> Option<Duration> {
        self.last_pause
    }
    pub fn max_pause(&self) -> Duration {
        self.max_pause
    }

    /// `kexec_file_load` with an IMA segment: sized for the list now, so from here on
    /// snapshot opens are refused (EBUSY, the attempt counted) until the next boot.
    pub fn kexec_load(&mut self) {
        self.kexec_loaded = true;
    }

    /// kexec load+exec, outgoing side: measurement is suspended and the list is written to
    /// the hand-over buffer in the real format (classic SHA1 records). Staged records go
    /// first (staging is aborted), so the next kernel sees them at the head of its list.
    pub fn kexec_save(&mut self) -> Vec<u8> {
        self.suspended = true;
        let recs: Vec<Record> =
            self.staging.staged.iter().chain(&self.list).map(|e| e.sha1_record(&self.banks)).collect();
        imasnap_log::kexec::encode(&recs, Endian::Little)
    }

    /// kexec, incoming side: restores the list from the buffer (digests recomputed for every
    /// bank, violations kept zero; restored records are not in the dedup table), then measures
    /// this kernel's boot_aggregate after them. The TPM carries over untouched.
    pub fn kexec_restore(cfg: Config, tpm: T, buf: &[u8]) -> Result<Self, KernelError> {
        let mut k = Self::empty(cfg, tpm);
        k.restore(buf)?;
        Ok(k)
    }

    /// kexec of this kernel into a new one with the same config, on the same TPM: what
    /// [`Kernel::kexec_save`] then [`Kernel::kexec_restore`] do, without giving up `self`.
    pub fn kexec(&mut self) -> Result<(), KernelError> {
        let buf = self.kexec_save();
        self.list.clear();
        self.htable.clear();
        self.violations = 0;
        self.extended = 0;
        self.kexec_loaded = false;
        self.snapshot = Default::default();
        self.staging = Default::default();
        self.removed = 0;
        self.suspended = false;
        self.last_pause = None;
        self.max_pause = Duration::ZERO;
        self.bytes_in_list = 0;
        self.restore(&buf)
    }

    /// The incoming side of kexec on an empty kernel.
    fn restore(&mut self, buf: &[u8]) -> Result<(), KernelError> {
        let k = self;
        let recs = imasnap_log::kexec::decode(buf, Endian::Little).map_err(|e| KernelError::Invalid(e.to_string()))?;
        for r in recs {
            let violation = r.is_violation();
            let digests = k
                .banks
                .iter()
                .map(|&a| if violation { Ok(PcrValue::zero(a)) } else { template_hash(a, &r, Endian::Little) })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| KernelError::Invalid(e.to_string()))?;
            let sha1 = if violation {
                vec![0; 20]
            } else {
                template_hash(HashAlgo::Sha1, &r, Endian::Little)
                    .map_err(|e| KernelError::Invalid(e.to_string()))?
                    .as_bytes()
                    .to_vec()
            };
            if violation {
                k.violations += 1;
            }
            k.bytes_in_list += r.encoded_len() as u64;
            k.list.push_back(Entry {
                pcr: r.pcr,
                template: r.template,
                template_data: r.template_data,
                digests,
                sha1,
                violation,
            });
        }
        k.measure_boot_aggregate()
    }
}
