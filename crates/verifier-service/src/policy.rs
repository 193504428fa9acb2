//! Runtime policy for a host: loaded from the registered document (Keylime JSON runtime
//! policy or a flat allowlist, through `imasnap-policy`), applied to the records each round
//! proves (and only those: a record is judged once, after replay and the quote proved it).
//! snapshot_aggregate markers are imasnap's own records, proven by the engine as markers,
//! and are not judged by the policy.

use imasnap_log::{BinaryFormat, BinaryReader, HashAlgo, Record};
use imasnap_policy::KeyRing;
use imasnap_wire::evidence::Parsed;
use serde::{Deserialize, Serialize};

/// A host's policy, parsed once per registration.
#[derive(Debug)]
pub struct LoadedPolicy {
    pub policy: imasnap_policy::Policy,
}

pub const ENFORCED: bool = true;

pub fn load(text: &str) -> Result<LoadedPolicy, String> {
    let policy = imasnap_policy::Policy::parse(text.as_bytes()).map_err(|e| format!("policy: {e}"))?;
    Ok(LoadedPolicy { policy })
}

fn is_marker(rec: &Record) -> bool {
    rec.template.name() == "ima-buf"
        && rec.name(imasnap_log::Endian::Little).as_deref() == Some(imasnap_log::marker::EVENT_NAME)
}

fn check(p: &LoadedPolicy, index: u64, rec: &Record, learned: &mut KeyRing) -> Result<(), serde_json::Value> {
    if is_marker(rec) {
        return Ok(());
    }
    p.policy.check_learning(index, rec, learned).map(|_| ()).map_err(|f| {
        let mut v = serde_json::to_value(&f).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("message".into(), serde_json::Value::String(f.to_string()));
        }
        v
    })
}

/// Calls `f(index, record)` for every record of the evidence with a global index in
/// `[from, to)`, in order, across segment boundaries.
pub fn for_each_record(body: &[u8], p: &Parsed, from: u64, to: u64, f: &mut dyn FnMut(u64, &Record)) {
    let fmt = BinaryFormat::new(HashAlgo::Sha1);
    let mut segs: Vec<(u64, &[u8])> = Vec::new();
    for (i, s) in p.header.snapshots.iter().enumerate() {
        if let Some(Some(r)) = p.snapshot_data.get(i) {
            if s.first_index.saturating_add(s.count) > from {
                segs.push((s.first_index, body.get(r.clone()).unwrap_or(&[])));
            }
        }
    }
    segs.push((p.header.live_first_index, body.get(p.live.clone()).unwrap_or(&[])));
    // Suffix evidence: the first segment with data starts at `data_from`.
    if let (Some(d), Some(first)) = (p.header.data_from, segs.first_mut()) {
        first.0 = d;
    }
    for (first, bytes) in segs {
        if first >= to {
            break;
        }
        let mut rd = BinaryReader::starting_at(bytes, fmt, first);
        let mut slot = None;
        loop {
            let idx = rd.next_index();
            if idx >= to {
                return;
            }
            let Ok(Some(r)) = rd.read_into(&mut slot) else { break };
            if idx >= from {
                f(idx, r);
            }
        }
    }
}

/// Policy failures among the records `[from, to)` (the ones this round proved). Keys
/// measured into a keyring the policy lists are added to `learned` (Keylime semantics) and
/// verify the ima-sig signatures of later records, in this round and the following ones.
pub fn check_range(
    pol: &LoadedPolicy,
    body: &[u8],
    p: &Parsed,
    from: u64,
    to: u64,
    learned: &mut KeyRing,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for_each_record(body, p, from, to, &mut |i, r| {
        if let Err(f) = check(pol, i, r, learned) {
            if out.len() < 1000 {
                out.push(f);
            }
        }
    });
    out
}

/// A learned key as stored in the `learned_keys` column (and shown in a host's status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedKey {
    /// The IMA key id (signature v2 header), lowercase hex.
    pub keyid: String,
    /// `rsa`, `ecdsa-p256`, `ecdsa-p384`.
    pub kind: String,
    /// The keyring it was measured into.
    pub source: String,
    /// DER SubjectPublicKeyInfo, hex.
    pub spki: String,
}

/// The ring as stored: every key with its id (kept as learned: a certificate's SKID is
/// not recomputable from the SPKI alone).
pub fn keys_to_stored(r: &KeyRing) -> Vec<LearnedKey> {
    r.keys()
        .map(|k| LearnedKey {
            keyid: format!("{:08x}", k.keyid),
            kind: k.key.kind().into(),
            source: k.source.clone(),
            spki: hex::encode(&k.spki_der),
        })
        .collect()
}

/// The `learned_keys` column of a ring.
pub fn keys_to_json(r: &KeyRing) -> Result<String, String> {
    serde_json::to_string(&keys_to_stored(r)).map_err(|e| format!("learned_keys: cannot serialise: {e}"))
}

/// Rebuilds a ring from the `learned_keys` column.
pub fn keys_from_json(s: &str) -> Result<KeyRing, String> {
    let stored: Vec<LearnedKey> = serde_json::from_str(s).map_err(|e| format!("learned_keys: {e}"))?;
    let mut ring = KeyRing::new();
    for k in stored {
        let der = hex::decode(&k.spki).map_err(|e| format!("learned key {}: {e}", k.keyid))?;
        let keyid = u32::from_str_radix(&k.keyid, 16).map_err(|e| format!("learned key {}: {e}", k.keyid))?;
        let mut key = imasnap_policy::keys::parse_keys(&der, &k.source)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| format!("learned key {}: no key", k.keyid))?;
        key.keyid = keyid;
        key.source = k.source;
        ring.add(key).map_err(|e| e.to_string())?;
    }
    Ok(ring)
}
