//! Keylime's own code (PyPI `keylime` 7.14.3, in the venv of scripts/keylime-venv.sh) loads
//! the policies `imasnap policy create` makes, and processes the real-kernel measurement
//! lists against them with `ima.process_measurement_list`, as its verifier does:
//! accepted as made, rejected after one digest is changed. The Python side
//! (tests/keylime/keylime_policy.py) only calls Keylime's functions.
//!
//! The tests fail when IMASNAP_KEYLIME_PYTHON (set by scripts/test.sh) is unset, unless
//! IMASNAP_SKIP_KEYLIME=1, the same rule as IMASNAP_SWTPM / IMASNAP_SKIP_SWTPM.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

use imasnap_test_support::keylime::python as keylime_python;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keylime/keylime_policy.py")
}

/// Runs the Keylime script; returns whether Keylime accepted, and its report.
fn keylime(py: &Path, policy: &Path, list: Option<(&Path, &str)>) -> (bool, serde_json::Value) {
    let mut c = Command::new(py);
    c.arg(script()).arg(policy);
    if let Some((l, pcr)) = list {
        c.arg("--list").arg(l).arg("--pcr").arg(pcr);
    }
    let o = c.output().expect("run the Keylime venv's python");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "Keylime script failed to run: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_eq!(o.status.code(), Some(if v["accepted"] == true { 0 } else { 1 }), "{v}");
    (v["accepted"] == true, v)
}

/// PCR 10 of the sha1 bank from a scenario's evmctl-style PCR file.
fn pcr10(scenario: &str) -> String {
    let text = String::from_utf8(read(&scenario_dir(scenario).join("pcrs-sha1.txt"))).unwrap();
    text.lines().find_map(|l| l.strip_prefix("PCR-10: ")).unwrap().trim().to_string()
}

fn create(out: &Path, args: &[&str]) {
    let mut a = vec!["policy", "create", "-o", out.to_str().unwrap()];
    a.extend_from_slice(args);
    let o = imasnap(&a);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn keylime_loads_the_policy_and_accepts_the_log_it_was_made_from() {
    let Some(py) = keylime_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The violation scenario is left out of list processing: Keylime judges violations by
    // its own rules (their zero file digest), which a policy made from logs does not list.
    for scenario in ["ima-ng", "ima-sig", "ima-buf"] {
        let dir = scenario_dir(scenario);
        let log = dir.join("binary_runtime_measurements");
        let pol = tmp.path().join(format!("{scenario}.json"));
        let cert = dir.join("signing-cert.der");
        let mut args = vec!["--log", log.to_str().unwrap(), "--keyrings", "--ima-buf"];
        if cert.exists() {
            args.extend(["--keys", cert.to_str().unwrap()]);
        }
        create(&pol, &args);
        let ascii = dir.join("ascii_runtime_measurements");
        let pcr = pcr10(scenario);
        let (accepted, v) = keylime(&py, &pol, Some((&ascii, &pcr)));
        assert!(accepted, "{scenario}: Keylime rejected the policy or the list: {v}");
        assert_eq!(v["measurement_list"]["running_hash"], pcr.to_lowercase(), "{v}");

        // One changed digest of an unsigned file: Keylime's list processing fails on it.
        let mut p: serde_json::Value = serde_json::from_slice(&read(&pol)).unwrap();
        let d = p["digests"]["/data/files/hello.txt"][0].as_str().unwrap().to_string();
        p["digests"]["/data/files/hello.txt"][0] = flip_hex(&d).into();
        let bad = tmp.path().join(format!("{scenario}-changed.json"));
        std::fs::write(&bad, serde_json::to_vec(&p).unwrap()).unwrap();
        let (accepted, v) = keylime(&py, &bad, Some((&ascii, &pcr)));
        assert!(!accepted, "{scenario}: Keylime accepted a changed digest: {v}");
        let steps = v["steps"].as_array().unwrap();
        assert!(steps[..steps.len() - 1].iter().all(|s| s["ok"] == true), "the policy itself still loads: {v}");
        // Keylime's event names the measured digest (not the path): the changed entry's.
        let events = v["measurement_list"]["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{v}");
        assert_eq!(events[0]["id"], "ima.validation.ima-ng.runtime_policy_hash");
        assert_eq!(events[0]["context"]["got"], d.as_str());
    }
}

#[test]
fn keylime_loads_policies_from_a_tree_a_bundle_and_a_base() {
    let Some(py) = keylime_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/tool"), b"tool").unwrap();
    std::fs::write(root.join("usr/bin/with space"), b"x").unwrap();
    let bundle = tmp.path().join("bundle");
    let o = imasnap(["sim", "run", "-o", bundle.to_str().unwrap(), "--events", "200", "--snapshot-every", "50"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let cert = scenario_dir("ima-sig").join("signing-cert.pem");
    let excl = tmp.path().join("excl.txt");
    std::fs::write(&excl, "/tmp/\n/var/log/.*\\.log$\n").unwrap();
    let base = tmp.path().join("base.json");
    create(&base, &["--rootfs", root.to_str().unwrap(), "--algo", "sha384"]);
    let pol = tmp.path().join("all.json");
    create(
        &pol,
        &[
            "--log",
            bundle.to_str().unwrap(),
            "--keyrings",
            "--ima-buf",
            "--ignored-keyrings",
            ".builtin_trusted_keys",
            "--exclude-list",
            excl.to_str().unwrap(),
            "--keys",
            cert.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
        ],
    );
    let (accepted, v) = keylime(&py, &pol, None);
    assert!(accepted, "Keylime rejected the policy: {v}");
    let p: serde_json::Value = serde_json::from_slice(&read(&pol)).unwrap();
    assert_eq!(p["digests"]["/usr/bin/tool"][0].as_str().unwrap().len(), 96, "sha384 from the base");
    assert!(p["verification-keys"].as_str().unwrap().contains("pubkeys"));

    // The check is not vacuous: an `algo:` prefixed digest (an imasnap extension) is
    // refused by Keylime's schema.
    let mut p = p;
    p["digests"]["/usr/bin/tool"][0] = format!("sha384:{}", p["digests"]["/usr/bin/tool"][0].as_str().unwrap()).into();
    let bad = tmp.path().join("prefixed.json");
    std::fs::write(&bad, serde_json::to_vec(&p).unwrap()).unwrap();
    let (accepted, v) = keylime(&py, &bad, None);
    assert!(!accepted, "Keylime accepted a prefixed digest: {v}");
}

#[test]
fn keylime_processes_the_stitched_log_of_a_bundle_against_its_policy() {
    let Some(py) = keylime_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let o = imasnap(["sim", "run", "-o", bundle.to_str().unwrap(), "--events", "300", "--snapshot-every", "40"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&read(&bundle.join("manifest.json"))).unwrap();
    assert!(m["snapshots"].as_array().unwrap().len() >= 3);
    // The whole boot as Keylime reads it: the segments in order, then the live list, in
    // ASCII. Each segment starts where the previous one ended, so they concatenate.
    let mut bin = Vec::new();
    for s in m["snapshots"].as_array().unwrap() {
        bin.extend(read(&bundle.join("snapshots").join(s["file"].as_str().unwrap())));
    }
    bin.extend(read(&bundle.join("live.bin")));
    let all = tmp.path().join("binary_runtime_measurements");
    std::fs::write(&all, &bin).unwrap();
    let o = imasnap(["log", "show", all.to_str().unwrap()]);
    assert_eq!(code(&o), 0);
    let ascii = tmp.path().join("ascii_runtime_measurements");
    std::fs::write(&ascii, &o.stdout).unwrap();
    let q: serde_json::Value = serde_json::from_slice(&read(&bundle.join("quote.json"))).unwrap();
    let pcr = q["pcr_values"].as_array().unwrap().iter().find(|v| v["pcr"] == 10 && v["bank"] == "sha1").unwrap()
        ["value"]
        .as_str()
        .unwrap()
        .to_string();
    // Keylime judges the snapshot_aggregate markers as ima-buf records: a Keylime operator
    // excludes them (imasnap verify proves them).
    let pol = tmp.path().join("p.json");
    create(&pol, &["--log", bundle.to_str().unwrap(), "--keyrings", "--ima-buf", "--exclude", "^snapshot_aggregate$"]);
    let (_, v) = keylime(&py, &pol, Some((&ascii, &pcr)));
    assert_eq!(v["measurement_list"]["running_hash"], pcr.as_str(), "Keylime's replay reaches the quoted PCR 10");
    // Keylime's only objections are the workload's violations (its `tomtou` events).
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["measurement_list"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let violations = read(&ascii)
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"10 0000000000000000000000000000000000000000 "))
        .count();
    assert!(violations > 0);
    assert_eq!(ids(&v), vec!["ima.validation.tomtou".to_string(); violations], "{v}");
    // One changed digest adds Keylime's runtime_policy_hash failure.
    let mut p: serde_json::Value = serde_json::from_slice(&read(&pol)).unwrap();
    let path = p["digests"].as_object().unwrap().keys().find(|k| k.starts_with('/')).unwrap().clone();
    let d = p["digests"][&path][0].as_str().unwrap().to_string();
    p["digests"][&path][0] = flip_hex(&d).into();
    std::fs::write(&pol, serde_json::to_vec(&p).unwrap()).unwrap();
    let (_, v) = keylime(&py, &pol, Some((&ascii, &pcr)));
    assert!(ids(&v).iter().any(|i| i == "ima.validation.ima-ng.runtime_policy_hash"), "{v}");
}
