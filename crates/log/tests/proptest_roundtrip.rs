//! Property tests of the binary, ASCII and kexec codecs, truncation reporting and
//! tamper detection by replay.
//!
//! Records are generated for every built-in template and for custom fmt strings, with
//! field payloads shaped as the kernel writes them (`d-ng` with an algorithm prefix, names
//! without NUL, u32/u16 unsigned fields, byte arrays), in both byte orders and with the
//! template digest of every bank.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_log::ascii;
use imasnap_log::entry::build;
use imasnap_log::kexec;
use imasnap_log::template::{TemplateCache, BUILTIN, MAX_FIELDS, MAX_TEMPLATE_NAME};
use imasnap_log::{
    BinaryFormat, BinaryReader, Endian, Error, ExtendMode, FieldId, HashAlgo, Reason, Record, ReplayOptions, Replayer,
    Template,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn endian() -> impl Strategy<Value = Endian> {
    prop_oneof![Just(Endian::Little), Just(Endian::Big)]
}

fn bank() -> impl Strategy<Value = HashAlgo> {
    select(HashAlgo::ALL.to_vec())
}

/// A built-in template (or, when `allow_ima` is false, any but the legacy `ima`), or a
/// custom fmt string of up to 15 fields that fits the 68-byte name limit.
fn template(allow_ima: bool) -> impl Strategy<Value = Arc<Template>> {
    let names: Vec<&'static str> = BUILTIN.iter().map(|(n, _)| *n).filter(|n| allow_ima || *n != "ima").collect();
    let builtin = select(names).prop_map(|n| Arc::new(Template::parse(n).unwrap()));
    let custom = vec(select(FieldId::ALL.to_vec()), 1..=MAX_FIELDS).prop_filter_map("fmt string too long", |fs| {
        let name = fs.iter().map(|f| f.id()).collect::<Vec<_>>().join("|");
        (name.len() <= MAX_TEMPLATE_NAME).then(|| Arc::new(Template::parse(&name).unwrap()))
    });
    prop_oneof![3 => builtin, 2 => custom]
}

/// Bytes of a file or event name: no NUL, space or newline, so the ASCII form is exact.
/// Tabs, `\r`, `|` and non-UTF-8 bytes are all allowed.
fn name_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec((1u8..=255).prop_map(|b| if b == b' ' || b == b'\n' { b'_' } else { b }), 1..=max)
}

fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// `<algo>:` NUL digest, with the digest size of the algorithm.
fn digest_with_algo() -> impl Strategy<Value = Vec<u8>> {
    let algos = vec![("sha1", 20), ("sha256", 32), ("sha384", 48), ("sha512", 64), ("sm3", 32), ("md5", 16)];
    select(algos).prop_flat_map(|(a, n)| {
        vec(any::<u8>(), n).prop_map(move |d| {
            let mut v = format!("{a}:").into_bytes();
            v.push(0);
            v.extend(d);
            v
        })
    })
}

/// `<ima|verity>:<algo>:` NUL digest.
fn digest_with_type_and_algo() -> impl Strategy<Value = Vec<u8>> {
    (select(vec!["ima", "verity"]), digest_with_algo()).prop_map(|(kind, d)| {
        let mut v = format!("{kind}:").into_bytes();
        v.extend(d);
        v
    })
}

fn uint(width: usize, e: Endian) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        4 => any::<u32>().prop_map(move |x| {
            let mut v = Vec::new();
            if width == 2 {
                e.put_u16(&mut v, x as u16);
            } else {
                e.put_u32(&mut v, x);
            }
            v
        }),
    ]
}

/// One field's payload, shaped as the kernel's field init function writes it.
fn payload(id: FieldId, legacy: bool, e: Endian) -> BoxedStrategy<Vec<u8>> {
    match id {
        // Legacy `ima`: 20 raw bytes; a custom `d` has a length word and any size.
        FieldId::D if legacy => vec(any::<u8>(), 20).boxed(),
        FieldId::D => prop_oneof![vec(any::<u8>(), 20), vec(any::<u8>(), 16), blob(64)].boxed(),
        // Legacy `ima` name: no NUL, at most 255 bytes.
        FieldId::N if legacy => prop_oneof![4 => name_bytes(40), 1 => name_bytes(255)].boxed(),
        // String fields: the name, then NUL (names are not limited in n-ng).
        FieldId::N | FieldId::NNg => prop_oneof![4 => name_bytes(40), 1 => name_bytes(400)]
            .prop_map(|mut v| {
                v.push(0);
                v
            })
            .boxed(),
        FieldId::DNg => digest_with_algo().boxed(),
        FieldId::DModsig => prop_oneof![Just(Vec::new()), digest_with_algo()].boxed(),
        FieldId::DNgV2 => digest_with_type_and_algo().boxed(),
        FieldId::Sig | FieldId::Buf | FieldId::Modsig | FieldId::Evmsig | FieldId::XattrValues => blob(80).boxed(),
        // Names joined by `|`, then NUL; or empty when the file has no xattrs.
        FieldId::XattrNames => prop_oneof![
            Just(Vec::new()),
            vec(name_bytes(20).prop_map(|n| n.into_iter().map(|b| if b == b'|' { b'.' } else { b }).collect()), 1..4)
                .prop_map(|names: Vec<Vec<u8>>| {
                    let mut v = names.join(&b'|');
                    v.push(0);
                    v
                }),
        ]
        .boxed(),
        FieldId::XattrLengths => vec(any::<u32>(), 0..4)
            .prop_map(move |ls| {
                let mut v = Vec::new();
                for l in ls {
                    e.put_u32(&mut v, l);
                }
                v
            })
            .boxed(),
        FieldId::Iuid | FieldId::Igid => uint(4, e).boxed(),
        FieldId::Imode => uint(2, e).boxed(),
    }
}

/// A record of `template` with its template digest in `bank` (all zero for a violation).
fn record_of(template: Arc<Template>, bank: HashAlgo, e: Endian) -> impl Strategy<Value = Record> {
    let legacy = template.is_legacy_ima();
    let fields: Vec<_> = template.fields().iter().map(|&id| payload(id, legacy, e)).collect();
    (fields, 0u32..24, prop::bool::weighted(0.1)).prop_map(move |(fields, pcr, violation)| {
        let refs: Vec<&[u8]> = fields.iter().map(|f| f.as_slice()).collect();
        build(&template, &refs, bank, pcr, violation, e)
    })
}

fn record(bank: HashAlgo, e: Endian, allow_ima: bool) -> impl Strategy<Value = Record> {
    template(allow_ima).prop_flat_map(move |t| record_of(t, bank, e))
}

/// A log: (byte order, bank, records).
fn log(max: usize) -> impl Strategy<Value = (Endian, HashAlgo, Vec<Record>)> {
    (endian(), bank()).prop_flat_map(move |(e, b)| (Just(e), Just(b), vec(record(b, e, true), 1..=max)))
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn encode(records: &[Record], e: Endian) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode(e, &mut out);
    }
    out
}

fn format(e: Endian, bank: HashAlgo) -> BinaryFormat {
    BinaryFormat { endian: e, ..BinaryFormat::new(bank) }
}

/// Reads a whole binary log: the records, then the error that stopped it, if any.
fn read_all(bytes: &[u8], e: Endian, bank: HashAlgo) -> (Vec<Record>, Option<Error>) {
    let mut recs = Vec::new();
    for r in BinaryReader::new(bytes, format(e, bank)) {
        match r {
            Ok(r) => recs.push(r),
            Err(err) => return (recs, Some(err)),
        }
    }
    (recs, None)
}

/// A reader that hands out its data in pieces of the given sizes, cyclically.
struct ShortReads<'a> {
    data: &'a [u8],
    pos: usize,
    pieces: Vec<usize>,
    next: usize,
}

impl std::io::Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.pieces[self.next % self.pieces.len()];
        self.next += 1;
        let n = want.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Offset of each record's start, plus the total length.
fn boundaries(records: &[Record]) -> Vec<usize> {
    let mut v = vec![0];
    for r in records {
        v.push(v.last().unwrap() + r.encoded_len());
    }
    v
}

/// Offset of the template data inside an encoded record.
fn data_offset(r: &Record) -> usize {
    4 + r.digest.len() + 4 + r.template.name().len() + if r.template.is_legacy_ima() { 0 } else { 4 }
}

fn replayer(e: Endian, bank: HashAlgo) -> Replayer {
    let mut opts = ReplayOptions::new(&[HashAlgo::Sha1, bank]);
    opts.log_bank = bank;
    opts.endian = e;
    opts.modes = vec![ExtendMode::Native];
    opts.parallel = false;
    Replayer::new(opts)
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Binary encode → decode gives the same records, and re-encoding gives the same bytes.
    #[test]
    fn binary_round_trip((e, bank, records) in log(8)) {
        let bytes = encode(&records, e);
        let (back, err) = read_all(&bytes, e, bank);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert_eq!(&back, &records);
        prop_assert_eq!(encode(&back, e), bytes);
        for r in &records {
            let mut one = Vec::new();
            r.encode(e, &mut one);
            prop_assert_eq!(one.len(), r.encoded_len());
        }
    }

    /// The streaming reader gives the same records when the input arrives in small,
    /// arbitrary pieces (records straddle every read boundary).
    #[test]
    fn binary_reader_over_short_reads((e, bank, records) in log(6), pieces in vec(1usize..=37, 1..16)) {
        let bytes = encode(&records, e);
        let src = ShortReads { data: &bytes, pos: 0, pieces, next: 0 };
        let back: Result<Vec<Record>, Error> = BinaryReader::new(src, format(e, bank)).collect();
        prop_assert_eq!(back.unwrap(), records);
    }

    /// ASCII write → parse gives the same record (names carry no space, NUL or newline,
    /// and strings are non-empty, so the ASCII form is unambiguous), and the written line
    /// is stable under a second round.
    #[test]
    fn ascii_round_trip((e, bank, records) in log(6)) {
        let mut cache = TemplateCache::default();
        for r in &records {
            let mut line = Vec::new();
            ascii::write_line(r, e, &mut line).unwrap();
            let body = line.strip_suffix(b"\n").unwrap();
            prop_assert!(!body.contains(&b'\n'));
            let back = ascii::parse_line(body, bank.size(), e, &mut cache);
            prop_assert!(back.is_ok(), "{:?} for line {:?}", back, String::from_utf8_lossy(body));
            let back = back.unwrap();
            prop_assert_eq!(&back, r);
            let mut again = Vec::new();
            ascii::write_line(&back, e, &mut again).unwrap();
            prop_assert_eq!(again, line);
        }
    }

    /// The ASCII reader over a whole file agrees with record-by-record parsing.
    #[test]
    fn ascii_reader_reads_what_was_written((e, bank, records) in log(6)) {
        let mut text = Vec::new();
        for r in &records {
            ascii::write_line(r, e, &mut text).unwrap();
        }
        let back: Result<Vec<Record>, Error> = imasnap_log::AsciiReader::new(&text[..], bank.size(), e).collect();
        prop_assert_eq!(back.unwrap(), records);
    }

    /// kexec encode → decode → encode round trip (SHA1 records, no `ima` template).
    #[test]
    fn kexec_round_trip(
        (e, records) in endian().prop_flat_map(|e| (Just(e), vec(record(HashAlgo::Sha1, e, false), 0..=6)))
    ) {
        let buf = kexec::encode(&records, e);
        prop_assert_eq!(e.u64(&buf[8..16]) as usize, buf.len());
        prop_assert_eq!(e.u64(&buf[16..24]), records.len() as u64);
        let back = kexec::decode(&buf, e);
        prop_assert!(back.is_ok(), "{:?}", back);
        let back = back.unwrap();
        prop_assert_eq!(&back, &records);
        prop_assert_eq!(kexec::encode(&back, e), buf.clone());
        // Bytes past buffer_size (page rounding) are ignored.
        let mut padded = buf.clone();
        padded.extend_from_slice(&[0xa5; 13]);
        prop_assert_eq!(kexec::decode(&padded, e).unwrap(), records);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Cutting a valid log anywhere inside record k yields `Truncated`, naming record k and
    /// its start offset, after records 0..k decoded intact; cutting at a boundary is a
    /// clean shorter log. Never a panic, never silent success.
    #[test]
    fn every_truncation_is_located((e, bank, records) in log(5)) {
        let bytes = encode(&records, e);
        let bounds = boundaries(&records);
        for cut in 0..bytes.len() {
            let (got, err) = read_all(&bytes[..cut], e, bank);
            // The record the cut falls in (or the one starting at the cut).
            let k = bounds.iter().rposition(|&b| b <= cut).unwrap();
            prop_assert_eq!(&got[..], &records[..k], "cut {}", cut);
            if bounds[k] == cut {
                prop_assert!(err.is_none(), "cut {} at a record boundary: {:?}", cut, err);
                continue;
            }
            let err = err.unwrap_or_else(|| panic!("cut {cut} inside record {k}: silent success"));
            prop_assert_eq!(err.at.record, k as u64, "cut {}: {}", cut, err);
            prop_assert_eq!(err.at.offset, bounds[k] as u64, "cut {}: {}", cut, err);
            match err.reason {
                Reason::Truncated { needed, available, .. } => {
                    prop_assert_eq!(available as usize, cut - bounds[k]);
                    prop_assert!(needed > available && needed as usize <= bounds[k + 1] - bounds[k],
                        "cut {}: needed {} available {}", cut, needed, available);
                }
                other => prop_assert!(false, "cut {}: want Truncated, got {:?}", cut, other),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Flipping bits of one byte inside record i's template data is never silent: either
    /// decoding fails (a field length word no longer fits) naming record i, or the record
    /// decodes and replay lists i in `template_digest_mismatches`, unless i is a violation,
    /// whose digest is never recomputed. For the legacy `ima` template the name length word
    /// is part of the data and moves the record's end, so the decode error may come at a
    /// later record; it still never passes silently.
    #[test]
    fn flipped_template_data_is_reported(
        (e, bank, records) in log(5),
        which in any::<Index>(),
        pos in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let bytes = encode(&records, e);
        let bounds = boundaries(&records);
        let i = which.index(records.len());
        let r = &records[i];
        let data_start = bounds[i] + data_offset(r);
        prop_assume!(!r.template_data.is_empty());
        let at = data_start + pos.index(r.template_data.len());
        let mut bad = bytes.clone();
        bad[at] ^= mask;

        let (got, err) = read_all(&bad, e, bank);
        prop_assert_eq!(&got[..i.min(got.len())], &records[..i.min(got.len())]);
        let mut rp = replayer(e, bank);
        for rec in &got {
            rp.push(rec).unwrap();
        }
        let report = rp.finish();
        let flagged = report.template_digest_mismatches.contains(&(i as u64));
        if let Some(err) = &err {
            prop_assert!(err.at.record >= i as u64, "error before the flipped record: {}", err);
            if !r.template.is_legacy_ima() {
                prop_assert_eq!(err.at.record, i as u64, "{}", err);
            }
        }
        // Records before i are untouched and must not be flagged.
        prop_assert!(report.template_digest_mismatches.iter().all(|&m| m >= i as u64));
        if r.is_violation() {
            prop_assert!(!flagged, "a violation's digest is never recomputed");
        } else {
            prop_assert!(err.is_some() || flagged, "flip at byte {} of record {} went unnoticed", at, i);
            if got.len() > i && !r.template.is_legacy_ima() {
                prop_assert!(flagged, "record {} decoded after the flip but was not flagged", i);
            }
        }
    }
}

/// Replay of an untouched log flags nothing and counts the violations.
#[test]
fn untouched_log_replays_clean() {
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&log(8), |(e, bank, records)| {
            let mut rp = replayer(e, bank);
            rp.push_batch(&records).unwrap();
            let rep = rp.finish();
            prop_assert!(rep.template_digest_mismatches.is_empty());
            prop_assert_eq!(rep.violations, records.iter().filter(|r| r.is_violation()).count() as u64);
            Ok(())
        })
        .unwrap();
}
