//! The evidence bundle's own files (docs/SNAPSHOTS.md "Evidence bundle"): `bundle.json`
//! and `quote.json`. `manifest.json` is [`crate::manifest`], the AK files [`crate::ak`].

use crate::{hex_bytes, json, Part, WireError, BUNDLE_FORMAT, MAX_JSON};
use imasnap_log::{HashAlgo, PcrValue};
use imasnap_tpm::Quote;
use serde::{Deserialize, Serialize};

/// `bundle.json`: the bundle's index. Every field is a claim (the verifier uses its own
/// nonce, and checks the rest against the manifest and the replay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleIndex {
    pub format: String,
    pub banks: Vec<HashAlgo>,
    pub pcr: u32,
    pub live_first_index: u64,
    /// The nonce the agent says it was asked for (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
}

impl BundleIndex {
    pub fn new(banks: Vec<HashAlgo>, pcr: u32, live_first_index: u64, nonce: &[u8]) -> Self {
        Self { format: BUNDLE_FORMAT.into(), banks, pcr, live_first_index, nonce: nonce.to_vec() }
    }

    /// Parses `bundle.json` strictly (size limit, no unknown field, this format).
    pub fn from_json(b: &[u8]) -> Result<Self, WireError> {
        let j: Self = json(b, Part::Bundle, MAX_JSON)?;
        if j.format != BUNDLE_FORMAT {
            return Err(Part::Bundle.err(format!("format {:?}, want {BUNDLE_FORMAT:?}", j.format)));
        }
        Ok(j)
    }

    pub fn to_json_pretty(&self) -> Vec<u8> {
        crate::pretty(self)
    }
}

/// `quote.json`: a TPM quote plus the nonce the agent says it answers (ignored by the
/// verifier, which checks against its own challenge).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "QuoteFileJson", into = "QuoteFileJson")]
pub struct QuoteFile {
    pub quote: Quote,
    pub nonce: Option<Vec<u8>>,
}

/// The JSON shape; fields in the order the files have always had (sorted).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteFileJson {
    #[serde(with = "hex_bytes")]
    attest: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    pcr_values: Vec<PcrEntry>,
    #[serde(with = "hex_bytes")]
    signature: Vec<u8>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PcrEntry {
    bank: HashAlgo,
    pcr: u32,
    value: String,
}

/// The PCR values beside a quote are hints, but a list that names a (bank, PCR) twice is
/// malformed: which entry counts would be up to the reader.
pub fn check_pcr_values(values: &[(HashAlgo, u32, PcrValue)]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, (bank, pcr, _)) in values.iter().enumerate() {
        if !seen.insert((bank.name(), *pcr)) {
            return Err(format!("pcr_values[{i}]: {bank} PCR {pcr} is listed twice"));
        }
    }
    Ok(())
}

impl TryFrom<QuoteFileJson> for QuoteFile {
    type Error = String;
    fn try_from(j: QuoteFileJson) -> Result<Self, String> {
        let mut pcr_values = Vec::with_capacity(j.pcr_values.len());
        for (i, e) in j.pcr_values.into_iter().enumerate() {
            crate::manifest::check_hex(&format!("pcr_values[{i}].value"), &e.value, e.bank.size())?;
            let v = PcrValue::from_hex(e.bank, &e.value).map_err(|d| format!("pcr_values[{i}]: {d}"))?;
            pcr_values.push((e.bank, e.pcr, v));
        }
        check_pcr_values(&pcr_values)?;
        let nonce = j.nonce.map(|n| hex::decode(&n).map_err(|e| format!("nonce: {e}"))).transpose()?;
        Ok(Self { quote: Quote { attest: j.attest, signature: j.signature, pcr_values }, nonce })
    }
}

impl From<QuoteFile> for QuoteFileJson {
    fn from(q: QuoteFile) -> Self {
        Self {
            attest: q.quote.attest,
            nonce: q.nonce.map(hex::encode),
            pcr_values: q
                .quote
                .pcr_values
                .iter()
                .map(|(bank, pcr, v)| PcrEntry { bank: *bank, pcr: *pcr, value: v.to_hex() })
                .collect(),
            signature: q.quote.signature,
        }
    }
}

impl QuoteFile {
    pub fn new(quote: Quote, nonce: &[u8]) -> Self {
        Self { quote, nonce: Some(nonce.to_vec()) }
    }

    /// Parses `quote.json` strictly.
    pub fn from_json(b: &[u8]) -> Result<Self, WireError> {
        json(b, Part::Quote, MAX_JSON)
    }

    pub fn to_json_pretty(&self) -> Vec<u8> {
        crate::pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = r#"{ "format": "imasnap-bundle/1", "banks": ["sha1", "sha256"], "pcr": 10,
                  "live_first_index": 5000, "nonce": "0a0b" }"#;

    #[test]
    fn finding_9_bundle_round_trip() {
        let b = BundleIndex::from_json(BUNDLE.as_bytes()).unwrap();
        assert_eq!(b, BundleIndex::new(vec![HashAlgo::Sha1, HashAlgo::Sha256], 10, 5000, &[10, 11]));
        let out = b.to_json_pretty();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\n  \"format\": \"imasnap-bundle/1\",\n  \"banks\": [\n    \"sha1\",\n    \"sha256\"\n  ],\n  \"pcr\": 10,\n  \"live_first_index\": 5000,\n  \"nonce\": \"0a0b\"\n}\n"
        );
        assert_eq!(BundleIndex::from_json(&out).unwrap(), b);
    }

    #[test]
    fn finding_9_bundle_rejections() {
        for (from, to, want) in [
            ("imasnap-bundle/1", "imasnap-bundle/2", "want"),
            ("\"0a0b\"", "\"0a0\"", "Odd number"),
            ("\"pcr\"", "\"x\": 1, \"pcr\"", "unknown field"),
            ("\"sha1\",", "\"md5\",", "unknown variant"),
        ] {
            let e = BundleIndex::from_json(BUNDLE.replacen(from, to, 1).as_bytes()).unwrap_err();
            assert_eq!(e.part, Part::Bundle);
            assert!(e.detail.contains(want), "{to}: {e}");
        }
        assert!(BundleIndex::from_json(&vec![b' '; MAX_JSON + 1]).unwrap_err().detail.contains("limit"));
    }

    fn quote() -> QuoteFile {
        let v = PcrValue::from_hex(HashAlgo::Sha256, &"ab".repeat(32)).unwrap();
        QuoteFile::new(
            Quote { attest: vec![1, 2], signature: vec![3], pcr_values: vec![(HashAlgo::Sha256, 10, v)] },
            &[9],
        )
    }

    #[test]
    fn finding_9_quote_round_trip_keeps_the_old_bytes() {
        let q = quote();
        let b = q.to_json_pretty();
        // The bytes the agent wrote before (serde_json::Value, keys sorted).
        let mut old = serde_json::to_value(&q.quote).unwrap();
        old.as_object_mut().unwrap().insert("nonce".into(), "09".into());
        let mut old_b = serde_json::to_vec_pretty(&old).unwrap();
        old_b.push(b'\n');
        assert_eq!(String::from_utf8(b.clone()).unwrap(), String::from_utf8(old_b).unwrap());
        assert_eq!(QuoteFile::from_json(&b).unwrap(), q);
        // Without a nonce (the serde form of a bare Quote) it parses too.
        let bare = serde_json::to_vec(&q.quote).unwrap();
        assert_eq!(QuoteFile::from_json(&bare).unwrap().quote, q.quote);
    }

    #[test]
    fn finding_9_quote_rejections() {
        let good = String::from_utf8(quote().to_json_pretty()).unwrap();
        for (from, to, want) in [
            ("\"attest\"", "\"extra\": 0, \"attest\"", "unknown field"),
            ("\"attest\": \"0102\"", "\"attest\": \"010\"", "Odd number"),
            (&"ab".repeat(32), &"ab".repeat(31), "pcr_values[0].value"),
            (&"ab".repeat(32), &"AB".repeat(32), "lowercase"),
            ("\"nonce\": \"09\"", "\"nonce\": \"x\"", "nonce"),
            ("\"bank\"", "\"b\": 1, \"bank\"", "unknown field"),
        ] {
            let e = QuoteFile::from_json(good.replacen(from, to, 1).as_bytes()).unwrap_err();
            assert_eq!(e.part, Part::Quote);
            assert!(e.detail.contains(want), "{to}: {e}");
        }
        assert!(QuoteFile::from_json(b"[]").is_err());
    }
}
