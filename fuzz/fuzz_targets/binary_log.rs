//! `BinaryReader` over arbitrary bytes, for both byte orders and 20/32-byte digests.
//!
//! Invariants checked:
//! - no panic, whatever the input;
//! - every decoded record re-encodes to exactly the bytes it was decoded from, and
//!   `encoded_len` agrees;
//! - an error names the index of the record being read and an offset inside the input,
//!   and the reader yields nothing after it;
//! - the typed field views and the ASCII writer accept every decoded record;
//! - replaying the records into sha1+sha256 banks never fails, one at a time and in a
//!   batch give the same result, and a replay aimed at its own final state matches.
#![no_main]

use imasnap_log::ascii;
use imasnap_log::replay::{PcrTarget, ReplayOptions, Replayer};
use imasnap_log::{BinaryFormat, BinaryReader, Endian, ExtendMode, HashAlgo, Record};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], endian: Endian, bank: HashAlgo) {
    let fmt = BinaryFormat { endian, ..BinaryFormat::new(bank) };
    let mut reader = BinaryReader::new(data, fmt);
    let mut records: Vec<Record> = Vec::new();
    loop {
        let start = reader.offset() as usize;
        match reader.read_owned(None) {
            Ok(Some(rec)) => {
                let end = reader.offset() as usize;
                assert!(end > start && end <= data.len(), "offsets {start}..{end} of {}", data.len());
                let mut out = Vec::new();
                rec.encode(endian, &mut out);
                assert_eq!(out, &data[start..end], "record {} does not re-encode byte-identically", records.len());
                assert_eq!(rec.encoded_len(), end - start);
                assert_eq!(rec.digest.len(), bank.size());
                assert!(rec.pcr <= 23);
                // Typed views and the ASCII writer must accept what the decoder accepted.
                let fields = rec.fields(endian).expect("decoded record must split into its fields");
                for (i, raw) in fields.iter().enumerate() {
                    let _ = rec.template.field(i, raw, endian);
                }
                let _ = rec.name(endian);
                let mut line = Vec::new();
                ascii::write_line(&rec, endian, &mut line).expect("ASCII writer refused a decoded record");
                records.push(rec);
            }
            Ok(None) => {
                assert_eq!(reader.offset() as usize, data.len(), "clean end before the end of the input");
                break;
            }
            Err(e) => {
                assert_eq!(e.at.record, records.len() as u64, "error names the wrong record: {e}");
                assert!(e.at.offset as usize >= start && e.at.offset as usize <= data.len(), "error offset: {e}");
                let mut slot = None;
                assert!(reader.read_into(&mut slot).unwrap().is_none(), "reader went on after an error");
                break;
            }
        }
    }
    replay(&records, endian, bank);
}

fn replay(records: &[Record], endian: Endian, log_bank: HashAlgo) {
    let mut opts = ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]);
    opts.log_bank = log_bank;
    opts.endian = endian;
    opts.modes = vec![ExtendMode::Native, ExtendMode::PaddedSha1];
    opts.parallel = false;

    let mut one = Replayer::new(opts.clone());
    for r in records {
        one.push(r).expect("replaying a decoded record failed");
    }
    let one = one.finish();
    assert_eq!(one.records, records.len() as u64);
    assert_eq!(one.violations, records.iter().filter(|r| r.is_violation()).count() as u64);
    assert_eq!(one.mismatch_count as usize, one.template_digest_mismatches.len());

    let mut batch = Replayer::new(opts.clone());
    batch.push_batch(records).expect("batch replay failed");
    let batch = batch.finish();
    assert_eq!(one.states, batch.states);
    assert_eq!(one.template_digest_mismatches, batch.template_digest_mismatches);
    assert_eq!(one.first_violation, batch.first_violation);

    // Aim a second replay at the first one's final state: it must match, at the latest
    // after the last record.
    if !records.is_empty() {
        let mut target = PcrTarget::default();
        let st = one.state();
        for &a in st.banks() {
            let m = target.values.entry(a).or_default();
            for p in st.touched() {
                m.insert(p, *st.get(a, p).unwrap());
            }
        }
        let mut aimed = Replayer::new(opts);
        aimed.set_target(&target);
        for r in records {
            aimed.push(r).unwrap();
        }
        let aimed = aimed.finish();
        let k = aimed.matched_after.expect("replay never matched its own final state");
        assert!(k >= 1 && k <= records.len() as u64);
    }
}

fuzz_target!(|data: &[u8]| {
    for endian in [Endian::Little, Endian::Big] {
        for bank in [HashAlgo::Sha1, HashAlgo::Sha256] {
            check(data, endian, bank);
        }
    }
});
