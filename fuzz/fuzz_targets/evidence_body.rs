//! The agent's evidence body (`GET /v1/evidence`, `imasnap-evidence/1`) as the verifier
//! service takes it: `imasnap_agent_server::api::parse`, then one attestation round,
//! `imasnap_verifier_service::attest::run_round` (shipped AK trusted on first use, no prior
//! state), which builds the engine's evidence (`attest::evidence`) and verifies it.
//!
//! The first byte picks the late-join setting (full history or marker TOFU); the rest is
//! the body. The seeds are real bodies from an agent on the kernel model with the soft TPM,
//! quoted with [`NONCE`], so their quotes verify and mutations reach the engine.
//!
//! Asserted beyond "no panic":
//! - a parsed body: the data ranges lie inside the body, in header order, back to back up to
//!   its end, and `body_len` gives the body's length; the header written again with
//!   `encode_prefix` parses to the same header;
//! - a parse error makes the round fail with `BadEvidence` carrying the same text;
//! - a verified round: every PCR the replay touched equals the quote's value in every bank
//!   (the quote that was just authenticated), the checkpoint lies within the records sent,
//!   and verifying the same body again from the saved state (incremental) verifies at the
//!   same checkpoint.
#![no_main]

use imasnap_agent_server::api;
use imasnap_verifier::{Failure, Mode};
use imasnap_verifier_service::attest::run_round;
use imasnap_verifier_service::model::LateJoin;
use libfuzzer_sys::fuzz_target;

/// The verifier's challenge in the seeds (fuzz/examples/gen_seeds.rs uses the same).
const NONCE: &[u8; 32] = b"imasnap-fuzz-evidence-nonce-0001";

fn check_parsed(body: &[u8], p: &api::Parsed) {
    let h = &p.header;
    let hlen = u32::from_be_bytes(body[api::MAGIC.len()..api::MAGIC.len() + 4].try_into().unwrap()) as usize;
    let mut at = api::MAGIC.len() + 4 + hlen;
    assert_eq!(p.snapshot_data.len(), h.snapshots.len());
    for (s, r) in h.snapshots.iter().zip(&p.snapshot_data) {
        match (s.bytes, r) {
            (Some(n), Some(r)) => {
                assert_eq!((r.start, r.end - r.start), (at, n as usize));
                at = r.end;
            }
            (None, None) => {}
            other => panic!("snapshot {}: bytes and range disagree: {other:?}", s.seq),
        }
    }
    assert_eq!((p.live.start, p.live.end), (at, body.len()));
    assert_eq!(p.live.end - p.live.start, h.live_bytes as usize);
    assert_eq!(h.body_len(hlen), body.len() as u64);
    // The header written again parses to the same header, quote included (it is typed).
    let mut again = api::encode_prefix(h).expect("a parsed header encodes");
    let hl2 = again.len() - api::MAGIC.len() - 4;
    again.extend_from_slice(&body[api::MAGIC.len() + 4 + hlen..]);
    let p2 = api::parse(&again).expect("re-encoded header parses");
    assert_eq!(p2.header.body_len(hl2), again.len() as u64);
    assert_eq!(h, &p2.header, "header round trip");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let late = if sel & 1 == 0 { LateJoin::FullHistory } else { LateJoin::MarkerTofu };
    let parsed = api::parse(body);
    match &parsed {
        Ok(p) => check_parsed(body, p),
        Err(e) => assert!(!e.is_empty()),
    }
    // A host registered as simulated: evidence saying `simulated` goes on to the quote and replay.
    let round = run_round(body, NONCE, None, late, None, true, None, true);
    let r = match (round, &parsed) {
        (Err(Failure::BadEvidence { detail }), Err(e)) => {
            assert_eq!(&detail, e);
            return;
        }
        (Err(f), Err(e)) => panic!("unparsable body ({e}) gave {f:?}"),
        (Err(_), Ok(_)) => return,
        (Ok(r), Ok(_)) => r,
        (Ok(_), Err(e)) => panic!("unparsable body ({e}) made a round"),
    };
    let Ok(p) = parsed else { return };
    let Some(st) = r.outcome.state.as_ref().filter(|_| r.outcome.verdict.is_verified()) else { return };
    assert_eq!(r.mode, if late == LateJoin::FullHistory { Mode::FullHistory } else { Mode::LatestSegment });
    // Success means the replay reached the authenticated quote.
    let q = imasnap_verifier::bundle::quote_from_json(&serde_json::to_vec(&p.header.quote).unwrap())
        .expect("a verified round's quote parses");
    let touched: Vec<usize> = st.pcrs.touched().collect();
    assert!(!touched.is_empty(), "verified without touching a PCR");
    for &pcr in &touched {
        for &bank in &p.header.banks {
            assert_eq!(
                st.pcrs.get(bank, pcr).copied(),
                q.pcr_value(bank, pcr as u32),
                "verified state differs from the quote: {bank} PCR {pcr}"
            );
        }
    }
    let live_records_max = p.live.len() as u64; // a record is far more than one byte
    assert!(st.checkpoint <= p.header.live_first_index.saturating_add(live_records_max));
    // Verifying the same body from the state it produced gives the same checkpoint.
    let again = run_round(body, NONCE, Some(st), late, None, true, None, true).expect("second round runs");
    assert!(
        again.outcome.verdict.is_verified(),
        "re-verification from the saved state failed: {:?} (report {:?})",
        again.outcome.verdict,
        again.outcome.report
    );
    assert_eq!(again.outcome.state.as_ref().map(|s| s.checkpoint), Some(st.checkpoint));
});
