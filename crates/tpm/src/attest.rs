//! TPMS_ATTEST for quotes (TPM 2.0 Part 2 §10.12).

use crate::selection::PcrSelection;
use crate::wire::{max, put_tpm2b, put_u16, put_u32, put_u64, Reader, WireError};

/// TPM_GENERATED_VALUE: proves the TPM itself built the structure it signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// TPMS_CLOCK_INFO: lets a verifier detect reboots (resetCount) and
/// suspend/resume cycles (restartCount) between two quotes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last TPM2_Clear; never goes back.
    pub clock: u64,
    /// TPM Resets (cold boots) since TPM2_Clear.
    pub reset_count: u32,
    /// TPM Restarts/Resumes since the last TPM Reset.
    pub restart_count: u32,
    /// False if `clock` may have been reported higher before (disorderly shutdown).
    pub safe: bool,
}

impl ClockInfo {
    /// Encoded size: u64 + u32 + u32 + u8.
    pub const SIZE: usize = 17;

    pub fn marshal(&self, out: &mut Vec<u8>) {
        put_u64(out, self.clock);
        put_u32(out, self.reset_count);
        put_u32(out, self.restart_count);
        out.push(self.safe as u8);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        self.marshal(&mut v);
        v
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "TPMS_CLOCK_INFO");
        let c = Self::unmarshal(&mut r)?;
        r.finish()?;
        Ok(c)
    }

    pub(crate) fn unmarshal(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let clock = r.u64("clock")?;
        let reset_count = r.u32("resetCount")?;
        let restart_count = r.u32("restartCount")?;
        let at = r.pos();
        let safe = match r.u8("safe")? {
            0 => false,
            1 => true,
            v => return Err(r.err(at, format!("safe is TPMI_YES_NO, got {v}"))),
        };
        Ok(Self { clock, reset_count, restart_count, safe })
    }
}

/// A decoded quote TPMS_ATTEST (magic and type are implied: always
/// TPM_GENERATED_VALUE and TPM_ST_ATTEST_QUOTE).
///
/// Note: a TPM obfuscates resetCount, restartCount and firmwareVersion when the
/// signing key is outside the endorsement and platform hierarchies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attest {
    /// TPM2B_NAME: Qualified Name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// TPM2B_DATA: the caller's nonce (qualifyingData).
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    /// Vendor-specific firmware version.
    pub firmware_version: u64,
    /// TPMS_QUOTE_INFO.pcrSelect, exactly as the TPM wrote it.
    pub pcr_select: PcrSelection,
    /// TPMS_QUOTE_INFO.pcrDigest: hash (with the signing scheme's hash) of the selected PCRs.
    pub pcr_digest: Vec<u8>,
}

impl Attest {
    /// Marshalled TPMS_ATTEST (the contents of a TPM2B_ATTEST, i.e. what is signed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        put_u32(&mut out, TPM_GENERATED_VALUE);
        put_u16(&mut out, TPM_ST_ATTEST_QUOTE);
        put_tpm2b(&mut out, &self.qualified_signer);
        put_tpm2b(&mut out, &self.extra_data);
        self.clock_info.marshal(&mut out);
        put_u64(&mut out, self.firmware_version);
        self.pcr_select.marshal(&mut out);
        put_tpm2b(&mut out, &self.pcr_digest);
        out
    }

    /// Parses a quote TPMS_ATTEST; any other magic, type, or trailing bytes are errors.
    pub fn from_bytes(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "TPMS_ATTEST");
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(r.err(0, format!("magic 0x{magic:08x} is not TPM_GENERATED_VALUE")));
        }
        let ty = r.u16("type")?;
        if ty != TPM_ST_ATTEST_QUOTE {
            return Err(r.err(4, format!("type 0x{ty:04x} is not TPM_ST_ATTEST_QUOTE")));
        }
        let qualified_signer = r.tpm2b(max::NAME, "qualifiedSigner")?.to_vec();
        let extra_data = r.tpm2b(max::DATA, "extraData")?.to_vec();
        let clock_info = ClockInfo::unmarshal(&mut r)?;
        let firmware_version = r.u64("firmwareVersion")?;
        let pcr_select = PcrSelection::unmarshal(&mut r)?;
        let pcr_digest = r.tpm2b(max::DIGEST, "pcrDigest")?.to_vec();
        r.finish()?;
        Ok(Self { qualified_signer, extra_data, clock_info, firmware_version, pcr_select, pcr_digest })
    }
}
