//! `imasnap policy create`: from real-kernel logs (binary and ASCII), from a snapshot bundle
//! (the stitched log), from a directory tree; every policy passes `imasnap policy check` on
//! the log it was made from, and one changed digest makes that record fail.

mod common;

use common::*;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(o: &std::process::Output) {
    assert_eq!(
        code(o),
        0,
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Replaces the first digest listed for `path` with another valid one.
fn tamper(policy: &Path, path: &str) {
    let mut v: serde_json::Value = serde_json::from_slice(&read(policy)).unwrap();
    let d = v["digests"][path][0].as_str().unwrap_or_else(|| panic!("{path} not in the policy")).to_string();
    v["digests"][path][0] = flip_hex(&d).into();
    std::fs::write(policy, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn check_json(log: &Path, policy: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["policy", "check", s(log), "--policy", s(policy), "--json"];
    args.extend_from_slice(extra);
    let o = imasnap(&args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    (code(&o), v)
}

#[test]
fn from_real_kernel_logs_then_check() {
    let tmp = tempfile::tempdir().unwrap();
    for scenario in SCENARIOS {
        for file in ["binary_runtime_measurements", "ascii_runtime_measurements"] {
            let log = scenario_dir(scenario).join(file);
            let pol = tmp.path().join(format!("{scenario}-{file}.json"));
            let o = imasnap(["policy", "create", "--log", s(&log), "--keyrings", "--ima-buf", "-o", s(&pol)]);
            ok(&o);
            let v: serde_json::Value = serde_json::from_slice(&read(&pol)).unwrap();
            assert_eq!((v["meta"]["version"].as_i64(), v["meta"]["generator"].as_i64()), (Some(1), Some(3)));
            assert_eq!(v["ima"]["log_hash_alg"], "sha1");
            assert!(v["digests"]["boot_aggregate"].is_array());
            // Violations are judged by --ignore-violations, not listed.
            let (c, r) = check_json(&log, &pol, &["--ignore-violations"]);
            assert_eq!(c, 0, "{scenario}/{file}: {r}");
            assert_eq!(r["failures"].as_array().unwrap().len(), 0);
        }
    }
    // The ima-buf record is listed only with --ima-buf.
    let log = scenario_dir("ima-buf").join("binary_runtime_measurements");
    let pol = tmp.path().join("no-buf.json");
    ok(&imasnap(["policy", "create", "--log", s(&log), "-o", s(&pol)]));
    let (c, r) = check_json(&log, &pol, &[]);
    assert_eq!(c, 1);
    assert_eq!(r["failures"][0]["path"], "kernel_version");
    // One changed digest: that record, and only it, fails.
    let pol = tmp.path().join("ima-ng-binary_runtime_measurements.json");
    let log = scenario_dir("ima-ng").join("binary_runtime_measurements");
    tamper(&pol, "/data/etc/config.json");
    let (c, r) = check_json(&log, &pol, &[]);
    assert_eq!(c, 1, "{r}");
    let f = r["failures"].as_array().unwrap();
    assert_eq!(f.len(), 1, "{r}");
    assert_eq!(
        (f[0]["path"].as_str(), f[0]["reason"].as_str()),
        (Some("/data/etc/config.json"), Some("digest-mismatch"))
    );
}

#[test]
fn from_a_snapshot_bundle_the_stitched_log() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    ok(&imasnap(["sim", "run", "-o", s(&bundle), "--events", "300", "--snapshot-every", "40"]));
    let m: serde_json::Value = serde_json::from_slice(&read(&bundle.join("manifest.json"))).unwrap();
    let snaps = m["snapshots"].as_array().unwrap().len();
    assert!(snaps >= 3, "{snaps} snapshots");
    let pol = tmp.path().join("p.json");
    let o = imasnap(["policy", "create", "--log", s(&bundle), "--keyrings", "--ima-buf", "-o", s(&pol), "--json"]);
    ok(&o);
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["format"], "imasnap-policy-create/1");
    assert_eq!(rep["stats"]["markers"].as_u64(), Some(snaps as u64), "{rep}");
    // The whole boot: every segment and the live list.
    let (c, r) = check_json(&bundle, &pol, &["--ignore-violations"]);
    assert_eq!(c, 0, "{r}");
    assert_eq!(r["records"], rep["stats"]["records"]);
    assert_eq!(r["allowed"]["snapshot-marker"].as_u64(), Some(snaps as u64));
    // A record from the first snapshot and one from the live list.
    let v: serde_json::Value = serde_json::from_slice(&read(&pol)).unwrap();
    let first_file = v["digests"].as_object().unwrap().keys().find(|k| k.starts_with('/')).unwrap().clone();
    tamper(&pol, &first_file);
    let (c, r) = check_json(&bundle, &pol, &["--ignore-violations"]);
    assert_eq!(c, 1);
    assert!(r["failures"].as_array().unwrap().iter().all(|f| f["path"] == first_file.as_str()), "{r}");
    // The agent's state directory (boots/<id>/ with the snapshot files) plus the live
    // list gives the same policy.
    let boot = tmp.path().join("state/boots/r0-0000000000000000");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::copy(bundle.join("manifest.json"), boot.join("manifest.json")).unwrap();
    for e in std::fs::read_dir(bundle.join("snapshots")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), boot.join(e.file_name())).unwrap();
    }
    let live = bundle.join("live.bin");
    let state = tmp.path().join("state");
    let o = imasnap(["policy", "create", "--log", s(&state), "--live", s(&live), "--keyrings", "--ima-buf"]);
    ok(&o);
    let from_state: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = imasnap(["policy", "create", "--log", s(&bundle), "--keyrings", "--ima-buf"]);
    let from_bundle: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(from_state["digests"], from_bundle["digests"]);
    // Without its live list a state directory is unusable input, and the error says so.
    let o = imasnap(["policy", "create", "--log", s(&state), "--live", s(&tmp.path().join("no-live"))]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--live"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn from_a_directory_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["usr/bin", "etc", "var/log", "outside"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("usr/bin/tool"), b"tool").unwrap();
    std::fs::write(root.join("etc/name with space"), b"cfg").unwrap();
    std::fs::write(root.join("var/log/x"), b"log").unwrap();
    std::fs::write(tmp.path().join("secret"), b"not in the tree").unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/link")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret"), root.join("etc/out")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("outside/dir")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(root.join("etc/fifo")).status().unwrap().success());
    let excl = tmp.path().join("excl.txt");
    std::fs::write(&excl, "# Keylime exclude list\n/var/\n").unwrap();
    let pol = tmp.path().join("p.json");
    let o = imasnap([
        "policy",
        "create",
        "--rootfs",
        s(&root),
        "--exclude-list",
        s(&excl),
        "--exclude",
        "/nothing$",
        "-o",
        s(&pol),
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&read(&pol)).unwrap();
    let names: Vec<&String> = v["digests"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["/etc/name_with_space", "/usr/bin/tool"], "symlinks, FIFOs and excluded names are left out");
    // sha256 unless said otherwise; `--algo sha1` gives 40 hex digits.
    assert_eq!(v["digests"]["/usr/bin/tool"][0].as_str().unwrap().len(), 64);
    assert_eq!(v["excludes"], serde_json::json!(["/nothing$", "/var/"]));
    let o = imasnap(["policy", "create", "--rootfs", s(&root), "--algo", "sha1", "--skip-path", "/etc"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&String> = v["digests"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["/usr/bin/tool", "/var/log/x"]);
    assert_eq!(v["digests"]["/usr/bin/tool"][0].as_str().unwrap().len(), 40);
    // Merged into a base policy, and the result is a policy `check` loads.
    let base = tmp.path().join("base.txt");
    std::fs::write(&base, format!("{}  /opt/kept\n", "ab".repeat(32))).unwrap();
    let o = imasnap(["policy", "create", "--rootfs", s(&root), "--base", s(&base)]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["digests"]["/opt/kept"].is_array() && v["digests"]["/usr/bin/tool"].is_array());
}

#[test]
fn bad_inputs_exit_2_and_name_the_file_or_record() {
    let tmp = tempfile::tempdir().unwrap();
    let o = imasnap(["policy", "create"]);
    assert_eq!(code(&o), 2);
    let missing = tmp.path().join("missing.bin");
    let o = imasnap(["policy", "create", "--log", s(&missing)]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.bin"));
    // A log cut inside its third record.
    let log = read(&scenario_dir("ima-ng").join("binary_runtime_measurements"));
    let recs = split_records(&log);
    let cut: usize = recs[..2].iter().map(|r| r.len()).sum::<usize>() + 10;
    let bad = tmp.path().join("cut.bin");
    std::fs::write(&bad, &log[..cut]).unwrap();
    let o = imasnap(["policy", "create", "--log", s(&bad)]);
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cut.bin") && err.contains("record 2"), "{err}");
    let o = imasnap(["policy", "create", "--rootfs", s(&tmp.path().join("none")), "--exclude", "(bad"]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("excludes[0]"));
}
