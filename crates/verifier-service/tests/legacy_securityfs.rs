//! The agent service on a legacy securityfs (no `snapshot` file) and the verifier, in one
//! process over HTTPS with mutual TLS.
//!
//! The "kernel" is a temporary directory laid out like `/sys/kernel/security/ima`: it
//! starts with the real Debian 6.1 kernel's `binary_runtime_measurements` (fixture
//! ima-ng), and the test appends records between rounds as the kernel would. The TPM is a
//! SoftTpm in the state that kernel's machine had: PCR 0-7 replayed from the fixture's
//! SeaBIOS event log (so the real boot_aggregate checks out), PCR 10 extended with every
//! record's per-bank template digest (SHA1 digest in the sha1 bank, SHA256 over the
//! template data in the sha256 bank, as the 6.1 kernel does).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent_server::config::{AgentServiceConfig, Backend};
use imasnap_agent_server::devpki::{write_dev_pki, DevPkiFiles};
use imasnap_agent_server::service as agent;
use imasnap_log::digest::template_hash;
use imasnap_log::{Endian, HashAlgo, PcrValue, Record};
use imasnap_test_support::records::{new_record, parse as records};
use imasnap_tpm::{AkPublic, ClockInfo, PcrSelection, Quote, SoftTpm, Tpm, TpmError};
use imasnap_verifier_service::model::{HostPatch, Verdict, VerdictRow};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::start_verifier;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/real-kernel/ima-ng");

/// The TPM the "kernel" extends and the agent quotes with: one SoftTpm, shared.
#[derive(Clone)]
struct SharedTpm(Arc<Mutex<SoftTpm>>);

impl Tpm for SharedTpm {
    fn banks(&self) -> Vec<HashAlgo> {
        self.0.lock().unwrap().banks()
    }
    fn pcr_read(&mut self, bank: HashAlgo, pcrs: &[u32]) -> Result<Vec<PcrValue>, TpmError> {
        self.0.lock().unwrap().pcr_read(bank, pcrs)
    }
    fn pcr_extend(&mut self, pcr: u32, digests: &[PcrValue]) -> Result<(), TpmError> {
        self.0.lock().unwrap().pcr_extend(pcr, digests)
    }
    fn quote(&mut self, nonce: &[u8], selection: &PcrSelection) -> Result<Quote, TpmError> {
        self.0.lock().unwrap().quote(nonce, selection)
    }
    fn clock_info(&mut self) -> Result<ClockInfo, TpmError> {
        self.0.lock().unwrap().clock_info()
    }
    fn ak_public(&self) -> AkPublic {
        self.0.lock().unwrap().ak_public()
    }
}

/// Extends the TPM's PCR 0-7 with a TCG2 crypto-agile event log (SeaBIOS).
fn replay_bios_log(tpm: &mut dyn Tpm, b: &[u8]) {
    let u32le = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u16le = |p: usize| u16::from_le_bytes(b[p..p + 2].try_into().unwrap());
    assert_eq!(u32le(4), 3, "first event is EV_NO_ACTION (Spec ID Event03)");
    let ev_len = u32le(28) as usize;
    let ev = &b[32..32 + ev_len];
    assert_eq!(&ev[..16], b"Spec ID Event03\0");
    let nalg = u32::from_le_bytes(ev[24..28].try_into().unwrap()) as usize;
    let sizes: Vec<(u16, usize)> = (0..nalg)
        .map(|i| {
            let q = 28 + 4 * i;
            (
                u16::from_le_bytes(ev[q..q + 2].try_into().unwrap()),
                u16::from_le_bytes(ev[q + 2..q + 4].try_into().unwrap()) as usize,
            )
        })
        .collect();
    let banks = tpm.banks();
    let mut p = 32 + ev_len;
    while p < b.len() {
        let pcr = u32le(p);
        let ty = u32le(p + 4);
        let count = u32le(p + 8) as usize;
        let mut q = p + 12;
        let mut vals = Vec::new();
        for _ in 0..count {
            let id = u16le(q);
            let n = sizes.iter().find(|s| s.0 == id).unwrap().1;
            if let Some(a) = HashAlgo::from_tpm_alg_id(id).filter(|a| banks.contains(a)) {
                vals.push(PcrValue::new(a, &b[q + 2..q + 2 + n]).unwrap());
            }
            q += 2 + n;
        }
        let len = u32le(q) as usize;
        let data = &b[q + 4..q + 4 + len];
        if ty == 3 {
            assert!(
                !data.starts_with(b"StartupLocality\0") || data[16] == 0,
                "a non-zero startup locality cannot be reproduced on a SoftTpm"
            );
        } else {
            tpm.pcr_extend(pcr, &vals).unwrap();
        }
        p = q + 4 + len;
    }
}

/// What the kernel does for one record: extend PCR 10 with its template digest per bank.
fn extend_record(tpm: &mut dyn Tpm, r: &Record) {
    let vals: Vec<PcrValue> = tpm
        .banks()
        .into_iter()
        .map(|a| if r.is_violation() { PcrValue::ones(a) } else { template_hash(a, r, Endian::Little).unwrap() })
        .collect();
    tpm.pcr_extend(10, &vals).unwrap();
}

struct Kernel {
    ima: PathBuf,
    tpm: SharedTpm,
    next: u64,
}

impl Kernel {
    fn boot(dir: &Path) -> Self {
        let ima = dir.join("ima");
        std::fs::create_dir_all(&ima).unwrap();
        let log = std::fs::read(format!("{FIXTURE}/binary_runtime_measurements")).unwrap();
        std::fs::write(ima.join("binary_runtime_measurements"), &log).unwrap();
        let mut tpm = SharedTpm(Arc::new(Mutex::new(SoftTpm::new(21))));
        replay_bios_log(&mut tpm, &std::fs::read(format!("{FIXTURE}/binary_bios_measurements")).unwrap());
        // The machine's PCR 0-9, as read in the guest: the replay reproduced them.
        let want = std::fs::read_to_string(format!("{FIXTURE}/pcrs-sha256.txt")).unwrap();
        let got = tpm.pcr_read(HashAlgo::Sha256, &(0..10).collect::<Vec<_>>()).unwrap();
        for (i, line) in want.lines().take(10).enumerate() {
            assert_eq!(line, format!("PCR-{i:02}: {}", got[i].to_hex()), "sha256 PCR {i}");
        }
        for r in records(&log) {
            extend_record(&mut tpm, &r);
        }
        Self { ima, tpm, next: 0 }
    }

    fn live(&self) -> PathBuf {
        self.ima.join("binary_runtime_measurements")
    }

    /// Measures `n` new files: append to the list, then extend (ima_add_template_entry).
    fn measure(&mut self, n: u64) {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.live()).unwrap();
        for _ in 0..n {
            self.next += 1;
            let (r, bytes) = new_record(self.next);
            f.write_all(&bytes).unwrap();
            extend_record(&mut self.tpm, &r);
        }
    }

    fn count(&self) -> u64 {
        records(&std::fs::read(self.live()).unwrap()).len() as u64
    }
}

fn agent_cfg(dir: &Path, pki: &DevPkiFiles, ima: &Path) -> AgentServiceConfig {
    common::agent_cfg(dir, &pki.agent, &format!("backend = \"securityfs\"\nima_dir = {ima:?}"))
}

async fn start_agent(cfg: &AgentServiceConfig, tpm: SharedTpm) -> agent::Running {
    common::serve_agent(cfg, agent::open_securityfs(cfg, tpm).unwrap()).await
}

async fn agent_get(pki: &DevPkiFiles, addr: &str, method: hyper::Method, path: &str) -> (u16, serde_json::Value) {
    let name = imasnap_agent_server::tls::server_name("localhost").unwrap();
    let mut c =
        imasnap_agent_server::http::Conn::connect(addr, name, pki.verifier.client().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
    let (s, body) = c.request(method, path, None, 1 << 20, Duration::from_secs(5)).await.unwrap();
    (s.as_u16(), serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

fn verified(r: &VerdictRow) {
    assert_eq!(r.verdict, Verdict::Verified, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_kernel_attested_incrementally_from_the_agents_copy() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
    let mut k = Kernel::boot(dir);
    let n0 = k.count();
    let acfg = agent_cfg(dir, &pki, &k.ima);
    let mut a = start_agent(&acfg, k.tpm.clone()).await;
    let v = start_verifier(dir, &pki).await;
    let vf = v.service.clone();
    vf.add_host(common::tofu_host("legacy1", &a.addr.to_string())).await.unwrap();

    // The mode is chosen automatically and shown.
    let (s, h) = agent_get(&pki, &a.addr.to_string(), hyper::Method::GET, "/v1/health").await;
    assert_eq!(s, 200);
    assert_eq!(h["mode"], "securityfs-legacy", "{h}");
    assert_eq!(h["metrics"]["live_records"], n0, "{h}");

    // Round 1: the real kernel's log, from record 0 (boot_aggregate against PCR 0-9).
    let r1 = vf.attest_now("legacy1").await.unwrap();
    verified(&r1);
    assert_eq!(r1.mode.as_deref(), Some("full_history"));
    assert_eq!(r1.checkpoint, Some(n0));

    // Records appended between rounds are picked up; rounds replay only the new ones.
    let mut last = n0;
    let history = std::fs::metadata(k.live()).unwrap().len();
    for (round, add) in [(2u64, 20u64), (3, 7), (4, 1)] {
        k.measure(add);
        let sent = a.service.lock().unwrap().metrics().evidence_bytes;
        let r = vf.attest_now("legacy1").await.unwrap();
        verified(&r);
        // Suffix evidence: only the records after the verifier's checkpoint travel, not
        // the kernel's whole list (a legacy kernel never trims it).
        let round_bytes = a.service.lock().unwrap().metrics().evidence_bytes - sent;
        assert!(
            round_bytes <= add * 400,
            "round {round}: {round_bytes} bytes for {add} records ({history} of history)"
        );
        assert_eq!(r.mode.as_deref(), Some("incremental"), "round {round}");
        assert_eq!(r.checkpoint, Some(last + add), "round {round}: {r:?}");
        assert_eq!(r.records_replayed, add, "round {round}: only the new records are replayed: {r:?}");
        last += add;
    }
    // The agent's copy is exactly the kernel's list.
    let copy = {
        let st = acfg.state_dir.join("legacy");
        let boot = std::fs::read_dir(&st).unwrap().next().unwrap().unwrap().path();
        boot.join("binary_runtime_measurements")
    };
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(k.live()).unwrap());

    // No trimming: a snapshot request takes a checkpoint on the copy (a quote whose PCR
    // 10 is the replay up to its index), stored beside the copy.
    k.measure(3);
    let (s, e) = agent_get(&pki, &a.addr.to_string(), hyper::Method::POST, "/v1/snapshots").await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["snapshot"]["checkpoint"]["index"], last + 3, "{e}");
    assert_eq!(e["snapshot"]["cut"], "stage", "{e}");
    last += 3;
    // Nothing new since: refused with the reason.
    let (s, e) = agent_get(&pki, &a.addr.to_string(), hyper::Method::POST, "/v1/snapshots").await;
    assert_eq!(s, 409, "{e}");
    assert!(e.to_string().contains("nothing measured since the last checkpoint"), "{e}");
    k.measure(4);
    let (s, _) = agent_get(&pki, &a.addr.to_string(), hyper::Method::POST, "/v1/snapshots").await;
    assert_eq!(s, 200);
    last += 4;
    assert!(copy.with_file_name("checkpoints.json").exists());
    // The verifier that holds state carries on incrementally across the checkpoints.
    k.measure(2);
    let r = vf.attest_now("legacy1").await.unwrap();
    verified(&r);
    assert_eq!(r.mode.as_deref(), Some("incremental"));
    assert_eq!(r.records_replayed, 9, "{r:?}");
    last += 2;
    // A verifier that joins late starts at the newest checkpoint: only the records
    // after it are replayed, and history is not claimed.
    let mut late = common::tofu_host("legacy-late", &a.addr.to_string());
    late.late_join = imasnap_verifier_service::model::LateJoin::MarkerTofu;
    vf.add_host(late).await.unwrap();
    let r = vf.attest_now("legacy-late").await.unwrap();
    verified(&r);
    assert_eq!(r.mode.as_deref(), Some("latest_segment"), "{r:?}");
    assert_eq!(r.records_replayed, 2, "{r:?}");
    assert_eq!(r.checkpoint, Some(last), "{r:?}");
    assert_eq!(vf.host_status("legacy-late").unwrap().history_verified, Some(false));
    vf.remove_host("legacy-late").await.unwrap();

    // Tampering: new records reach the agent's copy (its periodic tick), then a byte of the
    // copy is changed in a record the verifier has not proven yet: rejected.
    k.measure(6);
    a.service.lock().unwrap().tick(std::time::Instant::now()).unwrap();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        let len = f.metadata().unwrap().len();
        f.seek(SeekFrom::Start(len - 4)).unwrap();
        f.write_all(b"X").unwrap();
    }
    let rt = vf.attest_now("legacy1").await.unwrap();
    assert_eq!(rt.verdict, Verdict::Rejected, "{rt:?}");
    assert_eq!(rt.reason.as_deref(), Some("template_digest_mismatch"), "{rt:?}");
    assert_eq!(rt.record, Some(last + 5), "the last record, the one changed: {rt:?}");
    let st = vf.host_status("legacy1").unwrap();
    assert_eq!(st.checkpoint, Some(last), "a rejection never moves the checkpoint");

    // The restarted agent finds its copy is not the kernel's list, sets it aside and
    // copies again: the next round verifies and continues from the checkpoint.
    a.stop().await;
    a = start_agent(&acfg, k.tpm.clone()).await;
    assert!(std::fs::read_dir(copy.parent().unwrap()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("corrupt")));
    vf.update_host("legacy1", HostPatch { address: Some(a.addr.to_string()), ..Default::default() }).await.unwrap();
    k.measure(2);
    let r = vf.attest_now("legacy1").await.unwrap();
    verified(&r);
    assert_eq!(r.mode.as_deref(), Some("incremental"));
    assert_eq!(r.checkpoint, Some(last + 8));
    a.stop().await;
    v.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_file_selects_the_rfc_path() {
    // A kernel with the RFC interface has `snapshot` next to the list: the service runs the
    // snapshot agent (SecurityFs + Agent) instead of legacy mode.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
    let k = Kernel::boot(dir);
    std::fs::write(k.ima.join("snapshot"), b"").unwrap();
    let acfg = agent_cfg(dir, &pki, &k.ima);
    let a = start_agent(&acfg, k.tpm.clone()).await;
    let (s, h) = agent_get(&pki, &a.addr.to_string(), hyper::Method::GET, "/v1/health").await;
    assert_eq!(s, 200);
    assert_eq!(h["mode"], "securityfs-snapshot", "{h}");
    // Its store is the snapshot store (a boot directory with a manifest), not a copy.
    assert!(a.service.lock().unwrap().manifest().is_some());
    assert!(!acfg.state_dir.join("legacy").exists());
    a.stop().await;
    // The model back end says so too; and a securityfs back end refuses the soft TPM.
    let mut bad = acfg.clone();
    bad.tpm = "soft".into();
    assert_eq!(bad.backend, Backend::Securityfs);
    let e = agent::open_host(&bad).err().unwrap().to_string();
    assert!(e.contains("needs the TPM the kernel extends"), "{e}");
}
