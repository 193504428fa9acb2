//! One attestation round, without I/O: evidence bytes from the agent plus the stored
//! state in, the engine's outcome (and policy findings) out. Runs on a blocking thread.

use crate::model::LateJoin;
use imasnap_policy::KeyRing;
use imasnap_tpm::AkPublic;
use imasnap_verifier::{verify, Evidence, Failure, Input, Mode, Options, Outcome, SnapshotEvidence, State, TpmQuote};
use imasnap_wire::evidence::{self as api, Parsed};

/// Where the next round asks the agent to start, given the saved state.
pub fn request_from(state: Option<&State>, late_join: LateJoin) -> (api::From, Option<String>) {
    match state {
        Some(s) => {
            let boot = match s.boot.boot_aggregate_sha1 {
                Some(ba) => format!("{}:{}", s.boot.reset_count, hex::encode(ba)),
                None => s.boot.reset_count.to_string(),
            };
            (api::From::Index(s.checkpoint), Some(boot))
        }
        None => match late_join {
            LateJoin::FullHistory => (api::From::Index(0), None),
            LateJoin::MarkerTofu => (api::From::Latest, None),
        },
    }
}

/// The engine's evidence over the parsed body (borrowing its bytes).
pub fn evidence<'a>(body: &'a [u8], p: &Parsed) -> Result<Evidence<'a>, Failure> {
    let h = &p.header;
    let mut snapshots = Vec::with_capacity(h.snapshots.len());
    for (i, s) in h.snapshots.iter().enumerate() {
        let claim = s.claim()?;
        let data = p.snapshot_data.get(i).cloned().flatten().and_then(|r| body.get(r)).map(Input::Bytes);
        snapshots.push(SnapshotEvidence { claim, data });
    }
    Ok(Evidence {
        banks: h.banks.clone(),
        pcr: h.pcr,
        endian: imasnap_log::Endian::Little,
        boot: Some(h.boot_claim()?),
        snapshots,
        live: Input::Bytes(body.get(p.live.clone()).unwrap_or(&[])),
        live_first_index: h.live_first_index,
        data_from: h.data_from,
    })
}

/// The AK the agent ships (a claim).
pub fn shipped_ak(h: &api::EvidenceHeader) -> Result<AkPublic, Failure> {
    Ok(h.ak.public()?)
}

/// Everything one round decided.
pub struct RoundResult {
    pub outcome: Outcome,
    /// The AK that verified the quote, when it was enrolled on first use in this round.
    pub enrolled_ak: Option<AkPublic>,
    pub mode: Mode,
    /// With a marker start (late join): the accepted marker's index and digest.
    pub accepted_marker: Option<serde_json::Value>,
    pub policy_failures: Vec<serde_json::Value>,
    /// The host's learned keys after this round (with a policy and a verified round).
    pub learned: Option<KeyRing>,
    /// The header's claims in brief, for display ([`crate::model::EvidenceSummary`]).
    pub summary: crate::model::EvidenceSummary,
}

/// Refuses evidence whose header says `simulated` for a host not registered as simulated.
pub fn check_simulated(h: &api::EvidenceHeader, host_simulated: bool) -> Result<(), Failure> {
    if h.simulated.is_empty() || host_simulated {
        return Ok(());
    }
    let parts: Vec<&str> = h.simulated.iter().map(|s| s.as_str()).collect();
    Err(Failure::SimulatedEvidence { simulated: format!("[{}]", parts.join(", ")) })
}

/// Verifies one evidence body. `trusted_ak` is the enrolled key; without one, `tofu`
/// enrols the shipped key (the quote must still verify under it). `policy` comes with the
/// host's learned keys; the result carries the keys learned after this round. Evidence
/// from a simulated back end is refused unless `simulated` (the host's registration).
#[allow(clippy::too_many_arguments)]
pub fn run_round(
    body: &[u8],
    nonce: &[u8],
    prior: Option<&State>,
    late_join: LateJoin,
    trusted_ak: Option<&AkPublic>,
    tofu: bool,
    policy: Option<(&crate::policy::LoadedPolicy, &KeyRing)>,
    simulated: bool,
) -> Result<RoundResult, Failure> {
    let parsed = api::parse(body).map_err(|detail| Failure::BadEvidence { detail })?;
    let summary = crate::model::EvidenceSummary::of(&parsed.header);
    check_simulated(&parsed.header, simulated)?;
    let shipped = shipped_ak(&parsed.header).ok();
    let (ak, enrolled) = match (trusted_ak, &shipped) {
        (Some(k), _) => (k.clone(), None),
        (None, Some(s)) if tofu => (s.clone(), Some(s.clone())),
        (None, _) => {
            return Err(Failure::BadEvidence {
                detail: "no trusted AK for this host and trust on first use is off".into(),
            })
        }
    };
    let quote = &parsed.header.quote;
    let mode = match prior {
        Some(_) => Mode::Incremental,
        None => match late_join {
            LateJoin::FullHistory => Mode::FullHistory,
            LateJoin::MarkerTofu => Mode::LatestSegment,
        },
    };
    let ev = evidence(body, &parsed)?;
    let q = TpmQuote { quote, trusted_ak: &ak, claimed_ak: shipped.as_ref() };
    let mut opts = Options::new(mode);
    // Many rounds run at once: one thread each is the better use of the cores.
    opts.parallel = false;
    let start = prior.map(|s| s.checkpoint);
    let outcome = verify(&opts, ev, &q, nonce, prior);
    let mut accepted_marker = None;
    let mut policy_failures = Vec::new();
    let mut learned_after = None;
    if let (true, Some(st)) = (outcome.verdict.is_verified(), &outcome.state) {
        if prior.is_none() && !st.history_verified {
            accepted_marker = Some(serde_json::json!({
                "index": parsed.header.live_first_index,
                "reset_count": st.boot.reset_count,
                "accepted": "trust on first use (late join)",
            }));
        }
        if let Some((p, learned)) = policy {
            // The records this round proved: from the previous checkpoint (or where the
            // replay started) up to the new one. Restarts (cold boot) recheck from 0.
            // Keys learned from this boot's log carry over; a fresh start (no state, cold
            // boot, new boot_aggregate) learns again from the records it judges.
            let (from, mut ring) = match (&outcome.report.restart, start) {
                (None, Some(c)) => (c, learned.clone()),
                _ => {
                    let from = if st.history_verified { 0 } else { parsed.header.live_first_index };
                    (from, KeyRing::new())
                }
            };
            policy_failures = crate::policy::check_range(p, body, &parsed, from, st.checkpoint, &mut ring);
            learned_after = Some(ring);
        }
    }
    Ok(RoundResult {
        outcome,
        enrolled_ak: enrolled,
        mode,
        accepted_marker,
        policy_failures,
        learned: learned_after,
        summary,
    })
}
