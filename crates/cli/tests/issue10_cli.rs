//! The CLI findings of issue 10, one test per finding: docs and behaviour agree (3),
//! FIFOs and oversized files are refused with consistent exit codes (6), `verify` needs a
//! trusted AK and names it (7), an empty log is bad input everywhere (8), and every
//! `--json` output names its format (12).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `imasnap` but kills it after `secs`: a command that blocks on a FIFO fails the
/// test instead of hanging it.
fn imasnap_within(args: &[&str], secs: u64) -> Output {
    let mut child = Command::new(imasnap_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("imasnap {args:?} still running after {secs} s (blocked on a FIFO?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {}", p.display());
}

/// A small bundle from `sim run` (software TPM, seed 1) and that TPM's AK as a file.
fn sim_bundle(t: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = t.join(name);
    let o = imasnap(["sim", "run", "-o", dir.to_str().unwrap(), "--events", "1200", "--snapshot-every", "400"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ak = t.join("ak-seed1.pub");
    if !ak.exists() {
        let o = imasnap(["tpm", "ak", "--tpm", "soft:seed=1", "-o", ak.to_str().unwrap()]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    (dir, ak)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap()
}

// ---- finding 3: docs and behaviour agree ------------------------------------------------

#[test]
fn finding_3_sim_run_counts_events_and_records_flag_gives_a_hint() {
    let t = tempfile::tempdir().unwrap();
    let o = imasnap(["sim", "run", "-o", s(&t.path().join("b")), "--records", "500"]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("--records was renamed --events") && err.contains("--events 500"), "{err}");
    assert!(!t.path().join("b").exists(), "nothing written");
    let o = imasnap(["sim", "run", "-o", s(&t.path().join("b")), "--events", "500", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["report"]["events"], 500, "{v}");
    let help = stdout(&imasnap(["sim", "run", "--help"]));
    assert!(help.contains("--events") && !help.contains("--records"), "{help}");
}

#[test]
fn finding_3_errors_do_not_repeat_themselves() {
    let t = tempfile::tempdir().unwrap();
    let (dir, _) = sim_bundle(t.path(), "b2");
    let o = imasnap(["sim", "run", "-o", s(&dir), "--events", "100"]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert_eq!(err.matches("already exists").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn finding_3_tpm_errors_are_one_readable_line() {
    // Nothing listens on port 1: libtss2 used to print its own WARNING/ERROR lines, then
    // "response code not recognized".
    let o = imasnap_within(&["tpm", "ak", "--tpm", "swtpm:host=127.0.0.1,port=1"], 30);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("response code not recognized"), "{err}");
    assert!(err.contains("TCTI") && err.contains("0x000a000a"), "{err}");
}

#[test]
fn finding_3_readme_and_help_list_every_command_and_flag() {
    let r = readme();
    let verify_row = r.lines().find(|l| l.starts_with("| `imasnap verify DIR")).expect("README verify row");
    for flag in ["--ak", "--nonce", "--trust-bundle-ak", "--from-state"] {
        assert!(verify_row.contains(flag), "README verify row lacks {flag}: {verify_row}");
    }
    assert!(r.contains("`imasnap policy convert"), "README lists policy convert");
    let synth_row = r.lines().find(|l| l.starts_with("| `imasnap log synth")).unwrap();
    assert!(synth_row.contains("--ignore-violations"), "{synth_row}");
    let help = stdout(&imasnap(["--help"])).split_whitespace().collect::<Vec<_>>().join(" ");
    let at = help.find("verifier The verifier service").unwrap();
    let entry = &help[at..at + help[at..].find(" demo ").unwrap()];
    assert!(entry.contains("verdicts") && entry.contains("dev-pki"), "{entry}");
    for sub in ["verdicts", "dev-pki", "update", "remove"] {
        let h = stdout(&imasnap(["verifier", "--help"])) + &stdout(&imasnap(["verifier", "host", "--help"]));
        assert!(h.contains(sub), "{sub} missing from verifier help");
    }
}

#[test]
fn finding_3_log_synth_output_verifies_as_the_readme_says() {
    let t = tempfile::tempdir().unwrap();
    let o = imasnap(["log", "synth", "--records", "3000", "-o", s(t.path())]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // synth tells the user the exact command (with --ignore-violations); run it.
    let err = stderr(&o);
    let cmd = err.lines().find_map(|l| l.strip_prefix("verify with: imasnap ")).expect("verify hint");
    assert!(cmd.contains("--ignore-violations"), "{cmd}");
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let o = imasnap(&args);
    assert_eq!(code(&o), 0, "{cmd}: {}{}", stdout(&o), stderr(&o));
    let without: Vec<&str> = args.iter().copied().filter(|a| *a != "--ignore-violations").collect();
    assert_eq!(code(&imasnap(&without)), 1, "violations fail without the flag");
}

#[test]
fn finding_3_host_flags_name_flags_not_json_fields() {
    // Checked before any connection: no verifier needed.
    let o = imasnap(["verifier", "host", "add", "web1", "--address", "127.0.0.1:8891"]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("--ak") && err.contains("--tofu"), "{err}");
    assert!(!err.contains("tofu: true"), "{err}");
    let o = imasnap(["verifier", "host", "add", "web1", "--address", "127.0.0.1:99999", "--tofu"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--address"), "{}", stderr(&o));
    let o = imasnap(["verifier", "host", "update", "web1", "--poll-interval-ms", "5"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--poll-interval-ms"), "{}", stderr(&o));
    let help = stdout(&imasnap(["verifier", "host", "update", "--help"]));
    for f in ["--tofu", "--agent-cert <FILE>", "--server-name <NAME>", "--no-policy"] {
        assert!(help.contains(f), "host update --help lacks {f}: {help}");
    }
}

#[test]
fn finding_3_output_paths_are_spelled_dash_o_out_and_tpm_defaults_are_shown() {
    for cmd in [
        &["log", "convert"][..],
        &["log", "synth"],
        &["sim", "run"],
        &["agent", "bundle"],
        &["tpm", "ak"],
        &["verifier", "dev-pki"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let h = stdout(&imasnap(&args));
        assert!(h.contains("-o, --out <"), "{cmd:?}: {h}");
        assert!(!h.contains("--output"), "{cmd:?}: {h}");
    }
    for cmd in [&["sim", "run"][..], &["agent", "snapshot"], &["agent", "bundle"], &["tpm", "ak"]] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let h = stdout(&imasnap(&args));
        let at = h.find("--tpm <").unwrap_or_else(|| panic!("{cmd:?} has --tpm"));
        let rest = &h[at..];
        let next = rest[2..].find("\n  -").map_or(rest.len(), |i| i + 2);
        assert!(rest[..next].contains("[default: "), "{cmd:?}: --tpm default not shown: {}", &rest[..next]);
    }
}

// ---- finding 6: FIFOs, size limits, exit codes ---------------------------------------------

#[test]
fn finding_6_fifo_log_replay_refused() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("binary_runtime_measurements");
    mkfifo(&fifo);
    for cmd in ["replay", "show"] {
        let o = imasnap_within(&["log", cmd, s(&fifo)], 10);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(s(&fifo)) && err.contains("FIFO"), "{err}");
    }
    let o = imasnap_within(&["log", "replay", s(t.path())], 10);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("a directory"), "{}", stderr(&o));
}

#[test]
fn finding_6_fifo_bundle_files_refused() {
    let t = tempfile::tempdir().unwrap();
    let (good, ak) = sim_bundle(t.path(), "good");
    for name in ["live.bin", "manifest.json", "bundle.json", "quote.json", "ak.pub", "snapshots/000001.snap"] {
        let bad = t.path().join(name.replace('/', "_"));
        copy_bundle(&good, &bad);
        let f = bad.join(name);
        mkfifo(&f);
        for extra in [&["--ak", s(&ak)][..], &["--trust-bundle-ak"]] {
            let mut args = vec!["verify", s(&bad)];
            args.extend_from_slice(extra);
            let o = imasnap_within(&args, 20);
            assert_eq!(code(&o), 2, "{name} {extra:?}: {}{}", stdout(&o), stderr(&o));
            let out = stdout(&o) + &stderr(&o);
            assert!(out.contains(s(&f)) && out.contains("FIFO"), "{name}: {out}");
        }
    }
    // --ak and --from-state as FIFOs.
    let fifo = t.path().join("ak-fifo");
    mkfifo(&fifo);
    for flag in ["--ak", "--from-state"] {
        let o = imasnap_within(&["verify", s(&good), flag, s(&fifo)], 10);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains(s(&fifo)) && stderr(&o).contains("FIFO"), "{}", stderr(&o));
    }
}

#[test]
fn finding_6_oversized_small_files_refused_with_their_limit() {
    let t = tempfile::tempdir().unwrap();
    let (good, ak) = sim_bundle(t.path(), "good");
    let bad = t.path().join("big-ak");
    copy_bundle(&good, &bad);
    // 50 MB, sparse: the old code read it whole.
    std::fs::File::create(bad.join("ak.pub")).unwrap().set_len(50 << 20).unwrap();
    let o = imasnap_within(&["verify", s(&bad), "--ak", s(&ak), "--json"], 20);
    assert_eq!(code(&o), 2);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = v["detail"].as_str().unwrap();
    assert!(d.contains("ak.pub") && d.contains("limit of 65536 bytes"), "{d}");
    let big = t.path().join("big.pem");
    std::fs::File::create(&big).unwrap().set_len(50 << 20).unwrap();
    let o = imasnap(["verify", s(&good), "--ak", s(&big)]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains(s(&big)) && stderr(&o).contains("limit of 65536 bytes"), "{}", stderr(&o));
    let o = imasnap(["log", "verify", s(&good.join("live.bin")), "--pcrs", s(&big)]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains(s(&big)) && stderr(&o).contains("limit of"), "{}", stderr(&o));
}

#[test]
fn finding_6_malformed_live_bin_and_manifest_are_the_same_class() {
    let t = tempfile::tempdir().unwrap();
    let (good, ak) = sim_bundle(t.path(), "good");
    let live = t.path().join("live");
    copy_bundle(&good, &live);
    let bytes = std::fs::read(live.join("live.bin")).unwrap();
    std::fs::write(live.join("live.bin"), &bytes[..bytes.len() - 7]).unwrap();
    let manifest = t.path().join("manifest");
    copy_bundle(&good, &manifest);
    std::fs::write(manifest.join("manifest.json"), b"{ not json").unwrap();
    for (dir, file) in [(&live, "live"), (&manifest, "manifest")] {
        let (c, v) = verify_json(dir, &["--ak", s(&ak)]);
        assert_eq!(c, 2, "{file}: {v}");
        assert_eq!(v["verdict"], "rejected");
        assert_eq!(v["input_error"], true, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(file), "{v}");
    }
    // A well-formed but wrong bundle stays 1.
    let (c, v) = verify_json(&good, &["--ak", s(&ak), "--nonce", "00"]);
    assert_eq!((c, v["input_error"].as_bool()), (1, Some(false)), "{v}");
}

// ---- finding 7: verify needs a trusted AK ---------------------------------------------------

#[test]
fn finding_7_verify_requires_a_trusted_ak_and_names_it() {
    let t = tempfile::tempdir().unwrap();
    let (good, ak) = sim_bundle(t.path(), "good");
    // No trust source: refused before reading the bundle.
    let o = imasnap(["verify", s(&good)]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert!(err.contains("--ak") && err.contains("--trust-bundle-ak"), "{err}");
    assert!(o.stdout.is_empty());

    // A "forged" bundle: made on another software TPM. Its own AK verifies it, the
    // enrolled one does not.
    let forged = t.path().join("forged");
    let o = imasnap(["sim", "run", "-o", s(&forged), "--events", "1200", "--seed", "7"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (c, v) = verify_json(&forged, &["--ak", s(&ak)]);
    assert_eq!(c, 1, "{v}");
    assert_eq!(v["ak_trust"], "enrolled");
    let (c, v) = verify_json(&forged, &["--trust-bundle-ak"]);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["ak_trust"], "bundle_untrusted");
    assert!(v["ak_source"].as_str().unwrap().contains("untrusted"), "{v}");

    // Text verdicts name the source too, verified or rejected.
    let o = imasnap(["verify", s(&good), "--ak", s(&ak)]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains(&format!("ak: enrolled {}", s(&ak))), "{}", stdout(&o));
    let o = imasnap(["verify", s(&forged), "--ak", s(&ak)]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("REJECTED") && stdout(&o).contains("ak: enrolled"), "{}", stdout(&o));
    let o = imasnap(["verify", s(&forged), "--trust-bundle-ak"]);
    assert!(stdout(&o).contains("ak: bundle (untrusted, --trust-bundle-ak)"), "{}", stdout(&o));

    // A state saved from an untrusted run stays untrusted.
    let st = t.path().join("state.json");
    let (c, _) = verify_json(&forged, &["--trust-bundle-ak", "--save-state", s(&st)]);
    assert_eq!(c, 0);
    let (c, v) = verify_json(&forged, &["--from-state", s(&st)]);
    assert_eq!(c, 0, "{v}");
    assert_eq!((v["ak_trust"].as_str(), v["ak_first_trust"].as_str()), (Some("saved_state"), Some("bundle_untrusted")));
    let o = imasnap(["verify", s(&good), "--trust-bundle-ak", "--ak", s(&ak)]);
    assert_eq!(code(&o), 2, "--trust-bundle-ak conflicts with --ak");
}

// ---- finding 8: an empty log -------------------------------------------------------------------

#[test]
fn finding_8_empty_log_is_bad_input_for_every_command() {
    let t = tempfile::tempdir().unwrap();
    let empty = t.path().join("binary_runtime_measurements");
    std::fs::write(&empty, b"").unwrap();
    let pcrs = scenario_dir("ima-ng").join("pcrs-sha1.txt");
    let runs: Vec<Vec<&str>> = vec![
        vec!["log", "show", s(&empty)],
        vec!["log", "convert", "--to", "binary", s(&empty)],
        vec!["log", "replay", s(&empty)],
        vec!["log", "replay", "--json", s(&empty)],
        vec!["log", "verify", s(&empty), "--pcrs", s(&pcrs)],
    ];
    for args in runs {
        let o = imasnap(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stdout(&o));
        assert!(stderr(&o).contains(s(&empty)) && stderr(&o).contains("empty log"), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
    }
}

// ---- finding 12: every --json output names its format ---------------------------------------

#[test]
fn finding_12_every_json_output_has_a_format_field() {
    let t = tempfile::tempdir().unwrap();
    let log = scenario_dir("ima-ng").join("binary_runtime_measurements");
    let pcrs = format!("sha1,{}", s(&scenario_dir("ima-ng").join("pcrs-sha1.txt")));
    let b = t.path().join("b");
    // A flat allowlist that allows nothing: the check fails (1) but still reports.
    let allow = t.path().join("allowlist.txt");
    std::fs::write(&allow, format!("{}  /nothing\n", "ab".repeat(32))).unwrap();
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("imasnap-log-replay/1", vec!["log".into(), "replay".into(), "--json".into(), s(&log).into()]),
        (
            "imasnap-log-verify/1",
            vec!["log".into(), "verify".into(), "--json".into(), s(&log).into(), "--pcrs".into(), pcrs],
        ),
        ("imasnap-sim-run/1", ["sim", "run", "--json", "-o", s(&b), "--events", "300"].map(String::from).to_vec()),
        ("imasnap-verify/1", ["verify", "--json", s(&b), "--trust-bundle-ak"].map(String::from).to_vec()),
        ("imasnap-tpm-ak/1", ["tpm", "ak", "--json", "--tpm", "soft:seed=1"].map(String::from).to_vec()),
        (
            "imasnap-policy-check/1",
            vec!["policy".into(), "check".into(), "--json".into(), s(&log).into(), "--policy".into(), s(&allow).into()],
        ),
        ("imasnap-demo/1", ["demo", "--json", "--rounds", "1", "--events-per-round", "300"].map(String::from).to_vec()),
    ];
    for (format, args) in runs {
        let o = imasnap(&args);
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}{}", stdout(&o), stderr(&o)));
        assert_eq!(v["format"], format, "{args:?}");
    }
}
