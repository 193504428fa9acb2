//! `AsciiReader` over arbitrary bytes, for both byte orders and 20/32-byte digests.
//!
//! Invariants checked:
//! - no panic, whatever the input;
//! - every parsed record writes back with `ascii::write_line` and re-parses to an equal
//!   record (what the parser accepts, the writer can express);
//! - its binary encoding decodes back to the same record (ASCII accepts nothing the
//!   binary form cannot carry);
//! - an error names the index of the record being read, and nothing follows it.
#![no_main]

use imasnap_log::ascii;
use imasnap_log::template::TemplateCache;
use imasnap_log::{AsciiReader, BinaryFormat, Endian, HashAlgo};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], endian: Endian, bank: HashAlgo) {
    let dl = bank.size();
    let mut reader = AsciiReader::new(data, dl, endian);
    let mut cache = TemplateCache::default();
    let mut n = 0u64;
    loop {
        match reader.read_owned(None) {
            Ok(Some(rec)) => {
                let mut line = Vec::new();
                ascii::write_line(&rec, endian, &mut line)
                    .unwrap_or_else(|e| panic!("record {n} parsed but cannot be written: {e}"));
                let body = line.strip_suffix(b"\n").expect("line ends with a newline");
                assert!(!body.contains(&b'\n'), "written line holds a newline");
                let again = ascii::parse_line(body, dl, endian, &mut cache)
                    .unwrap_or_else(|e| panic!("record {n}: written line does not parse: {e}"));
                assert_eq!(again, rec, "record {n} changed through write/parse");

                let fmt = BinaryFormat { endian, ..BinaryFormat::new(bank) };
                let mut bin = Vec::new();
                rec.encode(endian, &mut bin);
                let mut back = None;
                let used = fmt
                    .decode(&bin, &mut cache, &mut back)
                    .unwrap_or_else(|(o, r)| panic!("record {n}: binary form refused at {o}: {r}"))
                    .expect("complete record");
                assert_eq!(used, bin.len());
                assert_eq!(back.as_ref(), Some(&rec), "record {n} changed through binary");
                n += 1;
            }
            Ok(None) => break,
            Err(e) => {
                assert_eq!(e.at.record, n, "error names the wrong record: {e}");
                assert!(e.at.offset as usize <= data.len());
                let mut slot = None;
                assert!(reader.read_into(&mut slot).unwrap().is_none(), "reader went on after an error");
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for endian in [Endian::Little, Endian::Big] {
        for bank in [HashAlgo::Sha1, HashAlgo::Sha256] {
            check(data, endian, bank);
        }
    }
});
