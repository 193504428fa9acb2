//! The stitched view: the whole log of one boot, from any global index, across committed
//! snapshot files and the live list. Streaming: memory is one record plus read buffers.
//!
//! Each snapshot file is hashed before any of its records is yielded, so a corrupt file
//! never leaks records. Every segment must start where the previous one ended: record 0 is
//! the manifest's boot_aggregate, and each later segment starts with the previous end marker.

use crate::fsio::sha256_file;
use crate::layout::BootDir;
use crate::manifest::{Cut, Manifest};
use crate::tentative::snapshot_format;
use imasnap_log::{BinaryReader, Location, Reason, Record};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

/// Which part of the stitched log a record or error comes from.
pub use imasnap_wire::Segment;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StitchReason {
    #[error("{0}")]
    Log(Reason),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("sha256 {got} does not match the manifest's {want}")]
    Sha256 { want: String, got: String },
    #[error("holds {got} records, the manifest says {want}")]
    Count { want: u64, got: u64 },
    #[error("discontinuity: {0}")]
    Discontinuity(String),
    #[error("start index {from} is beyond the end of the log ({end} records)")]
    Beyond { from: u64, end: u64 },
}

/// A located stitching error: segment, global record index and byte offset in the segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{segment}: {at}: {reason}")]
pub struct StitchError {
    pub segment: Segment,
    pub at: Location,
    pub reason: StitchReason,
}

enum Cur<L> {
    Snap { reader: BinaryReader<BufReader<File>>, seg: usize },
    Live(BinaryReader<L>),
}

/// Iterates `(global index, record)` of one boot from a start index.
pub struct StitchedReader<L> {
    dir: PathBuf,
    manifest: Manifest,
    from: u64,
    /// Next snapshot to open; past the last one, the live list.
    next_seg: usize,
    /// The live list until it is opened.
    live: Option<L>,
    cur: Option<Cur<L>>,
    finished: bool,
}

impl<L: Read> StitchedReader<L> {
    /// Reads boot `dir` as its `manifest` describes, then `live` (the live list in binary
    /// SHA1 form, whose head is record `manifest.next_index`), from record `from` on.
    pub fn new(dir: &BootDir, manifest: &Manifest, live: L, from: u64) -> Self {
        let next_seg = manifest.snapshots.iter().position(|s| s.end_index() > from).unwrap_or(manifest.snapshots.len());
        Self {
            dir: dir.path().to_path_buf(),
            manifest: manifest.clone(),
            from,
            next_seg,
            live: Some(live),
            cur: None,
            finished: false,
        }
    }

    fn fail(&mut self, segment: Segment, record: u64, offset: u64, reason: StitchReason) -> StitchError {
        self.finished = true;
        self.cur = None;
        StitchError { segment, at: Location { record, offset, line: None }, reason }
    }

    fn segment_of(&self, cur: &Cur<L>) -> Segment {
        match cur {
            Cur::Snap { seg, .. } => {
                let s = &self.manifest.snapshots[*seg];
                Segment::Snapshot(s.seq)
            }
            Cur::Live(_) => Segment::Live,
        }
    }

    /// Opens the next segment; `None` when none is left.
    #[allow(clippy::result_large_err)] // an error ends the stream: size is irrelevant
    fn open_next(&mut self) -> Result<Option<Cur<L>>, StitchError> {
        let n = self.manifest.snapshots.len();
        if self.next_seg < n {
            let i = self.next_seg;
            let s = self.manifest.snapshots[i].clone();
            let seg = Segment::Snapshot(s.seq);
            let path = self.dir.join(&s.file);
            let got = sha256_file(&path).map_err(|e| self.fail(seg, s.first_index, 0, io_reason(e)))?;
            if got != s.sha256 {
                return Err(self.fail(seg, s.first_index, 0, StitchReason::Sha256 { want: s.sha256, got }));
            }
            let f = File::open(&path).map_err(|e| self.fail(seg, s.first_index, 0, StitchReason::Io(e.to_string())))?;
            let reader = BinaryReader::starting_at(BufReader::new(f), snapshot_format(), s.first_index);
            self.next_seg += 1;
            return Ok(Some(Cur::Snap { reader, seg: i }));
        }
        // The live list comes after the last snapshot, once: taking it marks it opened.
        Ok(self
            .live
            .take()
            .map(|live| Cur::Live(BinaryReader::starting_at(live, snapshot_format(), self.manifest.next_index))))
    }

    /// Reads the next record into `slot` (reusing its buffers). Returns its global index and
    /// the record, or `None` at the end of the log.
    #[allow(clippy::result_large_err)] // an error ends the stream: size is irrelevant
    pub fn read_into<'s>(
        &mut self,
        slot: &'s mut Option<Record>,
    ) -> Result<Option<(u64, &'s mut Record)>, StitchError> {
        Ok(self.read_owned(slot.take())?.map(|(i, rec)| (i, slot.insert(rec))))
    }

    /// Reads the next record as an owned value, reusing the buffers of `reuse` if given.
    #[allow(clippy::result_large_err)] // an error ends the stream: size is irrelevant
    pub fn read_owned(&mut self, mut reuse: Option<Record>) -> Result<Option<(u64, Record)>, StitchError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let mut cur = match self.cur.take() {
                Some(cur) => cur,
                None => match self.open_next()? {
                    Some(cur) => cur,
                    None => {
                        self.finished = true;
                        return Ok(None);
                    }
                },
            };
            let (res, next, offset, first_index) = match &mut cur {
                Cur::Snap { reader, seg } => {
                    let r = reader.read_owned(reuse.take());
                    (r, reader.next_index(), reader.offset(), self.manifest.snapshots[*seg].first_index)
                }
                Cur::Live(reader) => {
                    let r = reader.read_owned(reuse.take());
                    (r, reader.next_index(), reader.offset(), self.manifest.next_index)
                }
            };
            let seg = self.segment_of(&cur);
            match res {
                Ok(Some(rec)) => {
                    let index = next - 1;
                    if let Cur::Snap { seg: i, .. } = cur {
                        if index >= self.manifest.snapshots[i].end_index() {
                            let want = self.manifest.snapshots[i].count;
                            return Err(self.fail(seg, index, offset, StitchReason::Count { want, got: want + 1 }));
                        }
                    }
                    if index == first_index {
                        if let Err(why) = self.manifest.check_boundary(index, &rec) {
                            return Err(self.fail(seg, index, 0, StitchReason::Discontinuity(why)));
                        }
                    }
                    self.cur = Some(cur);
                    if index >= self.from {
                        return Ok(Some((index, rec)));
                    }
                    reuse = Some(rec);
                }
                Ok(None) => match cur {
                    Cur::Snap { seg: i, .. } => {
                        let want = self.manifest.snapshots[i].count;
                        let got = next - first_index;
                        if got != want {
                            return Err(self.fail(seg, next, offset, StitchReason::Count { want, got }));
                        }
                    }
                    Cur::Live(_) => {
                        // Only a staging A/D cut can leave the kernel's list empty.
                        let may_be_empty = self.manifest.snapshots.last().is_some_and(|s| s.cut == Cut::Stage);
                        if next == first_index && !may_be_empty {
                            let why = "the live list is empty; it always holds at least its head".to_string();
                            return Err(self.fail(seg, next, 0, StitchReason::Discontinuity(why)));
                        }
                        if self.from > next {
                            return Err(self.fail(
                                seg,
                                next,
                                offset,
                                StitchReason::Beyond { from: self.from, end: next },
                            ));
                        }
                        self.finished = true;
                        return Ok(None);
                    }
                },
                Err(e) => {
                    let reason = match e.reason {
                        Reason::Io(s) => StitchReason::Io(s),
                        r => StitchReason::Log(r),
                    };
                    return Err(self.fail(seg, e.at.record, e.at.offset, reason));
                }
            }
        }
    }
}

fn io_reason(e: crate::StoreError) -> StitchReason {
    StitchReason::Io(e.to_string())
}

impl<L: Read> Iterator for StitchedReader<L> {
    type Item = Result<(u64, Record), StitchError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read_owned(None).transpose()
    }
}

impl BootDir {
    /// The stitched log of this boot from record `from`: committed snapshots as `manifest`
    /// names them, then `live` (binary SHA1 live list).
    pub fn stitched<L: Read>(&self, manifest: &Manifest, live: L, from: u64) -> StitchedReader<L> {
        StitchedReader::new(self, manifest, live, from)
    }
}
