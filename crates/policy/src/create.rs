//! Building a Keylime runtime policy from measurements: `imasnap policy create`, the
//! equivalent of Keylime's `keylime_create_policy` / `keylime-policy create runtime`.
//!
//! Sans-IO like the rest of the crate: log records and `(path, digest)` pairs go in, a
//! [`Policy`] comes out. Reading logs, walking a directory tree and hashing files is the
//! caller's job (the CLI). The output follows Keylime's `RUNTIME_POLICY_SCHEMA`: digests
//! are bare lowercase hex of 40 to 128 characters, `meta.generator` and `release` are set.

use crate::model::{trunc, AllowedDigest, DigestMap, PolicyData, MAX_DIGEST_ENTRIES, MAX_EXCLUDES, MAX_PATH};
use crate::{compile_excludes, keys, view, KeyRing, LoadError, Policy};
use imasnap_log::{Endian, HashAlgo, Record};

/// Keylime's `RUNTIME_POLICY_GENERATOR.LegacyAllowList`, which `keylime-policy create
/// runtime` writes into every policy it makes (7.14.3), so a policy from either tool
/// looks the same to a verifier.
pub const GENERATOR: i64 = 3;

/// Most notes kept in [`Stats::notes`]; the rest are only counted.
const MAX_NOTES: usize = 100;

/// What goes into the policy besides file digests.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Keys measured into keyrings (ima-buf records whose buffer is a key) become
    /// `keyrings` entries (Keylime `--keyrings`).
    pub keyrings: bool,
    /// Other ima-buf records become `ima-buf` entries (Keylime `--ima-buf`).
    pub ima_buf: bool,
    /// `ima.ignored_keyrings` (Keylime `--ignored-keyrings`): their keys are not listed.
    pub ignored_keyrings: Vec<String>,
}

/// What a record contributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contribution {
    Digest,
    Keyring,
    Buffer,
    /// Not listed; [`Stats`] says why.
    Skipped,
}

/// Counts of what went in, and notes about what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub records: u64,
    pub file_records: u64,
    pub keyring_records: u64,
    pub ima_buf_records: u64,
    /// Violations (all-zero template digest): their file digest says nothing.
    pub violations: u64,
    /// imasnap's `snapshot_aggregate` markers: proven by `imasnap verify`, and different
    /// at every cut, so never listed.
    pub markers: u64,
    /// ima-buf records left out: not asked for (`keyrings`/`ima_buf` off) or an ignored keyring.
    pub buffers_not_listed: u64,
    /// Names that match an exclude: allowed anyway, so not listed.
    pub excluded: u64,
    /// Digests given directly (directory tree).
    pub files: u64,
    /// Names JSON cannot carry (not UTF-8) and digests Keylime's schema refuses (md5).
    pub unusable: u64,
    pub notes: Vec<String>,
}

/// An input that cannot be put into a policy, with the record index or path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("record {index} ({path}): {detail}")]
    Record { index: u64, path: String, detail: String },
    #[error("{path}: {detail}")]
    Path { path: String, detail: String },
    #[error("{0}")]
    Load(#[from] LoadError),
}

/// Accumulates a runtime policy. Entries are deduplicated; order does not matter.
#[derive(Debug)]
pub struct Creator {
    data: PolicyData,
    excludes: Option<regex::bytes::RegexSet>,
    opts: CreateOptions,
    entries: usize,
    stats: Stats,
}

impl Creator {
    pub fn new(opts: CreateOptions) -> Self {
        Self::with_base(Policy::empty(), opts)
    }

    /// Starts from an existing policy (Keylime `--base-policy`): its digests, excludes,
    /// keyrings, ima-buf entries, ignored keyrings, `log_hash_alg` and keys are kept.
    pub fn with_base(base: Policy, opts: CreateOptions) -> Self {
        let Policy { mut data, excludes, .. } = base;
        for k in &opts.ignored_keyrings {
            if !data.ignored_keyrings.contains(k) {
                data.ignored_keyrings.push(k.clone());
            }
        }
        data.warnings.clear();
        let entries = [&data.digests, &data.keyrings, &data.ima_buf]
            .iter()
            .map(|m| m.values().map(Vec::len).sum::<usize>())
            .sum();
        Self { data, excludes, opts, entries, stats: Stats::default() }
    }

    /// Adds exclude regexes (Keylime's, anchored at the start of the name). Names that
    /// match are left out of the digests added afterwards.
    pub fn add_excludes<S: AsRef<str>>(&mut self, pats: &[S]) -> Result<(), LoadError> {
        for p in pats {
            let p = p.as_ref();
            if !self.data.excludes.iter().any(|e| e == p) {
                self.data.excludes.push(p.to_string());
            }
        }
        if self.data.excludes.len() > MAX_EXCLUDES {
            return Err(LoadError::Limit(format!("more than {MAX_EXCLUDES} excludes")));
        }
        self.excludes = compile_excludes(&self.data.excludes)?;
        Ok(())
    }

    /// Adds signature verification keys (`verification-keys`).
    pub fn add_keys(&mut self, ring: &KeyRing) {
        for k in ring.keys() {
            if !self.data.verification_keys.contains(k) {
                self.data.verification_keys.push(k.clone());
            }
        }
    }

    /// Keylime `ima.log_hash_alg`: the bank of the template digests in the log the
    /// verifier will read (sha1 for the kernel's `ascii_runtime_measurements`).
    pub fn set_log_hash_alg(&mut self, a: HashAlgo) {
        self.data.log_hash_alg = a;
    }

    /// True when `name` matches an exclude (the caller may skip hashing it).
    pub fn is_excluded(&self, name: &[u8]) -> bool {
        self.excludes.as_ref().is_some_and(|s| s.is_match(name))
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn note(&mut self, s: String) {
        if self.stats.notes.len() < MAX_NOTES {
            self.stats.notes.push(s);
        }
    }

    /// Inserts into a section; `Err` is the reason the entry cannot be expressed.
    fn insert(&mut self, section: Section, name: &[u8], digest: &[u8]) -> Result<(), String> {
        if std::str::from_utf8(name).is_err() {
            return Err("name is not UTF-8, which a JSON policy cannot carry".into());
        }
        if name.len() > MAX_PATH {
            return Err(format!("name of {} bytes is longer than {MAX_PATH}", name.len()));
        }
        // Keylime's schema takes 40 to 128 hex digits, so sha1 and up (md5, from legacy
        // `ima` on very old kernels, has no place); the loader, only known digest sizes.
        if !matches!(digest.len(), 20 | 28 | 32 | 48 | 64) {
            return Err(format!(
                "a {}-byte digest is not a size Keylime's schema and the loader accept (20, 28, 32, 48 or 64)",
                digest.len()
            ));
        }
        let map: &mut DigestMap = match section {
            Section::Digests => &mut self.data.digests,
            Section::Keyrings => &mut self.data.keyrings,
            Section::ImaBuf => &mut self.data.ima_buf,
        };
        let d = AllowedDigest { algo: None, bytes: digest.into() };
        let list = map.entry(name.into()).or_default();
        if !list.contains(&d) {
            list.push(d);
            self.entries += 1;
        }
        Ok(())
    }

    fn check_limit(&self) -> Result<(), LoadError> {
        if self.entries > MAX_DIGEST_ENTRIES {
            return Err(LoadError::Limit(format!("more than {MAX_DIGEST_ENTRIES} digest entries")));
        }
        Ok(())
    }

    /// Adds one log record: a file digest to `digests`, a key measured into a keyring to
    /// `keyrings` (with [`CreateOptions::keyrings`]), another ima-buf record to `ima-buf`
    /// (with [`CreateOptions::ima_buf`]). Violations and `snapshot_aggregate` markers are
    /// counted and left out. A record whose fields cannot be read is an error.
    pub fn add_record(&mut self, index: u64, rec: &Record, endian: Endian) -> Result<Contribution, CreateError> {
        self.stats.records += 1;
        let v = view(rec, endian).map_err(|detail| CreateError::Record {
            index,
            path: rec.name(endian).unwrap_or_else(|| "<unreadable>".into()),
            detail,
        })?;
        let path = || String::from_utf8_lossy(v.name).into_owned();
        if rec.is_violation() {
            self.stats.violations += 1;
            return Ok(Contribution::Skipped);
        }
        if self.is_excluded(v.name) {
            self.stats.excluded += 1;
            return Ok(Contribution::Skipped);
        }
        let section = match v.buf {
            None => Section::Digests,
            Some(_) if v.name == imasnap_log::marker::EVENT_NAME.as_bytes() => {
                self.stats.markers += 1;
                return Ok(Contribution::Skipped);
            }
            Some(buf) => {
                // Keylime lists a buffer that is a key under `keyrings` only, never under
                // `ima-buf`; a key of a type it cannot use still counts as a key.
                let is_key = !matches!(keys::try_parse_key(buf, "ima-buf"), Ok(None));
                let ignored = self.data.ignored_keyrings.iter().any(|k| k == "*" || k.as_bytes() == v.name);
                match (is_key, self.opts.keyrings && !ignored, self.opts.ima_buf) {
                    (true, true, _) => Section::Keyrings,
                    (false, _, true) => Section::ImaBuf,
                    _ => {
                        self.stats.buffers_not_listed += 1;
                        return Ok(Contribution::Skipped);
                    }
                }
            }
        };
        if let Err(detail) = self.insert(section, v.name, v.digest) {
            self.stats.unusable += 1;
            self.note(format!("record {index} ({}): left out: {detail}", trunc(&path())));
            return Ok(Contribution::Skipped);
        }
        self.check_limit()?;
        Ok(match section {
            Section::Digests => {
                self.stats.file_records += 1;
                Contribution::Digest
            }
            Section::Keyrings => {
                self.stats.keyring_records += 1;
                Contribution::Keyring
            }
            Section::ImaBuf => {
                self.stats.ima_buf_records += 1;
                Contribution::Buffer
            }
        })
    }

    /// Adds the digest of a file as the host would measure it (`path` absolute). The name
    /// is the one IMA logs: the kernel stores a space in a path as `_` (so does Keylime's
    /// tree walk). An excluded path is skipped (`Ok(false)`); so is one JSON cannot carry,
    /// with a note.
    pub fn add_file(&mut self, path: &[u8], digest: &[u8]) -> Result<bool, CreateError> {
        let logged: Vec<u8>;
        let path = if path.contains(&b' ') {
            logged = path.iter().map(|&b| if b == b' ' { b'_' } else { b }).collect();
            &logged[..]
        } else {
            path
        };
        if self.is_excluded(path) {
            self.stats.excluded += 1;
            return Ok(false);
        }
        if let Err(detail) = self.insert(Section::Digests, path, digest) {
            self.stats.unusable += 1;
            self.note(format!("{}: left out: {detail}", trunc(&String::from_utf8_lossy(path))));
            return Ok(false);
        }
        self.check_limit()?;
        self.stats.files += 1;
        Ok(true)
    }

    /// The policy (version 1, `generator` 3, `release` 0), checked by loading its own
    /// JSON back, so what is returned is exactly what `imasnap policy check` will read.
    pub fn finish(self, timestamp: Option<String>) -> Result<(Policy, Stats), LoadError> {
        let mut data = self.data;
        data.meta.generator = Some(GENERATOR);
        data.meta.timestamp = timestamp;
        data.release = Some(data.release.unwrap_or(0).max(0));
        for m in [&mut data.digests, &mut data.keyrings, &mut data.ima_buf] {
            for list in m.values_mut() {
                list.sort_by(|a, b| a.bytes.cmp(&b.bytes));
            }
        }
        data.excludes.sort();
        data.excludes.dedup();
        data.ignored_keyrings.sort();
        data.ignored_keyrings.dedup();
        let json = crate::model::to_keylime_json(&data);
        let policy = Policy::from_keylime_json(json.to_string().as_bytes())?;
        Ok((policy, self.stats))
    }
}

#[derive(Clone, Copy)]
enum Section {
    Digests,
    Keyrings,
    ImaBuf,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::{Allowed, FailureKind};
    use imasnap_log::entry::{build, builtin, d_ng};
    use sha2::{Digest, Sha256};

    fn ima_ng(path: &str, content: &[u8]) -> Record {
        let n = [path.as_bytes(), b"\0"].concat();
        build(
            &builtin("ima-ng"),
            &[&d_ng("sha256", &Sha256::digest(content)), &n],
            HashAlgo::Sha1,
            10,
            false,
            Endian::Little,
        )
    }

    fn ima_buf(name: &str, buf: &[u8]) -> Record {
        let n = [name.as_bytes(), b"\0"].concat();
        build(
            &builtin("ima-buf"),
            &[&d_ng("sha256", &Sha256::digest(buf)), &n, buf],
            HashAlgo::Sha1,
            10,
            false,
            Endian::Little,
        )
    }

    fn key_der() -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        sk.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec()
    }

    fn log() -> Vec<Record> {
        vec![
            ima_ng("boot_aggregate", b"pcrs"),
            ima_ng("/usr/bin/a", b"a"),
            ima_ng("/usr/bin/a", b"a2"),
            ima_ng("/tmp/x", b"x"),
            ima_buf(".ima", &key_der()),
            ima_buf("kernel_version", b"6.12"),
            ima_buf("snapshot_aggregate", b"Snapshot_Attempt_Count=1;"),
        ]
    }

    fn create(opts: CreateOptions, excludes: &[&str]) -> (Policy, Stats) {
        let mut c = Creator::new(opts);
        c.add_excludes(excludes).unwrap();
        for (i, r) in log().iter().enumerate() {
            c.add_record(i as u64, r, Endian::Little).unwrap();
        }
        c.finish(Some("t".into())).unwrap()
    }

    #[test]
    fn records_go_where_keylime_puts_them() {
        let (p, s) = create(CreateOptions { keyrings: true, ima_buf: true, ..Default::default() }, &["/tmp/"]);
        let j = p.to_keylime_json();
        assert_eq!(j["meta"]["generator"], 3);
        assert_eq!(j["release"], 0);
        assert_eq!(j["digests"]["/usr/bin/a"].as_array().unwrap().len(), 2);
        assert!(j["digests"]["boot_aggregate"].is_array());
        assert!(j["digests"].get("/tmp/x").is_none(), "excluded names are not listed");
        assert_eq!(j["excludes"], serde_json::json!(["/tmp/"]));
        assert!(j["keyrings"][".ima"].is_array());
        assert!(j["ima-buf"]["kernel_version"].is_array());
        assert!(j["ima-buf"].get("snapshot_aggregate").is_none());
        assert!(j["ima-buf"].get(".ima").is_none(), "a key goes to keyrings only");
        assert_eq!((s.file_records, s.keyring_records, s.ima_buf_records, s.markers, s.excluded), (3, 1, 1, 1, 1));
        // Every digest is bare lowercase hex, as Keylime's schema requires.
        for l in j["digests"].as_object().unwrap().values() {
            for d in l.as_array().unwrap() {
                let d = d.as_str().unwrap();
                assert!(d.len() >= 40 && d.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{d}");
            }
        }
    }

    #[test]
    fn the_log_passes_its_own_policy_and_a_changed_digest_fails() {
        let (p, _) = create(CreateOptions { keyrings: true, ima_buf: true, ..Default::default() }, &["/tmp/"]);
        for (i, r) in
            log().iter().enumerate().filter(|(_, r)| r.name(Endian::Little).as_deref() != Some("snapshot_aggregate"))
        {
            p.check(i as u64, r).unwrap_or_else(|f| panic!("{f}"));
        }
        let f = p.check(9, &ima_ng("/usr/bin/a", b"other")).unwrap_err();
        assert_eq!((f.index, f.reason), (9, FailureKind::DigestMismatch));
    }

    #[test]
    fn buffers_only_when_asked_and_ignored_keyrings() {
        let (p, s) = create(CreateOptions::default(), &[]);
        let j = p.to_keylime_json();
        assert_eq!(j["keyrings"], serde_json::json!({}));
        assert_eq!(j["ima-buf"], serde_json::json!({}));
        assert_eq!(s.buffers_not_listed, 2);
        let opts = CreateOptions { keyrings: true, ignored_keyrings: vec![".ima".into()], ..Default::default() };
        let (p, _) = create(opts, &[]);
        assert_eq!(p.to_keylime_json()["keyrings"], serde_json::json!({}));
        assert_eq!(p.check(4, &log()[4]), Ok(Allowed::IgnoredKeyring));
    }

    #[test]
    fn files_base_merge_and_unusable_entries() {
        let base = Policy::from_allowlist(&format!("{}  /etc/keep\n", "ab".repeat(32))).unwrap();
        let mut c = Creator::with_base(base, CreateOptions::default());
        c.add_excludes(&["/var/"]).unwrap();
        assert!(c.add_file(b"/usr/lib/x.so", &[1; 32]).unwrap());
        assert!(c.add_file(b"/usr/lib/x.so", &[1; 32]).unwrap(), "duplicates are merged");
        assert!(c.add_file(b"/etc/name with space", &[5; 32]).unwrap());
        assert!(!c.add_file(b"/var/log/y", &[2; 32]).unwrap());
        assert!(!c.add_file(b"/bad\xff", &[3; 32]).unwrap());
        assert!(!c.add_file(b"/md5", &[4; 16]).unwrap());
        let (p, s) = c.finish(None).unwrap();
        let j = p.to_keylime_json();
        assert_eq!(j["digests"]["/etc/keep"], serde_json::json!(["ab".repeat(32)]));
        assert_eq!(j["digests"]["/usr/lib/x.so"], serde_json::json!(["01".repeat(32)]));
        assert!(j["digests"]["/etc/name_with_space"].is_array(), "named as IMA logs it");
        assert_eq!((s.files, s.excluded, s.unusable, s.notes.len()), (3, 1, 2, 2));
        assert!(s.notes[0].contains("not UTF-8"), "{:?}", s.notes);
    }

    #[test]
    fn a_bad_exclude_and_a_malformed_record_are_named() {
        let mut c = Creator::new(CreateOptions::default());
        let e = c.add_excludes(&["(unclosed"]).unwrap_err();
        assert!(e.to_string().starts_with("excludes[0]"), "{e}");
        let mut r = ima_ng("/x", b"x");
        r.template_data.truncate(3);
        let e = c.add_record(41, &r, Endian::Little).unwrap_err();
        assert!(e.to_string().starts_with("record 41 "), "{e}");
    }
}
