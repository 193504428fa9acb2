//! Writes the small seed files under `fuzz/seeds/<target>/` from the known-good vectors in
//! `tests/fixtures`, the synthetic generator, and a real agent (kernel model, soft TPM)
//! that snapshots, writes a bundle and answers evidence requests. Deterministic:
//! re-running it rewrites the same bytes.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds

use imasnap_agent::{AgentConfig, SnapshotKernel as _, StagingFlavour};
use imasnap_agent_server::api;
use imasnap_agent_server::host::{Host, HostOps, WorkloadCfg};
use imasnap_kernel_model::{Config as KernelConfig, Kernel};
use imasnap_log::ascii;
use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::kexec;
use imasnap_log::synth::Synth;
use imasnap_log::template::Template;
use imasnap_log::{Endian, HashAlgo, Record};
use imasnap_tpm::{PcrSelection, PublicArea, PublicKeyParams, SigAlg, SigScheme, Signature, SoftTpm, Tpm};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Vector A (ima-ng boot_aggregate) and vector B (legacy `ima` /init), little-endian SHA1.
const VECTOR_A: &str = "0a0000002e03b3fdb0014fc8bae2a07ca33ae67125b290f306000000696d612d6e673f000000280000007368613235363a0083d19723ef3b3c05bb8ae70d86b3886c158f2408f1b71ed265886a7b79eb700e0f000000626f6f745f61676772656761746500";
const VECTOR_B: &str = "0a0000002c7020ad8cab6b7419e4973171cb704bdbf52f7703000000696d61e09e048c48301268ff38645f4c006137e42951d0050000002f696e6974";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn put_u32(e: Endian, v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    e.put_u32(&mut out, v);
    out
}

/// One record of every built-in template (but `ima`) plus a custom fmt and a violation,
/// in byte order `e`, with template digests of `bank`.
fn assorted(bank: HashAlgo, e: Endian) -> Vec<Record> {
    let d = [0x5au8; 32];
    let sig = {
        let mut s = vec![0x03, 0x02, 0x04, 0xaa, 0xbb, 0xcc, 0xdd, 0x00, 0x08];
        s.extend_from_slice(&[0x11; 8]);
        s
    };
    let v2 = {
        let mut v = b"ima:sha256:\0".to_vec();
        v.extend_from_slice(&d);
        v
    };
    let dng = d_ng("sha256", &d);
    let name = n_ng(b"/usr/bin/true");
    let uid = put_u32(e, 1000);
    let mode = {
        let mut v = Vec::new();
        e.put_u16(&mut v, 0o100755);
        v
    };
    let lens = [put_u32(e, 3), put_u32(e, 0)].concat();
    let custom: Arc<Template> = Arc::new(Template::parse("d-ng|n-ng|iuid|imode").unwrap());
    vec![
        build(&builtin("ima-ng"), &[&d_ng("sha1", &d[..20]), &n_ng(b"boot_aggregate")], bank, 10, false, e),
        build(&builtin("ima-sig"), &[&dng, &name, &sig], bank, 10, false, e),
        build(&builtin("ima-ngv2"), &[&v2, &name], bank, 11, false, e),
        build(&builtin("ima-sigv2"), &[&v2, &name, &[]], bank, 10, false, e),
        build(&builtin("ima-buf"), &[&dng, &n_ng(b"kexec-cmdline"), b"root=/dev/vda1"], bank, 10, false, e),
        build(&builtin("ima-modsig"), &[&dng, &name, &sig, &[], &[]], bank, 10, false, e),
        build(
            &builtin("evm-sig"),
            &[&dng, &name, &[], b"security.ima|security.evm\0", &lens, b"abc", &uid, &uid, &mode],
            bank,
            10,
            false,
            e,
        ),
        build(&custom, &[&dng, &name, &uid, &mode], bank, 10, false, e),
        build(&builtin("ima-ng"), &[&d_ng("sha256", &[0; 32]), &n_ng(b"/tmp/violated")], bank, 10, true, e),
    ]
}

fn encode_all(records: &[Record], e: Endian) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode(e, &mut out);
    }
    out
}

fn ascii_all(records: &[Record], e: Endian) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        ascii::write_line(r, e, &mut out).unwrap();
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    println!("{:6} {}", bytes.len(), dir.join(name).display());
}

fn main() {
    // The repository root: the first argument, else the parent of this package.
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf());
    let seeds = root.join("fuzz/seeds");
    let vectors = root.join("tests/fixtures/vectors");
    let (le, be) = (Endian::Little, Endian::Big);

    // binary_log
    let bin = seeds.join("binary_log");
    write(&bin, "vector-a-b-sha1-le", &[unhex(VECTOR_A), unhex(VECTOR_B)].concat());
    let synth1: Vec<Record> = Synth::new(1, HashAlgo::Sha1).take(4).collect();
    write(&bin, "synth-sha1-le", &encode_all(&synth1, le));
    let synth256: Vec<Record> = Synth::new(2, HashAlgo::Sha256).take(3).collect();
    write(&bin, "synth-sha256-le", &encode_all(&synth256, le));
    write(&bin, "assorted-sha1-le", &encode_all(&assorted(HashAlgo::Sha1, le), le));
    write(&bin, "assorted-sha256-be", &encode_all(&assorted(HashAlgo::Sha256, be), be));

    // ascii_log
    let asc = seeds.join("ascii_log");
    for f in ["template-digest-lines.txt", "evmutils-test_ascii_runtime_measurements"] {
        write(&asc, f, &std::fs::read(vectors.join(f)).unwrap());
    }
    write(&asc, "synth-sha1", &ascii_all(&synth1, le));
    write(&asc, "assorted-sha1-le", &ascii_all(&assorted(HashAlgo::Sha1, le), le));
    write(&asc, "assorted-sha256-be", &ascii_all(&assorted(HashAlgo::Sha256, be), be));

    // kexec_buffer: SHA1 records, no `ima` template.
    let kx = seeds.join("kexec_buffer");
    write(&kx, "vector-a-le", &kexec::encode(&[Record::clone(&synth_a())], le));
    write(&kx, "synth-le", &kexec::encode(&synth1, le));
    write(&kx, "assorted-le", &kexec::encode(&assorted(HashAlgo::Sha1, le), le));
    write(&kx, "assorted-be", &kexec::encode(&assorted(HashAlgo::Sha1, be), be));
    write(&kx, "empty-le", &kexec::encode(&[], le));

    agent_seeds(&seeds, &root);
    policy_seeds(&seeds, &root);
    engine_seeds(&seeds);
}

/// The verifier's challenge; fuzz_targets/evidence_body.rs uses the same.
const NONCE: &[u8; 32] = b"imasnap-fuzz-evidence-nonce-0001";

/// An agent on the kernel model with the soft TPM: `snaps` snapshots of `per` records
/// each, then `per` more records in the live list.
fn host(state: &Path, snaps: usize, per: u64) -> Host<Kernel<SoftTpm>> {
    host_with(AgentConfig::new(state), snaps, per)
}

fn host_with(cfg: AgentConfig, snaps: usize, per: u64) -> Host<Kernel<SoftTpm>> {
    let k = Kernel::boot(KernelConfig::default(), SoftTpm::new(1)).unwrap();
    let mut h = Host::start(k, cfg, WorkloadCfg { seed: 3, ..WorkloadCfg::default() }).unwrap();
    for _ in 0..snaps {
        h.add_records(per).unwrap();
        h.snapshot(None).unwrap().unwrap();
    }
    h.add_records(per).unwrap();
    h
}

/// A `GET /v1/evidence` body exactly as the agent's service streams it.
fn body(h: &mut Host<Kernel<SoftTpm>>, from: api::From) -> Vec<u8> {
    let v = h.evidence(NONCE, from, None).unwrap();
    let mut out = api::encode_prefix(&v.header).unwrap();
    for (p, off, len) in &v.files {
        let b = std::fs::read(p).unwrap();
        assert_eq!(b.len() as u64, off + len);
        out.extend_from_slice(&b[*off as usize..]);
    }
    out.extend_from_slice(&v.live);
    out
}

fn sel(b: u8, rest: &[u8]) -> Vec<u8> {
    [&[b][..], rest].concat()
}

/// evidence_body, bundle_manifest and tpm_wire seeds from a real agent and soft TPM.
fn agent_seeds(seeds: &Path, root: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let ev = seeds.join("evidence_body");
    let mut fresh = host(&tmp.path().join("a"), 0, 3);
    write(&ev, "no-snapshot-full", &sel(0, &body(&mut fresh, api::From::Index(0))));
    let mut two = host(&tmp.path().join("b"), 2, 3);
    write(&ev, "two-snapshots-full", &sel(0, &body(&mut two, api::From::Index(0))));
    write(&ev, "two-snapshots-from-4", &sel(0, &body(&mut two, api::From::Index(4))));
    write(&ev, "two-snapshots-latest-tofu", &sel(1, &body(&mut two, api::From::Latest)));
    // Upstream staging: marker-less segments (trim names the next record, stage nothing).
    for (name, flavour) in [("staging-trim-full", StagingFlavour::Trim), ("staging-stage-full", StagingFlavour::Stage)]
    {
        let mut st = host_with(AgentConfig::staging(tmp.path().join(name), flavour), 2, 3);
        write(&ev, name, &sel(0, &body(&mut st, api::From::Index(0))));
    }

    // A bundle directory as `imasnap` writes it.
    let bm = seeds.join("bundle_manifest");
    let out = tmp.path().join("bundle");
    let (quote, ak) = {
        let k = two.agent().kernel_mut();
        let pcr = k.measurement_pcr();
        imasnap_agent::attest(k.tpm_mut(), pcr, NONCE).unwrap()
    };
    two.agent().write_bundle(&out, &imasnap_agent::Evidence { quote: &quote, nonce: NONCE, ak: &ak }).unwrap();
    let file = |n: &str| std::fs::read(out.join(n)).unwrap();
    write(&bm, "bundle.json", &sel(0, &file("bundle.json")));
    write(&bm, "manifest.json-verifier", &sel(1, &file("manifest.json")));
    write(&bm, "manifest.json-store", &sel(2, &file("manifest.json")));
    write(&bm, "quote.json", &sel(3, &file("quote.json")));
    write(&bm, "ak.pub", &sel(4, &file("ak.pub")));
    let pem = std::fs::read(root.join("tests/fixtures/real-kernel/ima-sig/signing-key.pub.pem")).unwrap();
    write(&bm, "rsa.pem", &sel(4, &pem));
    let soft_pem = SoftTpm::new(1).ak_public().to_pem();
    write(&bm, "p256.pem", &sel(4, soft_pem.as_bytes()));

    // TPM structures: a soft TPM quote over two banks, its AK, and an RSA AK area.
    let tw = seeds.join("tpm_wire");
    let mut tpm = SoftTpm::new(1);
    let s = PcrSelection::uniform(&tpm.banks(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap();
    let q = tpm.quote(NONCE, &s).unwrap();
    let ak = tpm.ak_public().public_area().unwrap().to_tpm2b();
    write(&tw, "attest", &sel(0, &q.attest));
    write(&tw, "signature-ecdsa", &sel(1, &q.signature));
    let rsa_sig = Signature::RsaSsa { hash: imasnap_tpm::HashAlgo::Sha256, sig: vec![0x5a; 256] }.to_bytes();
    write(&tw, "signature-rsassa", &sel(1, &rsa_sig));
    write(&tw, "tpm2b-public-p256", &sel(2, &ak));
    let rsa_area = rsa_ak_area(&pem);
    write(&tw, "tpm2b-public-rsa2048", &sel(2, &rsa_area.to_tpm2b()));
    write(&tw, "pcr-selection", &sel(3, &s.to_bytes()));
    write(&tw, "quote", &sel(4, &q.to_bytes()));
    let mut v = (ak.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(&ak);
    v.extend_from_slice(&q.to_bytes());
    write(&tw, "verify-p256", &sel(5, &v));
    let ak = hex::decode(String::from_utf8_lossy(&file("ak.pub")).trim()).unwrap();
    let q2 = imasnap_verifier::bundle::quote_from_json(&file("quote.json")).unwrap();
    let mut v = (ak.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(&ak);
    v.extend_from_slice(&q2.to_bytes());
    write(&tw, "verify-bundle-quote", &sel(5, &v));
}

/// An RSA-2048 restricted signing key area around the real-kernel fixture's public key.
fn rsa_ak_area(pem: &[u8]) -> PublicArea {
    let text = String::from_utf8_lossy(pem);
    let ak = imasnap_tpm::AkPublic::from_pem(&text).unwrap();
    let der_b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64_decode(&der_b64);
    // SubjectPublicKeyInfo of RSA-2048: the modulus is the 256 bytes after `02 82 01 01 00`.
    let at = der.windows(5).position(|w| w == [0x02, 0x82, 0x01, 0x01, 0x00]).unwrap() + 5;
    let modulus = der[at..at + 256].to_vec();
    assert!(matches!(ak.kind(), imasnap_tpm::AkKind::Rsa { bits: 2048 }));
    PublicArea {
        name_alg: imasnap_tpm::HashAlgo::Sha256,
        object_attributes: imasnap_tpm::public::attrs::AK_DEFAULT,
        auth_policy: Vec::new(),
        scheme: Some(SigScheme { alg: SigAlg::RsaSsa, hash: imasnap_tpm::HashAlgo::Sha256 }),
        params: PublicKeyParams::Rsa { key_bits: 2048, exponent: 0, modulus },
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let b: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::new();
    for c in b.chunks(4) {
        let n = c.iter().enumerate().fold(0u32, |a, (i, &x)| a | (x as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..c.len()]);
    }
    out
}

/// policy_json seeds: the real-kernel allowlist in each format, with its signing key.
fn policy_seeds(seeds: &Path, root: &Path) {
    let dir = root.join("tests/fixtures/real-kernel/ima-sig");
    let pj = seeds.join("policy_json");
    let ascii = std::fs::read_to_string(dir.join("ascii_runtime_measurements")).unwrap();
    let mut flat = String::from("# from tests/fixtures/real-kernel/ima-sig\n");
    for line in ascii.lines().take(6) {
        let cols: Vec<&str> = line.split(' ').collect();
        flat.push_str(&format!("{}  {}\n", cols[3].strip_prefix("sha256:").unwrap(), cols[4]));
    }
    flat.push_str(&format!("SHA256 (/bsd tag) = {}\r\n\\{}  /new\\nline\n", "11".repeat(32), "22".repeat(32)));
    flat.push_str(&format!("{} %keyring:.ima\n", "33".repeat(32)));
    write(&pj, "allowlist.txt", flat.as_bytes());
    let mut keys = imasnap_policy::KeyRing::new();
    keys.add_bytes(&std::fs::read(dir.join("signing-cert.der")).unwrap(), "signing-cert.der").unwrap();
    let p = imasnap_policy::Policy::parse(flat.as_bytes())
        .unwrap()
        .with_keys(&keys)
        .unwrap()
        .with_excludes(&["/tmp/.*", "/proc/"])
        .unwrap();
    write(&pj, "keylime-with-key.json", &serde_json::to_vec_pretty(&p.to_keylime_json()).unwrap());
    let empty = r#"{"meta":{"version":1,"generator":1},"release":0,"digests":{},"excludes":[],"keyrings":{},
        "ima":{"ignored_keyrings":[],"log_hash_alg":"sha1","dm_policy":null},"ima-buf":{},"verification-keys":""}"#;
    write(&pj, "keylime-empty.json", empty.as_bytes());
    let legacy = format!(r#"{{"meta":{{"version":5}},"hashes":{{"/x":["{}"]}},"exclude":[]}}"#, "44".repeat(20));
    write(&pj, "legacy-hashes.json", legacy.as_bytes());
    let buf = format!(
        r#"{{"meta":{{"version":1}},"ima-buf":{{"kernel_version":["sha256:{}"]}},"keyrings":{{".ima":["{}"]}},"ima":{{"log_hash_alg":"sha256"}}}}"#,
        "55".repeat(32),
        "66".repeat(48)
    );
    write(&pj, "keylime-ima-buf.json", buf.as_bytes());
}

/// engine_segments seeds: the target reads a plan with `arbitrary`, so any bytes are a
/// plan; a few deterministic pseudo-random strings of different lengths give varied ones.
fn engine_seeds(seeds: &Path) {
    let es = seeds.join("engine_segments");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, len) in [16usize, 64, 128, 256, 512, 1024].into_iter().enumerate() {
        let mut b = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.push((x >> 24) as u8);
        }
        write(&es, &format!("random-{i}-{len}"), &b);
    }
    write(&es, "zeros-256", &[0u8; 256]);
}

fn synth_a() -> Record {
    let buf = unhex(VECTOR_A);
    let fmt = imasnap_log::BinaryFormat::new(HashAlgo::Sha1);
    let mut slot = None;
    fmt.decode(&buf, &mut Default::default(), &mut slot).unwrap();
    slot.unwrap()
}
