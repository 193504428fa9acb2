//! What the dashboard's pages show, as JSON built from the verifier's in-memory view and
//! the verdict history (no state of its own).

use crate::model::{EvidenceSummary, HostState, HostStatus, SegmentSummary, VerdictRow};
use crate::service::Shared;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// The `format` field of the dashboard's JSON.
pub const FORMAT: &str = "imasnap-dashboard/1";
/// Verdicts read for a host page (timeline, chain, log-size chart).
const HISTORY: u64 = 500;
/// Verdicts drawn on the timeline.
const TIMELINE: usize = 120;

fn now_ms() -> i64 {
    crate::service::registry::now_ms()
}

/// Failing first: a finding about the host, then no answer, then not yet judged, then good.
pub fn severity(s: HostState) -> u8 {
    match s {
        HostState::Rejected | HostState::PolicyViolation | HostState::Unusable => 0,
        HostState::Error => 1,
        HostState::Pending => 2,
        HostState::Verified => 3,
    }
}

/// The kind of back end from the agent's mode (`snapshot`, `staging`, `legacy`), else
/// from how its segments were cut; `None` when nothing tells.
pub fn backend(e: Option<&EvidenceSummary>) -> Option<&'static str> {
    let e = e?;
    if let Some(m) = &e.mode {
        return Some(if m.contains("legacy") {
            "legacy"
        } else if m.contains("staging") {
            "staging"
        } else {
            "snapshot"
        });
    }
    e.segments.last().map(|s| if s.cut == "marker" { "snapshot" } else { "staging" })
}

/// The newest evidence summary among the host's last verdict and its alert.
fn last_evidence(s: &HostStatus) -> Option<&EvidenceSummary> {
    s.last.as_ref().and_then(|l| l.evidence.as_ref())
}

/// `GET /dashboard/api/fleet`.
pub fn fleet(v: &Shared) -> Value {
    let mut hosts = v.list();
    hosts.sort_by(|a, b| severity(a.status).cmp(&severity(b.status)).then_with(|| a.spec.name.cmp(&b.spec.name)));
    let mut counts = BTreeMap::new();
    let rows: Vec<Value> = hosts
        .iter()
        .map(|h| {
            *counts.entry(h.status.as_str()).or_insert(0u64) += 1;
            let ev = last_evidence(h);
            let last = h.last.as_ref();
            json!({
                "name": h.spec.name,
                "status": h.status,
                "failing": severity(h.status) == 0,
                "last_verdict": last.map(|l| l.verdict),
                "last_at_ms": last.map(|l| l.at_ms),
                "reason": last.and_then(|l| l.reason.clone()),
                "record": last.and_then(|l| l.record),
                "backend": backend(ev),
                "mode": ev.and_then(|e| e.mode.clone()),
                "checkpoint": h.checkpoint,
                "records_per_round": last.map(|l| l.records_replayed),
                "rounds": h.rounds,
                "log_size": ev.and_then(|e| e.log_size),
            })
        })
        .collect();
    json!({ "format": FORMAT, "now_ms": now_ms(), "counts": counts, "hosts": rows })
}

/// What changes when any host's view moves: the event stream sends it.
pub fn fingerprint(v: &Shared) -> u64 {
    let hosts = v.hosts();
    let mut names: Vec<&String> = hosts.keys().collect();
    names.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for n in names {
        if let Some(rt) = hosts.get(n) {
            (n, rt.rounds, rt.status.as_str(), rt.generation, rt.last.as_ref().map(|l| l.at_ms)).hash(&mut h);
        }
    }
    h.finish()
}

/// A verdict as the timeline draws it.
fn timeline_point(r: &VerdictRow) -> Value {
    json!({
        "at_ms": r.at_ms,
        "verdict": r.verdict,
        "reason": r.reason,
        "record": r.record,
        "mode": r.mode,
        "restart": r.restart,
        "checkpoint": r.checkpoint,
        "records_replayed": r.records_replayed,
        "duration_ms": r.duration_ms,
    })
}

/// The failure a host page explains: its record index, path (a policy violation's file)
/// and reason.
fn failure(r: &VerdictRow) -> Value {
    let first = r.policy_failures.first();
    json!({
        "at_ms": r.at_ms,
        "verdict": r.verdict,
        "reason": r.reason,
        "record": r.record,
        "path": first.and_then(|f| f.get("path")).cloned(),
        "policy_reason": first.and_then(|f| f.get("reason")).cloned(),
        "detail": r.detail,
        "policy_failures": r.policy_failures.iter().take(20).collect::<Vec<_>>(),
        "policy_failures_total": r.policy_failures.len(),
    })
}

/// The current boot's segment chain, merged from the rounds' evidence (newest first in
/// `rows`): each round lists the segments from its start on, so together they cover the
/// boot as far back as the kept history reaches.
fn chain(rows: &[VerdictRow], checkpoint: Option<u64>) -> Value {
    let mut boot = None;
    let mut segs: BTreeMap<u64, SegmentSummary> = BTreeMap::new();
    let mut live_first = None;
    let mut boots = Vec::new();
    let mut later: Option<(u64, i64)> = None;
    for r in rows {
        let Some(e) = &r.evidence else { continue };
        if let Some((rc, at)) = later {
            if rc != e.reset_count {
                boots.push(json!({ "at_ms": at, "reset_count": rc, "previous": e.reset_count }));
            }
        }
        later = Some((e.reset_count, r.at_ms));
        match boot {
            None => {
                boot = Some(e.reset_count);
                live_first = Some(e.live_first_index);
            }
            Some(b) if b != e.reset_count => continue,
            Some(_) => {}
        }
        for s in &e.segments {
            segs.entry(s.seq).or_insert_with(|| s.clone());
        }
    }
    let first = segs.values().map(|s| s.first_index).min().or(live_first);
    json!({
        "reset_count": boot,
        "segments": segs.into_values().collect::<Vec<_>>(),
        "live_first_index": live_first,
        "verified_to": checkpoint,
        // False when the kept history no longer reaches the boot's first record.
        "complete": first == Some(0),
        "cold_boots": boots,
    })
}

/// `GET /dashboard/api/hosts/{name}`; `Ok(None)` for an unknown host.
pub fn host(v: &Shared, name: &str) -> Result<Option<Value>, String> {
    let Some(status) = v.host_status(name) else { return Ok(None) };
    let rows = v.verdicts(name, HISTORY.min(v.cfg.keep_verdicts.max(1)))?;
    let timeline: Vec<Value> = rows.iter().take(TIMELINE).map(timeline_point).collect();
    let log_size: Vec<Value> = rows
        .iter()
        .rev()
        .filter_map(|r| {
            let s = r.evidence.as_ref()?.log_size?;
            Some(json!({
                "at_ms": r.at_ms,
                "kernel_bytes": s.kernel_bytes,
                "kernel_records": s.kernel_records,
                "untrimmed_bytes": s.untrimmed_bytes,
                "untrimmed_records": s.untrimmed_records,
            }))
        })
        .collect();
    // The standing alert, else the newest round if it failed.
    let fail = status
        .alert
        .as_ref()
        .or_else(|| status.last.as_ref().filter(|l| l.verdict.is_alert() || l.verdict == crate::model::Verdict::Error));
    let ev = last_evidence(&status).or_else(|| rows.iter().find_map(|r| r.evidence.as_ref()));
    Ok(Some(json!({
        "format": FORMAT,
        "now_ms": now_ms(),
        "name": status.spec.name,
        "status": status.status,
        "address": status.spec.address,
        "backend": backend(ev),
        "mode": ev.and_then(|e| e.mode.clone()),
        "checkpoint": status.checkpoint,
        "rounds": status.rounds,
        "ak_source": status.ak_source,
        "reset_count": status.reset_count,
        "history_verified": status.history_verified,
        "last": status.last.as_ref().map(timeline_point),
        "failure": fail.map(failure),
        "damage": status.damage,
        "timeline": timeline,
        "chain": chain(&rows, status.checkpoint),
        "log_size": log_size,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u64, first: u64, count: u64) -> SegmentSummary {
        SegmentSummary { seq, first_index: first, count, cut: "marker".into(), checkpoint: seq.is_multiple_of(2) }
    }

    fn row(at: i64, rc: u64, segs: Vec<SegmentSummary>, live: u64) -> VerdictRow {
        VerdictRow {
            at_ms: at,
            evidence: Some(EvidenceSummary {
                reset_count: rc,
                live_first_index: live,
                segments: segs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn chain_merges_rounds_of_the_current_boot_and_marks_cold_boots() {
        // Newest first: boot 2 with two rounds (the older lists seq 1-2, the newer 2-3),
        // then boot 1 (not part of the chain).
        let rows = vec![
            row(30, 2, vec![seg(2, 10, 5), seg(3, 15, 5)], 20),
            row(20, 2, vec![seg(1, 0, 10), seg(2, 10, 5)], 15),
            row(10, 1, vec![seg(1, 0, 99)], 99),
        ];
        let c = chain(&rows, Some(22));
        let s = c["segments"].as_array().unwrap();
        assert_eq!(s.len(), 3, "{c}");
        assert_eq!((s[0]["first_index"].as_u64(), s[0]["count"].as_u64()), (Some(0), Some(10)));
        assert_eq!(c["live_first_index"], 20);
        assert_eq!(c["complete"], true);
        assert_eq!(c["cold_boots"].as_array().unwrap().len(), 1, "{c}");
        assert_eq!(c["cold_boots"][0]["reset_count"], 2);
        // Only the newest round kept: the chain does not reach record 0.
        assert_eq!(chain(&rows[..1], None)["complete"], false);
    }

    #[test]
    fn backend_from_mode_or_cuts() {
        let mut e = EvidenceSummary { mode: Some("securityfs-legacy".into()), ..Default::default() };
        assert_eq!(backend(Some(&e)), Some("legacy"));
        e.mode = Some("model-staging".into());
        assert_eq!(backend(Some(&e)), Some("staging"));
        e.mode = Some("model".into());
        assert_eq!(backend(Some(&e)), Some("snapshot"));
        e.mode = None;
        assert_eq!(backend(Some(&e)), None);
        e.segments = vec![SegmentSummary { cut: "trim".into(), ..Default::default() }];
        assert_eq!(backend(Some(&e)), Some("staging"));
        assert_eq!(backend(None), None);
    }

    #[test]
    fn failing_hosts_sort_first() {
        let mut v = [HostState::Verified, HostState::Pending, HostState::PolicyViolation, HostState::Error];
        v.sort_by_key(|s| severity(*s));
        assert_eq!(v, [HostState::PolicyViolation, HostState::Error, HostState::Pending, HostState::Verified]);
    }
}
