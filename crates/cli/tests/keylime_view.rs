//! Keylime's own IMA code (PyPI `keylime` 7.14.3) on the FUSE view of a host that has
//! taken more than 10 snapshots: round after round, each from the entry where the last
//! one stopped, as Keylime's verifier polls, with offsets that cross snapshot boundaries.
//! The Python side (tests/keylime/keylime_rounds.py) only calls Keylime's functions.
//!
//! Needs root and /dev/fuse (fails loudly without), and IMASNAP_KEYLIME_PYTHON (set by
//! scripts/test.sh) unless IMASNAP_SKIP_KEYLIME=1.

use imasnap_agent::AgentConfig;
use imasnap_agent_server::host::{Host, HostOps, WorkloadCfg};
use imasnap_agent_server::mount::{mount_host, MountToml};
use imasnap_agent_server::service::SharedHost;
use imasnap_kernel_model::{Config as KernelConfig, Kernel};
use imasnap_log::HashAlgo;
use imasnap_tpm::SoftTpm;
use imasnap_wire::evidence::From;
use sha2::Digest;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use imasnap_test_support::keylime::python as keylime_python;

/// PCR 10 (sha1 bank) as the host's TPM quotes it now.
fn pcr10(host: &SharedHost) -> String {
    let ev = host.lock().unwrap().evidence(b"keylime-view-round", From::Latest, None).unwrap();
    let (_, _, v) = ev.header.quote.pcr_values.iter().find(|(b, p, _)| *b == HashAlgo::Sha1 && *p == 10).unwrap();
    v.to_hex()
}

fn run_rounds(py: &Path, policy: &Path, rounds: &Path) -> (bool, serde_json::Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keylime/keylime_rounds.py");
    let o = Command::new(py).arg(script).arg(policy).arg(rounds).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!("keylime_rounds.py: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    (o.status.success() && v["accepted"] == true, v)
}

#[test]
fn keylime_processes_the_view_incrementally_across_snapshots() {
    let Some(py) = keylime_python() else { return };
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: install fuse3 / load the fuse module");
    let d = tempfile::tempdir().unwrap();
    let (state, mp) = (d.path().join("state"), d.path().join("mnt"));
    std::fs::create_dir(&mp).unwrap();
    let k = Kernel::boot(KernelConfig::default(), SoftTpm::new(11)).unwrap();
    let h = Host::start(k, AgentConfig::new(&state), WorkloadCfg { seed: 11, ..Default::default() }).unwrap();
    let host: SharedHost = Arc::new(Mutex::new(Box::new(h) as Box<dyn HostOps>));
    let toml = MountToml { path: mp.clone(), allow_other: false, mode: "0440".into(), passthrough: true };
    let m = mount_host(host.clone(), &toml, None).expect("mount the view (needs /dev/fuse and root)");
    let view = mp.join("ascii_runtime_measurements");

    // 12 rounds, a snapshot between each: Keylime reads the view as its agent would send
    // it then (PCR first, then the list, which may only run ahead of the quote).
    let mut rounds = Vec::new();
    for r in 0..12u64 {
        // Files only: Keylime fails any violation (ToMToU) by its own rule, which the
        // synthetic workload produces now and then.
        for j in 0..40 + r * 7 {
            let path = format!("/usr/lib/app/{r}/{j}.so");
            let digest = sha2::Sha256::digest(path.as_bytes());
            host.lock().unwrap().measure(path.as_bytes(), &digest, None).unwrap();
        }
        let pcr = pcr10(&host);
        let copy = d.path().join(format!("round-{r}.ascii"));
        std::fs::copy(&view, &copy).unwrap();
        rounds.push(serde_json::json!({"list": copy, "pcr": pcr}));
        host.lock().unwrap().snapshot(None).unwrap().expect("a committed cut");
    }
    let snapshots = host.lock().unwrap().manifest().unwrap().snapshots.len();
    assert!(snapshots >= 12, "{snapshots} snapshots");

    // The runtime policy from the whole view (imasnap policy create, Keylime's format);
    // markers name no file, so Keylime needs them excluded.
    let policy = d.path().join("policy.json");
    let o = Command::new(env!("CARGO_BIN_EXE_imasnap"))
        .args(["policy", "create", "--ima-buf", "--keyrings", "--exclude", "^snapshot_aggregate$", "-o"])
        .arg(&policy)
        .arg("--log")
        .arg(mp.join("binary_runtime_measurements"))
        .output()
        .unwrap();
    assert!(o.status.success(), "policy create: {}", String::from_utf8_lossy(&o.stderr));
    m.unmount().unwrap();

    let rounds_file = d.path().join("rounds.json");
    std::fs::write(&rounds_file, serde_json::to_vec(&rounds).unwrap()).unwrap();
    let (ok, v) = run_rounds(&py, &policy, &rounds_file);
    assert!(ok, "Keylime rejected the view: {v:#}");
    // Incremental: every round after the first starts where the previous one stopped,
    // inside what later became a snapshot, and none starts over from 0.
    let rs = v["rounds"].as_array().unwrap();
    for w in rs.windows(2) {
        assert_eq!(w[1]["from"], w[0]["next"], "{v:#}");
        assert!(w[1]["from"].as_u64().unwrap() > 0);
    }

    // One record of a snapshot changed in the view a round read: Keylime rejects it.
    let bad = d.path().join("round-5.ascii");
    let text = std::fs::read_to_string(&bad).unwrap();
    let from = rs[5]["from"].as_u64().unwrap() as usize;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // The file digest (`sha256:<hex>`, the fourth field) of a record read in this round.
    let line = &mut lines[from + 3];
    let at = line.match_indices(' ').nth(2).unwrap().0 + 1;
    let flip = at + line[at..].find(':').unwrap() + 1;
    let c = if &line[flip..=flip] == "0" { "1" } else { "0" };
    line.replace_range(flip..=flip, c);
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let (ok, v) = run_rounds(&py, &policy, &rounds_file);
    assert!(!ok, "Keylime accepted a changed record: {v:#}");
    assert_eq!(v["rounds"][5]["accepted"], false, "{v:#}");
    assert_eq!(v["rounds"][4]["accepted"], true, "{v:#}");
}
