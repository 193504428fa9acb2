//! A legacy (stock-kernel) host's evidence bundle with checkpoints on the agent's copy,
//! for the latest-segment figures of scripts/bench-checkpoints.sh.
//!
//! The kernel model measures RECORDS files into its list; the list is written to a
//! securityfs-like directory as a stock kernel would show it (never trimmed), and the
//! legacy back end copies it and takes a checkpoint every EVERY records, quoting a fork
//! of the model's TPM (the TPM that kernel extends). Then a bundle is written for
//! `imasnap verify --trust-bundle-ak`.
//!
//! cargo run --release -p imasnap-agent-server --features sim --example legacy_bundle -- OUT 1000000 7000

use imasnap_agent::{attest, AgentConfig, Evidence, SecurityFs};
use imasnap_agent_server::legacy::LegacyHost;
use imasnap_kernel_model::{Config, Kernel};
use imasnap_log::HashAlgo;
use imasnap_tpm::SoftTpm;
use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, records, every] = args.as_slice() else {
        return Err("usage: legacy_bundle OUT RECORDS EVERY".into());
    };
    let out = PathBuf::from(out);
    let records: u64 = records.parse().map_err(|e| format!("RECORDS: {e}"))?;
    let every: u64 = every.parse().map_err(|e| format!("EVERY: {e}"))?;
    let d = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ima = d.path().join("ima");
    std::fs::create_dir_all(&ima).map_err(|e| e.to_string())?;
    let live = ima.join("binary_runtime_measurements");
    let mut k = Kernel::boot(Config::default(), SoftTpm::new(7)).map_err(|e| e.to_string())?;
    let head = k.binary_measurements(HashAlgo::Sha1);
    std::fs::write(&live, &head).map_err(|e| e.to_string())?;
    let mut written = head.len();
    let cfg = AgentConfig::new(d.path().join("state"));
    let mut h = LegacyHost::open(SecurityFs::new(&ima, k.tpm().clone(), 10), &cfg).map_err(|e| e.to_string())?;
    let mut done = 0;
    while done < records {
        let n = every.min(records - done);
        for i in done..done + n {
            let digest = HashAlgo::Sha256.hash(&[&i.to_le_bytes()]);
            k.measure_file(format!("/usr/lib/app/file{i}").as_bytes(), digest.as_bytes()).map_err(|e| e.to_string())?;
        }
        done += n;
        let list = k.binary_measurements(HashAlgo::Sha1);
        let mut f = std::fs::OpenOptions::new().append(true).open(&live).map_err(|e| e.to_string())?;
        f.write_all(&list[written..]).map_err(|e| e.to_string())?;
        written = list.len();
        *h.securityfs().tpm_mut() = k.tpm().clone();
        if done < records {
            h.checkpoint_now().map_err(|e| e.to_string())?;
        }
    }
    let nonce = b"legacy-bundle-nonce";
    let (quote, ak) = attest(h.securityfs().tpm_mut(), 10, nonce).map_err(|e| e.to_string())?;
    let info = h.write_bundle(&out, &Evidence { quote: &quote, nonce, ak: &ak }).map_err(|e| e.to_string())?;
    println!(
        "{}: {} records, {} checkpoints on the copy, live from record {}",
        info.dir.display(),
        h.copied().0,
        info.snapshots,
        info.index.live_first_index
    );
    Ok(())
}
