//! Why evidence was rejected. One variant per failure class, each naming the global record
//! index where one applies, so an operator (and the adversarial suite) can tell a forged
//! marker from a reordered snapshot from a replayed quote.

use crate::names::snake_case_enum;
use imasnap_log::HashAlgo;
use std::fmt;

/// Which piece of evidence a record came from.
pub use imasnap_wire::Segment;

/// The reason a verification failed. Indices are global record indices as replayed by the
/// verifier (never the host's claims), unless a field says `claimed`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    // ---- evidence shape -------------------------------------------------------------
    /// The evidence cannot be verified as given (no banks, a bank twice, PCR out of range…).
    #[error("unusable evidence: {detail}")]
    BadEvidence { detail: String },
    /// The evidence header's `simulated` field names simulated parts (the kernel model, the
    /// soft TPM) and the host is not registered as simulated.
    #[error("evidence header field `simulated` says {simulated}: the agent attests a simulated machine and the host is not registered as simulated (register it with simulated: true, `host add --simulated`, only for a simulation)")]
    SimulatedEvidence { simulated: String },

    // ---- the quote ---------------------------------------------------------------------
    /// Quote bytes that do not decode.
    #[error("malformed quote: {detail}")]
    QuoteMalformed { detail: String },
    /// The AK shipped with the evidence is not the AK this verifier trusts for the host.
    #[error("evidence carries AK {claimed}, the verifier trusts {trusted}")]
    AkMismatch { claimed: String, trusted: String },
    /// The signature does not verify under the trusted AK: altered, or signed by another key.
    #[error("quote signature does not verify under the trusted AK: {detail}")]
    QuoteBadSignature { detail: String },
    /// Signed by the AK but not a TPM-generated quote structure (magic / type).
    #[error("signed data is not a TPM-generated quote: {detail}")]
    QuoteNotTpmGenerated { detail: String },
    /// The quote answers another challenge: replayed or foreign.
    #[error("quote nonce {found} is not the challenge {expected}")]
    QuoteNonceMismatch { expected: String, found: String },
    /// The PCR values supplied with the quote do not hash to its signed pcrDigest.
    #[error("supplied PCR values do not match the signed pcrDigest: {detail}")]
    QuotePcrDigestMismatch { detail: String },
    /// The signed selection lacks a PCR the verifier requires.
    #[error("quote does not cover {bank} PCR {pcr}")]
    QuoteSelectionMissing { bank: HashAlgo, pcr: u32 },
    /// A record extends a PCR the quote does not cover, so it can never be proven.
    #[error("record {index} extends PCR {pcr}, which the quote does not cover")]
    UnquotedPcr { index: u64, pcr: u32 },
    /// The replay never reached the quoted values, up to the end of the evidence.
    /// `bank`/`pcr` name the first PCR that differs at the end of the log.
    #[error("replay of {records} records never reaches the quote ({bank} PCR {pcr} differs at the end)")]
    QuoteNotReached { records: u64, bank: HashAlgo, pcr: u32 },

    // ---- manifest claims ---------------------------------------------------------------
    /// Snapshot sequence numbers are not 1, 2, 3, … in manifest order.
    #[error("manifest entry {position} has seq {found}, want {expected}")]
    ManifestSeqGap { position: usize, expected: u64, found: u64 },
    /// A snapshot's claimed first index is not where the previous one claims to end.
    #[error("snapshot {seq} claims first_index {claimed}, the manifest implies {expected}")]
    ManifestNotContiguous { seq: u64, claimed: u64, expected: u64 },
    /// The bundle's live_first_index is not where the snapshots end.
    #[error("live list claimed to start at {claimed}, expected {expected}")]
    LiveFirstIndexMismatch { claimed: u64, expected: u64 },
    /// A snapshot file holds another number of records than the manifest claims.
    #[error("snapshot {seq} holds {actual} records, the manifest claims {claimed}")]
    ManifestCountMismatch { seq: u64, claimed: u64, actual: u64 },
    /// A snapshot file's sha256 differs from the manifest's.
    #[error("snapshot {seq} file digest {actual} differs from the manifest's {claimed}")]
    ManifestDigestMismatch { seq: u64, claimed: String, actual: String },
    /// The manifest names another end marker (attempt or digest) than the one found.
    #[error("snapshot {seq}: the record ending it (index {index}) is not the manifest's end marker ({detail})")]
    ManifestEndMarkerMismatch { seq: u64, index: u64, detail: String },
    /// The manifest's pcrs_end differs from the replayed measurement PCR.
    #[error("snapshot {seq}: manifest pcrs_end for {bank} differs from the replay")]
    ManifestPcrsEndMismatch { seq: u64, bank: HashAlgo },
    /// `manifest.json` does not parse, or names an unsafe file.
    #[error("malformed manifest: {detail}")]
    ManifestMalformed { detail: String },
    /// The manifest's boot identity contradicts the quote or record 0.
    #[error("manifest boot identity is wrong: {detail}")]
    ManifestBootMismatch { detail: String },

    // ---- the log itself -----------------------------------------------------------------
    /// The manifest lists a snapshot whose bytes were not supplied.
    #[error("snapshot {seq} is listed but its file is missing")]
    SnapshotMissing { seq: u64 },
    /// A snapshot file (or the live list) holds no record at all.
    #[error("{segment} is empty")]
    EmptySegment { segment: Segment },
    /// Bytes that do not decode as records.
    #[error("{segment}: record {index} at byte {offset}: {reason}")]
    Malformed {
        segment: Segment,
        index: u64,
        offset: u64,
        #[serde(serialize_with = "display")]
        reason: imasnap_log::Reason,
    },
    /// A record's stored template digest is not the hash of its template data.
    #[error("record {index}: template digest does not match its template data")]
    TemplateDigestMismatch { index: u64 },
    /// Record 0 of a boot must be its boot_aggregate.
    #[error("record {index} should be the boot_aggregate")]
    FirstRecordNotBootAggregate { index: u64 },
    /// A boot_aggregate does not match the quoted PCR 0-9.
    #[error("record {index}: boot_aggregate does not match the quoted PCR 0-9: {detail}")]
    BootAggregateMismatch { index: u64, detail: String },
    /// The file after snapshot `seq` does not begin with a snapshot_aggregate marker.
    #[error("record {index} after snapshot {seq} is not a snapshot_aggregate marker")]
    MissingEndMarker { seq: u64, index: u64 },
    /// The live list does not begin with a marker where one is required.
    #[error("live list head (record {index}) is not the expected snapshot_aggregate marker")]
    LiveStartNotMarker { index: u64 },
    /// A record named snapshot_aggregate that is not a strictly well-formed marker.
    #[error("record {index}: malformed snapshot_aggregate: {detail}")]
    MalformedMarker { index: u64, detail: String },
    /// A marker whose d-ng is not the hash of its buf.
    #[error("record {index}: snapshot_aggregate d-ng is not the hash of its buf")]
    MarkerBufDigestMismatch { index: u64 },
    /// A marker listing other banks than the log is replayed in.
    #[error("record {index}: marker banks differ from the replayed banks: {detail}")]
    MarkerBankMismatch { index: u64, detail: String },
    /// A marker's PCR 0-9 differ from the quoted PCR 0-9 (another boot or platform state).
    #[error("record {index}: marker {bank} PCR {pcr} differs from the quoted platform state")]
    MarkerPlatformMismatch { index: u64, bank: HashAlgo, pcr: u32 },
    /// Attempt counts must strictly increase between markers of one kernel.
    #[error("record {index}: snapshot attempt {attempt} does not follow attempt {previous}")]
    AttemptNotIncreasing { index: u64, attempt: u64, previous: u64 },
    /// An intermediate marker's values differ from the replay at its position.
    #[error("record {index}: marker {bank} PCR {pcr} differs from the replay at its position")]
    MarkerPcrMismatch { index: u64, bank: HashAlgo, pcr: u32 },
    /// Snapshot `seq` does not replay to the values of the marker that ends it.
    #[error("snapshot {seq} does not replay to its end marker (record {index}): {bank} PCR {pcr} differs")]
    SnapshotEndMismatch { seq: u64, index: u64, bank: HashAlgo, pcr: u32 },
    /// Incremental: the checkpoint lies in a snapshot whose file was not supplied.
    #[error("checkpoint {checkpoint} lies in snapshot {seq}, which was not supplied")]
    CheckpointNotInEvidence { checkpoint: u64, seq: u64 },
    /// Incremental: the log ends before records the verifier already proved.
    #[error("log ends at record {end}, before the verified checkpoint {checkpoint}: rolled back")]
    LogRolledBack { checkpoint: u64, end: u64 },

    // ---- quote-anchored checkpoints (docs/CHECKPOINTS.md) ------------------------------
    /// The AK a checkpoint names is not the trusted one.
    #[error("checkpoint of segment {seq}: it names another AK ({detail})")]
    CheckpointAkMismatch { seq: u64, detail: String },
    /// The checkpoint's quote is malformed, not TPM-made or not signed by the trusted AK.
    #[error("checkpoint of segment {seq}: {detail}")]
    CheckpointBadSignature { seq: u64, detail: String },
    /// The quote's qualifyingData is not this chain's for this position: a checkpoint
    /// dropped, reordered, duplicated or taken from another chain.
    #[error("checkpoint of segment {seq}: qualifyingData is not this chain's ({detail})")]
    CheckpointChainMismatch { seq: u64, detail: String },
    /// The checkpoint was quoted in another boot than the fresh quote.
    #[error("checkpoint of segment {seq}: quoted at resetCount {reset_count}, the fresh quote at {quoted}")]
    CheckpointOtherBoot { seq: u64, reset_count: u64, quoted: u64 },
    /// The checkpoint's clock is later than the fresh quote's (or than the next checkpoint's).
    #[error("checkpoint of segment {seq}: TPM clock {clock} is later than {later_than} ({what})")]
    CheckpointClock { seq: u64, clock: u64, later_than: u64, what: String },
    /// The quote's PCR values are not the ones it signed, or it lacks a needed PCR.
    #[error("checkpoint of segment {seq}: {detail}")]
    CheckpointPcrs { seq: u64, detail: String },
    /// The checkpoint's index claim is impossible (before its segment's end, going back, too large).
    #[error("checkpoint of segment {seq}: index {index} {detail}")]
    CheckpointIndex { seq: u64, index: u64, detail: String },
    /// The records before the checkpoint do not replay to its quoted values at its index
    /// (an edited segment, or an index off by some records).
    #[error("range [{from}, {index}) does not replay to the checkpoint of segment {seq} at record {index}{}", matched.map(|m| format!(" (it matches at {m})")).unwrap_or_default())]
    CheckpointNotReached { seq: u64, from: u64, index: u64, matched: Option<u64> },
}

snake_case_enum! {
    /// The class of a [`Failure`], without its details. Serialises (and displays) as the
    /// snake_case name that also tags a serialised [`Failure`] (`"kind"`).
    pub enum FailureKind("failure kind") {
        BadEvidence = "bad_evidence",
        SimulatedEvidence = "simulated_evidence",
        QuoteMalformed = "quote_malformed",
        AkMismatch = "ak_mismatch",
        QuoteBadSignature = "quote_bad_signature",
        QuoteNotTpmGenerated = "quote_not_tpm_generated",
        QuoteNonceMismatch = "quote_nonce_mismatch",
        QuotePcrDigestMismatch = "quote_pcr_digest_mismatch",
        QuoteSelectionMissing = "quote_selection_missing",
        UnquotedPcr = "unquoted_pcr",
        QuoteNotReached = "quote_not_reached",
        ManifestSeqGap = "manifest_seq_gap",
        ManifestNotContiguous = "manifest_not_contiguous",
        LiveFirstIndexMismatch = "live_first_index_mismatch",
        ManifestCountMismatch = "manifest_count_mismatch",
        ManifestDigestMismatch = "manifest_digest_mismatch",
        ManifestEndMarkerMismatch = "manifest_end_marker_mismatch",
        ManifestPcrsEndMismatch = "manifest_pcrs_end_mismatch",
        ManifestMalformed = "manifest_malformed",
        ManifestBootMismatch = "manifest_boot_mismatch",
        SnapshotMissing = "snapshot_missing",
        EmptySegment = "empty_segment",
        Malformed = "malformed",
        TemplateDigestMismatch = "template_digest_mismatch",
        FirstRecordNotBootAggregate = "first_record_not_boot_aggregate",
        BootAggregateMismatch = "boot_aggregate_mismatch",
        MissingEndMarker = "missing_end_marker",
        LiveStartNotMarker = "live_start_not_marker",
        MalformedMarker = "malformed_marker",
        MarkerBufDigestMismatch = "marker_buf_digest_mismatch",
        MarkerBankMismatch = "marker_bank_mismatch",
        MarkerPlatformMismatch = "marker_platform_mismatch",
        AttemptNotIncreasing = "attempt_not_increasing",
        MarkerPcrMismatch = "marker_pcr_mismatch",
        SnapshotEndMismatch = "snapshot_end_mismatch",
        CheckpointNotInEvidence = "checkpoint_not_in_evidence",
        LogRolledBack = "log_rolled_back",
        CheckpointAkMismatch = "checkpoint_ak_mismatch",
        CheckpointBadSignature = "checkpoint_bad_signature",
        CheckpointChainMismatch = "checkpoint_chain_mismatch",
        CheckpointOtherBoot = "checkpoint_other_boot",
        CheckpointClock = "checkpoint_clock",
        CheckpointPcrs = "checkpoint_pcrs",
        CheckpointIndex = "checkpoint_index",
        CheckpointNotReached = "checkpoint_not_reached",
    }
}

impl Failure {
    /// The global record index the failure names, if any.
    pub fn index(&self) -> Option<u64> {
        use Failure::*;
        match self {
            UnquotedPcr { index, .. }
            | ManifestEndMarkerMismatch { index, .. }
            | Malformed { index, .. }
            | TemplateDigestMismatch { index }
            | FirstRecordNotBootAggregate { index }
            | BootAggregateMismatch { index, .. }
            | MissingEndMarker { index, .. }
            | LiveStartNotMarker { index }
            | MalformedMarker { index, .. }
            | MarkerBufDigestMismatch { index }
            | MarkerBankMismatch { index, .. }
            | MarkerPlatformMismatch { index, .. }
            | AttemptNotIncreasing { index, .. }
            | MarkerPcrMismatch { index, .. }
            | SnapshotEndMismatch { index, .. } => Some(*index),
            QuoteNotReached { records, .. } => Some(*records),
            CheckpointNotInEvidence { checkpoint, .. } | LogRolledBack { checkpoint, .. } => Some(*checkpoint),
            CheckpointIndex { index, .. } | CheckpointNotReached { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// Which class of failure this is: a stable name for logs, JSON and databases.
    pub fn kind(&self) -> FailureKind {
        use Failure::*;
        match self {
            BadEvidence { .. } => FailureKind::BadEvidence,
            SimulatedEvidence { .. } => FailureKind::SimulatedEvidence,
            QuoteMalformed { .. } => FailureKind::QuoteMalformed,
            AkMismatch { .. } => FailureKind::AkMismatch,
            QuoteBadSignature { .. } => FailureKind::QuoteBadSignature,
            QuoteNotTpmGenerated { .. } => FailureKind::QuoteNotTpmGenerated,
            QuoteNonceMismatch { .. } => FailureKind::QuoteNonceMismatch,
            QuotePcrDigestMismatch { .. } => FailureKind::QuotePcrDigestMismatch,
            QuoteSelectionMissing { .. } => FailureKind::QuoteSelectionMissing,
            UnquotedPcr { .. } => FailureKind::UnquotedPcr,
            QuoteNotReached { .. } => FailureKind::QuoteNotReached,
            ManifestSeqGap { .. } => FailureKind::ManifestSeqGap,
            ManifestNotContiguous { .. } => FailureKind::ManifestNotContiguous,
            LiveFirstIndexMismatch { .. } => FailureKind::LiveFirstIndexMismatch,
            ManifestCountMismatch { .. } => FailureKind::ManifestCountMismatch,
            ManifestDigestMismatch { .. } => FailureKind::ManifestDigestMismatch,
            ManifestEndMarkerMismatch { .. } => FailureKind::ManifestEndMarkerMismatch,
            ManifestPcrsEndMismatch { .. } => FailureKind::ManifestPcrsEndMismatch,
            ManifestMalformed { .. } => FailureKind::ManifestMalformed,
            ManifestBootMismatch { .. } => FailureKind::ManifestBootMismatch,
            SnapshotMissing { .. } => FailureKind::SnapshotMissing,
            EmptySegment { .. } => FailureKind::EmptySegment,
            Malformed { .. } => FailureKind::Malformed,
            TemplateDigestMismatch { .. } => FailureKind::TemplateDigestMismatch,
            FirstRecordNotBootAggregate { .. } => FailureKind::FirstRecordNotBootAggregate,
            BootAggregateMismatch { .. } => FailureKind::BootAggregateMismatch,
            MissingEndMarker { .. } => FailureKind::MissingEndMarker,
            LiveStartNotMarker { .. } => FailureKind::LiveStartNotMarker,
            MalformedMarker { .. } => FailureKind::MalformedMarker,
            MarkerBufDigestMismatch { .. } => FailureKind::MarkerBufDigestMismatch,
            MarkerBankMismatch { .. } => FailureKind::MarkerBankMismatch,
            MarkerPlatformMismatch { .. } => FailureKind::MarkerPlatformMismatch,
            AttemptNotIncreasing { .. } => FailureKind::AttemptNotIncreasing,
            MarkerPcrMismatch { .. } => FailureKind::MarkerPcrMismatch,
            SnapshotEndMismatch { .. } => FailureKind::SnapshotEndMismatch,
            CheckpointNotInEvidence { .. } => FailureKind::CheckpointNotInEvidence,
            LogRolledBack { .. } => FailureKind::LogRolledBack,
            CheckpointAkMismatch { .. } => FailureKind::CheckpointAkMismatch,
            CheckpointBadSignature { .. } => FailureKind::CheckpointBadSignature,
            CheckpointChainMismatch { .. } => FailureKind::CheckpointChainMismatch,
            CheckpointOtherBoot { .. } => FailureKind::CheckpointOtherBoot,
            CheckpointClock { .. } => FailureKind::CheckpointClock,
            CheckpointPcrs { .. } => FailureKind::CheckpointPcrs,
            CheckpointIndex { .. } => FailureKind::CheckpointIndex,
            CheckpointNotReached { .. } => FailureKind::CheckpointNotReached,
        }
    }
}

fn display<S: serde::Serializer>(v: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One failure of every kind.
    fn one_of_each() -> Vec<Failure> {
        use Failure::*;
        let s = || String::from("x");
        let b = HashAlgo::Sha256;
        vec![
            BadEvidence { detail: s() },
            SimulatedEvidence { simulated: s() },
            QuoteMalformed { detail: s() },
            AkMismatch { claimed: s(), trusted: s() },
            QuoteBadSignature { detail: s() },
            QuoteNotTpmGenerated { detail: s() },
            QuoteNonceMismatch { expected: s(), found: s() },
            QuotePcrDigestMismatch { detail: s() },
            QuoteSelectionMissing { bank: b, pcr: 1 },
            UnquotedPcr { index: 1, pcr: 1 },
            QuoteNotReached { records: 1, bank: b, pcr: 1 },
            ManifestSeqGap { position: 1, expected: 1, found: 2 },
            ManifestNotContiguous { seq: 1, claimed: 1, expected: 2 },
            LiveFirstIndexMismatch { claimed: 1, expected: 2 },
            ManifestCountMismatch { seq: 1, claimed: 1, actual: 2 },
            ManifestDigestMismatch { seq: 1, claimed: s(), actual: s() },
            ManifestEndMarkerMismatch { seq: 1, index: 1, detail: s() },
            ManifestPcrsEndMismatch { seq: 1, bank: b },
            ManifestMalformed { detail: s() },
            ManifestBootMismatch { detail: s() },
            SnapshotMissing { seq: 1 },
            EmptySegment { segment: Segment::Live },
            Malformed {
                segment: Segment::Snapshot(1),
                index: 1,
                offset: 2,
                reason: imasnap_log::Reason::UnknownTemplate(s()),
            },
            TemplateDigestMismatch { index: 1 },
            FirstRecordNotBootAggregate { index: 1 },
            BootAggregateMismatch { index: 1, detail: s() },
            MissingEndMarker { seq: 1, index: 1 },
            LiveStartNotMarker { index: 1 },
            MalformedMarker { index: 1, detail: s() },
            MarkerBufDigestMismatch { index: 1 },
            MarkerBankMismatch { index: 1, detail: s() },
            MarkerPlatformMismatch { index: 1, bank: b, pcr: 1 },
            AttemptNotIncreasing { index: 1, attempt: 1, previous: 2 },
            MarkerPcrMismatch { index: 1, bank: b, pcr: 1 },
            SnapshotEndMismatch { seq: 1, index: 1, bank: b, pcr: 1 },
            CheckpointNotInEvidence { checkpoint: 1, seq: 1 },
            LogRolledBack { checkpoint: 1, end: 0 },
            CheckpointAkMismatch { seq: 1, detail: s() },
            CheckpointBadSignature { seq: 1, detail: s() },
            CheckpointChainMismatch { seq: 1, detail: s() },
            CheckpointOtherBoot { seq: 1, reset_count: 1, quoted: 2 },
            CheckpointClock { seq: 1, clock: 2, later_than: 1, what: s() },
            CheckpointPcrs { seq: 1, detail: s() },
            CheckpointIndex { seq: 1, index: 1, detail: s() },
            CheckpointNotReached { seq: 1, from: 0, index: 1, matched: None },
        ]
    }

    #[test]
    fn finding_12_failure_kind_is_the_serialised_tag_and_round_trips() {
        let all = one_of_each();
        let kinds: Vec<FailureKind> = all.iter().map(Failure::kind).collect();
        assert_eq!(kinds, FailureKind::ALL.to_vec(), "one sample per kind, in declaration order");
        for f in &all {
            let k = f.kind();
            let v = serde_json::to_value(f).unwrap();
            assert_eq!(v["kind"], k.as_str(), "{f}");
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(k.as_str().parse::<FailureKind>(), Ok(k));
            assert_eq!(serde_json::from_value::<FailureKind>(v["kind"].clone()).unwrap(), k);
            // Display text is for people: never Rust's Debug shape.
            assert!(!f.to_string().contains("Some("), "{f}");
        }
        assert!("NoSuchKind".parse::<FailureKind>().is_err());
    }

    #[test]
    fn finding_12_malformed_reason_is_text_in_json() {
        let f = Failure::Malformed {
            segment: Segment::Snapshot(3),
            index: 7,
            offset: 9,
            reason: imasnap_log::Reason::UnknownTemplate("t".into()),
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["segment"], serde_json::json!({"snapshot": 3}));
        assert_eq!(v["reason"], "unknown template \"t\"");
    }
}
