//! Agent behaviour on the kernel model: protocol outcome, policy, refusals, cold boot vs
//! kexec, and the evidence bundle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent::*;
use imasnap_kernel_model::{Config, Kernel};
use imasnap_log::{HashAlgo, Record};
use imasnap_store::{BootDir, BootId, Decision, Retention, StoreError};
use imasnap_test_support::{kernel, records};
use imasnap_tpm::{PcrSelection, SoftTpm, Tpm};
use std::time::{Duration, Instant};

type K = Kernel<SoftTpm>;

fn measure(k: &mut K, from: u64, n: u64) {
    kernel::measure_files(k, "/usr/bin/f", from, n);
}

fn all_records(k: &K) -> Vec<Record> {
    let sha1 = k.banks().iter().position(|&b| b == HashAlgo::Sha1).unwrap();
    k.entries().map(|e| e.record(sha1)).collect()
}

fn stitched(a: &mut Agent<K>) -> Vec<Record> {
    a.stitched(0).unwrap().map(|r| r.unwrap().1).collect()
}

fn setup() -> (tempfile::TempDir, AgentConfig, K) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::new(tmp.path().join("state"));
    let k = kernel::boot(1);
    (tmp, cfg, k)
}

#[test]
fn snapshot_moves_records_to_disk_and_keeps_the_log_whole() {
    let (_tmp, cfg, mut k) = setup();
    measure(&mut k, 0, 150);
    let mut want = all_records(&k);
    let (mut a, r) = Agent::start(k, cfg).unwrap();
    assert!(r.created && !r.cold_boot() && r.pending.is_none());
    let e = a.snapshot_once().unwrap();
    assert_eq!((e.seq, e.first_index, e.count), (1, 0, 151));
    assert_eq!(e.file, "000001.snap");
    // The marker heads the list now; the records before it are gone from the kernel.
    assert_eq!(a.kernel().len(), 1);
    want.push(all_records(a.kernel())[0].clone());
    assert_eq!(stitched(&mut a), want);
    measure(a.kernel_mut(), 150, 10);
    let e2 = a.snapshot_once().unwrap();
    assert_eq!((e2.seq, e2.first_index, e2.count), (2, 151, 11));
    assert_eq!(e2.end_marker.unwrap().attempt, 2);
    let m = a.manifest().unwrap().clone();
    assert_eq!(m.next_index, 162);
    assert_eq!(a.boot_dir().unwrap().load_manifest().unwrap(), m);
    assert_eq!(stitched(&mut a).len(), 163);
}

#[test]
fn policy_triggers_snapshots() {
    let (_tmp, mut cfg, mut k) = setup();
    cfg.snapshot =
        SnapshotPolicy { max_records: Some(50), max_bytes: None, interval_secs: Some(3600), ..Default::default() };
    measure(&mut k, 0, 10);
    let (mut a, _) = Agent::start(k, cfg).unwrap();
    let now = Instant::now();
    assert!(a.maybe_snapshot(now).unwrap().is_none());
    measure(a.kernel_mut(), 10, 40);
    let (t, e) = a.maybe_snapshot(now).unwrap().unwrap();
    assert_eq!((t, e.count), (Trigger::Records, 51));
    measure(a.kernel_mut(), 50, 3);
    assert!(a.maybe_snapshot(now + Duration::from_secs(10)).unwrap().is_none());
    let (t, _) = a.maybe_snapshot(now + Duration::from_secs(3600)).unwrap().unwrap();
    assert_eq!(t, Trigger::Interval);
    // Only the head left: nothing to do however long it has been.
    assert!(a.maybe_snapshot(now + Duration::from_secs(1 << 30)).unwrap().is_none());
}

#[test]
fn busy_snapshot_file_is_a_clean_failure() {
    let (_tmp, cfg, mut k) = setup();
    measure(&mut k, 0, 5);
    let (mut a, _) = Agent::start(k, cfg).unwrap();
    let other = a.kernel_mut().snapshot_open().unwrap();
    assert!(matches!(a.snapshot_once(), Err(AgentError::Kernel(KernelIfError::Busy(_)))));
    a.kernel_mut().snapshot_close(other);
    // The other opener's marker is an ordinary record now and lands in our snapshot.
    let e = a.snapshot_once().unwrap();
    assert_eq!(e.count, 7);
    assert_eq!(e.end_marker.unwrap().attempt, 2);
    assert_eq!(stitched(&mut a).len(), 8);
}

#[test]
fn cold_boot_archives_or_deletes_kexec_does_not() {
    for retention in [Retention::Archive, Retention::Delete] {
        let (_tmp, mut cfg, mut k) = setup();
        cfg.retention = retention;
        measure(&mut k, 0, 20);
        let (mut a, _) = Agent::start(k, cfg.clone()).unwrap();
        a.snapshot_once().unwrap();
        let first_id = a.boot_dir().unwrap().id().clone();
        let m1 = a.manifest().unwrap().clone();

        // kexec: same boot, the list carried over (head = our marker).
        let mut k = a.into_kernel();
        let buf = k.kexec_save();
        let k = Kernel::kexec_restore(Config::default(), k.into_tpm(), &buf).unwrap();
        let (mut a, r) = Agent::start(k, cfg.clone()).unwrap();
        assert!(!r.cold_boot() && !r.created, "{r:?}");
        assert_eq!(r.boot, first_id);
        assert_eq!(stitched(&mut a).len(), 21 + 2, "marker + new boot_aggregate");

        // Cold boot: resetCount moves, the old directory is retired.
        let mut tpm = a.into_kernel().into_tpm();
        tpm.reset();
        let k = kernel::boot_with(Config::default(), tpm);
        let (mut a, r) = Agent::start(k, cfg.clone()).unwrap();
        assert!(r.cold_boot() && r.created);
        assert_eq!(r.retired, vec![first_id.clone()]);
        assert_ne!(r.boot, first_id);
        assert_eq!(r.boot.reset_count(), 1);
        assert_eq!(stitched(&mut a).len(), 1);
        let archive = a.store().list_archive().unwrap();
        match retention {
            Retention::Archive => {
                assert_eq!(archive, vec![first_id.to_string()]);
                let d = BootDir::at(first_id.clone(), a.store().archive_dir().join(first_id.as_str()));
                assert_eq!(d.load_manifest().unwrap(), m1);
            }
            Retention::Delete => assert!(archive.is_empty()),
        }
    }
}

#[test]
fn same_identity_cold_boot_is_detected_by_the_list_head() {
    let (_tmp, cfg, mut k) = setup();
    measure(&mut k, 0, 5);
    let (mut a, _) = Agent::start(k, cfg.clone()).unwrap();
    a.snapshot_once().unwrap();
    let id = a.boot_dir().unwrap().id().clone();
    drop(a);
    // A fresh simulator: resetCount 0 again, identical PCR 0-9, identical boot id.
    let k = kernel::boot(1);
    let (a, r) = Agent::start(k, cfg).unwrap();
    assert_eq!(r.boot, id);
    assert!(r.cold_boot() && r.created, "{r:?}");
    assert_eq!(a.manifest().unwrap().snapshots.len(), 0);
    assert_eq!(a.store().list_archive().unwrap(), vec![id.to_string()]);
}

#[test]
fn lost_store_is_reported_not_papered_over() {
    let (tmp, cfg, mut k) = setup();
    measure(&mut k, 0, 5);
    let (mut a, _) = Agent::start(k, cfg.clone()).unwrap();
    a.snapshot_once().unwrap();
    let k = a.into_kernel();
    std::fs::remove_dir_all(tmp.path().join("state")).unwrap();
    let e = Agent::start(k, cfg).err().unwrap();
    assert!(matches!(e, AgentError::Inconsistent(_)), "{e}");
    assert!(e.to_string().contains("not in the store"), "{e}");
}

#[test]
fn crash_after_done_then_recovery_commits() {
    let (_tmp, cfg, mut k) = setup();
    measure(&mut k, 0, 30);
    let mut want = all_records(&k);
    let mut a = Agent::new(k, cfg.clone()).unwrap();
    a.recover().unwrap();
    a.crash_at(CrashPoint::AfterDone);
    assert!(matches!(a.snapshot_once(), Err(AgentError::Crashed(CrashPoint::AfterDone))));
    assert!(matches!(a.snapshot_once(), Err(AgentError::Crashed(_))), "a crashed agent stays dead");
    let mut k = a.into_kernel();
    k.process_exit();
    want.push(all_records(&k)[0].clone());
    let (mut a, r) = Agent::start(k, cfg).unwrap();
    assert_eq!(r.pending, Some(Decision::Commit));
    assert_eq!(stitched(&mut a), want);
}

#[test]
fn evidence_bundle_matches_the_contract_and_reads_back() {
    let (tmp, cfg, mut k) = setup();
    measure(&mut k, 0, 40);
    let (mut a, _) = Agent::start(k, cfg).unwrap();
    a.snapshot_once().unwrap();
    measure(a.kernel_mut(), 40, 7);
    a.snapshot_once().unwrap();
    measure(a.kernel_mut(), 47, 3);
    let whole = stitched(&mut a);

    let nonce = [0x5a; 32];
    let sel = PcrSelection::new([(HashAlgo::Sha1, (0..=10).collect()), (HashAlgo::Sha256, (0..=10).collect())]);
    let q = a.kernel_mut().tpm_mut().quote(&nonce, &sel.unwrap()).unwrap();
    let quote = quote_json(&q, &nonce);
    let ak = AkKey::Tpm2bPublic(vec![0, 1, 2, 0xab]);
    let out = tmp.path().join("bundle");
    let info = a.write_bundle(&out, &Evidence { quote: &quote, nonce: &nonce, ak: &ak }).unwrap();
    assert_eq!(info.snapshots, 2);

    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["ak.pub", "bundle.json", "live.bin", "manifest.json", "quote.json", "snapshots"]);
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(idx["format"], "imasnap-bundle/1");
    assert_eq!(idx["banks"], serde_json::json!(["sha1", "sha256"]));
    assert_eq!(idx["pcr"], 10);
    assert_eq!(idx["live_first_index"], 49);
    assert_eq!(idx["nonce"], hex::encode(nonce));
    assert_eq!(std::fs::read_to_string(out.join("ak.pub")).unwrap(), "000102ab\n");
    let qj: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("quote.json")).unwrap()).unwrap();
    assert_eq!(qj["nonce"], hex::encode(nonce));
    assert!(qj["attest"].is_string() && qj["signature"].is_string());

    // The bundle alone reproduces the stitched log.
    let m: imasnap_store::Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let d = BootDir::at(BootId::of(&m.boot), out.join("snapshots"));
    let live = std::fs::read(out.join("live.bin")).unwrap();
    let got: Vec<Record> = d.stitched(&m, &live[..], 0).map(|r| r.unwrap().1).collect();
    assert_eq!(got, whole);
    let live_recs = records::parse(&live);
    assert_eq!(live_recs.len(), 4);

    // A second bundle into the same (non-empty) directory is refused.
    let e = a.write_bundle(&out, &Evidence { quote: &quote, nonce: &nonce, ak: &ak }).unwrap_err();
    assert!(matches!(e, AgentError::Store(StoreError::Exists(_))), "{e}");
    // A corrupted snapshot file is caught while copying.
    let p = a.boot_dir().unwrap().snap_path(1);
    let mut b = std::fs::read(&p).unwrap();
    b[10] ^= 0x80;
    std::fs::write(&p, b).unwrap();
    let e = a.write_bundle(&tmp.path().join("b2"), &Evidence { quote: &quote, nonce: &nonce, ak: &ak }).unwrap_err();
    assert!(e.to_string().contains("sha256"), "{e}");
}

/// `live_read` from the previous read's end gives exactly what a whole read gives from
/// there, across measurements, a snapshot (the mark is dropped) and a restart; asking
/// for an earlier index reads the whole list again.
#[test]
fn live_read_from_the_mark_matches_a_whole_read() {
    let (_tmp, cfg, mut k) = setup();
    measure(&mut k, 0, 20);
    let (mut a, _) = Agent::start(k, cfg).unwrap();
    let whole = |a: &mut Agent<K>| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut a.live_tail().unwrap(), &mut b).unwrap();
        b
    };
    // Bytes of `buf` (records from index `first`) from record `from` on.
    let suffix = |buf: &[u8], first: u64, from: u64| {
        let recs = records::parse(buf);
        let skip: usize = recs[..(from - first) as usize].iter().map(|r| r.encoded_len()).sum();
        buf[skip..].to_vec()
    };
    let r0 = a.live_read(None).unwrap();
    assert_eq!((r0.first, r0.records), (0, 21));
    assert_eq!(r0.bytes, whole(&mut a));
    let mut next = 1000;
    for round in 0..6u64 {
        if round == 3 {
            a.snapshot_once().unwrap();
        }
        measure(a.kernel_mut(), next, 3 + round);
        next += 3 + round;
        if round == 4 {
            a.restart().unwrap();
            a.recover().unwrap();
        }
        let head = a.manifest().unwrap().next_index;
        let all = whole(&mut a);
        let end = head + records::parse(&all).len() as u64;
        let want_from = end - (3 + round);
        let r = a.live_read(Some(want_from)).unwrap();
        assert_eq!(r.first + r.records, end, "round {round}");
        assert!(r.first <= want_from && r.first >= head, "round {round}");
        assert_eq!(r.bytes, suffix(&all, head, r.first), "round {round}");
        // Only the new records were read, except right after the snapshot and restart.
        if round != 3 && round != 4 {
            assert_eq!(r.first, want_from, "round {round}: read from the mark");
        }
        // An earlier index than the mark: the whole list.
        if round == 5 {
            let r = a.live_read(Some(head)).unwrap();
            assert_eq!((r.first, r.bytes.clone()), (head, all.clone()));
        }
    }
}
