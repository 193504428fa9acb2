//! The endorsement key and TPM2_ActivateCredential on a real TPM.
//!
//! The EK is recreated from the TCG default template (RSA 2048, else ECC P-256) under
//! the endorsement hierarchy whenever it is needed and flushed right after: swtpm and
//! `/dev/tpm0` have no resource manager. Its use is authorised by the template's
//! policy, PolicySecret(TPM_RH_ENDORSEMENT) with the empty endorsement password, in a
//! policy session that is flushed after the command.

use super::{be, pw, EsapiTpm};
use crate::credential::{Credential, EkPublic};
use crate::{EkInfo, TpmError};
use tss_esapi::abstraction::ek;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{AsymmetricAlgorithm, HashingAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, EncryptedSecret, IdObject, Nonce, SymmetricDefinition};
use tss_esapi::traits::Marshall as _;
use tss_esapi::Context;

const EK_ALGS: [AsymmetricAlgorithm; 2] = [AsymmetricAlgorithm::Rsa, AsymmetricAlgorithm::Ecc];

/// Creates the EK (RSA first, as swtpm and most TPMs certify it; ECC if RSA fails).
fn create_ek(ctx: &mut Context) -> Result<(KeyHandle, AsymmetricAlgorithm), TpmError> {
    let mut last = None;
    for alg in EK_ALGS {
        let t = ek::create_ek_public_from_default_template(alg, None).map_err(be("EK template"))?;
        match pw(ctx, |ctx| ctx.create_primary(Hierarchy::Endorsement, t, None, None, None, None)) {
            Ok(r) => return Ok((r.key_handle, alg)),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(be("TPM2_CreatePrimary of the EK")(e)),
        None => Err(TpmError::Backend("no EK algorithm".into())),
    }
}

fn ek_cert(ctx: &mut Context, alg: AsymmetricAlgorithm) -> Option<Vec<u8>> {
    let sel = match alg {
        AsymmetricAlgorithm::Ecc => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        _ => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
    };
    // Absent index: the TPM has no certificate (the verifier then needs a pinned EK).
    let raw = ek::retrieve_ek_pubcert(ctx, sel).ok()?;
    Some(crate::ekcert::trim_der(&raw).to_vec())
}

impl EsapiTpm {
    pub(super) fn esapi_endorsement_key(&mut self) -> Result<EkInfo, TpmError> {
        let ctx = &mut self.ctx.0;
        let (h, alg) = create_ek(ctx)?;
        let public = ctx.read_public(h).map_err(be("TPM2_ReadPublic of the EK"));
        let flushed = ctx.flush_context(h.into()).map_err(be("flushing the EK"));
        let (public, _, _) = public?;
        flushed?;
        let area = public.marshall().map_err(be("EK public"))?;
        let public = EkPublic::from_bytes(&area).map_err(|e| TpmError::Backend(format!("EK public area: {e}")))?;
        let cert = ek_cert(ctx, alg);
        Ok(EkInfo { public, cert })
    }

    pub(super) fn esapi_activate_credential(&mut self, cred: &Credential) -> Result<Vec<u8>, TpmError> {
        let blob = IdObject::try_from(cred.blob.clone()).map_err(be("TPM2B_ID_OBJECT"))?;
        let secret = EncryptedSecret::try_from(cred.secret.clone()).map_err(be("TPM2B_ENCRYPTED_SECRET"))?;
        let ak = self.ak.handle;
        let ctx = &mut self.ctx.0;
        let (ek, _) = create_ek(ctx)?;
        let session = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(be("starting the EK policy session"));
        let out = session.and_then(|s| {
            let s = s.ok_or_else(|| TpmError::Backend("TPM returned no policy session".into()))?;
            let r = (|| {
                let ps = PolicySession::try_from(s).map_err(be("policy session"))?;
                pw(ctx, |ctx| {
                    ctx.policy_secret(
                        ps,
                        AuthHandle::Endorsement,
                        Nonce::default(),
                        Digest::default(),
                        Nonce::default(),
                        None,
                    )
                })
                .map_err(be("TPM2_PolicySecret(endorsement)"))?;
                ctx.execute_with_sessions((Some(AuthSession::Password), Some(s), None), |ctx| {
                    ctx.activate_credential(ak, ek, blob, secret)
                })
                .map_err(be("TPM2_ActivateCredential"))
            })();
            // The session may already be gone if the command failed; nothing else to do.
            let _ = ctx.flush_context(SessionHandle::from(s).into());
            r
        });
        let flushed = ctx.flush_context(ek.into()).map_err(be("flushing the EK"));
        let v = out?;
        flushed?;
        Ok(v.value().to_vec())
    }
}
