//! AK enrolment inputs from `imasnap-tpm` on arbitrary bytes (the first byte picks):
//!
//! | byte % 4 | parsed with | asserted beyond "no panic" |
//! |---|---|---|
//! | 0 | `EkPublic::from_tpm2b` (an EK's TPM2B_PUBLIC, as an agent presents it) | re-marshals to the input; the Name is nameAlg + digest; errors name an offset inside it |
//! | 1 | `Credential::from_tpm2_tools` (a `tpm2_makecredential` file) | re-marshals to the input |
//! | 2 | the software TPM's TPM2_ActivateCredential on an arbitrary blob and secret | fails (a random blob has no valid outer HMAC) unless it was made for this TPM |
//! | 3 | `EkTrust::verify` of an arbitrary EK certificate against an empty trust store | always refused |
#![no_main]

use imasnap_tpm::ekcert::EkTrust;
use imasnap_tpm::{Credential, CredentialError, EkPublic, SoftTpm, Tpm};
use libfuzzer_sys::fuzz_target;

fn ek(b: &[u8]) {
    match EkPublic::from_tpm2b(b) {
        Ok(ek) => {
            assert_eq!(ek.to_tpm2b(), b, "TPM2B_PUBLIC round trip");
            assert_eq!(ek.name().len(), 2 + ek.name_alg().size());
            assert!(ek.fingerprint().is_ok());
        }
        Err(CredentialError::Wire(e)) => {
            assert!(e.offset() <= b.len(), "{e} names offset {} of a {}-byte input", e.offset(), b.len());
        }
        Err(_) => {}
    }
}

fn tools_file(b: &[u8]) {
    if let Ok(c) = Credential::from_tpm2_tools(b) {
        assert_eq!(c.to_tpm2_tools(), b, "credential file round trip");
    }
}

fn activate(b: &[u8]) {
    let Some((&n, rest)) = b.split_first() else { return };
    let cut = (n as usize).min(rest.len());
    let cred = Credential { blob: rest[..cut].to_vec(), secret: rest[cut..].to_vec() };
    let mut t = SoftTpm::new(1);
    assert!(t.activate_credential(&cred).is_err(), "a random credential activated");
}

fn cert(b: &[u8]) {
    let mut t = SoftTpm::new(1);
    let ek = t.endorsement_key().expect("the soft TPM has an EK").public;
    assert!(EkTrust::default().verify(b, &ek, 0).is_err());
    let _ = EkTrust::default().add_pem(&String::from_utf8_lossy(b), "fuzz");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 4 {
        0 => ek(rest),
        1 => tools_file(rest),
        2 => activate(rest),
        _ => cert(rest),
    }
});
