//! AK enrolment by EK credential activation through the verifier service:
//! - soft TPM agents over mutual TLS: the whole exchange (`enrol`), then verified rounds;
//!   the two-step API with a replayed response, a wrong secret, an AK from another TPM,
//!   an EK neither pinned nor certified;
//! - swtpm with an EK certificate from swtpm's local CA, driven by tpm2-tools only
//!   (`tpm2_nvread`, `tpm2_createak`, `tpm2_activatecredential`): accepted with that CA,
//!   refused with another.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use hyper::StatusCode;
use imasnap_agent_server::devpki::write_dev_pki;
use imasnap_agent_server::service as agent;
use imasnap_tpm::EkPublic;
use imasnap_verifier_service::enrol::ChallengeResponse;
use imasnap_verifier_service::model::{HostSpec, Verdict};
use imasnap_wire::enrolment::{ActivateRequest, EkPresentation};

mod common;

fn presentation(a: &agent::Running) -> EkPresentation {
    let mut h = a.service.lock().unwrap();
    imasnap_agent_server::enrol::present(h.as_mut()).unwrap()
}

fn activate(a: &agent::Running, c: &imasnap_verifier_service::enrol::Challenge) -> Result<String, String> {
    let mut h = a.service.lock().unwrap();
    let r =
        ActivateRequest { credential_blob: c.credential_blob.clone(), encrypted_secret: c.encrypted_secret.clone() };
    imasnap_agent_server::enrol::activate(h.as_mut(), &r).map(|r| r.secret).map_err(|e| e.to_string())
}

fn fingerprint(p: &EkPresentation) -> String {
    EkPublic::from_tpm2b(&hex::decode(&p.ek_public).unwrap()).unwrap().fingerprint().unwrap()
}

fn ek_host(name: &str, address: &str, ek: Option<String>) -> HostSpec {
    HostSpec { tofu: false, ek_activate: true, ek, ..common::tofu_host(name, address) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_tpm_enrolment_end_to_end_and_refusals() {
    let d = tempfile::tempdir().unwrap();
    let pki = write_dev_pki(&d.path().join("pki"), &["localhost"]).unwrap();
    let a = common::start_agent(&common::agent_cfg(&d.path().join("a"), &pki.agent, "tpm = \"soft:seed=11\"")).await;
    let b = common::start_agent(&common::agent_cfg(&d.path().join("b"), &pki.agent, "tpm = \"soft:seed=12\"")).await;
    let v = common::start_verifier(d.path(), &pki).await;
    let v = &v.service;
    let pa = presentation(&a);
    let pb = presentation(&b);
    assert_ne!(fingerprint(&pa), fingerprint(&pb));

    // Registered for EK activation with the EK pinned: no AK is trusted until enrolment.
    let st = v.add_host(ek_host("h1", &a.addr.to_string(), Some(fingerprint(&pa)))).await.unwrap();
    assert_eq!(st.ak_source, None);
    let r = v.attest_now("h1").await.unwrap();
    assert_ne!(r.verdict, Verdict::Verified, "{r:?}");
    assert!(r.detail.unwrap_or_default().contains("no trusted AK"));

    // The whole exchange with the agent.
    let st = v.enrol("h1").await.unwrap();
    assert_eq!(st.ak_source.as_deref(), Some("ek_activated"));
    let e = st.spec.ak_enrolment.clone().unwrap();
    assert_eq!((e.ek_trust.as_str(), e.ek_kind.as_str()), ("pinned", "ecc-p256"));
    assert_eq!(e.ek_fingerprint, fingerprint(&pa));
    let j = serde_json::to_value(&st).unwrap();
    assert_eq!(j["ak_source"], "ek_activated");
    assert_eq!(j["spec"]["ak_enrolment"]["ek_trust"], "pinned");
    let r = v.attest_now("h1").await.unwrap();
    assert_eq!(r.verdict, Verdict::Verified, "{r:?}");

    // A registration may not claim an enrolment.
    let forged = HostSpec { ak_enrolment: st.spec.ak_enrolment.clone(), ..st.spec.clone() };
    let e = v.add_host(HostSpec { name: "forged".into(), ..forged }).await.unwrap_err();
    assert_eq!(e.0, StatusCode::BAD_REQUEST);

    // Two steps: a replayed activation response is refused.
    v.add_host(ek_host("h2", &a.addr.to_string(), Some(fingerprint(&pa)))).await.unwrap();
    let c = v.enrol_challenge("h2", &pa).unwrap();
    let secret = activate(&a, &c).unwrap();
    let resp = ChallengeResponse { challenge: c.challenge.clone(), secret };
    let st = v.enrol_response("h2", &resp).await.unwrap();
    assert_eq!(st.ak_source.as_deref(), Some("ek_activated"));
    let e = v.enrol_response("h2", &resp).await.unwrap_err();
    assert_eq!(e.0, StatusCode::FORBIDDEN);
    assert!(e.1.contains("already answered"), "{}", e.1);

    // A wrong secret is refused and uses the challenge up: the right one then fails too.
    let c = v.enrol_challenge("h2", &pa).unwrap();
    let right = activate(&a, &c).unwrap();
    let wrong = ChallengeResponse { challenge: c.challenge.clone(), secret: hex::encode([0u8; 32]) };
    let e = v.enrol_response("h2", &wrong).await.unwrap_err();
    assert!(e.1.contains("wrong secret"), "{}", e.1);
    let e = v.enrol_response("h2", &ChallengeResponse { challenge: c.challenge, secret: right }).await.unwrap_err();
    assert!(e.1.contains("unknown challenge"), "{}", e.1);

    // A challenge answered for another host is refused.
    v.add_host(ek_host("h3", &a.addr.to_string(), Some(fingerprint(&pa)))).await.unwrap();
    let c = v.enrol_challenge("h3", &pa).unwrap();
    let s = activate(&a, &c).unwrap();
    let e = v.enrol_response("h2", &ChallengeResponse { challenge: c.challenge, secret: s }).await.unwrap_err();
    assert!(e.1.contains("issued for host h3"), "{}", e.1);

    // An AK from another TPM, presented with this host's (trusted) EK: the credential
    // is bound to B's AK Name, so A's TPM (whose AK has another Name) cannot activate it,
    // and B's TPM lacks A's EK.
    let mixed = EkPresentation { ak_public: pb.ak_public.clone(), ..pa.clone() };
    let c = v.enrol_challenge("h3", &mixed).unwrap();
    let e = activate(&a, &c).unwrap_err();
    assert!(e.contains("integrity"), "{e}");
    assert!(activate(&b, &c).is_err());

    // Another TPM's EK where this one is pinned.
    let e = v.enrol_challenge("h3", &pb).unwrap_err();
    assert_eq!(e.0, StatusCode::FORBIDDEN);
    assert!(e.1.contains("not the EK pinned"), "{}", e.1);
    // Not pinned, not listed, no certificate: refused, naming the fingerprint to pin.
    v.add_host(ek_host("h4", &b.addr.to_string(), None)).await.unwrap();
    let e = v.enrol("h4").await.unwrap_err();
    assert_eq!(e.0, StatusCode::FORBIDDEN);
    assert!(e.1.contains(&fingerprint(&pb)) && e.1.contains("no certificate"), "{}", e.1);
    assert_eq!(v.host_status("h4").unwrap().ak_source, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_list_in_verifier_toml() {
    let d = tempfile::tempdir().unwrap();
    let pki = write_dev_pki(&d.path().join("pki"), &["localhost"]).unwrap();
    let a = common::start_agent(&common::agent_cfg(&d.path().join("a"), &pki.agent, "tpm = \"soft:seed=21\"")).await;
    let p = presentation(&a);
    // Listed by its TPM2B_PUBLIC (hex), as an operator might copy it.
    let listed = p.ek_public.clone();
    let v = common::start_verifier_with(d.path(), &pki, |c| c.ek.trusted = vec![listed], false).await;
    v.service.add_host(ek_host("h1", &a.addr.to_string(), None)).await.unwrap();
    let st = v.service.enrol("h1").await.unwrap();
    assert_eq!(st.spec.ak_enrolment.unwrap().ek_trust, "trusted_list");
    assert_eq!(v.service.attest_now("h1").await.unwrap().verdict, Verdict::Verified);
    // Changing the AK by hand drops the enrolment: the source says `registered`.
    let patch = imasnap_verifier_service::model::HostPatch { ak: st.spec.ak.clone(), ..Default::default() };
    let st = v.service.update_host("h1", patch).await.unwrap();
    assert_eq!(st.ak_source.as_deref(), Some("registered"));
    assert!(st.spec.ak_enrolment.is_none());
}

mod swtpm {
    use super::*;
    use imasnap_test_support::swtpm::Swtpm;
    use std::path::Path;

    /// EK (TCG RSA template), its certificate from NV 0x01c00002, and an AK, all by tpm2-tools.
    fn present(sw: &Swtpm, p: &Path) -> EkPresentation {
        sw.tools_ek_and_ak(p);
        sw.tools(p, &["tpm2_nvread", "0x01c00002", "-C", "o", "-o", "ekcert.der"]);
        let rd = |f: &str| std::fs::read(p.join(f)).unwrap();
        let cert = rd("ekcert.der");
        EkPresentation::new(&rd("ek.pub"), Some(imasnap_tpm::ekcert::trim_der(&cert)), &rd("ak.pub"))
    }

    fn activate(sw: &Swtpm, p: &Path, c: &imasnap_verifier_service::enrol::Challenge) -> String {
        let cred = imasnap_tpm::Credential {
            blob: hex::decode(&c.credential_blob).unwrap(),
            secret: hex::decode(&c.encrypted_secret).unwrap(),
        };
        hex::encode(sw.tools_activate(p, &cred.to_tpm2_tools()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ek_certificate_from_swtpm_localca_with_tpm2_tools() {
        let d = tempfile::tempdir().unwrap();
        let (ca, other_ca) = (d.path().join("ca"), d.path().join("other-ca"));
        let Some(sw) = Swtpm::for_test_with_ek_cert(&ca) else { return };
        // Another swtpm-localca (same subject names, other keys).
        let Some(_other) = Swtpm::for_test_with_ek_cert(&other_ca) else { return };
        let pki = write_dev_pki(&d.path().join("pki"), &["localhost"]).unwrap();
        let work = d.path().join("tools");
        std::fs::create_dir_all(&work).unwrap();
        let p = present(&sw, &work);
        let cas = |dir: &Path| vec![dir.join("issuercert.pem"), dir.join("swtpm-localca-rootca-cert.pem")];

        let v = common::start_verifier_with(&d.path().join("v1"), &pki, |c| c.ek.ca = cas(&ca), false).await;
        v.service.add_host(ek_host("sw", "127.0.0.1:9", None)).await.unwrap();
        let c = v.service.enrol_challenge("sw", &p).unwrap();
        assert_eq!(c.ek_trust, "ek_cert");
        let secret = activate(&sw, &work, &c);
        let st = v.service.enrol_response("sw", &ChallengeResponse { challenge: c.challenge, secret }).await.unwrap();
        assert_eq!(st.ak_source.as_deref(), Some("ek_activated"));
        let e = st.spec.ak_enrolment.unwrap();
        assert_eq!(e.ek_kind, "rsa-2048");
        assert!(e.ek_issuer.unwrap_or_default().contains("swtpm-localca"));

        // A verifier that trusts only the other CA refuses this EK certificate.
        let v2 = common::start_verifier_with(&d.path().join("v2"), &pki, |c| c.ek.ca = cas(&other_ca), false).await;
        v2.service.add_host(ek_host("sw", "127.0.0.1:9", None)).await.unwrap();
        let e = v2.service.enrol_challenge("sw", &p).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
        assert!(e.1.contains("does not verify"), "{}", e.1);
        assert_eq!(v2.service.host_status("sw").unwrap().ak_source, None);
    }
}
