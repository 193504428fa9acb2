//! Streaming readers over `io::Read`. Memory is bounded by the largest record, never by
//! the log: the buffer only grows as bytes actually arrive, so a lying length field
//! cannot force a large allocation.

use crate::ascii;
use crate::codec::{BinaryFormat, Endian, RawRecord, Record};
use crate::error::{Error, Location, Reason, Result};
use crate::template::TemplateCache;
use std::io::{BufRead, BufReader, Read};

const CHUNK: usize = 128 << 10;
const FIRST_CHUNK: usize = 4 << 10;
/// Longest ASCII line we accept (a record of maximal template data, printed in hex).
const MAX_LINE: usize = 2 * crate::codec::DEFAULT_MAX_TEMPLATE_DATA as usize + 4096;

/// Reads binary records one at a time.
pub struct BinaryReader<R> {
    inner: R,
    fmt: BinaryFormat,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    index: u64,
    offset: u64,
    cache: TemplateCache,
    failed: bool,
}

impl<R: Read> BinaryReader<R> {
    pub fn new(inner: R, fmt: BinaryFormat) -> Self {
        Self::starting_at(inner, fmt, 0)
    }

    /// `first_index` is the global index of the first record in this input, so errors
    /// name global indices when reading a segment that starts after a cut.
    pub fn starting_at(inner: R, fmt: BinaryFormat, first_index: u64) -> Self {
        Self {
            inner,
            fmt,
            // Small at first: a reader that decodes one record (crossing a snapshot by its
            // end marker) should not pay for a full chunk. `fill` grows it to CHUNK.
            buf: vec![0; FIRST_CHUNK],
            start: 0,
            end: 0,
            eof: false,
            index: first_index,
            offset: 0,
            cache: TemplateCache::default(),
            failed: false,
        }
    }

    /// Global index of the next record.
    pub fn next_index(&self) -> u64 {
        self.index
    }
    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The bytes read ahead (from [`BinaryReader::offset`] on) and the input after them,
    /// to go on reading the rest raw without opening the input again.
    pub fn into_parts(self) -> (Vec<u8>, R) {
        let mut b = self.buf;
        b.truncate(self.end);
        b.drain(..self.start);
        (b, self.inner)
    }

    fn err(&mut self, rel: u64, reason: Reason) -> Error {
        self.failed = true;
        Error { at: Location { record: self.index, offset: self.offset + rel, line: None }, reason }
    }

    /// Reads the next record into `slot`, reusing its allocations, and returns it; `None`
    /// at the end (and after an error).
    pub fn read_into<'s>(&mut self, slot: &'s mut Option<Record>) -> Result<Option<&'s mut Record>> {
        if self.failed {
            return Ok(None);
        }
        loop {
            let avail = &self.buf[self.start..self.end];
            match self.fmt.parse(avail, &mut self.cache) {
                Ok(Some(raw)) => {
                    let rec = raw.store_in(slot);
                    self.start += raw.len;
                    self.offset += raw.len as u64;
                    self.index += 1;
                    return Ok(Some(rec));
                }
                Ok(None) => {}
                Err((rel, reason)) => return Err(self.err(rel, reason)),
            }
            if self.eof {
                if self.start == self.end {
                    return Ok(None);
                }
                let (rel, reason) = self.fmt.truncation(&self.buf[self.start..self.end]);
                return Err(self.err(rel, reason));
            }
            self.fill().map_err(|e| self.err(0, Reason::Io(e.to_string())))?;
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < CHUNK {
            // Still warming up: double towards the streaming chunk size.
            self.buf.resize((self.buf.len() * 2).min(CHUNK), 0);
        } else if self.end == self.buf.len() {
            // A record larger than the buffer: grow by what we are about to read.
            self.buf.resize(self.buf.len() + CHUNK.max(self.buf.len() / 2), 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl<R: Read> BinaryReader<R> {
    /// Hands up to `max` records to `visit` as they lie in the read buffer, without copying
    /// them; `visit` returns `false` to stop after the record it was given. Returns how many
    /// records were visited: fewer than `max` without a stop means the end of the input.
    /// Errors are those of [`BinaryReader::read_into`] (record index and byte offset).
    pub fn visit_raw(&mut self, max: usize, mut visit: impl FnMut(&RawRecord<'_>) -> bool) -> Result<usize> {
        let mut n = 0;
        if self.failed {
            return Ok(0);
        }
        while n < max {
            let avail = &self.buf[self.start..self.end];
            match self.fmt.parse(avail, &mut self.cache) {
                Ok(Some(raw)) => {
                    self.start += raw.len;
                    self.offset += raw.len as u64;
                    self.index += 1;
                    n += 1;
                    if !visit(&raw) {
                        break;
                    }
                    continue;
                }
                Ok(None) => {}
                Err((rel, reason)) => return Err(self.err(rel, reason)),
            }
            if self.eof {
                if self.start == self.end {
                    break;
                }
                let (rel, reason) = self.fmt.truncation(&self.buf[self.start..self.end]);
                return Err(self.err(rel, reason));
            }
            self.fill().map_err(|e| self.err(0, Reason::Io(e.to_string())))?;
        }
        Ok(n)
    }

    /// Reads the next record as an owned value, reusing the buffers of `reuse` if given.
    pub fn read_owned(&mut self, reuse: Option<Record>) -> Result<Option<Record>> {
        let mut slot = reuse;
        // `read_into` returning a record means it filled `slot`.
        Ok(match self.read_into(&mut slot)? {
            Some(_) => slot,
            None => None,
        })
    }
}

impl<R: Read> Iterator for BinaryReader<R> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read_owned(None).transpose()
    }
}

/// Reads ASCII lines one at a time.
pub struct AsciiReader<R> {
    inner: BufReader<R>,
    digest_len: usize,
    endian: Endian,
    line: Vec<u8>,
    index: u64,
    offset: u64,
    line_no: u64,
    cache: TemplateCache,
    failed: bool,
}

impl<R: Read> AsciiReader<R> {
    pub fn new(inner: R, digest_len: usize, endian: Endian) -> Self {
        Self::starting_at(inner, digest_len, endian, 0)
    }
    pub fn starting_at(inner: R, digest_len: usize, endian: Endian, first_index: u64) -> Self {
        Self {
            inner: BufReader::with_capacity(CHUNK, inner),
            digest_len,
            endian,
            line: Vec::new(),
            index: first_index,
            offset: 0,
            line_no: 0,
            cache: TemplateCache::default(),
            failed: false,
        }
    }

    fn err(&mut self, reason: Reason) -> Error {
        self.failed = true;
        Error { at: Location { record: self.index, offset: self.offset, line: Some(self.line_no) }, reason }
    }

    /// Reads the next record into `slot` and returns it; `None` at the end (and after an error).
    pub fn read_into<'s>(&mut self, slot: &'s mut Option<Record>) -> Result<Option<&'s mut Record>> {
        if self.failed {
            return Ok(None);
        }
        loop {
            self.line.clear();
            let n = (&mut self.inner)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| self.err(Reason::Io(e.to_string())))?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if n > MAX_LINE {
                return Err(self.err(Reason::AbsurdLength {
                    what: "ASCII line",
                    len: n as u64,
                    limit: MAX_LINE as u64,
                }));
            }
            let body = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            if body.is_empty() {
                self.offset += n as u64;
                continue;
            }
            let rec = ascii::parse_line(body, self.digest_len, self.endian, &mut self.cache);
            let rec = rec.map_err(|r| self.err(r))?;
            self.offset += n as u64;
            self.index += 1;
            return Ok(Some(slot.insert(rec)));
        }
    }
}

impl<R: Read> AsciiReader<R> {
    /// Reads the next record as an owned value, reusing the buffers of `reuse` if given.
    pub fn read_owned(&mut self, reuse: Option<Record>) -> Result<Option<Record>> {
        let mut slot = reuse;
        Ok(match self.read_into(&mut slot)? {
            Some(_) => slot,
            None => None,
        })
    }
}

impl<R: Read> Iterator for AsciiReader<R> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        self.read_owned(None).transpose()
    }
}

/// Input format of a log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Auto,
    Binary,
    Ascii,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "binary" => Ok(Self::Binary),
            "ascii" => Ok(Self::Ascii),
            _ => Err(format!("unknown format {s:?} (want auto, binary or ascii)")),
        }
    }
}

/// Guesses the format from the first bytes: ASCII starts with `%2d` then a space.
pub fn sniff(head: &[u8]) -> Format {
    let digit_or_space = |b: u8| b == b' ' || b.is_ascii_digit();
    match head {
        [a, b, b' ', ..] if digit_or_space(*a) && b.is_ascii_digit() => Format::Ascii,
        _ => Format::Binary,
    }
}

/// Either reader behind one type, for tools that accept both formats.
pub enum LogReader<R> {
    Binary(BinaryReader<R>),
    Ascii(AsciiReader<R>),
}

impl<R: Read> LogReader<R> {
    /// Reads the next record into `slot` and returns it; `None` at the end (and after an error).
    pub fn read_into<'s>(&mut self, slot: &'s mut Option<Record>) -> Result<Option<&'s mut Record>> {
        match self {
            Self::Binary(r) => r.read_into(slot),
            Self::Ascii(r) => r.read_into(slot),
        }
    }

    /// Reads the next record as an owned value, reusing the buffers of `reuse` if given.
    pub fn read_owned(&mut self, reuse: Option<Record>) -> Result<Option<Record>> {
        match self {
            Self::Binary(r) => r.read_owned(reuse),
            Self::Ascii(r) => r.read_owned(reuse),
        }
    }
}

impl<R: Read> Iterator for LogReader<R> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Binary(r) => r.next(),
            Self::Ascii(r) => r.next(),
        }
    }
}

/// Opens `input` in `format`, sniffing when `Auto`. Peeks without consuming.
pub fn open<R: Read>(
    input: R,
    format: Format,
    fmt: BinaryFormat,
) -> std::io::Result<LogReader<std::io::Chain<std::io::Cursor<Vec<u8>>, R>>> {
    let mut input = input;
    let mut head = vec![0u8; 3];
    let mut got = 0;
    while got < 3 {
        let n = input.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    head.truncate(got);
    let f = if format == Format::Auto { sniff(&head) } else { format };
    let chained = std::io::Cursor::new(head).chain(input);
    Ok(match f {
        Format::Ascii => LogReader::Ascii(AsciiReader::new(chained, fmt.digest_len, fmt.endian)),
        _ => LogReader::Binary(BinaryReader::new(chained, fmt)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{build, builtin, d_ng, n_ng};
    use crate::HashAlgo;

    /// `read_into` hands back the record it filled (the same one `slot` holds), so no
    /// caller has to assert that the slot is full; `None` at the end and after an error.
    #[test]
    fn finding_13_read_into_returns_the_filled_record() {
        let e = Endian::Little;
        let recs: Vec<Record> = (0..3u8)
            .map(|i| {
                build(&builtin("ima-ng"), &[&d_ng("sha1", &[i; 20]), &n_ng(&[b'a' + i])], HashAlgo::Sha1, 10, false, e)
            })
            .collect();
        let mut bin = Vec::new();
        for r in &recs {
            r.encode(e, &mut bin);
        }
        let mut r = BinaryReader::new(&bin[..], BinaryFormat::new(HashAlgo::Sha1));
        let mut slot = None;
        let mut got = Vec::new();
        while let Some(rec) = r.read_into(&mut slot).unwrap() {
            got.push(rec.clone());
        }
        assert_eq!(got, recs);
        assert_eq!(slot.as_ref(), recs.last(), "the slot holds the last record, buffers reused");
        // Owned reads, and the end of a cut input: an error, then nothing more.
        let mut r = BinaryReader::new(&bin[..bin.len() - 1], BinaryFormat::new(HashAlgo::Sha1));
        assert_eq!(r.read_owned(None).unwrap().as_ref(), Some(&recs[0]));
        assert_eq!(r.read_owned(slot.take()).unwrap().as_ref(), Some(&recs[1]));
        assert!(r.read_owned(None).is_err());
        assert!(r.read_into(&mut slot).unwrap().is_none());
    }
}
