//! Store behaviour on a hand-built log: the protocol's steps, the stitched reader's checks,
//! recovery decisions and retention.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::marker::Marker;
use imasnap_log::{Endian, HashAlgo, PcrValue, Record};
use imasnap_store::*;

fn file_rec(name: &str) -> Record {
    let d = HashAlgo::Sha256.hash(&[name.as_bytes()]);
    build(
        &builtin("ima-ng"),
        &[&d_ng("sha256", d.as_bytes()), &n_ng(name.as_bytes())],
        HashAlgo::Sha1,
        10,
        false,
        Endian::Little,
    )
}

fn boot_agg() -> Record {
    build(
        &builtin("ima-ng"),
        &[&d_ng("sha256", &[7; 32]), &n_ng(b"boot_aggregate")],
        HashAlgo::Sha1,
        10,
        false,
        Endian::Little,
    )
}

fn marker(attempt: u64, seed: u8) -> (Marker, Record) {
    let mut v1 = [PcrValue::zero(HashAlgo::Sha1); 24];
    v1[10] = PcrValue::from_slice(HashAlgo::Sha1, &[seed; 20]);
    let mut v2 = [PcrValue::zero(HashAlgo::Sha256); 24];
    v2[10] = PcrValue::from_slice(HashAlgo::Sha256, &[seed; 32]);
    let m = Marker { attempt, banks: vec![(HashAlgo::Sha1, v1), (HashAlgo::Sha256, v2)] };
    let r = m.to_record(10, HashAlgo::Sha256, HashAlgo::Sha1, Endian::Little);
    (m, r)
}

fn encode(recs: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        r.encode(Endian::Little, &mut out);
    }
    out
}

/// A boot whose log is `log`, cut into committed snapshots at `cuts` (positions of markers).
struct Fixture {
    _tmp: tempfile::TempDir,
    store: Store,
    dir: BootDir,
    manifest: Manifest,
    log: Vec<Record>,
}

fn fixture(n_files: usize, cuts: &[usize]) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("state")).unwrap();
    let mut log = vec![boot_agg()];
    let mut markers = Vec::new();
    for i in 0..n_files {
        // `while`: adjacent cuts give a snapshot holding only the previous marker.
        while cuts.contains(&log.len()) {
            let (m, r) = marker(markers.len() as u64 + 1, i as u8);
            markers.push((log.len(), m));
            log.push(r);
        }
        log.push(file_rec(&format!("/bin/f{i}")));
    }
    let boot = BootInfo::from_boot_aggregate(3, &log[0]);
    let mut manifest = Manifest::new(boot, vec![HashAlgo::Sha1, HashAlgo::Sha256], 10);
    let dir = store.create_boot(&manifest).unwrap();
    for (pos, m) in &markers {
        commit(&dir, &mut manifest, &log, *pos, m);
    }
    Fixture { _tmp: tmp, store, dir, manifest, log }
}

/// Runs the store side of the commit protocol for the marker at list position `pos`.
fn commit(dir: &BootDir, manifest: &mut Manifest, log: &[Record], pos: usize, m: &Marker) {
    let first = manifest.next_index as usize;
    let p = Pending {
        seq: manifest.next_seq(),
        first_index: first as u64,
        count: (pos - first) as u64,
        marker: MarkerRef::from_record(&log[pos]).unwrap(),
        checkpoint: None,
    };
    p.validate_against(manifest).unwrap();
    dir.write_pending_tmp(&p).unwrap();
    dir.install_pending().unwrap();
    let mut t = dir.create_tentative(p.seq).unwrap();
    // Odd chunk sizes split records across writes.
    for c in encode(&log[first..pos]).chunks(37) {
        t.write(c).unwrap();
    }
    t.sync().unwrap();
    let info = t.finish().unwrap();
    assert_eq!(info.count, p.count);
    assert_eq!(info.first.as_ref(), Some(&log[first]));
    dir.install_tentative(p.seq).unwrap();
    dir.sync().unwrap();
    let e = manifest.entry_for(&p, m, info.sha256).unwrap();
    let mut next = manifest.clone();
    next.snapshots.push(e);
    next.next_index += p.count;
    dir.commit_manifest(&next).unwrap();
    assert!(dir.remove_pending().unwrap());
    dir.sync().unwrap();
    *manifest = next;
}

fn live(f: &Fixture) -> Vec<u8> {
    encode(&f.log[f.manifest.next_index as usize..])
}

#[test]
fn stitched_from_every_index_equals_log() {
    let f = fixture(40, &[5, 17, 18, 30]);
    assert_eq!(f.manifest.snapshots.len(), 4);
    assert_eq!(f.dir.load_manifest().unwrap(), f.manifest);
    assert!(f.dir.leftovers(&f.manifest).unwrap().is_empty());
    for from in 0..=f.log.len() as u64 {
        let got: Vec<(u64, Record)> =
            f.dir.stitched(&f.manifest, &live(&f)[..], from).collect::<Result<_, _>>().unwrap();
        let want: Vec<(u64, Record)> =
            f.log.iter().cloned().enumerate().skip(from as usize).map(|(i, r)| (i as u64, r)).collect();
        assert_eq!(got, want, "from {from}");
    }
    let e = f.dir.stitched(&f.manifest, &live(&f)[..], f.log.len() as u64 + 1).last().unwrap().unwrap_err();
    assert!(matches!(e.reason, StitchReason::Beyond { .. }), "{e}");
}

#[test]
fn pcrs_end_come_from_the_end_marker() {
    let f = fixture(10, &[4]);
    let s = &f.manifest.snapshots[0];
    assert_eq!(s.pcrs_end[&HashAlgo::Sha1], hex::encode([3u8; 20]));
    assert_eq!(s.pcrs_end[&HashAlgo::Sha256], hex::encode([3u8; 32]));
    assert_eq!(s.end_marker.as_ref().unwrap().attempt, 1);
    assert_eq!((s.first_index, s.count), (0, 4));
}

#[test]
fn corrupt_snapshot_is_refused_before_any_record() {
    let f = fixture(20, &[5, 12]);
    let path = f.dir.snap_path(2);
    let mut b = std::fs::read(&path).unwrap();
    b[30] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let l = live(&f);
    let mut it = f.dir.stitched(&f.manifest, &l[..], 6);
    let e = it.next().unwrap().unwrap_err();
    assert_eq!(e.segment, Segment::Snapshot(2));
    assert_eq!(e.at.record, 5);
    assert!(matches!(e.reason, StitchReason::Sha256 { .. }), "{e}");
    assert!(it.next().is_none(), "a failed reader stops");
    // From 0 the first snapshot reads fine, then the bad one fails at its first index.
    let all: Vec<_> = f.dir.stitched(&f.manifest, &live(&f)[..], 0).collect();
    assert_eq!(all.iter().filter(|r| r.is_ok()).count(), 5);
    assert!(all.last().unwrap().is_err());
}

#[test]
fn wrong_count_and_missing_file_are_located() {
    let mut f = fixture(20, &[5, 12]);
    // Manifest claims one record fewer than the file holds (and sha256 still matches).
    f.manifest.snapshots[0].count = 4;
    f.manifest.snapshots[1].first_index = 4;
    f.manifest.next_index -= 1;
    let e = f.dir.stitched(&f.manifest, &encode(&f.log[12..])[..], 0).find_map(|r| r.err()).unwrap();
    assert_eq!(e.reason, StitchReason::Count { want: 4, got: 5 });
    assert_eq!(e.at.record, 4);

    let f = fixture(20, &[5]);
    std::fs::remove_file(f.dir.snap_path(1)).unwrap();
    let e = f.dir.stitched(&f.manifest, &live(&f)[..], 0).next().unwrap().unwrap_err();
    assert!(matches!(e.reason, StitchReason::Io(_)), "{e}");
}

#[test]
fn live_list_must_continue_the_last_snapshot() {
    let f = fixture(20, &[5, 12]);
    // A live list that starts one record late: the head is not the end marker.
    let late = encode(&f.log[13..]);
    let e = f.dir.stitched(&f.manifest, &late[..], 0).find_map(|r| r.err()).unwrap();
    assert_eq!(e.segment, Segment::Live);
    assert_eq!(e.at.record, 12);
    assert!(matches!(e.reason, StitchReason::Discontinuity(_)), "{e}");
    // Truncated live list: a located decoding error.
    let mut l = live(&f);
    l.truncate(l.len() - 3);
    let e = f.dir.stitched(&f.manifest, &l[..], 12).find_map(|r| r.err()).unwrap();
    assert_eq!(e.segment, Segment::Live);
    assert_eq!(e.at.record, f.log.len() as u64 - 1);
    assert!(matches!(e.reason, StitchReason::Log(imasnap_log::Reason::Truncated { .. })), "{e}");
    // Without snapshots, record 0 must be this boot's boot_aggregate.
    let f0 = fixture(5, &[]);
    let e = f0.dir.stitched(&f0.manifest, &encode(&f0.log[1..])[..], 0).find_map(|r| r.err()).unwrap();
    assert!(matches!(e.reason, StitchReason::Discontinuity(_)), "{e}");
}

#[test]
fn recovery_decisions() {
    let f = fixture(20, &[5]);
    let (_, m2) = marker(2, 99);
    let p =
        Pending { seq: 2, first_index: 5, count: 6, marker: MarkerRef::from_record(&m2).unwrap(), checkpoint: None };
    assert_eq!(decide(&f.manifest, &p, &m2), Decision::Commit);
    // Head still the previous marker: aborted.
    assert_eq!(decide(&f.manifest, &p, &f.log[5]), Decision::Drop);
    // Same digest text but a different attempt is not the same marker.
    let mut other = p.clone();
    other.marker.attempt = 3;
    assert_eq!(decide(&f.manifest, &other, &m2), Decision::Drop);
    // A pending the manifest already holds.
    let done = Pending {
        seq: 1,
        first_index: 0,
        count: 5,
        marker: f.manifest.snapshots[0].end_marker.clone().unwrap(),
        checkpoint: None,
    };
    assert_eq!(decide(&f.manifest, &done, &f.log[5]), Decision::AlreadyCommitted);
}

#[test]
fn leftovers_and_their_removal() {
    let f = fixture(20, &[5]);
    let p = Pending {
        seq: 2,
        first_index: 5,
        count: 3,
        marker: MarkerRef::from_record(&marker(2, 1).1).unwrap(),
        checkpoint: None,
    };
    f.dir.write_pending_tmp(&p).unwrap();
    f.dir.install_pending().unwrap();
    let mut t = f.dir.create_tentative(2).unwrap();
    t.write(&encode(&f.log[5..8])).unwrap();
    drop(t);
    f.dir.write_manifest_tmp(&f.manifest).unwrap();
    assert_eq!(f.dir.read_pending().unwrap(), Some(p));
    assert_eq!(
        f.dir.leftovers(&f.manifest).unwrap(),
        vec![".tmp-000002.snap".to_string(), ".tmp-manifest.json".into(), "pending.json".into()]
    );
    assert!(f.dir.remove_leftovers(&f.manifest).is_err(), "pending must be decided first");
    assert!(f.dir.remove_pending().unwrap());
    assert_eq!(f.dir.remove_leftovers(&f.manifest).unwrap().len(), 2);
    assert!(f.dir.leftovers(&f.manifest).unwrap().is_empty());
    assert!(f.dir.snap_path(1).exists());
}

#[test]
fn tentative_refuses_garbage_and_partial_records() {
    let f = fixture(3, &[]);
    let mut t = f.dir.create_tentative(1).unwrap();
    let e = t.write(&[0xff; 64]).unwrap_err();
    assert!(e.to_string().contains("record 0 at byte offset 0"), "{e}");
    let mut t = f.dir.create_tentative(1).unwrap();
    let b = encode(&f.log);
    t.write(&b[..b.len() - 1]).unwrap();
    assert_eq!(t.count(), 3);
    let e = t.finish().unwrap_err();
    assert!(e.to_string().contains("record 3"), "{e}");
}

#[test]
fn manifest_of_another_boot_or_garbage_is_refused() {
    let f = fixture(3, &[]);
    std::fs::write(f.dir.manifest_path(), b"{\"format\":").unwrap();
    assert!(matches!(f.dir.load_manifest(), Err(StoreError::Manifest { .. })));
    let mut other = f.manifest.clone();
    other.boot.reset_count = 4;
    std::fs::write(f.dir.manifest_path(), serde_json::to_vec(&other).unwrap()).unwrap();
    let e = f.dir.load_manifest().unwrap_err();
    assert!(e.to_string().contains("belongs to boot r4-"), "{e}");
}

#[test]
fn retention_archive_and_delete() {
    let f = fixture(10, &[4]);
    let id = f.dir.id().clone();
    assert_eq!(f.store.list_boots().unwrap(), vec![id.clone()]);
    assert!(f.store.create_boot(&f.manifest).is_err(), "exists");
    let a = f.store.retire(&id, Retention::Archive).unwrap().unwrap();
    assert!(a.join("000001.snap").exists());
    assert!(f.store.list_boots().unwrap().is_empty());
    // Same boot id again (identical TPM state): the archive name gets a suffix.
    let d2 = f.store.create_boot(&Manifest::new(f.manifest.boot.clone(), f.manifest.banks.clone(), 10)).unwrap();
    assert_eq!(d2.load_manifest().unwrap().snapshots.len(), 0);
    f.store.retire(&id, Retention::Archive).unwrap();
    assert_eq!(f.store.list_archive().unwrap(), vec![id.to_string(), format!("{id}.1")]);
    f.store.create_boot(&Manifest::new(f.manifest.boot.clone(), f.manifest.banks.clone(), 10)).unwrap();
    assert_eq!(f.store.retire(&id, Retention::Delete).unwrap(), None);
    assert!(f.store.list_boots().unwrap().is_empty());
    assert_eq!(f.store.list_archive().unwrap().len(), 2);
    // Half-made boot directories are cleaned on open.
    std::fs::create_dir(f.store.boots_dir().join(".tmp-r9-0000000000000000")).unwrap();
    std::fs::create_dir(f.store.boots_dir().join(".del-r9-0000000000000000")).unwrap();
    let s = Store::open(f.store.root()).unwrap();
    assert_eq!(std::fs::read_dir(s.boots_dir()).unwrap().count(), 0);
}

#[test]
fn boot_id_shape() {
    let b = BootInfo { reset_count: 3, boot_aggregate_sha1: "0123456789abcdef".repeat(2) + "01234567" };
    let id = BootId::of(&b);
    assert_eq!(id.as_str(), "r3-0123456789abcdef");
    assert_eq!(BootId::parse("r3-0123456789abcdef").unwrap(), id);
    assert_eq!(id.reset_count(), 3);
    for bad in ["3-0123456789abcdef", "r3-0123456789ABCDEF", "r-0123456789abcdef", "r3-0123", "rx-0123456789abcdef"] {
        assert!(BootId::parse(bad).is_err(), "{bad}");
    }
}
