#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test
//! The staging interface of the model against docs/STAGING.md's table, one row at a time.

use imasnap_kernel_model::{Config, Kernel, KernelError, MeasFile, StagingFault};
use imasnap_log::*;
use imasnap_test_support::kernel::{self, file_digest};
use imasnap_test_support::records::{parse, parse_bank};
use imasnap_tpm::{SoftTpm, Tpm};

const AGENT: u32 = 100;
const KEYLIME: u32 = 200;

fn boot(cfg: Config, files: u64) -> Kernel<SoftTpm> {
    let mut k = kernel::boot_with(cfg, SoftTpm::new(7));
    kernel::measure_files(&mut k, "/f", 0, files);
    k
}

fn staged_fd(k: &mut Kernel<SoftTpm>) -> imasnap_kernel_model::MeasFd {
    k.open(MeasFile::BINARY_STAGED, true, AGENT, true).unwrap()
}

fn errno<T>(r: Result<T, KernelError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.errno(),
    }
}

fn replays_to_tpm(recs: &[Record], k: &mut Kernel<SoftTpm>) {
    let banks = Kernel::banks(k).to_vec();
    let mut rp = Replayer::new(ReplayOptions::new(&banks));
    rp.push_batch(recs).unwrap();
    let rep = rp.finish();
    for a in banks {
        let tpm = k.tpm_mut().pcr_read(a, &[10]).unwrap()[0];
        assert_eq!(rep.state().get(a, 10).unwrap(), &tpm, "{a}");
    }
}

#[test]
fn a_read_d_moves_and_frees_the_whole_list() {
    let mut k = boot(Config::default(), 5);
    let all = parse(&k.binary_measurements(HashAlgo::Sha1));
    let fd = staged_fd(&mut k);
    assert_eq!(k.write(&fd, b"A\n").unwrap(), 2);
    assert_eq!((k.len(), k.staged_len(), k.runtime_measurements_count()), (0, 6, 0));
    assert_eq!(parse(&k.read(&fd).unwrap()), all, "the staged file shows the moved records");
    // Measurements go on into the (new) current list meanwhile.
    k.measure_file(b"/late", &file_digest(50)).unwrap();
    assert_eq!(k.runtime_measurements_count(), 1);
    assert_eq!(errno(k.write(&fd, b"A\n")), "EEXIST", "staged list not empty");
    k.write(&fd, b"D\n").unwrap();
    assert_eq!((k.staged_len(), k.staging_deleted()), (0, 6));
    assert_eq!(errno(k.write(&fd, b"D\n")), "ENOENT", "nothing staged");
    assert!(k.read(&fd).unwrap().is_empty());
    let mut stitched = all;
    stitched.extend(parse(&k.binary_measurements(HashAlgo::Sha1)));
    replays_to_tpm(&stitched, &mut k);
    // Per-bank staged files show that bank's digests; ascii lines too.
    k.write(&fd, b"A\n").unwrap();
    let sha256 = MeasFile { bank: HashAlgo::Sha256, ascii: false, staged: true };
    let f256 = k.open(sha256, false, AGENT, true).unwrap();
    let recs = parse_bank(&k.read(&f256).unwrap(), HashAlgo::Sha256);
    assert_eq!(recs[0].digest.len(), 32);
    let ascii = k.open(MeasFile { ascii: true, ..MeasFile::BINARY_STAGED }, false, AGENT, true).unwrap();
    let text = String::from_utf8(k.read(&ascii).unwrap()).unwrap();
    assert!(text.starts_with("10 ") && text.contains("/late"), "{text}");
    assert_eq!(sha256.name(), "binary_runtime_measurements_sha256_staged");
}

#[test]
fn a_on_an_empty_list_and_while_suspended() {
    let mut k = boot(Config::default(), 0);
    let fd = staged_fd(&mut k);
    k.write(&fd, b"A\n").unwrap();
    k.write(&fd, b"D\n").unwrap();
    assert_eq!(errno(k.write(&fd, b"A\n")), "ENOENT", "current list empty");
    k.measure_file(b"/x", &file_digest(1)).unwrap();
    k.write(&fd, b"A\n").unwrap();
    k.measure_file(b"/y", &file_digest(2)).unwrap();
    let _buf = k.kexec_save();
    k.measure_file(b"/z", &file_digest(3)).unwrap_err();
    assert_eq!(errno(k.write(&fd, b"D\n")), "ESTALE", "D while suspended");
    let orig = k.open(MeasFile::BINARY, true, AGENT, true).unwrap();
    assert_eq!(errno(k.write(&orig, b"1\n")), "ESTALE", "N while suspended");
    // A needs staging empty first: a fresh kernel state where only suspension stands in the way.
    let mut k2 = boot(Config::default(), 2);
    let fd2 = staged_fd(&mut k2);
    k2.kexec_save();
    assert_eq!(errno(k2.write(&fd2, b"A\n")), "EACCES", "A while suspended");
}

#[test]
fn n_deletes_exactly_the_first_n() {
    let mut k = boot(Config::default(), 9);
    let all = parse(&k.binary_measurements(HashAlgo::Sha1));
    let fd = k.open(MeasFile::BINARY, true, AGENT, true).unwrap();
    assert_eq!(errno(k.write(&fd, b"0\n")), "EINVAL", "N = 0");
    assert_eq!(errno(k.write(&fd, b"11\n")), "ENOENT", "fewer than N");
    k.write(&fd, b"4\n").unwrap();
    assert_eq!(parse(&k.binary_measurements(HashAlgo::Sha1)), all[4..].to_vec());
    assert_eq!(k.runtime_measurements_count(), 6);
    assert_eq!(errno(k.write(&fd, b"18446744073709551615\n")), "ENOENT", "ULONG_MAX parses");
    assert_eq!(errno(k.write(&fd, b"18446744073709551616\n")), "EINVAL", "beyond ULONG_MAX");
    replays_to_tpm(&all, &mut k);
}

#[test]
fn malformed_and_misplaced_writes_are_einval() {
    let mut k = boot(Config::default(), 3);
    let st = staged_fd(&mut k);
    let orig = k.open(MeasFile::BINARY, true, AGENT, true).unwrap();
    for (fd, buf, why) in [
        (&st, &b"A"[..], "no newline"),
        (&st, b"\n", "too short"),
        (&st, b"AAAAAAAAAAAAAAAAAAAAAA\n", "too long"),
        (&st, b"N\n", "N on a staged file"),
        (&st, b"3\n", "a count on a staged file"),
        (&orig, b"A\n", "A on an original"),
        (&orig, b"D\n", "D on an original"),
        (&orig, b"-1\n", "negative"),
        (&orig, b" 1\n", "space"),
        (&orig, b"1x\n", "trailing junk"),
    ] {
        assert_eq!(errno(k.write(fd, buf)), "EINVAL", "{why}");
    }
    assert_eq!(k.len(), 4, "nothing changed");
}

#[test]
fn many_readers_or_one_writer_across_all_files() {
    let mut k = boot(Config::default(), 2);
    assert_eq!(errno(k.open(MeasFile::BINARY_STAGED, true, AGENT, false)), "EPERM", "no CAP_SYS_ADMIN");
    let r1 = k.open(MeasFile::ASCII, false, KEYLIME, true).unwrap();
    let r2 = k.open(MeasFile::BINARY, false, KEYLIME + 1, true).unwrap();
    assert_eq!(errno(k.open(MeasFile::BINARY_STAGED, true, AGENT, true)), "EBUSY", "readers present");
    assert_eq!(errno(k.snapshot_open()), "EBUSY", "the RFC writer too");
    k.close(r1);
    k.close(r2);
    let w = staged_fd(&mut k);
    let w2 = k.open(MeasFile::BINARY, true, AGENT, true).unwrap();
    let own = k.open(MeasFile::BINARY, false, AGENT, true).unwrap();
    assert_eq!(errno(k.open(MeasFile::ASCII, false, KEYLIME, true)), "EBUSY", "a reader while a writer holds it");
    assert_eq!(errno(k.open(MeasFile::BINARY, true, KEYLIME, true)), "EBUSY", "a second writer");
    k.close(w);
    k.close(w2);
    let other = k.open(MeasFile::ASCII, false, KEYLIME, true).expect("readers together");
    k.close(own);
    k.close(other);
    // The writer died: the kernel closes its files.
    let _w = staged_fd(&mut k);
    k.process_exit();
    assert_eq!(errno(k.open(MeasFile::ASCII, false, KEYLIME, true)), "ok");
    // A read-only descriptor cannot write.
    let ro = k.open(MeasFile::BINARY, false, KEYLIME, true).unwrap();
    assert_eq!(errno(k.write(&ro, b"1\n")), "EBADF");
}

#[test]
fn hash_table_kept_by_default_flushed_on_d_with_ima_flush_htable() {
    for keep in [true, false] {
        let mut k = boot(Config { keep_dedup_on_done: keep, ..Config::default() }, 3);
        let fd = staged_fd(&mut k);
        k.write(&fd, b"A\n").unwrap();
        k.measure_file(b"/in-current", &file_digest(77)).unwrap();
        k.write(&fd, b"D\n").unwrap();
        let again = k.measure_file(b"/f1", &file_digest(1)).unwrap();
        assert_eq!(again, !keep, "a deleted record's file is measured again only after a flush");
        let current = k.measure_file(b"/in-current", &file_digest(77)).unwrap();
        assert_eq!(current, !keep, "the flush swaps in an empty table: current records' digests go too");
        let orig = k.open(MeasFile::BINARY, true, AGENT, true).unwrap();
        assert_eq!(errno(k.write(&orig, b"1\n")), if keep { "ok" } else { "EINVAL" }, "N and ima_flush_htable");
    }
}

#[test]
fn kexec_puts_staged_records_ahead_of_the_current_list() {
    let mut k = boot(Config::default(), 4);
    let all = parse(&k.binary_measurements(HashAlgo::Sha1));
    let fd = staged_fd(&mut k);
    k.write(&fd, b"A\n").unwrap();
    kernel::measure_files(&mut k, "/g", 10, 3);
    let current = parse(&k.binary_measurements(HashAlgo::Sha1));
    k.kexec().unwrap();
    let after = parse(&k.binary_measurements(HashAlgo::Sha1));
    assert_eq!(k.staged_len(), 0, "staging aborted");
    assert_eq!(after.len(), all.len() + current.len() + 1);
    assert_eq!(after[..all.len()], all[..], "staged records first");
    assert_eq!(after[all.len()..all.len() + 3], current[..]);
    assert_eq!(after.last().unwrap().name(Endian::Little).unwrap(), "boot_aggregate");
    assert_eq!(k.runtime_measurements_count(), after.len() as u64);
    replays_to_tpm(&after, &mut k);
    // The new kernel accepts commands again; the old descriptor did not survive.
    assert_eq!(errno(k.write(&fd, b"A\n")), "EINVAL");
    let fd = staged_fd(&mut k);
    k.write(&fd, b"A\n").unwrap();
}

#[test]
fn every_fault_leaves_the_state_unchanged() {
    for f in [StagingFault::Open, StagingFault::Read, StagingFault::Stage, StagingFault::Delete, StagingFault::Trim] {
        let mut k = boot(Config::default(), 3);
        let fd = staged_fd(&mut k);
        let orig = k.open(MeasFile::BINARY, true, AGENT, true).unwrap();
        if f == StagingFault::Delete {
            k.write(&fd, b"A\n").unwrap();
        }
        let before = (k.len(), k.staged_len(), k.staging_deleted());
        k.inject_staging(f);
        let r = match f {
            StagingFault::Open => k.open(MeasFile::ASCII, false, AGENT, true).map(|_| 0),
            StagingFault::Read => k.read(&fd).map(|_| 0),
            StagingFault::Stage => k.write(&fd, b"A\n"),
            StagingFault::Delete => k.write(&fd, b"D\n"),
            StagingFault::Trim => k.write(&orig, b"2\n"),
        };
        assert_eq!(errno(r), "EIO", "{f:?}");
        assert_eq!((k.len(), k.staged_len(), k.staging_deleted()), before, "{f:?}");
    }
}

#[test]
fn without_config_ima_staging_there_is_nothing_to_write() {
    let mut k = boot(Config { staging: false, ..Config::default() }, 1);
    assert_eq!(errno(k.open(MeasFile::BINARY_STAGED, false, AGENT, true)), "ENOENT");
    assert_eq!(errno(k.open(MeasFile::BINARY, true, AGENT, true)), "EACCES");
    assert_eq!(errno(k.open(MeasFile::BINARY, false, AGENT, true)), "ok");
}

/// A read after lseek(offset) gives the file's bytes from there on, for every offset
/// (mid-record and past the end too), after trims and violations, with SHA1 first or
/// last among the banks (the SHA1 list's size is kept, and the walk starts from it).
#[test]
fn read_at_is_the_file_from_the_offset() {
    for banks in
        [vec![HashAlgo::Sha1, HashAlgo::Sha256], vec![HashAlgo::Sha256, HashAlgo::Sha1], vec![HashAlgo::Sha256]]
    {
        let mut k = kernel::boot_with(Config::default(), SoftTpm::with_banks(7, &banks).unwrap());
        kernel::measure_files(&mut k, "/f", 0, 12);
        k.violation(b"/tomtou").unwrap();
        k.measure_buffer(b"kexec-cmdline", b"root=/dev/vda").unwrap();
        let fd = k.open(MeasFile::BINARY, true, AGENT, true).unwrap();
        k.write(&fd, b"3\n").unwrap();
        k.close(fd);
        kernel::measure_files(&mut k, "/g", 0, 5);
        for file in [MeasFile::BINARY, MeasFile { bank: HashAlgo::Sha256, ..MeasFile::BINARY }, MeasFile::ASCII] {
            let r = k.open(file, false, AGENT, true).unwrap();
            let all = k.read(&r).unwrap();
            for off in (0..all.len() + 40).step_by(7).chain([all.len(), all.len() + 1]) {
                let want = all.get(off..).unwrap_or_default();
                assert_eq!(k.read_at(&r, off as u64).unwrap(), want, "banks {banks:?} {file:?} offset {off}");
            }
            k.close(r);
        }
        assert_eq!(k.list_bytes(), k.binary_measurements(HashAlgo::Sha1).len() as u64, "banks {banks:?}");
    }
}
