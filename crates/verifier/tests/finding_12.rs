//! Finding 12 of issue 10: typed kinds with snake_case names, no Rust `Debug` text in
//! JSON or messages, and `State` with serde derives that still reads what older versions
//! saved.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use imasnap_verifier::{Failure, Mode, Restart, State, Verdict, VerdictKind};

/// A state exactly as the previous code wrote it (`State::to_json` before `State` had
/// serde derives): a `Host::busy(5)` history verified in one incremental round.
const OLD_STATE_JSON: &str = include_str!("data/state-written-before-serde.json");

fn verified(o: &imasnap_verifier::Outcome) -> &State {
    assert!(o.verdict.is_verified(), "rejected: {:?}", o.verdict);
    o.state.as_ref().unwrap()
}

#[test]
fn finding_12_state_saved_by_old_code_loads_and_saves_the_same_shape() {
    let s = State::from_json(OLD_STATE_JSON).unwrap();
    assert_eq!((s.checkpoint, s.boot.reset_count, s.verified_snapshots), (130, 0, 3));
    assert_eq!(s.pcrs.touched().collect::<Vec<_>>(), vec![10]);
    // Byte for byte the old file: the on-disk/DB shape did not change.
    assert_eq!(s.to_json(), OLD_STATE_JSON.trim_end());
    // The serde derive reads the same document, also nested in another one (a CLI state
    // file, a DB row), with no second JSON string in between.
    let direct: State = serde_json::from_str(OLD_STATE_JSON).unwrap();
    assert_eq!(direct, s);
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Saved {
        state: State,
        ak_pem: String,
    }
    let file = format!(r#"{{"state": {OLD_STATE_JSON}, "ak_pem": "-----BEGIN PUBLIC KEY-----"}}"#);
    let saved: Saved = serde_json::from_str(&file).unwrap();
    assert_eq!(saved.state, s);
    let v = serde_json::to_value(&saved).unwrap();
    assert_eq!(v["state"], serde_json::from_str::<serde_json::Value>(OLD_STATE_JSON).unwrap());
}

#[test]
fn finding_12_the_old_state_continues_incrementally() {
    let mut h = Host::busy(5);
    let prior = State::from_json(OLD_STATE_JSON).unwrap();
    let o = h.bundle(&nonce(1)).verify(Mode::Incremental, None);
    assert_eq!(verified(&o), &prior, "the literal is this host's state");
    h.measure(4);
    let o = h.bundle(&nonce(2)).verify(Mode::Incremental, Some(&prior));
    assert_eq!(verified(&o).checkpoint, 134);
    assert_eq!(o.report.restart, None);
}

#[test]
fn finding_12_state_serde_checks_every_size() {
    let v: serde_json::Value = serde_json::from_str(OLD_STATE_JSON).unwrap();
    let bad = |f: &dyn Fn(&mut serde_json::Value), want: &str| {
        let mut w = v.clone();
        f(&mut w);
        let e = serde_json::from_value::<State>(w.clone()).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        let e = State::from_json(&w.to_string()).unwrap_err();
        assert!(e.starts_with("verifier state: ") && e.contains(want), "{e}");
    };
    bad(&|w| w["boot"]["boot_aggregate_sha1"] = "abcd".into(), "boot_aggregate_sha1 must be 20 bytes");
    bad(&|w| w["pcrs"]["sha1"][3] = "00".into(), "pcrs.sha1[3]");
    bad(&|w| w["pcrs"]["sha256"].as_array_mut().unwrap().truncate(23), "sha256 has 23 values");
    bad(&|w| w["pcrs"] = serde_json::json!({}), "1 to 5 banks");
    bad(&|w| w["extended"] = serde_json::json!([24]), "extended PCR 24 out of range");
}

#[test]
fn finding_12_restart_is_tagged_json_and_readable_text() {
    let mut h = Host::busy(6);
    let s1 = verified(&h.bundle(&nonce(1)).verify(Mode::Incremental, None)).clone();
    h.reboot(10);
    h.measure(3);
    let o = h.bundle(&nonce(2)).verify(Mode::Incremental, Some(&s1));
    verified(&o);
    let r = o.report.restart.clone().unwrap();
    let report = serde_json::to_value(&o.report).unwrap();
    assert_eq!(report["restart"], serde_json::json!({"kind": "reset_count_changed", "saved": 0, "quoted": 1}));
    assert_eq!(report["mode"], "full_history");
    assert_eq!(r.as_str(), "reset_count_changed");
    assert_eq!(r.to_string(), "reset_count_changed (saved resetCount 0, quoted 1)");
    assert_eq!(serde_json::from_value::<Restart>(report["restart"].clone()).unwrap(), r);
    assert_eq!(serde_json::to_value(Restart::NoState).unwrap(), serde_json::json!({"kind": "no_state"}));
    assert_eq!(Restart::BanksChanged.to_string(), "banks_changed");
    for text in [report.to_string(), r.to_string()] {
        assert!(!text.contains("ResetCountChanged") && !text.contains("Some("), "{text}");
    }
}

#[test]
fn finding_12_mode_and_verdict_kinds_are_snake_case_names() {
    for (m, name) in [
        (Mode::FullHistory, "full_history"),
        (Mode::LatestSegment, "latest_segment"),
        (Mode::Incremental, "incremental"),
    ] {
        assert_eq!(m.to_string(), name);
        assert_eq!(serde_json::to_value(m).unwrap(), name);
        assert_eq!(name.parse::<Mode>(), Ok(m));
        assert_eq!(serde_json::from_value::<Mode>(name.into()).unwrap(), m);
    }
    assert!("FullHistory".parse::<Mode>().is_err());
    for (k, name) in [
        (VerdictKind::Verified, "verified"),
        (VerdictKind::Rejected, "rejected"),
        (VerdictKind::PolicyViolation, "policy_violation"),
        (VerdictKind::Error, "error"),
    ] {
        assert_eq!(k.to_string(), name);
        assert_eq!(serde_json::to_value(k).unwrap(), name);
        assert_eq!(name.parse::<VerdictKind>(), Ok(k));
    }
    assert_eq!(Verdict::Verified { history_verified: true }.kind(), VerdictKind::Verified);
    let rejected = Verdict::Rejected { failure: Failure::SnapshotMissing { seq: 1 } };
    assert_eq!(rejected.kind(), VerdictKind::Rejected);
    // The verdict's own JSON tag is the kind's name.
    assert_eq!(serde_json::to_value(&rejected).unwrap()["verdict"], rejected.kind().as_str());
}

#[test]
fn finding_12_ak_mismatch_names_the_key_type_in_words() {
    let mut h = Host::busy(7);
    let mut b = h.bundle(&nonce(1));
    let mut other = Host::boot(8);
    b.claimed_ak = Some(other.ak());
    let f = failure(&b.verify(Mode::FullHistory, None));
    let Failure::AkMismatch { claimed, trusted } = &f else { panic!("{f:?}") };
    let kind = h.ak().kind().to_string();
    assert!(claimed.starts_with(&format!("{kind} sha256:")), "{claimed}");
    assert!(trusted.starts_with(&format!("{kind} sha256:")), "{trusted}");
    assert!(!f.to_string().contains('{') && !f.to_string().contains("Ecc"), "{f}");
}
