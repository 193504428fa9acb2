//! ima-sig at the service level, in one process over HTTPS with mutual TLS: the agent's
//! kernel model runs `ima_template = "ima-sig"` and measures files with an evmctl-style
//! `security.ima` v2 signature (RSA PKCS#1 v1.5 and ECDSA P-256 over the file digest).
//!
//! - a signature that does not verify against the policy's key flags the host and the
//!   failure names the record index, the path and the reason; good signatures pass;
//! - keys measured into a keyring the policy lists are learned (Keylime semantics), kept
//!   in SQLite across rounds and a verifier restart, and verify later signatures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_agent_server::devpki::{write_dev_pki, DevPkiFiles};
use imasnap_agent_server::service as agent;
use imasnap_policy::sig::encode_v2;
use imasnap_verifier_service::model::{HostSpec, HostState, Verdict, VerdictRow};
use imasnap_verifier_service::service::Running;
use imasnap_verifier_service::Verifier;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use rsa::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

mod common;
use common::start_verifier;

/// Kernel `HASH_ALGO_SHA256` in the signature header.
const HASH_SHA256: u8 = 4;

fn keyid(spki_der: &[u8]) -> u32 {
    imasnap_policy::keys::parse_keys(spki_der, "k").unwrap()[0].keyid
}

struct Rsa {
    sk: rsa::RsaPrivateKey,
    der: Vec<u8>,
}

impl Rsa {
    fn new() -> Self {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let sk = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let der = sk.to_public_key().to_public_key_der().unwrap().as_bytes().to_vec();
        Self { sk, der }
    }
    /// evmctl `ima_sign` (v2): RSA PKCS#1 v1.5 with the DigestInfo of the file hash.
    fn xattr(&self, digest: &[u8]) -> Vec<u8> {
        let s = self.sk.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), digest).unwrap();
        encode_v2(HASH_SHA256, keyid(&self.der), &s)
    }
}

fn ec(seed: u8) -> (p256::ecdsa::SigningKey, Vec<u8>) {
    let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let der = sk.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec();
    (sk, der)
}

/// evmctl v2 with an EC key: DER ECDSA signature over the file hash.
fn ec_xattr(sk: &p256::ecdsa::SigningKey, kid: u32, digest: &[u8]) -> Vec<u8> {
    let s: p256::ecdsa::Signature = sk.sign_prehash(digest).unwrap();
    encode_v2(HASH_SHA256, kid, s.to_der().as_bytes())
}

fn policy(verification_keys: &[&[u8]], keyrings: serde_json::Value) -> String {
    use base64ct::Encoding;
    let vk = if verification_keys.is_empty() {
        String::new()
    } else {
        serde_json::json!({
            "pubkeys": verification_keys.iter().map(|k| base64ct::Base64::encode_string(k)).collect::<Vec<_>>(),
            "keyids": verification_keys.iter().map(|k| keyid(k)).collect::<Vec<_>>(),
        })
        .to_string()
    };
    serde_json::json!({
        "meta": {"version": 1}, "release": 0, "digests": {}, "excludes": [], "keyrings": keyrings,
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": null},
        "ima-buf": {}, "verification-keys": vk,
    })
    .to_string()
}

struct Env {
    _d: tempfile::TempDir,
    dir: std::path::PathBuf,
    pki: DevPkiFiles,
    agent: agent::Running,
    verifier: Option<Running>,
}

impl Env {
    async fn new(policy: String) -> Self {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let pki = write_dev_pki(&dir.join("pki"), &["localhost"]).unwrap();
        let acfg = common::agent_cfg(&dir, &pki.agent, "test_endpoints = true\nima_template = \"ima-sig\"");
        let a = common::start_agent(&acfg).await;
        let v = start_verifier(&dir, &pki).await;
        v.service
            .add_host(HostSpec { policy: Some(policy), ..common::tofu_host("h1", &a.addr.to_string()) })
            .await
            .unwrap();
        Self { _d: d, dir, pki, agent: a, verifier: Some(v) }
    }

    fn v(&self) -> &std::sync::Arc<Verifier> {
        &self.verifier.as_ref().unwrap().service
    }

    /// Measures a file with its xattr; returns the record's global index.
    fn measure(&self, path: &str, content: &[u8], xattr: Option<&[u8]>) -> u64 {
        let mut h = self.agent.service.lock().unwrap();
        let m = h.metrics();
        assert!(h.measure(path.as_bytes(), &Sha256::digest(content), xattr).unwrap());
        m.next_index + m.live_records
    }

    async fn round(&self) -> VerdictRow {
        self.v().attest_now("h1").await.unwrap()
    }
}

fn verified(r: &VerdictRow) {
    assert_eq!(r.verdict, Verdict::Verified, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ima_sig_is_flagged_with_index_path_and_reason() {
    let rsa_key = Rsa::new();
    let (ec_sk, ec_der) = ec(5);
    let env = Env::new(policy(&[&rsa_key.der, &ec_der], serde_json::json!({}))).await;
    let ec_id = keyid(&ec_der);

    // Good RSA and ECDSA signatures: allowed by signature alone (no digest is listed).
    let d = Sha256::digest(b"rsa tool");
    env.measure("/usr/bin/rsa-tool", b"rsa tool", Some(&rsa_key.xattr(&d)));
    let d = Sha256::digest(b"ec tool");
    env.measure("/usr/bin/ec-tool", b"ec tool", Some(&ec_xattr(&ec_sk, ec_id, &d)));
    let r = env.round().await;
    verified(&r);
    assert!(r.policy_failures.is_empty(), "{r:?}");

    // A signature by the configured key over other content (the file was changed after
    // signing): the host is flagged, the failure names index, path and reason.
    let signed_for = Sha256::digest(b"original");
    let bad = env.measure("/usr/bin/changed", b"changed", Some(&rsa_key.xattr(&signed_for)));
    // Another good one in the same round is not reported.
    let d = Sha256::digest(b"fine");
    env.measure("/usr/bin/fine", b"fine", Some(&ec_xattr(&ec_sk, ec_id, &d)));
    let r = env.round().await;
    assert_eq!(r.verdict, Verdict::PolicyViolation, "{r:?}");
    assert_eq!(r.record, Some(bad), "{r:?}");
    assert_eq!(r.policy_failures.len(), 1, "{r:?}");
    let f = &r.policy_failures[0];
    assert_eq!(f["index"], bad);
    assert_eq!(f["path"], "/usr/bin/changed");
    assert_eq!(f["reason"], "bad-signature");
    assert!(f["detail"].as_str().unwrap().contains("does not verify"), "{f}");
    let detail = r.detail.as_deref().unwrap();
    assert!(detail.contains("/usr/bin/changed") && detail.contains("bad-signature"), "{detail}");
    let st = env.v().host_status("h1").unwrap();
    assert_eq!(st.status, HostState::PolicyViolation);
    assert_eq!(st.alert.as_ref().unwrap().record, Some(bad));

    // An ECDSA signature from another key under the configured key's id: also flagged.
    let (other, _) = ec(6);
    let d = Sha256::digest(b"forged");
    let forged = env.measure("/usr/bin/forged", b"forged", Some(&ec_xattr(&other, ec_id, &d)));
    let r = env.round().await;
    assert_eq!(r.verdict, Verdict::PolicyViolation, "{r:?}");
    assert_eq!(r.record, Some(forged));
    assert_eq!(r.policy_failures[0]["reason"], "bad-signature");
    assert_eq!(r.policy_failures[0]["path"], "/usr/bin/forged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_keyring_keys_survive_rounds_and_verifier_restarts() {
    let (sk, der) = ec(9);
    let kid = keyid(&der);
    let ring = serde_json::json!({ ".ima": [hex::encode(Sha256::digest(&der))] });
    let mut env = Env::new(policy(&[], ring)).await;

    // Before the key is measured, its signatures are not trusted.
    let d = Sha256::digest(b"early");
    let early = env.measure("/usr/bin/early", b"early", Some(&ec_xattr(&sk, kid, &d)));
    let r = env.round().await;
    assert_eq!(r.verdict, Verdict::PolicyViolation, "{r:?}");
    assert_eq!(r.record, Some(early));
    assert_eq!(r.policy_failures[0]["reason"], "not-in-policy");
    assert!(env.v().host_status("h1").unwrap().learned_keys.is_empty());

    // The kernel measures the key into .ima (ima-buf): learned.
    assert!(env.agent.service.lock().unwrap().measure_buffer(b".ima", &der).unwrap());
    verified(&env.round().await);
    let st = env.v().host_status("h1").unwrap();
    assert_eq!(st.learned_keys.len(), 1, "{st:?}");
    assert_eq!(st.learned_keys[0].keyid, format!("{kid:08x}"));
    assert!(st.learned_keys[0].source.contains(".ima"), "{st:?}");

    // A later round: the learned key verifies a new signature.
    let d = Sha256::digest(b"app");
    env.measure("/usr/bin/app", b"app", Some(&ec_xattr(&sk, kid, &d)));
    verified(&env.round().await);

    // The verifier restarts: the key comes back from SQLite and still verifies.
    env.verifier.take().unwrap().stop().await;
    env.verifier = Some(start_verifier(&env.dir, &env.pki).await);
    assert_eq!(env.v().host_status("h1").unwrap().learned_keys.len(), 1);
    let d = Sha256::digest(b"after restart");
    env.measure("/usr/bin/after-restart", b"after restart", Some(&ec_xattr(&sk, kid, &d)));
    let r = env.round().await;
    verified(&r);
    assert_eq!(r.mode.as_deref(), Some("incremental"), "resumed, the key was not re-learned by a replay: {r:?}");
    // A key that was never measured into the keyring is still not trusted.
    let (other, other_der) = ec(10);
    let d = Sha256::digest(b"other");
    let bad = env.measure("/usr/bin/other", b"other", Some(&ec_xattr(&other, keyid(&other_der), &d)));
    let r = env.round().await;
    assert_eq!(r.verdict, Verdict::PolicyViolation, "{r:?}");
    assert_eq!(r.record, Some(bad));
}
