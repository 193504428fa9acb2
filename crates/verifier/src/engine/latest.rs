//! Latest segment: trust starts at the marker heading the live list, whose values are
//! checked against the quote's platform PCRs; history before it is not verified.

use super::classify::{classify, Kind};
use super::full::{check_ranges, replay_segment};
use super::replay::{check_end_marker_claim, Engine};
use super::segment::Seg;
use super::Mode;
use crate::reason::{Failure, Segment};
use crate::state::State;
use imasnap_log::PcrState;

/// Latest segment only: the live list's head marker is the start state.
pub(super) fn latest(mut eng: Engine<'_>, mut segs: Vec<Seg<'_>>) -> Result<State, Failure> {
    eng.report.mode = Some(Mode::LatestSegment);
    eng.report.snapshots_skipped = segs.len().saturating_sub(1) as u64;
    // The manifest's ranges are claims the next incremental round checks; a latest-segment
    // verdict that skipped them was accepted once and then rejected (evidence_body fuzz).
    if let Some((live, snaps)) = segs.split_last() {
        check_ranges(snaps, live.first_index)?;
    }
    let Some(live) = segs.last_mut() else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    let start = live.first_index;
    eng.segment = Segment::Live;
    let Some(mut rd) = live.take_reader(eng.endian, start) else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    let Some(head) = rd.peek()? else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    let m = match classify(head, eng.endian, eng.pcr, start, Segment::Live)? {
        Kind::Marker(m) => m,
        Kind::BootAggregate if start == 0 => {
            // No snapshot was ever taken: the live list is the whole history.
            eng.report.snapshots_skipped = 0;
            eng.report.mode = Some(Mode::FullHistory);
            eng.start_at(PcrState::new(&eng.banks), 0);
            live.opened = Some(rd);
            let mut prev = None;
            replay_segment(&mut eng, live, &mut prev, true)?;
            return eng.finish(true);
        }
        _ => return Err(Failure::LiveStartNotMarker { index: start }),
    };
    let Some(head) = rd.next()? else {
        return Err(Failure::EmptySegment { segment: Segment::Live });
    };
    eng.check_marker_shape(start, &head, &m)?;
    // The snapshot before the live list names its end marker, the head: an incremental run
    // from the state saved here checks that claim, so accepting it unchecked here verified
    // evidence that the next round rejects (found by the evidence_body fuzz target).
    if let Some(claim) = segs.iter().rev().nth(1).and_then(|s| s.claim.as_ref()) {
        check_end_marker_claim(claim, start, &head, &m)?;
    }
    let mut state = PcrState::new(&eng.banks);
    for &bank in &eng.banks {
        if let Some(vals) = m.bank(bank) {
            for (p, v) in vals.iter().enumerate() {
                state.set(p, *v);
            }
        }
    }
    state.mark_touched(eng.pcr as usize);
    eng.start_at(state, start);
    eng.last_attempt = Some(m.attempt);
    eng.report.markers_checked += 1;
    eng.push(head)?;
    eng.arm()?;
    eng.drain(&mut rd)?;
    eng.finish(false)
}
