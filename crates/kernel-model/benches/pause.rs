//! Snapshot pause: time appends are blocked while the marker is made, in both PCR modes.
//! Criterion's `iter_custom` reports the model's own measurement of the locked section.
//! `cargo bench -p imasnap-kernel-model --bench pause`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use criterion::{criterion_group, criterion_main, Criterion};
use imasnap_kernel_model::{Config, PcrMode};
use imasnap_test_support::kernel;
use imasnap_tpm::SoftTpm;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_pause");
    for (name, mode) in [("tpm-under-lock", PcrMode::TpmUnderLock), ("extended-under-lock", PcrMode::ExtendedUnderLock)]
    {
        g.bench_function(format!("{name} (soft TPM, sha1+sha256)"), |b| {
            let mut k = kernel::boot_with(Config { pcr_mode: mode, ..Config::default() }, SoftTpm::new(1));
            kernel::measure_files(&mut k, "/f", 0, 10_000);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let h = k.snapshot_open().unwrap();
                    total += k.last_pause().unwrap();
                    k.snapshot_close(h);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
