//! A read-only mapping of part of a render-cache file, so a FUSE reply is written straight
//! from the page cache: one copy per read (into the reader's pages) instead of two.

use std::fs::File;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

/// Bytes mapped at a time. Bounds the resident mapped pages whatever the log's length;
/// large enough that remapping is rare next to the 1 MiB requests it serves.
pub const WINDOW: usize = 4 << 20;
const PAGE: u64 = 4096;

pub struct Window {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
    /// File offset of the first mapped byte (page aligned).
    off: u64,
}

// SAFETY: the mapping is read-only and owned by this value; moving it between threads
// moves nothing but the address.
#[allow(unsafe_code)]
unsafe impl Send for Window {}

impl Window {
    /// Maps `[floor(pos), floor(pos) + WINDOW)` clipped to `file_len`.
    pub fn map(file: &File, pos: u64, file_len: u64) -> std::io::Result<Self> {
        let off = pos - pos % PAGE;
        let len = (file_len.saturating_sub(off)).min(WINDOW as u64) as usize;
        let Some(nz) = NonZeroUsize::new(len) else {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "nothing to map"));
        };
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        // SAFETY: a fresh shared read-only mapping of a file this process created and
        // unlinked (an anonymous temporary file): nobody else holds a name for it, and the
        // view only ever appends to it, so the mapped range never shrinks under us.
        // MAP_POPULATE faults the range in at once rather than page by page.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            mmap(None, nz, ProtFlags::PROT_READ, MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE, file, off as i64)
        }?;
        Ok(Self { ptr, len, off })
    }

    /// `n` bytes at file offset `pos`, when this window holds them.
    pub fn get(&self, pos: u64, n: usize) -> Option<&[u8]> {
        let s = usize::try_from(pos.checked_sub(self.off)?).ok()?;
        if s.checked_add(n)? > self.len {
            return None;
        }
        // SAFETY: `ptr..ptr+len` is mapped readable for as long as `self` lives (unmapped
        // only in Drop), and the range was checked to lie inside it.
        #[allow(unsafe_code)]
        let all = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) };
        all.get(s..s + n)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; no slice from `get` outlives `self`.
        #[allow(unsafe_code)]
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn windows_serve_only_what_they_map() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(WINDOW + 10_000)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let len = data.len() as u64;
        let w = Window::map(&f, 5000, len).unwrap();
        assert_eq!(w.get(5000, 100).unwrap(), &data[5000..5100]);
        assert_eq!(w.get(4096, 1).unwrap(), &data[4096..4097]);
        assert!(w.get(4095, 1).is_none(), "before the window");
        assert!(w.get(4096 + WINDOW as u64 - 10, 11).is_none(), "past the window");
        let tail = Window::map(&f, len - 3, len).unwrap();
        assert_eq!(tail.get(len - 3, 3).unwrap(), &data[data.len() - 3..]);
        assert!(tail.get(len - 3, 4).is_none(), "past the file's end");
        assert!(Window::map(&f, len, len).unwrap().get(len, 1).is_none(), "at the end");
        assert!(Window::map(&f, 8192, 8192).is_err(), "nothing to map");
    }
}
