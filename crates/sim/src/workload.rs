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
        let path = format!("{}/file-{file:07}", DIRS[(file % DIRS.len() as u64) as usize]).into_bytes();
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
        let digest = HashAlgo::Sha256.hash(&[&file.to_le_bytes(), &[v]]).as_bytes().to_vec();
        Some(Event::File { path, digest })
    }
}

impl Workload {
    fn new_file(&mut self) -> u64 {
        self.versions.push(0);
        self.files += 1;
        self.files - 1
    }
}
