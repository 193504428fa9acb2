//! The policy on a log written by a real kernel (tests/fixtures/real-kernel/ima-sig:
//! `ima_policy=tcb ima_template=ima-sig ima_hash=sha256`, 12 records, 4 of them signed
//! with the RSA-2048 key of signing-cert.der, key id 03211fa6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_log::entry::{build, builtin};
use imasnap_log::{BinaryFormat, BinaryReader, Endian, HashAlgo, Record};
use imasnap_policy::*;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/real-kernel/ima-sig")
}

fn records() -> Vec<Record> {
    let f = std::fs::File::open(dir().join("binary_runtime_measurements")).unwrap();
    BinaryReader::new(f, BinaryFormat::new(HashAlgo::Sha1)).collect::<Result<Vec<_>, _>>().unwrap()
}

fn cert_ring() -> KeyRing {
    let mut k = KeyRing::new();
    k.add_bytes(&std::fs::read(dir().join("signing-cert.der")).unwrap(), "signing-cert.der").unwrap();
    k
}

const SIGNED: [&str; 4] =
    ["/data/etc/config.json", "/data/bin/busybox", "/data/bin/hello.sh", "/data/files/signed.txt"];

/// `sha256sum`-style allowlist of every record from the ASCII log, minus `skip`.
fn allowlist(skip: &[&str]) -> String {
    let ascii = std::fs::read_to_string(dir().join("ascii_runtime_measurements")).unwrap();
    let mut out = String::from("# generated from ascii_runtime_measurements\n");
    for line in ascii.lines() {
        let cols: Vec<&str> = line.split(' ').collect();
        let (digest, path) = (cols[3].strip_prefix("sha256:").unwrap(), cols[4]);
        if !skip.contains(&path) {
            out.push_str(&format!("{digest}  {path}\n"));
        }
    }
    out
}

fn check_all(p: &Policy, recs: &[Record]) -> (Vec<Allowed>, Vec<PolicyFailure>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        match p.check(i as u64, r) {
            Ok(a) => ok.push(a),
            Err(f) => bad.push(f),
        }
    }
    (ok, bad)
}

/// Rebuilds record `i` with one byte of its signature flipped.
fn flip_sig(recs: &mut [Record], i: usize, byte: usize) {
    let r = &recs[i];
    let f = r.fields(Endian::Little).unwrap();
    let mut sig = f[2].to_vec();
    assert!(!sig.is_empty(), "record {i} is signed");
    sig[byte] ^= 0x01;
    let t = builtin("ima-sig");
    recs[i] = build(&t, &[f[0], f[1], &sig], HashAlgo::Sha1, 10, false, Endian::Little);
}

#[test]
fn every_signature_verifies_with_each_key_form() {
    let recs = records();
    assert_eq!(recs.len(), 12);
    for file in ["signing-cert.der", "signing-cert.pem", "signing-key.pub.pem"] {
        let mut ring = KeyRing::new();
        ring.add_bytes(&std::fs::read(dir().join(file)).unwrap(), file).unwrap();
        // Signed files are deliberately absent from the allowlist: only the signature vouches.
        let p = Policy::from_allowlist(&allowlist(&SIGNED)).unwrap().with_keys(&ring).unwrap();
        let (ok, bad) = check_all(&p, &recs);
        assert!(bad.is_empty(), "{file}: {bad:?}");
        let sigs = ok.iter().filter(|a| **a == Allowed::Signature { keyid: 0x03211fa6 }).count();
        assert_eq!(sigs, 4, "{file}");
    }
}

#[test]
fn all_allowed_by_digest_without_keys() {
    let recs = records();
    let p = Policy::from_allowlist(&allowlist(&[])).unwrap();
    let (ok, bad) = check_all(&p, &recs);
    assert!(bad.is_empty(), "{bad:?}");
    assert!(ok.iter().all(|a| *a == Allowed::Digest));
}

#[test]
fn flipped_signature_byte_names_index_and_path() {
    let mut recs = records();
    let i = recs.iter().position(|r| r.name(Endian::Little).as_deref() == Some("/data/bin/busybox")).unwrap();
    // Flip a byte of the RSA signature itself, and separately one of the key id.
    for (byte, why) in [(40, "does not verify"), (5, "not configured")] {
        let mut recs2 = recs.clone();
        flip_sig(&mut recs2, i, byte);
        let p = Policy::from_allowlist(&allowlist(&SIGNED)).unwrap().with_keys(&cert_ring()).unwrap();
        let (_, bad) = check_all(&p, &recs2);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].index, i as u64);
        assert_eq!(bad[0].path, "/data/bin/busybox");
        assert!(bad[0].detail.contains(why), "{}", bad[0]);
        let shown = bad[0].to_string();
        assert!(shown.starts_with(&format!("record {i} (/data/bin/busybox): ")), "{shown}");
    }
    // A flipped signature byte is a bad-signature failure when a configured key should
    // have verified it.
    flip_sig(&mut recs, i, 40);
    let p = Policy::from_allowlist(&allowlist(&SIGNED)).unwrap().with_keys(&cert_ring()).unwrap();
    let f = p.check(i as u64, &recs[i]).unwrap_err();
    assert_eq!(f.reason, FailureKind::BadSignature);

    // Keylime semantics: a file whose digest is allowed passes even with a broken signature…
    let p = Policy::from_allowlist(&allowlist(&[])).unwrap().with_keys(&cert_ring()).unwrap();
    assert_eq!(p.check(i as u64, &recs[i]), Ok(Allowed::Digest));
    // …unless strict signatures are asked for.
    let p = p.with_options(Options { strict_signatures: true, ..Options::default() });
    let f = p.check(i as u64, &recs[i]).unwrap_err();
    assert_eq!((f.index, f.path.as_str(), f.reason), (i as u64, "/data/bin/busybox", FailureKind::BadSignature));
}

#[test]
fn missing_and_wrong_digests_name_index_and_path() {
    let recs = records();
    let mut skip = SIGNED.to_vec();
    skip.push("/data/files/hello.txt");
    let p = Policy::from_allowlist(&allowlist(&skip)).unwrap();
    let (_, bad) = check_all(&p, &recs);
    assert_eq!(bad.len(), 1 + 4, "hello.txt and the 4 signed files without keys: {bad:?}");
    let f = bad.iter().find(|f| f.path == "/data/files/hello.txt").unwrap();
    assert_eq!((f.index, f.reason), (2, FailureKind::NotInPolicy));
    assert!(f.detail.contains("sha256:fdfc3be447b220db"), "{f}");
    let unsigned_key = bad.iter().find(|f| f.path == "/data/files/signed.txt").unwrap();
    assert_eq!(unsigned_key.reason, FailureKind::NotInPolicy);
    assert!(unsigned_key.detail.contains("signed by key 03211fa6, which is not configured"), "{unsigned_key}");

    // A wrong digest for a listed path.
    let text = allowlist(&[]).replace(
        "fdfc3be447b220db50d46695decf6f1f36b6a0fc674b9fa01080f6e705b41644",
        "00fc3be447b220db50d46695decf6f1f36b6a0fc674b9fa01080f6e705b41644",
    );
    let p = Policy::from_allowlist(&text).unwrap();
    let (_, bad) = check_all(&p, &recs);
    assert_eq!(bad.len(), 1);
    assert_eq!(
        (bad[0].index, bad[0].path.as_str(), bad[0].reason),
        (2, "/data/files/hello.txt", FailureKind::DigestMismatch)
    );
}

#[test]
fn excludes_are_anchored_at_the_start() {
    let recs = records();
    let base = Policy::from_allowlist(&allowlist(&["/data/files/hello.txt", "/data/files/empty"])).unwrap();
    let p = base.clone().with_excludes(&["/data/files/"]).unwrap();
    let (ok, bad) = check_all(&p, &recs);
    assert!(bad.iter().all(|f| !f.path.starts_with("/data/files/")), "{bad:?}");
    assert!(ok.contains(&Allowed::Excluded));
    // Not a substring search: `files/` alone does not match `/data/files/…`.
    let p = base.clone().with_excludes(&["files/"]).unwrap();
    assert!(check_all(&p, &recs).1.iter().any(|f| f.path == "/data/files/hello.txt"));
    // A regex with an alternative.
    let p = base.with_excludes(&[r"/data/files/(hello\.txt|empty)$"]).unwrap();
    let bad = check_all(&p, &recs).1;
    assert!(!bad.iter().any(|f| f.path == "/data/files/hello.txt" || f.path == "/data/files/empty"), "{bad:?}");
}

#[test]
fn keylime_json_round_trip_on_the_fixture() {
    let recs = records();
    let flat = Policy::from_allowlist(&allowlist(&SIGNED))
        .unwrap()
        .with_keys(&cert_ring())
        .unwrap()
        .with_excludes(&["/tmp/.*", "/proc/"])
        .unwrap();
    let json = serde_json::to_vec_pretty(&flat.to_keylime_json()).unwrap();
    let back = Policy::from_keylime_json(&json).unwrap();
    assert_eq!(back, flat);
    assert_eq!(back.to_keylime_json(), flat.to_keylime_json());
    // The keys travel in `verification-keys`: signatures still verify after the trip.
    let (ok, bad) = check_all(&back, &recs);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok.iter().filter(|a| matches!(a, Allowed::Signature { .. })).count(), 4);
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["meta"]["version"], 1);
    assert_eq!(v["ima"]["log_hash_alg"], "sha1");
    assert_eq!(
        v["digests"]["/data/files/hello.txt"][0],
        "fdfc3be447b220db50d46695decf6f1f36b6a0fc674b9fa01080f6e705b41644"
    );
    let vk: serde_json::Value = serde_json::from_str(v["verification-keys"].as_str().unwrap()).unwrap();
    assert_eq!(vk["keyids"][0], 0x03211fa6);
}
