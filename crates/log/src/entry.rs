//! Building records the way the kernel's field init functions do.

use crate::algo::HashAlgo;
use crate::codec::{Endian, Record};
use crate::digest::template_hash;
use crate::template::Template;
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
    let mut v: Vec<u8> = name.iter().map(|&b| if b == b' ' { b'_' } else { b }).collect();
    v.push(0);
    v
}

/// A record of `template` from field payloads, with its template digest in `bank`.
/// A violation gets an all-zero digest.
pub fn build(
    template: &Arc<Template>,
    fields: &[&[u8]],
    bank: HashAlgo,
    pcr: u32,
    violation: bool,
    endian: Endian,
) -> Record {
    let template_data = Record::encode_fields(template, fields, endian);
    let mut rec = Record { pcr, digest: vec![0; bank.size()], template: template.clone(), template_data };
    if !violation {
        rec.digest = template_hash(bank, &rec, endian).expect("well-formed by construction").as_bytes().to_vec();
    }
    rec
}

/// Template descriptor helper for built-ins (panics only on a misspelt constant).
pub fn builtin(name: &str) -> Arc<Template> {
    Arc::new(Template::parse(name).expect("built-in template"))
}
