//! Replay throughput: decode + template digests recomputed + extend, sha1 and sha256 banks.
//! `cargo bench -p imasnap-log --bench replay`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use imasnap_log::replay::replay_stream;
use imasnap_log::synth::Synth;
use imasnap_log::*;

fn log(n: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in Synth::new(1, HashAlgo::Sha1).take(n) {
        r.encode(Endian::Little, &mut buf);
    }
    buf
}

fn bench(c: &mut Criterion) {
    let n = 100_000;
    let data = log(n);
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    for (name, modes) in [
        ("sha1+sha256 native", vec![ExtendMode::Native]),
        ("sha1+sha256 native+padded", vec![ExtendMode::Native, ExtendMode::PaddedSha1]),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut o = ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]);
                    o.modes = modes.clone();
                    Replayer::new(o)
                },
                |mut rp| {
                    let mut r = reader::open(&data[..], Format::Binary, BinaryFormat::new(HashAlgo::Sha1)).unwrap();
                    replay_stream(&mut r, &mut rp, 4096, |_| {}).unwrap();
                    rp.finish()
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.bench_function("decode only", |b| {
        b.iter(|| {
            let mut r = BinaryReader::new(&data[..], BinaryFormat::new(HashAlgo::Sha1));
            let mut slot = None;
            let mut k = 0;
            while r.read_into(&mut slot).unwrap().is_some() {
                k += 1;
            }
            k
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
