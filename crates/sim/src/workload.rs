//! A synthetic measurement workload: file opens with a realistic share of re-opens (which
//! IMA deduplicates), changed files, buffers and the occasional violation.

use imasnap_log::synth::Rng;
use imasnap_log::HashAlgo;

/// One event for the kernel model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    File { path: Vec<u8>, digest: Vec<u8> },
    Buffer { name: Vec<u8>, buf: Vec<u8> },
    Violation { path: Vec<u8> },
}

pub struct Workload {
    rng: Rng,
    files: u64,
    versions: Vec<u8>,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Self { rng: Rng::new(seed ^ 0x5157), files: 0, versions: Vec::new() }
    }
}

const DIRS: &[&str] = &["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/etc", "/usr/libexec", "/opt/app/lib"];

impl Iterator for Workload {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        let roll = self.rng.below(1000);
        // Re-open an existing file (deduplicated unless it changed), or a new one.
        let file = if self.files > 0 && roll < 300 { self.rng.below(self.files) } else { self.new_file() };
        let path = file_path(file);
        if roll >= 995 {
            return Some(Event::Violation { path });
        }
        if roll >= 980 {
            let mut buf = vec![0u8; 32 + self.rng.below(96) as usize];
            self.rng.fill(&mut buf);
            return Some(Event::Buffer { name: b"kexec-cmdline".to_vec(), buf });
        }
        if roll >= 950 {
            self.versions[file as usize] = self.versions[file as usize].wrapping_add(1);
        }
        let v = self.versions[file as usize];
        // SHA-256(file number LE || version), hashed as one part (the one-shot path).
        let mut msg = [0u8; 9];
        msg[..8].copy_from_slice(&file.to_le_bytes());
        msg[8] = v;
        let digest = HashAlgo::Sha256.hash(&[&msg]).as_bytes().to_vec();
        Some(Event::File { path, digest })
    }
}

/// `{dir}/file-{file:07}`, written without the formatting machinery (this runs for
/// every simulated event).
fn file_path(file: u64) -> Vec<u8> {
    let dir = DIRS[(file % DIRS.len() as u64) as usize].as_bytes();
    let mut digits = [b'0'; 20];
    let (mut n, mut i) = (file, digits.len());
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = i.min(digits.len() - 7);
    let mut p = Vec::with_capacity(dir.len() + 6 + digits.len() - start);
    p.extend_from_slice(dir);
    p.extend_from_slice(b"/file-");
    p.extend_from_slice(&digits[start..]);
    p
}

impl Workload {
    fn new_file(&mut self) -> u64 {
        self.versions.push(0);
        self.files += 1;
        self.files - 1
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_path_is_the_formatted_one() {
        for f in [0u64, 7, 12, 999_999, 1_234_567, 9_999_999, 10_000_000, 123_456_789_012, u64::MAX] {
            let want = format!("{}/file-{f:07}", super::DIRS[(f % super::DIRS.len() as u64) as usize]);
            assert_eq!(super::file_path(f), want.into_bytes(), "file {f}");
        }
    }
}
