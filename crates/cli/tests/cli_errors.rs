//! Exit codes and messages of `imasnap log …` on bad input: 2, with the located error
//! (`record N at byte offset M`) on stderr. Verification failures are 1, success 0.

mod common;

use common::*;
use std::path::Path;

/// The ima-ng fixture cut 30 bytes into record 3 (inside its template name).
fn truncated_ima_ng(dir: &Path) -> (std::path::PathBuf, usize) {
    let bin = read(&scenario_dir("ima-ng").join("binary_runtime_measurements"));
    let recs = split_records(&bin);
    let start3: usize = recs[..3].iter().map(Vec::len).sum();
    let p = dir.join("binary_runtime_measurements");
    std::fs::write(&p, &bin[..start3 + 30]).unwrap();
    (p, start3)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pcr_args(scenario: &str) -> Vec<String> {
    let d = scenario_dir(scenario);
    vec![
        "--pcrs".into(),
        format!("sha1,{}", d.join("pcrs-sha1.txt").display()),
        "--pcrs".into(),
        format!("sha256,{}", d.join("pcrs-sha256.txt").display()),
    ]
}

#[test]
fn replay_of_a_truncated_log_exits_2_and_locates_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (log, start3) = truncated_ima_ng(dir.path());
    let o = imasnap(["log".as_ref(), "replay".as_ref(), log.as_os_str()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("record 3"), "{err}");
    assert!(err.contains(&format!("byte offset {start3}")), "{err}");
    assert!(err.contains("truncated template name"), "{err}");
    assert_eq!(err.trim(), format!("imasnap: error: record 3 at byte offset {start3}: truncated template name: need 34 bytes, only 30 left in the input"));
}

#[test]
fn every_log_command_exits_2_on_the_truncated_log() {
    let dir = tempfile::tempdir().unwrap();
    let (log, start3) = truncated_ima_ng(dir.path());
    let log = log.to_str().unwrap().to_owned();
    let mut runs: Vec<Vec<String>> = vec![
        vec!["log".into(), "show".into(), log.clone()],
        vec!["log".into(), "convert".into(), "--to".into(), "ascii".into(), log.clone()],
        vec!["log".into(), "replay".into(), "--json".into(), log.clone()],
    ];
    let mut verify = vec!["log".into(), "verify".into(), log.clone()];
    verify.extend(pcr_args("ima-ng"));
    runs.push(verify.clone());
    verify.push("--ignore-violations".into());
    runs.push(verify);
    for args in runs {
        let o = imasnap(&args);
        let err = stderr(&o);
        assert_eq!(code(&o), 2, "{args:?}: {err}");
        assert!(err.contains(&format!("record 3 at byte offset {start3}")), "{args:?}: {err}");
    }
}

#[test]
fn replay_of_an_absurd_length_exits_2_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = read(&scenario_dir("ima-ng").join("binary_runtime_measurements"));
    let recs = split_records(&bin);
    let start2: usize = recs[..2].iter().map(Vec::len).sum();
    let p = start2 + 4 + 20 + 4 + 6;
    bin[p..p + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let log = dir.path().join("binary_runtime_measurements");
    std::fs::write(&log, &bin).unwrap();
    let t0 = std::time::Instant::now();
    let o = imasnap(["log".as_ref(), "replay".as_ref(), log.as_os_str()]);
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(&format!("record 2 at byte offset {p}: absurd template data length 4294967295")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn ascii_error_names_record_offset_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = String::from_utf8(read(&scenario_dir("ima-ng").join("ascii_runtime_measurements"))).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let offset: usize = lines[..2].iter().map(|l| l.len() + 1).sum();
    let bad: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == 2 { l.replacen(' ', " zz", 1) + "\n" } else { format!("{l}\n") })
        .collect();
    let log = dir.path().join("ascii_runtime_measurements");
    std::fs::write(&log, bad).unwrap();
    let o = imasnap(["log".as_ref(), "replay".as_ref(), log.as_os_str()]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(&format!("record 2 at byte offset {offset} (line 3): non-hex text in template digest")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn verify_exit_codes_0_1_2() {
    let log = scenario_dir("violation").join("binary_runtime_measurements");
    let log = log.to_str().unwrap();
    let mut args: Vec<String> = vec!["log".into(), "verify".into(), log.into()];
    args.extend(pcr_args("violation"));
    assert_eq!(code(&imasnap(&args)), 1, "violations without --ignore-violations");
    args.push("--ignore-violations".into());
    assert_eq!(code(&imasnap(&args)), 0);
    // A PCR file that cannot be read is bad input, not a failed verification.
    let o = imasnap(["log", "verify", log, "--pcrs", "sha1,/nonexistent/pcrs.txt"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("/nonexistent/pcrs.txt"), "{}", stderr(&o));
}

#[test]
fn replay_json_reports_the_kernel_pcr10() {
    for s in SCENARIOS {
        let d = scenario_dir(s);
        let o = imasnap([
            "log".as_ref(),
            "replay".as_ref(),
            "--json".as_ref(),
            d.join("binary_runtime_measurements").as_os_str(),
        ]);
        assert_eq!(code(&o), 0, "{s}: {}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for alg in ["sha1", "sha256"] {
            let text = String::from_utf8(read(&d.join(format!("pcrs-{alg}.txt")))).unwrap();
            let want = text.lines().find_map(|l| l.strip_prefix("PCR-10: ")).unwrap().trim();
            assert_eq!(j["pcrs"]["10"][alg], want, "{s} {alg}");
        }
        assert_eq!(j["template_digest_mismatches"], serde_json::json!([]));
    }
}
