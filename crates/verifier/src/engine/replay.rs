//! The replay engine shared by every mode: batches records into the replayer, checks
//! markers, boot_aggregates and manifest claims at their positions, and stops at the
//! first point where the replay equals the quote.

use super::classify::{classify, event_name_in, is_ordinary_name, Kind};
use super::quoted::Quoted;
use super::segment::SegReader;
use super::{Options, Report, PLATFORM_PCRS};
use crate::evidence::SnapshotClaim;
use crate::reason::{Failure, Segment};
use crate::state::{BootIdentity, State};
use imasnap_log::marker::Marker;
use imasnap_log::{Endian, HashAlgo, PcrState, PcrValue, Record};
use imasnap_log::{ReplayOptions, Replayer};
use imasnap_wire::Cut;

/// Claims of the snapshot just read, checked once its end marker has been proven.
pub(super) struct Pending {
    pub(super) claim: SnapshotClaim,
    pub(super) count: u64,
    pub(super) digest: [u8; 32],
    /// Whether the whole file was read (crossed snapshots are not).
    pub(super) read_all: bool,
}

pub(super) struct Engine<'r> {
    pub(super) ropts: ReplayOptions,
    pub(super) banks: Vec<HashAlgo>,
    pub(super) pcr: u32,
    pub(super) endian: Endian,
    pub(super) batch_size: usize,
    pub(super) quoted: Quoted,
    pub(super) replayer: Replayer,
    /// Records of the pending batch, when they are hashed in parallel at the flush. On one
    /// thread (`in_place`), they are hashed as they are read and queued in the replayer.
    pub(super) batch: Vec<Record>,
    /// Hash each record where it lies in the reader's buffer, on this thread, instead of
    /// batching owned copies for a parallel hash (ranges already run in parallel).
    pub(super) in_place: bool,
    /// Global index of the next record to enter the batch.
    pub(super) next: u64,
    pub(super) segment: Segment,
    pub(super) armed: bool,
    pub(super) matched: Option<(u64, PcrState)>,
    pub(super) last_attempt: Option<u64>,
    pub(super) boot_aggregate: Option<[u8; 20]>,
    pub(super) verified_snapshots: u64,
    /// Stop reading at the match instead of counting the tail (a range that ends at a
    /// checkpoint: the records after it belong to the next range).
    pub(super) stop_at_match: bool,
    pub(super) report: &'r mut Report,
}

impl<'r> Engine<'r> {
    pub(super) fn new(
        opts: &Options,
        banks: Vec<HashAlgo>,
        pcr: u32,
        endian: Endian,
        quoted: Quoted,
        report: &'r mut Report,
    ) -> Self {
        let mut ropts = ReplayOptions::new(&banks);
        ropts.endian = endian;
        ropts.parallel = opts.parallel;
        let replayer = Replayer::new(ropts.clone());
        Self {
            ropts,
            banks,
            pcr,
            endian,
            batch_size: opts.batch.clamp(1, 1 << 16),
            quoted,
            replayer,
            batch: Vec::new(),
            in_place: !opts.parallel,
            next: 0,
            segment: Segment::Live,
            armed: false,
            matched: None,
            last_attempt: None,
            boot_aggregate: None,
            verified_snapshots: 0,
            stop_at_match: false,
            report,
        }
    }

    /// Restarts the replay from a proven (or, in latest-segment mode, marker) state.
    pub(super) fn start_at(&mut self, state: PcrState, index: u64) {
        self.replayer = Replayer::resume(self.ropts.clone(), state, index);
        self.next = index;
    }

    pub(super) fn done(&self) -> bool {
        self.matched.is_some()
    }

    /// Records waiting in the pending batch.
    fn pending(&self) -> usize {
        if self.in_place {
            self.replayer.queued()
        } else {
            self.batch.len()
        }
    }

    /// The earliest problem of a replayed batch before the match at `cut` (a template
    /// digest mismatch or an undecodable record); records after it are carried over.
    fn first_failure(&self, mismatch: Option<u64>, error: Option<imasnap_log::Error>, cut: u64) -> Result<(), Failure> {
        let mut fail: Option<(u64, Failure)> = None;
        if let Some(i) = mismatch.filter(|&i| i < cut) {
            fail = Some((i, Failure::TemplateDigestMismatch { index: i }));
        }
        if let Some(e) = error {
            let i = e.at.record;
            if i < cut && fail.as_ref().is_none_or(|(j, _)| i < *j) {
                fail = Some((
                    i,
                    Failure::Malformed { segment: self.segment, index: i, offset: e.at.offset, reason: e.reason },
                ));
            }
        }
        fail.map_or(Ok(()), |(_, f)| Err(f))
    }

    /// Replays the pending batch. Afterwards the replayer's state is exact at `self.next`,
    /// or the quote has matched somewhere in the batch.
    pub(super) fn flush(&mut self) -> Result<(), Failure> {
        if self.in_place {
            return self.flush_queued();
        }
        if self.batch.is_empty() || self.done() {
            self.batch.clear();
            return Ok(());
        }
        let start = self.replayer.next_index();
        let start_state = self.replayer.state();
        let fresh = Replayer::resume(self.ropts.clone(), PcrState::new(&self.banks), 0);
        let mut r = std::mem::replace(&mut self.replayer, fresh);
        let pushed = r.push_batch(&self.batch);
        let rep = r.finish();
        let matched = if self.armed { rep.matched_after } else { None };
        let cut = matched.unwrap_or(u64::MAX);
        self.first_failure(rep.template_digest_mismatches.first().copied(), pushed.err(), cut)?;
        let end_state = rep.state().clone();
        if let Some(m) = matched {
            let n = m.saturating_sub(start) as usize;
            let state = if m == rep.next_index {
                end_state
            } else {
                // Exact state at the match: re-run the batch prefix (at most one batch).
                let mut r2 = Replayer::resume(self.ropts.clone(), start_state, start);
                let _ = r2.push_batch(self.batch.get(..n).unwrap_or(&[]));
                r2.finish().state().clone()
            };
            self.report.records_replayed += n as u64;
            self.report.tail_records += rep.next_index.saturating_sub(m);
            self.report.quote_matched_at = Some(m);
            self.matched = Some((m, state));
        } else {
            self.report.records_replayed += self.batch.len() as u64;
            self.replayer = Replayer::resume(self.ropts.clone(), end_state, rep.next_index);
            if self.armed {
                self.replayer.set_target(&self.quoted.target);
            }
        }
        self.batch.clear();
        Ok(())
    }

    /// [`Engine::flush`] of records hashed as they were read: the same verdicts, counts
    /// and match point as the batch of owned records.
    fn flush_queued(&mut self) -> Result<(), Failure> {
        let count = self.replayer.queued();
        if count == 0 || self.done() {
            self.replayer.discard_queued();
            return Ok(());
        }
        let a = self.replayer.apply_queued(true);
        let matched = if self.armed { a.matched_after } else { None };
        let cut = matched.unwrap_or(u64::MAX);
        self.first_failure(a.first_mismatch, a.error, cut)?;
        if let Some(m) = matched {
            // The replayer stopped exactly at the match.
            let state = self.replayer.state();
            self.report.records_replayed += m.saturating_sub(a.start);
            self.report.tail_records += a.end.saturating_sub(m);
            self.report.quote_matched_at = Some(m);
            self.matched = Some((m, state));
            // As after a batch of owned records: nothing is replayed past the match.
            self.replayer = Replayer::resume(self.ropts.clone(), PcrState::new(&self.banks), 0);
        } else {
            self.report.records_replayed += count as u64;
        }
        Ok(())
    }

    /// Reads ordinary records straight into the pending batch, hashing each where it lies
    /// in the reader's buffer, until the batch is full, the segment ends or a record needs
    /// the record-by-record path (a marker, a boot_aggregate, an unquoted PCR: returned).
    fn read_batch(&mut self, rd: &mut SegReader<'_>) -> Result<Step, Failure> {
        let room = self.batch_size.saturating_sub(self.replayer.queued()).max(1);
        let (mask, endian) = (self.quoted.mask, self.endian);
        let replayer = &mut self.replayer;
        let next = &mut self.next;
        let mut special = None;
        let visited = rd.visit(room, |raw| {
            let ordinary = mask & (1u32 << raw.pcr.min(31)) != 0
                && matches!(event_name_in(&raw.template, raw.data, endian), Ok(n) if is_ordinary_name(n));
            if ordinary {
                replayer.queue(raw.pcr, raw.digest, &raw.template, raw.data);
                *next += 1;
                true
            } else {
                special = Some(raw.to_record());
                false
            }
        })?;
        Ok(match special {
            Some(rec) => Step::Special(rec),
            None if visited < room => Step::End,
            None => Step::Full,
        })
    }

    /// From here on, the replay is compared with the quote after every record.
    pub(super) fn arm(&mut self) -> Result<(), Failure> {
        self.flush()?;
        if self.done() || self.armed {
            return Ok(());
        }
        self.armed = true;
        let state = self.replayer.state();
        let matches = state.touched().next().is_some()
            && self.banks.iter().all(|&b| state.touched().all(|p| state.get(b, p).copied() == self.quoted.get(b, p)));
        if matches {
            self.report.quote_matched_at = Some(self.next);
            self.matched = Some((self.next, state));
        } else {
            self.replayer.set_target(&self.quoted.target);
        }
        Ok(())
    }

    pub(super) fn push(&mut self, rec: Record) -> Result<(), Failure> {
        if self.in_place {
            self.replayer.queue(rec.pcr, &rec.digest, &rec.template, &rec.template_data);
        } else {
            self.batch.push(rec);
        }
        self.next += 1;
        if self.pending() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    /// An ordinary position in the log: markers and boot_aggregates are checked, the rest
    /// is batched for replay.
    pub(super) fn on_record(&mut self, rec: Record) -> Result<(), Failure> {
        let idx = self.next;
        if self.quoted.mask & (1u32 << rec.pcr.min(31)) == 0 {
            self.flush()?;
            if self.done() {
                self.report.tail_records += 1;
                return Ok(());
            }
            return Err(Failure::UnquotedPcr { index: idx, pcr: rec.pcr });
        }
        let kind = classify(&rec, self.endian, self.pcr, idx, self.segment);
        if let Ok(Kind::Ordinary) = kind {
            return self.push(rec);
        }
        // Everything before a special record is replayed first, so the earliest failure
        // is the one reported and marker checks see the exact state.
        self.flush()?;
        if self.done() {
            self.report.tail_records += 1;
            return Ok(());
        }
        match kind? {
            Kind::Marker(m) => self.check_marker(idx, &rec, &m, None)?,
            Kind::BootAggregate => self.check_boot_aggregate(idx, &rec)?,
            Kind::Ordinary => {}
        }
        self.push(rec)
    }

    pub(super) fn check_marker_shape(&self, idx: u64, rec: &Record, m: &Marker) -> Result<(), Failure> {
        // The stored SHA1 digest identifies the marker (manifest end_marker): prove it.
        if HashAlgo::Sha1.hash(&[&rec.template_data]).as_bytes() != rec.digest.as_slice() {
            return Err(Failure::TemplateDigestMismatch { index: idx });
        }
        let listed: Vec<HashAlgo> = m.banks.iter().map(|(a, _)| *a).collect();
        if let Some(b) = self.banks.iter().find(|b| !listed.contains(b)) {
            return Err(Failure::MarkerBankMismatch { index: idx, detail: format!("marker lacks bank {b}") });
        }
        if let Some(b) = listed.iter().find(|b| !self.banks.contains(b)) {
            return Err(Failure::MarkerBankMismatch {
                index: idx,
                detail: format!("marker lists bank {b}, which the evidence does not replay"),
            });
        }
        for (bank, vals) in &m.banks {
            for (p, v) in vals.iter().enumerate().take(PLATFORM_PCRS as usize) {
                if self.quoted.get(*bank, p) != Some(*v) {
                    return Err(Failure::MarkerPlatformMismatch { index: idx, bank: *bank, pcr: p as u32 });
                }
            }
        }
        Ok(())
    }

    /// Full check of a marker at `idx` against the replay state just before it.
    /// `boundary`: the snapshot it ends, if it heads a file or the live list.
    pub(super) fn check_marker(
        &mut self,
        idx: u64,
        rec: &Record,
        m: &Marker,
        boundary: Option<u64>,
    ) -> Result<(), Failure> {
        self.check_marker_shape(idx, rec, m)?;
        if let Some(prev) = self.last_attempt {
            if m.attempt <= prev {
                return Err(Failure::AttemptNotIncreasing { index: idx, attempt: m.attempt, previous: prev });
            }
        }
        let state = self.replayer.state();
        for p in state.touched() {
            for &bank in &self.banks {
                let want = state.get(bank, p);
                let got = m.bank(bank).and_then(|v| v.get(p));
                if want != got {
                    let pcr = p as u32;
                    return Err(match boundary {
                        Some(seq) => Failure::SnapshotEndMismatch { seq, index: idx, bank, pcr },
                        None => Failure::MarkerPcrMismatch { index: idx, bank, pcr },
                    });
                }
            }
        }
        self.last_attempt = Some(m.attempt);
        self.report.markers_checked += 1;
        Ok(())
    }

    pub(super) fn check_boot_aggregate(&mut self, idx: u64, rec: &Record) -> Result<(), Failure> {
        let bad = |detail: String| Failure::BootAggregateMismatch { index: idx, detail };
        if rec.pcr != self.pcr {
            return Err(bad(format!("in PCR {}, want {}", rec.pcr, self.pcr)));
        }
        let quoted = |algo: HashAlgo| -> Option<Vec<PcrValue>> {
            (0..PLATFORM_PCRS as usize).map(|p| self.quoted.get(algo, p)).collect()
        };
        imasnap_log::digest::check_boot_aggregate(rec, self.endian, quoted).map_err(bad)?;
        if idx == 0 {
            self.boot_aggregate = <[u8; 20]>::try_from(rec.digest.as_slice()).ok();
        } else {
            // A kexec'd kernel: its snapshot attempt counter starts over.
            self.last_attempt = None;
            self.report.kexecs += 1;
        }
        Ok(())
    }

    /// The first record of a segment that follows snapshot `prev`: its end marker.
    pub(super) fn on_boundary(&mut self, rec: Record, prev: &Pending, live: bool) -> Result<(), Failure> {
        let idx = self.next;
        self.flush()?;
        if self.done() {
            return Ok(());
        }
        let seq = prev.claim.seq;
        if prev.claim.cut != Cut::Marker {
            // A staging cut: nothing marks it, so the record is an ordinary one; the
            // segment's claims are checked against the replay up to here.
            self.check_claims_unmarked(prev, idx, &rec)?;
            self.verified_snapshots += 1;
            return self.on_record(rec);
        }
        let not_marker = || {
            if live {
                Failure::LiveStartNotMarker { index: idx }
            } else {
                Failure::MissingEndMarker { seq, index: idx }
            }
        };
        if self.quoted.mask & (1u32 << rec.pcr.min(31)) == 0 {
            return Err(not_marker());
        }
        let m = match classify(&rec, self.endian, self.pcr, idx, self.segment)? {
            Kind::Marker(m) => m,
            _ => return Err(not_marker()),
        };
        self.check_marker(idx, &rec, &m, Some(seq))?;
        self.check_claims(prev, idx, &rec, &m)?;
        self.verified_snapshots += 1;
        self.push(rec)
    }

    /// The claims about a segment cut without a marker (staging), now that the record
    /// after it is known: count, digest, PCR values and, for a trim, that record's digest.
    pub(super) fn check_claims_unmarked(&self, p: &Pending, idx: u64, rec: &Record) -> Result<(), Failure> {
        self.check_segment_claims(p)?;
        if let Some(want) = &p.claim.next_sha1 {
            if want.as_slice() != rec.digest.as_slice() {
                let detail = format!(
                    "trim cut: the manifest names the next record sha1 {}, found {}",
                    hex::encode(want),
                    hex::encode(&rec.digest)
                );
                return Err(Failure::ManifestEndMarkerMismatch { seq: p.claim.seq, index: idx, detail });
            }
        }
        Ok(())
    }

    /// The manifest's claims about snapshot `p`, now that the record after it is known.
    pub(super) fn check_claims(&self, p: &Pending, idx: u64, rec: &Record, m: &Marker) -> Result<(), Failure> {
        self.check_segment_claims(p)?;
        check_end_marker_claim(&p.claim, idx, rec, m)
    }

    /// Count, file digest and end PCR values of a segment read whole.
    pub(super) fn check_segment_claims(&self, p: &Pending) -> Result<(), Failure> {
        let seq = p.claim.seq;
        if p.read_all {
            if p.count != p.claim.count {
                return Err(Failure::ManifestCountMismatch { seq, claimed: p.claim.count, actual: p.count });
            }
            if let Some(want) = p.claim.sha256 {
                if want != p.digest {
                    return Err(Failure::ManifestDigestMismatch {
                        seq,
                        claimed: hex::encode(want),
                        actual: hex::encode(p.digest),
                    });
                }
            }
        }
        if p.read_all {
            let state = self.replayer.state();
            for v in &p.claim.pcrs_end {
                if state.get(v.algo(), self.pcr as usize) != Some(v) {
                    return Err(Failure::ManifestPcrsEndMismatch { seq, bank: v.algo() });
                }
            }
        }
        Ok(())
    }

    /// Replays the rest of a segment; stops at the quote match, then counts the tail.
    pub(super) fn drain(&mut self, rd: &mut SegReader<'_>) -> Result<(), Failure> {
        while !self.done() {
            if self.in_place && rd.peeked.is_none() {
                match self.read_batch(rd)? {
                    Step::Full => self.flush()?,
                    Step::Special(rec) => self.on_record(rec)?,
                    Step::End => return self.flush(),
                }
                continue;
            }
            match rd.next()? {
                Some(rec) => self.on_record(rec)?,
                None => return self.flush(),
            }
        }
        if self.stop_at_match {
            return Ok(());
        }
        self.report.tail_records += rd.skip_rest()?;
        Ok(())
    }

    pub(super) fn finish(self, history_verified: bool) -> Result<State, Failure> {
        let Some((checkpoint, pcrs)) = self.matched else {
            let state = self.replayer.state();
            let (bank, pcr) = state
                .touched()
                .flat_map(|p| self.banks.iter().map(move |&b| (b, p)))
                .find(|&(b, p)| state.get(b, p).copied() != self.quoted.get(b, p))
                .unwrap_or((self.banks.first().copied().unwrap_or(HashAlgo::Sha1), self.pcr as usize));
            return Err(Failure::QuoteNotReached { records: self.next, bank, pcr: pcr as u32 });
        };
        Ok(State {
            boot: BootIdentity { reset_count: self.quoted.reset_count, boot_aggregate_sha1: self.boot_aggregate },
            checkpoint,
            pcrs,
            verified_snapshots: self.verified_snapshots,
            last_attempt: self.last_attempt,
            history_verified,
        })
    }
}

/// Where [`Engine::read_batch`] stopped.
enum Step {
    /// The batch is full.
    Full,
    /// This record goes the record-by-record path.
    Special(Record),
    /// The segment has no more records.
    End,
}

pub(super) fn check_end_marker_claim(claim: &SnapshotClaim, idx: u64, rec: &Record, m: &Marker) -> Result<(), Failure> {
    if let Some(em) = &claim.end_marker {
        let detail = if em.attempt != m.attempt {
            Some(format!("attempt {} found, manifest says {}", m.attempt, em.attempt))
        } else if em.sha1.as_slice() != rec.digest.as_slice() {
            Some(format!("digest {} found, manifest says {}", hex::encode(&rec.digest), hex::encode(em.sha1)))
        } else {
            None
        };
        if let Some(detail) = detail {
            return Err(Failure::ManifestEndMarkerMismatch { seq: claim.seq, index: idx, detail });
        }
    }
    Ok(())
}
