//! Crash matrix for the staging back end (docs/STAGING.md), both flavours: seeded random
//! runs of workload, cuts, kernel faults, another process holding the measurement files
//! (EBUSY), kexec with records staged or stored-but-undeleted, clean restarts and cold
//! boots, each run with one designated crash (cycling through every staging step) plus
//! random extra crashes, some of them during the recovery that follows.
//!
//! After every step and every recovery:
//! - the stitched log (stored segments + the kernel's list after them) equals the oracle:
//!   every record the kernel model appended in this cold boot, in order, none lost or
//!   duplicated;
//! - it replays (SHA1 and SHA256) to the TPM's PCR 10, and each segment's `pcrs_end`
//!   equals the replay at its end;
//! - the manifest on disk equals the agent's, and no tmp or stray file is left.
//!
//! `IMASNAP_CRASH_RUNS` sets the run count (default 100), `IMASNAP_CRASH_SEED` the base
//! seed, `IMASNAP_CRASH_DIR` where the stores live (default: /dev/shm if present).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent::{Agent, AgentConfig, AgentError, CrashPoint, KernelIfError, StagingFlavour};
use imasnap_kernel_model::{Config, Kernel, MeasFile, StagingFault};
use imasnap_log::{HashAlgo, Record, ReplayOptions, Replayer};
use imasnap_store::Retention;
use imasnap_test_support::kernel::{self, file_digest};
use imasnap_tpm::{SoftTpm, Tpm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

type K = Kernel<SoftTpm>;
const KEYLIME: u32 = 4242;

/// The steps of a staging cut where a crash can land, in order.
const CUT_POINTS: [CrashPoint; 10] = [
    CrashPoint::AfterOpen,
    CrashPoint::DuringTmpWrite,
    CrashPoint::AfterTmpWrite,
    CrashPoint::AfterFsync,
    CrashPoint::AfterRename,
    CrashPoint::AfterDirFsync,
    CrashPoint::AfterQuote,
    CrashPoint::DuringManifestWrite,
    CrashPoint::AfterManifestCommit,
    CrashPoint::AfterDone,
];

/// Every record the kernel appended in the current cold boot, in SHA1 form.
#[derive(Default)]
struct Oracle {
    recs: Vec<Record>,
    /// Records of the current kernel (deleted + staged + current) at the last sync.
    seen: u64,
}

impl Oracle {
    /// Takes the records appended since the last sync from the tail of the current list.
    fn sync(&mut self, k: &K) {
        let total = k.staging_deleted() + k.staged_len() as u64 + k.len() as u64;
        assert!(total >= self.seen, "kernel lost track of its own records");
        let new = (total - self.seen) as usize;
        let sha1 = k.banks().iter().position(|&b| b == HashAlgo::Sha1).unwrap();
        self.recs.extend(k.entries().skip(k.len() - new).map(|e| e.record(sha1)));
        self.seen = total;
    }
}

#[derive(Default, Debug)]
struct Stats {
    cuts: u64,
    nothing_new: u64,
    failed: u64,
    busy: u64,
    crashes: u64,
    kexecs: u64,
    kexecs_with_staged: u64,
    cold_boots: u64,
    checks: u64,
    records: u64,
    segments: u64,
}

struct World {
    rng: ChaCha8Rng,
    seed: u64,
    kcfg: Config,
    cfg: AgentConfig,
    oracle: Oracle,
    counter: u64,
    /// A reader of another process holds `ascii_runtime_measurements`.
    reader: Option<imasnap_kernel_model::MeasFd>,
    fired: BTreeMap<CrashPoint, u64>,
    stats: Stats,
}

impl World {
    fn workload(&mut self, k: &mut K) {
        let n = if self.rng.gen_bool(0.2) { self.rng.gen_range(60..200) } else { self.rng.gen_range(1..40) };
        for _ in 0..n {
            match self.rng.gen_range(0..100) {
                0..=2 => k.violation(format!("/tmp/tomtou{}", self.rng.gen_range(0..3)).as_bytes()).unwrap(),
                3..=10 => {
                    let v = self.rng.gen_range(0..20u32).to_string();
                    k.measure_buffer(b"kernel_version", v.as_bytes()).unwrap();
                }
                11..=40 => {
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

    fn flavour(&self) -> StagingFlavour {
        self.cfg.staging
    }

    /// One cut; any failure must be one a fault or a reader explains.
    fn cut(&mut self, a: &mut Agent<K>, fault: Option<StagingFault>) {
        if let Some(f) = fault {
            a.kernel_mut().inject_staging(f);
        }
        let r = a.snapshot_once();
        self.oracle.sync(a.kernel());
        match (&r, fault, self.reader.is_some()) {
            (Ok(_), _, _) => self.stats.cuts += 1,
            (Err(AgentError::Aborted(why)), _, _) if why.contains("nothing new") => self.stats.nothing_new += 1,
            (Err(AgentError::Kernel(KernelIfError::Busy(_))), _, true) => self.stats.busy += 1,
            (Err(AgentError::Kernel(_)), Some(_), _) => self.stats.failed += 1,
            _ => panic!("seed {}: cut with fault {fault:?}, reader {}: {r:?}", self.seed, self.reader.is_some()),
        }
        // A fault the cut did not reach stays armed in the model: disarm it.
        if fault.is_some() {
            a.kernel_mut().inject_staging(StagingFault::Open);
            let fd = a.kernel_mut().open(MeasFile::ASCII, false, 1, true);
            if let Ok(fd) = fd {
                a.kernel_mut().close(fd);
            }
        }
    }

    fn kill(&mut self, a: Agent<K>) -> K {
        let mut k = a.into_kernel();
        k.process_exit();
        // The other process's reader survives the agent.
        if let Some(fd) = self.reader.take() {
            k.close(fd);
            self.reader = Some(k.open(MeasFile::ASCII, false, KEYLIME, true).unwrap());
        }
        self.stats.crashes += 1;
        k
    }

    fn release_reader(&mut self, k: &mut K) {
        if let Some(fd) = self.reader.take() {
            k.close(fd);
        }
    }

    /// kexec: staged records first, then the current list, then the new boot_aggregate.
    fn kexec(&mut self, mut k: K) -> K {
        self.release_reader(&mut k);
        if k.staged_len() > 0 {
            self.stats.kexecs_with_staged += 1;
        }
        let buf = k.kexec_save();
        let k2 = Kernel::kexec_restore(self.kcfg.clone(), k.into_tpm(), &buf).unwrap();
        let restored = k2.len() - 1;
        let sha1 = k2.banks().iter().position(|&b| b == HashAlgo::Sha1).unwrap();
        let tail = &self.oracle.recs[self.oracle.recs.len() - restored..];
        assert!(k2.entries().take(restored).map(|e| e.record(sha1)).eq(tail.iter().cloned()), "seed {}", self.seed);
        self.oracle.seen = restored as u64;
        self.oracle.sync(&k2);
        self.stats.kexecs += 1;
        k2
    }

    fn cold_boot(&mut self, mut k: K) -> K {
        self.release_reader(&mut k);
        let mut t = k.into_tpm();
        t.reset();
        let k2 = kernel::boot_with(self.kcfg.clone(), t);
        self.oracle = Oracle::default();
        self.oracle.sync(&k2);
        self.stats.cold_boots += 1;
        k2
    }

    /// Starts an agent, recovering with `crash` armed; a recovery that crashes (or meets
    /// the reader) is retried as a restarted service would.
    fn start(&mut self, k: K, mut crash: Option<CrashPoint>) -> Agent<K> {
        let mut k = k;
        for _ in 0..20 {
            let mut a = Agent::new(k, self.cfg.clone()).unwrap();
            if let Some(p) = crash.take() {
                a.crash_at(p);
            }
            match a.recover() {
                Ok(_) => {
                    // A crash point recovery did not pass stays armed otherwise.
                    a.disarm();
                    self.oracle.sync(a.kernel());
                    return a;
                }
                Err(AgentError::Crashed(p)) => {
                    self.oracle.sync(a.kernel());
                    *self.fired.entry(p).or_default() += 1;
                    k = self.kill(a);
                    if self.rng.gen_bool(0.3) {
                        crash = Some(CUT_POINTS[self.rng.gen_range(0..CUT_POINTS.len())]);
                    }
                }
                Err(AgentError::Kernel(KernelIfError::Busy(_))) if self.reader.is_some() => {
                    self.stats.busy += 1;
                    k = a.into_kernel();
                    self.release_reader(&mut k);
                }
                Err(e) => panic!("seed {}: recovery failed: {e}", self.seed),
            }
        }
        panic!("seed {}: recovery did not finish in 20 attempts", self.seed)
    }

    /// Arms `p` and cuts; the crash must fire. Returns the killed agent's kernel.
    fn crash_in_cut(&mut self, mut a: Agent<K>, p: CrashPoint) -> K {
        self.workload(a.kernel_mut());
        // At least one new record that is not a violation, so the cut has something to store.
        self.counter += 1;
        a.kernel_mut().measure_file(b"/opt/new", &file_digest(1000 + self.counter)).unwrap();
        self.oracle.sync(a.kernel());
        if let Some(fd) = self.reader.take() {
            a.kernel_mut().close(fd);
        }
        a.crash_at(p);
        let r = a.snapshot_once();
        self.oracle.sync(a.kernel());
        match r {
            Err(AgentError::Crashed(q)) if q == p => {}
            r => panic!("seed {}: armed crash {p:?} ({:?}) did not fire: {r:?}", self.seed, self.flavour()),
        }
        *self.fired.entry(p).or_default() += 1;
        self.kill(a)
    }

    fn points(&self) -> &'static [CrashPoint] {
        match self.flavour() {
            StagingFlavour::Stage => &CUT_POINTS,
            StagingFlavour::Trim => &CUT_POINTS[1..],
        }
    }

    fn check(&mut self, a: &mut Agent<K>) {
        let seed = self.seed;
        self.oracle.sync(a.kernel());
        let dir = a.boot_dir().expect("recovered").clone();
        let m = a.manifest().unwrap().clone();
        assert_eq!(dir.load_manifest().unwrap(), m, "seed {seed}: manifest on disk");
        assert_eq!(dir.leftovers(&m).unwrap(), Vec::<String>::new(), "seed {seed}: leftovers");
        let boots: Vec<String> = std::fs::read_dir(a.store().boots_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(boots, vec![dir.id().to_string()], "seed {seed}: only this boot's directory");
        // The kernel holds exactly the records from live_base on.
        let k = a.kernel();
        let in_kernel = k.staged_len() as u64 + k.len() as u64;
        assert_eq!(a.live_base() + in_kernel, self.oracle.recs.len() as u64, "seed {seed}: live_base");
        assert!(a.live_base() <= m.next_index, "seed {seed}: nothing deleted before it was stored");

        // Staged records still in the kernel (a failed D) are stored: the stitched log
        // goes on from the store to the current list.
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
        let banks = [HashAlgo::Sha1, HashAlgo::Sha256];
        let mut opts = ReplayOptions::new(&banks);
        opts.parallel = false;
        let mut rp = Replayer::new(opts);
        let mut at = 0usize;
        for s in &m.snapshots {
            let end = s.end_index() as usize;
            assert_eq!(s.cut.as_str(), if self.flavour() == StagingFlavour::Trim { "trim" } else { "stage" });
            rp.push_batch(&recs[at..end]).unwrap();
            at = end;
            let st = rp.state();
            for b in banks {
                assert_eq!(st.get(b, 10).unwrap().to_hex(), s.pcrs_end[&b], "seed {seed}: segment {} {b}", s.seq);
            }
        }
        rp.push_batch(&recs[at..]).unwrap();
        let rep = rp.finish();
        assert_eq!(rep.mismatch_count, 0, "seed {seed}: template digests");
        for b in banks {
            let tpm = a.kernel_mut().tpm_mut().pcr_read(b, &[10]).unwrap()[0];
            assert_eq!(rep.state().get(b, 10).unwrap(), &tpm, "seed {seed}: PCR 10 {b} vs TPM");
        }
        let ak = a.kernel_mut().tpm_mut().ak_public();
        imasnap_test_support::checkpoints::check(&m, &self.oracle.recs, &ak, true)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        self.stats.segments = self.stats.segments.max(m.snapshots.len() as u64);
        self.stats.checks += 1;
    }
}

fn run(seed: u64, designated: usize, base: &std::path::Path, fired: &mut BTreeMap<CrashPoint, u64>) -> Stats {
    let tmp = tempfile::tempdir_in(base).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let flavour = if seed % 2 == 0 { StagingFlavour::Trim } else { StagingFlavour::Stage };
    let mut cfg = AgentConfig::staging(tmp.path().join("state"), flavour);
    cfg.retention = if rng.gen_bool(0.5) { Retention::Archive } else { Retention::Delete };
    // ima_flush_htable refuses N: only the stage flavour can run with it.
    let flush = flavour == StagingFlavour::Stage && rng.gen_bool(0.3);
    let kcfg = Config { keep_dedup_on_done: !flush, ..Config::default() };
    let mut w = World {
        rng,
        seed,
        kcfg: kcfg.clone(),
        cfg,
        oracle: Oracle::default(),
        counter: 0,
        reader: None,
        fired: std::mem::take(fired),
        stats: Stats::default(),
    };
    let k = kernel::boot_with(kcfg, SoftTpm::new(seed));
    w.oracle.sync(&k);
    let mut a = w.start(k, None);
    w.check(&mut a);
    let points = w.points();
    let designated = points[designated % points.len()];

    let steps = w.rng.gen_range(10..40);
    let designated_at = w.rng.gen_range(0..steps);
    for step in 0..steps {
        if step == designated_at {
            let mut k = w.crash_in_cut(a, designated);
            if w.rng.gen_bool(0.4) {
                k = w.kexec(k);
            }
            a = w.start(k, None);
            w.check(&mut a);
            continue;
        }
        let roll = w.rng.gen_range(0..100);
        if std::env::var_os("IMASNAP_CRASH_TRACE").is_some() {
            let k = a.kernel();
            eprintln!(
                "step {step} roll {roll}: base {} next {} staged {} current {} oracle {}",
                a.live_base(),
                a.manifest().unwrap().next_index,
                k.staged_len(),
                k.len(),
                w.oracle.recs.len()
            );
        }
        match roll {
            0..=29 => w.workload(a.kernel_mut()),
            30..=54 => {
                let fault = w.rng.gen_bool(0.2).then(|| {
                    [
                        StagingFault::Open,
                        StagingFault::Read,
                        StagingFault::Stage,
                        StagingFault::Delete,
                        StagingFault::Trim,
                    ][w.rng.gen_range(0..5)]
                });
                w.cut(&mut a, fault);
            }
            55..=62 => {
                // Another process opens a measurement file and keeps it open for a while.
                if w.reader.is_none() {
                    w.reader = a.kernel_mut().open(MeasFile::ASCII, false, KEYLIME, true).ok();
                } else {
                    w.release_reader(a.kernel_mut());
                }
            }
            63..=74 => {
                let p = points[w.rng.gen_range(0..points.len())];
                let k = w.crash_in_cut(a, p);
                let k = if w.rng.gen_bool(0.1) { w.cold_boot(k) } else { k };
                let crash = w.rng.gen_bool(0.3).then(|| CUT_POINTS[w.rng.gen_range(0..CUT_POINTS.len())]);
                a = w.start(k, crash);
            }
            75..=82 => {
                let k = a.into_kernel();
                a = w.start(k, None);
            }
            83..=94 => {
                let k = a.into_kernel();
                let k = w.kexec(k);
                a = w.start(k, None);
            }
            _ => {
                let k = a.into_kernel();
                let k = w.cold_boot(k);
                a = w.start(k, None);
            }
        }
        w.check(&mut a);
    }
    w.stats.records = w.oracle.recs.len() as u64;
    *fired = std::mem::take(&mut w.fired);
    w.stats
}

#[test]
fn staging_crash_matrix() {
    let env = imasnap_test_support::crash::CrashEnv::read(0x57a6);
    let (runs, base_seed, base) = (env.runs, env.seed, env.dir);
    let t0 = std::time::Instant::now();
    let mut fired = BTreeMap::new();
    let mut total = Stats::default();
    for i in 0..runs {
        let s = run(base_seed + i, (i / 2) as usize, &base, &mut fired);
        total.cuts += s.cuts;
        total.nothing_new += s.nothing_new;
        total.failed += s.failed;
        total.busy += s.busy;
        total.crashes += s.crashes;
        total.kexecs += s.kexecs;
        total.kexecs_with_staged += s.kexecs_with_staged;
        total.cold_boots += s.cold_boots;
        total.checks += s.checks;
        total.records += s.records;
        total.segments = total.segments.max(s.segments);
    }
    eprintln!("staging crash matrix: {runs} runs in {:.1?}: {total:?}", t0.elapsed());
    eprintln!("crash points fired: {fired:?}");
    if runs >= 2 * CUT_POINTS.len() as u64 {
        for p in CUT_POINTS {
            assert!(fired.get(&p).copied().unwrap_or(0) > 0, "crash point {p:?} never fired");
        }
        assert!(total.kexecs_with_staged > 0, "no kexec with records staged");
        assert!(total.busy > 0, "EBUSY never met");
    }
}
