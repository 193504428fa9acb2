//! Template descriptors and typed field views (kernel `ima_template.c`, `ima_template_lib.c`).

use crate::codec::Endian;
use crate::error::Reason;
use std::sync::Arc;

/// Kernel limit on fields per template (`IMA_TEMPLATE_NUM_FIELDS_MAX`).
pub const MAX_FIELDS: usize = 15;
/// Longest template name the kernel restores: `sizeof("d-ng|n-ng|evmsig|…|imode") - 1`.
pub const MAX_TEMPLATE_NAME: usize = 68;
/// `ima` template names are padded to this many bytes for hashing (`IMA_EVENT_NAME_LEN_MAX + 1`).
pub const IMA_NAME_HASH_LEN: usize = 256;

/// How the kernel prints a field in ASCII (`enum data_formats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFmt {
    Digest,
    DigestWithAlgo,
    DigestWithTypeAndAlgo,
    String,
    Hex,
    Uint,
}

/// Template field identifiers (`supported_fields[]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldId {
    D,
    N,
    DNg,
    DNgV2,
    NNg,
    Sig,
    Buf,
    DModsig,
    Modsig,
    Evmsig,
    Iuid,
    Igid,
    Imode,
    XattrNames,
    XattrLengths,
    XattrValues,
}

impl FieldId {
    pub const ALL: [FieldId; 16] = [
        Self::D,
        Self::N,
        Self::DNg,
        Self::DNgV2,
        Self::NNg,
        Self::Sig,
        Self::Buf,
        Self::DModsig,
        Self::Modsig,
        Self::Evmsig,
        Self::Iuid,
        Self::Igid,
        Self::Imode,
        Self::XattrNames,
        Self::XattrLengths,
        Self::XattrValues,
    ];

    pub const fn id(self) -> &'static str {
        match self {
            Self::D => "d",
            Self::N => "n",
            Self::DNg => "d-ng",
            Self::DNgV2 => "d-ngv2",
            Self::NNg => "n-ng",
            Self::Sig => "sig",
            Self::Buf => "buf",
            Self::DModsig => "d-modsig",
            Self::Modsig => "modsig",
            Self::Evmsig => "evmsig",
            Self::Iuid => "iuid",
            Self::Igid => "igid",
            Self::Imode => "imode",
            Self::XattrNames => "xattrnames",
            Self::XattrLengths => "xattrlengths",
            Self::XattrValues => "xattrvalues",
        }
    }

    pub fn from_id(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.id() == s)
    }

    /// ASCII print format, per the `field_show` callback the kernel assigns.
    pub const fn fmt(self) -> DataFmt {
        match self {
            Self::D => DataFmt::Digest,
            Self::DNg | Self::DModsig => DataFmt::DigestWithAlgo,
            Self::DNgV2 => DataFmt::DigestWithTypeAndAlgo,
            Self::N | Self::NNg | Self::XattrNames => DataFmt::String,
            Self::Iuid | Self::Igid | Self::Imode => DataFmt::Uint,
            Self::Sig | Self::Buf | Self::Modsig | Self::Evmsig | Self::XattrLengths | Self::XattrValues => {
                DataFmt::Hex
            }
        }
    }

    /// Byte width of an unsigned field when present.
    pub const fn uint_width(self) -> usize {
        match self {
            Self::Imode => 2,
            _ => 4,
        }
    }
}

/// Built-in templates (kernel `builtin_templates[]`).
pub const BUILTIN: &[(&str, &str)] = &[
    ("ima", "d|n"),
    ("ima-ng", "d-ng|n-ng"),
    ("ima-ngv2", "d-ngv2|n-ng"),
    ("ima-sig", "d-ng|n-ng|sig"),
    ("ima-sigv2", "d-ngv2|n-ng|sig"),
    ("ima-buf", "d-ng|n-ng|buf"),
    ("ima-modsig", "d-ng|n-ng|sig|d-modsig|modsig"),
    ("evm-sig", "d-ng|n-ng|evmsig|xattrnames|xattrlengths|xattrvalues|iuid|igid|imode"),
];

/// A template: the name as it appears in the log and its field list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    name: String,
    fields: Vec<FieldId>,
    /// Only a template *named* `ima` gets the legacy encoding and hash.
    legacy_ima: bool,
}

impl Template {
    /// Resolves a template name: a built-in name, or a custom fmt string such as `d-ng|n-ng|iuid`.
    pub fn parse(name: &str) -> Result<Self, Reason> {
        if name.is_empty() || name.len() > MAX_TEMPLATE_NAME {
            return Err(Reason::UnknownTemplate(name.to_owned()));
        }
        let fmt = BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).unwrap_or(name);
        let mut fields = Vec::new();
        for id in fmt.split('|') {
            let f = FieldId::from_id(id).ok_or_else(|| Reason::UnknownTemplate(name.to_owned()))?;
            fields.push(f);
        }
        if fields.len() > MAX_FIELDS {
            return Err(Reason::UnknownTemplate(name.to_owned()));
        }
        Ok(Self { legacy_ima: name == "ima", name: name.to_owned(), fields })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn fields(&self) -> &[FieldId] {
        &self.fields
    }
    pub fn is_legacy_ima(&self) -> bool {
        self.legacy_ima
    }

    /// Splits binary template data into raw field payloads, enforcing an exact fit
    /// (the kernel's `ENFORCE_FIELDS | ENFORCE_BUFEND`). `ima` data is `d` (20 raw bytes)
    /// then `n` as u32 length + name without NUL.
    pub fn split<'a>(&self, data: &'a [u8], endian: Endian, out: &mut Vec<&'a [u8]>) -> Result<(), Reason> {
        out.clear();
        self.walk(data, endian, |f| out.push(f))
    }

    /// Visits each field payload in order; the allocation-free core of [`Template::split`].
    pub fn walk<'a>(&self, data: &'a [u8], endian: Endian, mut visit: impl FnMut(&'a [u8])) -> Result<(), Reason> {
        let mut p = 0usize;
        for (i, f) in self.fields.iter().enumerate() {
            if self.legacy_ima && *f == FieldId::D {
                let d = data
                    .get(p..p + 20)
                    .ok_or_else(|| self.mismatch(format!("field {i} ({}) needs 20 bytes", f.id())))?;
                visit(d);
                p += 20;
                continue;
            }
            let lb = data.get(p..p + 4).ok_or_else(|| {
                self.mismatch(format!("field {i} ({}) length word missing at data offset {p}", f.id()))
            })?;
            let len = endian.u32(lb) as usize;
            p += 4;
            let v = data.get(p..).and_then(|r| r.get(..len)).ok_or_else(|| {
                self.mismatch(format!("field {i} ({}) claims {len} bytes, {} remain", f.id(), data.len() - p))
            })?;
            visit(v);
            p += len;
        }
        if p != data.len() {
            return Err(self.mismatch(format!("{} bytes left after the last field", data.len() - p)));
        }
        Ok(())
    }

    /// Typed view of field `i` given its raw payload.
    pub fn field<'a>(&self, i: usize, raw: &'a [u8], endian: Endian) -> Result<Field<'a>, Reason> {
        let id = *self.fields.get(i).ok_or_else(|| self.mismatch(format!("no field {i}")))?;
        let bad = |detail: String| Reason::BadField { template: self.name.clone(), field: id.id(), detail };
        Ok(match id {
            FieldId::D => Field::Digest { kind: None, algo: None, digest: raw },
            FieldId::DNg | FieldId::DModsig | FieldId::DNgV2 => {
                if raw.is_empty() {
                    return Ok(Field::Digest { kind: None, algo: None, digest: raw });
                }
                let (prefix, digest) = split_digest_prefix(raw).ok_or_else(|| bad("no `<algo>:` NUL prefix".into()))?;
                let prefix = std::str::from_utf8(prefix).map_err(|_| bad("algorithm prefix is not text".into()))?;
                let body = &prefix[..prefix.len() - 1];
                if id == FieldId::DNgV2 {
                    let (kind, algo) = body.split_once(':').ok_or_else(|| bad("want `<type>:<algo>:`".into()))?;
                    Field::Digest { kind: Some(kind), algo: Some(algo), digest }
                } else {
                    Field::Digest { kind: None, algo: Some(body), digest }
                }
            }
            FieldId::N | FieldId::NNg => Field::Name(strip_nul(raw)),
            FieldId::XattrNames => Field::XattrNames(strip_nul(raw)),
            FieldId::Sig => Field::Signature(raw),
            FieldId::Buf => Field::Buffer(raw),
            FieldId::Modsig | FieldId::Evmsig | FieldId::XattrValues => Field::Bytes(raw),
            FieldId::XattrLengths => {
                if !raw.len().is_multiple_of(4) {
                    return Err(bad(format!("length {} is not a multiple of 4", raw.len())));
                }
                Field::XattrLengths(raw)
            }
            FieldId::Iuid | FieldId::Igid | FieldId::Imode => match raw.len() {
                0 => Field::Uint(id, None),
                2 => Field::Uint(id, Some(endian.u16(raw) as u64)),
                4 => Field::Uint(id, Some(endian.u32(raw) as u64)),
                8 => Field::Uint(id, Some(endian.u64(raw))),
                1 => Field::Uint(id, Some(raw[0] as u64)),
                n => return Err(bad(format!("unsigned field of {n} bytes"))),
            },
        })
    }

    fn mismatch(&self, detail: String) -> Reason {
        Reason::FieldMismatch { template: self.name.clone(), detail }
    }
}

/// `<prefix>:` NUL digest → (prefix including the colon, digest). Mirrors the kernel's
/// `strrchr(data, ':')` on a C string.
pub(crate) fn split_digest_prefix(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = raw.iter().position(|&b| b == 0)?;
    let colon = raw[..nul].iter().rposition(|&b| b == b':')?;
    if colon + 1 != nul {
        return None;
    }
    Some((&raw[..nul], &raw[nul + 1..]))
}

fn strip_nul(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(&[0]).unwrap_or(raw)
}

/// A typed view of one field's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    /// `d`, `d-ng`, `d-ngv2`, `d-modsig`. `kind` is `ima`/`verity` for v2.
    Digest { kind: Option<&'a str>, algo: Option<&'a str>, digest: &'a [u8] },
    /// `n`, `n-ng`: the name without its NUL.
    Name(&'a [u8]),
    /// `sig`: the `security.ima` xattr (see [`ImaSignature`]) or an EVM portable signature.
    Signature(&'a [u8]),
    /// `buf`: the measured buffer of an `ima-buf` record.
    Buffer(&'a [u8]),
    /// `modsig`, `evmsig`, `xattrvalues`.
    Bytes(&'a [u8]),
    /// `xattrnames`: names joined by `|`.
    XattrNames(&'a [u8]),
    /// `xattrlengths`: array of u32 in log byte order.
    XattrLengths(&'a [u8]),
    /// `iuid`, `igid`, `imode`; `None` when there is no inode.
    Uint(FieldId, Option<u64>),
}

/// The header of an IMA signature (`struct signature_v2_hdr`), from a `sig` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImaSignature<'a> {
    /// 0x03 = EVM_IMA_XATTR_DIGSIG, 0x05 = EVM portable, 0x06 = IMA_VERITY_DIGSIG.
    pub xattr_type: u8,
    pub version: u8,
    /// Kernel `enum hash_algo` index (4 = sha256).
    pub hash_algo: u8,
    /// Last 4 bytes of the key's subject key identifier, big-endian.
    pub keyid: u32,
    pub signature: &'a [u8],
}

impl<'a> ImaSignature<'a> {
    /// Parses a v2/v3 signature header; the size field is big-endian on every host.
    pub fn parse(raw: &'a [u8]) -> Result<Self, String> {
        if raw.len() < 9 {
            return Err(format!("signature of {} bytes is shorter than its 9-byte header", raw.len()));
        }
        let size = u16::from_be_bytes([raw[7], raw[8]]) as usize;
        let signature = &raw[9..];
        if signature.len() != size {
            return Err(format!("signature header says {size} bytes, {} follow", signature.len()));
        }
        Ok(Self {
            xattr_type: raw[0],
            version: raw[1],
            hash_algo: raw[2],
            keyid: u32::from_be_bytes([raw[3], raw[4], raw[5], raw[6]]),
            signature,
        })
    }
}

/// Interns templates by name so records share one descriptor.
#[derive(Default, Debug)]
pub struct TemplateCache {
    entries: Vec<Arc<Template>>,
}

impl TemplateCache {
    pub fn get(&mut self, name: &[u8]) -> Result<Arc<Template>, Reason> {
        if let Some(t) = self.entries.iter().find(|t| t.name.as_bytes() == name) {
            return Ok(t.clone());
        }
        let s = std::str::from_utf8(name).map_err(|_| Reason::BadTemplateName)?;
        let t = Arc::new(Template::parse(s)?);
        // Bounded: a hostile log cycling custom fmt strings cannot grow this forever.
        if self.entries.len() < 64 {
            self.entries.push(t.clone());
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_and_custom() {
        assert_eq!(Template::parse("ima-sig").unwrap().fields(), &[FieldId::DNg, FieldId::NNg, FieldId::Sig]);
        assert!(Template::parse("ima").unwrap().is_legacy_ima());
        assert!(!Template::parse("d|n").unwrap().is_legacy_ima());
        assert_eq!(Template::parse("d-ng|n-ng|iuid").unwrap().fields().len(), 3);
        assert!(matches!(Template::parse("bogus"), Err(Reason::UnknownTemplate(_))));
        assert!(Template::parse("evm-sig").is_ok());
        let long = vec!["d-ng"; 16].join("|");
        assert!(Template::parse(&long).is_err());
    }

    #[test]
    fn split_enforces_exact_fit() {
        let t = Template::parse("ima-ng").unwrap();
        let mut out = Vec::new();
        let mut data = Vec::new();
        data.extend_from_slice(&3u32.to_le_bytes());
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&1u32.to_le_bytes());
        data.push(0);
        t.split(&data, Endian::Little, &mut out).unwrap();
        assert_eq!(out, vec![&b"abc"[..], &[0u8][..]]);
        let mut out2 = Vec::new();
        let mut longer = data.clone();
        longer.push(9);
        assert!(matches!(t.split(&longer, Endian::Little, &mut out2), Err(Reason::FieldMismatch { .. })));
        assert!(t.split(&data[..5], Endian::Little, &mut out2).is_err());
    }
}
