//! The agent's half of AK enrolment (docs/SERVICES.md, "AK enrolment with EK credential
//! activation"): present the TPM's EK, EK certificate and AK; activate the credential
//! the verifier made. The verifier drives the exchange over the connection it already
//! uses for evidence (`POST /v1/hosts/{name}/enrol` on the verifier), so the agent
//! needs no credentials of its own for the verifier's API.
//!
//! - `GET /v1/enrolment` → [`EkPresentation`];
//! - `POST /v1/enrolment/activate` ([`ActivateRequest`]) → [`ActivateResponse`].

use crate::host::{HostError, HostOps};
use imasnap_tpm::Credential;
use imasnap_wire::enrolment::{unhex, ActivateRequest, ActivateResponse, EkPresentation};

fn tpm_of(h: &mut dyn HostOps) -> Result<&mut dyn imasnap_tpm::Tpm, HostError> {
    let mode = h.mode();
    h.enrolment_tpm().ok_or_else(|| HostError::Conflict(format!("no TPM for enrolment in mode {mode}")))
}

/// The EK (recreated from the TCG template), its certificate if the TPM has one, and the AK.
pub fn present(h: &mut dyn HostOps) -> Result<EkPresentation, HostError> {
    let tpm = tpm_of(h)?;
    let ek = tpm.endorsement_key().map_err(|e| HostError::Other(format!("endorsement key: {e}")))?;
    let ak = tpm.ak_public();
    let area = ak
        .public_area()
        .ok_or_else(|| HostError::Conflict("the AK was loaded from PEM: it has no TPM public area".into()))?;
    Ok(EkPresentation::new(&ek.public.to_tpm2b(), ek.cert.as_deref(), &area.to_tpm2b()))
}

/// TPM2_ActivateCredential of the verifier's credential with this host's EK and AK.
pub fn activate(h: &mut dyn HostOps, req: &ActivateRequest) -> Result<ActivateResponse, HostError> {
    let blob = unhex(&req.credential_blob, "credential_blob").map_err(HostError::BadRequest)?;
    let secret = unhex(&req.encrypted_secret, "encrypted_secret").map_err(HostError::BadRequest)?;
    let tpm = tpm_of(h)?;
    // A failed activation is the answer "not this TPM / not this AK" (409).
    let out = tpm.activate_credential(&Credential { blob, secret }).map_err(|e| HostError::Conflict(e.to_string()))?;
    tracing::info!("credential activated for AK enrolment");
    Ok(ActivateResponse { secret: hex::encode(out) })
}
