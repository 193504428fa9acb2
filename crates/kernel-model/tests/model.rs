#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test
use imasnap_kernel_model::{Config, Fault, Kernel, KernelError, PcrMode};
use imasnap_log::marker::Marker;
use imasnap_log::*;
use imasnap_test_support::kernel::{self, file_digest};
use imasnap_test_support::records::parse;
use imasnap_tpm::{SoftTpm, Tpm};

fn kernel(mode: PcrMode) -> Kernel<SoftTpm> {
    kernel::boot_with(Config { pcr_mode: mode, ..Config::default() }, SoftTpm::new(1))
}

/// Replays `recs` and compares with the TPM's PCR 10 in both banks.
fn assert_replays_to_tpm(recs: &[Record], k: &mut Kernel<SoftTpm>) {
    let mut rp = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]));
    rp.push_batch(recs).unwrap();
    let rep = rp.finish();
    assert_eq!(rep.mismatch_count, 0);
    for a in [HashAlgo::Sha1, HashAlgo::Sha256] {
        let tpm = k.tpm_mut().pcr_read(a, &[10]).unwrap()[0];
        assert_eq!(rep.state().get(a, 10).unwrap(), &tpm, "{a}");
    }
}

#[test]
fn list_replays_to_tpm_with_dedup_and_violations() {
    let mut k = kernel(PcrMode::ExtendedUnderLock);
    assert!(k.measure_file(b"/bin/a", &file_digest(1)).unwrap());
    assert!(!k.measure_file(b"/bin/a", &file_digest(1)).unwrap(), "duplicate is not re-added");
    assert!(k.measure_file(b"/bin/a", &file_digest(2)).unwrap(), "changed file is re-measured");
    k.violation(b"/tmp/x").unwrap();
    assert!(k.measure_buffer(b"kernel_version", b"6.12.0").unwrap());
    assert_eq!(k.len(), 5);
    let recs = parse(&k.binary_measurements(HashAlgo::Sha1));
    assert_eq!(recs[0].name(Endian::Little).unwrap(), "boot_aggregate");
    assert!(recs[3].is_violation());
    assert_replays_to_tpm(&recs, &mut k);
    // boot_aggregate matches the TPM's PCR 0-9 (sha256 bank).
    let pcrs = k.tpm_mut().pcr_read(HashAlgo::Sha256, &(0..10).collect::<Vec<_>>()).unwrap();
    assert!(digest::check_boot_aggregate(&recs[0], Endian::Little, |_| Some(pcrs.clone())).unwrap());
}

#[test]
fn snapshot_protocol_both_modes() {
    for mode in [PcrMode::TpmUnderLock, PcrMode::ExtendedUnderLock] {
        let mut k = kernel(mode);
        kernel::measure_files(&mut k, "/f", 0, 10);
        let before = parse(&k.binary_measurements(HashAlgo::Sha1));
        let h = k.snapshot_open().unwrap();
        assert_eq!((h.attempt, h.records), (1, 11));
        assert_eq!(k.snapshot_open().unwrap_err(), KernelError::Busy("snapshot is already open"));
        // Appends continue while the file is open.
        k.measure_file(b"/late", &file_digest(99)).unwrap();
        let snap = parse(&k.snapshot_read(&h, 0, usize::MAX).unwrap());
        assert_eq!(snap, before, "read returns exactly the records before the marker");
        let live = parse(&k.binary_measurements(HashAlgo::Sha1));
        let m = Marker::from_record(&live[11], Endian::Little).unwrap().expect("marker at position 11");
        // The marker's PCR 10 equals the replay of everything before it, in every bank.
        let mut rp = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]));
        rp.push_batch(&before).unwrap();
        for a in [HashAlgo::Sha1, HashAlgo::Sha256] {
            assert_eq!(&m.bank(a).unwrap()[10], rp.state().get(a, 10).unwrap(), "{mode:?} {a}");
        }
        assert_eq!(k.snapshot_done(&h).unwrap(), 11);
        k.snapshot_close(h);
        assert_eq!(k.removed(), 11);
        let live = parse(&k.binary_measurements(HashAlgo::Sha1));
        assert_eq!(live.len(), 2, "marker and the late record remain");
        assert!(Marker::from_record(&live[0], Endian::Little).unwrap().is_some());
        // Stitched: snapshot + live replays to the TPM.
        let all: Vec<Record> = snap.into_iter().chain(live).collect();
        assert_replays_to_tpm(&all, &mut k);
        assert!(k.last_pause().is_some());
    }
}

#[test]
fn close_without_done_aborts_and_marker_stays() {
    let mut k = kernel(PcrMode::ExtendedUnderLock);
    k.measure_file(b"/a", &file_digest(1)).unwrap();
    let h = k.snapshot_open().unwrap();
    k.snapshot_close(h);
    assert_eq!(k.len(), 3);
    let h2 = k.snapshot_open().unwrap();
    assert_eq!(h2.attempt, 2, "attempt counter moves on every open");
    assert_eq!(h2.records, 3, "the aborted marker is an ordinary record now");
    k.snapshot_done(&h2).unwrap();
    assert_eq!(k.len(), 1);
}

#[test]
fn faults_and_kexec() {
    let mut k = kernel(PcrMode::ExtendedUnderLock);
    k.inject(Fault::MarkerTpmRead);
    assert!(matches!(k.snapshot_open(), Err(KernelError::Injected(Fault::MarkerTpmRead))));
    assert_eq!(k.snapshot_attempts(), 0, "a failed PCR read leaves the attempt unspent");
    k.measure_file(b"/a", &file_digest(1)).unwrap();
    let h = k.snapshot_open().unwrap();
    k.snapshot_done(&h).unwrap();
    k.snapshot_close(h);
    k.measure_file(b"/b", &file_digest(2)).unwrap();
    // kexec: save between load and exec; done is refused once suspended.
    let h = k.snapshot_open().unwrap();
    let buf = k.kexec_save();
    assert_eq!(k.snapshot_done(&h), Err(KernelError::Busy("measurement suspended for kexec")));
    assert_eq!(
        k.measure_file(b"/late", &file_digest(3)),
        Err(KernelError::NoDevice("measurements suspended for kexec"))
    );
    // A duplicate is still a duplicate (the dedup check comes first, as in the kernel).
    assert_eq!(k.measure_file(b"/b", &file_digest(2)), Ok(false));
    let before = parse(&k.binary_measurements(HashAlgo::Sha1));
    let tpm = k.into_tpm();
    let mut k2 = Kernel::kexec_restore(Config::default(), tpm, &buf).unwrap();
    let after = parse(&k2.binary_measurements(HashAlgo::Sha1));
    assert_eq!(&after[..before.len()], &before[..], "restored records come first");
    assert_eq!(after[before.len()].name(Endian::Little).unwrap(), "boot_aggregate");
    // The list head is a marker; replay from its values reaches the TPM.
    let m = Marker::from_record(&after[0], Endian::Little).unwrap().unwrap();
    let mut rp = Replayer::resume(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]), m.to_state(), 0);
    rp.push_batch(&after).unwrap();
    let tpm10 = k2.tpm_mut().pcr_read(HashAlgo::Sha256, &[10]).unwrap()[0];
    assert_eq!(rp.state().get(HashAlgo::Sha256, 10).unwrap(), &tpm10);
    assert_eq!(k2.snapshot_open().unwrap().attempt, 1, "a new kernel restarts the counter");
}

/// Issue 11 bug 4: once a kexec segment is sized for the list, a marker could overflow
/// it, so snapshot opens are refused (EBUSY, the attempt counted) until the next boot.
#[test]
fn snapshot_refused_while_a_kexec_segment_is_loaded() {
    let mut k = kernel(PcrMode::ExtendedUnderLock);
    k.measure_file(b"/a", &file_digest(1)).unwrap();
    k.kexec_load();
    let len = k.len();
    for n in 1..=3 {
        assert_eq!(k.snapshot_open(), Err(KernelError::Busy("a kexec segment sized for the list is loaded")));
        assert_eq!(k.snapshot_attempts(), n);
    }
    assert_eq!(k.len(), len, "no marker was added");
    k.kexec().unwrap();
    assert_eq!(k.snapshot_open().unwrap().attempt, 1, "the next kernel takes snapshots again");
}

#[test]
fn ima_sig_template_carries_signature_xattrs_only() {
    let cfg = Config { template: "ima-sig".into(), ..Config::default() };
    let mut k = kernel::boot_with(cfg, SoftTpm::new(4));
    let sig = [0x03u8, 2, 4, 0xaa, 0xbb, 0xcc, 0xdd, 0, 2, 0x11, 0x22];
    assert!(k.measure_file_xattr(b"/signed", &file_digest(1), Some(&sig)).unwrap());
    // A hash xattr (IMA_XATTR_DIGEST_NG, 0x04) is not a signature: empty sig field.
    assert!(k.measure_file_xattr(b"/hashed", &file_digest(2), Some(&[0x04, 4, 1, 2, 3])).unwrap());
    assert!(k.measure_file_xattr(b"/plain", &file_digest(3), None).unwrap());
    // Same file, same signature: deduplicated like any measurement.
    assert!(!k.measure_file_xattr(b"/signed", &file_digest(1), Some(&sig)).unwrap());
    let recs = parse(&k.binary_measurements(HashAlgo::Sha1));
    assert_eq!(recs.len(), 4);
    let sig_field = |r: &Record| r.fields(Endian::Little).unwrap()[2].to_vec();
    assert_eq!(recs[1].template.name(), "ima-sig");
    assert_eq!(sig_field(&recs[1]), sig);
    assert!(sig_field(&recs[2]).is_empty());
    assert!(sig_field(&recs[3]).is_empty());
    assert_replays_to_tpm(&recs, &mut k);
}

/// kexec without giving up the kernel gives the same list and PCRs as save + restore.
#[test]
fn finding_13_kexec_in_place_matches_save_and_restore() {
    let run = |in_place: bool| {
        let mut k = kernel(PcrMode::ExtendedUnderLock);
        k.measure_file(b"/a", &file_digest(1)).unwrap();
        k.violation(b"/tmp/v").unwrap();
        let mut k = if in_place {
            k.kexec().unwrap();
            k
        } else {
            let buf = k.kexec_save();
            Kernel::kexec_restore(Config::default(), k.into_tpm(), &buf).unwrap()
        };
        k.measure_file(b"/b", &file_digest(2)).unwrap();
        let pcr = k.tpm_mut().pcr_read(HashAlgo::Sha256, &[10]).unwrap()[0];
        (k.binary_measurements(HashAlgo::Sha1), k.binary_measurements(HashAlgo::Sha256), pcr)
    };
    assert_eq!(run(true), run(false));
}

/// A template name from the config that does not parse is an error, not a panic.
#[test]
fn finding_13_bad_template_in_config_is_an_error() {
    let cfg = Config { template: "no-such|field".into(), ..Config::default() };
    match Kernel::boot(cfg, SoftTpm::new(1)) {
        Err(KernelError::Invalid(m)) => assert!(m.contains("no-such|field"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a bad template booted"),
    }
}
