//! The kexec hand-over buffer (`struct ima_kexec_hdr` + SHA1 binary records).

use crate::algo::HashAlgo;
use crate::codec::{BinaryFormat, Endian, Record};
use crate::error::{Error, Reason, Result};
use crate::template::TemplateCache;

pub const HEADER_LEN: usize = 24;
pub const VERSION: u16 = 1;

/// Encodes records as the outgoing kernel does in `ima_dump_measurement_list`.
/// Every record must carry a 20-byte SHA1 template digest.
pub fn encode<'a>(records: impl IntoIterator<Item = &'a Record>, endian: Endian) -> Vec<u8> {
    let mut body = Vec::new();
    let mut count = 0u64;
    for r in records {
        r.encode(endian, &mut body);
        count += 1;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    endian.put_u16(&mut out, VERSION);
    endian.put_u16(&mut out, 0);
    endian.put_u32(&mut out, 0);
    endian.put_u64(&mut out, (HEADER_LEN + body.len()) as u64);
    endian.put_u64(&mut out, count);
    out.extend_from_slice(&body);
    out
}

/// Decodes a hand-over buffer with the kernel's restore rules, plus the length checks the
/// kernel omits: `buffer_size` must fit the real buffer, records must end exactly there,
/// and `count` must equal the records present.
pub fn decode(buf: &[u8], endian: Endian) -> Result<Vec<Record>> {
    let kerr = |off: usize, idx: u64, m: String| Error::new(idx, off as u64, Reason::Kexec(m));
    if buf.len() < HEADER_LEN {
        return Err(Error::new(
            0,
            0,
            Reason::Truncated { what: "kexec header", needed: HEADER_LEN as u64, available: buf.len() as u64 },
        ));
    }
    let version = endian.u16(&buf[0..]);
    if version != VERSION {
        return Err(kerr(0, 0, format!("version {version}, want {VERSION}")));
    }
    let size = endian.u64(&buf[8..]);
    let count = endian.u64(&buf[16..]);
    if size < HEADER_LEN as u64 || size > buf.len() as u64 {
        return Err(kerr(8, 0, format!("buffer_size {size} does not fit the {}-byte buffer", buf.len())));
    }
    let end = size as usize;
    // Each record takes at least 4+20+4+1+4 bytes, which bounds a sane count.
    let max_count = ((end - HEADER_LEN) / 33) as u64;
    if count > max_count {
        return Err(kerr(16, 0, format!("count {count} cannot fit in {} bytes", end - HEADER_LEN)));
    }
    let fmt = BinaryFormat { endian, ..BinaryFormat::new(HashAlgo::Sha1) };
    let mut cache = TemplateCache::default();
    let mut out = Vec::with_capacity(count as usize);
    let mut p = HEADER_LEN;
    for idx in 0..count {
        match fmt.parse(&buf[p..end], &mut cache) {
            Ok(Some(raw)) => {
                if raw.template.is_legacy_ima() {
                    return Err(kerr(p, idx, "the `ima` template cannot be restored".into()));
                }
                out.push(raw.to_record());
                p += raw.len;
            }
            Ok(None) => {
                let (rel, reason) = fmt.truncation(&buf[p..end]);
                return Err(Error::new(idx, (p as u64) + rel, reason));
            }
            Err((rel, reason)) => return Err(Error::new(idx, (p as u64) + rel, reason)),
        }
    }
    if p != end {
        return Err(kerr(p, count, format!("{} bytes after the last of {count} records", end - p)));
    }
    Ok(out)
}
