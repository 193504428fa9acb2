//! Runtime policies (`imasnap-policy`) on arbitrary bytes: `Policy::parse`, which reads a
//! Keylime JSON runtime policy (or legacy JSON allowlist) when the input starts with `{`,
//! and a flat `sha256sum`-style allowlist otherwise.
//!
//! Asserted beyond "no panic":
//! - a loaded policy exports (`to_keylime_json`) to JSON that loads back to an equal
//!   policy (warnings aside: they describe the input's form), and exporting that gives the
//!   same JSON;
//! - both policies judge the twelve records of the real-kernel `ima-sig` fixture (four of
//!   them signed) and a record named after one policy entry identically, with the record
//!   index in every failure;
//! - a load error of a flat allowlist names a line inside the input.
#![no_main]

use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::{BinaryFormat, BinaryReader, Endian, HashAlgo, Record};
use imasnap_policy::{LoadError, Policy};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/real-kernel/ima-sig/binary_runtime_measurements");

fn fixture() -> &'static [Record] {
    static R: OnceLock<Vec<Record>> = OnceLock::new();
    R.get_or_init(|| {
        BinaryReader::new(FIXTURE, BinaryFormat::new(HashAlgo::Sha1)).collect::<Result<Vec<_>, _>>().unwrap()
    })
}

/// A record whose name is the policy's first `digests` entry, with that entry's digest.
fn entry_record(p: &Policy) -> Option<Record> {
    let (name, list) = p.data().digests.iter().min_by(|a, b| a.0.cmp(b.0))?;
    let d = list.first()?;
    let algo = d.algo.clone().unwrap_or_else(|| "sha256".into());
    let dng = d_ng(&algo, &d.bytes);
    let mut n = name.to_vec();
    n.retain(|&c| c != 0);
    Some(build(&builtin("ima-ng"), &[&dng, &n_ng(&n)], HashAlgo::Sha1, 10, false, Endian::Little))
}

fn judge(p: &Policy, recs: &[Record]) -> Vec<String> {
    recs.iter()
        .enumerate()
        .map(|(i, r)| match p.check(i as u64 + 7, r) {
            Ok(a) => format!("{a:?}"),
            Err(f) => {
                assert_eq!(f.index, i as u64 + 7);
                format!("{}: {}", f.reason, f.detail)
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let p = match Policy::parse(data) {
        Ok(p) => p,
        Err(LoadError::Line { line, .. }) => {
            let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
            assert!(line >= 1 && line <= lines, "line {line} of {lines}");
            return;
        }
        Err(_) => return,
    };
    let json = p.to_keylime_json();
    let bytes = serde_json::to_vec(&json).unwrap();
    let back = match Policy::from_keylime_json(&bytes) {
        Ok(b) => b,
        Err(e) => panic!("exported policy does not load: {e}\n{json}"),
    };
    let (mut a, mut b) = (p.data().clone(), back.data().clone());
    a.warnings.clear();
    b.warnings.clear();
    assert_eq!(a, b, "policy round trip");
    assert_eq!(back.to_keylime_json(), json, "second export");
    let mut recs = fixture().to_vec();
    recs.extend(entry_record(&p));
    assert_eq!(judge(&p, &recs), judge(&back, &recs));
});
