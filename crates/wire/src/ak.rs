//! AK public keys as text: `ak.pub` (hex of a marshalled TPM2B_PUBLIC), `ak.pem`
//! (SubjectPublicKeyInfo PEM), or either one where a user or an API supplies it.

use crate::{Part, WireError, MAX_AK_TEXT};
use imasnap_tpm::AkPublic;

/// `ak.pub`: hex TPM2B_PUBLIC (surrounding whitespace allowed: files end in a newline).
pub fn from_tpm2b_hex(text: &str) -> Result<AkPublic, WireError> {
    from_hex_as(text, Part::AkPub)
}

/// `ak.pem`.
pub fn from_pem(text: &str) -> Result<AkPublic, WireError> {
    from_pem_as(text, Part::AkPem)
}

fn from_hex_as(text: &str, part: Part) -> Result<AkPublic, WireError> {
    limit(text.len(), part)?;
    let b = hex::decode(text.trim()).map_err(|e| part.err(format!("not PEM and not hex: {e}")))?;
    AkPublic::from_tpm2b_public(&b).map_err(|e| part.err(e.to_string()))
}

fn from_pem_as(text: &str, part: Part) -> Result<AkPublic, WireError> {
    limit(text.len(), part)?;
    AkPublic::from_pem(text).map_err(|e| part.err(e.to_string()))
}

fn limit(n: usize, part: Part) -> Result<(), WireError> {
    if n > MAX_AK_TEXT {
        return Err(part.err(format!("{n} bytes, limit {MAX_AK_TEXT}")));
    }
    Ok(())
}

/// AK text of either form: PEM when it holds a PEM header, hex TPM2B_PUBLIC otherwise.
pub fn parse_text(text: &str) -> Result<AkPublic, WireError> {
    if text.contains("-----BEGIN") {
        from_pem_as(text, Part::Ak)
    } else {
        from_hex_as(text, Part::Ak)
    }
}

/// [`parse_text`] over bytes (a file's content), refusing non-UTF-8 and oversize input
/// before looking at it.
pub fn parse_bytes(b: &[u8]) -> Result<AkPublic, WireError> {
    limit(b.len(), Part::Ak)?;
    let text = std::str::from_utf8(b).map_err(|e| Part::Ak.err(format!("not text: {e}")))?;
    parse_text(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imasnap_tpm::{SoftTpm, Tpm};

    #[test]
    fn finding_9_ak_text_both_forms_round_trip() {
        let ak = SoftTpm::new(7).ak_public();
        let pem = ak.to_pem();
        let hex = format!("{}\n", hex::encode(ak.public_area().unwrap().to_tpm2b()));
        for k in [parse_text(&pem).unwrap(), parse_text(&hex).unwrap(), from_pem(&pem).unwrap()] {
            assert_eq!(k.to_pem(), pem);
        }
        assert_eq!(from_tpm2b_hex(&hex).unwrap().to_pem(), pem);
        assert_eq!(parse_bytes(pem.as_bytes()).unwrap().to_pem(), pem);
    }

    #[test]
    fn finding_9_ak_text_rejections() {
        assert_eq!(parse_text("zz").unwrap_err().part, Part::Ak);
        assert!(parse_text("zz").unwrap_err().detail.contains("not PEM and not hex"));
        assert_eq!(from_tpm2b_hex("0001").unwrap_err().part, Part::AkPub);
        assert!(parse_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
        assert!(from_pem("junk").is_err());
        assert!(parse_bytes(&[0xff, 0xfe]).unwrap_err().detail.contains("not text"));
        let big = "0".repeat(MAX_AK_TEXT + 2);
        assert!(parse_text(&big).unwrap_err().detail.contains("limit"));
        assert!(parse_bytes(big.as_bytes()).unwrap_err().detail.contains("limit"));
    }
}
