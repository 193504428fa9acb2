//! Honest evidence from the kernel model + SoftTpm, and the editing tools an attacker
//! would use on it.
#![allow(dead_code)]

use imasnap_kernel_model::{Config, Kernel};
use imasnap_log::marker::Marker;
use imasnap_log::{Endian, HashAlgo, Record};
use imasnap_test_support::kernel;
use imasnap_test_support::records::file_record;
use imasnap_tpm::{AkPublic, PcrSelection, Quote, SoftTpm, Tpm};
use imasnap_verifier::{
    verify, BootClaim, EndMarkerClaim, Evidence, Failure, Input, Mode, Options, Outcome, SnapshotClaim,
    SnapshotEvidence, State, TpmQuote,
};
use imasnap_wire::CheckpointClaim;
use sha2::Digest as _;

pub const BANKS: [HashAlgo; 2] = [HashAlgo::Sha1, HashAlgo::Sha256];
pub const PCR: u32 = 10;

#[derive(Clone, Debug)]
pub struct Snap {
    pub claim: SnapshotClaim,
    pub bytes: Option<Vec<u8>>,
}

/// A machine: kernel model on a SoftTpm, plus the agent's committed snapshots.
pub struct Host {
    kernel: Option<Kernel<SoftTpm>>,
    pub seed: u64,
    pub snaps: Vec<Snap>,
    /// Global index of the live list's head.
    pub head_index: u64,
    counter: u64,
}

fn firmware(tpm: &mut SoftTpm, seed: u64) {
    for p in 0..10u32 {
        let d: Vec<_> = BANKS.iter().map(|b| b.hash(&[b"firmware", &seed.to_le_bytes(), &p.to_le_bytes()])).collect();
        tpm.pcr_extend(p, &d).unwrap();
    }
}

impl Host {
    /// The honest host both suites start from (global indices):
    /// - S1 `[0, 41)`: boot_aggregate + 40 records; its end marker M1 (attempt 1) is record 41
    /// - S2 `[41, 93)`: M1, 30 records, M2 (aborted attempt 2) at 72, 20 records
    /// - S3 `[93, 119)`: M3 (attempt 3) + 25 records
    /// - live `[119, 130)`: M4 (attempt 4) + 10 records
    pub fn busy(seed: u64) -> Self {
        let mut h = Self::boot(seed);
        h.measure(40);
        h.snapshot();
        h.measure(30);
        h.aborted_snapshot();
        h.measure(20);
        h.snapshot();
        h.measure(25);
        h.snapshot();
        h.measure(10);
        h
    }

    /// Cold boot of a fresh machine. `platform` seeds the firmware measurements (PCR 0-9).
    pub fn boot(seed: u64) -> Self {
        Self::boot_with(seed, seed)
    }

    pub fn boot_with(seed: u64, platform: u64) -> Self {
        let mut tpm = SoftTpm::new(seed);
        firmware(&mut tpm, platform);
        let kernel = kernel::boot_with(Config::default(), tpm);
        Self { kernel: Some(kernel), seed, snaps: Vec::new(), head_index: 0, counter: 0 }
    }

    pub fn k(&mut self) -> &mut Kernel<SoftTpm> {
        self.kernel.as_mut().unwrap()
    }

    /// Cold boot of the same machine: TPM reset, new kernel, snapshots archived.
    pub fn reboot(&mut self, platform: u64) {
        let mut tpm = self.kernel.take().unwrap().into_tpm();
        tpm.reset();
        firmware(&mut tpm, platform);
        self.kernel = Some(kernel::boot_with(Config::default(), tpm));
        self.snaps.clear();
        self.head_index = 0;
    }

    pub fn measure(&mut self, n: usize) {
        let prefix = format!("/usr/lib/host{}/file", self.seed);
        let from = self.counter + 1;
        kernel::measure_files(self.k(), &prefix, from, n as u64);
        self.counter += n as u64;
    }

    /// A completed snapshot through the RFC interface, committed as the agent does.
    pub fn snapshot(&mut self) {
        let k = self.k();
        let h = k.snapshot_open().unwrap();
        let bytes = k.snapshot_read(&h, 0, h.records).unwrap();
        k.snapshot_done(&h).unwrap();
        k.snapshot_close(h);
        let count = records(&bytes).len() as u64;
        let seq = self.snaps.len() as u64 + 1;
        let claim = SnapshotClaim {
            seq,
            first_index: self.head_index,
            count,
            sha256: Some(sha256(&bytes)),
            cut: imasnap_wire::Cut::Marker,
            end_marker: None,
            next_sha1: None,
            pcrs_end: Vec::new(),
            checkpoint: None,
        };
        self.snaps.push(Snap { claim, bytes: Some(bytes) });
        self.head_index += count;
        let live = self.live();
        let snaps = &mut self.snaps;
        let n = snaps.len();
        fill_end_claims(&mut snaps[n - 1].claim, &records(&live)[0]);
    }

    /// The boot's record 0 (SHA1 template digest).
    pub fn boot_aggregate(&mut self) -> [u8; 20] {
        let first = match self.snaps.first() {
            Some(s) => records(s.bytes.as_ref().unwrap())[0].clone(),
            None => records(&self.live())[0].clone(),
        };
        first.digest.try_into().unwrap()
    }

    /// The qualifyingData the agent uses for the checkpoint of the newest snapshot.
    pub fn checkpoint_qd(&mut self) -> [u8; 32] {
        let n = self.snaps.len();
        let seq = self.snaps[n - 1].claim.seq;
        let prev =
            self.snaps[..n - 1].iter().rev().find_map(|s| s.claim.checkpoint.as_ref()).map(|c| c.quote.attest.clone());
        let (rc, ba) = (self.reset_count(), self.boot_aggregate());
        imasnap_wire::qualifying_data(rc, &ba, seq, prev.as_deref())
    }

    /// Records the boot has so far (stored + live).
    pub fn total_records(&mut self) -> u64 {
        self.head_index + records(&self.live()).len() as u64
    }

    /// The agent's checkpoint for the newest snapshot, quoted now over `qd`.
    pub fn checkpoint_with(&mut self, qd: &[u8]) -> CheckpointClaim {
        let index = self.total_records();
        let quote = self.quote(qd);
        CheckpointClaim { index, quote, ak: self.ak() }
    }

    /// Takes the newest snapshot's checkpoint, as the agent does at the cut.
    pub fn checkpoint(&mut self) {
        let qd = self.checkpoint_qd();
        let c = self.checkpoint_with(&qd);
        let n = self.snaps.len();
        self.snaps[n - 1].claim.checkpoint = Some(c);
    }

    /// Like [`Host::busy`], with a checkpoint at every cut (a few records after it, as
    /// when measurements land between the cut and the quote).
    pub fn busy_with_checkpoints(seed: u64) -> Self {
        let mut h = Self::boot(seed);
        h.busy_checkpointed_history();
        h
    }

    /// The workload of [`Host::busy_with_checkpoints`] on this (fresh) boot.
    pub fn busy_checkpointed_history(&mut self) {
        for (i, n) in [40usize, 30, 20, 25, 35].into_iter().enumerate() {
            self.measure(n);
            self.snapshot();
            self.measure(i % 3);
            self.checkpoint();
        }
        self.measure(10);
    }

    /// An aborted attempt: open, close without `done`. The marker stays in the list.
    pub fn aborted_snapshot(&mut self) {
        let k = self.k();
        let h = k.snapshot_open().unwrap();
        k.snapshot_close(h);
    }

    /// kexec into a new kernel: the list is carried over, PCRs continue.
    pub fn kexec(&mut self) {
        let mut k = self.kernel.take().unwrap();
        let buf = k.kexec_save();
        let tpm = k.into_tpm();
        self.kernel = Some(Kernel::kexec_restore(Config::default(), tpm, &buf).unwrap());
    }

    pub fn live(&mut self) -> Vec<u8> {
        self.k().binary_measurements(HashAlgo::Sha1)
    }

    pub fn quote(&mut self, nonce: &[u8]) -> Quote {
        let pcrs: Vec<u32> = (0..=PCR).collect();
        let sel = PcrSelection::uniform(&BANKS, &pcrs).unwrap();
        self.k().tpm_mut().quote(nonce, &sel).unwrap()
    }

    pub fn ak(&mut self) -> AkPublic {
        self.k().tpm().ak_public()
    }

    pub fn reset_count(&mut self) -> u64 {
        self.k().tpm_mut().clock_info().unwrap().reset_count as u64
    }

    /// The evidence bundle the agent serves for challenge `nonce`.
    pub fn bundle(&mut self, nonce: &[u8]) -> Bundle {
        let quote = self.quote(nonce);
        self.bundle_with_quote(nonce, quote)
    }

    /// Bundle whose log was read after `quote` was taken (quote lag).
    pub fn bundle_with_quote(&mut self, nonce: &[u8], quote: Quote) -> Bundle {
        let live = self.live();
        let ak = self.ak();
        let reset_count = self.reset_count();
        let first = match self.snaps.first() {
            Some(s) => records(s.bytes.as_ref().unwrap())[0].clone(),
            None => records(&live)[0].clone(),
        };
        Bundle {
            banks: BANKS.to_vec(),
            snaps: self.snaps.clone(),
            live,
            live_first_index: self.head_index,
            boot: Some(BootClaim { reset_count, boot_aggregate_sha1: first.digest.clone().try_into().unwrap() }),
            quote,
            trusted_ak: ak.clone(),
            claimed_ak: Some(ak),
            nonce: nonce.to_vec(),
        }
    }
}

pub fn nonce(i: u64) -> Vec<u8> {
    HashAlgo::Sha256.hash(&[b"challenge", &i.to_le_bytes()]).as_bytes().to_vec()
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(b).into()
}

pub use imasnap_test_support::records::{encode, parse as records};

/// Recomputes the stored SHA1 template digest, as a careful forger would.
pub fn redigest(r: &mut Record) {
    r.digest = HashAlgo::Sha1.hash(&[&r.template_data]).as_bytes().to_vec();
}

pub fn marker_of(r: &Record) -> Option<Marker> {
    Marker::from_record(r, Endian::Little).ok().flatten()
}

/// A well-formed marker record (d-ng and template digest consistent).
pub fn marker_record(m: &Marker) -> Record {
    m.to_record(PCR, HashAlgo::Sha256, HashAlgo::Sha1, Endian::Little)
}

/// An ordinary ima-ng file record, never measured by any TPM.
pub fn fake_file_record(path: &str) -> Record {
    file_record(path.as_bytes(), HashAlgo::Sha256.hash(&[path.as_bytes()]).as_bytes(), PCR)
}

fn fill_end_claims(claim: &mut SnapshotClaim, head: &Record) {
    if let Some(m) = marker_of(head) {
        claim.end_marker = Some(EndMarkerClaim { attempt: m.attempt, sha1: head.digest.clone().try_into().unwrap() });
        claim.pcrs_end = BANKS.iter().map(|&b| m.bank(b).unwrap()[PCR as usize]).collect();
    }
}

/// An evidence bundle as it travels, every part editable.
#[derive(Clone)]
pub struct Bundle {
    pub banks: Vec<HashAlgo>,
    pub snaps: Vec<Snap>,
    pub live: Vec<u8>,
    pub live_first_index: u64,
    pub boot: Option<BootClaim>,
    pub quote: Quote,
    pub trusted_ak: AkPublic,
    pub claimed_ak: Option<AkPublic>,
    pub nonce: Vec<u8>,
}

impl Bundle {
    pub fn evidence(&self) -> Evidence<'_> {
        Evidence {
            banks: self.banks.clone(),
            pcr: PCR,
            endian: Endian::Little,
            boot: self.boot.clone(),
            snapshots: self
                .snaps
                .iter()
                .map(|s| SnapshotEvidence { claim: s.claim.clone(), data: s.bytes.as_ref().map(Input::from) })
                .collect(),
            live: Input::Bytes(&self.live),
            live_first_index: self.live_first_index,
            data_from: None,
        }
    }

    pub fn verify_with(&self, opts: &Options, prior: Option<&State>) -> Outcome {
        let q = TpmQuote { quote: &self.quote, trusted_ak: &self.trusted_ak, claimed_ak: self.claimed_ak.as_ref() };
        verify(opts, self.evidence(), &q, &self.nonce, prior)
    }

    pub fn verify(&self, mode: Mode, prior: Option<&State>) -> Outcome {
        self.verify_with(&Options::new(mode), prior)
    }

    /// Full history in ranges between checkpoints, on `jobs` threads.
    pub fn verify_segmented(&self, jobs: usize) -> Outcome {
        let q = TpmQuote { quote: &self.quote, trusted_ak: &self.trusted_ak, claimed_ak: self.claimed_ak.as_ref() };
        let make = || self.evidence();
        imasnap_verifier::verify_segmented(&Options::new(Mode::FullHistory), &make, &q, &self.nonce, jobs)
    }

    /// The signed attest bytes of snapshot `i`'s checkpoint (0-based), for editing.
    pub fn cp_attest_mut(&mut self, i: usize) -> &mut Vec<u8> {
        &mut self.snaps[i].claim.checkpoint.as_mut().unwrap().quote.attest
    }

    pub fn snap_records(&self, i: usize) -> Vec<Record> {
        records(self.snaps[i].bytes.as_ref().unwrap())
    }

    pub fn edit_snap(&mut self, i: usize, f: impl FnOnce(&mut Vec<Record>)) {
        let mut recs = self.snap_records(i);
        f(&mut recs);
        self.snaps[i].bytes = Some(encode(&recs));
    }

    pub fn edit_live(&mut self, f: impl FnOnce(&mut Vec<Record>)) {
        let mut recs = records(&self.live);
        f(&mut recs);
        self.live = encode(&recs);
    }

    /// Rewrites every manifest claim to agree with the (edited) files: the consistent
    /// forger, whose only obstacle is the hash chain.
    pub fn reseal(&mut self) {
        let mut idx = 0;
        let n = self.snaps.len();
        for i in 0..n {
            let bytes = self.snaps[i].bytes.clone().unwrap();
            let count = records(&bytes).len() as u64;
            let next_head = if i + 1 < n {
                records(self.snaps[i + 1].bytes.as_ref().unwrap()).first().cloned()
            } else {
                records(&self.live).first().cloned()
            };
            let c = &mut self.snaps[i].claim;
            c.seq = i as u64 + 1;
            c.first_index = idx;
            c.count = count;
            c.sha256 = Some(sha256(&bytes));
            if let Some(h) = next_head {
                fill_end_claims(c, &h);
            }
            idx += count;
        }
        self.live_first_index = idx;
    }
}

/// The failure of a rejected outcome; panics (test failure) on a pass.
pub fn failure(o: &Outcome) -> Failure {
    match o.verdict.failure() {
        Some(f) => f.clone(),
        None => panic!("forgery verified: {:?}", o.report),
    }
}
