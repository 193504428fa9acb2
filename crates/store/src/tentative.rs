//! Writing a snapshot file as the kernel hands it over, and checking one read back.
//!
//! The writer decodes as it goes, so a short or garbled kernel read is caught before the
//! file is renamed into place, and the record count is measured rather than assumed.

use crate::error::{io, Result, StoreError};
use crate::fsio::HashingReader;
use imasnap_log::template::TemplateCache;
use imasnap_log::{BinaryFormat, BinaryReader, HashAlgo, Record};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// Snapshot files are the classic `binary_runtime_measurements`: SHA1, little endian.
pub fn snapshot_format() -> BinaryFormat {
    BinaryFormat::new(HashAlgo::Sha1)
}

/// What a complete snapshot file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub count: u64,
    pub bytes: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// First record, for the continuity check against the previous marker.
    pub first: Option<Record>,
}

/// Incremental record decoder over arbitrary chunk boundaries. Memory: one chunk plus at
/// most one partial record.
struct Counter {
    fmt: BinaryFormat,
    cache: TemplateCache,
    carry: Vec<u8>,
    count: u64,
    offset: u64,
    first: Option<Record>,
    slot: Option<Record>,
}

impl Counter {
    fn feed(&mut self, chunk: &[u8]) -> std::result::Result<(), String> {
        self.carry.extend_from_slice(chunk);
        let mut p = 0;
        loop {
            match self.fmt.decode(&self.carry[p..], &mut self.cache, &mut self.slot) {
                Ok(Some(n)) => {
                    if self.count == 0 {
                        self.first = self.slot.clone();
                    }
                    p += n;
                    self.offset += n as u64;
                    self.count += 1;
                }
                Ok(None) => break,
                Err((rel, reason)) => {
                    return Err(format!("record {} at byte offset {}: {reason}", self.count, self.offset + rel))
                }
            }
        }
        self.carry.drain(..p);
        Ok(())
    }
}

/// A `.tmp-<seq>.snap` being written.
pub struct Tentative {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    bytes: u64,
    counter: Counter,
}

impl Tentative {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        let file = io("create", &path, OpenOptions::new().write(true).create(true).truncate(true).open(&path))?;
        Ok(Self {
            file,
            path,
            hasher: Sha256::new(),
            bytes: 0,
            counter: Counter {
                fmt: snapshot_format(),
                cache: TemplateCache::default(),
                carry: Vec::new(),
                count: 0,
                offset: 0,
                first: None,
                slot: None,
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends bytes read from the kernel. Refuses bytes that do not decode as records.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.counter.feed(chunk).map_err(|reason| StoreError::Snapshot { path: self.path.clone(), reason })?;
        io("write", &self.path, self.file.write_all(chunk))?;
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Records fully written so far.
    pub fn count(&self) -> u64 {
        self.counter.count
    }

    /// fsync the file (protocol step 3).
    pub fn sync(&mut self) -> Result<()> {
        io("fsync", &self.path, self.file.sync_all())
    }

    /// Closes the file. Fails if it ends inside a record.
    pub fn finish(self) -> Result<FileInfo> {
        if !self.counter.carry.is_empty() {
            let (_, reason) = self.counter.fmt.truncation(&self.counter.carry);
            return Err(StoreError::Snapshot {
                path: self.path,
                reason: format!("record {} at byte offset {}: {reason}", self.counter.count, self.counter.offset),
            });
        }
        Ok(FileInfo {
            count: self.counter.count,
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
            first: self.counter.first,
        })
    }
}

/// Decodes a whole snapshot file, streaming: count, sha256 and first record.
pub fn scan_file(path: &Path, first_index: u64) -> Result<FileInfo> {
    let f = io("open", path, File::open(path))?;
    let mut hr = HashingReader::new(BufReader::new(f));
    let mut first = None;
    let count;
    {
        let mut r = BinaryReader::starting_at(&mut hr, snapshot_format(), first_index);
        let mut slot = None;
        loop {
            match r.read_into(&mut slot) {
                Ok(Some(rec)) => {
                    if first.is_none() {
                        first = Some(rec.clone());
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(StoreError::Snapshot { path: path.into(), reason: e.to_string() }),
            }
        }
        count = r.next_index() - first_index;
    }
    let bytes = hr.bytes;
    Ok(FileInfo { count, bytes, sha256: hr.finish_hex(), first })
}
