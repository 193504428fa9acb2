//! Random bytes as a policy, a key, a signature or a record's template data never panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_log::entry::{build, builtin, d_ng};
use imasnap_log::{Endian, HashAlgo, Record};
use imasnap_policy::*;
use proptest::prelude::*;
use std::sync::Arc;

fn policy() -> Policy {
    let mut ring = KeyRing::new();
    let cert = include_bytes!("../../../tests/fixtures/real-kernel/ima-sig/signing-cert.der");
    ring.add_bytes(cert, "cert").unwrap();
    Policy::from_allowlist(&format!("{}  /a\n", hex::encode([1u8; 32])))
        .unwrap()
        .with_keys(&ring)
        .unwrap()
        .with_excludes(&["/tmp/"])
        .unwrap()
}

const TEMPLATES: &[&str] =
    &["ima", "ima-ng", "ima-sig", "ima-buf", "ima-modsig", "evm-sig", "ima-sigv2", "d-ng|n-ng|buf|sig"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_policy_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Policy::parse(&bytes);
        let _ = Policy::from_keylime_json(&bytes);
        let _ = keys::parse_keys(&bytes, "x");
        let _ = keys::try_parse_key(&bytes, "x");
    }

    #[test]
    fn random_json_shaped_policy(s in r#"\{("(meta|digests|excludes|keyrings|ima|ima-buf|verification-keys|hashes|release)":(\{[^{}]{0,40}\}|\[[^\[\]]{0,40}\]|"[^"]{0,20}"|[0-9]{1,3}),?){0,6}\}"#) {
        let _ = Policy::parse(s.as_bytes());
    }

    #[test]
    fn random_allowlist_lines(s in r"([0-9a-f]{0,70}[ *\t]{0,3}[^\n]{0,20}\n){0,8}") {
        let _ = Policy::from_allowlist(&s);
    }

    #[test]
    fn random_template_data(t in 0..TEMPLATES.len(), data in proptest::collection::vec(any::<u8>(), 0..300), zero in any::<bool>()) {
        let template = Arc::new(imasnap_log::template::Template::parse(TEMPLATES[t]).unwrap());
        let rec = Record { pcr: 10, digest: if zero { vec![0; 20] } else { vec![1; 20] }, template, template_data: data };
        let p = policy();
        let _ = p.check(0, &rec);
        let _ = p.check_with(0, &rec, Endian::Big, Some(&mut KeyRing::new()));
    }

    #[test]
    fn created_policies_always_load(recs in proptest::collection::vec((0..TEMPLATES.len(), proptest::collection::vec(any::<u8>(), 0..200)), 0..8), name in proptest::collection::vec(any::<u8>(), 0..40), digest in proptest::collection::vec(any::<u8>(), 0..70)) {
        // Whatever goes in, what comes out is a policy this crate reads back.
        let opts = create::CreateOptions { keyrings: true, ima_buf: true, ..Default::default() };
        let mut c = create::Creator::new(opts);
        for (i, (t, data)) in recs.into_iter().enumerate() {
            let template = Arc::new(imasnap_log::template::Template::parse(TEMPLATES[t]).unwrap());
            let rec = Record { pcr: 10, digest: vec![1; 20], template, template_data: data };
            let _ = c.add_record(i as u64, &rec, Endian::Little);
        }
        let _ = c.add_file(&name, &digest);
        c.finish(None).unwrap();
    }

    #[test]
    fn random_signature_field(sig in proptest::collection::vec(any::<u8>(), 0..300), keyid in any::<bool>(), digest in proptest::collection::vec(any::<u8>(), 0..70)) {
        let mut sig = sig;
        if keyid && sig.len() >= 9 {
            sig[0] = 3; sig[1] = 2; sig[3..7].copy_from_slice(&0x03211fa6u32.to_be_bytes());
            let n = (sig.len() - 9) as u16;
            sig[7..9].copy_from_slice(&n.to_be_bytes());
        }
        let rec = build(&builtin("ima-sig"), &[&d_ng("sha256", &digest), b"/x\0", &sig], HashAlgo::Sha1, 10, false, Endian::Little);
        let r = policy().check(0, &rec);
        prop_assert!(r.is_err());
    }

    #[test]
    fn random_buffer(buf in proptest::collection::vec(any::<u8>(), 0..400), name in "[.a-z_]{1,12}") {
        let n = [name.as_bytes(), b"\0"].concat();
        let rec = build(&builtin("ima-buf"), &[&d_ng("sha256", &[0; 32]), &n, &buf], HashAlgo::Sha1, 10, false, Endian::Little);
        let _ = policy().check(0, &rec);
    }
}
