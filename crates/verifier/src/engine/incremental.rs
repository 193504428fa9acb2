//! Incremental: continue from the verifier's saved checkpoint. Cost follows the records
//! (and snapshots) added since the last run, not the length of history.

use super::classify::{classify, event_name, Kind};
use super::full::{check_ranges_from, replay_segment};
use super::replay::{check_end_marker_claim, Engine, Pending};
use super::segment::Seg;
use super::Mode;
use crate::reason::Failure;
use crate::state::State;
use imasnap_log::marker::EVENT_NAME as MARKER_NAME;
use imasnap_log::{PcrState, Record};
use imasnap_wire::Cut;

/// Incremental: replay only from the saved checkpoint. Snapshots before it cost one
/// decoded record each (their end marker); the one holding it is decoded, not hashed, up
/// to the checkpoint.
pub(super) fn incremental(eng: Engine<'_>, segs: Vec<Seg<'_>>, prior: &State) -> Result<State, Failure> {
    incremental_from(eng, segs, prior, Mode::Incremental)
}

/// [`incremental`] from `prior`, reported as `mode` (a checkpoint's state is not the
/// verifier's own, so a latest-segment run from one says so).
pub(super) fn incremental_from(
    mut eng: Engine<'_>,
    mut segs: Vec<Seg<'_>>,
    prior: &State,
    mode: Mode,
) -> Result<State, Failure> {
    eng.report.mode = Some(mode);
    let n = segs.len();
    let c = prior.checkpoint;
    // The agent may leave out segments that end before the checkpoint: the ranges then
    // start at the first one listed, which must not start after the checkpoint.
    let (first_seq, first_index) = match segs.first().and_then(|s| s.claim.as_ref()) {
        Some(cl) if cl.seq > 1 && cl.first_index <= c => (cl.seq, cl.first_index),
        None if n == 1 && segs[0].first_index <= c => (1, segs[0].first_index),
        _ => (1, 0),
    };
    check_ranges_from(&segs[..n - 1], segs[n - 1].first_index, first_seq, first_index)?;
    let mut state = PcrState::new(&eng.banks);
    for &bank in &eng.banks {
        if let Some(vals) = prior.pcrs.bank(bank) {
            for (p, v) in vals.iter().enumerate() {
                state.set(p, *v);
            }
        }
    }
    for p in prior.pcrs.touched() {
        state.mark_touched(p);
    }
    eng.boot_aggregate = prior.boot.boot_aggregate_sha1;
    eng.verified_snapshots = prior.verified_snapshots;
    eng.last_attempt = prior.last_attempt;

    // 1. Snapshots entirely before the checkpoint.
    let mut k = 0;
    let mut prev: Option<Pending> = None;
    while k + 1 < n && segs[k].claim.as_ref().is_some_and(|cl| cl.end_index() <= c) {
        let seg = &mut segs[k];
        eng.segment = seg.id;
        eng.report.snapshots_skipped += 1;
        // segs[k] opens with the end marker of snapshot k-1. Snapshots an earlier run
        // verified are not even opened, so the cost follows new snapshots, not history;
        // a snapshot first seen now has its end marker read and checked.
        let seen_before =
            seg.claim.as_ref().map_or(k as u64, |cl| cl.seq.saturating_sub(1)) <= prior.verified_snapshots;
        if let (Some(p), false) = (&prev, seen_before) {
            if let Some(rec) = seg.first_record_only(eng.endian, seg.first_index)? {
                crossed_end_marker(&mut eng, p, seg.first_index, &rec)?;
            }
        }
        prev = seg.claim.clone().map(|claim| Pending { claim, count: 0, digest: [0; 32], read_all: false });
        k += 1;
    }

    // 2. The segment holding the checkpoint.
    let live = k + 1 == n;
    let seg = &mut segs[k];
    eng.segment = seg.id;
    // A suffix (data from the checkpoint on) cannot start after it.
    if seg.data_first > c {
        return Err(Failure::CheckpointNotInEvidence { checkpoint: c, seq: seg.seq() });
    }
    let partial = seg.data_first > seg.first_index;
    let Some(mut rd) = seg.take_reader(eng.endian, seg.data_first) else {
        return Err(Failure::CheckpointNotInEvidence { checkpoint: c, seq: seg.seq() });
    };
    let skip = c.saturating_sub(seg.data_first);
    eng.start_at(state, c);
    if partial && skip == 0 {
        // The suffix starts exactly at the checkpoint: record c is an ordinary record, and
        // the segment's head (its boundary) lies in proven history.
    } else if skip == 0 {
        let Some(first) = rd.next()? else {
            // After a staging A/D cut the kernel's list may hold nothing new.
            if live && prev.as_ref().is_some_and(|p| p.claim.cut == Cut::Stage) {
                eng.arm()?;
                return eng.finish(prior.history_verified);
            }
            return Err(if live {
                Failure::LogRolledBack { checkpoint: c, end: c }
            } else {
                Failure::EmptySegment { segment: seg.id }
            });
        };
        match &prev {
            Some(p) => eng.on_boundary(first, p, live)?,
            None => {
                // A checkpoint at record 0 proves nothing yet.
                if !matches!(classify(&first, eng.endian, eng.pcr, 0, seg.id)?, Kind::BootAggregate) {
                    return Err(Failure::FirstRecordNotBootAggregate { index: 0 });
                }
                eng.on_record(first)?;
            }
        }
    } else {
        for i in 0..skip {
            let Some(rec) = rd.next()? else {
                return Err(match &seg.claim {
                    Some(cl) => Failure::ManifestCountMismatch { seq: cl.seq, claimed: cl.count, actual: rd.count },
                    None => Failure::LogRolledBack { checkpoint: c, end: seg.first_index.saturating_add(rd.count) },
                });
            };
            if i == 0 && !partial {
                if let Some(p) = &prev {
                    crossed_end_marker(&mut eng, p, seg.first_index, &rec)?;
                }
            }
        }
        eng.report.records_skipped += skip;
    }
    if live {
        eng.arm()?;
    } else {
        eng.report.snapshots_replayed += 1;
    }
    eng.drain(&mut rd)?;
    // A suffix was not read whole: its count and digest claims cannot be checked (its
    // records after the checkpoint are proven by the replay all the same).
    prev = seg.claim.clone().map(|claim| Pending { claim, count: rd.count, digest: rd.digest(), read_all: !partial });

    // 3. Everything after it, exactly as in full history.
    for (j, seg) in segs.iter_mut().enumerate().skip(k + 1) {
        replay_segment(&mut eng, seg, &mut prev, j + 1 == n)?;
    }
    eng.finish(prior.history_verified)
}

/// The end marker of a snapshot entirely before the checkpoint: structure, platform
/// values and the manifest's identity claim. Its values were proven by an earlier run.
pub(super) fn crossed_end_marker(eng: &mut Engine<'_>, prev: &Pending, idx: u64, rec: &Record) -> Result<(), Failure> {
    if prev.claim.cut != Cut::Marker {
        // A staging cut has no marker to cross; a trim names the record, which costs nothing to compare.
        return match &prev.claim.next_sha1 {
            Some(want) if want.as_slice() != rec.digest.as_slice() => Err(Failure::ManifestEndMarkerMismatch {
                seq: prev.claim.seq,
                index: idx,
                detail: format!("trim cut: the manifest names the next record sha1 {}", hex::encode(want)),
            }),
            _ => Ok(()),
        };
    }
    // Crossing proven history: the marker's identity (its SHA1 template digest, as the
    // manifest names it) is enough. A full parse (~3 KB of hex) would prove nothing new
    // — the checkpoint state is already proven — and made cost grow with the number of
    // snapshots. Anything that does not match takes the full, precise path below.
    if let Some(em) = &prev.claim.end_marker {
        let named_marker = matches!(event_name(rec, eng.endian), Ok(Some(n)) if n == MARKER_NAME.as_bytes());
        if em.sha1.as_slice() == rec.digest.as_slice() && rec.template.name() == "ima-buf" && named_marker {
            eng.report.end_markers_read += 1;
            return Ok(());
        }
    }
    let m = match classify(rec, eng.endian, eng.pcr, idx, eng.segment)? {
        Kind::Marker(m) => m,
        _ => return Err(Failure::MissingEndMarker { seq: prev.claim.seq, index: idx }),
    };
    eng.check_marker_shape(idx, rec, &m)?;
    check_end_marker_claim(&prev.claim, idx, rec, &m)?;
    eng.report.end_markers_read += 1;
    Ok(())
}
