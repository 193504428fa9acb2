//! Same logs, same verdicts as `evmctl ima_measurement` (ima-evm-utils 1.4).
//!
//! For every real-kernel scenario and for a 2000-record synthetic log, `imasnap log verify`
//! and `evmctl ima_measurement` are run on the same log with the same `--pcrs` files, with
//! and without `--ignore-violations`, on the original and on tampered copies. Only exit
//! codes are compared (evmctl prints `Failed to stat` noise for guest paths).
//!
//! Every case states the verdict expected from each tool. Where they differ, the case is
//! classed, and each class is explained in docs/CROSSCHECK.md:
//! - `parse-error`: a truncated log. imasnap exits 2 (bad input), evmctl 1: both non-zero.
//! - `tail-checked`: imasnap reads and checks the whole log; evmctl stops reading at the
//!   first record after which every bank matches, so it never sees a bad record there.
//! - `boot-aggregate`: imasnap also checks boot_aggregate against PCR 0-9 of its bank;
//!   `evmctl ima_measurement` does not look at PCR 0-9.
//! - `evmctl-last-bank`: evmctl 1.4 decides on the last bank it compared (sha256) only, so
//!   it passes a wrong sha1 PCR-10 when sha256 matches. imasnap requires every bank.
//! - `bank-skew`: imasnap needs one prefix of the log that matches every bank at once (as
//!   a TPM quote guarantees); evmctl lets each bank match after its own record.
//!
//! If evmctl is not installed the tests fail, unless IMASNAP_SKIP_EVMCTL=1. With
//! IMASNAP_CROSSCHECK_REPORT=DIR each scenario's table is also written to DIR.

mod common;

use common::*;
use imasnap_log::digest::boot_aggregate;
use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::{pcrfile, Endian, ExtendMode, HashAlgo, Record, ReplayOptions, Replayer};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    Pass,
    Fail,
    /// imasnap exit 2: the input could not be read.
    Bad,
}
use V::*;

impl V {
    fn ours(code: i32) -> Self {
        match code {
            0 => Pass,
            1 => Fail,
            2 => Bad,
            c => panic!("imasnap exit code {c}"),
        }
    }
    fn evmctl(code: i32) -> Self {
        if code == 0 {
            Pass
        } else {
            Fail
        }
    }
    fn short(self) -> &'static str {
        match self {
            Pass => "pass",
            Fail => "FAIL",
            Bad => "BAD(2)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Agree,
    ParseError,
    TailChecked,
    BootAggregate,
    EvmctlLastBank,
    BankSkew,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Agree => "agree",
            Class::ParseError => "parse-error",
            Class::TailChecked => "tail-checked",
            Class::BootAggregate => "boot-aggregate",
            Class::EvmctlLastBank => "evmctl-last-bank",
            Class::BankSkew => "bank-skew",
        }
    }
}

/// Verdicts without and with `--ignore-violations`.
type Pair = [V; 2];
const FAIL: Pair = [Fail, Fail];
const BAD: Pair = [Bad, Bad];

struct Case {
    name: String,
    log: Vec<u8>,
    /// PCR file contents; `None` leaves the bank out of `--pcrs`.
    sha1: Option<String>,
    sha256: Option<String>,
    ours: Pair,
    evmctl: Pair,
    class: Class,
}

/// The evmctl version, or `None` when the tests are to be skipped.
fn evmctl_version() -> Option<String> {
    match Command::new("evmctl").arg("--version").output() {
        Ok(o) => Some(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Err(e) if std::env::var("IMASNAP_SKIP_EVMCTL").as_deref() == Ok("1") => {
            eprintln!("evmctl not runnable ({e}); skipped because IMASNAP_SKIP_EVMCTL=1");
            None
        }
        Err(e) => panic!(
            "evmctl (ima-evm-utils 1.4) is required for the cross-check but could not be run: {e}. \
             Install it (Debian: apt-get install ima-evm-utils) or set IMASNAP_SKIP_EVMCTL=1 to skip."
        ),
    }
}

struct Scenario {
    name: String,
    log: Vec<u8>,
    sha1: String,
    sha256: String,
    /// The original log's verdict, which both tools must give.
    base: Pair,
    /// Bank whose PCR 0-9 (SHA1: 0-7) the boot_aggregate record covers.
    boot_aggregate_bank: HashAlgo,
    /// Records use the legacy `ima` template (evmctl refuses to mix it with others).
    legacy: bool,
}

fn real_scenario(s: &str) -> Scenario {
    let d = scenario_dir(s);
    let base = if s == "violation" { [Fail, Pass] } else { [Pass, Pass] };
    Scenario {
        name: s.to_owned(),
        log: read(&d.join("binary_runtime_measurements")),
        sha1: String::from_utf8(read(&d.join("pcrs-sha1.txt"))).unwrap(),
        sha256: String::from_utf8(read(&d.join("pcrs-sha256.txt"))).unwrap(),
        base,
        boot_aggregate_bank: HashAlgo::Sha256,
        legacy: false,
    }
}

fn synthetic_scenario(dir: &Path) -> Scenario {
    let o = Command::new(imasnap_bin()).args(["log", "synth", "--records", "2000", "-o"]).arg(dir).output().unwrap();
    assert_eq!(code(&o), 0, "synth: {}", String::from_utf8_lossy(&o.stderr));
    let log = read(&dir.join("binary_runtime_measurements"));
    let violations = split_records(&log).iter().filter(|r| is_violation(r)).count();
    assert!(violations > 0, "the synthetic log has violations");
    Scenario {
        name: "synth-2000".into(),
        log,
        sha1: String::from_utf8(read(&dir.join("pcrs-sha1.txt"))).unwrap(),
        sha256: String::from_utf8(read(&dir.join("pcrs-sha256.txt"))).unwrap(),
        base: [Fail, Pass],
        boot_aggregate_bank: HashAlgo::Sha256,
        legacy: false,
    }
}

/// PCR-10 of `bank` after replaying `records` (5.8+ semantics), as hex.
fn replayed_pcr10(records: &[Record], bank: HashAlgo) -> String {
    let mut rp = Replayer::new(ReplayOptions::new(&[bank]));
    for r in records {
        rp.push(r).unwrap();
    }
    rp.finish().state().get(bank, 10).unwrap().to_hex()
}

/// A log in the legacy `ima` template, built from the ima-ng fixture: a SHA1 boot_aggregate
/// over PCR 0-7 of the fixture's sha1 bank, then each file with the first 20 bytes of its
/// digest. PCR-10 of both banks is replayed by imasnap; evmctl recomputes it independently
/// (`ima` template digest: H(d || name zero-padded to 256 bytes)).
fn legacy_scenario() -> Scenario {
    let ng = real_scenario("ima-ng");
    let platform: Vec<_> = pcrfile::parse(HashAlgo::Sha1, &ng.sha1).unwrap().into_values().collect();
    let agg = boot_aggregate(HashAlgo::Sha1, &platform, false);
    let ima = builtin("ima");
    let mut recs = vec![build(&ima, &[agg.as_bytes(), b"boot_aggregate"], HashAlgo::Sha1, 10, false, Endian::Little)];
    for r in parse_records(&ng.log).iter().skip(1) {
        let f = r.fields(Endian::Little).unwrap();
        let digest = &f[0][f[0].len() - 32..][..20];
        let name = r.name(Endian::Little).unwrap();
        recs.push(build(&ima, &[digest, name.as_bytes()], HashAlgo::Sha1, 10, false, Endian::Little));
    }
    let mut log = Vec::new();
    for r in &recs {
        r.encode(Endian::Little, &mut log);
    }
    let sha1 = replayed_pcr10(&recs, HashAlgo::Sha1);
    let sha256 = replayed_pcr10(&recs, HashAlgo::Sha256);
    Scenario {
        name: "ima-legacy".into(),
        log,
        sha1: edit_pcr(&ng.sha1, 10, |_| sha1.clone()),
        sha256: edit_pcr(&ng.sha256, 10, |_| sha256.clone()),
        base: [Pass, Pass],
        boot_aggregate_bank: HashAlgo::Sha1,
        legacy: true,
    }
}

/// A new, well-formed record for a file measured after the PCRs were read, in the
/// scenario's template family.
fn new_record(legacy: bool, violation: bool) -> Vec<u8> {
    let name = b"/data/measured-after-the-quote";
    let r = if legacy {
        let d = if violation { [0; 20] } else { [0x5a; 20] };
        build(&builtin("ima"), &[&d, name], HashAlgo::Sha1, 10, violation, Endian::Little)
    } else {
        let d = if violation { [0; 32] } else { [0x5a; 32] };
        build(&builtin("ima-ng"), &[&d_ng("sha256", &d), &n_ng(name)], HashAlgo::Sha1, 10, violation, Endian::Little)
    };
    let mut out = Vec::new();
    r.encode(Endian::Little, &mut out);
    out
}

/// The sha256 PCR file a pre-5.8 kernel would have produced: PCR-10 replayed with the
/// zero-padded SHA1 template digests (and 0xff x 20 + zeros for violations).
fn padded_sha256_pcrs(sc: &Scenario) -> String {
    let mut opts = ReplayOptions::new(&[HashAlgo::Sha256]);
    opts.modes = vec![ExtendMode::PaddedSha1];
    let mut rp = Replayer::new(opts);
    for r in parse_records(&sc.log) {
        rp.push(&r).unwrap();
    }
    let v = rp.finish().state().get(HashAlgo::Sha256, 10).unwrap().to_hex();
    edit_pcr(&sc.sha256, 10, |_| v.clone())
}

fn cases(sc: &Scenario) -> Vec<Case> {
    let recs = split_records(&sc.log);
    let n = recs.len();
    let base = sc.base;
    let join = |rs: &[Vec<u8>]| rs.concat();
    let nonviol: Vec<usize> = (0..n).filter(|&i| !is_violation(&recs[i])).collect();
    let viol: Vec<usize> = (0..n).filter(|&i| is_violation(&recs[i])).collect();
    let mid = nonviol[nonviol.len() / 2];
    let last_nv = *nonviol.last().unwrap();
    let mut out = Vec::new();
    let mut add = |name: String, log: Vec<u8>, sha1: Option<String>, sha256: Option<String>, ours, evmctl, class| {
        out.push(Case { name, log, sha1, sha256, ours, evmctl, class })
    };
    let both = |s: &Scenario| (Some(s.sha1.clone()), Some(s.sha256.clone()));
    let (p1, p256) = both(sc);

    add("original".into(), sc.log.clone(), p1.clone(), p256.clone(), base, base, Class::Agree);
    add("original, sha1 bank only".into(), sc.log.clone(), p1.clone(), None, base, base, Class::Agree);
    add("original, sha256 bank only".into(), sc.log.clone(), None, p256.clone(), base, base, Class::Agree);
    add(
        "sha256 PCR file of a pre-5.8 kernel (padded SHA1 extends)".into(),
        sc.log.clone(),
        p1.clone(),
        Some(padded_sha256_pcrs(sc)),
        base,
        base,
        Class::Agree,
    );

    // (a) one byte of a file digest inside the template data flipped.
    for i in [0, mid, last_nv] {
        let mut rs = recs.clone();
        let o = if sc.legacy { 28 + 3 } else { file_digest_offset(&rs[i]) };
        rs[i][o] ^= 0x01;
        add(
            format!("(a) file digest byte flipped in record {i}"),
            join(&rs),
            p1.clone(),
            p256.clone(),
            FAIL,
            FAIL,
            Class::Agree,
        );
    }
    // The digest fields of a violation are covered by nothing (its template digest is zero
    // and never recomputed): neither tool can see the change.
    if let Some(&i) = viol.first() {
        let mut rs = recs.clone();
        let o = file_digest_offset(&rs[i]);
        rs[i][o] ^= 0x01;
        add(
            format!("(a) file digest byte flipped in violation record {i}"),
            join(&rs),
            p1.clone(),
            p256.clone(),
            base,
            base,
            Class::Agree,
        );
    }

    // (b) one record deleted.
    let mut del = vec![0, mid, n - 1];
    del.extend(viol.first());
    for i in del {
        let mut rs = recs.clone();
        rs.remove(i);
        add(format!("(b) record {i} deleted"), join(&rs), p1.clone(), p256.clone(), FAIL, FAIL, Class::Agree);
    }

    // (c) two records swapped.
    for i in [0, mid, n - 2] {
        let mut rs = recs.clone();
        rs.swap(i, i + 1);
        add(
            format!("(c) records {i} and {} swapped", i + 1),
            join(&rs),
            p1.clone(),
            p256.clone(),
            FAIL,
            FAIL,
            Class::Agree,
        );
    }

    // (d) a PCR file value changed.
    let e1 = |pcr| Some(edit_pcr(&sc.sha1, pcr, flip_hex));
    let e256 = |pcr| Some(edit_pcr(&sc.sha256, pcr, flip_hex));
    add("(d) sha256 PCR-10 changed".into(), sc.log.clone(), p1.clone(), e256(10), FAIL, FAIL, Class::Agree);
    add("(d) sha256 PCR-10 changed, sha256 bank only".into(), sc.log.clone(), None, e256(10), FAIL, FAIL, Class::Agree);
    add("(d) sha1 PCR-10 changed, sha1 bank only".into(), sc.log.clone(), e1(10), None, FAIL, FAIL, Class::Agree);
    add("(d) sha1 PCR-10 changed".into(), sc.log.clone(), e1(10), p256.clone(), FAIL, base, Class::EvmctlLastBank);
    // boot_aggregate covers PCR 0-9 of its bank (0-7 for SHA1); evmctl ima_measurement
    // looks at no PCR but those the log extends.
    for bank in [HashAlgo::Sha1, HashAlgo::Sha256] {
        for pcr in [0, 9] {
            let covered = bank == sc.boot_aggregate_bank && (pcr < 8 || bank != HashAlgo::Sha1);
            let (f1, f256) = if bank == HashAlgo::Sha1 { (e1(pcr), p256.clone()) } else { (p1.clone(), e256(pcr)) };
            let name = format!("(d) {bank} PCR-{pcr:02} changed");
            if covered {
                add(format!("{name} (in boot_aggregate)"), sc.log.clone(), f1, f256, FAIL, base, Class::BootAggregate);
            } else {
                add(format!("{name} (not in boot_aggregate)"), sc.log.clone(), f1, f256, base, base, Class::Agree);
            }
        }
    }
    // The sha256 bank read one record earlier than the sha1 bank: each bank matches some
    // prefix, but no prefix matches both.
    {
        let parsed = parse_records(&sc.log);
        let early = replayed_pcr10(&parsed[..n - 1], HashAlgo::Sha256);
        add(
            "(d) sha256 PCR-10 one record behind sha1 (bank skew)".into(),
            sc.log.clone(),
            p1.clone(),
            Some(edit_pcr(&sc.sha256, 10, |_| early.clone())),
            FAIL,
            base,
            Class::BankSkew,
        );
    }
    add(
        "(d) PCR-11 changed in both banks (not used by the log)".into(),
        sc.log.clone(),
        e1(11),
        e256(11),
        base,
        base,
        Class::Agree,
    );

    // (e) the template digest of one record changed, its data intact.
    for i in [mid, last_nv] {
        let mut rs = recs.clone();
        rs[i][4] ^= 0x80;
        add(
            format!("(e) template digest of record {i} changed"),
            join(&rs),
            p1.clone(),
            p256.clone(),
            FAIL,
            FAIL,
            Class::Agree,
        );
    }
    {
        let mut rs = recs.clone();
        rs[mid][4..24].fill(0);
        add(
            format!("(e) template digest of record {mid} zeroed (fake violation)"),
            join(&rs),
            p1.clone(),
            p256.clone(),
            FAIL,
            FAIL,
            Class::Agree,
        );
    }

    // (f) truncated mid-record.
    let last_start = sc.log.len() - recs[n - 1].len();
    let name_len = u32::from_le_bytes(recs[n - 1][24..28].try_into().unwrap()) as usize;
    for (what, keep) in [
        ("header", 10),
        ("template name", 30),
        (if sc.legacy { "d field" } else { "template data length" }, 28 + name_len + 2),
        ("template data", recs[n - 1].len() - 1),
    ] {
        add(
            format!("(f) truncated in the {what} of the last record"),
            sc.log[..last_start + keep].to_vec(),
            p1.clone(),
            p256.clone(),
            BAD,
            FAIL,
            Class::ParseError,
        );
    }
    {
        let cut = join(&recs[..mid]).len() + 50;
        add(
            format!("(f) truncated inside record {mid}"),
            sc.log[..cut].to_vec(),
            p1.clone(),
            p256.clone(),
            BAD,
            FAIL,
            Class::ParseError,
        );
    }

    // (g) the log runs ahead of the PCRs.
    let mut g = |name: &str, tail: Vec<u8>, ours: Pair, class| {
        let mut log = sc.log.clone();
        log.extend_from_slice(&tail);
        add(format!("(g) {name} appended"), log, p1.clone(), p256.clone(), ours, base, class);
    };
    g("a well-formed record", new_record(sc.legacy, false), base, Class::Agree);
    g("a violation record", new_record(sc.legacy, true), base, Class::Agree);
    let mut bad_digest = new_record(sc.legacy, false);
    bad_digest[4] ^= 0x80;
    g("a record with a wrong template digest", bad_digest, FAIL, Class::TailChecked);
    g("a partial record (30 bytes)", new_record(sc.legacy, false)[..30].to_vec(), BAD, Class::TailChecked);

    // (h) the PCR index of one record changed (not covered by the template digest).
    {
        let mut rs = recs.clone();
        rs[mid][0] = 11;
        add(format!("(h) record {mid} moved to PCR 11"), join(&rs), p1.clone(), p256.clone(), FAIL, FAIL, Class::Agree);
    }
    out
}

struct Outcome {
    ours: Pair,
    evmctl: Pair,
}

fn run_case(dir: &Path, c: &Case) -> Outcome {
    let log = dir.join("binary_runtime_measurements");
    std::fs::write(&log, &c.log).unwrap();
    let mut pcrs: Vec<String> = Vec::new();
    for (alg, text) in [("sha1", &c.sha1), ("sha256", &c.sha256)] {
        if let Some(t) = text {
            let p = dir.join(format!("pcrs-{alg}.txt"));
            std::fs::write(&p, t).unwrap();
            pcrs.push("--pcrs".into());
            pcrs.push(format!("{alg},{}", p.display()));
        }
    }
    let mut ours = [Pass; 2];
    let mut evm = [Pass; 2];
    for (k, ignore) in [false, true].into_iter().enumerate() {
        let iv: &[&str] = if ignore { &["--ignore-violations"] } else { &[] };
        let o = Command::new(imasnap_bin()).args(["log", "verify"]).arg(&log).args(&pcrs).args(iv).output().unwrap();
        ours[k] = V::ours(code(&o));
        let e = Command::new("evmctl").arg("ima_measurement").args(iv).args(&pcrs).arg(&log).output().unwrap();
        evm[k] = V::evmctl(code(&e));
    }
    Outcome { ours, evmctl: evm }
}

fn crosscheck(sc: Scenario) {
    let Some(version) = evmctl_version() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = cases(&sc);
    let mut table = String::new();
    let mut wrong = Vec::new();
    let pair = |p: Pair| format!("{}/{}", p[0].short(), p[1].short());
    writeln!(table, "{} ({version}); verdicts without/with --ignore-violations", sc.name).unwrap();
    for c in &cases {
        // Self-check of the expectations: an `agree` case expects the same verdicts.
        if c.class == Class::Agree {
            assert_eq!(c.ours, c.evmctl, "{}: agree case with different expectations", c.name);
        }
        let got = run_case(dir.path(), c);
        let evm_ok = got.evmctl == c.evmctl
            || (c.class == Class::EvmctlLastBank && version != "evmctl 1.4" && got.evmctl.iter().all(|&v| v != Bad));
        let ok = got.ours == c.ours && evm_ok;
        writeln!(
            table,
            "  {:<62} imasnap {:<11} evmctl {:<11} {}{}",
            c.name,
            pair(got.ours),
            pair(got.evmctl),
            c.class.name(),
            if ok { "" } else { "   <-- UNEXPECTED" }
        )
        .unwrap();
        if !ok {
            wrong.push(format!(
                "{}: {}: expected imasnap {} evmctl {}, got imasnap {} evmctl {}",
                sc.name,
                c.name,
                pair(c.ours),
                pair(c.evmctl),
                pair(got.ours),
                pair(got.evmctl)
            ));
        }
    }
    println!("{table}");
    if let Ok(d) = std::env::var("IMASNAP_CROSSCHECK_REPORT") {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(Path::new(&d).join(format!("{}.txt", sc.name)), &table).unwrap();
    }
    assert!(wrong.is_empty(), "verdicts differ from the expected ones:\n{}\n\n{table}", wrong.join("\n"));
}

#[test]
fn crosscheck_ima_ng() {
    crosscheck(real_scenario("ima-ng"));
}

#[test]
fn crosscheck_ima_sig() {
    crosscheck(real_scenario("ima-sig"));
}

#[test]
fn crosscheck_ima_buf() {
    crosscheck(real_scenario("ima-buf"));
}

#[test]
fn crosscheck_violation() {
    crosscheck(real_scenario("violation"));
}

#[test]
fn crosscheck_legacy_ima_template() {
    crosscheck(legacy_scenario());
}

#[test]
fn crosscheck_synthetic_2000() {
    if evmctl_version().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    crosscheck(synthetic_scenario(dir.path()));
}

/// (g) in detail: with one record appended, imasnap passes by prefix matching and says how
/// many records are past the PCR values; evmctl 1.4 also passes, because it stops reading
/// at the first record after which every bank matches.
#[test]
fn appended_record_passes_by_prefix_matching() {
    let Some(_) = evmctl_version() else { return };
    let sc = real_scenario("ima-ng");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("binary_runtime_measurements");
    let mut bytes = sc.log.clone();
    bytes.extend_from_slice(&new_record(false, false));
    std::fs::write(&log, &bytes).unwrap();
    let d = scenario_dir("ima-ng");
    let p1 = format!("sha1,{}", d.join("pcrs-sha1.txt").display());
    let p256 = format!("sha256,{}", d.join("pcrs-sha256.txt").display());
    let o = Command::new(imasnap_bin())
        .args(["log", "verify", "--json", "--pcrs", &p1, "--pcrs", &p256])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["verdict"], "pass");
    assert_eq!(j["records"], 10);
    assert_eq!(j["matched_after"], 9);
    assert_eq!(j["unverified_tail"], 1);
    let e =
        Command::new("evmctl").args(["ima_measurement", "--pcrs", &p1, "--pcrs", &p256]).arg(&log).output().unwrap();
    assert_eq!(code(&e), 0);
    let text = String::from_utf8_lossy(&e.stdout).into_owned() + &String::from_utf8_lossy(&e.stderr);
    assert!(text.contains("Matched per TPM bank calculated digest(s)."), "{text}");
}
