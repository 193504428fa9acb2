//! `imasnap demo`: the kernel model under load, the agent snapshotting by policy, and the
//! verifier attesting incrementally every round from fresh quotes — the whole design on
//! the embedded default (kernel model + software TPM).

use crate::run::{Machine, SimError};
use crate::workload::Workload;
use imasnap_agent::AgentConfig;
use imasnap_kernel_model::Config;
use imasnap_tpm::Tpm;
use imasnap_verifier::dir::BundleDir;
use imasnap_verifier::{verify, Mode, Options, State, TpmQuote};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Kernel slab per record (ima-ng, sha256, two banks), from IMA-FORMAT.md §7.
pub const SLAB_BYTES_PER_RECORD: u64 = 448;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub rounds: u32,
    pub events_per_round: u64,
    /// Snapshot policy: when the live list holds this many records.
    pub snapshot_records: u64,
    pub seed: u64,
    pub kernel: Config,
    /// Agent store and per-round bundles.
    pub work_dir: PathBuf,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Round {
    pub round: u32,
    pub records_total: u64,
    pub snapshots: u64,
    pub live_records: u64,
    pub verified: bool,
    pub reason: Option<String>,
    pub records_replayed: u64,
    pub snapshots_crossed: u64,
    pub verify_ms: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub records_measured: u64,
    pub snapshots: u64,
    pub live_records: u64,
    pub live_bytes: u64,
    pub records_without_snapshotting: u64,
    pub bytes_without_snapshotting: u64,
    pub slab_bytes_now: u64,
    pub slab_bytes_without_snapshotting: u64,
    pub verify_ms_mean: f64,
    pub verify_ms_max: f64,
    pub max_pause_us: f64,
    pub rounds_verified: u32,
    pub rounds_rejected: u32,
    pub rounds: Vec<Round>,
}

/// Runs the demo; `on_round` sees each round as it ends (progress, live output).
pub fn run<T: Tpm>(opts: &DemoOptions, tpm: T, mut on_round: impl FnMut(&Round)) -> Result<Summary, SimError> {
    let mut agent_cfg = AgentConfig::new(opts.work_dir.join("agent-state"));
    agent_cfg.snapshot.max_records = Some(opts.snapshot_records);
    let mut m = Machine::boot(opts.kernel.clone(), tpm, agent_cfg)?;
    let mut work = Workload::new(opts.seed);
    let mut state: Option<State> = None;
    let trusted_ak = m.kernel().tpm().ak_public();
    let mut rounds = Vec::new();
    let mut total_bytes = m.kernel().list_bytes();
    for round in 1..=opts.rounds {
        for (i, ev) in work.by_ref().take(opts.events_per_round as usize).enumerate() {
            if m.apply(&ev)? {
                let k = m.kernel();
                total_bytes += k.entries().next_back().map(|e| e.record(0).encoded_len() as u64).unwrap_or(0);
            }
            if i % 256 == 255 {
                m.agent().maybe_snapshot(Instant::now())?;
            }
        }
        // The verifier's challenge for this round, then the agent's evidence.
        let nonce = imasnap_log::HashAlgo::Sha256.hash(&[b"demo", &round.to_le_bytes(), &opts.seed.to_le_bytes()]);
        let nonce = &nonce.as_bytes()[..32];
        let dir = opts.work_dir.join(format!("bundle-{round:04}"));
        m.write_bundle(&dir, nonce)?;
        let bundle = BundleDir::open(&dir).map_err(|f| SimError::Other(f.to_string()))?;
        let ev = bundle.evidence().map_err(|f| SimError::Other(f.to_string()))?;
        let q = TpmQuote { quote: &bundle.quote, trusted_ak: &trusted_ak, claimed_ak: bundle.shipped_ak.as_ref() };
        let t = Instant::now();
        let out = verify(&Options::new(Mode::Incremental), ev, &q, nonce, state.as_ref());
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let _ = std::fs::remove_dir_all(&dir);
        let verified = out.verdict.is_verified();
        if verified {
            state = out.state.clone();
        }
        let snapshots = m.agent().manifest().map(|x| x.snapshots.len() as u64).unwrap_or(0);
        let r = Round {
            round,
            records_total: state.as_ref().map(|s| s.checkpoint).unwrap_or(0),
            snapshots,
            live_records: m.kernel().len() as u64,
            verified,
            reason: out.verdict.failure().map(|f| f.to_string()),
            records_replayed: out.report.records_replayed,
            snapshots_crossed: out.report.snapshots_skipped,
            verify_ms: ms,
        };
        on_round(&r);
        rounds.push(r);
    }
    let k = m.kernel();
    let live_records = k.len() as u64;
    let live_bytes = k.list_bytes();
    let max_pause = k.max_pause();
    let records_measured = m.agent().manifest().map(|x| x.next_index).unwrap_or(0) + live_records;
    let snapshots = m.agent().manifest().map(|x| x.snapshots.len() as u64).unwrap_or(0);
    let ms: Vec<f64> = rounds.iter().map(|r| r.verify_ms).collect();
    Ok(Summary {
        records_measured,
        snapshots,
        live_records,
        live_bytes,
        // Without snapshotting the list would hold every record but the markers.
        records_without_snapshotting: records_measured - snapshots,
        bytes_without_snapshotting: total_bytes,
        slab_bytes_now: live_records * SLAB_BYTES_PER_RECORD,
        slab_bytes_without_snapshotting: (records_measured - snapshots) * SLAB_BYTES_PER_RECORD,
        verify_ms_mean: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        verify_ms_max: ms.iter().cloned().fold(0.0, f64::max),
        max_pause_us: Duration::as_secs_f64(&max_pause) * 1e6,
        rounds_verified: rounds.iter().filter(|r| r.verified).count() as u32,
        rounds_rejected: rounds.iter().filter(|r| !r.verified).count() as u32,
        rounds,
    })
}
