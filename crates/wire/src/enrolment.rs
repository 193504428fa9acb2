//! AK enrolment by EK credential activation: the JSON the agent and the verifier
//! exchange (docs/SERVICES.md, "AK enrolment with EK credential activation").
//!
//! Binary TPM structures travel as lowercase hex of their TPM marshalling.

use serde::{Deserialize, Serialize};

/// `format` of [`EkPresentation`].
pub const ENROLMENT_FORMAT: &str = "imasnap-enrolment/1";

/// Largest hex field accepted (an EK certificate is a few KB; 64 KiB of hex is plenty).
pub const MAX_HEX: usize = 64 << 10;

/// What the agent presents (`GET /v1/enrolment` on the agent) and what a client sends to
/// `POST /v1/hosts/{name}/enrol/challenge` on the verifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EkPresentation {
    #[serde(default = "format")]
    pub format: String,
    /// TPM2B_PUBLIC of the endorsement key.
    pub ek_public: String,
    /// The EK certificate (DER) from the TPM's NV, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<String>,
    /// TPM2B_PUBLIC of the attestation key that signs the agent's quotes.
    pub ak_public: String,
}

fn format() -> String {
    ENROLMENT_FORMAT.into()
}

impl EkPresentation {
    pub fn new(ek_public: &[u8], ek_cert: Option<&[u8]>, ak_public: &[u8]) -> Self {
        Self {
            format: format(),
            ek_public: hex::encode(ek_public),
            ek_cert: ek_cert.map(hex::encode),
            ak_public: hex::encode(ak_public),
        }
    }

    /// The three fields as bytes; errors name the field.
    #[allow(clippy::type_complexity)]
    pub fn decode(&self) -> Result<(Vec<u8>, Option<Vec<u8>>, Vec<u8>), String> {
        if self.format != ENROLMENT_FORMAT {
            return Err(format!("format {:?}, want {ENROLMENT_FORMAT:?}", self.format));
        }
        let cert = self.ek_cert.as_deref().map(|c| unhex(c, "ek_cert")).transpose()?;
        Ok((unhex(&self.ek_public, "ek_public")?, cert, unhex(&self.ak_public, "ak_public")?))
    }
}

/// The credential made for the presented EK and AK Name (`TPM2_MakeCredential`'s two
/// outputs), sent to the agent's `POST /v1/enrolment/activate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// TPM2B_ID_OBJECT contents.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET contents.
    pub encrypted_secret: String,
}

/// The agent's answer: the secret `TPM2_ActivateCredential` returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateResponse {
    pub secret: String,
}

/// Lowercase or uppercase hex, at most [`MAX_HEX`] characters.
pub fn unhex(s: &str, field: &str) -> Result<Vec<u8>, String> {
    if s.len() > MAX_HEX {
        return Err(format!("{field}: {} hex characters exceed {MAX_HEX}", s.len()));
    }
    hex::decode(s.trim()).map_err(|e| format!("{field}: not hex ({e})"))
}
