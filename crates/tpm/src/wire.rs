//! Big-endian TPM 2.0 marshalling primitives (TPM 2.0 Part 2 / Part 1 §18).
//!
//! The [`Reader`] never panics: every read is bounds-checked and fails with a
//! [`WireError`] naming the structure and the byte offset where it went wrong.

use imasnap_log::HashAlgo;

/// Why bytes could not be unmarshalled. Offsets are from the start of the buffer
/// handed to the outermost `from_bytes`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Truncated, oversized, trailing or otherwise invalid bytes.
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed { what: &'static str, offset: usize, reason: String },
    /// A well-formed algorithm identifier this crate does not implement.
    #[error("{what} at byte {offset}: unsupported algorithm 0x{alg:04x}")]
    UnsupportedAlg { what: &'static str, offset: usize, alg: u16 },
}

impl WireError {
    /// Byte offset of the problem.
    pub fn offset(&self) -> usize {
        match self {
            Self::Malformed { offset, .. } | Self::UnsupportedAlg { offset, .. } => *offset,
        }
    }
}

/// TPM_ALG_NULL.
pub(crate) const ALG_NULL: u16 = 0x0010;

/// Bounds-checked cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Names the structure being read in later errors (offsets stay absolute).
    pub(crate) fn set_what(&mut self, what: &'static str) -> &'static str {
        std::mem::replace(&mut self.what, what)
    }

    pub(crate) fn err(&self, offset: usize, reason: impl Into<String>) -> WireError {
        WireError::Malformed { what: self.what, offset, reason: reason.into() }
    }

    pub(crate) fn unsupported(&self, offset: usize, alg: u16) -> WireError {
        WireError::UnsupportedAlg { what: self.what, offset, alg }
    }

    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], WireError> {
        let have = self.buf.len().saturating_sub(self.pos);
        if n > have {
            return Err(self.err(self.pos, format!("truncated {field}: need {n} bytes, {have} left")));
        }
        let s = self.buf.get(self.pos..self.pos + n).ok_or_else(|| self.err(self.pos, "out of bounds"))?;
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], WireError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A TPM2B: u16 size then that many bytes; `max` is the spec's buffer size.
    pub(crate) fn tpm2b(&mut self, max: usize, field: &str) -> Result<&'a [u8], WireError> {
        let at = self.pos;
        let n = self.u16(field)? as usize;
        if n > max {
            return Err(self.err(at, format!("{field} size {n} exceeds maximum {max}")));
        }
        self.take(n, field)
    }

    /// A TPMI_ALG_HASH that must be one of [`HashAlgo`] (TPM_ALG_NULL not allowed).
    pub(crate) fn hash_alg(&mut self, field: &str) -> Result<HashAlgo, WireError> {
        let at = self.pos;
        let id = self.u16(field)?;
        HashAlgo::from_tpm_alg_id(id).ok_or_else(|| self.unsupported(at, id))
    }

    /// Fails unless every byte was consumed: trailing bytes are not silently ignored.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        let left = self.buf.len().saturating_sub(self.pos);
        if left != 0 {
            return Err(self.err(self.pos, format!("{left} trailing bytes")));
        }
        Ok(())
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes a TPM2B. Callers guarantee `b` fits a u16 (every field here is bounded far
/// below that); an oversized buffer is clamped rather than allowed to wrap.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(u16::MAX as usize);
    put_u16(out, n as u16);
    out.extend_from_slice(&b[..n]);
}

/// Maximum sizes from TPM 2.0 Part 2 for an implementation with SHA-512 and
/// 4096-bit RSA, the largest we accept.
pub(crate) mod max {
    /// TPM2B_DIGEST: sizeof(TPMU_HA).
    pub const DIGEST: usize = 64;
    /// TPM2B_DATA / TPM2B_NAME: sizeof(TPMT_HA).
    pub const DATA: usize = 66;
    /// TPM2B_NAME.
    pub const NAME: usize = 66;
    /// TPM2B_ECC_PARAMETER (P-521 sized, so such keys are reported as unsupported, not malformed).
    pub const ECC: usize = 66;
    /// TPM2B_PUBLIC_KEY_RSA.
    pub const RSA: usize = 512;
}
