//! Quote and verify timings on a private swtpm (needs swtpm installed).
//!
//!   cargo run --release -p imasnap-tpm --features esapi --example swtpm_bench [-- ITERATIONS]
//!
//! Prints a Markdown table: median and p90 per operation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

#[cfg(feature = "esapi")]
fn main() {
    use imasnap_test_support::swtpm::Swtpm;
    use imasnap_tpm::*;
    use std::time::{Duration, Instant};

    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let sw = Swtpm::start().expect("start swtpm");
    let stats = |mut v: Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        (ms(v[v.len() / 2]), ms(v[(v.len() * 9 / 10).min(v.len() - 1)]))
    };
    let time = |reps: usize, f: &mut dyn FnMut()| {
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect::<Vec<_>>()
    };
    println!("| operation | AK | median ms | p90 ms |");
    println!("|---|---|---:|---:|");
    let nonce = [7u8; 32];
    for alg in [AkAlg::EccP256, AkAlg::Rsa2048] {
        let src = AkSource::Primary(alg, AkHierarchy::Endorsement);
        let mut opens = time(3.max(n / 10), &mut || drop(EsapiTpm::open(&sw.tcti(), src.clone()).unwrap()));
        opens.remove(0); // the first derivation may fill caches
        let (m, p) = stats(opens);
        println!("| open: connect + CreatePrimary AK | {alg:?} | {m:.2} | {p:.2} |");
        let mut t = EsapiTpm::open(&sw.tcti(), src).unwrap();
        let banks = t.banks();
        let d: Vec<PcrValue> = banks.iter().map(|b| b.hash(&[b"x"])).collect();
        let (m, p) = stats(time(n, &mut || t.pcr_extend(10, &d).unwrap()));
        println!("| PCR_Extend, {} banks | - | {m:.2} | {p:.2} |", banks.len());
        let (m, p) = stats(time(n, &mut || drop(t.pcr_read_all().unwrap())));
        println!("| PCR 0-23 of {} banks (12 PCR_Reads) | - | {m:.2} | {p:.2} |", banks.len());
        for (what, sel) in [
            ("sha256 PCR 10", PcrSelection::uniform(&[HashAlgo::Sha256], &[10]).unwrap()),
            ("PCR 0-10, all banks", PcrSelection::uniform(&banks, &(0..=10).collect::<Vec<_>>()).unwrap()),
        ] {
            let (m, p) = stats(time(n, &mut || drop(t.quote(&nonce, &sel).unwrap())));
            println!("| quote ({what}) incl. PCR read-back + self-check | {alg:?} | {m:.2} | {p:.2} |");
            let q = t.quote(&nonce, &sel).unwrap();
            let ak = t.ak_public();
            let reps = n * 20;
            let (m, p) = stats(time(reps, &mut || {
                let vq = verify_quote(&q, &ak, &nonce).unwrap();
                vq.check_pcrs(|b, i| q.pcr_value(b, i)).unwrap();
            }));
            println!("| verify_quote + check_pcrs ({what}) | {alg:?} | {m:.3} | {p:.3} |");
        }
        let (m, p) = stats(time(n, &mut || {
            t.clock_info().unwrap();
        }));
        println!("| clock_info (GetTime) | {alg:?} | {m:.2} | {p:.2} |");
    }
    let mut soft = SoftTpm::with_banks(0, &[HashAlgo::Sha1, HashAlgo::Sha256]).unwrap();
    let sel = PcrSelection::uniform(&soft.banks(), &(0..=10).collect::<Vec<_>>()).unwrap();
    let (m, p) = stats(time(n * 20, &mut || drop(soft.quote(&nonce, &sel).unwrap())));
    println!("| SoftTpm quote (PCR 0-10, 2 banks) | soft ECC | {m:.3} | {p:.3} |");
}

#[cfg(not(feature = "esapi"))]
fn main() {
    eprintln!("swtpm_bench needs the esapi feature");
}
