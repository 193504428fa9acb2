//! Policy semantics on synthetic records: ECDSA signatures, keyrings and key learning,
//! generic ima-buf, violations, boot_aggregate, the accepted formats and load errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_log::entry::{build, builtin, d_ng};
use imasnap_log::{Endian, HashAlgo, Record};
use imasnap_policy::sig::encode_v2;
use imasnap_policy::*;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

fn ima_sig(path: &str, digest: &[u8], sig: &[u8]) -> Record {
    let name = [path.as_bytes(), b"\0"].concat();
    build(&builtin("ima-sig"), &[&d_ng("sha256", digest), &name, sig], HashAlgo::Sha1, 10, false, Endian::Little)
}

fn ima_buf(name: &str, buf: &[u8]) -> Record {
    let n = [name.as_bytes(), b"\0"].concat();
    let d = Sha256::digest(buf);
    build(&builtin("ima-buf"), &[&d_ng("sha256", &d), &n, buf], HashAlgo::Sha1, 10, false, Endian::Little)
}

fn ec_key(seed: u8) -> (p256::ecdsa::SigningKey, Vec<u8>) {
    let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let der = sk.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec();
    (sk, der)
}

fn ec_signed(sk: &p256::ecdsa::SigningKey, keyid: u32, path: &str, content: &[u8]) -> Record {
    let d = Sha256::digest(content);
    let s: p256::ecdsa::Signature = sk.sign_prehash(&d).unwrap();
    ima_sig(path, &d, &encode_v2(4, keyid, s.to_der().as_bytes()))
}

#[test]
fn ecdsa_p256_signature() {
    let (sk, der) = ec_key(9);
    let mut ring = KeyRing::new();
    ring.add_bytes(&der, "ec.der").unwrap();
    let keyid = ring.keys().next().unwrap().keyid;
    let p = Policy::empty().with_keys(&ring).unwrap();
    let rec = ec_signed(&sk, keyid, "/usr/bin/ec", b"content");
    assert_eq!(p.check(3, &rec), Ok(Allowed::Signature { keyid }));
    // Signed by another key with the same id: does not verify.
    let (other, _) = ec_key(10);
    let f = p.check(4, &ec_signed(&other, keyid, "/usr/bin/ec", b"content")).unwrap_err();
    assert_eq!((f.index, f.path.as_str(), f.reason), (4, "/usr/bin/ec", FailureKind::BadSignature));
    // Header hash algorithm differs from the measured digest's.
    let d = Sha256::digest(b"content");
    let s: p256::ecdsa::Signature = sk.sign_prehash(&d).unwrap();
    let f = p.check(5, &ima_sig("/x", &d, &encode_v2(2, keyid, s.to_der().as_bytes()))).unwrap_err();
    assert!(f.detail.contains("over a sha1 digest"), "{f}");
    // Truncated header.
    let f = p.check(6, &ima_sig("/x", &d, &[3, 2, 4, 1])).unwrap_err();
    assert_eq!(f.reason, FailureKind::BadSignature);
    assert!(f.detail.contains("malformed"), "{f}");
}

#[test]
fn keyring_keys_are_checked_and_learned() {
    let (sk, der) = ec_key(11);
    let keyid = imasnap_policy::keys::parse_keys(&der, "k").unwrap()[0].keyid;
    let key_digest = hex::encode(Sha256::digest(&der));
    let json = format!(
        r#"{{"meta":{{"version":1}},"digests":{{}},"excludes":[],"keyrings":{{".ima":["{key_digest}"]}},
            "ima":{{"ignored_keyrings":[".builtin_trusted_keys"],"log_hash_alg":"sha256","dm_policy":null}},
            "ima-buf":{{"kernel_version":["{}"]}},"verification-keys":""}}"#,
        hex::encode(Sha256::digest(b"6.8.0"))
    );
    let p = Policy::from_keylime_json(json.as_bytes()).unwrap();
    assert_eq!(p.log_hash_alg(), HashAlgo::Sha256);
    let mut learned = KeyRing::new();
    let signed = ec_signed(&sk, keyid, "/usr/bin/app", b"app");
    // Before the key is measured, the signature cannot be judged.
    let f = p.check_learning(0, &signed, &mut learned).unwrap_err();
    assert_eq!(f.reason, FailureKind::NotInPolicy);
    assert!(f.detail.contains("not configured"), "{f}");
    assert_eq!(p.check_learning(1, &ima_buf(".ima", &der), &mut learned), Ok(Allowed::Keyring));
    assert_eq!(learned.len(), 1);
    assert_eq!(p.check_learning(2, &signed, &mut learned), Ok(Allowed::Signature { keyid }));
    // The plain check does not learn.
    assert!(p.check(2, &signed).is_err());
    // A key on an ignored keyring passes; one on an unlisted keyring does not.
    let (_, der2) = ec_key(12);
    assert_eq!(p.check(3, &ima_buf(".builtin_trusted_keys", &der2)), Ok(Allowed::IgnoredKeyring));
    let f = p.check(4, &ima_buf(".ima", &der2)).unwrap_err();
    assert_eq!((f.index, f.path.as_str(), f.reason), (4, ".ima", FailureKind::DigestMismatch));
    let f = p.check(5, &ima_buf(".evm", &der2)).unwrap_err();
    assert_eq!(f.reason, FailureKind::NotInPolicy);
    // Generic ima-buf data.
    assert_eq!(p.check(6, &ima_buf("kernel_version", b"6.8.0")), Ok(Allowed::Buffer));
    let f = p.check(7, &ima_buf("kernel_version", b"6.9.0")).unwrap_err();
    assert_eq!(f.reason, FailureKind::DigestMismatch);
    // A digest that is not the buffer's hash.
    let mut r = ima_buf("kernel_version", b"6.8.0");
    let n = b"kernel_version\0";
    r = build(
        &r.template,
        &[&d_ng("sha256", &Sha256::digest(b"6.8.0")), n, b"6.8.1"],
        HashAlgo::Sha1,
        10,
        false,
        Endian::Little,
    );
    assert_eq!(p.check(8, &r).unwrap_err().reason, FailureKind::BufferDigestMismatch);
}

#[test]
fn violations_fail_unless_allowed_or_excluded() {
    let name = b"/var/log/x\0";
    let v = build(&builtin("ima-ng"), &[&d_ng("sha256", &[0; 32]), name], HashAlgo::Sha1, 10, true, Endian::Little);
    assert!(v.is_violation());
    let p = Policy::empty();
    let f = p.check(9, &v).unwrap_err();
    assert_eq!((f.index, f.path.as_str(), f.reason), (9, "/var/log/x", FailureKind::Violation));
    let p2 = p.clone().with_options(Options { allow_violations: true, ..Options::default() });
    assert_eq!(p2.check(9, &v), Ok(Allowed::Violation));
    let p3 = p.with_excludes(&["/var/log/"]).unwrap();
    assert_eq!(p3.check(9, &v), Ok(Allowed::Excluded));
}

#[test]
fn boot_aggregate_left_to_replay_unless_listed() {
    let ba = build(
        &builtin("ima-ng"),
        &[&d_ng("sha256", &[7; 32]), b"boot_aggregate\0"],
        HashAlgo::Sha1,
        10,
        false,
        Endian::Little,
    );
    assert_eq!(Policy::empty().check(0, &ba), Ok(Allowed::BootAggregate));
    let p = Policy::from_allowlist(&format!("{}  boot_aggregate\n", hex::encode([8u8; 32]))).unwrap();
    assert_eq!(p.check(0, &ba).unwrap_err().reason, FailureKind::DigestMismatch);
    let p = Policy::from_allowlist(&format!("{}  boot_aggregate\n", hex::encode([7u8; 32]))).unwrap();
    assert_eq!(p.check(0, &ba), Ok(Allowed::Digest));
}

#[test]
fn legacy_ima_template_and_algorithm_prefixes() {
    let d = [0x11u8; 20];
    let name = b"/bin/sh";
    let rec = build(&builtin("ima"), &[&d, name], HashAlgo::Sha1, 10, false, Endian::Little);
    let p = Policy::from_allowlist(&format!("{}  /bin/sh\n", hex::encode(d))).unwrap();
    assert_eq!(p.check(0, &rec), Ok(Allowed::Digest));
    // `algo:hex` entries match only that algorithm.
    let p = Policy::from_allowlist(&format!("SHA1 (/bin/sh) = {}\n", hex::encode(d))).unwrap();
    assert_eq!(p.check(0, &rec), Ok(Allowed::Digest));
    let json = format!(r#"{{"meta":{{"version":1}},"digests":{{"/bin/sh":["sm3:{}"]}}}}"#, hex::encode([0x22u8; 32]));
    let p = Policy::from_keylime_json(json.as_bytes()).unwrap();
    let r2 = ima_sig("/bin/sh", &[0x22; 32], b"");
    assert_eq!(p.check(0, &r2).unwrap_err().reason, FailureKind::DigestMismatch, "sha256 digest, sm3 entry");
}

#[test]
fn flat_allowlist_forms() {
    let h = |b: u8| hex::encode([b; 32]);
    let text = format!(
        "# comment\n\n{}  /a b\n{} */bin/c\n\\{}  /new\\nline\n{} /keylime/style\n{} %keyring:.ima\nSHA256 (/bsd) = {}\r\n",
        h(1),
        h(2),
        h(3),
        h(4),
        h(5),
        h(6)
    );
    let p = Policy::from_allowlist(&text).unwrap();
    let d = &p.data().digests;
    for path in ["/a b", "/bin/c", "/new\nline", "/keylime/style", "/bsd"] {
        assert!(d.contains_key(path.as_bytes()), "{path:?} in {:?}", d.keys().collect::<Vec<_>>());
    }
    assert!(p.data().keyrings.contains_key(&b".ima"[..]));
    assert_eq!(d[&b"/bsd"[..]][0].algo.as_deref(), Some("sha256"));
    // Auto-detection.
    assert_eq!(Policy::parse(text.as_bytes()).unwrap(), p);
    // Errors name the line.
    let e = Policy::from_allowlist("# x\nzz  /a\n").unwrap_err();
    assert!(matches!(e, LoadError::Line { line: 2, .. }), "{e}");
    let e = Policy::from_allowlist(&format!("{}\n", h(1))).unwrap_err();
    assert!(matches!(e, LoadError::Line { line: 1, .. }), "{e}");
    let e = Policy::from_allowlist("abcd  /short\n").unwrap_err();
    assert!(e.to_string().contains("no known algorithm"), "{e}");
}

#[test]
fn keylime_json_forms_and_errors() {
    let h = hex::encode([1u8; 32]);
    // Legacy JSON allowlist with `hashes`.
    let legacy = format!(
        r#"{{"meta":{{"version":5}},"release":0,"hashes":{{"/x":["{h}"]}},"keyrings":{{}},"ima":{{"ignored_keyrings":[],"log_hash_alg":"sha1"}}}}"#
    );
    let p = Policy::from_keylime_json(legacy.as_bytes()).unwrap();
    assert!(p.data().digests.contains_key(&b"/x"[..]));
    assert!(p.warnings().iter().any(|w| w.contains("legacy")));
    // Keylime's EMPTY_RUNTIME_POLICY.
    let empty = r#"{"meta":{"version":1,"generator":1},"release":0,"digests":{},"excludes":[],"keyrings":{},
        "ima":{"ignored_keyrings":[],"log_hash_alg":"sha1","dm_policy":null},"ima-buf":{},"verification-keys":""}"#;
    let p = Policy::from_keylime_json(empty.as_bytes()).unwrap();
    let v: serde_json::Value = serde_json::from_str(empty).unwrap();
    assert_eq!(p.to_keylime_json(), v, "round trip of Keylime's empty policy is exact");
    let cases: &[(&str, &str)] = &[
        (r#"{"meta":{"version":2},"digests":{}}"#, "meta.version"),
        (r#"{"meta":{"version":1},"digests":{"/x":["nothex"]}}"#, "digests[\"/x\"]: entry 0"),
        (r#"{"meta":{"version":1},"excludes":["ok","(unclosed"]}"#, "excludes[1]"),
        (r#"{"meta":{"version":1},"ima":{"log_hash_alg":"md5"}}"#, "ima.log_hash_alg"),
        (r#"{"meta":{"version":1},"ima":{"dm_policy":{"version":1}}}"#, "dm_policy"),
        (r#"{"meta":{"version":1},"verification-keys":"{\"pubkeys\":[\"!!\"]}"}"#, "verification-keys"),
        (r#"{"meta":{"version":1},"digests":[]}"#, "JSON"),
        (r#"[1,2]"#, "JSON"),
    ];
    for (input, want) in cases {
        let e = Policy::from_keylime_json(input.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(want), "{input}: {e}");
    }
}
