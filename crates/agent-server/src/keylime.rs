//! Keylime's agent pull API (v2), so an unmodified Keylime verifier can attest an imasnap
//! host: `GET /version`, `GET /v2.N/quotes/integrity` and `GET /v2.N/quotes/identity`,
//! served on the agent's mTLS listener when `[keylime] enabled = true` (docs/KEYLIME.md).
//!
//! The answer is what Keylime 7.x's verifier parses (`cloud_verifier_common.
//! process_quote_response`, `tpm_main.Tpm.check_quote`, `tpm_util.checkquote`):
//! `quote` = `r` + base64(TPMS_ATTEST) `:` base64(TPMT_SIGNATURE) `:` base64(PCR blob in
//! tpm2-tools' `tpm2_quote -o` memory layout). Like the rust-keylime agent, PCR 16 is
//! reset and extended with H(`pubkey`) before every quote and always quoted, because the
//! verifier checks that binding on every round. `pubkey` is the AK's public key in PEM:
//! imasnap has no Keylime payload key (NK), and delivers no payloads.
//!
//! The measurement list is the ASCII form of the *stitched* log (snapshots, then the live
//! list) from absolute record `ima_ml_entry`, so Keylime's offsets stay valid after the
//! kernel's list has been trimmed.

use crate::host::{count_records, HostError, HostKernel};
use crate::http::param;
use base64ct::{Base64, Encoding as _};
use imasnap_agent::Agent;
use imasnap_log::{HashAlgo, PcrValue};
use imasnap_tpm::{compute_pcr_digest, AkKind, AkPublic, Attest, PcrSelection, Quote, SigAlg, Signature};
use serde::{Deserialize, Serialize};
use std::io::Read as _;

/// Keylime binds its agent's key into this PCR (`config.TPM_DATA_PCR`).
pub const DATA_PCR: u32 = 16;
/// Keylime's nonces are 20 alphanumeric characters; the rust-keylime agent allows 64.
pub const MAX_NONCE: usize = 64;
/// API versions answered unless `api_versions` says otherwise: the pull-mode quote API,
/// unchanged across these minor versions.
pub const DEFAULT_API_VERSIONS: [&str; 2] = ["2.1", "2.2"];

fn d_versions() -> Vec<String> {
    DEFAULT_API_VERSIONS.iter().map(|s| s.to_string()).collect()
}
fn d_hash() -> String {
    "sha256".into()
}

/// `[keylime]` in agent.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeylimeToml {
    /// Serve Keylime's agent API on the agent's listener (off by default).
    #[serde(default)]
    pub enabled: bool,
    /// The `2.N` versions answered (`GET /version` lists them; others get 400).
    #[serde(default = "d_versions")]
    pub api_versions: Vec<String>,
    /// The PCR bank quoted and reported as `hash_alg`; must be the AK's signing hash,
    /// since Keylime checks both against this one name.
    #[serde(default = "d_hash")]
    pub hash_alg: String,
}

impl Default for KeylimeToml {
    fn default() -> Self {
        Self { enabled: false, api_versions: d_versions(), hash_alg: d_hash() }
    }
}

/// `[keylime]` checked and reduced to what the server loop needs (Copy, like `Serve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeylimeSettings {
    pub enabled: bool,
    /// Bit n set: version `2.n` is answered.
    minors: u32,
    pub hash: HashAlgo,
}

impl Default for KeylimeSettings {
    fn default() -> Self {
        Self { enabled: false, minors: 0b110, hash: HashAlgo::Sha256 }
    }
}

impl KeylimeToml {
    pub fn settings(&self) -> Result<KeylimeSettings, String> {
        let mut minors = 0u32;
        for v in &self.api_versions {
            match parse_version(v) {
                Some(n) => minors |= 1 << n,
                None => return Err(format!("api_versions: {v:?} is not a Keylime 2.N version (N 0-31)")),
            }
        }
        if minors == 0 {
            return Err("api_versions is empty".into());
        }
        let hash = match HashAlgo::from_name(&self.hash_alg) {
            Some(h @ (HashAlgo::Sha1 | HashAlgo::Sha256 | HashAlgo::Sha384 | HashAlgo::Sha512)) => h,
            _ => return Err(format!("hash_alg {:?}: use sha1, sha256, sha384 or sha512", self.hash_alg)),
        };
        Ok(KeylimeSettings { enabled: self.enabled, minors, hash })
    }
}

/// `2.N` → N.
fn parse_version(v: &str) -> Option<u32> {
    let n = v.strip_prefix("2.")?;
    if n.is_empty() || n.len() > 2 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<u32>().ok().filter(|n| *n < 32)
}

impl KeylimeSettings {
    pub fn versions(&self) -> Vec<String> {
        (0..32).filter(|n| self.minors & (1 << n) != 0).map(|n| format!("2.{n}")).collect()
    }

    fn supports(&self, v: &str) -> bool {
        parse_version(v).is_some_and(|n| self.minors & (1 << n) != 0)
    }
}

/// Whether `path` is in Keylime's URL space: `/version` or `/vMAJOR.MINOR/…` (imasnap's
/// own API is `/v1/…`, without a minor).
pub fn is_keylime_path(path: &str) -> bool {
    if path == "/version" {
        return true;
    }
    let Some(rest) = path.strip_prefix("/v") else { return false };
    let ver = rest.split('/').next().unwrap_or_default();
    match ver.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// A Keylime route, once the path is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    Integrity,
    Identity,
}

/// Splits a Keylime path; `Err` is the 400 answer's reason (`API version not supported`
/// is the text Keylime's verifier looks for before it renegotiates).
pub fn route(s: &KeylimeSettings, path: &str) -> Result<Option<Route>, String> {
    if path == "/version" {
        return Ok(Some(Route::Version));
    }
    let rest = path.strip_prefix("/v").unwrap_or_default();
    let (ver, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if !s.supports(ver) {
        return Err(format!("API version not supported: v{ver} (this agent answers {})", s.versions().join(", ")));
    }
    Ok(match tail {
        "quotes/integrity" => Some(Route::Integrity),
        "quotes/identity" => Some(Route::Identity),
        _ => None,
    })
}

/// The parameters of `GET /v2.N/quotes/integrity` (and `identity`: nonce only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteQuery {
    pub nonce: String,
    /// Bit n: PCR n. PCR 16 is added in any case.
    pub mask: u32,
    /// `partial=1`: the verifier holds the key already, `pubkey` is left out.
    pub partial: bool,
    /// First record of the list (absolute index in the stitched log); `None` for
    /// an identity quote, which carries no list.
    pub entry: Option<u64>,
}

fn parse_nonce(q: &[(String, String)]) -> Result<String, String> {
    let n = param(q, "nonce").ok_or("nonce is required")?;
    if n.is_empty() || n.len() > MAX_NONCE {
        return Err(format!("nonce must be 1 to {MAX_NONCE} characters, got {}", n.len()));
    }
    if let Some(at) = n.bytes().position(|b| !b.is_ascii_alphanumeric()) {
        return Err(format!("nonce must be alphanumeric: byte {at} is not"));
    }
    Ok(n.to_string())
}

/// `0x…` or bare hex, 32 bits, PCRs 0-23 only.
pub fn parse_mask(m: &str) -> Result<u32, String> {
    let hex = m.strip_prefix("0x").or_else(|| m.strip_prefix("0X")).unwrap_or(m);
    if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("mask {m:?} must be a hex number of at most 32 bits, e.g. 0x408400"));
    }
    let v = u32::from_str_radix(hex, 16).map_err(|e| format!("mask {m:?}: {e}"))?;
    if v >> imasnap_tpm::NUM_PCRS != 0 {
        return Err(format!("mask {m} selects PCR {}; a TPM has PCRs 0-23", 31 - v.leading_zeros()));
    }
    Ok(v)
}

pub fn parse_integrity(q: &[(String, String)]) -> Result<QuoteQuery, String> {
    let nonce = parse_nonce(q)?;
    let mask = parse_mask(param(q, "mask").ok_or("mask is required")?)?;
    let partial = match param(q, "partial") {
        Some("0") => false,
        Some("1") => true,
        _ => return Err("partial must be 0 or 1".into()),
    };
    let entry = match param(q, "ima_ml_entry") {
        None => 0,
        Some(e) => {
            let ok = !e.is_empty() && e.len() <= 20 && e.bytes().all(|b| b.is_ascii_digit());
            match e.parse::<u64>() {
                Ok(n) if ok => n,
                _ => return Err(format!("ima_ml_entry {e:?} must be a record index (decimal, below 2^64)")),
            }
        }
    };
    Ok(QuoteQuery { nonce, mask, partial, entry: Some(entry) })
}

pub fn parse_identity(q: &[(String, String)]) -> Result<QuoteQuery, String> {
    Ok(QuoteQuery { nonce: parse_nonce(q)?, mask: 0, partial: false, entry: None })
}

/// What the host is asked for.
#[derive(Clone, Debug)]
pub struct QuoteRequest {
    pub nonce: Vec<u8>,
    pub pcrs: Vec<u32>,
    pub hash: HashAlgo,
    pub entry: Option<u64>,
    /// Largest measurement list sent, in bytes (`max_evidence_bytes`).
    pub limit: u64,
}

impl QuoteRequest {
    pub fn new(q: &QuoteQuery, hash: HashAlgo, limit: u64) -> Self {
        let mut pcrs: Vec<u32> = (0..imasnap_tpm::NUM_PCRS as u32).filter(|p| q.mask & (1 << p) != 0).collect();
        if !pcrs.contains(&DATA_PCR) {
            pcrs.push(DATA_PCR);
        }
        Self { nonce: q.nonce.as_bytes().to_vec(), pcrs, hash, entry: q.entry, limit }
    }
}

/// What the host produced: the quote, the key it is bound to, and the list.
#[derive(Debug)]
pub struct KeylimeEvidence {
    pub quote: Quote,
    pub ak: AkPublic,
    /// The PEM bound into PCR 16 (the AK's public key).
    pub pubkey: String,
    /// The ASCII list and the index of its first record.
    pub list: Option<(String, u64)>,
    pub boottime: u64,
}

/// The quote over `req` (after binding the AK's PEM into PCR 16), then the stitched ASCII
/// list from `req.entry`. Quote first: the list may only run ahead of it, which Keylime
/// accepts (it stops where its replay meets the quoted PCR).
pub(crate) fn host_evidence<K: HostKernel>(
    agent: &mut Agent<K>,
    req: &QuoteRequest,
    boottime: u64,
) -> Result<KeylimeEvidence, HostError> {
    if req.nonce.is_empty() || req.nonce.len() > MAX_NONCE {
        return Err(HostError::BadRequest(format!("nonce must be 1 to {MAX_NONCE} bytes")));
    }
    let tpm = agent.kernel_mut().tpm();
    let ak = tpm.ak_public();
    let pubkey = ak.to_pem();
    bind_data_pcr(tpm, req.hash, &pubkey)?;
    let sel = PcrSelection::new([(req.hash, req.pcrs.clone())])?;
    let quote = tpm.quote(&req.nonce, &sel)?;
    let list = match req.entry {
        None => None,
        Some(entry) => Some(stitched_ascii(agent, entry, req.limit)?),
    };
    Ok(KeylimeEvidence { quote, ak, pubkey, list, boottime })
}

/// PCR 16 := H(0 || H(data)) in `bank`, what Keylime's `Tpm.sim_extend(data)` expects.
fn bind_data_pcr(tpm: &mut dyn imasnap_tpm::Tpm, bank: HashAlgo, data: &str) -> Result<(), HostError> {
    tpm.pcr_reset(DATA_PCR)?;
    tpm.pcr_extend(DATA_PCR, &[bank.hash(&[data.as_bytes()])])?;
    Ok(())
}

/// The stitched log from record `entry` as `ascii_runtime_measurements` lines. An entry
/// past the end (a verifier that holds another boot's offset) gets the whole list from
/// 0, and the end itself an empty list: what the rust-keylime agent answers.
fn stitched_ascii<K: HostKernel>(agent: &mut Agent<K>, entry: u64, limit: u64) -> Result<(String, u64), HostError> {
    let next = agent.manifest().map(|m| m.next_index).ok_or(imasnap_agent::AgentError::NotRecovered)?;
    let mut live = Vec::new();
    agent.live_tail()?.read_to_end(&mut live).map_err(|e| HostError::Other(format!("reading the live list: {e}")))?;
    let end = next + count_records(&live)?;
    let from = if entry > end { 0 } else { entry };
    let endian = imasnap_store::snapshot_format().endian;
    let mut out = Vec::new();
    for r in agent.stitched(from)? {
        let (i, rec) = r.map_err(|e| HostError::Other(format!("stitched log: {e}")))?;
        imasnap_log::ascii::write_line(&rec, endian, &mut out)
            .map_err(|e| HostError::Other(format!("record {i}: no ASCII form: {e}")))?;
        if out.len() as u64 > limit {
            return Err(HostError::TooLarge(format!(
                "the measurement list from record {from} exceeds max_evidence_bytes ({limit}) at record {i}"
            )));
        }
    }
    let s = String::from_utf8(out).map_err(|e| {
        HostError::Other(format!(
            "the ASCII list from record {from} is not UTF-8 at byte {} (a file name); Keylime's JSON cannot carry it",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok((s, from))
}

/// tpm2-tools' `tpm2_quote -o` PCR file, which Keylime's `__get_pcrs_from_blob` reads:
/// the TPML_PCR_SELECTION and then the TPML_DIGESTs as C structs in memory (little
/// endian, 16 selections of 8 bytes, digests of 8 slots of 2 + 64 bytes).
pub fn pcr_blob(sel: &PcrSelection, values: &[PcrValue]) -> Result<Vec<u8>, String> {
    const SLOTS: usize = 8;
    let banks = sel.banks();
    if banks.len() > 16 {
        return Err(format!("{} banks selected; a TPML_PCR_SELECTION holds 16", banks.len()));
    }
    let mut o = Vec::with_capacity(4 + 16 * 8 + 4 + values.len().div_ceil(SLOTS) * 532);
    o.extend_from_slice(&(banks.len() as u32).to_le_bytes());
    for i in 0..16 {
        match banks.get(i) {
            Some((bank, pcrs)) => {
                let bits = pcrs.iter().fold(0u32, |m, p| m | (1 << p));
                o.extend_from_slice(&bank.tpm_alg_id().to_le_bytes());
                o.push(imasnap_tpm::selection::SIZEOF_SELECT);
                o.extend_from_slice(&bits.to_le_bytes()[..3]);
                o.extend_from_slice(&[0, 0]); // pcrSelect[3] and padding
            }
            None => o.extend_from_slice(&[0; 8]),
        }
    }
    let chunks: Vec<&[PcrValue]> = values.chunks(SLOTS).collect();
    o.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        o.extend_from_slice(&(c.len() as u32).to_le_bytes());
        for slot in 0..SLOTS {
            let d = c.get(slot).map(|v| v.as_bytes()).unwrap_or_default();
            if d.len() > 64 {
                return Err(format!("a {}-byte digest does not fit a TPMU_HA", d.len()));
            }
            o.extend_from_slice(&(d.len() as u16).to_le_bytes());
            o.extend_from_slice(d);
            o.resize(o.len() + 64 - d.len(), 0);
        }
    }
    Ok(o)
}

/// Keylime's quote string for `q`, whose one bank and signature hash must be `hash`. The
/// PCR values go in the order the signed TPMS_ATTEST selects them, and must hash to its
/// pcrDigest (checked here, so a bad blob never leaves the agent).
pub fn quote_string(q: &Quote, hash: HashAlgo) -> Result<String, String> {
    let attest = Attest::from_bytes(&q.attest).map_err(|e| format!("TPMS_ATTEST: {e}"))?;
    let sig = Signature::from_bytes(&q.signature).map_err(|e| format!("TPMT_SIGNATURE: {e}"))?;
    let scheme = sig.scheme();
    if scheme.hash != hash {
        return Err(format!(
            "the AK signs with {} but hash_alg is {hash}; Keylime requires them equal (set [keylime] hash_alg)",
            scheme.hash
        ));
    }
    if scheme.alg == SigAlg::RsaPss {
        return Err("the AK signs with RSAPSS; Keylime's verifier checks RSASSA and ECDSA quotes only".into());
    }
    let sel = &attest.pcr_select;
    if sel.banks().iter().any(|(b, _)| *b != hash) {
        return Err(format!("the quote selects banks other than {hash}; Keylime reads one bank"));
    }
    let mut values = Vec::new();
    for (bank, pcr) in sel.iter() {
        values.push(q.pcr_value(bank, pcr).ok_or(format!("the quote carries no value for PCR {pcr} of {bank}"))?);
    }
    let digest = compute_pcr_digest(hash, sel, |b, p| q.pcr_value(b, p)).map_err(|e| e.to_string())?;
    if digest.as_bytes() != attest.pcr_digest.as_slice() {
        return Err("the PCR values read do not hash to the quote's pcrDigest".into());
    }
    let blob = pcr_blob(sel, &values)?;
    Ok(format!(
        "r{}:{}:{}",
        Base64::encode_string(&q.attest),
        Base64::encode_string(&q.signature),
        Base64::encode_string(&blob)
    ))
}

/// Keylime's names for the AK: (`enc_alg`, `sign_alg`).
pub fn alg_names(ak: &AkPublic) -> (&'static str, &'static str) {
    match ak.kind() {
        AkKind::EccP256 | AkKind::EccP384 => ("ecc", "ecdsa"),
        AkKind::Rsa { .. } => ("rsa", "rsassa"),
    }
}

/// `results` of a quote answer.
pub fn results(ev: &KeylimeEvidence, q: &QuoteQuery, hash: HashAlgo) -> Result<serde_json::Value, String> {
    let (enc, sign) = alg_names(&ev.ak);
    let mut r = serde_json::json!({
        "quote": quote_string(&ev.quote, hash)?,
        "hash_alg": hash.to_string(),
        "enc_alg": enc,
        "sign_alg": sign,
    });
    if !q.partial {
        r["pubkey"] = serde_json::Value::String(ev.pubkey.clone());
    }
    if let Some((list, from)) = &ev.list {
        r["ima_measurement_list"] = serde_json::Value::String(list.clone());
        r["ima_measurement_list_entry"] = serde_json::Value::from(*from);
        r["mb_measurement_list"] = serde_json::Value::Null;
        r["boottime"] = serde_json::Value::from(ev.boottime);
    }
    Ok(r)
}

/// Keylime's envelope: `{"code", "status", "results"}`.
pub fn envelope(code: u16, status: &str, results: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "code": code, "status": status, "results": results })
}

/// `boottime` for Keylime (it only compares it between rounds): the kernel's `btime` from
/// /proc/stat, or `fallback` where there is none.
pub fn boottime(fallback: u64) -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn integrity_query_parses_what_keylime_sends() {
        let p = parse_integrity(&q(&[
            ("nonce", "aB3dE5gH7jK9mN1pQ3sT"),
            ("mask", "0x408400"),
            ("partial", "0"),
            ("ima_ml_entry", "1234"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            QuoteQuery { nonce: "aB3dE5gH7jK9mN1pQ3sT".into(), mask: 0x408400, partial: false, entry: Some(1234) }
        );
        let p = parse_integrity(&q(&[("nonce", "x"), ("mask", "400"), ("partial", "1")])).unwrap();
        assert_eq!((p.mask, p.partial, p.entry), (0x400, true, Some(0)));
        let r = QuoteRequest::new(&p, HashAlgo::Sha256, 1);
        assert_eq!(r.pcrs, vec![10, 16], "PCR 16 is always quoted");
    }

    #[test]
    fn bad_parameters_are_refused_with_a_reason() {
        let base = [("nonce", "abc"), ("mask", "0x400"), ("partial", "0")];
        let with = |k: &str, v: &str| {
            let mut v2: Vec<(&str, &str)> = base.iter().copied().filter(|(n, _)| *n != k).collect();
            v2.push((k, v));
            parse_integrity(&q(&v2)).unwrap_err()
        };
        assert!(with("mask", "0x1000000").contains("selects PCR 24"), "{}", with("mask", "0x1000000"));
        assert!(with("mask", "0xZZ").contains("hex"));
        assert!(with("mask", "0x123456789").contains("32 bits"));
        assert!(with("mask", "").contains("hex"));
        assert!(with("nonce", "ab-c").contains("byte 2"));
        assert!(with("nonce", &"a".repeat(65)).contains("1 to 64"));
        assert!(with("nonce", "").contains("1 to 64"));
        assert!(with("partial", "2").contains("partial"));
        assert!(with("ima_ml_entry", "18446744073709551616").contains("below 2^64"));
        assert!(with("ima_ml_entry", "-1").contains("ima_ml_entry"));
        assert!(with("ima_ml_entry", "1e3").contains("ima_ml_entry"));
        assert_eq!(parse_integrity(&q(&[("nonce", "a"), ("partial", "0")])).unwrap_err(), "mask is required");
        assert_eq!(parse_integrity(&q(&[("mask", "0x1"), ("partial", "0")])).unwrap_err(), "nonce is required");
        let huge = parse_integrity(&q(&[
            ("nonce", "a"),
            ("mask", "1"),
            ("partial", "1"),
            ("ima_ml_entry", "18446744073709551615"),
        ]));
        assert_eq!(huge.unwrap().entry, Some(u64::MAX), "a valid index past the end is the host's business");
    }

    #[test]
    fn paths_and_versions() {
        let s = KeylimeToml::default().settings().unwrap();
        assert!(!s.enabled);
        assert_eq!(s.versions(), ["2.1", "2.2"]);
        assert!(is_keylime_path("/version") && is_keylime_path("/v2.2/quotes/integrity"));
        assert!(is_keylime_path("/v1.0/quotes/integrity"));
        assert!(!is_keylime_path("/v1/evidence") && !is_keylime_path("/v1/health") && !is_keylime_path("/versions"));
        assert_eq!(route(&s, "/v2.2/quotes/integrity"), Ok(Some(Route::Integrity)));
        assert_eq!(route(&s, "/v2.1/quotes/identity"), Ok(Some(Route::Identity)));
        assert_eq!(route(&s, "/v2.1/keys/vkey"), Ok(None));
        assert!(route(&s, "/v2.5/quotes/integrity").unwrap_err().starts_with("API version not supported"));
        assert!(route(&s, "/v1.0/quotes/integrity").unwrap_err().starts_with("API version not supported"));
        let t = KeylimeToml { api_versions: vec!["2.0".into(), "2.x".into()], ..Default::default() };
        assert!(t.settings().unwrap_err().contains("2.x"));
        let t = KeylimeToml { hash_alg: "sm3".into(), ..Default::default() };
        assert!(t.settings().unwrap_err().contains("sm3"));
        let t = KeylimeToml { api_versions: vec![], ..Default::default() };
        assert!(t.settings().is_err());
    }

    /// The blob's layout, checked against the sizes rust-keylime asserts for the C structs
    /// (TPML_PCR_SELECTION 132 bytes, TPML_DIGEST 532).
    #[test]
    fn pcr_blob_layout() {
        let sel = PcrSelection::new([(HashAlgo::Sha256, (0..11).chain([16]).collect())]).unwrap();
        let vals: Vec<PcrValue> = (0..12u8).map(|i| HashAlgo::Sha256.hash(&[&[i]])).collect();
        let b = pcr_blob(&sel, &vals).unwrap();
        assert_eq!(b.len(), 132 + 4 + 2 * 532);
        assert_eq!(&b[..4], &1u32.to_le_bytes());
        assert_eq!(&b[4..12], &[0x0b, 0x00, 3, 0xff, 0x07, 0x01, 0, 0]);
        assert_eq!(&b[132..136], &2u32.to_le_bytes());
        assert_eq!(&b[136..140], &8u32.to_le_bytes());
        assert_eq!(&b[140..142], &32u16.to_le_bytes());
        assert_eq!(&b[142..174], vals[0].as_bytes());
        assert_eq!(&b[136 + 532..136 + 536], &4u32.to_le_bytes());
        // The second digest list's slots past its 4 values are empty.
        let slot4 = 136 + 532 + 4 + 4 * 66;
        assert_eq!(&b[slot4..slot4 + 2], &[0, 0]);
    }

    #[test]
    fn quote_string_from_the_soft_tpm() {
        use imasnap_tpm::Tpm as _;
        let mut t = imasnap_tpm::SoftTpm::new(3);
        bind_data_pcr(&mut t, HashAlgo::Sha256, "key").unwrap();
        let want16 = HashAlgo::Sha256.hash(&[&[0u8; 32], HashAlgo::Sha256.hash(&[b"key"]).as_bytes()]);
        assert_eq!(t.pcr_read(HashAlgo::Sha256, &[16]).unwrap(), vec![want16]);
        let sel = PcrSelection::new([(HashAlgo::Sha256, vec![10, 16])]).unwrap();
        let quote = t.quote(b"nonce", &sel).unwrap();
        let s = quote_string(&quote, HashAlgo::Sha256).unwrap();
        let parts: Vec<&str> = s.strip_prefix('r').unwrap().split(':').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(Base64::decode_vec(parts[0]).unwrap(), quote.attest);
        // SHA-1 is not what the soft AK signs with.
        assert!(quote_string(&quote, HashAlgo::Sha1).unwrap_err().contains("signs with sha256"));
        // A PCR value that does not match the signed digest is never sent.
        let mut bad = quote.clone();
        bad.pcr_values[0].2 = HashAlgo::Sha256.hash(&[b"x"]);
        assert!(quote_string(&bad, HashAlgo::Sha256).unwrap_err().contains("pcrDigest"));
        assert!(t.pcr_reset(10).is_err(), "only PCR 16 and 23 reset");
    }
}
