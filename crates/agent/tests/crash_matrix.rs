//! Crash matrix: seeded random runs of workload, snapshots, kernel faults, aborted attempts,
//! kexec and cold boots, each with one designated crash (cycling through every
//! [`CrashPoint`]) plus random extra crashes. After every step and every recovery:
//!
//! - the stitched log (committed snapshots + live list) equals the oracle — every record
//!   the kernel model ever appended in this cold boot, in order, none lost or duplicated;
//! - it replays (SHA1 and SHA256) to the TPM's PCR 10, and each snapshot's `pcrs_end`
//!   equals the replay at its end;
//! - the manifest on disk equals the agent's, and no pending/tmp/stray file is left;
//! - every segment has a checkpoint, signed over its chain's qualifyingData, whose
//!   quoted PCR 10 equals the replay of the oracle up to its index.
//!
//! `IMASNAP_CRASH_RUNS` sets the run count (default 100), `IMASNAP_CRASH_SEED` the base
//! seed, `IMASNAP_CRASH_DIR` where the stores live (default: /dev/shm if present).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent::{Agent, AgentConfig, AgentError, CrashPoint, RecoveryReport};
use imasnap_kernel_model::{Config, Fault, Kernel, PcrMode};
use imasnap_log::{HashAlgo, Record, ReplayOptions, Replayer};
use imasnap_store::{Decision, Retention, StitchReason};
use imasnap_test_support::kernel::{self, file_digest};
use imasnap_tpm::{SoftTpm, Tpm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

type K = Kernel<SoftTpm>;

/// Every record the kernel appended in the current cold boot, in SHA1 form.
#[derive(Default)]
struct Oracle {
    recs: Vec<Record>,
    /// `removed + len` of the current kernel at the last sync.
    seen: u64,
}

impl Oracle {
    /// Takes the records appended since the last sync from the tail of the list. Every
    /// append is followed by a sync before any `done` could remove it.
    fn sync(&mut self, k: &K) {
        let total = k.removed() + k.len() as u64;
        assert!(total >= self.seen, "kernel lost track of its own records");
        let new = (total - self.seen) as usize;
        let sha1 = k.banks().iter().position(|&b| b == HashAlgo::Sha1).unwrap();
        self.recs.extend(k.entries().skip(k.len() - new).map(|e| e.record(sha1)));
        self.seen = total;
    }
}

/// What the model may do at the next snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FaultState {
    None,
    Armed(Fault),
    /// A crash may or may not have consumed it.
    Unknown,
}

struct World {
    rng: ChaCha8Rng,
    seed: u64,
    kcfg: Config,
    cfg: AgentConfig,
    oracle: Oracle,
    fault: FaultState,
    /// Next distinct file contents, so some measurements are new and some dedup.
    counter: u64,
    fired: BTreeMap<CrashPoint, u64>,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    snapshots: u64,
    aborted: u64,
    crashes: u64,
    kexecs: u64,
    cold_boots: u64,
    checks: u64,
    records: u64,
    decisions: BTreeMap<String, u64>,
}

const PROTOCOL_POINTS: [CrashPoint; 13] = [
    CrashPoint::AfterOpen,
    CrashPoint::DuringPendingWrite,
    CrashPoint::AfterPendingWritten,
    CrashPoint::DuringTmpWrite,
    CrashPoint::AfterTmpWrite,
    CrashPoint::AfterFsync,
    CrashPoint::AfterRename,
    CrashPoint::AfterDirFsync,
    CrashPoint::AfterQuote,
    CrashPoint::AfterCheckpointStored,
    CrashPoint::AfterDone,
    CrashPoint::DuringManifestWrite,
    CrashPoint::AfterManifestCommit,
];

/// What recovery must decide after a crash at protocol point `p` (kexec in between or not).
fn expected_decision(p: CrashPoint) -> Option<Decision> {
    use CrashPoint::*;
    match p {
        AfterOpen | DuringPendingWrite => None,
        AfterPendingWritten
        | DuringTmpWrite
        | AfterTmpWrite
        | AfterFsync
        | AfterRename
        | AfterDirFsync
        | AfterQuote
        | AfterCheckpointStored => Some(Decision::Drop),
        AfterDone | DuringManifestWrite => Some(Decision::Commit),
        AfterManifestCommit => Some(Decision::AlreadyCommitted),
        AbortAfterClose => Some(Decision::Drop),
        _ => unreachable!("not a protocol point"),
    }
}

impl World {
    fn workload(&mut self, k: &mut K) {
        // Sometimes more than one kernel read chunk (64 records) per snapshot.
        let n = if self.rng.gen_bool(0.2) { self.rng.gen_range(60..200) } else { self.rng.gen_range(1..40) };
        for _ in 0..n {
            match self.rng.gen_range(0..100) {
                0..=2 => k.violation(format!("/tmp/tomtou{}", self.rng.gen_range(0..5)).as_bytes()).unwrap(),
                3..=10 => {
                    let v = self.rng.gen_range(0..20u32).to_string();
                    k.measure_buffer(b"kernel_version", v.as_bytes()).unwrap();
                }
                11..=40 => {
                    // Likely a duplicate: same path and contents as before.
                    let i = self.rng.gen_range(0..10u64);
                    k.measure_file(format!("/usr/bin/tool{i}").as_bytes(), &file_digest(i)).unwrap();
                }
                _ => {
                    self.counter += 1;
                    let path = format!("/opt/app/{}", self.rng.gen_range(0..50));
                    k.measure_file(path.as_bytes(), &file_digest(1000 + self.counter)).unwrap();
                }
            };
            self.oracle.sync(k);
        }
    }

    fn maybe_inject(&mut self, k: &mut K) {
        if self.rng.gen_bool(0.25) {
            let f = [Fault::OpenEarly, Fault::MarkerTpmRead, Fault::Read, Fault::Done][self.rng.gen_range(0..4)];
            k.inject(f);
            self.fault = FaultState::Armed(f);
        }
    }

    /// One snapshot; checks the outcome against the armed fault.
    fn snapshot(&mut self, a: &mut Agent<K>) {
        let r = a.snapshot_once();
        self.oracle.sync(a.kernel());
        match (&r, self.fault) {
            (Ok(_), FaultState::None | FaultState::Unknown) => self.stats.snapshots += 1,
            (Err(AgentError::Kernel(_)), FaultState::Armed(Fault::OpenEarly | Fault::MarkerTpmRead))
            | (Err(AgentError::Aborted(_)), FaultState::Armed(Fault::Read | Fault::Done))
            | (Err(AgentError::Kernel(_) | AgentError::Aborted(_)), FaultState::Unknown) => self.stats.aborted += 1,
            _ => panic!("seed {}: snapshot with fault state {:?} gave {r:?}", self.seed, self.fault),
        }
        self.fault = FaultState::None;
    }

    /// The agent process dies: the kernel closes its descriptors.
    fn kill(&mut self, a: Agent<K>) -> K {
        let mut k = a.into_kernel();
        k.process_exit();
        self.stats.crashes += 1;
        k
    }

    /// kexec: the list (head possibly a marker) carries over, the new kernel appends its
    /// boot_aggregate, the TPM continues.
    fn kexec(&mut self, mut k: K) -> K {
        let buf = k.kexec_save();
        let k2 = Kernel::kexec_restore(self.kcfg.clone(), k.into_tpm(), &buf).unwrap();
        // The restored records are the oracle's tail.
        let restored = k2.len() - 1;
        let sha1 = k2.banks().iter().position(|&b| b == HashAlgo::Sha1).unwrap();
        let tail = &self.oracle.recs[self.oracle.recs.len() - restored..];
        assert!(k2.entries().take(restored).map(|e| e.record(sha1)).eq(tail.iter().cloned()), "seed {}", self.seed);
        self.oracle.seen = restored as u64;
        self.oracle.sync(&k2);
        self.fault = FaultState::None;
        self.stats.kexecs += 1;
        k2
    }

    /// Power loss and cold boot. `same_identity`: a TPM whose resetCount did not move (a
    /// fresh simulator), so the new boot has the very same boot id.
    fn cold_boot(&mut self, k: K, same_identity: bool) -> K {
        let tpm = if same_identity {
            drop(k);
            SoftTpm::new(self.seed)
        } else {
            let mut t = k.into_tpm();
            t.reset();
            t
        };
        let k2 = kernel::boot_with(self.kcfg.clone(), tpm);
        self.oracle = Oracle::default();
        self.oracle.sync(&k2);
        self.fault = FaultState::None;
        self.stats.cold_boots += 1;
        k2
    }

    /// Starts an agent, running recovery with `crash` armed; a recovery that crashes is
    /// killed and recovery runs again (each time possibly with another crash).
    fn start(&mut self, k: K, mut crash: Option<CrashPoint>) -> (Agent<K>, RecoveryReport, Vec<CrashPoint>) {
        let mut k = k;
        let mut fired = Vec::new();
        loop {
            let mut a = Agent::new(k, self.cfg.clone()).unwrap();
            if let Some(p) = crash.take() {
                a.crash_at(p);
            }
            match a.recover() {
                Ok(r) => {
                    let d = r.pending.map_or("none".to_string(), |d| format!("{d:?}"));
                    *self.stats.decisions.entry(d).or_default() += 1;
                    return (a, r, fired);
                }
                Err(AgentError::Crashed(p)) => {
                    *self.fired.entry(p).or_default() += 1;
                    fired.push(p);
                    k = self.kill(a);
                    if self.rng.gen_bool(0.3) {
                        crash = Some(self.recovery_point());
                    }
                }
                Err(e) => panic!("seed {}: recovery failed: {e}", self.seed),
            }
        }
    }

    fn recovery_point(&mut self) -> CrashPoint {
        let r: Vec<CrashPoint> = CrashPoint::ALL.into_iter().filter(|p| p.in_recovery()).collect();
        r[self.rng.gen_range(0..r.len())]
    }

    /// Arms `p` and snapshots; the crash must fire. Returns the killed agent's kernel.
    fn crash_in_snapshot(&mut self, mut a: Agent<K>, p: CrashPoint) -> K {
        if p == CrashPoint::AbortAfterClose {
            let f = if self.rng.gen_bool(0.5) { Fault::Read } else { Fault::Done };
            a.kernel_mut().inject(f);
        }
        a.crash_at(p);
        let r = a.snapshot_once();
        self.oracle.sync(a.kernel());
        match r {
            Err(AgentError::Crashed(q)) if q == p => {}
            r => panic!("seed {}: armed crash {p:?} did not fire: {r:?}", self.seed),
        }
        *self.fired.entry(p).or_default() += 1;
        // A crash may have consumed an armed fault.
        self.fault = if self.fault == FaultState::None { FaultState::None } else { FaultState::Unknown };
        self.kill(a)
    }

    /// The designated crash of this run, at `p`, then recovery; checks the decision.
    fn designated(&mut self, mut a: Agent<K>, p: CrashPoint) -> Agent<K> {
        // Neutralise a fault left armed, so the designated crash point is reached.
        if self.fault != FaultState::None {
            a.kernel_mut().inject(Fault::OpenEarly);
            let _ = a.snapshot_once();
            self.fault = FaultState::None;
        }
        self.workload(a.kernel_mut());
        if !p.in_recovery() {
            let mut k = self.crash_in_snapshot(a, p);
            if self.rng.gen_bool(0.3) {
                k = self.kexec(k);
            }
            let (a, r, fired) = self.start(k, None);
            assert!(fired.is_empty());
            assert_eq!(r.pending, expected_decision(p), "seed {}: recovery after a crash at {p:?}", self.seed);
            assert!(!r.cold_boot(), "seed {}: a crash is not a cold boot", self.seed);
            return a;
        }
        if p == CrashPoint::RecoveryAfterRetire {
            // Needs a previous boot with snapshots: snapshot, then power loss.
            self.snapshot(&mut a);
            let same = self.rng.gen_bool(0.5);
            let k = self.kill(a);
            let k = self.cold_boot(k, same);
            let (a, r, fired) = self.start(k, Some(p));
            assert_eq!(fired.first(), Some(&p), "seed {}", self.seed);
            assert!(r.created, "seed {}: the new boot's directory is created after the crash", self.seed);
            return a;
        }
        // Recovery work needs a pending snapshot: the commit path or the drop path.
        let first = match p {
            CrashPoint::RecoveryDuringManifestWrite | CrashPoint::RecoveryAfterManifestCommit => CrashPoint::AfterDone,
            CrashPoint::RecoveryAfterFileRemoved => CrashPoint::AfterRename,
            _ => [CrashPoint::AfterDone, CrashPoint::AfterFsync][self.rng.gen_range(0..2)],
        };
        let k = self.crash_in_snapshot(a, first);
        let (a, r, fired) = self.start(k, Some(p));
        assert_eq!(fired.first(), Some(&p), "seed {}: recovery crash {p:?} did not fire", self.seed);
        let want = match (fired.len(), p) {
            // Re-running recovery after its own crash resumes where it stopped.
            (1, CrashPoint::RecoveryDuringManifestWrite) => Some(Decision::Commit),
            (1, CrashPoint::RecoveryAfterManifestCommit) => Some(Decision::AlreadyCommitted),
            (1, CrashPoint::RecoveryAfterFileRemoved) => Some(Decision::Drop),
            (1, CrashPoint::RecoveryAfterPendingRemoved) => None,
            _ => r.pending,
        };
        assert_eq!(r.pending, want, "seed {}: second recovery after {p:?}", self.seed);
        a
    }

    /// The invariants.
    fn check(&mut self, a: &mut Agent<K>) {
        let seed = self.seed;
        let dir = a.boot_dir().expect("recovered").clone();
        let m = a.manifest().unwrap().clone();
        assert_eq!(dir.load_manifest().unwrap(), m, "seed {seed}: manifest on disk");
        assert_eq!(dir.leftovers(&m).unwrap(), Vec::<String>::new(), "seed {seed}: leftovers");
        let boots: Vec<String> = std::fs::read_dir(a.store().boots_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(boots, vec![dir.id().to_string()], "seed {seed}: only this boot's directory");
        let live_len = a.kernel().len() as u64;
        assert_eq!(m.next_index + live_len, self.oracle.recs.len() as u64, "seed {seed}: record count");

        let mut recs = Vec::with_capacity(self.oracle.recs.len());
        for (i, r) in a.stitched(0).unwrap().enumerate() {
            let (idx, rec) = r.unwrap_or_else(|e| panic!("seed {seed}: stitched: {e}"));
            assert_eq!(idx, i as u64);
            recs.push(rec);
        }
        assert_eq!(recs.len(), self.oracle.recs.len(), "seed {seed}: stitched length");
        for (i, (got, want)) in recs.iter().zip(&self.oracle.recs).enumerate() {
            assert_eq!(got, want, "seed {seed}: record {i}");
        }
        // From a random index: the suffix.
        let from = self.rng.gen_range(0..=recs.len() as u64);
        let tail: Vec<Record> = a.stitched(from).unwrap().map(|r| r.unwrap().1).collect();
        assert_eq!(tail[..], recs[from as usize..], "seed {seed}: stitched from {from}");
        if self.rng.gen_bool(0.1) {
            let e = a.stitched(recs.len() as u64 + 1).unwrap().find_map(|r| r.err()).unwrap();
            assert!(matches!(e.reason, StitchReason::Beyond { .. }));
        }

        // Replay: each snapshot's pcrs_end, then the TPM.
        let banks = [HashAlgo::Sha1, HashAlgo::Sha256];
        let mut opts = ReplayOptions::new(&banks);
        opts.parallel = false;
        let mut rp = Replayer::new(opts);
        let mut at = 0usize;
        for s in &m.snapshots {
            let end = s.end_index() as usize;
            rp.push_batch(&recs[at..end]).unwrap();
            at = end;
            let st = rp.state();
            for b in banks {
                assert_eq!(st.get(b, 10).unwrap().to_hex(), s.pcrs_end[&b], "seed {seed}: snapshot {} {b}", s.seq);
            }
        }
        rp.push_batch(&recs[at..]).unwrap();
        let rep = rp.finish();
        assert_eq!(rep.mismatch_count, 0, "seed {seed}: template digests");
        for b in banks {
            let tpm = a.kernel_mut().tpm_mut().pcr_read(b, &[10]).unwrap()[0];
            assert_eq!(rep.state().get(b, 10).unwrap(), &tpm, "seed {seed}: PCR 10 {b} vs TPM");
        }
        // Every segment's checkpoint: signed over its chain, and equal to the true replay.
        let ak = a.kernel_mut().tpm_mut().ak_public();
        imasnap_test_support::checkpoints::check(&m, &self.oracle.recs, &ak, true)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        self.stats.checks += 1;
    }
}

fn run(seed: u64, designated: CrashPoint, base: &std::path::Path, fired: &mut BTreeMap<CrashPoint, u64>) -> Stats {
    let tmp = tempfile::tempdir_in(base).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let retention = if rng.gen_bool(0.5) { Retention::Archive } else { Retention::Delete };
    let pcr_mode = if rng.gen_bool(0.5) { PcrMode::ExtendedUnderLock } else { PcrMode::TpmUnderLock };
    let mut cfg = AgentConfig::new(tmp.path().join("state"));
    cfg.retention = retention;
    let kcfg = Config { pcr_mode, ..Config::default() };
    let mut w = World {
        rng,
        seed,
        kcfg: kcfg.clone(),
        cfg,
        oracle: Oracle::default(),
        fault: FaultState::None,
        counter: 0,
        fired: std::mem::take(fired),
        stats: Stats::default(),
    };
    let k = kernel::boot_with(kcfg, SoftTpm::new(seed));
    w.oracle.sync(&k);
    let (mut a, r, _) = w.start(k, None);
    assert!(r.created);
    w.check(&mut a);

    let steps = w.rng.gen_range(10..40);
    let designated_at = w.rng.gen_range(0..steps);
    for step in 0..steps {
        if step == designated_at {
            a = w.designated(a, designated);
            w.check(&mut a);
            continue;
        }
        match w.rng.gen_range(0..100) {
            0..=34 => w.workload(a.kernel_mut()),
            35..=59 => {
                let k = a.kernel_mut();
                if w.fault == FaultState::None {
                    w.maybe_inject(k);
                }
                w.snapshot(&mut a);
            }
            60..=69 => {
                // A random extra crash; recovery must settle whatever it left.
                let p = PROTOCOL_POINTS[w.rng.gen_range(0..PROTOCOL_POINTS.len())];
                if w.fault != FaultState::None {
                    w.snapshot(&mut a);
                }
                let k = w.crash_in_snapshot(a, p);
                if w.rng.gen_bool(0.1) {
                    // Power loss right after the crash: the new boot must not trip over
                    // the old boot's half-done snapshot.
                    let same = w.rng.gen_bool(0.5);
                    let k = w.cold_boot(k, same);
                    let (a2, _, _) = w.start(k, None);
                    a = a2;
                } else {
                    let crash = w.rng.gen_bool(0.2).then(|| w.recovery_point());
                    let (a2, r, _) = w.start(k, crash);
                    if crash.is_none() {
                        assert_eq!(r.pending, expected_decision(p), "seed {seed}: after {p:?}");
                    }
                    a = a2;
                }
            }
            70..=76 => {
                // Another opener's aborted attempt: its marker stays as an ordinary record.
                let k = a.kernel_mut();
                match k.snapshot_open() {
                    Ok(h) => k.snapshot_close(h),
                    Err(e) => {
                        assert!(
                            matches!(w.fault, FaultState::Armed(Fault::OpenEarly | Fault::MarkerTpmRead)),
                            "seed {seed}: open failed: {e}"
                        );
                        w.fault = FaultState::None;
                    }
                }
                w.oracle.sync(a.kernel());
            }
            77..=84 => {
                // Clean agent restart.
                let k = a.into_kernel();
                let (a2, r, _) = w.start(k, None);
                assert_eq!(r.pending, None);
                assert!(!r.cold_boot() && !r.created && r.removed.is_empty(), "seed {seed}: {r:?}");
                a = a2;
            }
            85..=93 => {
                let k = a.into_kernel();
                let k = w.kexec(k);
                let (a2, r, _) = w.start(k, None);
                assert!(!r.cold_boot() && !r.created, "seed {seed}: kexec is not a cold boot: {r:?}");
                a = a2;
            }
            _ => {
                let old = a.manifest().unwrap().clone();
                let old_id = a.boot_dir().unwrap().id().clone();
                let archived_before = a.store().list_archive().unwrap().len();
                let same = w.rng.gen_bool(0.5);
                let k = a.into_kernel();
                let k = w.cold_boot(k, same);
                let (a2, r, _) = w.start(k, None);
                a = a2;
                let new_id = a.boot_dir().unwrap().id().clone();
                // Same identity and nothing snapshotted yet: indistinguishable from a
                // restart, and harmless (the old directory holds no records).
                // A fresh simulator restarts resetCount at 0: the same id only if it was 0.
                let same_id = same && old_id.reset_count() == 0;
                let reused = same_id && old.snapshots.is_empty();
                assert_eq!(r.cold_boot(), !reused, "seed {seed}: cold boot detection {r:?}");
                assert_eq!(new_id == old_id, same_id, "seed {seed}: boot id");
                let archived = a.store().list_archive().unwrap();
                let want = archived_before + usize::from(!reused && retention == Retention::Archive);
                assert_eq!(archived.len(), want, "seed {seed}: archive");
                if !reused && retention == Retention::Archive {
                    // The newest archive entry of that id holds the old boot intact.
                    let name =
                        archived.iter().filter(|n| n.starts_with(old_id.as_str())).max_by_key(|n| n.len()).unwrap();
                    let d = imasnap_store::BootDir::at(old_id.clone(), a.store().archive_dir().join(name));
                    assert_eq!(d.load_manifest().unwrap(), old, "seed {seed}: archived manifest");
                }
            }
        }
        w.check(&mut a);
    }
    w.stats.records = w.oracle.recs.len() as u64;
    *fired = std::mem::take(&mut w.fired);
    w.stats
}

#[test]
fn crash_matrix() {
    let env = imasnap_test_support::crash::CrashEnv::read(0x1a5a);
    let (runs, base_seed, base) = (env.runs, env.seed, env.dir);
    let t0 = std::time::Instant::now();
    let mut fired = BTreeMap::new();
    let mut total = Stats::default();
    for i in 0..runs {
        let p = CrashPoint::ALL[(i % CrashPoint::ALL.len() as u64) as usize];
        let s = run(base_seed + i, p, &base, &mut fired);
        total.snapshots += s.snapshots;
        total.aborted += s.aborted;
        total.crashes += s.crashes;
        total.kexecs += s.kexecs;
        total.cold_boots += s.cold_boots;
        total.checks += s.checks;
        total.records += s.records;
        for (k, v) in s.decisions {
            *total.decisions.entry(k).or_default() += v;
        }
    }
    eprintln!("crash matrix: {runs} runs in {:.1?}: {total:?}", t0.elapsed());
    eprintln!("crash points fired: {fired:?}");
    if runs >= CrashPoint::ALL.len() as u64 {
        for p in CrashPoint::ALL {
            assert!(fired.get(&p).copied().unwrap_or(0) > 0, "crash point {p:?} never fired");
        }
    }
}
