//! AK enrolment by credential activation on real TPMs (a private swtpm per test) and
//! the software TPM, cross-checked with tpm2-tools in both directions:
//! `tpm2_makecredential --tcti none` output activates through EsapiTpm, and our
//! pure-Rust TPM2_MakeCredential activates through `tpm2_activatecredential`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use imasnap_tpm::ekcert::EkTrust;
use imasnap_tpm::*;
use rand_core::OsRng;

const SECRET: &[u8] = b"imasnap enrolment secret 32 byte";

#[test]
fn soft_tpm_activates_only_its_own_credentials() {
    let mut a = SoftTpm::new(1);
    let mut b = SoftTpm::new(2);
    let ek_a = a.endorsement_key().unwrap();
    assert_eq!(ek_a.public.kind(), "ecc-p256");
    assert!(ek_a.cert.is_none());
    // Deterministic from the seed, different across seeds.
    assert_eq!(SoftTpm::new(1).endorsement_key().unwrap(), ek_a);
    assert_ne!(b.endorsement_key().unwrap().public, ek_a.public);

    let name_a = a.ak_public().name().unwrap();
    let cred = make_credential(&mut OsRng, &ek_a.public, &name_a, SECRET).unwrap();
    assert_eq!(a.activate_credential(&cred).unwrap(), SECRET);
    // B's TPM cannot unwrap A's seed.
    assert!(b.activate_credential(&cred).is_err());
    // A credential for A's EK but B's AK (an AK from another TPM) fails on A.
    let cred = make_credential(&mut OsRng, &ek_a.public, &b.ak_public().name().unwrap(), SECRET).unwrap();
    let e = a.activate_credential(&cred).unwrap_err();
    assert!(e.to_string().contains("integrity"), "{e}");
}

#[cfg(feature = "esapi")]
mod swtpm {
    use super::*;
    use imasnap_test_support::swtpm::Swtpm;
    use std::path::Path;
    use std::process::Command;

    fn open(sw: &Swtpm) -> EsapiTpm {
        EsapiTpm::open(&sw.tcti(), AkSource::default()).unwrap_or_else(|e| panic!("open {}: {e}", sw.tcti()))
    }

    fn tmp(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("imasnap-cred-{tag}-")).tempdir().unwrap()
    }

    #[test]
    fn our_credentials_activate_on_swtpm_and_bind_the_ak() {
        let Some(sw) = Swtpm::for_test() else { return };
        let Some(other) = Swtpm::for_test() else { return };
        let mut t = open(&sw);
        let mut o = open(&other);
        let ek = t.endorsement_key().unwrap();
        // swtpm's default EK: the TCG RSA 2048 template.
        assert_eq!(ek.public.kind(), "rsa-2048");
        assert_eq!(t.endorsement_key().unwrap().public, ek.public, "the EK is the same key every time");
        let name = t.ak_public().name().unwrap();
        let cred = make_credential(&mut OsRng, &ek.public, &name, SECRET).unwrap();
        assert_eq!(t.activate_credential(&cred).unwrap(), SECRET);
        // Repeated activations leave no transient objects or sessions behind (3 slots).
        for _ in 0..4 {
            let c = make_credential(&mut OsRng, &ek.public, &name, &[7; 20]).unwrap();
            assert_eq!(t.activate_credential(&c).unwrap(), vec![7; 20]);
        }
        // The other TPM cannot unwrap it.
        assert!(o.activate_credential(&cred).is_err());
        // An AK from another TPM: a credential for this EK and the other TPM's AK Name
        // fails on this TPM (its loaded AK has another Name) and on the other (other EK).
        let foreign = make_credential(&mut OsRng, &ek.public, &o.ak_public().name().unwrap(), SECRET).unwrap();
        let e = t.activate_credential(&foreign).unwrap_err();
        assert!(e.to_string().contains("ActivateCredential"), "{e}");
        assert!(o.activate_credential(&foreign).is_err());
    }

    #[test]
    fn tpm2_makecredential_output_activates_through_esapi() {
        let Some(sw) = Swtpm::for_test() else { return };
        let mut t = open(&sw);
        let d = tmp("mk");
        let ek = t.endorsement_key().unwrap();
        std::fs::write(d.path().join("ek.pub"), ek.public.to_tpm2b()).unwrap();
        std::fs::write(d.path().join("secret"), SECRET).unwrap();
        let name = hex::encode(t.ak_public().name().unwrap());
        // No TPM: tpm2-tools computes the credential with OpenSSL.
        let out = Command::new("tpm2_makecredential")
            .args(["--tcti", "none", "-u", "ek.pub", "-s", "secret", "-n", &name, "-o", "cred.out"])
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cred = Credential::from_tpm2_tools(&std::fs::read(d.path().join("cred.out")).unwrap()).unwrap();
        assert_eq!(t.activate_credential(&cred).unwrap(), SECRET);
    }

    #[test]
    fn our_credentials_activate_through_tpm2_activatecredential() {
        let Some(sw) = Swtpm::for_test() else { return };
        let d = tmp("act");
        let p = d.path();
        // tpm2-tools' own EK and AK, saved as contexts (swtpm has no resource manager).
        sw.tools_ek_and_ak(p);
        let ek_pub = std::fs::read(p.join("ek.pub")).unwrap();
        let ek = EkPublic::from_tpm2b(&ek_pub).unwrap();
        let ak_name = std::fs::read(p.join("ak.name")).unwrap();
        let cred = make_credential(&mut OsRng, &ek, &ak_name, SECRET).unwrap();
        assert_eq!(sw.tools_activate(p, &cred.to_tpm2_tools()), SECRET);
        // And the wrong AK Name is refused by the TPM itself.
        let mut bad_name = ak_name.clone();
        let last = bad_name.len() - 1;
        bad_name[last] ^= 1;
        let cred = make_credential(&mut OsRng, &ek, &bad_name, SECRET).unwrap();
        std::fs::write(p.join("bad.out"), cred.to_tpm2_tools()).unwrap();
        sw.tools(p, &["tpm2_startauthsession", "--policy-session", "-S", "s2.ctx"]);
        sw.tools(p, &["tpm2_policysecret", "-S", "s2.ctx", "-c", "e"]);
        let out = Command::new("tpm2_activatecredential")
            .args(["-c", "ak.ctx", "-C", "ek.ctx", "-i", "bad.out", "-o", "bad.secret", "-P", "session:s2.ctx"])
            .current_dir(p)
            .env("TPM2TOOLS_TCTI", sw.tcti())
            .output()
            .unwrap();
        assert!(!out.status.success(), "a credential for another Name must not activate");
    }

    #[test]
    fn ek_certificates_from_swtpm_localca() {
        let d = tmp("ca");
        let (ca_a, ca_b) = (d.path().join("ca-a"), d.path().join("ca-b"));
        let Some(sw) = Swtpm::for_test_with_ek_cert(&ca_a) else { return };
        let Some(sw_b) = Swtpm::for_test_with_ek_cert(&ca_b) else { return };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let trust = |dir: &Path| {
            let mut t = EkTrust::default();
            for f in ["issuercert.pem", "swtpm-localca-rootca-cert.pem"] {
                t.add_pem(&std::fs::read_to_string(dir.join(f)).unwrap(), f).unwrap();
            }
            t
        };
        let mut t = open(&sw);
        let ek = t.endorsement_key().unwrap();
        let cert = ek.cert.clone().expect("swtpm_setup --create-ek-cert writes NV 0x01c00002");
        let issuer = trust(&ca_a).verify(&cert, &ek.public, now).unwrap();
        assert!(issuer.contains("swtpm-localca"), "{issuer}");
        // Another CA (same subject name, other key) is refused: the signature fails.
        let e = trust(&ca_b).verify(&cert, &ek.public, now).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        // No CA configured at all.
        let e = EkTrust::default().verify(&cert, &ek.public, now).unwrap_err();
        assert!(e.to_string().contains("not among"), "{e}");
        // The certificate of another TPM's EK, presented with this EK: refused.
        let ek_b = open(&sw_b).endorsement_key().unwrap();
        let e = trust(&ca_b).verify(ek_b.cert.as_ref().unwrap(), &ek.public, now).unwrap_err();
        assert!(e.to_string().contains("not the EK"), "{e}");
        // Still activates with the certified EK.
        let cred = make_credential(&mut OsRng, &ek.public, &t.ak_public().name().unwrap(), SECRET).unwrap();
        assert_eq!(t.activate_credential(&cred).unwrap(), SECRET);
    }
}
