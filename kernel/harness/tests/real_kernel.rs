//! The RFC patch in a real kernel, against the kernel model. Slow (QEMU under TCG and a
//! kernel build on first use), so ignored by default; scripts/test.sh runs them with
//! `--ignored`. Needs root, qemu-system-x86, swtpm, kexec-tools, e2fsprogs, busybox-static.

use imasnap_kernel_harness::guest::{self, GuestConfig};
use imasnap_kernel_harness::scenario::Scenario;
use imasnap_kernel_harness::{model, structure};
use std::path::Path;
use std::time::Duration;

/// Every feature in one boot chain: snapshots, an aborted attempt, an EBUSY refusal,
/// and a kexec between two snapshots.
const SCENARIO: &str = "
measure 300
snapshot
measure 200
abort
measure 100
busy
snapshot
measure 150
kexec
measure 120
snapshot
measure 80
";

fn config(cmdline: &str) -> GuestConfig {
    GuestConfig {
        kernel: guest::kernel_image().expect("patched kernel (kernel/build.sh)"),
        imasnap: guest::imasnap_binary().expect("imasnap binary"),
        cmdline: cmdline.into(),
        memory_mb: 512,
        timeout: Duration::from_secs(600),
        modules: None,
    }
}

fn flip_byte(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x01;
    std::fs::write(p, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The structures of the guest's and the model's bundles, each with its verdict.
fn structures(
    guest: &Path,
    guest_verdict: &serde_json::Value,
    model: &Path,
    model_verdict: &str,
) -> (structure::Structure, structure::Structure) {
    let mut gs = structure::of_bundle(guest).unwrap();
    let mut ms = structure::of_bundle(model).unwrap();
    gs.verdict = guest_verdict["verdict"].as_str().unwrap().into();
    ms.verdict = model_verdict.into();
    (gs, ms)
}

/// The guest agent took a checkpoint (a quote of the guest's TPM) at every cut: the
/// latest segment verifies from the newest one, and full history in ranges between them
/// gives the same verdict as the sequential replay (issue 13).
fn latest_from_checkpoint(imasnap: &Path, bundle: &Path, g: &guest::GuestRun) {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let cps = m["snapshots"].as_array().unwrap().iter().filter(|s| s.get("checkpoint").is_some()).count();
    assert_eq!(cps, m["snapshots"].as_array().unwrap().len(), "a checkpoint at every cut: {m:#}");
    let (code, v) =
        guest::verify_with(imasnap, bundle, Some(&g.enrolled_ak), Some(&g.nonce), &["--latest-only"]).unwrap();
    assert_eq!(code, 0, "latest segment from a checkpoint: {v:#}");
    assert_eq!(v["history_verified"], false);
    assert!(v["report"]["checkpoint_used"]["index"].as_u64().is_some(), "{v:#}");
    let (code, v) =
        guest::verify_with(imasnap, bundle, Some(&g.enrolled_ak), Some(&g.nonce), &["--jobs", "2"]).unwrap();
    assert_eq!(code, 0, "ranges between checkpoints: {v:#}");
    assert_eq!(v["report"]["ranges"].as_u64(), Some(cps as u64 + 1), "{v:#}");
}

#[test]
#[ignore = "boots a patched kernel in QEMU (scripts/test.sh runs it)"]
fn real_kernel_matches_the_model_and_verifies() {
    let sc = Scenario::parse(SCENARIO).unwrap();
    let work = tempfile::tempdir().unwrap();
    let g = guest::run(&sc, &config(""), &work.path().join("guest")).unwrap();
    let imasnap = guest::imasnap_binary().unwrap();
    let bundle = g.out.join("bundle");

    // The guest's evidence verifies on the host against the AK enrolled before boot.
    let (code, v) = guest::verify(&imasnap, &bundle, Some(&g.enrolled_ak), Some(&g.nonce)).unwrap();
    assert_eq!(code, 0, "guest bundle: {v:#}");
    assert_eq!(v["verdict"], "verified");
    assert_eq!(v["history_verified"], true);
    latest_from_checkpoint(&imasnap, &bundle, &g);

    // EBUSY: the agent was refused while the file was held open.
    let trace = g.trace().unwrap();
    let busy = trace.iter().find(|l| l.starts_with("busy ")).expect("busy step traced");
    assert!(busy.contains("rc=2") && busy.contains("ebusy=1"), "{busy}");

    // The same scenario on the model: same structure, same verdict.
    let m = work.path().join("model");
    let run = model::run(&sc, &m.join("state"), &m.join("bundle"), b"model-nonce").unwrap();
    assert_eq!(run.busy_refusals, 1);
    let (mcode, mv) = guest::verify(&imasnap, &m.join("bundle"), None, None).unwrap();
    assert_eq!(mcode, 0, "model bundle: {mv:#}");
    let (gs, ms) = structures(&bundle, &v, &m.join("bundle"), mv["verdict"].as_str().unwrap());
    assert_eq!(gs, ms, "real kernel vs model:\n{gs:#?}\n{ms:#?}\ntrace:\n{}", trace.join("\n"));
    // Sanity of what was compared: 3 snapshots, 2 kernels, 5 attempts in two boots.
    assert_eq!(gs.snapshots.len(), 3);
    assert_eq!(gs.boot_aggregates.len(), 2);
    assert_eq!(gs.markers.iter().map(|m| m.1).collect::<Vec<_>>(), vec![1, 2, 3, 4, 1]);

    // A tampered snapshot file is rejected.
    let t = work.path().join("tampered");
    copy_dir(&bundle, &t);
    let snap = std::fs::read_dir(t.join("snapshots")).unwrap().next().unwrap().unwrap().path();
    flip_byte(&snap, 100);
    let (code, v) = guest::verify(&imasnap, &t, Some(&g.enrolled_ak), Some(&g.nonce)).unwrap();
    assert_eq!(code, 1, "tampered snapshot must fail: {v:#}");
    assert_eq!(v["verdict"], "rejected");
}

/// Issue 11 bug 4: snapshot attempts between `kexec -l` and `kexec -e`. Each marker is
/// ~3.3 KB, more than the half page the segment reserves; before the fix they were
/// appended, the dump wrote a truncated record, and the next kernel's list no longer
/// replayed to PCR 10. Now each attempt is refused (EBUSY) and every record arrives.
const KEXEC_BUSY: &str = "
measure 50
snapshot
measure 40
kexec_busy 3
measure 30
snapshot
measure 20
";

#[test]
#[ignore = "boots a patched kernel in QEMU (scripts/test.sh runs it)"]
fn snapshots_refused_between_kexec_load_and_execute() {
    let sc = Scenario::parse(KEXEC_BUSY).unwrap();
    let work = tempfile::tempdir().unwrap();
    let g = guest::run(&sc, &config(""), &work.path().join("guest")).unwrap();
    let imasnap = guest::imasnap_binary().unwrap();
    let trace = g.trace().unwrap();
    let line = trace.iter().find(|l| l.starts_with("kexec_busy ")).expect("kexec_busy step traced");
    assert!(line.contains("tried=3 refused=3"), "{line}");
    let (code, v) = guest::verify(&imasnap, &g.out.join("bundle"), Some(&g.enrolled_ak), Some(&g.nonce)).unwrap();
    assert_eq!(code, 0, "guest bundle after kexec: {v:#}\ntrace:\n{}", trace.join("\n"));
    assert_eq!(v["history_verified"], true);

    let m = work.path().join("model");
    let run = model::run(&sc, &m.join("state"), &m.join("bundle"), b"model-nonce").unwrap();
    assert_eq!(run.kexec_refusals, 3);
    let (gs, ms) = structures(&g.out.join("bundle"), &v, &m.join("bundle"), "verified");
    assert_eq!(gs, ms, "real kernel vs model:\n{gs:#?}\n{ms:#?}\ntrace:\n{}", trace.join("\n"));
    assert_eq!(gs.boot_aggregates.len(), 2);
}

/// The model half alone (fast, always run): the structure the real kernel must match.
#[test]
fn model_structure_of_the_scenario() {
    let sc = Scenario::parse(SCENARIO).unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = model::run(&sc, &work.path().join("state"), &work.path().join("b"), b"n").unwrap();
    assert_eq!((run.busy_refusals, run.snapshots), (1, 3));
    let s = structure::of_bundle(&work.path().join("b")).unwrap();
    // boot_aggregate, 300, marker 1 | 200, marker 2 (abort), 100, marker 3 (busy), marker 4
    // | 150, then kexec: boot_aggregate of the new kernel, 120, marker 1 | 80.
    assert_eq!(s.boot_aggregates, vec![0, 755]);
    assert_eq!(s.markers, vec![(301, 1), (502, 2), (603, 3), (604, 4), (876, 1)]);
    assert_eq!(s.snapshots, vec![(0, 301), (301, 303), (604, 272)]);
    assert_eq!((s.live_first, s.live_records, s.records), (876, 81, 957));
    let imasnap = guest::imasnap_binary().unwrap();
    let (code, v) = guest::verify(&imasnap, &work.path().join("b"), None, None).unwrap();
    assert_eq!(code, 0, "{v:#}");
}

/// Upstream staging (CONFIG_IMA_STAGING) with the agent in the guest: cuts by `N` and by
/// `A`/`D`, a writer holding the files while the agent and a reader get EBUSY, and a
/// kexec with records left staged (the next kernel lists them first).
const STAGING: &str = "
measure 300
trim
measure 200
stage
measure 100
writer_busy
trim
measure 150
stage_only
measure 40
kexec
measure 120
stage
measure 80
trim
measure 30
";

#[test]
fn model_structure_of_the_staging_scenario() {
    let sc = Scenario::parse(STAGING).unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = model::run(&sc, &work.path().join("state"), &work.path().join("b"), b"n").unwrap();
    assert_eq!((run.writer_refusals, run.snapshots), (1, 5));
    let s = structure::of_bundle(&work.path().join("b")).unwrap();
    // trim keeps the last record read (300) in the list; stage empties it. stage_only
    // leaves 600..751 staged; kexec lists them ahead of 751..791 and the new kernel's
    // boot_aggregate (791); the next stage cut stores 600..912 at once.
    assert_eq!(s.boot_aggregates, vec![0, 791]);
    assert!(s.markers.is_empty());
    assert_eq!(s.snapshots, vec![(0, 300), (300, 201), (501, 99), (600, 312), (912, 79)]);
    assert_eq!(s.cuts, vec!["trim", "stage", "trim", "stage", "trim"]);
    assert_eq!((s.live_first, s.live_records, s.records), (991, 31, 1022));
    let imasnap = guest::imasnap_binary().unwrap();
    let (code, v) = guest::verify(&imasnap, &work.path().join("b"), None, None).unwrap();
    assert_eq!(code, 0, "{v:#}");
}

#[test]
#[ignore = "boots a patched kernel in QEMU (scripts/test.sh runs it)"]
fn real_kernel_staging_matches_the_model_and_verifies() {
    let sc = Scenario::parse(STAGING).unwrap();
    let work = tempfile::tempdir().unwrap();
    let g = guest::run(&sc, &config("imasnap.iface=staging"), &work.path().join("guest")).unwrap();
    let imasnap = guest::imasnap_binary().unwrap();
    let bundle = g.out.join("bundle");
    let trace = g.trace().unwrap();
    let (code, v) = guest::verify(&imasnap, &bundle, Some(&g.enrolled_ak), Some(&g.nonce)).unwrap();
    assert_eq!(code, 0, "guest bundle: {v:#}\ntrace:\n{}", trace.join("\n"));
    assert_eq!(v["history_verified"], true);
    latest_from_checkpoint(&imasnap, &bundle, &g);

    // The writer held the files: the agent and a reader were refused, then readers read.
    let wb = trace.iter().find(|l| l.starts_with("writer_busy ")).expect("writer_busy step traced");
    assert!(!wb.contains("rc=0") && !wb.contains("ebusy=0"), "{wb}");
    assert!(wb.contains("reader=1") && wb.contains("after=0"), "{wb}");

    let m = work.path().join("model");
    let run = model::run(&sc, &m.join("state"), &m.join("bundle"), b"model-nonce").unwrap();
    assert_eq!(run.writer_refusals, 1);
    let (gs, ms) = structures(&bundle, &v, &m.join("bundle"), "verified");
    assert_eq!(gs, ms, "real kernel vs model:\n{gs:#?}\n{ms:#?}\ntrace:\n{}", trace.join("\n"));
    assert_eq!(gs.boot_aggregates.len(), 2);

    // A record changed inside a stored segment is rejected.
    let t = work.path().join("tampered");
    copy_dir(&bundle, &t);
    let snap = t.join("snapshots/000002.snap");
    // Inside the second record's template data (records are ~97 bytes): the digest no
    // longer matches, a verdict rather than an unreadable file.
    flip_byte(&snap, 150);
    let (code, v) = guest::verify(&imasnap, &t, Some(&g.enrolled_ak), Some(&g.nonce)).unwrap();
    assert_eq!(code, 1, "tampered segment must fail: {v:#}");
}

/// Debian's stock 6.1 kernel (neither interface): the agent keeps its own copy of the
/// list and never trims the kernel's. Each `snapshot` copies the new records and takes a
/// checkpoint on the copy; the bundle lists the copy's ranges between checkpoints.
const STOCK_LEGACY: &str = "
legacy
measure 200
snapshot
measure 100
snapshot
measure 50
";

/// Boots the stock kernel with `sc`; checks it is 6.1 and the bundle verifies with full
/// history against the enrolled AK and the nonce.
fn stock_run(sc: &str, work: &Path) -> (guest::GuestRun, serde_json::Value) {
    let k = guest::stock_kernel().expect("stock kernel (apt-get install linux-image-amd64)");
    let cfg = GuestConfig {
        kernel: k.vmlinuz.clone(),
        imasnap: guest::imasnap_binary().expect("imasnap binary"),
        cmdline: String::new(),
        memory_mb: 512,
        timeout: Duration::from_secs(600),
        modules: Some(k.modules.clone()),
    };
    let g = guest::run(&Scenario::parse(sc).unwrap(), &cfg, work).unwrap();
    eprintln!("stock kernel {}: guest ran {:.1} s", k.release, g.seconds);
    assert!(k.release.starts_with("6.1."), "linux-image-amd64 is {}, not 6.1", k.release);
    assert!(g.console.contains(&format!("IMASNAP: stage 0 on {}", k.release)), "uname -r in the guest:\n{}", g.console);
    let trace = g.trace().unwrap().join("\n");
    let (code, v) =
        guest::verify(&guest::imasnap_binary().unwrap(), &g.out.join("bundle"), Some(&g.enrolled_ak), Some(&g.nonce))
            .unwrap();
    assert_eq!(code, 0, "guest bundle: {v:#}\ntrace:\n{trace}");
    assert_eq!(v["verdict"], "verified");
    assert_eq!(v["history_verified"], true);
    (g, v)
}

/// The kernel list's length after each step (`list=N` in the trace).
fn list_lengths(g: &guest::GuestRun) -> Vec<u64> {
    let t = g.trace().unwrap();
    t.iter().filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("list=")?.parse().ok())).collect()
}

/// The legacy bundle alone (no checkpoints): the agent copies the whole list at the end.
#[test]
#[ignore = "boots Debian's stock kernel in QEMU (scripts/test.sh runs it)"]
fn stock_kernel_legacy_bundle_verifies() {
    let work = tempfile::tempdir().unwrap();
    let (g, _) = stock_run("legacy\nmeasure 200\nmeasure 50\n", &work.path().join("guest"));
    // tcb measured the workload on the disk: boot_aggregate + 200, then 50 more.
    let l = list_lengths(&g);
    assert!(l[0] > 200 && l[1] >= l[0] + 50, "{l:?}");
}

#[test]
#[ignore = "boots Debian's stock kernel in QEMU (scripts/test.sh runs it)"]
fn stock_kernel_legacy_latest_from_checkpoint() {
    let work = tempfile::tempdir().unwrap();
    let (g, _) = stock_run(STOCK_LEGACY, &work.path().join("guest"));
    let imasnap = guest::imasnap_binary().unwrap();
    // Never trimmed: the kernel's list only grows.
    let l = list_lengths(&g);
    assert!(l.windows(2).all(|w| w[1] >= w[0]) && l[0] > 200, "{l:?}");

    // Each `snapshot` step: a legacy checkpoint on the agent's copy, further on each time.
    let mut cps = Vec::new();
    for tag in ["s0x1", "s0x3"] {
        let p = g.out.join(format!("snap-{tag}.json"));
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(doc["format"], "imasnap-agent-snapshot/1", "{doc:#}");
        assert_eq!(doc["interface"], "legacy", "{doc:#}");
        let cp = doc.get("checkpoint").filter(|c| !c.is_null()).unwrap_or(&doc["snapshot"]["checkpoint"]);
        cps.push(cp["index"].as_u64().unwrap_or_else(|| panic!("no checkpoint index in {}: {doc:#}", p.display())));
    }
    assert!(cps[0] > 200 && cps[1] >= cps[0] + 100, "checkpoint indices {cps:?}");
    eprintln!("legacy checkpoints at records {cps:?}, kernel list lengths {l:?}");

    // The bundle: the copy's ranges between the checkpoints, each ending at one.
    let bundle = g.out.join("bundle");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let ends: Vec<u64> = m["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["first_index"].as_u64().unwrap() + s["count"].as_u64().unwrap())
        .collect();
    assert_eq!(ends, cps, "segments end at the checkpoints: {m:#}");
    latest_from_checkpoint(&imasnap, &bundle, &g);
}

/// The legacy scenario on the patched kernel stops before its first step: with the
/// `snapshot` file there, `auto` would not pick legacy and the test would test RFC cuts.
#[test]
#[ignore = "boots a patched kernel in QEMU (scripts/test.sh runs it)"]
fn legacy_scenario_refused_on_the_patched_kernel() {
    let work = tempfile::tempdir().unwrap();
    let err = guest::run(&Scenario::parse(STOCK_LEGACY).unwrap(), &config(""), &work.path().join("guest")).unwrap_err();
    let u = err.downcast_ref::<guest::Unsupported>().unwrap_or_else(|| panic!("not Unsupported: {err:#}"));
    assert_eq!(u.interface, "legacy");
    assert!(u.detail.ends_with("/ima/snapshot present"), "{u}");
}

/// Cuts, then the FUSE view mounted in the guest by another process than the cuts.
const VIEW_RFC: &str = "
measure 120
snapshot
measure 80
snapshot
measure 60
snapshot
measure 40
view
";

const VIEW_STAGING: &str = "
measure 120
trim
measure 80
stage
measure 60
trim
measure 40
view
";

/// PCR 10 of one bank from `tpm2 pcrread` output (YAML: `  sha1:` then `    10: 0x…`),
/// in evmctl's `PCR-NN: hex` file form.
fn evmctl_pcr_file(yaml: &str, bank: &str) -> String {
    let mut in_bank = false;
    for line in yaml.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_suffix(':') {
            in_bank = name == bank;
        } else if let (true, Some(v)) = (in_bank, t.strip_prefix("10:")) {
            let hex = v.trim().trim_start_matches("0x").to_ascii_lowercase();
            // evmctl 1.4 reads a file of all 24 PCRs; it compares only those the log
            // extends (10), so the others are zeros here.
            let zero = "0".repeat(hex.len());
            return (0..24).map(|i| format!("PCR-{i:02}: {}\n", if i == 10 { &hex } else { &zero })).collect();
        }
    }
    panic!("no PCR 10 of {bank} in tpm2 pcrread output:\n{yaml}")
}

/// `evmctl ima_measurement` on `log` against the PCR files: its exit code and output.
fn evmctl(log: &Path, sha1: &Path, sha256: &Path) -> (i32, String) {
    let o = std::process::Command::new("evmctl")
        .arg("ima_measurement")
        .arg("--pcrs")
        .arg(format!("sha1,{}", sha1.display()))
        .arg("--pcrs")
        .arg(format!("sha256,{}", sha256.display()))
        .arg(log)
        .output()
        .expect("evmctl (ima-evm-utils)");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

/// The view the guest read: evmctl replays it to the guest TPM's PCR 10 as tpm2-tools read
/// it, it is the whole log (the bundle's segments plus its live list, byte for byte), and
/// the mount was read-only and gone after SIGTERM.
fn view_checks(g: &guest::GuestRun, tag: &str) {
    let trace = g.trace().unwrap();
    let line = trace.iter().find(|l| l.starts_with("view ")).expect("view step traced");
    for want in ["rc=0", "unmounted=1", "write_refused=1"] {
        assert!(line.contains(want), "{want}: {line}\n{}", g.console);
    }
    let f = |name: &str| g.out.join(format!("view-{tag}.{name}"));
    let bin = std::fs::read(f("binary_runtime_measurements")).unwrap();

    // Byte for byte the whole log: the bundle (written after the view, nothing measured
    // in between) holds the same records as its segments and live list.
    let bundle = g.out.join("bundle");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let mut whole = Vec::new();
    for s in m["snapshots"].as_array().unwrap() {
        whole.extend(std::fs::read(bundle.join("snapshots").join(s["file"].as_str().unwrap())).unwrap());
    }
    let snapshot_bytes = whole.len();
    assert!(m["snapshots"].as_array().unwrap().len() >= 3, "{m:#}");
    whole.extend(std::fs::read(bundle.join("live.bin")).unwrap());
    let listing: Vec<String> = std::fs::read_dir(&g.out)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("view-"))
        .map(|e| format!("{} {}", e.file_name().to_string_lossy(), e.metadata().unwrap().len()))
        .collect();
    let err = std::fs::read_to_string(f("err")).unwrap_or_default();
    assert!(
        bin == whole,
        "view: {} bytes, bundle segments + live: {} bytes\n{listing:#?}\n{err}",
        bin.len(),
        whole.len()
    );

    // The count and the ASCII file cover the whole boot, not the kernel's trimmed list.
    let count: u64 = std::fs::read_to_string(f("runtime_measurements_count")).unwrap().trim().parse().unwrap();
    let ascii = std::fs::read_to_string(f("ascii_runtime_measurements")).unwrap();
    assert_eq!(ascii.lines().count() as u64, count);
    let next_index = m["next_index"].as_u64().unwrap();
    assert!(count > next_index, "count {count} covers the {next_index} records moved to snapshots");
    assert!(ascii.starts_with("10 "), "{}", &ascii[..ascii.len().min(200)]);
    assert!(!std::fs::read(f("binary_runtime_measurements_sha256")).unwrap().is_empty());

    // evmctl, unmodified, on the view against the PCRs tpm2-tools read from the guest TPM.
    let yaml = std::fs::read_to_string(g.out.join(format!("pcrs-{tag}.yaml"))).unwrap();
    let (p1, p256) = (g.out.join("pcr-sha1.txt"), g.out.join("pcr-sha256.txt"));
    std::fs::write(&p1, evmctl_pcr_file(&yaml, "sha1")).unwrap();
    std::fs::write(&p256, evmctl_pcr_file(&yaml, "sha256")).unwrap();
    let (code, out) = evmctl(&f("binary_runtime_measurements"), &p1, &p256);
    assert_eq!(code, 0, "evmctl on the view:\n{out}");

    // One changed record inside the first snapshot's range: evmctl rejects it.
    let bad = g.out.join("view-changed.bin");
    std::fs::write(&bad, &bin).unwrap();
    flip_byte(&bad, snapshot_bytes / 3);
    let (code, out) = evmctl(&bad, &p1, &p256);
    assert_ne!(code, 0, "evmctl accepted a view with a changed record:\n{out}");
}

#[test]
#[ignore = "boots a patched kernel in QEMU (scripts/test.sh runs it)"]
fn real_kernel_view_of_snapshots_passes_evmctl() {
    let sc = Scenario::parse(VIEW_RFC).unwrap();
    let work = tempfile::tempdir().unwrap();
    let g = guest::run(&sc, &config(""), &work.path().join("guest")).unwrap();
    view_checks(&g, "s0x7");
}

#[test]
#[ignore = "boots a patched kernel in QEMU (scripts/test.sh runs it)"]
fn real_kernel_view_of_staging_passes_evmctl() {
    let sc = Scenario::parse(VIEW_STAGING).unwrap();
    let work = tempfile::tempdir().unwrap();
    let g = guest::run(&sc, &config("imasnap.iface=staging"), &work.path().join("guest")).unwrap();
    view_checks(&g, "s0x7");
}
