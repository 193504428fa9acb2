//! The one I/O edge of this crate: reading an evidence bundle directory (docs/SNAPSHOTS.md)
//! into [`Evidence`]. Snapshot files are streamed, and files the engine will not need
//! (entirely before an incremental checkpoint) are not opened at all.

use crate::bundle::{ak_from_pem, ak_from_pub_hex, check_against, quote_from_json, BundleIndex, Manifest};
use crate::evidence::{Evidence, Input, SnapshotEvidence};
use crate::Failure;
use imasnap_log::Endian;
use imasnap_tpm::{AkPublic, Quote};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Size limits of the small files of a bundle, far above what an agent writes (an AK is
/// a few hundred bytes, a quote a few KiB, a manifest ~300 bytes per snapshot).
pub const MAX_AK_BYTES: u64 = 64 << 10;
pub const MAX_BUNDLE_JSON_BYTES: u64 = 1 << 20;
pub const MAX_QUOTE_JSON_BYTES: u64 = 1 << 20;
pub const MAX_MANIFEST_JSON_BYTES: u64 = 64 << 20;

/// A file that cannot be used as input, with its path and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> FileError {
    FileError { path: path.to_path_buf(), reason: reason.to_string() }
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` only if it is a regular file. A FIFO would block the open until a writer
/// comes, and a FIFO or device can stream without end, so the type is checked before the
/// open (symlinks followed) and again on the open handle.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let m = std::fs::metadata(path).map_err(|e| file_error(path, e))?;
    if !m.is_file() {
        return Err(file_error(path, format!("{}, expected a regular file", kind_of(&m))));
    }
    let f = File::open(path).map_err(|e| file_error(path, e))?;
    let m = f.metadata().map_err(|e| file_error(path, e))?;
    if !m.is_file() {
        return Err(file_error(path, format!("{}, expected a regular file", kind_of(&m))));
    }
    Ok(f)
}

/// Reads a small regular file whole, refusing it above `limit` bytes (checked on the
/// size before reading and on the bytes read, in case the file grows meanwhile).
pub fn read_small_file(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let f = open_regular(path)?;
    let too_big = |n: u64| file_error(path, format!("{n} bytes, larger than the limit of {limit} bytes"));
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        return Err(too_big(len));
    }
    let mut data = Vec::with_capacity(len as usize);
    f.take(limit + 1).read_to_end(&mut data).map_err(|e| file_error(path, e))?;
    if data.len() as u64 > limit {
        return Err(too_big(data.len() as u64));
    }
    Ok(data)
}

/// JSON parts of a bundle directory, parsed; file contents are opened on demand.
pub struct BundleDir {
    pub dir: PathBuf,
    pub index: BundleIndex,
    pub manifest: Manifest,
    pub quote: Quote,
    /// The AK the bundle ships: a claim, trusted only on first use or when it matches.
    pub shipped_ak: Option<AkPublic>,
}

fn read(dir: &Path, name: &str, limit: u64) -> Result<Vec<u8>, Failure> {
    read_small_file(&dir.join(name), limit).map_err(|e| Failure::BadEvidence { detail: e.to_string() })
}

impl BundleDir {
    pub fn open(dir: &Path) -> Result<Self, Failure> {
        let index = BundleIndex::from_json(&read(dir, "bundle.json", MAX_BUNDLE_JSON_BYTES)?)?;
        let manifest = Manifest::from_json(&read(dir, "manifest.json", MAX_MANIFEST_JSON_BYTES)?)?;
        check_against(&manifest, &index)?;
        let quote = quote_from_json(&read(dir, "quote.json", MAX_QUOTE_JSON_BYTES)?)?;
        let shipped_ak = if dir.join("ak.pub").exists() {
            Some(ak_from_pub_hex(&String::from_utf8_lossy(&read(dir, "ak.pub", MAX_AK_BYTES)?))?)
        } else if dir.join("ak.pem").exists() {
            Some(ak_from_pem(&String::from_utf8_lossy(&read(dir, "ak.pem", MAX_AK_BYTES)?))?)
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
            let data = match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => Some(Input::Reader(Box::new(LazyFile { path: p, file: None }))),
                Ok(m) => {
                    let e = file_error(&p, format!("{}, expected a regular file", kind_of(&m)));
                    return Err(Failure::BadEvidence { detail: e.to_string() });
                }
                Err(_) => None,
            };
            snapshots.push(SnapshotEvidence { claim: claim.clone(), data });
        }
        let live =
            open_regular(&self.dir.join("live.bin")).map_err(|e| Failure::BadEvidence { detail: e.to_string() })?;
        Ok(Evidence {
            banks: self.index.banks.clone(),
            pcr: self.index.pcr,
            endian: Endian::Little,
            boot: Some(self.manifest.boot.clone()),
            snapshots,
            live: Input::Reader(Box::new(BufReader::with_capacity(128 << 10, live))),
            live_first_index: self.index.live_first_index,
            data_from: None,
        })
    }
}

/// A file opened on first read (the engine's readers buffer on their own).
struct LazyFile {
    path: PathBuf,
    file: Option<File>,
}

impl Read for LazyFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let f = match &mut self.file {
            Some(f) => f,
            None => {
                let f = open_regular(&self.path)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
                self.file.insert(f)
            }
        };
        f.read(buf)
    }
}
