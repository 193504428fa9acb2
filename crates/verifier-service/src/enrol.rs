//! AK enrolment by EK credential activation (docs/SERVICES.md).
//!
//! 1. The EK the agent presents must be trusted: pinned in the host's registration
//!    (`ek`), listed in `[ek] trusted`, or certified by a certificate that chains to a
//!    CA in `[ek] ca`.
//! 2. The AK must be a restricted signing key fixed to its TPM (`fixedTPM`,
//!    `fixedParent`): otherwise it could have been made elsewhere and imported.
//! 3. The verifier makes a credential (`TPM2_MakeCredential`, pure Rust) for that EK and
//!    the AK's Name holding a fresh 32-byte secret, and remembers it under a random
//!    challenge id for [`CHALLENGE_TTL`].
//! 4. Whoever answers with the secret proves that a TPM holding the EK's private key
//!    has an object with that Name loaded. The challenge is removed by its first answer,
//!    right or wrong, so a replayed answer (or a guess) finds nothing.
//!
//! Only then does the AK become the host's trusted AK, with `ak_source: "ek_activated"`.

use crate::config::EkConfig;
use crate::model::{AkEnrolment, HostSpec, HostStatus};
use crate::service::registry::{now_ms, ApiError, HostRt, Verifier};
use hyper::{Method, StatusCode};
use imasnap_net::http::Conn;
use imasnap_tpm::ekcert::EkTrust;
use imasnap_tpm::{make_credential, AkPublic, Credential, EkPublic};
use imasnap_wire::enrolment::{unhex, ActivateRequest, ActivateResponse, EkPresentation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Pending challenges kept at most (oldest dropped first): a flood cannot grow memory.
pub const MAX_PENDING: usize = 4096;
const SECRET_LEN: usize = 32;

/// `POST /v1/hosts/{name}/enrol/challenge`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Challenge {
    /// Quote it in the response; valid once, for `expires_in_ms`.
    pub challenge: String,
    /// TPM2B_ID_OBJECT contents, hex.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET contents, hex.
    pub encrypted_secret: String,
    pub expires_in_ms: u64,
    pub ek_fingerprint: String,
    /// Why the EK is trusted: `ek_cert`, `pinned`, `trusted_list`.
    pub ek_trust: String,
}

/// `POST /v1/hosts/{name}/enrol/response`'s body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    pub challenge: String,
    /// The secret TPM2_ActivateCredential returned, hex.
    pub secret: String,
}

struct Pending {
    host: String,
    ak_public: Vec<u8>,
    secret: Vec<u8>,
    enrolment: AkEnrolment,
    expires: Instant,
}

/// EK trust from `[ek]` and the pending challenges.
pub struct Enrolment {
    trust: EkTrust,
    trusted: Vec<String>,
    pending: Mutex<HashMap<String, Pending>>,
}

/// The SHA-256 SPKI fingerprint an `ek` pin or `[ek] trusted` entry names: 64 hex
/// characters as is, or a hex TPM2B_PUBLIC whose fingerprint is computed.
pub fn ek_fingerprint_of(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_prefix("sha256:").unwrap_or(&s);
    if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Ok(s.to_string());
    }
    let b = unhex(s, "EK")?;
    let ek = EkPublic::from_tpm2b(&b).map_err(|e| e.to_string())?;
    ek.fingerprint().map_err(|e| e.to_string())
}

fn bad(m: impl Into<String>) -> ApiError {
    (StatusCode::BAD_REQUEST, m.into())
}

fn forbidden(m: impl Into<String>) -> ApiError {
    (StatusCode::FORBIDDEN, m.into())
}

/// Equal without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Enrolment {
    /// Reads the CA files; a missing or unreadable one stops the start.
    pub fn from_config(c: &EkConfig) -> Result<Self, String> {
        let mut trust = EkTrust::default();
        for p in &c.ca {
            let pem = std::fs::read_to_string(p).map_err(|e| format!("[ek] ca {}: {e}", p.display()))?;
            trust.add_pem(&pem, &p.display().to_string()).map_err(|e| format!("[ek] ca: {e}"))?;
        }
        let trusted = c
            .trusted
            .iter()
            .enumerate()
            .map(|(i, t)| ek_fingerprint_of(t).map_err(|e| format!("[ek] trusted[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { trust, trusted, pending: Mutex::new(HashMap::new()) })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the EK and the AK and makes a credential for them.
    pub(crate) fn challenge(&self, spec: &HostSpec, p: &EkPresentation) -> Result<Challenge, ApiError> {
        let (ek_b, cert, ak_b) = p.decode().map_err(bad)?;
        let ek = EkPublic::from_tpm2b(&ek_b).map_err(|e| bad(format!("ek_public: {e}")))?;
        let fpr = ek.fingerprint().map_err(|e| bad(format!("ek_public: {e}")))?;
        let ak = AkPublic::from_tpm2b_public(&ak_b).map_err(|e| bad(format!("ak_public: {e}")))?;
        let area = ak.public_area().ok_or_else(|| bad("ak_public: no public area"))?;
        let fixed = imasnap_tpm::public::attrs::FIXED_TPM | imasnap_tpm::public::attrs::FIXED_PARENT;
        if area.object_attributes & fixed != fixed {
            return Err(forbidden(format!(
                "ak_public: objectAttributes 0x{:08x} lack fixedTPM|fixedParent: the key could live outside this TPM",
                area.object_attributes
            )));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let pinned = spec.ek.as_deref().map(ek_fingerprint_of).transpose().map_err(bad)?;
        let (ek_trust, ek_issuer) = if let Some(pin) = pinned {
            // A pin is the strongest statement: it alone decides.
            if pin != fpr {
                return Err(forbidden(format!(
                    "EK sha256:{fpr} is not the EK pinned for {} (sha256:{pin})",
                    spec.name
                )));
            }
            ("pinned", None)
        } else if self.trusted.contains(&fpr) {
            ("trusted_list", None)
        } else {
            let cert = cert.ok_or_else(|| {
                forbidden(format!(
                    "EK sha256:{fpr} ({}) has no certificate and is neither pinned for {} (ek) nor in [ek] trusted",
                    ek.kind(),
                    spec.name
                ))
            })?;
            if self.trust.is_empty() {
                return Err(forbidden(format!(
                    "EK sha256:{fpr} has a certificate but no [ek] ca is configured; pin the EK or configure its CA"
                )));
            }
            let issuer = self.trust.verify(&cert, &ek, now).map_err(|e| forbidden(format!("EK sha256:{fpr}: {e}")))?;
            ("ek_cert", Some(issuer))
        };
        let mut secret = vec![0u8; SECRET_LEN];
        let mut id = [0u8; 16];
        {
            use rand::RngCore as _;
            let mut r = rand::rngs::OsRng;
            r.fill_bytes(&mut secret);
            r.fill_bytes(&mut id);
        }
        let name = area.name();
        let cred: Credential = make_credential(&mut rand::rngs::OsRng, &ek, &name, &secret)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("TPM2_MakeCredential: {e}")))?;
        let id = hex::encode(id);
        let enrolment = AkEnrolment {
            ek_fingerprint: fpr.clone(),
            ek_kind: ek.kind(),
            ek_trust: ek_trust.into(),
            ek_issuer,
            at_ms: 0,
        };
        let mut pending = self.pending();
        let now_i = Instant::now();
        pending.retain(|_, p| p.expires > now_i);
        while pending.len() >= MAX_PENDING {
            let Some(oldest) = pending.iter().min_by_key(|(_, p)| p.expires).map(|(k, _)| k.clone()) else { break };
            pending.remove(&oldest);
        }
        pending.insert(
            id.clone(),
            Pending { host: spec.name.clone(), ak_public: ak_b, secret, enrolment, expires: now_i + CHALLENGE_TTL },
        );
        Ok(Challenge {
            challenge: id,
            credential_blob: hex::encode(&cred.blob),
            encrypted_secret: hex::encode(&cred.secret),
            expires_in_ms: CHALLENGE_TTL.as_millis() as u64,
            ek_fingerprint: fpr,
            ek_trust: ek_trust.into(),
        })
    }

    /// Consumes the challenge (whatever the outcome) and checks the secret.
    fn answer(&self, host: &str, r: &ChallengeResponse) -> Result<(Vec<u8>, AkEnrolment), ApiError> {
        let p = self.pending().remove(r.challenge.trim()).ok_or_else(|| {
            forbidden(format!(
                "unknown challenge {:?}: never issued, already answered (a replay) or dropped",
                r.challenge
            ))
        })?;
        if p.host != host {
            return Err(forbidden(format!("challenge {} was issued for host {}, not {host}", r.challenge, p.host)));
        }
        if Instant::now() > p.expires {
            return Err(forbidden(format!("challenge {} expired", r.challenge)));
        }
        let got = unhex(&r.secret, "secret").map_err(bad)?;
        if !ct_eq(&got, &p.secret) {
            return Err(forbidden(
                "wrong secret: the TPM that answered does not hold this EK with this AK loaded".to_string(),
            ));
        }
        let mut e = p.enrolment;
        e.at_ms = now_ms();
        Ok((p.ak_public, e))
    }
}

impl Verifier {
    fn spec_for_enrolment(&self, name: &str) -> Result<HostSpec, ApiError> {
        let hosts = self.hosts();
        let h = hosts.get(name).ok_or((StatusCode::NOT_FOUND, format!("no host {name}")))?;
        if h.damage.as_ref().is_some_and(|d| d.table == "hosts") {
            return Err((StatusCode::CONFLICT, format!("host {name}: its registration is unreadable")));
        }
        Ok(h.spec.clone())
    }

    /// `POST /v1/hosts/{name}/enrol/challenge`.
    pub fn enrol_challenge(&self, name: &str, p: &EkPresentation) -> Result<Challenge, ApiError> {
        let spec = self.spec_for_enrolment(name)?;
        let c = self.enrolment.challenge(&spec, p);
        match &c {
            Ok(c) => {
                tracing::info!(host = %name, ek = %c.ek_fingerprint, trust = %c.ek_trust, "enrolment challenge issued")
            }
            Err((_, e)) => tracing::warn!(host = %name, reason = %e, "enrolment refused"),
        }
        c
    }

    /// `POST /v1/hosts/{name}/enrol/response`: with the right secret, the AK becomes
    /// the host's trusted AK (`ek_activated`) and its state starts over.
    pub async fn enrol_response(&self, name: &str, r: &ChallengeResponse) -> Result<HostStatus, ApiError> {
        let (ak, e) = match self.enrolment.answer(name, r) {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(host = %name, reason = %err.1, "enrolment response refused");
                return Err(err);
            }
        };
        let mut spec = self.spec_for_enrolment(name)?;
        spec.ak = Some(hex::encode(&ak));
        spec.tofu = false;
        spec.ak_enrolment = Some(Box::new(e.clone()));
        spec.validate().map_err(bad)?;
        let mut fresh = HostRt::fresh(spec.clone()).map_err(bad)?;
        fresh.version = self
            .db_write(crate::db::Op::PutHost { spec: spec.clone(), reset_state: true, now_ms: now_ms() })
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let mut hosts = self.hosts();
        let h = hosts.get_mut(name).ok_or((StatusCode::NOT_FOUND, format!("no host {name}")))?;
        h.replace(fresh);
        h.next_due = Instant::now();
        tracing::info!(host = %name, ek = %e.ek_fingerprint, trust = %e.ek_trust, "AK enrolled by EK credential activation");
        Ok(h.status())
    }

    /// `POST /v1/hosts/{name}/enrol`: the whole exchange with the host's agent, over the
    /// same mutual-TLS connection rounds use: fetch its EK, EK certificate and AK, make
    /// the credential, have its TPM activate it, check the secret.
    pub async fn enrol(&self, name: &str) -> Result<HostStatus, ApiError> {
        let spec = self.spec_for_enrolment(name)?;
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let gw = |e: String| (StatusCode::BAD_GATEWAY, format!("agent {}: {e}", spec.address));
        let sn = imasnap_net::tls::server_name(&spec.tls_name()).map_err(|e| bad(e.to_string()))?;
        let mut c =
            Conn::connect(&spec.address, sn, self.agent_tls.clone(), timeout).await.map_err(|e| gw(e.to_string()))?;
        if let Some(pin) = &spec.agent_cert {
            let want = crate::model::pinned_der(pin).map_err(bad)?;
            if c.server_cert.as_deref() != Some(want.as_slice()) {
                return Err(gw("the agent's certificate is not the pinned agent_cert".into()));
            }
        }
        let limit = 1 << 20;
        let (s, body) =
            c.request(Method::GET, "/v1/enrolment", None, limit, timeout).await.map_err(|e| gw(e.to_string()))?;
        if s != StatusCode::OK {
            return Err(gw(format!("GET /v1/enrolment answered {s}: {}", String::from_utf8_lossy(&body).trim())));
        }
        let p: EkPresentation = serde_json::from_slice(&body).map_err(|e| gw(format!("enrolment: {e}")))?;
        let ch = self.enrol_challenge(name, &p)?;
        let req = ActivateRequest { credential_blob: ch.credential_blob, encrypted_secret: ch.encrypted_secret };
        let b = serde_json::to_vec(&req).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let (s, body) = c
            .request(Method::POST, "/v1/enrolment/activate", Some(b), limit, timeout)
            .await
            .map_err(|e| gw(e.to_string()))?;
        let secret = if s == StatusCode::OK {
            serde_json::from_slice::<ActivateResponse>(&body).map_err(|e| gw(format!("activate: {e}")))?.secret
        } else {
            // Consume the challenge so it cannot be answered later.
            let _ = self.enrolment.answer(name, &ChallengeResponse { challenge: ch.challenge, secret: String::new() });
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "agent {}: TPM2_ActivateCredential failed ({s}): {}",
                    spec.address,
                    String::from_utf8_lossy(&body).trim()
                ),
            ));
        };
        self.enrol_response(name, &ChallengeResponse { challenge: ch.challenge, secret }).await
    }
}
