//! ASCII lines (`ascii_runtime_measurements[_<alg>]`), printed as `ima_ascii_measurements_show` does.

use crate::codec::{Endian, Record};
use crate::error::Reason;
use crate::template::{split_digest_prefix, DataFmt, FieldId, TemplateCache};

/// Appends one record as the kernel prints it, newline included. Names are written as raw
/// bytes, which is why ASCII is lossy for names holding newlines.
pub fn write_line(rec: &Record, endian: Endian, out: &mut Vec<u8>) -> Result<(), Reason> {
    use std::io::Write;
    let _ = write!(out, "{:2} ", rec.pcr);
    push_hex(out, &rec.digest);
    out.push(b' ');
    out.extend_from_slice(rec.template.name().as_bytes());
    let mut fields = Vec::new();
    rec.template.split(&rec.template_data, endian, &mut fields)?;
    for (id, raw) in rec.template.fields().iter().zip(fields) {
        out.push(b' ');
        show_field(*id, raw, rec.template.is_legacy_ima(), endian, out);
    }
    out.push(b'\n');
    Ok(())
}

fn show_field(id: FieldId, raw: &[u8], legacy: bool, endian: Endian, out: &mut Vec<u8>) {
    use std::io::Write;
    match id.fmt() {
        DataFmt::DigestWithAlgo | DataFmt::DigestWithTypeAndAlgo => match split_digest_prefix(raw) {
            Some((prefix, digest)) => {
                out.extend_from_slice(prefix);
                push_hex(out, digest);
            }
            None => push_hex(out, raw),
        },
        DataFmt::Digest | DataFmt::Hex => push_hex(out, raw),
        // `%s`: stops at the first NUL. A legacy `ima` name has no NUL in the binary form.
        DataFmt::String => {
            let end = if legacy { raw.len() } else { raw.iter().position(|&b| b == 0).unwrap_or(raw.len()) };
            out.extend_from_slice(&raw[..end]);
        }
        DataFmt::Uint => {
            let v = match raw.len() {
                1 => Some(raw[0] as u64),
                2 => Some(endian.u16(raw) as u64),
                4 => Some(endian.u32(raw) as u64),
                8 => Some(endian.u64(raw)),
                _ => None,
            };
            if let Some(v) = v {
                let _ = write!(out, "{v}");
            }
        }
    }
}

fn push_hex(out: &mut Vec<u8>, b: &[u8]) {
    const H: &[u8; 16] = b"0123456789abcdef";
    out.reserve(b.len() * 2);
    for &x in b {
        out.push(H[(x >> 4) as usize]);
        out.push(H[(x & 15) as usize]);
    }
}

fn unhex(what: &'static str, s: &[u8]) -> Result<Vec<u8>, Reason> {
    hex::decode(s)
        .map_err(|_| Reason::BadHex { what, text: String::from_utf8_lossy(&s[..s.len().min(80)]).into_owned() })
}

/// Parses one line (without its newline) into a record. Fields are split on single
/// spaces, never on runs of whitespace, because an empty field still prints its space.
pub fn parse_line(line: &[u8], digest_len: usize, endian: Endian, cache: &mut TemplateCache) -> Result<Record, Reason> {
    // No `\r` is stripped: the kernel never writes CRLF, and a file name may end in `\r`,
    // which stripping would silently cut off.
    // `%2d`: a one-digit PCR is padded with a leading space.
    let line = line.strip_prefix(b" ").unwrap_or(line);
    let mut parts = line.splitn(4, |&b| b == b' ');
    let pcr_s = parts.next().unwrap_or_default();
    let digest_s = parts.next().ok_or_else(|| Reason::BadLine("missing template digest".into()))?;
    let name = parts.next().ok_or_else(|| Reason::BadLine("missing template name".into()))?;
    let rest = parts.next();
    let pcr: u64 = std::str::from_utf8(pcr_s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reason::BadLine(format!("PCR {:?} is not a number", String::from_utf8_lossy(pcr_s))))?;
    if pcr > 23 {
        return Err(Reason::PcrIndex(pcr));
    }
    let digest = unhex("template digest", digest_s)?;
    if digest.len() != digest_len {
        return Err(Reason::DigestSize { got: digest.len(), want: digest_len });
    }
    let template = cache.get(name)?;
    let nf = template.fields().len();
    let texts: Vec<&[u8]> = match rest {
        Some(r) => r.split(|&b| b == b' ').collect(),
        None => Vec::new(),
    };
    if texts.len() != nf {
        return Err(Reason::FieldMismatch {
            template: template.name().to_owned(),
            detail: format!("{} fields on the line, template has {nf}", texts.len()),
        });
    }
    let mut fields: Vec<Vec<u8>> = Vec::with_capacity(nf);
    for (id, text) in template.fields().iter().zip(&texts) {
        fields.push(parse_field(*id, text, template.is_legacy_ima(), endian)?);
    }
    let refs: Vec<&[u8]> = fields.iter().map(|v| v.as_slice()).collect();
    let template_data = Record::encode_fields(&template, &refs, endian);
    Ok(Record { pcr: pcr as u32, digest, template, template_data })
}

fn parse_field(id: FieldId, text: &[u8], legacy: bool, endian: Endian) -> Result<Vec<u8>, Reason> {
    Ok(match id.fmt() {
        DataFmt::DigestWithAlgo | DataFmt::DigestWithTypeAndAlgo => {
            if text.is_empty() {
                return Ok(Vec::new());
            }
            let colon = text.iter().rposition(|&b| b == b':');
            let (prefix, hexpart) = match colon {
                Some(c) => (&text[..=c], &text[c + 1..]),
                None => (&text[..0], text),
            };
            let mut v = prefix.to_vec();
            if !prefix.is_empty() {
                v.push(0);
            }
            v.extend(unhex(id.id(), hexpart)?);
            v
        }
        DataFmt::Digest | DataFmt::Hex => {
            let v = unhex(id.id(), text)?;
            // The binary `ima` record has no length word for `d`: it is always 20 bytes.
            if legacy && id == FieldId::D && v.len() != 20 {
                return Err(legacy_bad(id, format!("digest of {} bytes, the `ima` template needs 20", v.len())));
            }
            v
        }
        DataFmt::String => {
            // The kernel prints strings with `%s`, which stops at the first NUL: a NUL in
            // the text cannot come from the kernel, and would not survive a write back.
            if text.contains(&0) {
                return Err(Reason::BadLine(format!("{} holds a NUL byte", id.id())));
            }
            // As in the binary decoder: the kernel's `ima` names are at most 255 bytes.
            if legacy && text.len() > 255 {
                return Err(legacy_bad(id, format!("name of {} bytes exceeds 255", text.len())));
            }
            let mut v = text.to_vec();
            // The kernel stores strings with their NUL, except the legacy `ima` name in
            // binary form. An empty string is ambiguous in ASCII; we read it as absent.
            if !legacy && !text.is_empty() {
                v.push(0);
            }
            v
        }
        DataFmt::Uint => {
            if text.is_empty() {
                return Ok(Vec::new());
            }
            let s = std::str::from_utf8(text).ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
                Reason::BadLine(format!("{} {:?} is not a decimal number", id.id(), String::from_utf8_lossy(text)))
            })?;
            let mut v = Vec::new();
            if id.uint_width() == 2 {
                let s = u16::try_from(s).map_err(|_| Reason::BadLine(format!("{} {s} exceeds u16", id.id())))?;
                endian.put_u16(&mut v, s);
            } else {
                let s = u32::try_from(s).map_err(|_| Reason::BadLine(format!("{} {s} exceeds u32", id.id())))?;
                endian.put_u32(&mut v, s);
            }
            v
        }
    })
}

fn legacy_bad(id: FieldId, detail: String) -> Reason {
    Reason::BadField { template: "ima".into(), field: id.id(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip() {
        let text = include_str!("../../../tests/fixtures/vectors/template-digest-lines.txt");
        let mut cache = TemplateCache::default();
        for line in text.lines() {
            let rec = parse_line(line.as_bytes(), 20, Endian::Little, &mut cache).unwrap();
            let mut out = Vec::new();
            write_line(&rec, Endian::Little, &mut out).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), format!("{line}\n"));
        }
    }

    #[test]
    fn errors() {
        let mut c = TemplateCache::default();
        let bad = parse_line(b"10 zz ima-ng sha1:00 x", 20, Endian::Little, &mut c).unwrap_err();
        assert!(matches!(bad, Reason::BadHex { .. }));
        let short = parse_line(b"10 0011 ima-ng sha1:00 x", 20, Endian::Little, &mut c).unwrap_err();
        assert!(matches!(short, Reason::DigestSize { got: 2, want: 20 }));
        let d = "00".repeat(20);
        let few = parse_line(format!("10 {d} ima-ng sha1:00").as_bytes(), 20, Endian::Little, &mut c).unwrap_err();
        assert!(matches!(few, Reason::FieldMismatch { .. }));
        let unk = parse_line(format!("10 {d} nope a b").as_bytes(), 20, Endian::Little, &mut c).unwrap_err();
        assert!(matches!(unk, Reason::UnknownTemplate(_)));
    }

    /// Parses `line`, then checks it writes back and re-parses to the same record.
    fn round_trip(line: &[u8]) -> Result<Record, Reason> {
        let mut c = TemplateCache::default();
        let rec = parse_line(line, 20, Endian::Little, &mut c)?;
        let mut out = Vec::new();
        write_line(&rec, Endian::Little, &mut out).expect("a parsed record must write back");
        let again = parse_line(out.strip_suffix(b"\n").unwrap(), 20, Endian::Little, &mut c).unwrap();
        assert_eq!(again, rec);
        Ok(rec)
    }

    /// Fuzz regression (ascii_log): an `ima` line with a `d` field that is not 20 bytes
    /// was accepted, but its binary form has no length word for `d`, so the record could
    /// not be split, written back or encoded.
    #[test]
    fn legacy_ima_digest_must_be_20_bytes() {
        let d = "00".repeat(20);
        let short = round_trip(format!("10 {d} ima b5a1 /init").as_bytes()).unwrap_err();
        assert!(matches!(short, Reason::BadField { field: "d", .. }), "{short:?}");
        let long = round_trip(format!("10 {d} ima {}00 /init", "11".repeat(20)).as_bytes()).unwrap_err();
        assert!(matches!(long, Reason::BadField { field: "d", .. }), "{long:?}");
        round_trip(format!("10 {d} ima {} /init", "11".repeat(20)).as_bytes()).unwrap();
        // Names over 255 bytes are refused, as in the binary decoder.
        let name = "a".repeat(256);
        let r = round_trip(format!("10 {d} ima {} {name}", "11".repeat(20)).as_bytes()).unwrap_err();
        assert!(matches!(r, Reason::BadField { field: "n", .. }), "{r:?}");
        round_trip(format!("10 {d} ima {} {}", "11".repeat(20), &name[1..]).as_bytes()).unwrap();
    }

    /// Fuzz regression (ascii_log): a NUL inside a printed string was kept, but `%s`
    /// never prints one and the writer stops at it, so the record changed on write-back.
    #[test]
    fn nul_in_string_field_is_refused() {
        let d = "00".repeat(20);
        for line in [
            format!("10 {d} ima-ng sha1:{d} b\x01\x00t_aggregate"),
            format!("10 {d} ima {d} /in\x00it"),
            format!("10 {d} d-ng|xattrnames sha1:{d} a\x00|b"),
        ] {
            let r = round_trip(line.as_bytes()).unwrap_err();
            assert!(matches!(r, Reason::BadLine(ref m) if m.contains("NUL")), "{r:?}");
        }
    }

    /// Fuzz regression (ascii_log): a trailing `\r` was stripped as if the file were CRLF,
    /// which cut it off a name that ends in `\r` (legal in Linux paths, printed raw by
    /// the kernel): `/foo\r\r` read as `/foo\r`, wrote back as `/foo\r\n`, re-read as
    /// `/foo`. The kernel never writes CRLF, so nothing is stripped.
    #[test]
    fn trailing_cr_belongs_to_the_name() {
        let d = "00".repeat(20);
        let rec = round_trip(format!("10 {d} ima-ng sha256:f1b4 /foo\r").as_bytes()).unwrap();
        assert_eq!(rec.name(Endian::Little).unwrap(), "/foo\r");
        let rec = round_trip(format!("10 {d} ima-ng sha256:f1b4 /foo\r\r").as_bytes()).unwrap();
        assert_eq!(rec.name(Endian::Little).unwrap(), "/foo\r\r");
    }
}
