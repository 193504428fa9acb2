//! The verifier's own per-host state (SNAPSHOTS.md "Verifier state"): the only input the
//! engine trusts besides the quote, because it wrote it.

use imasnap_log::replay::NUM_PCRS;
use imasnap_log::{HashAlgo, PcrState, PcrValue};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which cold boot a state belongs to. Serialises with the digest as hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BootJson", into = "BootJson")]
pub struct BootIdentity {
    /// TPM resetCount from the quote.
    pub reset_count: u64,
    /// SHA1 template digest of record 0 (the boot_aggregate); `None` when only the latest
    /// segment was verified and record 0 was never replayed.
    pub boot_aggregate_sha1: Option<[u8; 20]>,
}

/// Proven progress through one boot's log.
///
/// Serde goes through one checked JSON shape (the one [`State::to_json`] writes and every
/// saved state has): PCR values as hex per bank, and the extended PCRs as `extended`.
/// Deserialising checks every size, as [`State::from_json`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StateJson", into = "StateJson")]
pub struct State {
    pub boot: BootIdentity,
    /// Global index of the next record to replay: everything before it is proven.
    pub checkpoint: u64,
    /// PCR 0-23 of every bank at the checkpoint. Its touched set is the set of PCRs the log
    /// has extended (serialised as `extended`).
    pub pcrs: PcrState,
    /// Snapshots whose records (from where verification started) and end marker are proven.
    pub verified_snapshots: u64,
    /// Attempt count of the last marker of the current kernel at or before the checkpoint.
    pub last_attempt: Option<u64>,
    /// False when verification started from a marker, not from record 0.
    pub history_verified: bool,
}

#[derive(Serialize, Deserialize)]
struct BootJson {
    reset_count: u64,
    boot_aggregate_sha1: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StateJson {
    boot: BootJson,
    checkpoint: u64,
    pcrs: BTreeMap<HashAlgo, Vec<String>>,
    extended: Vec<u32>,
    verified_snapshots: u64,
    last_attempt: Option<u64>,
    history_verified: bool,
}

impl From<BootIdentity> for BootJson {
    fn from(b: BootIdentity) -> Self {
        Self { reset_count: b.reset_count, boot_aggregate_sha1: b.boot_aggregate_sha1.map(hex::encode) }
    }
}

impl TryFrom<BootJson> for BootIdentity {
    type Error = String;
    fn try_from(j: BootJson) -> Result<Self, String> {
        let boot_aggregate_sha1 = match j.boot_aggregate_sha1 {
            None => None,
            Some(h) => {
                let b = hex::decode(&h).map_err(|e| format!("boot_aggregate_sha1: {e}"))?;
                Some(<[u8; 20]>::try_from(b.as_slice()).map_err(|_| "boot_aggregate_sha1 must be 20 bytes")?)
            }
        };
        Ok(Self { reset_count: j.reset_count, boot_aggregate_sha1 })
    }
}

impl From<State> for StateJson {
    fn from(s: State) -> Self {
        Self {
            boot: s.boot.into(),
            checkpoint: s.checkpoint,
            pcrs: s
                .pcrs
                .banks()
                .iter()
                .filter_map(|&b| Some((b, s.pcrs.bank(b)?.iter().map(|v| v.to_hex()).collect())))
                .collect(),
            extended: s.pcrs.touched().map(|p| p as u32).collect(),
            verified_snapshots: s.verified_snapshots,
            last_attempt: s.last_attempt,
            history_verified: s.history_verified,
        }
    }
}

impl TryFrom<StateJson> for State {
    type Error = String;
    fn try_from(j: StateJson) -> Result<Self, String> {
        let boot = BootIdentity::try_from(j.boot)?;
        let banks: Vec<HashAlgo> = j.pcrs.keys().copied().collect();
        if banks.is_empty() || banks.len() > HashAlgo::ALL.len() {
            return Err("pcrs must name 1 to 5 banks".into());
        }
        let mut pcrs = PcrState::new(&banks);
        for (bank, vals) in &j.pcrs {
            if vals.len() != NUM_PCRS {
                return Err(format!("pcrs.{bank} has {} values, want {NUM_PCRS}", vals.len()));
            }
            for (i, v) in vals.iter().enumerate() {
                pcrs.set(i, PcrValue::from_hex(*bank, v).map_err(|e| format!("pcrs.{bank}[{i}]: {e}"))?);
            }
        }
        for p in j.extended {
            if p as usize >= NUM_PCRS {
                return Err(format!("extended PCR {p} out of range"));
            }
            pcrs.mark_touched(p as usize);
        }
        Ok(Self {
            boot,
            checkpoint: j.checkpoint,
            pcrs,
            verified_snapshots: j.verified_snapshots,
            last_attempt: j.last_attempt,
            history_verified: j.history_verified,
        })
    }
}

impl State {
    /// The saved form: pretty JSON of the serde shape.
    pub fn to_json(&self) -> String {
        // Serialising plain maps, strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a saved state (any written by [`State::to_json`], this version or earlier),
    /// checking every value's size.
    pub fn from_json(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map_err(|e| format!("verifier state: {e}"))
    }
}
