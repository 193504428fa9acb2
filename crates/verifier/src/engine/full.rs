//! Full history: record 0 through every snapshot and the live list. Also the per-segment
//! replay that the other modes reuse once they reach new records.

use super::classify::{classify, Kind};
use super::replay::{Engine, Pending};
use super::segment::Seg;
use super::Mode;
use crate::reason::{Failure, Segment};
use crate::state::State;
use imasnap_log::PcrState;
use imasnap_wire::Cut;

/// Self-consistency of the manifest's ranges (pure claims; cheap, before any replay).
pub(super) fn check_ranges(snaps: &[Seg<'_>], live_first_index: u64) -> Result<(), Failure> {
    check_ranges_from(snaps, live_first_index, 1, 0)
}

/// [`check_ranges`] for a manifest that starts at segment `first_seq`, record `first_index`
/// (incremental evidence may leave out the segments wholly before the checkpoint).
pub(super) fn check_ranges_from(
    snaps: &[Seg<'_>],
    live_first_index: u64,
    first_seq: u64,
    first_index: u64,
) -> Result<(), Failure> {
    let mut expected = first_index;
    for (i, s) in snaps.iter().enumerate() {
        let Some(c) = &s.claim else { continue };
        let want_seq = first_seq.saturating_add(i as u64);
        if c.seq != want_seq {
            return Err(Failure::ManifestSeqGap { position: i, expected: want_seq, found: c.seq });
        }
        if c.first_index != expected {
            return Err(Failure::ManifestNotContiguous { seq: c.seq, claimed: c.first_index, expected });
        }
        if c.count == 0 {
            return Err(Failure::EmptySegment { segment: Segment::Snapshot(c.seq) });
        }
        expected = c.end_index();
    }
    if live_first_index != expected {
        return Err(Failure::LiveFirstIndexMismatch { claimed: live_first_index, expected });
    }
    Ok(())
}

/// Replays one whole segment whose head is record 0 (`prev` = None) or the end marker of
/// the snapshot `prev`; leaves this segment's claims in `prev`.
pub(super) fn replay_segment(
    eng: &mut Engine<'_>,
    seg: &mut Seg<'_>,
    prev: &mut Option<Pending>,
    live: bool,
) -> Result<(), Failure> {
    let Some(mut rd) = seg.take_reader(eng.endian, eng.next) else {
        return Err(Failure::SnapshotMissing { seq: seg.seq() });
    };
    eng.segment = seg.id;
    let Some(first) = rd.next()? else {
        // After a staging A/D cut the kernel's list may be empty: the quote must then
        // equal the state where the last segment ends.
        if let (true, Some(p)) = (live, prev.as_ref().filter(|p| p.claim.cut == Cut::Stage)) {
            eng.flush()?;
            eng.check_segment_claims(p)?;
            eng.verified_snapshots += 1;
            eng.arm()?;
            *prev = None;
            return Ok(());
        }
        return Err(Failure::EmptySegment { segment: seg.id });
    };
    match prev.as_ref() {
        None => {
            if eng.next != 0 || !matches!(classify(&first, eng.endian, eng.pcr, 0, seg.id)?, Kind::BootAggregate) {
                return Err(Failure::FirstRecordNotBootAggregate { index: eng.next });
            }
            eng.on_record(first)?;
        }
        Some(p) => eng.on_boundary(first, p, live)?,
    }
    if live {
        eng.arm()?;
    } else {
        eng.report.snapshots_replayed += 1;
    }
    eng.drain(&mut rd)?;
    *prev = seg.claim.clone().map(|claim| Pending { claim, count: rd.count, digest: rd.digest(), read_all: true });
    Ok(())
}

/// Full history: record 0 through every snapshot and the live list.
pub(super) fn full(mut eng: Engine<'_>, mut segs: Vec<Seg<'_>>) -> Result<State, Failure> {
    eng.report.mode = Some(Mode::FullHistory);
    let n = segs.len();
    let (snaps, live) = segs.split_at(n - 1);
    check_ranges(snaps, live.first().map_or(0, |l| l.first_index))?;
    if let Some(s) = snaps.iter().find(|s| s.input.is_none() && s.opened.is_none()) {
        return Err(Failure::SnapshotMissing { seq: s.seq() });
    }
    eng.start_at(PcrState::new(&eng.banks), 0);
    let mut prev = None;
    for (k, seg) in segs.iter_mut().enumerate() {
        replay_segment(&mut eng, seg, &mut prev, k + 1 == n)?;
    }
    eng.finish(true)
}
