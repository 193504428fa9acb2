//! One test per class of bad input: each asserts the record index, the byte offset and the
//! reason variant of the located error, and that the records before it were delivered.
//!
//! The inputs are the real ima-ng kernel log (9 records) with one defect spliced in, so the
//! offsets are those of a real list. A counting global allocator checks that lying length
//! fields are refused without allocating what they claim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_log::codec::DEFAULT_MAX_TEMPLATE_DATA;
use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::template::MAX_TEMPLATE_NAME;
use imasnap_log::{kexec, AsciiReader, BinaryFormat, BinaryReader, Endian, Error, HashAlgo, Location, Reason, Record};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made on this thread while tracking.
// ---------------------------------------------------------------------------------------

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// Test-only: a counting allocator proves memory stays bounded by a record.
// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Runs `f`, returning its result, the largest single allocation it made, and the time taken.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let t0 = Instant::now();
    let out = f();
    let dt = t0.elapsed();
    TRACK.with(|t| t.set(false));
    (out, LARGEST.with(|l| l.get()), dt)
}

/// Bound on any single allocation while reading a lying header: the reader's 128 KiB chunk
/// buffer is fine, anything near the claimed length is not.
const ALLOC_BOUND: usize = 1 << 20;

#[test]
fn allocation_tracker_sees_large_allocations() {
    let (v, largest, _) = measured(|| vec![1u8; 4 << 20]);
    assert!(largest >= 4 << 20, "tracker saw {largest}");
    drop(v);
    let ((), largest, _) = measured(|| ());
    assert_eq!(largest, 0);
}

// ---------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------

const LE: Endian = Endian::Little;
const SHA1_DL: usize = 20;

fn ima_ng_binary() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/real-kernel/ima-ng/binary_runtime_measurements");
    std::fs::read(p).unwrap()
}

fn ima_ng_ascii() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/real-kernel/ima-ng/ascii_runtime_measurements");
    std::fs::read(p).unwrap()
}

/// The records of the fixture and the byte offset each starts at.
fn records() -> (Vec<Record>, Vec<usize>) {
    let bin = ima_ng_binary();
    let recs: Vec<Record> =
        BinaryReader::new(&bin[..], BinaryFormat::new(HashAlgo::Sha1)).collect::<Result<_, _>>().unwrap();
    let mut starts = Vec::new();
    let mut p = 0;
    for r in &recs {
        starts.push(p);
        p += r.encoded_len();
    }
    assert_eq!(p, bin.len());
    assert_eq!(recs.len(), 9);
    (recs, starts)
}

fn encode(recs: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        r.encode(LE, &mut out);
    }
    out
}

/// Reads `bytes` as a binary log; returns how many records came out before the error.
fn binary_error(bytes: &[u8], fmt: BinaryFormat) -> (usize, Error) {
    let mut ok = 0;
    for r in BinaryReader::new(bytes, fmt) {
        match r {
            Ok(_) => ok += 1,
            Err(e) => return (ok, e),
        }
    }
    panic!("no error after {ok} records");
}

fn sha1_error(bytes: &[u8]) -> (usize, Error) {
    binary_error(bytes, BinaryFormat::new(HashAlgo::Sha1))
}

fn ascii_error(bytes: &[u8], digest_len: usize) -> (usize, Error) {
    let mut ok = 0;
    for r in AsciiReader::new(bytes, digest_len, LE) {
        match r {
            Ok(_) => ok += 1,
            Err(e) => return (ok, e),
        }
    }
    panic!("no error after {ok} records");
}

fn at(record: u64, offset: usize) -> Location {
    Location { record, offset: offset as u64, line: None }
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// Message of a located error: names the record and the byte offset.
fn assert_message(e: &Error) {
    let m = e.to_string();
    assert!(m.starts_with(&format!("record {} at byte offset {}", e.at.record, e.at.offset)), "{m}");
}

// ---------------------------------------------------------------------------------------
// Truncation
// ---------------------------------------------------------------------------------------

/// The log stops `keep` bytes into record 3.
fn truncated_in_record_3(keep: usize) -> (usize, Error, usize) {
    let (_, starts) = records();
    let bin = ima_ng_binary();
    let cut = starts[3] + keep;
    let (ok, e) = sha1_error(&bin[..cut]);
    (ok, e, starts[3])
}

#[test]
fn truncated_in_the_header() {
    let (ok, e, start) = truncated_in_record_3(10);
    assert_eq!(ok, 3);
    assert_eq!(e.at, at(3, start));
    assert_eq!(e.reason, Reason::Truncated { what: "record header", needed: 28, available: 10 });
    assert_message(&e);
}

#[test]
fn truncated_in_the_template_name() {
    // Header is 4 + 20 + 4 bytes; the name `ima-ng` is bytes 28..34.
    let (ok, e, start) = truncated_in_record_3(30);
    assert_eq!(ok, 3);
    assert_eq!(e.at, at(3, start));
    assert_eq!(e.reason, Reason::Truncated { what: "template name", needed: 34, available: 30 });
}

#[test]
fn truncated_in_the_template_data_length() {
    let (ok, e, start) = truncated_in_record_3(36);
    assert_eq!(ok, 3);
    assert_eq!(e.at, at(3, start));
    assert_eq!(e.reason, Reason::Truncated { what: "template data length", needed: 38, available: 36 });
}

#[test]
fn truncated_in_the_template_data() {
    let (recs, _) = records();
    let full = recs[3].encoded_len();
    let (ok, e, start) = truncated_in_record_3(full - 1);
    assert_eq!(ok, 3);
    assert_eq!(e.at, at(3, start));
    assert_eq!(e.reason, Reason::Truncated { what: "template data", needed: full as u64, available: full as u64 - 1 });
    assert_message(&e);
}

#[test]
fn truncated_last_record() {
    let bin = ima_ng_binary();
    let (_, starts) = records();
    let (ok, e) = sha1_error(&bin[..bin.len() - 1]);
    assert_eq!(ok, 8);
    assert_eq!(e.at, at(8, starts[8]));
    assert!(matches!(e.reason, Reason::Truncated { what: "template data", .. }), "{e}");
}

#[test]
fn trailing_bytes_after_the_last_record() {
    let mut bin = ima_ng_binary();
    let len = bin.len();
    bin.extend_from_slice(&[0, 0, 0]);
    let (ok, e) = sha1_error(&bin);
    assert_eq!(ok, 9);
    assert_eq!(e.at, at(9, len));
    assert_eq!(e.reason, Reason::Truncated { what: "record header", needed: 28, available: 3 });
}

// ---------------------------------------------------------------------------------------
// Lying lengths
// ---------------------------------------------------------------------------------------

/// Record 2 with its template data length word replaced.
fn with_data_len(len: u32) -> (Vec<u8>, usize) {
    let (_, starts) = records();
    let mut bin = ima_ng_binary();
    let p = starts[2] + 4 + SHA1_DL + 4 + 6;
    bin[p..p + 4].copy_from_slice(&le32(len));
    (bin, p)
}

#[test]
fn absurd_template_data_length_errors_without_allocating() {
    let (bin, p) = with_data_len(0xffff_ffff);
    let ((ok, e), largest, dt) = measured(|| sha1_error(&bin));
    assert_eq!(ok, 2);
    assert_eq!(e.at, at(2, p), "offset of the length word");
    assert_eq!(
        e.reason,
        Reason::AbsurdLength { what: "template data", len: 0xffff_ffff, limit: DEFAULT_MAX_TEMPLATE_DATA as u64 }
    );
    assert!(largest < ALLOC_BOUND, "largest allocation {largest} bytes");
    assert!(dt < Duration::from_secs(1), "took {dt:?}");
    assert_message(&e);
}

#[test]
fn template_data_length_under_the_limit_but_past_the_end_does_not_allocate_it() {
    // Plausible length (16 MiB - 1), but the file ends: truncation, and the reader's buffer
    // only grows as bytes arrive.
    let (mut bin, p) = with_data_len(DEFAULT_MAX_TEMPLATE_DATA);
    let (_, starts) = records();
    bin.truncate(starts[3]);
    let ((ok, e), largest, dt) = measured(|| sha1_error(&bin));
    assert_eq!(ok, 2);
    assert_eq!(e.at, at(2, starts[2]));
    let needed = (p - starts[2] + 4) as u64 + DEFAULT_MAX_TEMPLATE_DATA as u64;
    assert_eq!(
        e.reason,
        Reason::Truncated { what: "template data", needed, available: (starts[3] - starts[2]) as u64 }
    );
    assert!(largest < ALLOC_BOUND, "largest allocation {largest} bytes");
    assert!(dt < Duration::from_secs(1), "took {dt:?}");
}

#[test]
fn absurd_template_name_length() {
    let (_, starts) = records();
    for len in [0xffff_ffffu32, MAX_TEMPLATE_NAME as u32 + 1, 0] {
        let mut bin = ima_ng_binary();
        let p = starts[4] + 4 + SHA1_DL;
        bin[p..p + 4].copy_from_slice(&le32(len));
        let ((ok, e), largest, _) = measured(|| sha1_error(&bin));
        assert_eq!(ok, 4);
        assert_eq!(e.at, at(4, p), "offset of the name length word");
        assert_eq!(
            e.reason,
            Reason::AbsurdLength { what: "template name", len: len as u64, limit: MAX_TEMPLATE_NAME as u64 }
        );
        assert!(largest < ALLOC_BOUND);
    }
}

#[test]
fn absurd_legacy_ima_name_length() {
    // Vector B (legacy `ima`, /init) with its name length set to 256.
    let mut b = hex::decode(
        "0a0000002c7020ad8cab6b7419e4973171cb704bdbf52f7703000000696d61\
         e09e048c48301268ff38645f4c006137e42951d0050000002f696e6974",
    )
    .unwrap();
    let mut log = ima_ng_binary();
    let start = log.len();
    let p = 4 + SHA1_DL + 4 + 3 + 20;
    b[p..p + 4].copy_from_slice(&le32(256));
    log.extend_from_slice(&b);
    let (ok, e) = sha1_error(&log);
    assert_eq!(ok, 9);
    assert_eq!(e.at, at(9, start + p));
    assert_eq!(e.reason, Reason::AbsurdLength { what: "ima template name", len: 256, limit: 255 });
}

// ---------------------------------------------------------------------------------------
// Templates and fields
// ---------------------------------------------------------------------------------------

/// A raw record with any template name and template data.
fn raw_record(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = le32(10).to_vec();
    v.extend_from_slice(&[0x11; SHA1_DL]);
    v.extend_from_slice(&le32(name.len() as u32));
    v.extend_from_slice(name);
    v.extend_from_slice(&le32(data.len() as u32));
    v.extend_from_slice(data);
    v
}

fn ima_ng_data() -> Vec<u8> {
    Record::encode_fields(&builtin("ima-ng"), &[&d_ng("sha256", &[7; 32]), &n_ng(b"/x")], LE)
}

/// The fixture's first five records, then `rec`: returns (log, offset of `rec`).
fn after_five(rec: &[u8]) -> (Vec<u8>, usize) {
    let (recs, _) = records();
    let mut log = encode(&recs[..5]);
    let start = log.len();
    log.extend_from_slice(rec);
    (log, start)
}

#[test]
fn unknown_template() {
    for name in [&b"bogus"[..], b"d-ng|nope", b"ima-ng2"] {
        let (log, start) = after_five(&raw_record(name, &ima_ng_data()));
        let (ok, e) = sha1_error(&log);
        assert_eq!(ok, 5);
        assert_eq!(e.at, at(5, start + 28), "offset of the template name");
        assert_eq!(e.reason, Reason::UnknownTemplate(String::from_utf8(name.to_vec()).unwrap()));
    }
    // A name that is not text at all.
    let (log, start) = after_five(&raw_record(b"ima\xff", &ima_ng_data()));
    let (_, e) = sha1_error(&log);
    assert_eq!(e.at, at(5, start + 28));
    assert_eq!(e.reason, Reason::BadTemplateName);
}

#[test]
fn template_data_with_extra_bytes_after_the_last_field() {
    let mut data = ima_ng_data();
    data.extend_from_slice(&[1, 2, 3]);
    let (log, start) = after_five(&raw_record(b"ima-ng", &data));
    let (ok, e) = sha1_error(&log);
    assert_eq!(ok, 5);
    assert_eq!(e.at, at(5, start + 28 + 6 + 4), "offset of the template data");
    match &e.reason {
        Reason::FieldMismatch { template, detail } => {
            assert_eq!(template, "ima-ng");
            assert!(detail.contains("3 bytes left"), "{detail}");
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn template_data_with_a_short_field() {
    // The n-ng field claims 10 bytes; 3 follow.
    let mut data = ima_ng_data();
    let n_at = 4 + 8 + 32;
    data[n_at..n_at + 4].copy_from_slice(&le32(10));
    let (log, start) = after_five(&raw_record(b"ima-ng", &data));
    let (ok, e) = sha1_error(&log);
    assert_eq!(ok, 5);
    assert_eq!(e.at, at(5, start + 38));
    match &e.reason {
        Reason::FieldMismatch { template, detail } => {
            assert_eq!(template, "ima-ng");
            assert!(detail.contains("claims 10 bytes, 3 remain"), "{detail}");
        }
        r => panic!("{r:?}"),
    }
    // Too few fields: ima-sig data with only d-ng and n-ng.
    let (log, start) = after_five(&raw_record(b"ima-sig", &ima_ng_data()));
    let (_, e) = sha1_error(&log);
    assert_eq!(e.at, at(5, start + 28 + 7 + 4));
    assert!(matches!(&e.reason, Reason::FieldMismatch { detail, .. } if detail.contains("field 2 (sig)")), "{e}");
}

#[test]
fn ascii_line_with_the_wrong_field_count() {
    let text = ima_ng_ascii();
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    let mut bad = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == 4 {
            bad.extend_from_slice(&l[..l.len() - 1]);
            bad.extend_from_slice(b" extra\n");
        } else {
            bad.extend_from_slice(l);
        }
    }
    let offset: usize = lines[..4].iter().map(|l| l.len()).sum();
    let (ok, e) = ascii_error(&bad, 20);
    assert_eq!(ok, 4);
    assert_eq!(e.at, Location { record: 4, offset: offset as u64, line: Some(5) });
    assert!(
        matches!(&e.reason, Reason::FieldMismatch { detail, .. } if detail == "3 fields on the line, template has 2")
    );
    assert_eq!(e.to_string().split(':').next().unwrap(), format!("record 4 at byte offset {offset} (line 5)"));
}

// ---------------------------------------------------------------------------------------
// ASCII text and digest sizes
// ---------------------------------------------------------------------------------------

/// The fixture's ASCII list with line `n` (0-based) replaced by `f(line)`.
fn ascii_with_line(n: usize, f: impl Fn(&str) -> String) -> (Vec<u8>, usize) {
    let text = String::from_utf8(ima_ng_ascii()).unwrap();
    let mut out = String::new();
    let mut offset = 0;
    for (i, l) in text.lines().enumerate() {
        if i == n {
            offset = out.len();
            out.push_str(&f(l));
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    (out.into_bytes(), offset)
}

#[test]
fn non_hex_ascii() {
    // In the template digest column.
    let (bad, offset) = ascii_with_line(2, |l| l.replacen(' ', " zz", 1));
    let (ok, e) = ascii_error(&bad, 20);
    assert_eq!(ok, 2);
    assert_eq!(e.at, Location { record: 2, offset: offset as u64, line: Some(3) });
    assert!(matches!(&e.reason, Reason::BadHex { what: "template digest", .. }), "{e}");
    // In the hex part of a d-ng field.
    let (bad, offset) = ascii_with_line(6, |l| l.replacen("sha256:", "sha256:g", 1));
    let (ok, e) = ascii_error(&bad, 20);
    assert_eq!(ok, 6);
    assert_eq!(e.at, Location { record: 6, offset: offset as u64, line: Some(7) });
    assert!(matches!(&e.reason, Reason::BadHex { what: "d-ng", .. }), "{e}");
}

#[test]
fn ascii_digest_of_the_wrong_size_for_the_file() {
    // A 64-hex (sha256) template digest in a sha1 list.
    let (bad, offset) = ascii_with_line(1, |l| {
        let mut p = l.splitn(3, ' ').map(str::to_owned).collect::<Vec<_>>();
        p[1] = "ab".repeat(32);
        p.join(" ")
    });
    let (ok, e) = ascii_error(&bad, 20);
    assert_eq!(ok, 1);
    assert_eq!(e.at, Location { record: 1, offset: offset as u64, line: Some(2) });
    assert_eq!(e.reason, Reason::DigestSize { got: 32, want: 20 });
    // The whole sha1 list read as a sha256 list fails on its first line.
    let (ok, e) = ascii_error(&ima_ng_ascii(), 32);
    assert_eq!(ok, 0);
    assert_eq!(e.at, Location { record: 0, offset: 0, line: Some(1) });
    assert_eq!(e.reason, Reason::DigestSize { got: 20, want: 32 });
}

#[test]
fn binary_sha1_file_read_with_32_byte_digests() {
    // Reading the classic list as a `_sha256` file: the "name length" is then read from
    // bytes 36..40 of record 0, i.e. the top half of its template data length (0) and the
    // low half of the d-ng field length (0x28): 0x00280000. A located error, not a panic.
    let bin = ima_ng_binary();
    let fmt = BinaryFormat::new(HashAlgo::Sha256);
    let ((ok, e), largest, _) = measured(|| binary_error(&bin, fmt));
    assert_eq!(ok, 0);
    assert_eq!(e.at, at(0, 4 + 32));
    assert_eq!(
        e.reason,
        Reason::AbsurdLength { what: "template name", len: 0x0028_0000, limit: MAX_TEMPLATE_NAME as u64 }
    );
    assert!(largest < ALLOC_BOUND);
    // Every other bank size fails the same way, at its own header offset.
    for a in [HashAlgo::Sha384, HashAlgo::Sha512, HashAlgo::Sm3] {
        let (ok, e) = binary_error(&bin, BinaryFormat::new(a));
        assert_eq!(ok, 0, "{a}");
        assert_eq!(e.at.record, 0, "{a}");
        assert!(e.at.offset < bin.len() as u64, "{a}: {e}");
    }
}

#[test]
fn pcr_index_out_of_range() {
    let (_, starts) = records();
    let mut bin = ima_ng_binary();
    bin[starts[7]..starts[7] + 4].copy_from_slice(&le32(24));
    let (ok, e) = sha1_error(&bin);
    assert_eq!(ok, 7);
    assert_eq!(e.at, at(7, starts[7]));
    assert_eq!(e.reason, Reason::PcrIndex(24));
}

// ---------------------------------------------------------------------------------------
// kexec hand-over buffer
// ---------------------------------------------------------------------------------------

fn kexec_buffer() -> (Vec<u8>, Vec<Record>) {
    let (recs, _) = records();
    (kexec::encode(&recs, LE), recs)
}

#[test]
fn kexec_round_trip_is_the_baseline() {
    let (buf, recs) = kexec_buffer();
    assert_eq!(buf.len(), kexec::HEADER_LEN + ima_ng_binary().len());
    assert_eq!(kexec::decode(&buf, LE).unwrap(), recs);
}

#[test]
fn kexec_buffer_size_larger_than_the_buffer() {
    let (mut buf, _) = kexec_buffer();
    let real = buf.len() as u64;
    for claimed in [real + 1, u64::MAX] {
        buf[8..16].copy_from_slice(&claimed.to_le_bytes());
        let e = kexec::decode(&buf, LE).unwrap_err();
        assert_eq!(e.at, at(0, 8), "offset of buffer_size");
        assert_eq!(e.reason, Reason::Kexec(format!("buffer_size {claimed} does not fit the {real}-byte buffer")));
    }
    // Smaller than the header is refused too.
    buf[8..16].copy_from_slice(&10u64.to_le_bytes());
    assert_eq!(kexec::decode(&buf, LE).unwrap_err().at, at(0, 8));
}

#[test]
fn kexec_count_too_large() {
    let (mut buf, recs) = kexec_buffer();
    // Absurd: more records than could fit in the buffer. Refused before allocating.
    buf[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let (r, largest, dt) = measured(|| kexec::decode(&buf, LE));
    let e = r.unwrap_err();
    assert_eq!(e.at, at(0, 16), "offset of count");
    assert!(matches!(&e.reason, Reason::Kexec(m) if m.starts_with(&format!("count {} cannot fit", u64::MAX))));
    assert!(largest < ALLOC_BOUND && dt < Duration::from_secs(1));
    // Plausible but one more than present: the missing record is truncated at the end.
    let n = recs.len() as u64;
    buf[16..24].copy_from_slice(&(n + 1).to_le_bytes());
    let e = kexec::decode(&buf, LE).unwrap_err();
    assert_eq!(e.at, at(n, buf.len()));
    assert_eq!(e.reason, Reason::Truncated { what: "record header", needed: 28, available: 0 });
}

#[test]
fn kexec_trailing_bytes() {
    let (mut buf, recs) = kexec_buffer();
    let n = recs.len() as u64;
    let end = buf.len();
    // Count one short: the last record is left over.
    buf[16..24].copy_from_slice(&(n - 1).to_le_bytes());
    let e = kexec::decode(&buf, LE).unwrap_err();
    let last = end - recs[8].encoded_len();
    assert_eq!(e.at, at(n - 1, last));
    assert_eq!(e.reason, Reason::Kexec(format!("{} bytes after the last of {} records", recs[8].encoded_len(), n - 1)));
    // Garbage covered by buffer_size after the last record.
    buf[16..24].copy_from_slice(&n.to_le_bytes());
    buf.extend_from_slice(&[0xaa; 5]);
    let size = buf.len() as u64;
    buf[8..16].copy_from_slice(&size.to_le_bytes());
    let e = kexec::decode(&buf, LE).unwrap_err();
    assert_eq!(e.at, at(n, end));
    assert_eq!(e.reason, Reason::Kexec(format!("5 bytes after the last of {n} records")));
}

#[test]
fn kexec_refuses_the_ima_template() {
    let (recs, _) = records();
    let legacy = build(&builtin("ima"), &[&[0x42; 20], b"/init"], HashAlgo::Sha1, 10, false, LE);
    let mut list = recs[..3].to_vec();
    list.push(legacy);
    list.extend_from_slice(&recs[3..]);
    let buf = kexec::encode(&list, LE);
    let e = kexec::decode(&buf, LE).unwrap_err();
    let p = kexec::HEADER_LEN + encode(&recs[..3]).len();
    assert_eq!(e.at, at(3, p));
    assert_eq!(e.reason, Reason::Kexec("the `ima` template cannot be restored".into()));
    // The same record is fine in an ordinary binary list.
    assert_eq!(BinaryReader::new(&encode(&list)[..], BinaryFormat::new(HashAlgo::Sha1)).count(), 10);
}

#[test]
fn kexec_header_errors() {
    let (buf, _) = kexec_buffer();
    let e = kexec::decode(&buf[..20], LE).unwrap_err();
    assert_eq!(e.at, at(0, 0));
    assert_eq!(e.reason, Reason::Truncated { what: "kexec header", needed: 24, available: 20 });
    let mut v2 = buf.clone();
    v2[0] = 2;
    let e = kexec::decode(&v2, LE).unwrap_err();
    assert_eq!(e.at, at(0, 0));
    assert_eq!(e.reason, Reason::Kexec("version 2, want 1".into()));
    // A record inside the buffer cut by buffer_size: located at the record, offset from
    // the start of the buffer.
    let (_, starts) = records();
    let mut cut = buf.clone();
    cut.truncate(kexec::HEADER_LEN + starts[5] + 10);
    let size = cut.len() as u64;
    cut[8..16].copy_from_slice(&size.to_le_bytes());
    cut[16..24].copy_from_slice(&6u64.to_le_bytes());
    let e = kexec::decode(&cut, LE).unwrap_err();
    assert_eq!(e.at, at(5, kexec::HEADER_LEN + starts[5]));
    assert_eq!(e.reason, Reason::Truncated { what: "record header", needed: 28, available: 10 });
}
