//! Upstream staging from the command line: `imasnap sim run --interface staging` writes a
//! bundle of marker-less segments (both flavours, with a kexec and an agent crash), and
//! `imasnap verify` checks it in full history, then incrementally from the saved state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;
use common::*;

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn staging_bundles_verify_from_the_cli() {
    let t = tempfile::tempdir().unwrap();
    for (flavour, crash) in [("trim", "after-manifest-commit"), ("stage", "after-open")] {
        let out = t.path().join(flavour);
        let out_s = out.to_str().unwrap();
        let o = imasnap([
            "sim",
            "run",
            "--out",
            out_s,
            "--interface",
            "staging",
            "--staging",
            flavour,
            "--events",
            "4000",
            "--snapshot-every",
            "700",
            "--kexec-at",
            "2100",
            "--crash-at",
            crash,
            "--json",
        ]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let rep = json(&o);
        assert!(rep["report"]["snapshots"].as_u64().unwrap() >= 4, "{rep}");
        let m: serde_json::Value = serde_json::from_slice(&read(&out.join("manifest.json"))).unwrap();
        for s in m["snapshots"].as_array().unwrap() {
            assert_eq!(s["cut"], flavour, "{s}");
            assert!(s.get("end_marker").is_none(), "a staging segment has no end marker: {s}");
        }
        let state = t.path().join(format!("{flavour}.json"));
        let st = state.to_str().unwrap();
        let o = imasnap(["verify", out_s, "--trust-bundle-ak", "--save-state", st, "--json"]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
        let v = json(&o);
        assert_eq!(v["report"]["mode"], "full_history", "{v}");
        assert_eq!(v["history_verified"], true);
        let o = imasnap(["verify", out_s, "--from-state", st, "--json"]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
        let v = json(&o);
        assert_eq!(v["report"]["mode"], "incremental", "{v}");
        assert_eq!(v["report"]["records_replayed"], 0, "{v}");
        // A stored record swapped: rejected, naming where.
        let snap = out.join("snapshots/000002.snap");
        let mut b = read(&snap);
        let n = b.len();
        b[n - 3] ^= 1;
        std::fs::write(&snap, b).unwrap();
        let o = imasnap(["verify", out_s, "--trust-bundle-ak", "--json"]);
        assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stdout));
    }
}

#[test]
fn agent_snapshot_help_names_both_interfaces() {
    let o = imasnap(["agent", "snapshot", "--help"]);
    let h = String::from_utf8_lossy(&o.stdout);
    for w in ["--interface", "--staging", "CONFIG_IMA_STAGING", "snapshot", "trim", "stage"] {
        assert!(h.contains(w), "{w}: {h}");
    }
}
