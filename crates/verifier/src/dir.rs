//! The one I/O edge of this crate: reading an evidence bundle directory (docs/SNAPSHOTS.md)
//! into [`Evidence`]. Snapshot files are streamed, and files the engine will not need
//! (entirely before an incremental checkpoint) are not opened at all.

use crate::bundle::{ak_from_pem, ak_from_pub_hex, check_against, quote_from_json, BundleIndex, Manifest};
use crate::evidence::{Evidence, Input, SnapshotEvidence};
use crate::Failure;
use imasnap_log::Endian;
use imasnap_tpm::{AkPublic, Quote};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// JSON parts of a bundle directory, parsed; file contents are opened on demand.
pub struct BundleDir {
    pub dir: PathBuf,
    pub index: BundleIndex,
    pub manifest: Manifest,
    pub quote: Quote,
    /// The AK the bundle ships: a claim, trusted only on first use or when it matches.
    pub shipped_ak: Option<AkPublic>,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(dir.join(name)).map_err(|e| Failure::BadEvidence { detail: format!("{name}: {e}") })
}

impl BundleDir {
    pub fn open(dir: &Path) -> Result<Self, Failure> {
        let index = BundleIndex::from_json(&read(dir, "bundle.json")?)?;
        let manifest = Manifest::from_json(&read(dir, "manifest.json")?)?;
        check_against(&manifest, &index)?;
        let quote = quote_from_json(&read(dir, "quote.json")?)?;
        let shipped_ak = if dir.join("ak.pub").exists() {
            Some(ak_from_pub_hex(&String::from_utf8_lossy(&read(dir, "ak.pub")?))?)
        } else if dir.join("ak.pem").exists() {
            Some(ak_from_pem(&String::from_utf8_lossy(&read(dir, "ak.pem")?))?)
        } else {
            None
        };
        Ok(Self { dir: dir.to_path_buf(), index, manifest, quote, shipped_ak })
    }

    /// Evidence for the engine. Snapshot files are opened lazily, on the engine's first
    /// read, so crossing an old snapshot costs no descriptor and no buffer until needed;
    /// a missing file is left for the engine to report.
    pub fn evidence(&self) -> Result<Evidence<'static>, Failure> {
        let mut snapshots = Vec::with_capacity(self.manifest.snapshots.len());
        for (file, claim) in &self.manifest.snapshots {
            let p = self.dir.join("snapshots").join(file);
            let data = p.is_file().then(|| Input::Reader(Box::new(LazyFile { path: p, file: None })));
            snapshots.push(SnapshotEvidence { claim: claim.clone(), data });
        }
        let live = File::open(self.dir.join("live.bin"))
            .map_err(|e| Failure::BadEvidence { detail: format!("live.bin: {e}") })?;
        Ok(Evidence {
            banks: self.index.banks.clone(),
            pcr: self.index.pcr,
            endian: Endian::Little,
            boot: Some(self.manifest.boot.clone()),
            snapshots,
            live: Input::Reader(Box::new(BufReader::with_capacity(128 << 10, live))),
            live_first_index: self.index.live_first_index,
        })
    }
}

/// A file opened on first read (the engine's readers buffer on their own).
struct LazyFile {
    path: PathBuf,
    file: Option<File>,
}

impl std::io::Read for LazyFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            self.file = Some(File::open(&self.path)?);
        }
        self.file.as_mut().expect("opened above").read(buf)
    }
}
