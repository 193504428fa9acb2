//! imasnap-policy: runtime policy for IMA measurement logs.
//!
//! Sans-IO and panic-free on input: a [`Policy`] is built from bytes (Keylime JSON runtime
//! policy, legacy JSON allowlist, or a flat `sha256sum`-style allowlist) plus verification
//! keys, then judges one [`imasnap_log::Record`] at a time. Every failure names the
//! record index, the path and the reason. See docs/POLICY.md for the decisions taken
//! where Keylime's behaviour is implicit.
//!
//! ```no_run
//! # use imasnap_policy::*;
//! # fn f(recs: Vec<imasnap_log::Record>, json: &[u8], cert: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let mut keys = KeyRing::new();
//! keys.add_bytes(cert, "signing-cert.der")?;
//! let policy = Policy::from_keylime_json(json)?.with_keys(&keys)?;
//! for (i, rec) in recs.iter().enumerate() {
//!     if let Err(f) = policy.check(i as u64, rec) {
//!         eprintln!("{f}"); // record 7 (/usr/bin/x): not-in-policy: …
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod create;
pub mod keys;
pub mod model;
pub mod sig;

pub use keys::{Key, KeyError, KeyRing, PublicKey};
pub use model::{AllowedDigest, PolicyData};

use imasnap_log::template::Field;
use imasnap_log::{Endian, HashAlgo, Record};
use model::{trunc, DigestMap};
use sig::SigOutcome;
use std::fmt;

/// Why a policy could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("policy of {0} bytes exceeds the limit of {} bytes", model::MAX_POLICY_BYTES)]
    TooLarge(usize),
    #[error("not a valid JSON policy: {0}")]
    Json(String),
    #[error("{0}: {1}")]
    Field(String, String),
    #[error("{section}[{path:?}]: {detail}")]
    Entry { section: String, path: String, detail: String },
    #[error("line {line}: {detail}")]
    Line { line: usize, detail: String },
    #[error("excludes[{index}] {pattern:?}: {detail}")]
    Exclude { index: usize, pattern: String, detail: String },
    #[error("limit: {0}")]
    Limit(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// What kind of rule a record broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The path has no entry in `digests` (or the name none in `keyrings` / `ima-buf`),
    /// and no valid signature vouches for it.
    NotInPolicy,
    /// The path is listed, but not with the measured digest.
    DigestMismatch,
    /// A signature from a configured key failed to verify (or was malformed), and the
    /// digest is not allowed by the policy either (or strict signatures are on).
    BadSignature,
    /// A violation record (ToMToU / open-writers): its digest means nothing.
    Violation,
    /// A key measured into a keyring (ima-buf) is of an unsupported type.
    InvalidKey,
    /// The `ima-buf` digest is not the hash of its buffer.
    BufferDigestMismatch,
    /// The record's fields could not be read (no digest or name, bad field encoding).
    MalformedRecord,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotInPolicy => "not-in-policy",
            Self::DigestMismatch => "digest-mismatch",
            Self::BadSignature => "bad-signature",
            Self::Violation => "violation",
            Self::InvalidKey => "invalid-key",
            Self::BufferDigestMismatch => "buffer-digest-mismatch",
            Self::MalformedRecord => "malformed-record",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record the policy does not allow.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("record {index} ({path}): {reason}: {detail}")]
pub struct PolicyFailure {
    /// Global record index as given by the caller.
    pub index: u64,
    /// The event name (file path, keyring or buffer name), lossily as text.
    pub path: String,
    pub reason: FailureKind,
    pub detail: String,
}

/// Why a record was allowed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "by")]
pub enum Allowed {
    /// The digest is listed for the path (`digests`).
    Digest,
    /// The ima-sig signature verified with the key of this id.
    Signature { keyid: u32 },
    /// The path matches an exclude.
    Excluded,
    /// `boot_aggregate` with no policy entry: left to the replay against PCR 0-9.
    BootAggregate,
    /// A key measured into a keyring listed in `ima.ignored_keyrings`.
    IgnoredKeyring,
    /// A key measured into a keyring whose digest is listed in `keyrings`.
    Keyring,
    /// An ima-buf record whose digest is listed in `ima-buf`.
    Buffer,
    /// A violation, accepted because violations are allowed.
    Violation,
}

/// Evaluation switches, all off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Accept violation records (default: each one is a failure).
    pub allow_violations: bool,
    /// A signature from a configured key that does not verify is a failure even when the
    /// digest is allowed (Keylime falls back to the digest list).
    pub strict_signatures: bool,
    /// Do not check an ima-buf digest against the hash of its buffer.
    pub skip_buffer_digest_check: bool,
}

/// A loaded runtime policy. Immutable, `Send + Sync`; share it behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Policy {
    data: PolicyData,
    excludes: Option<regex::bytes::RegexSet>,
    keys: KeyRing,
    options: Options,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
};

fn compile_excludes(pats: &[String]) -> Result<Option<regex::bytes::RegexSet>, LoadError> {
    if pats.is_empty() {
        return Ok(None);
    }
    // Keylime joins the patterns as `(p1)|(p2)…` and uses Python's `re.match`: anchored at
    // the start of the path, not at its end. Each pattern is checked alone first so the
    // error names it.
    let mut anchored = Vec::with_capacity(pats.len());
    for (index, p) in pats.iter().enumerate() {
        let a = format!("^(?:{p})");
        regex::bytes::RegexBuilder::new(&a)
            .size_limit(model::MAX_REGEX_BYTES)
            .build()
            .map_err(|e| LoadError::Exclude { index, pattern: trunc(p), detail: last_line(&e.to_string()) })?;
        anchored.push(a);
    }
    regex::bytes::RegexSetBuilder::new(&anchored)
        .size_limit(model::MAX_REGEX_BYTES)
        .dfa_size_limit(model::MAX_REGEX_BYTES)
        .build()
        .map(Some)
        .map_err(|e| LoadError::Limit(format!("excludes together: {}", last_line(&e.to_string()))))
}

fn last_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

/// The fields of a record the policy looks at.
struct View<'a> {
    algo: &'a str,
    digest: &'a [u8],
    name: &'a [u8],
    sig: Option<&'a [u8]>,
    buf: Option<&'a [u8]>,
}

fn view(rec: &Record, endian: Endian) -> Result<View<'_>, String> {
    let t = &rec.template;
    let mut i = 0usize;
    let mut digest: Option<(Option<&str>, &[u8])> = None;
    let mut name = None;
    let mut sig = None;
    let mut buf = None;
    let mut err = None;
    let walked = t.walk(&rec.template_data, endian, |raw| {
        let idx = i;
        i += 1;
        if err.is_some() {
            return;
        }
        let is_modsig_digest = t.fields().get(idx) == Some(&imasnap_log::FieldId::DModsig);
        match t.field(idx, raw, endian) {
            Ok(Field::Digest { algo, digest: d, .. }) if digest.is_none() && !is_modsig_digest => {
                digest = Some((algo, d))
            }
            Ok(Field::Name(n)) if name.is_none() => name = Some(n),
            Ok(Field::Signature(s)) if sig.is_none() => sig = Some(s),
            Ok(Field::Buffer(b)) if buf.is_none() => buf = Some(b),
            Ok(_) => {}
            Err(e) => err = Some(e.to_string()),
        }
    });
    walked.map_err(|e| e.to_string())?;
    if let Some(e) = err {
        return Err(e);
    }
    let (algo, digest) = digest.ok_or_else(|| format!("template {} has no file digest field", t.name()))?;
    let name = name.ok_or_else(|| format!("template {} has no name field", t.name()))?;
    let algo = match algo {
        Some(a) => a,
        None => match digest.len() {
            20 => "sha1",
            16 => "md5",
            n => return Err(format!("digest of {n} bytes without an algorithm")),
        },
    };
    Ok(View { algo, digest, name, sig: sig.filter(|s| !s.is_empty()), buf })
}

fn hash_named(algo: &str, data: &[u8]) -> Option<Vec<u8>> {
    let a = HashAlgo::from_name(algo)?;
    Some(a.hash(&[data]).as_bytes().to_vec())
}

impl Policy {
    fn build(data: PolicyData) -> Result<Self, LoadError> {
        let excludes = compile_excludes(&data.excludes)?;
        let mut keys = KeyRing::new();
        for k in &data.verification_keys {
            keys.add(k.clone())?;
        }
        Ok(Self { data, excludes, keys, options: Options::default() })
    }

    /// A Keylime runtime policy (JSON, `meta.version` 1) or a legacy JSON allowlist
    /// (`hashes`). Keys in `verification-keys` are loaded.
    pub fn from_keylime_json(bytes: &[u8]) -> Result<Self, LoadError> {
        Self::build(model::parse_keylime_json(bytes)?)
    }

    /// A flat allowlist (`sha256sum` output, Keylime's legacy flat allowlist).
    pub fn from_allowlist(text: &str) -> Result<Self, LoadError> {
        Self::build(model::parse_allowlist(text)?)
    }

    /// Either format: JSON when the first non-blank byte is `{`, else a flat allowlist.
    pub fn parse(bytes: &[u8]) -> Result<Self, LoadError> {
        if bytes.len() > model::MAX_POLICY_BYTES {
            return Err(LoadError::TooLarge(bytes.len()));
        }
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return Self::from_keylime_json(bytes);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            LoadError::Line { line, detail: "not UTF-8 text".into() }
        })?;
        Self::from_allowlist(text)
    }

    /// An empty policy: nothing is allowed but what valid signatures, excludes or the
    /// options allow.
    pub fn empty() -> Self {
        // No excludes to compile and no keys to load: nothing here can fail.
        Self { data: PolicyData::default(), excludes: None, keys: KeyRing::new(), options: Options::default() }
    }

    /// Adds verification keys (they become part of `verification-keys` on export).
    pub fn with_keys(mut self, keys: &KeyRing) -> Result<Self, LoadError> {
        for k in keys.keys() {
            if !self.data.verification_keys.contains(k) {
                self.data.verification_keys.push(k.clone());
            }
            self.keys.add(k.clone())?;
        }
        Ok(self)
    }

    /// Appends exclude regexes (e.g. from a Keylime exclude list).
    pub fn with_excludes<S: AsRef<str>>(mut self, pats: &[S]) -> Result<Self, LoadError> {
        self.data.excludes.extend(pats.iter().map(|p| p.as_ref().to_string()));
        if self.data.excludes.len() > model::MAX_EXCLUDES {
            return Err(LoadError::Limit(format!("more than {} excludes", model::MAX_EXCLUDES)));
        }
        self.excludes = compile_excludes(&self.data.excludes)?;
        Ok(self)
    }

    pub fn with_options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    pub fn options(&self) -> Options {
        self.options
    }

    /// The policy's contents.
    pub fn data(&self) -> &PolicyData {
        &self.data
    }

    /// Keylime `ima.log_hash_alg`: the bank of the template digests the policy expects
    /// the log to carry. Informative: replay checks template digests in every bank.
    pub fn log_hash_alg(&self) -> HashAlgo {
        self.data.log_hash_alg
    }

    /// Notes from loading (legacy format, unknown keys).
    pub fn warnings(&self) -> &[String] {
        &self.data.warnings
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Keylime runtime-policy JSON (version 1) of this policy, including its keys.
    pub fn to_keylime_json(&self) -> serde_json::Value {
        model::to_keylime_json(&self.data)
    }

    /// True when `path` matches an exclude (anchored at the start, as Keylime does).
    pub fn is_excluded(&self, path: &[u8]) -> bool {
        self.excludes.as_ref().is_some_and(|s| s.is_match(path))
    }

    /// Judges one record of a little-endian (or canonical-format) log. Keys learned from
    /// the log are not used; see [`Policy::check_learning`].
    pub fn check(&self, index: u64, rec: &Record) -> Result<Allowed, PolicyFailure> {
        self.check_with(index, rec, Endian::Little, None)
    }

    /// Judges one record and, as Keylime does, adds a key measured into a keyring (an
    /// ima-buf record whose digest the policy's `keyrings` allows) to `learned`, whose
    /// keys then verify later ima-sig signatures. The caller keeps `learned` per host.
    pub fn check_learning(&self, index: u64, rec: &Record, learned: &mut KeyRing) -> Result<Allowed, PolicyFailure> {
        self.check_with(index, rec, Endian::Little, Some(learned))
    }

    /// [`Policy::check`] with the log's byte order and optional key learning.
    pub fn check_with(
        &self,
        index: u64,
        rec: &Record,
        endian: Endian,
        learned: Option<&mut KeyRing>,
    ) -> Result<Allowed, PolicyFailure> {
        let fail = |path: &[u8], reason: FailureKind, detail: String| PolicyFailure {
            index,
            path: String::from_utf8_lossy(path).into_owned(),
            reason,
            detail,
        };
        let v = match view(rec, endian) {
            Ok(v) => v,
            Err(e) => {
                let path = rec.name(endian).unwrap_or_else(|| "<unreadable>".into());
                return Err(fail(path.as_bytes(), FailureKind::MalformedRecord, e));
            }
        };
        if rec.is_violation() {
            if self.is_excluded(v.name) {
                return Ok(Allowed::Excluded);
            }
            if self.options.allow_violations {
                return Ok(Allowed::Violation);
            }
            return Err(fail(
                v.name,
                FailureKind::Violation,
                "violation record (ToMToU or open-writers): the measurement does not describe the file".into(),
            ));
        }
        match v.buf {
            Some(buf) => self.check_buf(&v, buf, learned).map_err(|(k, d)| fail(v.name, k, d)),
            None => self.check_file(&v, learned.as_deref()).map_err(|(k, d)| fail(v.name, k, d)),
        }
    }

    fn lookup(map: &DigestMap, v: &View) -> Result<(), (FailureKind, String)> {
        let measured = format!("{}:{}", v.algo, hex::encode(v.digest));
        match map.get(v.name) {
            None => Err((FailureKind::NotInPolicy, format!("no policy entry for this name (measured {measured})"))),
            Some(list) if list.iter().any(|d| d.matches(v.algo, v.digest)) => Ok(()),
            Some(list) => Err((
                FailureKind::DigestMismatch,
                format!("measured {measured} is not among the {} allowed digest(s)", list.len()),
            )),
        }
    }

    fn check_file(&self, v: &View, learned: Option<&KeyRing>) -> Result<Allowed, (FailureKind, String)> {
        if self.is_excluded(v.name) {
            return Ok(Allowed::Excluded);
        }
        let mut sig_note = None;
        if let Some(raw) = v.sig {
            let mut rings = vec![&self.keys];
            if let Some(l) = learned {
                rings.push(l);
            }
            match sig::verify(raw, v.algo, v.digest, &rings) {
                SigOutcome::Valid { keyid } => return Ok(Allowed::Signature { keyid }),
                SigOutcome::Invalid { keyid, detail } => {
                    sig_note = Some((true, format!("signature by key {keyid:08x} does not verify: {detail}")))
                }
                SigOutcome::Malformed(d) => sig_note = Some((true, format!("malformed signature: {d}"))),
                SigOutcome::UnknownKey { keyid } => {
                    sig_note = Some((false, format!("signed by key {keyid:08x}, which is not configured")))
                }
                SigOutcome::Unsupported(d) => sig_note = Some((false, format!("signature not checked: {d}"))),
            }
        }
        if let Some((true, note)) = &sig_note {
            if self.options.strict_signatures {
                return Err((FailureKind::BadSignature, note.clone()));
            }
        }
        if v.name == b"boot_aggregate" && !self.data.digests.contains_key(&b"boot_aggregate"[..]) {
            return Ok(Allowed::BootAggregate);
        }
        match Self::lookup(&self.data.digests, v) {
            Ok(()) => Ok(Allowed::Digest),
            Err((kind, detail)) => match sig_note {
                Some((true, note)) => Err((FailureKind::BadSignature, format!("{note}; {detail}"))),
                Some((false, note)) => Err((kind, format!("{detail}; {note}"))),
                None => Err((kind, detail)),
            },
        }
    }

    fn check_buf(&self, v: &View, buf: &[u8], learned: Option<&mut KeyRing>) -> Result<Allowed, (FailureKind, String)> {
        if !self.options.skip_buffer_digest_check {
            if let Some(h) = hash_named(v.algo, buf) {
                if h != v.digest {
                    return Err((
                        FailureKind::BufferDigestMismatch,
                        format!(
                            "{} of the buffer is {}, the record says {}",
                            v.algo,
                            hex::encode(&h),
                            hex::encode(v.digest)
                        ),
                    ));
                }
            }
        }
        let name_s = String::from_utf8_lossy(v.name);
        let ignored = self.data.ignored_keyrings.iter().any(|k| k == "*" || k.as_bytes() == v.name);
        match keys::try_parse_key(buf, &format!("key measured into keyring {name_s}")) {
            Ok(Some(key)) => {
                if ignored {
                    return Ok(Allowed::IgnoredKeyring);
                }
                if self.is_excluded(v.name) {
                    return Ok(Allowed::Excluded);
                }
                Self::lookup(&self.data.keyrings, v).map_err(|(k, d)| (k, format!("keyring key: {d}")))?;
                if let Some(l) = learned {
                    // Bounded by keys::MAX_KEYS; a full ring only stops learning.
                    let _ = l.add(key);
                }
                Ok(Allowed::Keyring)
            }
            Err(e) if !ignored => Err((FailureKind::InvalidKey, e.to_string())),
            Err(_) => Ok(Allowed::IgnoredKeyring),
            Ok(None) => {
                if self.is_excluded(v.name) {
                    return Ok(Allowed::Excluded);
                }
                Self::lookup(&self.data.ima_buf, v).map(|()| Allowed::Buffer)
            }
        }
    }
}

impl PartialEq for Policy {
    fn eq(&self, o: &Self) -> bool {
        self.data == o.data && self.options == o.options
    }
}
