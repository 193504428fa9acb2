//! What the engine consumes: the host's claims (manifest, bundle index) next to the bytes
//! they describe. Every field here is a claim except the bytes themselves; the engine
//! decides what they prove.

use imasnap_log::{Endian, HashAlgo};
use std::io::Read;

/// Bytes of one log file: in memory, or streamed from any reader. Either way the engine
/// reads them once, record by record, so memory does not grow with the file.
pub enum Input<'a> {
    Bytes(&'a [u8]),
    Reader(Box<dyn Read + 'a>),
}

impl<'a> From<&'a [u8]> for Input<'a> {
    fn from(b: &'a [u8]) -> Self {
        Self::Bytes(b)
    }
}

impl<'a> From<&'a Vec<u8>> for Input<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Bytes(b) => b.read(buf),
            Self::Reader(r) => r.read(buf),
        }
    }
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "Input::Bytes({} bytes)", b.len()),
            Self::Reader(_) => f.write_str("Input::Reader"),
        }
    }
}

/// The claim types, and their one checked conversion from the wire formats, live in
/// `imasnap-wire` (below this crate, which parses bundles through it).
pub use imasnap_wire::claims::{BootClaim, EndMarkerClaim, SnapshotClaim};

/// One snapshot: the manifest entry and, when supplied, the file's bytes.
#[derive(Debug)]
pub struct SnapshotEvidence<'a> {
    pub claim: SnapshotClaim,
    /// `None` when the file was not supplied. Full-history verification then fails with
    /// [`crate::Failure::SnapshotMissing`]; incremental verification needs only the files
    /// at or after its checkpoint.
    pub data: Option<Input<'a>>,
}

/// An evidence bundle (SNAPSHOTS.md "Evidence bundle") in memory.
#[derive(Debug)]
pub struct Evidence<'a> {
    /// Banks to replay in (bundle `banks`). Must be the banks the markers list.
    pub banks: Vec<HashAlgo>,
    /// The measurement PCR (bundle `pcr`, normally 10).
    pub pcr: u32,
    /// Byte order of the binary logs (`Little` unless `ima_canonical_fmt` on big-endian).
    pub endian: Endian,
    /// The manifest's boot identity, if it states one.
    pub boot: Option<BootClaim>,
    /// Snapshots in manifest order.
    pub snapshots: Vec<SnapshotEvidence<'a>>,
    /// The live list (binary, SHA1 template digests).
    pub live: Input<'a>,
    /// Global index of the live list's first record, as the agent claims.
    pub live_first_index: u64,
    /// Suffix evidence: the first segment that comes with data starts its data at this
    /// index instead of at its first record (the verifier's checkpoint, so only records
    /// after it travel). Incremental mode only; `None` means every segment is whole.
    pub data_from: Option<u64>,
}
