//! The view's state and its FUSE adapter: segment files verified once and indexed
//! lazily, the kernel's records refreshed when a read passes the known end, and a cursor
//! per open file so sequential reads never decode twice.

use crate::source::{SegmentRef, Source, State};
use crate::view::{locate, log_files, render, Indexer, LogFile, SegIndex};
use crate::window::Window;
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, WriteFlags,
};
use imasnap_log::{BinaryReader, Record};
use imasnap_store::snapshot_format;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Snapshot files kept open (verified) at once; one evicted is hashed again on reuse.
const OPEN_FILES: usize = 256;
/// Largest read the kernel sends (with `max_pages`): big reads, few round trips.
pub const MAX_READ: u32 = 1 << 20;
const TTL: Duration = Duration::from_secs(1);

/// Files' attributes are never cached: their size is the log's current length, asked
/// again at every open, stat and read past the end.
fn ttl(kind: FileType) -> Duration {
    if kind == FileType::Directory {
        TTL
    } else {
        Duration::ZERO
    }
}

/// What a file of the view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Log(LogFile),
    /// `runtime_measurements_count`: records of the whole boot.
    Count,
    /// `violations`: violation records of the whole boot.
    Violations,
    /// `policy`: the kernel's, passed through.
    Policy,
}

impl Entry {
    pub fn name(&self) -> String {
        match self {
            Self::Log(f) => f.name(),
            Self::Count => "runtime_measurements_count".into(),
            Self::Violations => "violations".into(),
            Self::Policy => "policy".into(),
        }
    }
}

/// Ownership and permissions of the files.
#[derive(Clone, Copy, Debug)]
pub struct Perms {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
}

struct Seg {
    r: SegmentRef,
    index: Option<SegIndex>,
    /// Rendered offset of the segment's start in each log file (once indexed).
    start: Vec<u64>,
    /// Open and verified against the manifest's sha256.
    file: Option<Arc<File>>,
}

/// A decoding position inside a segment, for one log file.
struct Cursor {
    seg: usize,
    k: usize,
    reader: BinaryReader<At>,
    records_left: u64,
    slot: Option<Record>,
    buf: Vec<u8>,
    used: usize,
    /// Offset (relative to the segment) of `buf[used]`.
    rel: u64,
}

/// A positioned reader over a shared file (`pread`).
struct At {
    file: Arc<File>,
    pos: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

struct Handle {
    entry: Entry,
    /// Opened with passthrough onto render cache `k`.
    backing: Option<usize>,
    /// Counters and the policy are fixed at open, so offsets within them stay coherent.
    fixed: Option<Vec<u8>>,
    cursor: Option<Cursor>,
    gen: u64,
}

/// Everything behind the mount, under one mutex.
pub struct View {
    source: Box<dyn Source>,
    entries: Vec<Entry>,
    files: Vec<LogFile>,
    boot: String,
    /// Bumped when a new boot starts a new view: cursors of the old one are dropped.
    gen: u64,
    segs: Vec<Seg>,
    /// Segments `..indexed` have an index and start offsets.
    indexed: usize,
    open_lru: VecDeque<usize>,
    live_first: u64,
    live: Vec<u8>,
    live_index: Option<SegIndex>,
    live_render: Vec<Option<Vec<u8>>>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    perms: Perms,
    scratch: Vec<u8>,
    /// Per log file: the rendered bytes of segments `..segs`, in order.
    cache: Vec<RenderCache>,
    /// The mapped part of one render cache (file `.0`) that the last read came from. One
    /// for all files, so mapped memory stays one window however many files are read.
    window: Option<(usize, Window)>,
    /// Per log file: the view generation whose bytes the kernel's page cache may hold.
    kept: Vec<u64>,
    /// The kernel accepts passthrough opens (FUSE_PASSTHROUGH, 6.9+, CAP_SYS_ADMIN).
    passthrough: bool,
    /// Passthrough may be asked for (the mount's option).
    pub(crate) passthrough_allowed: bool,
    /// Per log file: the render cache registered as the backing file of passthrough opens,
    /// with its generation and open count. The kernel wants one backing file per inode
    /// while any such open lasts.
    backing: Vec<Option<Backing>>,
}

struct Backing {
    gen: u64,
    id: BackingId,
    opens: usize,
}

/// How an open file is served.
pub enum OpenMode {
    /// Reads go straight to render cache `k` (the daemon sees none of them).
    Passthrough(usize),
    Kernel(FopenFlags),
}

/// A committed segment renders to the same bytes forever, so a sequential reader renders
/// each one once into an anonymous temporary file; later reads copy from it. Disk, not
/// memory: at most the rendered size of the files read.
#[derive(Default)]
struct RenderCache {
    file: Option<File>,
    /// Leading segments whose records are all in the file.
    segs: usize,
    /// Records `..recs` (absolute indices) are in the file: the segments `..segs`, then
    /// perhaps records of the kernel's part, which a later cut moves into a segment with
    /// the same rendering (the view only grows within a boot).
    recs: u64,
    len: u64,
    /// Creating the file failed once: render on every read instead.
    off: bool,
}

/// A read failure: logged with its place, answered with EIO.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ViewError(pub String);

fn verr(s: impl Into<String>) -> ViewError {
    ViewError(s.into())
}

impl View {
    /// A view over `source`; the first state fixes the files (its banks).
    pub fn new(mut source: Box<dyn Source>, perms: Perms) -> Result<Self, ViewError> {
        let st = source.state().map_err(verr)?;
        let files = log_files(&st.banks);
        let mut entries: Vec<Entry> = files.iter().map(|f| Entry::Log(*f)).collect();
        entries.push(Entry::Count);
        entries.push(Entry::Violations);
        if source.has_policy() {
            entries.push(Entry::Policy);
        }
        let mut v = Self {
            source,
            entries,
            live_render: vec![None; files.len()],
            files,
            boot: String::new(),
            gen: 0,
            segs: Vec::new(),
            indexed: 0,
            open_lru: VecDeque::new(),
            live_first: 0,
            live: Vec::new(),
            live_index: None,
            handles: HashMap::new(),
            next_fh: 1,
            perms,
            scratch: Vec::new(),
            cache: Vec::new(),
            window: None,
            kept: Vec::new(),
            passthrough: false,
            passthrough_allowed: true,
            backing: Vec::new(),
        };
        v.cache = (0..v.files.len()).map(|_| RenderCache::default()).collect();
        // u64::MAX: nothing kept yet, so the first open starts from an empty cache.
        v.kept = vec![u64::MAX; v.files.len()];
        v.backing = (0..v.files.len()).map(|_| None).collect();
        v.apply(st);
        Ok(v)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// Takes a new state: the same boot grows (segments are immutable, so only new ones
    /// are added and the kernel's part is replaced); another boot starts over.
    fn apply(&mut self, st: State) {
        let same = st.boot == self.boot
            && st.segments.len() >= self.segs.len()
            && self.segs.iter().zip(&st.segments).all(|(a, b)| a.r == *b);
        if !same {
            if !self.boot.is_empty() {
                tracing::info!(old = %self.boot, new = %st.boot, "a new boot: the view starts over");
            }
            self.gen += 1;
            self.segs.clear();
            self.indexed = 0;
            self.open_lru.clear();
            self.cache.iter_mut().for_each(|c| *c = RenderCache::default());
            self.window = None;
            self.boot = st.boot.clone();
        }
        for r in st.segments.into_iter().skip(self.segs.len()) {
            self.segs.push(Seg { r, index: None, start: Vec::new(), file: None });
        }
        self.live_first = st.live_first;
        self.live = st.live;
        self.live_index = None;
        self.live_render.iter_mut().for_each(|r| *r = None);
    }

    fn refresh(&mut self) -> Result<(), ViewError> {
        let st = self.source.state().map_err(verr)?;
        self.apply(st);
        // Passthrough readers read the render cache directly: it must hold every record.
        for k in 0..self.files.len() {
            if matches!(&self.backing[k], Some(b) if b.gen == self.gen) {
                self.fill(k)?;
            }
        }
        Ok(())
    }

    /// Refreshes when a passthrough file is open (their readers never ask the view, so
    /// new records reach them through this, run every [`crate::REFRESH`]).
    pub fn refresh_backing(&mut self) -> Result<(), ViewError> {
        if self.backing.iter().any(|b| b.is_some()) {
            self.refresh()?;
        }
        Ok(())
    }

    /// Renders every record not yet in file `k`'s render cache onto its end.
    fn fill(&mut self, k: usize) -> Result<(), ViewError> {
        if self.cache[k].off {
            return Err(verr("render cache off"));
        }
        while self.cache[k].segs < self.segs.len() {
            let i = self.cache[k].segs;
            self.index_upto(i)?;
            let file = self.seg_file(i)?;
            self.cache_seg(i, k, &file).map_err(|(_, e)| e)?;
        }
        let c = &mut self.cache[k];
        if c.file.is_none() {
            c.file = Some(tempfile::tempfile().map_err(|e| verr(format!("render cache: {e}")))?);
        }
        let from = c.recs;
        if from < self.live_first {
            return Err(verr(format!(
                "render cache ends at record {from}, the kernel's part starts at {}",
                self.live_first
            )));
        }
        let mut out = Vec::new();
        let n = render_live(&self.live, self.live_first, from, self.files[k], &mut self.scratch, &mut out)?;
        if n > from {
            let c = &mut self.cache[k];
            let Some(f) = c.file.as_ref() else { return Err(verr("render cache")) };
            f.write_all_at(&out, c.len).map_err(|e| verr(format!("render cache: {e}")))?;
            c.len += out.len() as u64;
            c.recs = n;
        }
        Ok(())
    }

    /// Opens segment `i` and checks its sha256 against the manifest (once per open file).
    fn seg_file(&mut self, i: usize) -> Result<Arc<File>, ViewError> {
        if let Some(f) = &self.segs[i].file {
            return Ok(f.clone());
        }
        let r = self.segs[i].r.clone();
        let file = File::open(&r.path).map_err(|e| verr(format!("{}: {e}", r.path.display())))?;
        let file = Arc::new(file);
        if self.segs[i].index.is_some() {
            let got = sha256_of(&file).map_err(|e| verr(format!("{}: {e}", r.path.display())))?;
            check_sha(&r, &got)?;
        } else {
            self.index_seg(i, &file)?;
        }
        self.segs[i].file = Some(file.clone());
        self.open_lru.push_back(i);
        if self.open_lru.len() > OPEN_FILES {
            if let Some(old) = self.open_lru.pop_front() {
                self.segs[old].file = None;
            }
        }
        Ok(file)
    }

    /// Reads segment `i` whole: hashes it, counts and indexes its records.
    fn index_seg(&mut self, i: usize, file: &Arc<File>) -> Result<(), ViewError> {
        let r = self.segs[i].r.clone();
        let mut hr = Hashing { inner: At { file: file.clone(), pos: 0 }, h: Sha256::new() };
        let (idx, _) = index_records(&self.files, &mut hr, r.first_index, &format!("snapshot {}", r.seq))?;
        // Every byte was read: a trailing partial record is an error of the reader above.
        check_sha(&r, &hex::encode(hr.h.finalize()))?;
        if idx.records != r.count {
            return Err(verr(format!(
                "snapshot {} ({}): holds {} records, the manifest says {}",
                r.seq,
                r.path.display(),
                idx.records,
                r.count
            )));
        }
        let start = match i.checked_sub(1).map(|p| &self.segs[p]) {
            Some(p) => p
                .start
                .iter()
                .zip(&p.index.as_ref().map(|x| x.lens.clone()).unwrap_or_default())
                .map(|(a, b)| a + b)
                .collect(),
            None => vec![0; self.files.len()],
        };
        self.segs[i].start = start;
        self.segs[i].index = Some(idx);
        Ok(())
    }

    /// Makes sure segments `..=i` are indexed (in order: offsets depend on all before).
    fn index_upto(&mut self, i: usize) -> Result<(), ViewError> {
        while self.indexed <= i && self.indexed < self.segs.len() {
            let j = self.indexed;
            self.seg_file(j)?;
            self.indexed += 1;
        }
        Ok(())
    }

    /// Rendered length of all segments in file `k` (indexing all of them).
    fn segs_len(&mut self, k: usize) -> Result<u64, ViewError> {
        if self.segs.is_empty() {
            return Ok(0);
        }
        self.index_upto(self.segs.len() - 1)?;
        let last = &self.segs[self.segs.len() - 1];
        Ok(last.start[k] + last.index.as_ref().map_or(0, |x| x.lens[k]))
    }

    fn live_index(&mut self) -> Result<&SegIndex, ViewError> {
        if self.live_index.is_none() {
            let mut rd = &self.live[..];
            let (idx, _) = index_records(&self.files, &mut rd, self.live_first, "the kernel's list")?;
            self.live_index = Some(idx);
        }
        self.live_index.as_ref().ok_or_else(|| verr("live index"))
    }

    fn live_bytes(&mut self, k: usize) -> Result<&[u8], ViewError> {
        if self.files[k].is_stored_form() {
            return Ok(&self.live);
        }
        if self.live_render[k].is_none() {
            let mut out = Vec::new();
            render_live(&self.live, self.live_first, self.live_first, self.files[k], &mut self.scratch, &mut out)?;
            self.live_render[k] = Some(out);
        }
        Ok(self.live_render[k].as_deref().unwrap_or_default())
    }

    /// Records and violations of the whole boot.
    fn totals(&mut self) -> Result<(u64, u64), ViewError> {
        self.refresh()?;
        if !self.segs.is_empty() {
            self.index_upto(self.segs.len() - 1)?;
        }
        let v: u64 = self.segs.iter().filter_map(|s| s.index.as_ref()).map(|x| x.violations).sum();
        let live_first = self.live_first;
        let li = self.live_index()?;
        Ok((live_first + li.records, v + li.violations))
    }

    /// Opens `entry`; returns the handle.
    pub fn open(&mut self, entry: Entry) -> Result<u64, ViewError> {
        let fixed = match entry {
            Entry::Log(_) => None,
            Entry::Count => Some(crate::view::counter_text(self.totals()?.0)),
            Entry::Violations => Some(crate::view::counter_text(self.totals()?.1)),
            Entry::Policy => match self.source.policy() {
                Some(r) => Some(r.map_err(verr)?),
                None => Some(Vec::new()),
            },
        };
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { entry, backing: None, fixed, cursor: None, gen: self.gen });
        Ok(fh)
    }

    /// How an open file is served. With passthrough, a log file's reads go straight to
    /// its render cache, first filled with every record known (and kept complete by each
    /// refresh): the kernel reads it like a plain file. Otherwise the page cache: a log
    /// file's bytes never change within a boot (it only grows, and growth changes the size,
    /// which drops the kernel's copy), so pages are kept across opens, except for the
    /// first open after a new boot. Counters and the policy are fixed at open and bypass
    /// the cache (direct I/O), as securityfs does.
    fn open_mode(&mut self, e: Entry) -> OpenMode {
        let Entry::Log(f) = e else { return OpenMode::Kernel(FopenFlags::FOPEN_DIRECT_IO) };
        let Some(k) = self.files.iter().position(|x| *x == f) else {
            return OpenMode::Kernel(FopenFlags::FOPEN_DIRECT_IO);
        };
        if self.passthrough {
            // A backing file of an older boot is still open: this inode stays with it
            // until those close, so this open goes through the daemon (direct I/O mixes
            // with passthrough; the page cache does not).
            if matches!(&self.backing[k], Some(b) if b.gen != self.gen) {
                return OpenMode::Kernel(FopenFlags::FOPEN_DIRECT_IO);
            }
            match self.fill(k) {
                Ok(()) => return OpenMode::Passthrough(k),
                Err(err) => {
                    tracing::warn!(file = %f.name(), error = %err, "no passthrough: served by the daemon");
                    return OpenMode::Kernel(FopenFlags::FOPEN_DIRECT_IO);
                }
            }
        }
        let keep = self.kept.get(k) == Some(&self.gen);
        if let Some(g) = self.kept.get_mut(k) {
            *g = self.gen;
        }
        if keep {
            OpenMode::Kernel(FopenFlags::FOPEN_KEEP_CACHE)
        } else {
            OpenMode::Kernel(FopenFlags::empty())
        }
    }

    /// The backing id for passthrough opens of file `k`, registering its render cache on
    /// first use; `None` when the kernel refuses it.
    fn backing_for(&mut self, k: usize, reply: &ReplyOpen) -> Option<&BackingId> {
        if self.backing[k].is_none() {
            let file = self.cache[k].file.as_ref()?;
            match reply.open_backing(file) {
                Ok(id) => self.backing[k] = Some(Backing { gen: self.gen, id, opens: 0 }),
                Err(e) => {
                    tracing::warn!(error = %e, "passthrough refused: the view serves reads itself");
                    self.passthrough = false;
                    return None;
                }
            }
        }
        let b = self.backing[k].as_mut()?;
        b.opens += 1;
        Some(&b.id)
    }

    fn release_backing(&mut self, fh: u64) {
        let Some(k) = self.handles.get(&fh).and_then(|h| h.backing) else { return };
        if let Some(b) = self.backing[k].as_mut() {
            b.opens = b.opens.saturating_sub(1);
            if b.opens == 0 {
                self.backing[k] = None;
            }
        }
    }

    pub fn release(&mut self, fh: u64) {
        self.release_backing(fh);
        self.handles.remove(&fh);
    }

    /// Up to `size` bytes of handle `fh` at `off`. A read that lies wholly inside the
    /// render cache is borrowed from a mapping of it (no copy here); any other is built.
    pub fn read(&mut self, fh: u64, off: u64, size: usize) -> Result<Cow<'_, [u8]>, ViewError> {
        let Some(mut h) = self.handles.remove(&fh) else { return Err(verr(format!("no open file {fh}"))) };
        let mapped = match (h.entry, h.gen == self.gen) {
            (Entry::Log(f), true) => self.files.iter().position(|x| *x == f).filter(|&k| self.mappable(k, off, size)),
            _ => None,
        };
        if let Some(k) = mapped {
            self.handles.insert(fh, h);
            return self.mapped(k, off, size).map(Cow::Borrowed);
        }
        let r = self.read_handle(&mut h, off, size);
        self.handles.insert(fh, h);
        r.map(Cow::Owned)
    }

    /// Whether `size` bytes at `off` of file `k` all lie in its render cache.
    fn mappable(&self, k: usize, off: u64, size: usize) -> bool {
        let c = &self.cache[k];
        c.file.is_some() && size > 0 && off.checked_add(size as u64).is_some_and(|end| end <= c.len)
    }

    fn mapped(&mut self, k: usize, off: u64, size: usize) -> Result<&[u8], ViewError> {
        let hit = |w: &Option<(usize, Window)>| matches!(w, Some((wk, w)) if *wk == k && w.get(off, size).is_some());
        if !hit(&self.window) {
            self.window = None; // unmap before mapping the next one
            let c = &self.cache[k];
            let Some(file) = c.file.as_ref() else { return Err(verr("render cache")) };
            let w = Window::map(file, off, c.len)
                .map_err(|e| verr(format!("mapping the render cache at offset {off}: {e}")))?;
            self.window = Some((k, w));
        }
        match &self.window {
            Some((_, w)) => w.get(off, size).ok_or_else(|| verr(format!("render cache window at {off}"))),
            None => Err(verr("render cache window")),
        }
    }

    fn read_handle(&mut self, h: &mut Handle, off: u64, size: usize) -> Result<Vec<u8>, ViewError> {
        if let Some(b) = &h.fixed {
            let s = (off as usize).min(b.len());
            return Ok(b[s..(s + size).min(b.len())].to_vec());
        }
        let Entry::Log(f) = h.entry else { return Ok(Vec::new()) };
        let k = self.files.iter().position(|x| *x == f).ok_or_else(|| verr("unknown file"))?;
        let mut out = Vec::with_capacity(size);
        let mut refreshed = false;
        while out.len() < size {
            if h.gen != self.gen {
                h.cursor = None;
                h.gen = self.gen;
            }
            let pos = off + out.len() as u64;
            let want = size - out.len();
            // The render cache holds this file's first bytes: one read, however many
            // segments it spans.
            if let (true, Some(c)) = (pos < self.cache[k].len, &self.cache[k].file) {
                let n = want.min((self.cache[k].len - pos) as usize);
                pread_into(c, pos, n, &mut out, &format!("the render cache of {}", self.files[k].name()))?;
                continue;
            }
            // Segments, indexed as far as needed.
            let mut hit = None;
            loop {
                let lens = self.segs[..self.indexed].iter().map(|s| s.index.as_ref().map_or(0, |x| x.lens[k]));
                if let Some(x) = locate(lens, pos) {
                    hit = Some(x);
                    break;
                }
                if self.indexed == self.segs.len() {
                    break;
                }
                self.index_upto(self.indexed)?;
            }
            if let Some((i, rel)) = hit {
                self.read_seg(h, k, i, rel, want, &mut out)?;
                continue;
            }
            let base = self.segs_len(k)?;
            let live = self.live_bytes(k)?;
            let rel = (pos - base) as usize;
            if rel < live.len() {
                let n = want.min(live.len() - rel);
                out.extend_from_slice(&live[rel..rel + n]);
                continue;
            }
            // Past the known end: the kernel may have more (once per read).
            if refreshed {
                break;
            }
            self.refresh()?;
            refreshed = true;
        }
        Ok(out)
    }

    /// Appends up to `want` bytes of segment `i` from `rel` in file `k`.
    fn read_seg(
        &mut self,
        h: &mut Handle,
        k: usize,
        i: usize,
        rel: u64,
        want: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ViewError> {
        let file = self.seg_file(i)?;
        let Some(idx) = self.segs[i].index.as_ref() else { return Err(verr("segment not indexed")) };
        let (seg_len, records) = (idx.lens[k], idx.records);
        let n = want.min((seg_len - rel) as usize);
        let start = self.segs[i].start[k];
        if i == self.cache[k].segs && rel == 0 && !self.cache[k].off {
            // A reader at the start of the next uncached segment: render it whole, once.
            match self.cache_seg(i, k, &file) {
                Ok(()) => {}
                Err((true, e)) => return Err(e),
                Err((false, e)) => {
                    tracing::warn!(error = %e, "render cache off: rendering on every read");
                    self.cache[k] = RenderCache { off: true, ..Default::default() };
                }
            }
        }
        if i < self.cache[k].segs {
            if let Some(c) = &self.cache[k].file {
                let what = format!("the render cache of {}", self.files[k].name());
                return pread_into(c, start + rel, n, out, &what);
            }
        }
        if self.files[k].is_stored_form() {
            // The stored bytes are this file: copy them.
            return pread_into(&file, rel, n, out, &self.segs[i].r.path.display().to_string());
        }
        let reuse = matches!(&h.cursor, Some(c) if c.seg == i && c.k == k && c.rel == rel);
        if !reuse {
            let Some(idx) = self.segs[i].index.as_ref() else { return Err(verr("segment not indexed")) };
            let m = idx.mark_for(k, rel).ok_or_else(|| verr("no mark"))?.clone();
            let reader = BinaryReader::starting_at(
                At { file: file.clone(), pos: m.src },
                snapshot_format(),
                self.segs[i].r.first_index + m.record,
            );
            h.cursor = Some(Cursor {
                seg: i,
                k,
                reader,
                records_left: records - m.record,
                slot: None,
                buf: Vec::new(),
                used: 0,
                rel: m.out[k],
            });
        }
        let Some(c) = h.cursor.as_mut() else { return Err(verr("cursor")) };
        let f = self.files[k];
        let seq = self.segs[i].r.seq;
        let end = out.len() + n;
        while out.len() < end {
            if c.used == c.buf.len() {
                if c.records_left == 0 {
                    return Err(verr(format!("snapshot {seq}: ends before its indexed length")));
                }
                c.buf.clear();
                c.used = 0;
                let rec = match c.reader.read_into(&mut c.slot) {
                    Ok(Some(rec)) => rec,
                    Ok(None) => return Err(verr(format!("snapshot {seq}: ends early"))),
                    Err(e) => return Err(verr(format!("snapshot {seq}: {e}"))),
                };
                c.records_left -= 1;
                render(rec, f, &mut self.scratch, &mut c.buf)
                    .map_err(|e| verr(format!("snapshot {seq}: record {}: {e}", c.reader.next_index() - 1)))?;
            }
            let avail = c.buf.len() - c.used;
            if c.rel < rel {
                // Seeking from the mark: skip what lies before `rel`.
                let skip = ((rel - c.rel) as usize).min(avail);
                c.used += skip;
                c.rel += skip as u64;
                continue;
            }
            let take = avail.min(end - out.len());
            out.extend_from_slice(&c.buf[c.used..c.used + take]);
            c.used += take;
            c.rel += take as u64;
        }
        Ok(())
    }

    /// Renders segment `i` (the next uncached one) in file `k` onto the cache's end. The
    /// segment is hashed again as it is read, so the cache holds exactly the bytes the
    /// manifest names even if the file changed after its first check. Errors: `(true, _)`
    /// the segment is bad (EIO), `(false, _)` the cache failed (render on every read).
    fn cache_seg(&mut self, i: usize, k: usize, file: &Arc<File>) -> Result<(), (bool, ViewError)> {
        use std::io::Write;
        let io = |e: std::io::Error| (false, verr(format!("render cache: {e}")));
        let (first, count) = (self.segs[i].r.first_index, self.segs[i].r.count);
        let want_end = self.segs[i].start[k] + self.segs[i].index.as_ref().map_or(0, |x| x.lens[k]);
        let c = &mut self.cache[k];
        if c.recs >= first + count {
            // Its records are in already, taken from the kernel's list before the cut.
            if c.len < want_end {
                return Err((
                    true,
                    verr(format!("snapshot {}: the render cache holds less than it", self.segs[i].r.seq)),
                ));
            }
            c.segs += 1;
            return Ok(());
        }
        let skip = c.recs;
        if c.file.is_none() {
            c.file = Some(tempfile::tempfile().map_err(io)?);
        }
        let Some(mut cf) = c.file.as_ref() else { return Err((false, verr("render cache"))) };
        // Reads seek this descriptor too: append at the cached end.
        std::io::Seek::seek(&mut cf, std::io::SeekFrom::Start(c.len)).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, cf);
        let r = &self.segs[i].r;
        let mut hr = Hashing { inner: At { file: file.clone(), pos: 0 }, h: Sha256::new() };
        let mut rd = BinaryReader::starting_at(&mut hr, snapshot_format(), r.first_index);
        let (mut slot, mut buf, mut len) = (None, Vec::new(), 0u64);
        loop {
            match rd.read_into(&mut slot) {
                // Records already in (from the kernel's list) are hashed, not rendered.
                Ok(Some(_)) if rd.next_index() - 1 < skip => {}
                Ok(Some(rec)) => {
                    buf.clear();
                    render(rec, self.files[k], &mut self.scratch, &mut buf).map_err(|e| {
                        (true, verr(format!("snapshot {}: record {}: {e}", r.seq, rd.next_index() - 1)))
                    })?;
                    w.write_all(&buf).map_err(io)?;
                    len += buf.len() as u64;
                }
                Ok(None) => break,
                Err(e) => return Err((true, verr(format!("snapshot {}: {e}", r.seq)))),
            }
        }
        w.flush().map_err(io)?;
        drop(rd);
        check_sha(r, &hex::encode(hr.h.finalize())).map_err(|e| (true, e))?;
        if c.len + len != want_end {
            return Err((
                true,
                verr(format!("snapshot {}: rendered to offset {}, indexed {want_end}", r.seq, c.len + len)),
            ));
        }
        c.len += len;
        c.segs += 1;
        c.recs = first + count;
        Ok(())
    }

    /// The length file `ino` has now, refreshed from the source. A reader past the end
    /// asks again (attributes are never cached), so it learns of new records; sendfile
    /// and splice readers, which stop at the size, see every byte.
    fn size_of(&mut self, ino: u64) -> Result<u64, ViewError> {
        let Some(e) = (ino as usize).checked_sub(2).and_then(|i| self.entries.get(i)).copied() else { return Ok(0) };
        Ok(match e {
            Entry::Log(f) => {
                let k = self.files.iter().position(|x| *x == f).ok_or_else(|| verr("unknown file"))?;
                self.refresh()?;
                self.segs_len(k)? + self.live_index()?.lens.get(k).copied().unwrap_or(0)
            }
            Entry::Count => crate::view::counter_text(self.totals()?.0).len() as u64,
            Entry::Violations => crate::view::counter_text(self.totals()?.1).len() as u64,
            Entry::Policy => match self.source.policy() {
                Some(r) => r.map_err(verr)?.len() as u64,
                None => 0,
            },
        })
    }

    /// Rendered length of the segments indexed so far in `ino`'s file (0 for others).
    fn verified_len(&self, ino: u64) -> u64 {
        let k = match (ino as usize).checked_sub(2).and_then(|i| self.entries.get(i)) {
            Some(Entry::Log(f)) => self.files.iter().position(|x| x == f),
            _ => None,
        };
        match (k, self.indexed.checked_sub(1).and_then(|i| self.segs.get(i))) {
            (Some(k), Some(s)) => s.start.get(k).copied().unwrap_or(0) + s.index.as_ref().map_or(0, |x| x.lens[k]),
            _ => 0,
        }
    }

    fn attr(&mut self, ino: u64) -> Option<FileAttr> {
        let now = SystemTime::now();
        let (kind, perm, nlink) = if ino == 1 {
            (FileType::Directory, dir_mode(self.perms.mode), 2)
        } else if (ino as usize) < self.entries.len() + 2 {
            (FileType::RegularFile, self.perms.mode, 1)
        } else {
            return None;
        };
        let size = match self.size_of(ino) {
            Ok(n) => n,
            Err(e) => {
                // stat still answers, with a size one byte past what verified so far: a
                // reader reaches the bad part and gets EIO there, never a short file.
                tracing::warn!(ino, error = %e, "size unknown: reads will report the error");
                self.verified_len(ino) + 1
            }
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink,
            uid: self.perms.uid,
            gid: self.perms.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }
}

/// Renders the records of the kernel's list `live` (its first is record `first`) from
/// record `from` on in file `f` onto `out`; returns the index after the last record.
fn render_live(
    live: &[u8],
    first: u64,
    from: u64,
    f: LogFile,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<u64, ViewError> {
    let mut rd = BinaryReader::starting_at(live, snapshot_format(), first);
    let mut slot = None;
    loop {
        let n = rd.next_index();
        match rd.read_into(&mut slot) {
            Ok(Some(rec)) if n >= from => {
                render(rec, f, scratch, out).map_err(|e| verr(format!("the kernel's list: record {n}: {e}")))?
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(n),
            Err(e) => return Err(verr(format!("the kernel's list: {e}"))),
        }
    }
}

/// The directory's mode: the files' read bits, plus search where read is allowed.
fn dir_mode(file: u16) -> u16 {
    let r = file & 0o444;
    r | (r >> 2)
}

/// Appends `n` bytes of `f` at `off` to `out`; `what` names the file in errors. Seek and
/// `read_to_end` rather than `pread` into a zeroed buffer: the standard library reads
/// into the spare capacity, sparing a memset per request. The view is single-threaded,
/// and nothing else relies on these descriptors' offsets (the render cache seeks to its
/// end before it appends).
fn pread_into(f: &File, off: u64, n: usize, out: &mut Vec<u8>, what: &str) -> Result<(), ViewError> {
    use std::io::{Seek, SeekFrom};
    let mut r = f;
    r.seek(SeekFrom::Start(off)).map_err(|e| verr(format!("{what}: offset {off}: {e}")))?;
    let s = out.len();
    out.reserve(n);
    r.take(n as u64).read_to_end(out).map_err(|e| verr(format!("{what}: offset {off}: {e}")))?;
    if out.len() - s != n {
        return Err(verr(format!("{what}: ends at offset {}", off + (out.len() - s) as u64)));
    }
    Ok(())
}

fn check_sha(r: &SegmentRef, got: &str) -> Result<(), ViewError> {
    if got != r.sha256 {
        return Err(verr(format!(
            "snapshot {} ({}): offset 0: sha256 {got} does not match the manifest's {}; not served",
            r.seq,
            r.path.display(),
            r.sha256
        )));
    }
    Ok(())
}

fn sha256_of(f: &Arc<File>) -> std::io::Result<String> {
    let mut hr = Hashing { inner: At { file: f.clone(), pos: 0 }, h: Sha256::new() };
    std::io::copy(&mut hr, &mut std::io::sink())?;
    Ok(hex::encode(hr.h.finalize()))
}

struct Hashing<R> {
    inner: R,
    h: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.h.update(&buf[..n]);
        Ok(n)
    }
}

/// Indexes the records of `input` (binary SHA1), the first being record `first`.
fn index_records(
    files: &[LogFile],
    input: &mut dyn Read,
    first: u64,
    what: &str,
) -> Result<(SegIndex, u64), ViewError> {
    let mut ix = Indexer::new(files);
    let mut rd = BinaryReader::starting_at(input, snapshot_format(), first);
    let mut slot = None;
    loop {
        let before = rd.offset();
        match rd.read_into(&mut slot) {
            Ok(Some(rec)) => {
                let len = rd.offset() - before;
                ix.push(rec, len)
                    .map_err(|e| verr(format!("{what}: record {}: offset {before}: {e}", rd.next_index() - 1)))?;
            }
            Ok(None) => break,
            Err(e) => return Err(verr(format!("{what}: {e}"))),
        }
    }
    let n = ix.src_len();
    Ok((ix.finish(), n))
}

/// The FUSE face of a [`View`].
pub struct ViewFs {
    view: Arc<Mutex<View>>,
}

impl ViewFs {
    pub fn new(view: Arc<Mutex<View>>) -> Self {
        Self { view }
    }

    fn with<T>(&self, f: impl FnOnce(&mut View) -> T) -> Option<T> {
        // A poisoned lock means a panic mid-read: refuse rather than serve a torn state.
        self.view.lock().ok().map(|mut v| f(&mut v))
    }
}

impl Filesystem for ViewFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // max_pages follows max_write/max_readahead: 1 MiB reads instead of 128 KiB.
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_readahead(MAX_READ);
        // Passthrough (6.9+): log files are then read by the kernel straight from their
        // render caches. Older kernels, or no CAP_SYS_ADMIN: the daemon serves reads.
        if let Ok(mut v) = self.view.lock() {
            let pt = v.passthrough_allowed
                && config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            v.passthrough = pt;
            tracing::debug!(passthrough = pt, "FUSE init");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.with(|v| {
            if parent.0 != 1 {
                return None;
            }
            let i = v.entries.iter().position(|e| OsStr::new(&e.name()) == name)?;
            v.attr(i as u64 + 2)
        });
        match r.flatten() {
            Some(a) => reply.entry(&ttl(a.kind), &a, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|v| v.attr(ino.0)).flatten() {
            Some(a) => reply.attr(&ttl(a.kind), &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let names = self.with(|v| v.entries.iter().map(|e| e.name()).collect::<Vec<_>>()).unwrap_or_default();
        let mut all = vec![(1u64, FileType::Directory, ".".to_string()), (1, FileType::Directory, "..".to_string())];
        all.extend(names.into_iter().enumerate().map(|(i, n)| (i as u64 + 2, FileType::RegularFile, n)));
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & (libc_o_trunc()) != 0 {
            reply.error(Errno::EROFS);
            return;
        }
        let Ok(mut v) = self.view.lock() else { return reply.error(Errno::EIO) };
        let Some(e) = (ino.0 as usize).checked_sub(2).and_then(|i| v.entries.get(i)).copied() else {
            return reply.error(Errno::ENOENT);
        };
        let r = v.open(e).map(|fh| (fh, v.open_mode(e))).map_err(|err| (e, err));
        let r = match r {
            Ok((fh, OpenMode::Passthrough(k))) => {
                if v.backing_for(k, &reply).is_some() {
                    if let Some(h) = v.handles.get_mut(&fh) {
                        h.backing = Some(k);
                    }
                    match v.backing[k].as_ref() {
                        Some(b) => return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &b.id),
                        None => return reply.error(Errno::EIO),
                    }
                }
                Some(Ok((fh, FopenFlags::FOPEN_DIRECT_IO)))
            }
            Ok((fh, OpenMode::Kernel(flags))) => Some(Ok((fh, flags))),
            Err(x) => Some(Err(x)),
        };
        drop(v);
        match r {
            // NOFLUSH: nothing is buffered, so close needs no round trip.
            Some(Ok((fh, flags))) => reply.opened(FileHandle(fh), flags | FopenFlags::FOPEN_NOFLUSH),
            Some(Err((e, err))) => {
                tracing::error!(file = %e.name(), error = %err, "open failed");
                reply.error(Errno::EIO)
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The reply is sent under the lock: it may borrow the view's mapped cache.
        let Ok(mut v) = self.view.lock() else { return reply.error(Errno::EIO) };
        match v.read(fh.0, offset, size as usize) {
            Ok(b) => reply.data(&b),
            Err(e) => {
                tracing::error!(offset, error = %e, "read failed: EIO, never wrong bytes");
                reply.error(Errno::EIO)
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.with(|v| v.release(fh.0));
        reply.ok();
    }

    /// Nothing is buffered: a close has nothing to flush.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
}

/// `O_TRUNC` on Linux.
const fn libc_o_trunc() -> i32 {
    0o1000
}
