//! Judging a replay against expected PCR values, with evmctl's verdict rules.

use crate::algo::{HashAlgo, PcrValue};
use crate::codec::{Endian, Record};
use crate::digest::check_boot_aggregate;
use crate::replay::{PcrTarget, ReplayReport};

/// Why a log failed verification.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub reason: String,
    /// Global index of the record at fault, where one is.
    pub record: Option<u64>,
}

/// Verdict rules for a replayed log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// Accept violation records in the verified prefix (evmctl `--ignore-violations`).
    pub ignore_violations: bool,
}

/// Applies the rules to a finished replay. `first_record` is the boot_aggregate record if
/// the log starts with one; it is checked when PCR 0-7 of its bank are in `target`.
pub fn judge(
    report: &ReplayReport,
    target: &PcrTarget,
    policy: Policy,
    first_record: Option<&Record>,
    endian: Endian,
) -> Result<(), Failure> {
    if let Some(&i) = report.template_digest_mismatches.first() {
        return Err(Failure {
            reason: format!("template digest does not match template data ({} records)", report.mismatch_count),
            record: Some(i),
        });
    }
    let Some(k) = report.matched_after else {
        let banks: Vec<&str> = target.values.keys().map(|a| a.name()).collect();
        return Err(Failure {
            reason: format!(
                "no prefix of the {} records replays to the given {} PCR values",
                report.records,
                banks.join("+")
            ),
            record: None,
        });
    };
    if let Some(v) = report.first_violation {
        if v < k && !policy.ignore_violations {
            return Err(Failure {
                reason: format!(
                    "{} violation record(s) in the verified log; pass --ignore-violations to accept them",
                    report.violations
                ),
                record: Some(v),
            });
        }
    }
    if let Some(rec) = first_record.filter(|r| r.name(endian).as_deref() == Some("boot_aggregate")) {
        let lookup = |a: HashAlgo| -> Option<Vec<PcrValue>> {
            let m = target.values.get(&a)?;
            (0..10).map(|i| m.get(&i).copied()).collect()
        };
        let needed = lookup_bank(rec, endian);
        if needed.map(|a| lookup(a).is_some()).unwrap_or(false) {
            check_boot_aggregate(rec, endian, lookup).map_err(|reason| Failure { reason, record: Some(0) })?;
        }
    }
    Ok(())
}

fn lookup_bank(rec: &Record, endian: Endian) -> Option<HashAlgo> {
    let fields = rec.fields(endian).ok()?;
    match rec.template.field(0, fields[0], endian).ok()? {
        crate::template::Field::Digest { algo: Some(a), .. } => HashAlgo::from_name(a),
        crate::template::Field::Digest { algo: None, .. } => Some(HashAlgo::Sha1),
        _ => None,
    }
}
