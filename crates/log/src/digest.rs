//! Template digests and the values each bank is extended with (kernel `ima_crypto.c`).

use crate::algo::{HashAlgo, PcrValue};
use crate::codec::{Endian, Record};
use crate::error::Reason;
use crate::template::{Template, IMA_NAME_HASH_LEN};

/// How non-SHA1 banks were extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtendMode {
    /// Kernel 5.8+: each bank extends its own hash of the template data.
    Native,
    /// Before 5.8: every bank extends the SHA1 template digest zero-padded to the bank size.
    PaddedSha1,
}

/// Template digest of `rec` in bank `algo`: the hash over the template data as stored,
/// except for the legacy `ima` template, `H(d || name zero-padded to 256 bytes)`.
pub fn template_hash(algo: HashAlgo, rec: &Record, endian: Endian) -> Result<PcrValue, Reason> {
    template_hash_data(algo, &rec.template, &rec.template_data, endian)
}

/// [`template_hash`] over template data that is not in a [`Record`] (e.g. borrowed from the
/// read buffer).
pub fn template_hash_data(
    algo: HashAlgo,
    template: &Template,
    data: &[u8],
    endian: Endian,
) -> Result<PcrValue, Reason> {
    if !template.is_legacy_ima() {
        return Ok(algo.hash(&[data]));
    }
    let bad = |d: &str| Reason::Unhashable("ima".into(), d.into());
    let d = data.get(..20).ok_or_else(|| bad("short d field"))?;
    let nl = data.get(20..24).map(|b| endian.u32(b) as usize).ok_or_else(|| bad("missing name length"))?;
    let name = data.get(24..24 + nl).ok_or_else(|| bad("short name"))?;
    if name.len() >= IMA_NAME_HASH_LEN {
        return Err(bad("name longer than 255 bytes"));
    }
    let mut padded = [0u8; IMA_NAME_HASH_LEN];
    padded[..name.len()].copy_from_slice(name);
    Ok(algo.hash(&[d, &padded]))
}

/// What a violation extends: 0xff for the bank size, or (pre-5.8) 20 bytes of 0xff then zeros.
pub fn violation_value(algo: HashAlgo, mode: ExtendMode) -> PcrValue {
    match mode {
        ExtendMode::Native => PcrValue::ones(algo),
        ExtendMode::PaddedSha1 => PcrValue::from_slice(algo, &[0xff; 20]),
    }
}

/// boot_aggregate over PCR 0-7 (SHA1 banks, and every bank before 5.8) or PCR 0-9.
pub fn boot_aggregate(algo: HashAlgo, pcrs: &[PcrValue], include_8_9: bool) -> PcrValue {
    let n = if include_8_9 { 10 } else { 8 };
    let mut h = algo.hasher();
    for p in pcrs.iter().take(n) {
        h.update(p.as_bytes());
    }
    h.finish()
}

/// The kernel's rule: PCR 8-9 are included for every bank but SHA1 (since 5.8).
pub fn boot_aggregate_includes_8_9(algo: HashAlgo) -> bool {
    algo != HashAlgo::Sha1
}

/// Checks a boot_aggregate record's file digest against PCR 0-9 of the bank named in its
/// `d-ng` field. Returns which rule matched: `Some(true)` for PCR 0-9, `Some(false)` for 0-7.
pub fn check_boot_aggregate(
    rec: &Record,
    endian: Endian,
    bank_pcrs: impl Fn(HashAlgo) -> Option<Vec<PcrValue>>,
) -> Result<bool, String> {
    let fields = rec.fields(endian).map_err(|e| e.to_string())?;
    let f = rec.template.field(0, fields[0], endian).map_err(|e| e.to_string())?;
    let (algo, digest) = match f {
        crate::template::Field::Digest { algo: Some(a), digest, .. } => {
            (HashAlgo::from_name(a).ok_or_else(|| format!("boot_aggregate uses unsupported bank {a}"))?, digest)
        }
        crate::template::Field::Digest { algo: None, digest, .. } => (HashAlgo::Sha1, digest),
        _ => return Err("boot_aggregate has no digest field".into()),
    };
    let pcrs = bank_pcrs(algo).ok_or_else(|| format!("no {algo} PCR 0-9 values to check boot_aggregate"))?;
    if pcrs.len() < 10 {
        return Err("need PCR 0-9".into());
    }
    if digest.iter().all(|&b| b == 0) && pcrs.iter().take(10).all(|p| p.is_zero()) {
        return Ok(false);
    }
    let rules: &[bool] = if boot_aggregate_includes_8_9(algo) { &[true, false] } else { &[false] };
    for &with in rules {
        if boot_aggregate(algo, &pcrs, with).as_bytes() == digest {
            return Ok(with);
        }
    }
    Err(format!("boot_aggregate {} does not match {algo} PCR 0-{}", hex::encode(digest), if rules[0] { 9 } else { 7 }))
}
