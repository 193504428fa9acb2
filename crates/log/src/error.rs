//! Errors that locate bad input: every one names a record index and a byte offset.

use std::fmt;

/// Where in the input a problem sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct Location {
    /// 0-based global record index (includes any starting index given to the reader).
    pub record: u64,
    /// Byte offset from the start of the input (for ASCII: start of the line).
    pub offset: u64,
    /// 1-based line number, for ASCII input.
    pub line: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {} at byte offset {}", self.record, self.offset)?;
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

/// What is wrong with the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("truncated {what}: need {needed} bytes, only {available} left in the input")]
    Truncated { what: &'static str, needed: u64, available: u64 },
    #[error("absurd {what} length {len} (limit {limit})")]
    AbsurdLength { what: &'static str, len: u64, limit: u64 },
    #[error("unknown template {0:?}")]
    UnknownTemplate(String),
    #[error("template data does not fit template {template:?}: {detail}")]
    FieldMismatch { template: String, detail: String },
    #[error("field {field} of template {template:?}: {detail}")]
    BadField { template: String, field: &'static str, detail: String },
    #[error("non-hex text in {what}: {text:?}")]
    BadHex { what: &'static str, text: String },
    #[error("template digest is {got} bytes, this log carries {want}-byte digests")]
    DigestSize { got: usize, want: usize },
    #[error("template name is not valid text")]
    BadTemplateName,
    #[error("PCR index {0} out of range (0-23)")]
    PcrIndex(u64),
    #[error("malformed ASCII line: {0}")]
    BadLine(String),
    #[error("kexec buffer: {0}")]
    Kexec(String),
    #[error("template {0:?} cannot be hashed: {1}")]
    Unhashable(String, String),
    #[error("I/O error: {0}")]
    Io(String),
}

/// A located error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct Error {
    pub at: Location,
    pub reason: Reason,
}

impl Error {
    pub fn new(record: u64, offset: u64, reason: Reason) -> Self {
        Self { at: Location { record, offset, line: None }, reason }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
