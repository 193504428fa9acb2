//! `kexec::decode` on arbitrary bytes, in both byte orders.
//!
//! What a successful decode guarantees, and so what is asserted:
//! - `buffer_size` fits the input and the records fill `[24, buffer_size)` exactly, with
//!   `count` records; bytes after `buffer_size` are ignored (the kernel hands over a
//!   page-rounded segment);
//! - so `encode(records)` reproduces `input[..buffer_size]` except bytes 2..8, which
//!   `encode` writes as zero and `decode` does not check (the kernel ignores them too):
//!   when those reserved bytes are zero the prefix is reproduced exactly;
//! - every record has a 20-byte digest and no record uses the `ima` template;
//! - decoding the re-encoded buffer gives the same records.
//!
//! On failure, the error names a record index no greater than `count` and an offset
//! inside the input.
#![no_main]

use imasnap_log::kexec::{self, HEADER_LEN};
use imasnap_log::Endian;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], endian: Endian) {
    match kexec::decode(data, endian) {
        Ok(records) => {
            let size = endian.u64(&data[8..16]) as usize;
            let count = endian.u64(&data[16..24]);
            assert!(size >= HEADER_LEN && size <= data.len());
            assert_eq!(records.len() as u64, count);
            for r in &records {
                assert_eq!(r.digest.len(), 20);
                assert!(!r.template.is_legacy_ima());
            }
            let out = kexec::encode(&records, endian);
            assert_eq!(out.len(), size, "re-encoded size differs from buffer_size");
            assert_eq!(&out[..2], &data[..2], "version");
            assert_eq!(&out[2..8], &[0u8; 6], "encode writes zero reserved fields");
            assert_eq!(&out[8..], &data[8..size], "header tail or records differ");
            if data[2..8].iter().all(|&b| b == 0) {
                assert_eq!(&out[..], &data[..size]);
            }
            let back = kexec::decode(&out, endian).expect("re-encoded buffer must decode");
            assert_eq!(back, records);
        }
        Err(e) => {
            assert!(e.at.offset as usize <= data.len(), "error offset outside the input: {e}");
            if data.len() >= HEADER_LEN {
                let count = endian.u64(&data[16..24]);
                assert!(e.at.record <= count, "error names record {} of {count}: {e}", e.at.record);
            } else {
                assert_eq!(e.at.record, 0);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, Endian::Little);
    check(data, Endian::Big);
});
