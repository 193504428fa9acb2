//! Deterministic synthetic logs for benchmarks and tests: a realistic mix of templates,
//! path lengths, violations and `ima-buf` records.

use crate::algo::HashAlgo;
use crate::codec::{Endian, Record};
use crate::entry::{build, builtin, d_ng, n_ng};
use crate::template::Template;
use std::sync::Arc;

/// splitmix64: tiny, seedable, good enough for workload shapes.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/lib/x86_64-linux-gnu",
    "/etc",
    "/usr/share/locale/en_US/LC_MESSAGES",
    "/var/lib/dpkg/info",
    "/opt/app/node_modules/some-package/lib",
];
const EXTS: &[&str] = &["", ".so.1", ".conf", ".py", ".mo", ".list", ".js"];

/// Generates records in kernel order. The first is a boot_aggregate.
pub struct Synth {
    rng: Rng,
    bank: HashAlgo,
    endian: Endian,
    index: u64,
    ng: Arc<Template>,
    sig: Arc<Template>,
    buf: Arc<Template>,
    ngv2: Arc<Template>,
    platform: [[u8; 32]; 10],
    ima_ng_only: bool,
}

impl Synth {
    /// `bank`: the digest stored in records (SHA1 for the classic file).
    pub fn new(seed: u64, bank: HashAlgo) -> Self {
        let mut rng = Rng::new(seed);
        let mut platform = [[0u8; 32]; 10];
        for p in &mut platform {
            rng.fill(p);
        }
        Self {
            platform,
            rng,
            bank,
            endian: Endian::Little,
            index: 0,
            ng: builtin("ima-ng"),
            sig: builtin("ima-sig"),
            buf: builtin("ima-buf"),
            ngv2: builtin("ima-ngv2"),
            ima_ng_only: false,
        }
    }

    /// Only `ima-ng` records (violations included): a plain file-measurement log, whose
    /// records name no signature, so `evmctl` does not look for the files on disk.
    pub fn ima_ng_only(mut self) -> Self {
        self.ima_ng_only = true;
        self
    }

    /// PCR 0-9 of the simulated firmware, per bank: the boot_aggregate is computed over
    /// the SHA256 values, as the kernel does when a SHA256 bank exists.
    pub fn platform_pcrs(&self, algo: HashAlgo) -> Vec<crate::algo::PcrValue> {
        self.platform.iter().map(|p| crate::algo::PcrValue::from_slice(algo, algo.hash(&[p]).as_bytes())).collect()
    }

    fn path(&mut self) -> Vec<u8> {
        let d = DIRS[self.rng.below(DIRS.len() as u64) as usize];
        let e = EXTS[self.rng.below(EXTS.len() as u64) as usize];
        let span = if self.rng.below(20) == 0 { 120 } else { 20 };
        let len = 3 + self.rng.below(span) as usize;
        let stem: String = (0..len).map(|_| (b'a' + self.rng.below(26) as u8) as char).collect();
        format!("{d}/{stem}{e}").into_bytes()
    }
}

impl Iterator for Synth {
    type Item = Record;
    fn next(&mut self) -> Option<Record> {
        let i = self.index;
        self.index += 1;
        let mut digest = [0u8; 32];
        self.rng.fill(&mut digest);
        let (bank, e) = (self.bank, self.endian);
        if i == 0 {
            let pcrs = self.platform_pcrs(HashAlgo::Sha256);
            let agg = crate::digest::boot_aggregate(HashAlgo::Sha256, &pcrs, true);
            return Some(build(
                &self.ng,
                &[&d_ng("sha256", agg.as_bytes()), &n_ng(b"boot_aggregate")],
                bank,
                10,
                false,
                e,
            ));
        }
        let roll = self.rng.below(1000);
        let rec = if self.ima_ng_only && roll >= 5 {
            let p = self.path();
            build(&self.ng, &[&d_ng("sha256", &digest), &n_ng(&p)], bank, 10, false, e)
        } else if roll < 5 {
            // Violation: digest fields zeroed, template digest zero.
            let p = self.path();
            build(&self.ng, &[&d_ng("sha256", &[0; 32]), &n_ng(&p)], bank, 10, true, e)
        } else if roll < 40 {
            let mut payload = vec![0u8; 16 + self.rng.below(200) as usize];
            self.rng.fill(&mut payload);
            let name: &[u8] = if roll < 20 { b"kexec-cmdline" } else { b".ima" };
            build(
                &self.buf,
                &[&d_ng("sha256", HashAlgo::Sha256.hash(&[&payload]).as_bytes()), &n_ng(name), &payload],
                bank,
                10,
                false,
                e,
            )
        } else if roll < 200 {
            let p = self.path();
            let mut sig = vec![0x03, 0x02, 0x04, 0, 0, 0, 0, 0x01, 0x00];
            let mut s = vec![0u8; 256];
            self.rng.fill(&mut s);
            self.rng.fill(&mut sig[3..7]);
            sig.extend_from_slice(&s);
            build(&self.sig, &[&d_ng("sha256", &digest), &n_ng(&p), &sig], bank, 10, false, e)
        } else if roll < 210 {
            let p = self.path();
            let mut v = b"ima:sha256:\0".to_vec();
            v.extend_from_slice(&digest);
            build(&self.ngv2, &[&v, &n_ng(&p)], bank, 10, false, e)
        } else {
            let p = self.path();
            build(&self.ng, &[&d_ng("sha256", &digest), &n_ng(&p)], bank, 10, false, e)
        };
        Some(rec)
    }
}
