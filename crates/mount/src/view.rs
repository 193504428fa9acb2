//! The pure core of the view: which file shows which bytes at an offset, given records.
//!
//! Every log file of the view (binary or ASCII, one bank) is a concatenation of the same
//! records rendered one way. Within a boot the rendering only grows, so a segment's
//! rendered length never changes once its records are known. For each segment we keep
//! its length in every file and a few sparse marks (record, source byte offset, rendered
//! offset per file): a read at any offset decodes from the nearest mark below it. No I/O
//! here; [`crate::fs`] opens files, [`crate::source`] finds the records.

use imasnap_log::digest::template_hash;
use imasnap_log::{ascii, Endian, HashAlgo, Reason, Record};

/// A mark every this many records: memory per segment stays small, a random read decodes
/// at most this many records before the bytes it wants.
pub const MARK_EVERY: u64 = 4096;

/// One log file: binary or ASCII, template digests of one bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogFile {
    pub ascii: bool,
    pub bank: HashAlgo,
    /// `binary_runtime_measurements` / `ascii_runtime_measurements` (SHA1, no suffix).
    pub classic: bool,
}

impl LogFile {
    /// The securityfs name (`ima_fs.c`): the classic names, or `_<hash_algo_name>`.
    pub fn name(&self) -> String {
        let base = if self.ascii { "ascii_runtime_measurements" } else { "binary_runtime_measurements" };
        if self.classic {
            base.to_string()
        } else {
            format!("{base}_{}", self.bank.name())
        }
    }

    /// The stored bytes themselves: the SHA1 binary form is what snapshot files hold.
    pub fn is_stored_form(&self) -> bool {
        !self.ascii && self.bank == HashAlgo::Sha1
    }
}

/// The log files a kernel with these TPM banks shows: the classic pair, then a pair per
/// bank. The kernel adds SHA1 (for the classic files) to the TPM banks (`ima_algo_array`).
pub fn log_files(banks: &[HashAlgo]) -> Vec<LogFile> {
    let mut all = vec![HashAlgo::Sha1];
    for b in banks {
        if !all.contains(b) {
            all.push(*b);
        }
    }
    let mut v = Vec::new();
    for ascii in [false, true] {
        v.push(LogFile { ascii, bank: HashAlgo::Sha1, classic: true });
    }
    for bank in all {
        for ascii in [false, true] {
            v.push(LogFile { ascii, bank, classic: false });
        }
    }
    v
}

/// Appends `rec` (a SHA1-form record) as `f` shows it. The template digest of another
/// bank is recomputed from the template data, as the kernel computes it; a violation has
/// an all-zero digest in every bank. `scratch` keeps the SHA1 digest while the record
/// carries the bank's.
pub fn render(rec: &mut Record, f: LogFile, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), Reason> {
    let e = Endian::Little;
    if f.bank == HashAlgo::Sha1 {
        return if f.ascii {
            ascii::write_line(rec, e, out)
        } else {
            rec.encode(e, out);
            Ok(())
        };
    }
    let bank_digest =
        if rec.is_violation() { vec![0; f.bank.size()] } else { template_hash(f.bank, rec, e)?.as_bytes().to_vec() };
    scratch.clear();
    scratch.extend_from_slice(&rec.digest);
    rec.digest = bank_digest;
    let r = if f.ascii {
        ascii::write_line(rec, e, out)
    } else {
        rec.encode(e, out);
        Ok(())
    };
    rec.digest.clear();
    rec.digest.extend_from_slice(scratch);
    r
}

/// A resumption point inside a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Records of the segment before this point.
    pub record: u64,
    /// Byte offset in the segment's stored (SHA1 binary) bytes.
    pub src: u64,
    /// Rendered offset in each log file, relative to the segment's start.
    pub out: Vec<u64>,
}

/// What a segment contributes to every log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegIndex {
    pub records: u64,
    pub violations: u64,
    /// Rendered length in each log file (same order as the files).
    pub lens: Vec<u64>,
    /// Marks in order; the first is the segment's start.
    pub marks: Vec<Mark>,
}

impl SegIndex {
    /// The last mark at or before rendered offset `rel` of file `k`.
    pub fn mark_for(&self, k: usize, rel: u64) -> Option<&Mark> {
        let i = self.marks.partition_point(|m| m.out[k] <= rel);
        i.checked_sub(1).and_then(|i| self.marks.get(i))
    }
}

/// Builds a [`SegIndex`] from the records of one segment, in order.
pub struct Indexer {
    files: Vec<LogFile>,
    idx: SegIndex,
    src: u64,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Indexer {
    pub fn new(files: &[LogFile]) -> Self {
        let n = files.len();
        Self {
            files: files.to_vec(),
            idx: SegIndex {
                records: 0,
                violations: 0,
                lens: vec![0; n],
                marks: vec![Mark { record: 0, src: 0, out: vec![0; n] }],
            },
            src: 0,
            buf: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Adds the next record, `src_len` bytes in stored form.
    pub fn push(&mut self, rec: &mut Record, src_len: u64) -> Result<(), Reason> {
        for (k, f) in self.files.iter().enumerate() {
            let n = if f.is_stored_form() {
                src_len
            } else {
                self.buf.clear();
                render(rec, *f, &mut self.scratch, &mut self.buf)?;
                self.buf.len() as u64
            };
            self.idx.lens[k] += n;
        }
        self.src += src_len;
        self.idx.records += 1;
        self.idx.violations += rec.is_violation() as u64;
        if self.idx.records.is_multiple_of(MARK_EVERY) {
            self.idx.marks.push(Mark { record: self.idx.records, src: self.src, out: self.idx.lens.clone() });
        }
        Ok(())
    }

    /// Bytes of stored form seen so far.
    pub fn src_len(&self) -> u64 {
        self.src
    }

    pub fn finish(self) -> SegIndex {
        self.idx
    }
}

/// Where rendered offset `off` of file `k` falls, given each segment's length in it:
/// the segment and the offset relative to its start. `None`: at or past the end.
pub fn locate(lens: impl IntoIterator<Item = u64>, off: u64) -> Option<(usize, u64)> {
    let mut start = 0u64;
    for (i, len) in lens.into_iter().enumerate() {
        if off < start + len {
            return Some((i, off - start));
        }
        start += len;
    }
    None
}

/// `runtime_measurements_count` and `violations`: `%li\n` (`ima_show_htable_value`).
pub fn counter_text(v: u64) -> Vec<u8> {
    format!("{v}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imasnap_log::entry::{build, builtin, d_ng, n_ng};

    fn rec(i: u32, violation: bool) -> Record {
        let name = format!("/bin/f{i}");
        build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", &[i as u8; 32]), &n_ng(name.as_bytes())],
            HashAlgo::Sha1,
            10,
            violation,
            Endian::Little,
        )
    }

    #[test]
    fn names_follow_ima_fs() {
        let names: Vec<String> = log_files(&[HashAlgo::Sha256]).iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "binary_runtime_measurements",
                "ascii_runtime_measurements",
                "binary_runtime_measurements_sha1",
                "ascii_runtime_measurements_sha1",
                "binary_runtime_measurements_sha256",
                "ascii_runtime_measurements_sha256"
            ]
        );
    }

    #[test]
    fn other_bank_is_recomputed_violation_is_zero() {
        let f = LogFile { ascii: false, bank: HashAlgo::Sha256, classic: false };
        let (mut s, mut out) = (Vec::new(), Vec::new());
        let mut r = rec(1, false);
        let sha1 = r.digest.clone();
        render(&mut r, f, &mut s, &mut out).unwrap();
        assert_eq!(r.digest, sha1, "the record is left as it was");
        let want = build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", &[1; 32]), &n_ng(b"/bin/f1")],
            HashAlgo::Sha256,
            10,
            false,
            Endian::Little,
        );
        let mut w = Vec::new();
        want.encode(Endian::Little, &mut w);
        assert_eq!(out, w);
        out.clear();
        render(&mut rec(2, true), f, &mut s, &mut out).unwrap();
        assert_eq!(&out[4..36], &[0u8; 32]);
    }

    #[test]
    fn marks_and_locate_agree_with_a_full_rendering() {
        let files = log_files(&[HashAlgo::Sha256]);
        let mut ix = Indexer::new(&files);
        let mut whole = vec![Vec::new(); files.len()];
        let mut s = Vec::new();
        let n = MARK_EVERY * 2 + 7;
        for i in 0..n {
            let mut r = rec(i as u32, i % 100 == 5);
            for (k, f) in files.iter().enumerate() {
                render(&mut r, *f, &mut s, &mut whole[k]).unwrap();
            }
            let len = r.encoded_len() as u64;
            ix.push(&mut r, len).unwrap();
        }
        let idx = ix.finish();
        assert_eq!(idx.records, n);
        assert_eq!(idx.marks.len(), 3);
        assert!(idx.violations > 0);
        for k in 0..files.len() {
            assert_eq!(idx.lens[k], whole[k].len() as u64, "{}", files[k].name());
            let m = idx.mark_for(k, idx.lens[k] - 1).unwrap();
            assert_eq!(m.record, MARK_EVERY * 2);
            assert_eq!(idx.mark_for(k, 0).unwrap().record, 0);
        }
        assert_eq!(locate([10, 0, 5], 10), Some((2, 0)));
        assert_eq!(locate([10, 0, 5], 15), None);
        assert_eq!(locate([10, 0, 5], 3), Some((0, 3)));
    }
}
