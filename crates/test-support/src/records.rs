//! IMA records for tests: a well-formed ima-ng file record, and the binary list (SHA1
//! template digests, little endian, as the kernel exports it) encoded and parsed.

use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::{BinaryFormat, BinaryReader, Endian, HashAlgo, Record};

/// An ima-ng record for file `path` with sha256 content digest `digest`, in `pcr`: what
/// the kernel appends for a measured file. Never extended into any TPM.
pub fn file_record(path: &[u8], digest: &[u8], pcr: u32) -> Record {
    build(&builtin("ima-ng"), &[&d_ng("sha256", digest), &n_ng(path)], HashAlgo::Sha1, pcr, false, Endian::Little)
}

/// File number `i` (`/usr/bin/f{i}`, content [`crate::kernel::file_digest`]`(i)`) as a
/// PCR 10 record, and its encoding in the binary list.
pub fn new_record(i: u64) -> (Record, Vec<u8>) {
    let r = file_record(format!("/usr/bin/f{i}").as_bytes(), &crate::kernel::file_digest(i), 10);
    let bytes = encode(std::slice::from_ref(&r));
    (r, bytes)
}

/// The binary list of `recs`.
pub fn encode(recs: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        r.encode(Endian::Little, &mut out);
    }
    out
}

/// Parses a binary (SHA1) list; panics on the first bad record.
pub fn parse(bytes: &[u8]) -> Vec<Record> {
    parse_bank(bytes, HashAlgo::Sha1)
}

/// Parses the binary list of `bank`; panics on the first bad record.
pub fn parse_bank(bytes: &[u8], bank: HashAlgo) -> Vec<Record> {
    BinaryReader::new(bytes, BinaryFormat::new(bank))
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("record {i} does not parse: {e}")))
        .collect()
}

/// Splits a binary list into each record's raw bytes.
pub fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut p = 0;
    for r in parse(bytes) {
        let n = r.encoded_len();
        out.push(bytes[p..p + n].to_vec());
        p += n;
    }
    assert_eq!(p, bytes.len(), "trailing bytes after the last record");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_14_records_encode_parse_and_split() {
        let (a, ab) = new_record(1);
        let (b, _) = new_record(2);
        let bytes = encode(&[a.clone(), b.clone()]);
        assert_eq!(parse(&bytes), vec![a, b]);
        let parts = split(&bytes);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], ab);
        assert_ne!(new_record(1).0.digest, new_record(2).0.digest);
    }
}
