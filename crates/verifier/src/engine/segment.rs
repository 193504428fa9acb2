//! Reading a segment (a snapshot file or the live list) record by record, hashing its
//! bytes for the manifest's file digest on the way.

use crate::evidence::{Input, SnapshotClaim};
use crate::reason::{Failure, Segment};
use imasnap_log::template::TemplateCache;
use imasnap_log::{BinaryFormat, BinaryReader, Endian, HashAlgo, Record};
use sha2::Digest as _;
use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

/// Passes bytes through while hashing them (the manifest's file digest).
pub(super) struct Hashing<'a> {
    pub(super) inner: Input<'a>,
    pub(super) h: Rc<RefCell<sha2::Sha256>>,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A reader claiming more than it was given is clamped, never trusted.
        let n = self.inner.read(buf)?.min(buf.len());
        if let Some(b) = buf.get(..n) {
            self.h.borrow_mut().update(b);
        }
        Ok(n)
    }
}

/// One segment's records, decoded one at a time.
pub(super) struct SegReader<'a> {
    pub(super) id: Segment,
    pub(super) rd: BinaryReader<Hashing<'a>>,
    pub(super) h: Rc<RefCell<sha2::Sha256>>,
    pub(super) peeked: Option<Record>,
    /// Records decoded so far.
    pub(super) count: u64,
}

impl<'a> SegReader<'a> {
    pub(super) fn open(id: Segment, input: Input<'a>, endian: Endian, first_index: u64) -> Self {
        let h = Rc::new(RefCell::new(sha2::Sha256::new()));
        let fmt = BinaryFormat { endian, ..BinaryFormat::new(HashAlgo::Sha1) };
        let rd = BinaryReader::starting_at(Hashing { inner: input, h: h.clone() }, fmt, first_index);
        Self { id, rd, h, peeked: None, count: 0 }
    }

    pub(super) fn read(&mut self) -> Result<Option<Record>, Failure> {
        match self.rd.next() {
            None => Ok(None),
            Some(Ok(r)) => {
                self.count += 1;
                Ok(Some(r))
            }
            Some(Err(e)) => {
                Err(Failure::Malformed { segment: self.id, index: e.at.record, offset: e.at.offset, reason: e.reason })
            }
        }
    }

    /// Hands up to `max` records to `visit` where they lie in the read buffer (see
    /// [`BinaryReader::visit_raw`]); returns how many it was given. Errors as [`SegReader::read`].
    pub(super) fn visit(
        &mut self,
        max: usize,
        visit: impl FnMut(&imasnap_log::codec::RawRecord<'_>) -> bool,
    ) -> Result<usize, Failure> {
        match self.rd.visit_raw(max, visit) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                Err(Failure::Malformed { segment: self.id, index: e.at.record, offset: e.at.offset, reason: e.reason })
            }
        }
    }

    /// Reads the rest of the segment without keeping it; returns how many records it held.
    pub(super) fn skip_rest(&mut self) -> Result<u64, Failure> {
        let peeked = u64::from(self.peeked.take().is_some());
        // Without a stop, one call reads to the end of the input.
        Ok(peeked + self.visit(usize::MAX, |_| true)? as u64)
    }

    pub(super) fn next(&mut self) -> Result<Option<Record>, Failure> {
        match self.peeked.take() {
            Some(r) => Ok(Some(r)),
            None => self.read(),
        }
    }

    pub(super) fn peek(&mut self) -> Result<Option<&Record>, Failure> {
        if self.peeked.is_none() {
            self.peeked = self.read()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// sha256 of every byte read; call at end of input.
    pub(super) fn digest(&self) -> [u8; 32] {
        self.h.borrow().clone().finalize().into()
    }
}

/// A segment before it is opened.
pub(super) struct Seg<'a> {
    pub(super) id: Segment,
    pub(super) claim: Option<SnapshotClaim>,
    pub(super) first_index: u64,
    /// Index of the first record in `input`: `first_index`, unless the agent sent only a
    /// suffix of this segment.
    pub(super) data_first: u64,
    pub(super) input: Option<Input<'a>>,
    pub(super) opened: Option<SegReader<'a>>,
}

impl<'a> Seg<'a> {
    pub(super) fn snapshot(s: crate::evidence::SnapshotEvidence<'a>) -> Self {
        Seg {
            id: Segment::Snapshot(s.claim.seq),
            first_index: s.claim.first_index,
            data_first: s.claim.first_index,
            claim: Some(s.claim),
            input: s.data,
            opened: None,
        }
    }
    pub(super) fn live(input: Input<'a>, first_index: u64) -> Self {
        Seg { id: Segment::Live, claim: None, first_index, data_first: first_index, input: Some(input), opened: None }
    }
    pub(super) fn seq(&self) -> u64 {
        self.claim.as_ref().map_or(0, |c| c.seq)
    }
    pub(super) fn checkpoint(&self) -> Option<&imasnap_wire::CheckpointClaim> {
        self.claim.as_ref().and_then(|c| c.checkpoint.as_ref())
    }
    /// Claimed end (one past the last record); the live list has none.
    pub(super) fn end_index(&self) -> u64 {
        self.claim.as_ref().map_or(u64::MAX, |c| c.end_index())
    }
    /// Only the first record (a skipped snapshot's head), read with the fewest bytes: in
    /// place for a byte slice, in small growing reads from a reader. Nothing is hashed, so
    /// crossing a snapshot costs the same whatever its size.
    pub(super) fn first_record_only(&mut self, endian: Endian, index: u64) -> Result<Option<Record>, Failure> {
        if let Some(mut rd) = self.opened.take() {
            return rd.next();
        }
        let Some(input) = self.input.take() else {
            return Ok(None);
        };
        let fmt = BinaryFormat { endian, ..BinaryFormat::new(HashAlgo::Sha1) };
        let seg = self.id;
        let err = |(offset, reason)| Failure::Malformed { segment: seg, index, offset, reason };
        let mut cache = TemplateCache::default();
        let mut slot = None;
        let decode = |buf: &[u8], eof: bool, cache: &mut TemplateCache, slot: &mut Option<Record>| match fmt
            .decode(buf, cache, slot)
            .map_err(err)?
        {
            Some(_) => Ok(true),
            None if eof && buf.is_empty() => Ok(true),
            None if eof => Err(err(fmt.truncation(buf))),
            None => Ok(false),
        };
        match input {
            Input::Bytes(b) => {
                decode(b, true, &mut cache, &mut slot)?;
            }
            Input::Reader(mut r) => {
                let mut buf = Vec::new();
                let mut want = 4096usize;
                loop {
                    let mut eof = false;
                    while buf.len() < want {
                        let start = buf.len();
                        buf.resize(want, 0);
                        let n = loop {
                            match r.read(&mut buf[start..]) {
                                Ok(n) => break n.min(want - start),
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                                Err(e) => {
                                    return Err(err((start as u64, imasnap_log::Reason::Io(e.to_string()))));
                                }
                            }
                        };
                        buf.truncate(start + n);
                        if n == 0 {
                            eof = true;
                            break;
                        }
                    }
                    if decode(&buf, eof, &mut cache, &mut slot)? {
                        break;
                    }
                    // The codec refuses absurd lengths before asking for more, so this stays
                    // bounded by one legitimate record.
                    want = want.saturating_mul(2);
                }
            }
        }
        Ok(slot)
    }

    /// Opens the segment, naming its first record `index` in errors; `None` when its
    /// bytes were not supplied.
    pub(super) fn take_reader(&mut self, endian: Endian, index: u64) -> Option<SegReader<'a>> {
        if let Some(r) = self.opened.take() {
            return Some(r);
        }
        self.input.take().map(|i| SegReader::open(self.id, i, endian, index))
    }
}
