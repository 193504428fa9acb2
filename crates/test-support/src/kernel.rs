//! A kernel model booted on a [`SoftTpm`], and files measured into it.
//!
//! File number `i` has a fixed content digest ([`file_digest`]), so two runs (or two
//! crates) that measure the same numbers produce the same records.

use imasnap_kernel_model::{Config, Kernel};
use imasnap_log::HashAlgo;
use imasnap_tpm::{SoftTpm, Tpm};

/// The kernel model on the in-process software TPM.
pub type ModelKernel = Kernel<SoftTpm>;

/// Boots the kernel model with the default configuration on `SoftTpm::new(seed)`.
pub fn boot(seed: u64) -> ModelKernel {
    boot_with(Config::default(), SoftTpm::new(seed))
}

/// Boots the kernel model with `cfg` on `tpm`.
pub fn boot_with<T: Tpm>(cfg: Config, tpm: T) -> Kernel<T> {
    Kernel::boot(cfg, tpm).unwrap_or_else(|e| panic!("kernel model does not boot: {e}"))
}

/// The sha256 content digest of file number `i`.
pub fn file_digest(i: u64) -> Vec<u8> {
    HashAlgo::Sha256.hash(&[&i.to_le_bytes()]).as_bytes().to_vec()
}

/// Measures files `from..from + n`, named `{prefix}{i}` with content [`file_digest`]`(i)`,
/// and checks each one is a new measurement (a path and content not seen before).
pub fn measure_files<T: Tpm>(k: &mut Kernel<T>, prefix: &str, from: u64, n: u64) {
    for i in from..from + n {
        let path = format!("{prefix}{i}");
        let added = k.measure_file(path.as_bytes(), &file_digest(i)).unwrap_or_else(|e| panic!("measure {path}: {e}"));
        assert!(added, "{path} was measured before: not a new record");
    }
}

/// Boots on `SoftTpm::new(seed)` and measures `n` files `/usr/bin/f0`, `/usr/bin/f1`, …
pub fn booted_with_files(seed: u64, n: u64) -> ModelKernel {
    let mut k = boot(seed);
    measure_files(&mut k, "/usr/bin/f", 0, n);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_14_booted_kernel_holds_boot_aggregate_and_the_files() {
        let k = booted_with_files(3, 5);
        assert_eq!(k.len(), 6, "boot_aggregate + 5 files");
        let again = booted_with_files(3, 5);
        assert_eq!(k.binary_measurements(HashAlgo::Sha1), again.binary_measurements(HashAlgo::Sha1));
    }

    #[test]
    #[should_panic(expected = "measured before")]
    fn finding_14_measuring_a_file_twice_is_a_test_bug() {
        let mut k = boot(1);
        measure_files(&mut k, "/a", 0, 1);
        measure_files(&mut k, "/a", 0, 1);
    }
}
