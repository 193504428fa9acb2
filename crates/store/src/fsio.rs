//! Small durable-I/O helpers: each does one step, so callers can crash between steps.

use crate::error::{io, Result};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

/// fsync a directory, making renames and unlinks in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let f = io("open directory", dir, File::open(dir))?;
    io("fsync directory", dir, f.sync_all())
}

/// Creates (or truncates) `path`, writes `bytes`, fsyncs the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = io("create", path, OpenOptions::new().write(true).create(true).truncate(true).open(path))?;
    io("write", path, f.write_all(bytes))?;
    io("fsync", path, f.sync_all())
}

pub fn rename(from: &Path, to: &Path) -> Result<()> {
    io("rename", from, std::fs::rename(from, to))
}

/// Removes a file; absent is fine. Returns whether it existed.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => io("remove", path, Err(e)),
    }
}

/// Reads a whole small file (manifest, pending); absent gives `None`.
pub fn read_small(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return io("open", path, Err(e)),
    };
    let mut buf = Vec::new();
    // One byte over the limit tells "too big" apart from "exactly at the limit".
    io("read", path, f.take(limit + 1).read_to_end(&mut buf))?;
    if buf.len() as u64 > limit {
        return Err(crate::StoreError::Snapshot { path: path.into(), reason: format!("larger than {limit} bytes") });
    }
    Ok(Some(buf))
}

/// Streaming sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = io("open", path, File::open(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = io("read", path, f.read(&mut buf))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }
    pub fn finish_hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
