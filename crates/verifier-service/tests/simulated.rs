//! Issue 16, safe defaults: evidence from a simulated back end (the kernel model, the soft
//! TPM) says so in its header, and the verifier refuses it for a host that is not
//! registered as simulated, naming the header field. Registered as simulated, the same
//! agent verifies; the flag is stored with the host and survives a verifier restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent_server::devpki::write_dev_pki;
use imasnap_verifier_service::model::{HostPatch, HostSpec, HostState, Verdict};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_evidence_is_refused_unless_the_host_is_registered_as_simulated() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
    // The simulation, chosen explicitly (common::agent_cfg says backend = "model", tpm = "soft").
    let acfg = common::agent_cfg(dir, &pki.agent, "");
    let a = common::start_agent(&acfg).await;
    a.service.lock().unwrap().add_records(20).unwrap();
    let v = common::start_verifier(dir, &pki).await;
    let real = HostSpec { simulated: false, ..common::tofu_host("h1", &a.addr.to_string()) };
    v.service.add_host(real).await.unwrap();

    let row = v.service.attest_now("h1").await.unwrap();
    assert_eq!(row.verdict, Verdict::Rejected, "{row:?}");
    assert_eq!(row.reason.as_deref(), Some("simulated_evidence"), "{row:?}");
    let detail = row.detail.clone().unwrap();
    assert!(detail.contains("`simulated`") && detail.contains("[kernel_model, soft_tpm]"), "{detail}");
    assert!(detail.contains("not registered as simulated"), "{detail}");
    let st = v.service.host_status("h1").unwrap();
    assert_eq!(st.status, HostState::Rejected);
    assert!(!st.spec.simulated);
    assert_eq!(st.ak_source, None, "nothing enrolled from refused evidence");

    // Registered as simulated: the same agent verifies.
    v.service.update_host("h1", HostPatch { simulated: Some(true), ..Default::default() }).await.unwrap();
    let row = v.service.attest_now("h1").await.unwrap();
    assert_eq!(row.verdict, Verdict::Verified, "{row:?}");
    let j = serde_json::to_value(v.service.host_status("h1").unwrap()).unwrap();
    assert_eq!(j["spec"]["simulated"], true, "status shows it: {j}");

    // Stored with the host: a restarted verifier still knows it.
    v.stop().await;
    let v = common::start_verifier(dir, &pki).await;
    assert!(v.service.host_status("h1").unwrap().spec.simulated);
    a.service.lock().unwrap().add_records(5).unwrap();
    assert_eq!(v.service.attest_now("h1").await.unwrap().verdict, Verdict::Verified);
    v.stop().await;
    a.stop().await;
}

/// A registration without the field (as stored before it existed) reads as a real host.
#[test]
fn host_spec_without_simulated_is_a_real_host() {
    let s: HostSpec = serde_json::from_str(r#"{"name":"h","address":"127.0.0.1:1","tofu":true}"#).unwrap();
    assert!(!s.simulated);
    let p: HostPatch = serde_json::from_str(r#"{"simulated":true}"#).unwrap();
    let mut s2 = s.clone();
    s2.apply(p);
    assert!(s2.simulated);
    assert!(
        serde_json::from_str::<HostSpec>(r#"{"name":"h","address":"127.0.0.1:1","tofu":true,"simulated":1}"#).is_err()
    );
}
