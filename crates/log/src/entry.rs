//! Building records the way the kernel's field init functions do.

use crate::algo::HashAlgo;
use crate::codec::{Endian, Record};
use crate::error::Reason;
use crate::template::{Template, IMA_NAME_HASH_LEN};
use std::sync::Arc;

/// `d-ng` payload: `<algo>:` NUL digest.
pub fn d_ng(algo: &str, digest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(algo.len() + 2 + digest.len());
    v.extend_from_slice(algo.as_bytes());
    v.extend_from_slice(b":\0");
    v.extend_from_slice(digest);
    v
}

/// `n-ng` payload: the name with spaces turned into `_`, then NUL.
pub fn n_ng(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len() + 1);
    v.extend(name.iter().map(|&b| if b == b' ' { b'_' } else { b }));
    v.push(0);
    v
}

/// A record of `template` from field payloads, with its template digest in `bank`.
/// A violation gets an all-zero digest.
///
/// The legacy `ima` template can only hold a 20-byte `d` and a name shorter than 255
/// bytes: its fields are cut or zero-padded to that shape, so the record always hashes.
pub fn build(
    template: &Arc<Template>,
    fields: &[&[u8]],
    bank: HashAlgo,
    pcr: u32,
    violation: bool,
    endian: Endian,
) -> Record {
    let (template_data, digest) = if template.is_legacy_ima() {
        let mut d = [0u8; 20];
        let given = fields.first().copied().unwrap_or_default();
        let k = given.len().min(20);
        d[..k].copy_from_slice(&given[..k]);
        let name = fields.get(1).copied().unwrap_or_default();
        let name = &name[..name.len().min(IMA_NAME_HASH_LEN - 1)];
        let mut padded = [0u8; IMA_NAME_HASH_LEN];
        padded[..name.len()].copy_from_slice(name);
        let data = Record::encode_fields(template, &[&d, name], endian);
        (data, bank.hash(&[&d, &padded]))
    } else {
        // Length-prefixed fields: the template digest is the hash of the data.
        let data = Record::encode_fields(template, fields, endian);
        let h = bank.hash(&[&data]);
        (data, h)
    };
    let digest = if violation { vec![0; bank.size()] } else { digest.as_bytes().to_vec() };
    Record { pcr, digest, template: template.clone(), template_data }
}

/// Template descriptor of a built-in template, or of a custom `field|field` format.
pub fn template(name: &str) -> Result<Arc<Template>, Reason> {
    Template::parse(name).map(Arc::new)
}

/// Template descriptor of a built-in named by a constant; a name from input goes
/// through [`template`] instead.
#[allow(clippy::expect_used)] // a static name: only a misspelt constant fails, on first use in any test
pub fn builtin(name: &'static str) -> Arc<Template> {
    Arc::new(Template::parse(name).expect("built-in template"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::template_hash;
    use crate::template::TemplateCache;
    use crate::BinaryFormat;

    /// `build` never panics: legacy `ima` fields of the wrong shape are cut or padded to
    /// the 20-byte `d` and the name under 255 bytes the format holds, and the digest is
    /// the one a reader recomputes.
    #[test]
    fn finding_13_build_legacy_ima_always_hashes() {
        let e = Endian::Little;
        for (d, name) in [(&[7u8; 5][..], &b"/short-d"[..]), (&[7u8; 40][..], &[b'n'; 400][..]), (&[][..], &[][..])] {
            let rec = build(&builtin("ima"), &[d, name], HashAlgo::Sha1, 10, false, e);
            assert_eq!(rec.digest, template_hash(HashAlgo::Sha1, &rec, e).unwrap().as_bytes());
            let mut bin = Vec::new();
            rec.encode(e, &mut bin);
            let mut back = None;
            BinaryFormat::new(HashAlgo::Sha1).decode(&bin, &mut TemplateCache::default(), &mut back).unwrap();
            assert_eq!(back.as_ref(), Some(&rec));
        }
        assert!(build(&builtin("ima"), &[], HashAlgo::Sha256, 10, true, e).digest.iter().all(|&b| b == 0));
    }

    #[test]
    fn finding_13_template_from_input_is_an_error() {
        assert!(template("ima-ng").is_ok());
        assert!(template("no-such-field").is_err());
    }
}
