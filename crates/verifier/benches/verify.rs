//! Verification cost: full history grows with the log; incremental verification of the
//! same number of new records must not (docs/ARCHITECTURE.md, rule 5).
//!
//!   cargo bench -p imasnap-verifier --bench verify
//!   cargo bench -p imasnap-verifier --bench verify -- incremental_vs_history   (issue #3 figure)
//!
//! `incremental_vs_history` is the issue #3 target: the same 1,000-record delta after 10,000
//! and after 1,000,000 records of history (200 snapshots of 5,000), the 1M case at most 1.2x
//! the 10k case. Building the 1M-record history (kernel model + snapshots + one full
//! verification) takes seconds; it happens once, before the timed part.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imasnap_verifier::{Mode, State};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{nonce, Bundle, Host};

const PER_SNAPSHOT: usize = 5_000;
const NEW: usize = 1_000;

/// A host with `n` records of history in snapshots, verified once; then `NEW` records and
/// one more snapshot arrive.
fn setup(n: usize) -> (Bundle, State) {
    let mut h = Host::boot(n as u64);
    for _ in 0..n / PER_SNAPSHOT {
        h.measure(PER_SNAPSHOT - 1);
        h.snapshot();
    }
    h.measure(200);
    let state = h.bundle(&nonce(0)).verify(Mode::Incremental, None).state.expect("honest history verifies");
    h.measure(NEW / 2);
    h.snapshot();
    h.measure(NEW / 2 - 1);
    let b = h.bundle(&nonce(1));
    let o = b.verify(Mode::Incremental, Some(&state));
    assert_eq!(o.report.records_replayed, NEW as u64, "{:?}", o.report);
    (b, state)
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    for n in [20_000, 80_000] {
        let (b, state) = setup(n);
        g.throughput(Throughput::Elements(NEW as u64));
        g.bench_with_input(BenchmarkId::new("incremental_1000_new", n), &n, |bench, _| {
            bench.iter(|| assert!(b.verify(Mode::Incremental, Some(&state)).verdict.is_verified()))
        });
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("full_history", n), &n, |bench, _| {
            bench.iter(|| assert!(b.verify(Mode::FullHistory, None).verdict.is_verified()))
        });
    }
    g.finish();
}

/// Issue #3: incremental cost must not depend on history length, 10k vs 1M records.
fn incremental_vs_history(c: &mut Criterion) {
    let mut g = c.benchmark_group("incremental_vs_history");
    g.sample_size(20);
    g.throughput(Throughput::Elements(NEW as u64));
    for n in [10_000, 1_000_000] {
        let t = std::time::Instant::now();
        let (b, state) = setup(n);
        eprintln!(
            "incremental_vs_history: {n} records of history ({} snapshots) set up in {:.1?}",
            b.snaps.len(),
            t.elapsed()
        );
        g.bench_with_input(BenchmarkId::new("incremental_1000_new", n), &n, |bench, _| {
            bench.iter(|| assert!(b.verify(Mode::Incremental, Some(&state)).verdict.is_verified()))
        });
    }
    g.finish();
}

criterion_group!(benches, verify, incremental_vs_history);
criterion_main!(benches);
