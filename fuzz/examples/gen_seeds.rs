//! Writes the small seed files under `fuzz/seeds/<target>/` from the known-good vectors in
//! `tests/fixtures/vectors` and the synthetic generator. Deterministic: re-running it
//! rewrites the same bytes.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds

use imasnap_log::ascii;
use imasnap_log::entry::{build, builtin, d_ng, n_ng};
use imasnap_log::kexec;
use imasnap_log::synth::Synth;
use imasnap_log::template::Template;
use imasnap_log::{Endian, HashAlgo, Record};
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
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
}

fn synth_a() -> Record {
    let buf = unhex(VECTOR_A);
    let fmt = imasnap_log::BinaryFormat::new(HashAlgo::Sha1);
    let mut slot = None;
    fmt.decode(&buf, &mut Default::default(), &mut slot).unwrap();
    slot.unwrap()
}
