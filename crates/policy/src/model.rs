//! The policy model and its two input formats: Keylime's JSON runtime policy (and the
//! older JSON allowlist with `hashes`), and the flat `sha256sum`-style allowlist.

use crate::keys::{Key, KeyError};
use crate::LoadError;
use imasnap_log::HashAlgo;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Largest policy input accepted (a distribution-wide Keylime policy is tens of MiB).
pub const MAX_POLICY_BYTES: usize = 256 << 20;
/// Most digest entries over all sections.
pub const MAX_DIGEST_ENTRIES: usize = 8 << 20;
/// Most exclude patterns.
pub const MAX_EXCLUDES: usize = 10_000;
/// Longest path or keyring name in a policy (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Compiled size limit for the exclude regexes together.
pub const MAX_REGEX_BYTES: usize = 32 << 20;
/// Runtime-policy format version this crate reads (Keylime `RUNTIME_POLICY_CURRENT_VERSION`).
pub const RUNTIME_POLICY_VERSION: i64 = 1;

/// One allowed digest: bytes and, if the entry was written `algo:hex`, its algorithm.
/// Keylime entries are bare hex and match a measured digest of any algorithm with the
/// same bytes (so, in practice, the same length).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AllowedDigest {
    pub algo: Option<String>,
    pub bytes: Box<[u8]>,
}

impl AllowedDigest {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (algo, hexs) = match s.split_once(':') {
            Some((a, h)) => (Some(a), h),
            None => (None, s),
        };
        if let Some(a) = algo {
            if a.is_empty() || a.len() > 16 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("bad algorithm prefix in {:?}", trunc(s)));
            }
        }
        if hexs.len() > 256 {
            return Err(format!("digest of {} hex characters is too long", hexs.len()));
        }
        let bytes = hex::decode(hexs).map_err(|e| format!("{:?} is not a hex digest: {e}", trunc(s)))?;
        if !matches!(bytes.len(), 16 | 20 | 28 | 32 | 48 | 64) {
            return Err(format!("{:?}: a digest of {} bytes has no known algorithm", trunc(s), bytes.len()));
        }
        Ok(Self { algo: algo.map(|a| a.to_ascii_lowercase()), bytes: bytes.into() })
    }

    pub fn matches(&self, algo: &str, digest: &[u8]) -> bool {
        *self.bytes == *digest && self.algo.as_deref().is_none_or(|a| a == algo)
    }
}

impl std::fmt::Display for AllowedDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(a) = &self.algo {
            write!(f, "{a}:")?;
        }
        f.write_str(&hex::encode(&self.bytes))
    }
}

pub(crate) fn trunc(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A section of name → allowed digests (`digests`, `keyrings`, `ima-buf`).
pub type DigestMap = HashMap<Box<[u8]>, Vec<AllowedDigest>>;

/// Keylime `meta`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub version: i64,
    pub generator: Option<i64>,
    pub timestamp: Option<String>,
}

/// Everything a policy says, before excludes are compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyData {
    pub meta: Meta,
    pub release: Option<i64>,
    pub digests: DigestMap,
    pub excludes: Vec<String>,
    pub keyrings: DigestMap,
    pub ima_buf: DigestMap,
    pub ignored_keyrings: Vec<String>,
    pub log_hash_alg: HashAlgo,
    /// Keys from `verification-keys` and those added with `Policy::with_keys`.
    pub verification_keys: Vec<Key>,
    pub warnings: Vec<String>,
}

impl Default for PolicyData {
    fn default() -> Self {
        Self {
            meta: Meta { version: RUNTIME_POLICY_VERSION, generator: None, timestamp: None },
            release: None,
            digests: HashMap::new(),
            excludes: Vec::new(),
            keyrings: HashMap::new(),
            ima_buf: HashMap::new(),
            ignored_keyrings: Vec::new(),
            log_hash_alg: HashAlgo::Sha1,
            verification_keys: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.keyid == o.keyid && self.spki_der == o.spki_der
    }
}
impl Eq for Key {}

#[derive(Deserialize)]
struct RawMeta {
    version: Option<serde_json::Value>,
    generator: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawIma {
    #[serde(default)]
    ignored_keyrings: Option<Vec<String>>,
    #[serde(default)]
    log_hash_alg: Option<String>,
    #[serde(default)]
    dm_policy: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawPolicy {
    meta: Option<RawMeta>,
    release: Option<serde_json::Value>,
    digests: Option<BTreeMap<String, Vec<String>>>,
    hashes: Option<BTreeMap<String, Vec<String>>>,
    excludes: Option<Vec<String>>,
    keyrings: Option<BTreeMap<String, Vec<String>>>,
    ima: Option<RawIma>,
    #[serde(rename = "ima-buf")]
    ima_buf: Option<BTreeMap<String, Vec<String>>>,
    #[serde(rename = "verification-keys")]
    verification_keys: Option<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

fn int(v: &serde_json::Value, what: &str) -> Result<i64, LoadError> {
    match v {
        serde_json::Value::Number(n) => {
            n.as_i64().ok_or_else(|| LoadError::Field(what.into(), "not an integer".into()))
        }
        serde_json::Value::String(s) => {
            s.parse().map_err(|_| LoadError::Field(what.into(), format!("{s:?} is not an integer")))
        }
        _ => Err(LoadError::Field(what.into(), "not an integer".into())),
    }
}

fn section(name: &str, raw: Option<BTreeMap<String, Vec<String>>>, total: &mut usize) -> Result<DigestMap, LoadError> {
    let mut out = HashMap::new();
    for (path, list) in raw.unwrap_or_default() {
        if path.len() > MAX_PATH {
            return Err(LoadError::Entry { section: name.into(), path: trunc(&path), detail: "path too long".into() });
        }
        *total += list.len();
        if *total > MAX_DIGEST_ENTRIES {
            return Err(LoadError::Limit(format!("more than {MAX_DIGEST_ENTRIES} digest entries")));
        }
        let mut v = Vec::with_capacity(list.len());
        for (i, d) in list.iter().enumerate() {
            let d = AllowedDigest::parse(d.trim()).map_err(|detail| LoadError::Entry {
                section: name.into(),
                path: trunc(&path),
                detail: format!("entry {i}: {detail}"),
            })?;
            if !v.contains(&d) {
                v.push(d);
            }
        }
        out.insert(path.into_bytes().into_boxed_slice(), v);
    }
    Ok(out)
}

/// Parses Keylime's `verification-keys`: a JSON string holding `{"pubkeys": [base64 DER
/// SPKI…], "keyids": [int…]}` (Keylime `ImaKeyring.to_string`), possibly encoded twice.
pub(crate) fn parse_verification_keys(v: &serde_json::Value) -> Result<Vec<Key>, LoadError> {
    let bad = |d: &str| LoadError::Field("verification-keys".into(), d.into());
    let mut obj = v.clone();
    for _ in 0..2 {
        if let serde_json::Value::String(s) = &obj {
            if s.trim().is_empty() {
                return Ok(Vec::new());
            }
            obj = serde_json::from_str(s).map_err(|e| bad(&format!("not a JSON keyring: {e}")))?;
        }
    }
    let obj = match obj {
        serde_json::Value::Object(o) => o,
        serde_json::Value::Array(a) if a.is_empty() => return Ok(Vec::new()),
        serde_json::Value::Null => return Ok(Vec::new()),
        _ => return Err(bad("want an object with pubkeys")),
    };
    let pubkeys = match obj.get("pubkeys") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        None => Vec::new(),
        _ => return Err(bad("pubkeys is not a list")),
    };
    let keyids = match obj.get("keyids") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    if pubkeys.len() > crate::keys::MAX_KEYS {
        return Err(LoadError::Key(KeyError::TooMany));
    }
    let mut out = Vec::new();
    for (i, pk) in pubkeys.iter().enumerate() {
        use base64ct::Encoding;
        let s = pk.as_str().ok_or_else(|| bad(&format!("pubkeys[{i}] is not a string")))?;
        let der = base64ct::Base64::decode_vec(s.trim()).map_err(|_| bad(&format!("pubkeys[{i}] is not base64")))?;
        let mut keys =
            crate::keys::parse_keys(&der, &format!("verification-keys pubkeys[{i}]")).map_err(LoadError::Key)?;
        let mut k = keys.swap_remove(0);
        if let Some(id) = keyids.get(i).and_then(|v| v.as_u64()) {
            if id != 0 && id <= u32::MAX as u64 {
                k.keyid = id as u32;
            }
        }
        out.push(k);
    }
    Ok(out)
}

/// Parses a Keylime runtime policy (v1) or legacy JSON allowlist (`hashes`).
pub fn parse_keylime_json(bytes: &[u8]) -> Result<PolicyData, LoadError> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(LoadError::TooLarge(bytes.len()));
    }
    let raw: RawPolicy = serde_json::from_slice(bytes).map_err(|e| LoadError::Json(e.to_string()))?;
    let mut p = PolicyData::default();
    let legacy = raw.hashes.is_some();
    if legacy && raw.digests.is_some() {
        return Err(LoadError::Field("hashes".into(), "both `digests` and legacy `hashes` present".into()));
    }
    if let Some(m) = &raw.meta {
        let version = match &m.version {
            Some(v) => int(v, "meta.version")?,
            None => return Err(LoadError::Field("meta.version".into(), "missing".into())),
        };
        if !legacy && version != RUNTIME_POLICY_VERSION {
            return Err(LoadError::Field(
                "meta.version".into(),
                format!("runtime policy version {version} (this reads version {RUNTIME_POLICY_VERSION})"),
            ));
        }
        p.meta.version = version;
        p.meta.generator = m.generator.as_ref().and_then(|g| int(g, "meta.generator").ok());
        p.meta.timestamp = m.timestamp.as_ref().map(|t| match t {
            serde_json::Value::String(s) => s.clone(),
            o => o.to_string(),
        });
    } else if !legacy {
        p.warnings.push("no `meta` section; read as a version 1 runtime policy".into());
    }
    if legacy {
        p.warnings.push(format!("legacy JSON allowlist (meta.version {}): `hashes` read as `digests`", p.meta.version));
        p.meta.version = RUNTIME_POLICY_VERSION;
    }
    p.release = match &raw.release {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(int(v, "release")?),
    };
    let mut total = 0;
    p.digests = section(if legacy { "hashes" } else { "digests" }, raw.digests.or(raw.hashes), &mut total)?;
    p.keyrings = section("keyrings", raw.keyrings, &mut total)?;
    p.ima_buf = section("ima-buf", raw.ima_buf, &mut total)?;
    p.excludes = raw.excludes.unwrap_or_default();
    if p.excludes.len() > MAX_EXCLUDES {
        return Err(LoadError::Limit(format!("more than {MAX_EXCLUDES} excludes")));
    }
    if let Some(ima) = raw.ima {
        p.ignored_keyrings = ima.ignored_keyrings.unwrap_or_default();
        if let Some(a) = ima.log_hash_alg {
            p.log_hash_alg = match a.as_str() {
                "sha1" => HashAlgo::Sha1,
                "sha256" => HashAlgo::Sha256,
                "sha384" => HashAlgo::Sha384,
                "sha512" => HashAlgo::Sha512,
                other => {
                    return Err(LoadError::Field(
                        "ima.log_hash_alg".into(),
                        format!("{:?} (want sha1, sha256, sha384 or sha512)", trunc(other)),
                    ))
                }
            };
        }
        if let Some(dm) = ima.dm_policy {
            if !dm.is_null() {
                return Err(LoadError::Unsupported(
                    "ima.dm_policy (device-mapper policies) is not supported; remove it or use ima-buf digests".into(),
                ));
            }
        }
    }
    if let Some(vk) = &raw.verification_keys {
        p.verification_keys = parse_verification_keys(vk)?;
    }
    for k in raw.other.keys() {
        p.warnings.push(format!("unknown top-level key {:?} ignored", trunc(k)));
    }
    Ok(p)
}

fn sorted(m: &DigestMap) -> BTreeMap<String, Vec<String>> {
    m.iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.iter().map(|d| d.to_string()).collect()))
        .collect()
}

/// Serialises to Keylime's runtime-policy JSON (version 1); keys sorted.
pub fn to_keylime_json(p: &PolicyData) -> serde_json::Value {
    use base64ct::Encoding;
    use serde_json::json;
    let mut meta = serde_json::Map::new();
    meta.insert("version".into(), json!(RUNTIME_POLICY_VERSION));
    if let Some(g) = p.meta.generator {
        meta.insert("generator".into(), json!(g));
    }
    if let Some(t) = &p.meta.timestamp {
        meta.insert("timestamp".into(), json!(t));
    }
    let vkeys = if p.verification_keys.is_empty() {
        String::new()
    } else {
        let pubkeys: Vec<String> =
            p.verification_keys.iter().map(|k| base64ct::Base64::encode_string(&k.spki_der)).collect();
        let keyids: Vec<u32> = p.verification_keys.iter().map(|k| k.keyid).collect();
        json!({"pubkeys": pubkeys, "keyids": keyids}).to_string()
    };
    let mut o = serde_json::Map::new();
    o.insert("meta".into(), serde_json::Value::Object(meta));
    if let Some(r) = p.release {
        o.insert("release".into(), json!(r));
    }
    o.insert("digests".into(), json!(sorted(&p.digests)));
    o.insert("excludes".into(), json!(p.excludes));
    o.insert("keyrings".into(), json!(sorted(&p.keyrings)));
    o.insert(
        "ima".into(),
        json!({"ignored_keyrings": p.ignored_keyrings, "log_hash_alg": p.log_hash_alg.name(), "dm_policy": null}),
    );
    o.insert("ima-buf".into(), json!(sorted(&p.ima_buf)));
    o.insert("verification-keys".into(), json!(vkeys));
    serde_json::Value::Object(o)
}

/// Unescapes a `sha256sum` line that starts with `\` (`\\` and `\n`; `\r` since 9.1).
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next()? {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Parses a flat allowlist: `<hex>  <path>` lines as `sha256sum` prints them (text `  `
/// or binary ` *` separator, `\`-escaped names), also Keylime's legacy flat allowlist
/// (`<hex> <path>`, `%keyring:<name>` for keyring entries) and BSD tags
/// (`SHA256 (<path>) = <hex>`). Blank lines and `#` comments are skipped.
pub fn parse_allowlist(text: &str) -> Result<PolicyData, LoadError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(LoadError::TooLarge(text.len()));
    }
    let mut p = PolicyData::default();
    let mut total = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        let lineno = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let bad = |d: String| LoadError::Line { line: lineno, detail: d };
        let (escaped, body) = match line.strip_prefix('\\') {
            Some(b) => (true, b),
            None => (false, line),
        };
        let (digest, path) = if let Some((tag, rest)) = body.split_once(" (").filter(|(t, _)| {
            !t.is_empty() && t.len() <= 16 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            // BSD tag: `SHA256 (path) = hex`.
            let (path, hexs) = rest.rsplit_once(") = ").ok_or_else(|| bad("BSD-style line without `) = `".into()))?;
            (format!("{}:{}", tag.to_ascii_lowercase(), hexs.trim()), path.to_string())
        } else {
            let ws = body.find([' ', '\t']).ok_or_else(|| bad("want `<hex digest>  <path>`".into()))?;
            let (h, rest) = body.split_at(ws);
            let path = if let Some(p) = rest.strip_prefix("  ").or_else(|| rest.strip_prefix(" *")) {
                p
            } else {
                rest.trim_start()
            };
            (h.to_string(), path.to_string())
        };
        let path = if escaped { unescape(&path).ok_or_else(|| bad("bad `\\` escape in path".into()))? } else { path };
        if path.is_empty() {
            return Err(bad("empty path".into()));
        }
        if path.len() > MAX_PATH {
            return Err(bad("path too long".into()));
        }
        let d = AllowedDigest::parse(&digest).map_err(bad)?;
        // BSD tags name the algorithm; plain hex stays algorithm-free like Keylime's.
        let d = match d.algo.as_deref() {
            Some(a) => AllowedDigest { algo: Some(normalise_algo(a)), bytes: d.bytes },
            None => d,
        };
        total += 1;
        if total > MAX_DIGEST_ENTRIES {
            return Err(LoadError::Limit(format!("more than {MAX_DIGEST_ENTRIES} digest entries")));
        }
        let (map, name) = match path.strip_prefix("%keyring:") {
            Some(k) => (&mut p.keyrings, k.to_string()),
            None => (&mut p.digests, path),
        };
        let v = map.entry(name.into_bytes().into_boxed_slice()).or_default();
        if !v.contains(&d) {
            v.push(d);
        }
    }
    Ok(p)
}

/// Kernel spelling of an algorithm name from a BSD tag (`SHA256` → `sha256`, `SHA3-256`).
fn normalise_algo(a: &str) -> String {
    a.to_ascii_lowercase()
}

/// Parses an exclude list file: one regex per line, `#` comments and blank lines skipped
/// (Keylime `convert_runtime_policy -e`).
pub fn parse_exclude_list(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim()).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| l.to_string()).collect()
}
