//! The record model and the sans-IO binary codec (`binary_runtime_measurements[_<alg>]`).

use crate::algo::HashAlgo;
use crate::error::Reason;
use crate::template::{Template, TemplateCache, MAX_TEMPLATE_NAME};
use std::sync::Arc;

/// Byte order of the integers in a binary log. The file carries no marker, so it is a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Endian {
    /// Host order on x86/arm64, and `ima_canonical_fmt` everywhere.
    #[default]
    Little,
    Big,
}

impl Endian {
    #[inline]
    pub fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            Self::Little => u16::from_le_bytes(a),
            Self::Big => u16::from_be_bytes(a),
        }
    }
    #[inline]
    pub fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Self::Little => u32::from_le_bytes(a),
            Self::Big => u32::from_be_bytes(a),
        }
    }
    #[inline]
    pub fn u64(self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Self::Little => u64::from_le_bytes(a),
            Self::Big => u64::from_be_bytes(a),
        }
    }
    pub fn put_u16(self, out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        });
    }
    pub fn put_u32(self, out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        });
    }
    pub fn put_u64(self, out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        });
    }
}

/// One measurement record, as stored in a binary log of one bank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pcr: u32,
    /// Template digest of the file's bank (20 bytes in the classic SHA1 file). All zero for a violation.
    pub digest: Vec<u8>,
    pub template: Arc<Template>,
    /// Template data exactly as in the binary file, without the outer length word. For the
    /// legacy `ima` template: 20-byte `d`, then u32 length and the name without NUL.
    pub template_data: Vec<u8>,
}

/// One decoded record that still borrows the input bytes.
#[derive(Debug)]
pub struct RawRecord<'b> {
    /// Bytes the record takes in the input.
    pub len: usize,
    pub pcr: u32,
    pub digest: &'b [u8],
    pub template: Arc<Template>,
    pub data: &'b [u8],
}

impl RawRecord<'_> {
    /// Copies the record into `slot`, reusing its buffers, and returns it.
    pub fn store_in<'s>(&self, slot: &'s mut Option<Record>) -> &'s mut Record {
        let r = slot.get_or_insert_with(|| Record {
            pcr: self.pcr,
            digest: Vec::with_capacity(self.digest.len()),
            template: self.template.clone(),
            template_data: Vec::with_capacity(self.data.len()),
        });
        r.pcr = self.pcr;
        r.digest.clear();
        r.digest.extend_from_slice(self.digest);
        r.template = self.template.clone();
        r.template_data.clear();
        r.template_data.extend_from_slice(self.data);
        r
    }

    pub fn to_record(&self) -> Record {
        Record {
            pcr: self.pcr,
            digest: self.digest.to_vec(),
            template: self.template.clone(),
            template_data: self.data.to_vec(),
        }
    }
}

impl Record {
    /// A violation has an all-zero template digest in every bank.
    pub fn is_violation(&self) -> bool {
        self.digest.iter().all(|&b| b == 0)
    }

    /// Builds template data from field payloads, in the template's own encoding.
    pub fn encode_fields(template: &Template, fields: &[&[u8]], endian: Endian) -> Vec<u8> {
        let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
        for (i, f) in fields.iter().enumerate() {
            if !(template.is_legacy_ima() && i == 0) {
                endian.put_u32(&mut out, f.len() as u32);
            }
            out.extend_from_slice(f);
        }
        out
    }

    /// Size of this record in binary form.
    pub fn encoded_len(&self) -> usize {
        let data_len = if self.template.is_legacy_ima() { 0 } else { 4 };
        4 + self.digest.len() + 4 + self.template.name().len() + data_len + self.template_data.len()
    }

    /// Appends this record in binary form (`ima_measurements_show`).
    pub fn encode(&self, endian: Endian, out: &mut Vec<u8>) {
        encode_parts(self.pcr, &self.digest, &self.template, &self.template_data, endian, out)
    }

    /// Raw field payloads (validated split).
    pub fn fields(&self, endian: Endian) -> Result<Vec<&[u8]>, Reason> {
        let mut v = Vec::with_capacity(self.template.fields().len());
        self.template.split(&self.template_data, endian, &mut v)?;
        Ok(v)
    }

    /// The event name (`n`/`n-ng`), lossily as text, for messages and policy lookups.
    pub fn name(&self, endian: Endian) -> Option<String> {
        let fields = self.fields(endian).ok()?;
        let t = &self.template;
        (0..fields.len()).find_map(|i| match t.field(i, fields[i], endian) {
            Ok(crate::template::Field::Name(n)) => Some(String::from_utf8_lossy(n).into_owned()),
            _ => None,
        })
    }
}

/// Settings of a binary log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinaryFormat {
    pub endian: Endian,
    /// Length of the template digest in each record: the bank's digest size.
    pub digest_len: usize,
    /// Template data longer than this is refused as absurd before any allocation.
    pub max_template_data: u32,
}

/// Default cap on one record's template data. Real records are well under a page; an
/// `ima-buf` of a large key or policy stays far below this.
pub const DEFAULT_MAX_TEMPLATE_DATA: u32 = 16 << 20;

impl BinaryFormat {
    pub fn new(bank: HashAlgo) -> Self {
        Self { endian: Endian::Little, digest_len: bank.size(), max_template_data: DEFAULT_MAX_TEMPLATE_DATA }
    }

    /// Derives the bank from a securityfs file name: `…_sha256` etc.; the classic name is SHA1.
    /// `_tpm_alg_<id>` files have no defined digest length and are refused.
    pub fn bank_from_file_name(name: &str) -> Result<HashAlgo, String> {
        let base = name.rsplit('/').next().unwrap_or(name);
        if let Some(pos) = base.find("_tpm_alg_") {
            return Err(format!(
                "{base}: bank {} is one the kernel cannot hash; its digest length is undefined",
                &base[pos + 9..]
            ));
        }
        for a in HashAlgo::ALL {
            if base.ends_with(&format!("_{}", a.name())) {
                return Ok(a);
            }
        }
        Ok(HashAlgo::Sha1)
    }

    /// Decodes one record from the front of `buf` (sans-IO). Returns `Ok(None)` when `buf`
    /// holds only a prefix of a record; the caller supplies more bytes, or reports
    /// truncation at end of input via [`BinaryFormat::truncation`].
    pub fn decode(
        &self,
        buf: &[u8],
        cache: &mut TemplateCache,
        rec: &mut Option<Record>,
    ) -> Result<Option<usize>, (u64, Reason)> {
        Ok(self.parse(buf, cache)?.map(|raw| {
            raw.store_in(rec);
            raw.len
        }))
    }

    /// Like [`BinaryFormat::decode`], but leaves the record in `buf`: the caller stores it
    /// where it wants ([`RawRecord::store_in`], [`RawRecord::to_record`]).
    pub fn parse<'b>(&self, buf: &'b [u8], cache: &mut TemplateCache) -> Result<Option<RawRecord<'b>>, (u64, Reason)> {
        let e = self.endian;
        let dl = self.digest_len;
        let Some(head) = buf.get(..4 + dl + 4) else {
            return Ok(None);
        };
        let pcr = e.u32(head);
        if pcr > 23 {
            return Err((0, Reason::PcrIndex(pcr as u64)));
        }
        let name_len = e.u32(&head[4 + dl..]) as usize;
        if name_len == 0 || name_len > MAX_TEMPLATE_NAME {
            return Err((
                (4 + dl) as u64,
                Reason::AbsurdLength { what: "template name", len: name_len as u64, limit: MAX_TEMPLATE_NAME as u64 },
            ));
        }
        let mut p = 4 + dl + 4;
        let Some(name) = buf.get(p..p + name_len) else {
            return Ok(None);
        };
        let template = cache.get(name).map_err(|r| (p as u64, r))?;
        p += name_len;
        let data_len = if template.is_legacy_ima() {
            // No length word: `d` is 20 bytes, then `n` as u32 length + name.
            let Some(nl) = buf.get(p + 20..p + 24) else {
                return Ok(None);
            };
            let nl = e.u32(nl);
            if nl > 255 {
                return Err((
                    (p + 20) as u64,
                    Reason::AbsurdLength { what: "ima template name", len: nl as u64, limit: 255 },
                ));
            }
            24 + nl as usize
        } else {
            let Some(l) = buf.get(p..p + 4) else {
                return Ok(None);
            };
            let l = e.u32(l);
            if l > self.max_template_data {
                return Err((
                    p as u64,
                    Reason::AbsurdLength { what: "template data", len: l as u64, limit: self.max_template_data as u64 },
                ));
            }
            p += 4;
            l as usize
        };
        let Some(data) = buf.get(p..p + data_len) else {
            return Ok(None);
        };
        template.walk(data, e, |_| ()).map_err(|r| (p as u64, r))?;
        Ok(Some(RawRecord { len: p + data_len, pcr, digest: &head[4..4 + dl], template, data }))
    }

    /// Explains why the `avail` bytes at the end of the input do not form a record.
    pub fn truncation(&self, buf: &[u8]) -> (u64, Reason) {
        let e = self.endian;
        let dl = self.digest_len;
        let avail = buf.len() as u64;
        let t = |what, needed: usize| (0, Reason::Truncated { what, needed: needed as u64, available: avail });
        if buf.len() < 4 + dl + 4 {
            return t("record header", 4 + dl + 4);
        }
        let nl = e.u32(&buf[4 + dl..]) as usize;
        let p = 4 + dl + 4 + nl;
        if buf.len() < p {
            return t("template name", p);
        }
        let legacy = &buf[4 + dl + 4..p] == b"ima";
        if legacy {
            if buf.len() < p + 24 {
                return t("ima template data", p + 24);
            }
            return t("ima template name", p + 24 + e.u32(&buf[p + 20..]) as usize);
        }
        if buf.len() < p + 4 {
            return t("template data length", p + 4);
        }
        t("template data", p + 4 + e.u32(&buf[p..]) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_A: &str = "0a0000002e03b3fdb0014fc8bae2a07ca33ae67125b290f306000000696d612d6e673f000000280000007368613235363a0083d19723ef3b3c05bb8ae70d86b3886c158f2408f1b71ed265886a7b79eb700e0f000000626f6f745f61676772656761746500";
    const VECTOR_B: &str = "0a0000002c7020ad8cab6b7419e4973171cb704bdbf52f7703000000696d61e09e048c48301268ff38645f4c006137e42951d0050000002f696e6974";

    fn decode_one(hexs: &str) -> Record {
        let buf = hex::decode(hexs).unwrap();
        let f = BinaryFormat::new(HashAlgo::Sha1);
        let mut rec = None;
        let n = f.decode(&buf, &mut TemplateCache::default(), &mut rec).unwrap().unwrap();
        assert_eq!(n, buf.len());
        let rec = rec.unwrap();
        let mut out = Vec::new();
        rec.encode(Endian::Little, &mut out);
        assert_eq!(out, buf, "byte-identical re-encoding");
        assert_eq!(rec.encoded_len(), buf.len());
        rec
    }

    #[test]
    fn vector_a_and_b() {
        let a = decode_one(VECTOR_A);
        assert_eq!(a.template.name(), "ima-ng");
        assert_eq!(a.name(Endian::Little).unwrap(), "boot_aggregate");
        let b = decode_one(VECTOR_B);
        assert_eq!(b.template.name(), "ima");
        assert_eq!(b.name(Endian::Little).unwrap(), "/init");
    }

    #[test]
    fn every_prefix_is_incomplete_not_error() {
        let buf = hex::decode(VECTOR_A).unwrap();
        let f = BinaryFormat::new(HashAlgo::Sha1);
        for n in 0..buf.len() {
            let mut rec = None;
            assert_eq!(f.decode(&buf[..n], &mut TemplateCache::default(), &mut rec).unwrap(), None, "prefix {n}");
            let (_, r) = f.truncation(&buf[..n]);
            assert!(matches!(r, Reason::Truncated { .. }));
        }
    }

    #[test]
    fn bank_from_file_names() {
        assert_eq!(BinaryFormat::bank_from_file_name("binary_runtime_measurements").unwrap(), HashAlgo::Sha1);
        assert_eq!(
            BinaryFormat::bank_from_file_name("/x/binary_runtime_measurements_sha256").unwrap(),
            HashAlgo::Sha256
        );
        assert_eq!(BinaryFormat::bank_from_file_name("binary_runtime_measurements_sm3").unwrap(), HashAlgo::Sm3);
        assert!(BinaryFormat::bank_from_file_name("binary_runtime_measurements_tpm_alg_29").is_err());
    }
}

/// [`Record::encode`] from borrowed parts (a list renderer that keeps its own entries).
pub fn encode_parts(pcr: u32, digest: &[u8], template: &Template, data: &[u8], endian: Endian, out: &mut Vec<u8>) {
    endian.put_u32(out, pcr);
    out.extend_from_slice(digest);
    let name = template.name().as_bytes();
    endian.put_u32(out, name.len() as u32);
    out.extend_from_slice(name);
    if !template.is_legacy_ima() {
        endian.put_u32(out, data.len() as u32);
    }
    out.extend_from_slice(data);
}
