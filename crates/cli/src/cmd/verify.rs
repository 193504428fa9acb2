//! `imasnap verify DIR`: offline verification of an evidence bundle.

use crate::ui;
use anyhow::{bail, Context, Result};
use clap::Args;
use imasnap_tpm::AkPublic;
use imasnap_verifier::dir::BundleDir;
use imasnap_verifier::{verify, verify_segmented, Evidence, Failure, Input, Mode, Options, Outcome, State, TpmQuote};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The `format` of `verify --json`.
const FORMAT: &str = "imasnap-verify/1";

/// Evidence above this many bytes gets a progress bar (on a terminal, without --json).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

/// Verify an evidence bundle (snapshots + live list + quote), as written by `sim run` or an agent.
///
/// Full history by default: every snapshot is replayed from record 0 and every marker is
/// checked. With --from-state, only records after the saved checkpoint are replayed and
/// verified snapshots are crossed by their end markers. --latest-only starts from the
/// newest checkpoint (any back end) or the marker heading the live list (history not
/// verified). With checkpoints, full history is split into ranges between consecutive
/// checkpoints that are verified in parallel (--jobs N); the verdict names the first
/// failing range and record.
///
/// Trust: the quote must be signed by an AK the caller trusts: --ak FILE (the host's
/// enrolled key, from `imasnap tpm ak`), or the one saved with --from-state. The bundle's
/// own ak.pub proves nothing (anyone can make a bundle on a software TPM); it is used only
/// with --trust-bundle-ak, and every verdict names the trust source. The nonce comes from
/// --nonce, else bundle.json (then freshness is not checked).
///
/// Exit codes: 0 verified; 1 rejected (the evidence is wrong); 2 an input is missing, not
/// a regular file, too large or malformed (bundle.json, manifest.json, quote.json, ak.pub,
/// live.bin or a snapshot file that does not decode), or bad usage.
///
/// Example: imasnap verify /tmp/b --ak host-ak.pub --save-state host.json && imasnap verify /tmp/b2 --from-state host.json --save-state host.json
#[derive(Args)]
pub struct VerifyArgs {
    /// Bundle directory.
    dir: PathBuf,
    /// Continue from this saved state (incremental); it also holds the trusted AK.
    #[arg(long, value_name = "FILE")]
    from_state: Option<PathBuf>,
    /// Save the new state here (only when verified; a rejection never saves).
    #[arg(long, value_name = "FILE")]
    save_state: Option<PathBuf>,
    /// Verify only the latest segment: from the newest checkpoint when the bundle has
    /// checkpoints (any back end), else from the marker heading the live list.
    #[arg(long, conflicts_with = "from_state")]
    latest_only: bool,
    /// Full history in ranges between checkpoints, verified on N threads at once
    /// [default: the number of CPUs]. Without checkpoints: one range.
    #[arg(long, value_name = "N", conflicts_with_all = ["from_state", "latest_only"])]
    jobs: Option<usize>,
    /// Trusted AK (the host's enrolled key): PEM file or hex TPM2B_PUBLIC (`imasnap tpm ak`).
    #[arg(long, value_name = "FILE")]
    ak: Option<PathBuf>,
    /// Trust the AK the bundle ships (ak.pub) without enrolment. Unsafe: a forged bundle
    /// made on any software TPM verifies. Verdicts say "bundle (untrusted)".
    #[arg(long, conflicts_with_all = ["ak", "from_state"])]
    trust_bundle_ak: bool,
    /// The nonce the quote must answer (hex) [default: the bundle's, freshness not checked].
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// Print the verdict as JSON (format "imasnap-verify/1").
    #[arg(long)]
    json: bool,
}

/// What `--save-state` writes: the engine's state plus the AK it was proven with.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedState {
    state: State,
    ak_pem: String,
    /// How that AK was first trusted (`enrolled` or `bundle_untrusted`), so a state saved
    /// from an untrusted run does not turn into trust later. Absent in older files.
    #[serde(default)]
    ak_trust: Option<String>,
}

/// Where the trusted AK came from, for every verdict.
struct Trust {
    ak: Option<AkPublic>,
    /// Machine-readable: `enrolled`, `saved_state` or `bundle_untrusted`.
    kind: &'static str,
    /// The trust of the first run, carried through saved states.
    origin: String,
    file: Option<PathBuf>,
}

impl Trust {
    fn text(&self) -> String {
        let f = self.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        match self.kind {
            "enrolled" => format!("enrolled {f} (--ak)"),
            "saved_state" => format!("saved state {f} (first trusted as: {})", self.origin.replace('_', " ")),
            _ => "bundle (untrusted, --trust-bundle-ak)".to_string(),
        }
    }
}

pub fn load_ak(p: &Path) -> Result<AkPublic> {
    let text = ui::read_small_text(p, ui::MAX_AK_BYTES)?;
    imasnap_wire::ak::parse_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

/// A `--save-state` file: the engine state, its AK and how that AK was first trusted.
fn load_state(p: &Path) -> Result<(State, AkPublic, String)> {
    let text = ui::read_small_text(p, ui::MAX_STATE_BYTES)?;
    let s: SavedState = serde_json::from_str(&text).with_context(|| format!("{}: not a saved state", p.display()))?;
    let st = s.state;
    let ak = imasnap_wire::ak::from_pem(&s.ak_pem).map_err(|e| anyhow::anyhow!("{}: ak_pem: {e}", p.display()))?;
    Ok((st, ak, s.ak_trust.unwrap_or_else(|| "unrecorded".into())))
}

pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    // The trust decision comes first: a missing one is a usage error, before any file.
    let saved = a.from_state.as_deref().map(load_state).transpose()?;
    let mut prior = None;
    let mut trust = match (&a.ak, saved, a.trust_bundle_ak) {
        (Some(p), saved, _) => {
            prior = saved.map(|s| s.0);
            Trust { ak: Some(load_ak(p)?), kind: "enrolled", origin: "enrolled".into(), file: Some(p.clone()) }
        }
        (None, Some((st, ak, origin)), _) => {
            prior = Some(st);
            Trust { ak: Some(ak), kind: "saved_state", origin, file: a.from_state.clone() }
        }
        (None, None, true) => {
            Trust { ak: None, kind: "bundle_untrusted", origin: "bundle_untrusted".into(), file: None }
        }
        (None, None, false) => bail!(
            "no trusted AK: pass --ak FILE (the host's enrolled AK, from `imasnap tpm ak`) or --from-state FILE; \
             --trust-bundle-ak accepts the bundle's own ak.pub, which anyone can forge"
        ),
    };
    let nonce = match &a.nonce {
        Some(h) => Some(hex::decode(h.trim()).map_err(|e| anyhow::anyhow!("--nonce {h:?} is not hex: {e}"))?),
        None => None,
    };
    let bundle = match BundleDir::open(&a.dir) {
        Ok(b) => b,
        Err(f) => return finish(&a, None, Some(&f), &trust, 0.0),
    };
    if trust.ak.is_none() {
        match bundle.shipped_ak.clone() {
            Some(k) => trust.ak = Some(k),
            None => bail!("{}: no ak.pub or ak.pem to trust (--trust-bundle-ak)", a.dir.display()),
        }
    }
    let Some(ak) = trust.ak.clone() else { bail!("no AK") };
    let nonce = nonce.unwrap_or_else(|| bundle.index.nonce.clone());
    let mode = if a.latest_only {
        Mode::LatestSegment
    } else if prior.is_some() {
        Mode::Incremental
    } else {
        Mode::FullHistory
    };
    let ev = match bundle.evidence() {
        Ok(e) => e,
        Err(f) => return finish(&a, None, Some(&f), &trust, 0.0),
    };
    let q = TpmQuote { quote: &bundle.quote, trusted_ak: &ak, claimed_ak: bundle.shipped_ak.as_ref() };
    let t = Instant::now();
    let out = if mode == Mode::FullHistory {
        // Ranges between checkpoints, each read on its own: the files are reopened per range.
        drop(ev);
        let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let make = || bundle.evidence().unwrap_or_else(|_| empty_evidence(&bundle));
        verify_segmented(&Options::new(mode), &make, &q, &nonce, jobs)
    } else {
        // Latest: segments wholly before the newest checkpoint are never read.
        let skip_to = match mode {
            Mode::LatestSegment => {
                bundle.manifest.snapshots.iter().filter_map(|(_, c)| c.checkpoint.as_ref()).map(|c| c.index).max()
            }
            _ => None,
        };
        let (ev, pb) = with_progress(&bundle, ev, a.json, skip_to.unwrap_or(0));
        let out = verify(&Options::new(mode), ev, &q, &nonce, prior.as_ref());
        pb.finish_and_clear();
        out
    };
    let secs = t.elapsed().as_secs_f64();
    if out.verdict.is_verified() {
        if let (Some(p), Some(st)) = (&a.save_state, &out.state) {
            let saved = SavedState { state: st.clone(), ak_pem: ak.to_pem(), ak_trust: Some(trust.origin.clone()) };
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&saved)?)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, p).with_context(|| format!("renaming {} to {}", tmp.display(), p.display()))?;
        }
    }
    finish(&a, Some(&out), out.verdict.failure(), &trust, secs)
}

/// Wraps the evidence readers in one byte progress bar over the files' total size (the
/// engine streams them; crossed snapshots are never read, so the bar may end early).
/// Segments that end at or before record `skip_to` are not counted (nor looked at: a
/// latest run's cost must not grow with history).
fn with_progress(
    b: &BundleDir,
    mut ev: Evidence<'static>,
    quiet: bool,
    skip_to: u64,
) -> (Evidence<'static>, indicatif::ProgressBar) {
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let total: u64 = size(b.dir.join("live.bin"))
        + b.manifest
            .snapshots
            .iter()
            .filter(|(_, c)| c.end_index() > skip_to)
            .map(|(f, _)| size(b.dir.join("snapshots").join(f)))
            .sum::<u64>();
    let pb = ui::bytes_bar(total, quiet || total < PROGRESS_MIN_BYTES);
    pb.set_message("verifying");
    let wrap = |i: Input<'static>, pb: &indicatif::ProgressBar| match i {
        Input::Reader(r) => Input::Reader(Box::new(pb.wrap_read(r))),
        other => other,
    };
    for s in &mut ev.snapshots {
        s.data = s.data.take().map(|d| wrap(d, &pb));
    }
    ev.live = wrap(std::mem::replace(&mut ev.live, Input::Bytes(&[])), &pb);
    (ev, pb)
}

/// Stands in if the bundle's files vanish between two reads: the engine then rejects it.
fn empty_evidence(b: &BundleDir) -> Evidence<'static> {
    Evidence {
        banks: b.index.banks.clone(),
        pcr: b.index.pcr,
        endian: imasnap_log::Endian::Little,
        boot: Some(b.manifest.boot.clone()),
        snapshots: Vec::new(),
        live: Input::Bytes(&[]),
        live_first_index: b.index.live_first_index,
        data_from: None,
    }
}

/// Evidence that could not be read or does not decode is bad input (exit 2), like a
/// truncated log for `imasnap log`; everything else is a rejection (exit 1).
fn is_input_failure(f: &Failure) -> bool {
    matches!(
        f,
        Failure::BadEvidence { .. }
            | Failure::Malformed { .. }
            | Failure::QuoteMalformed { .. }
            | Failure::ManifestMalformed { .. }
    )
}

fn finish(
    a: &VerifyArgs,
    out: Option<&Outcome>,
    failure: Option<&Failure>,
    trust: &Trust,
    secs: f64,
) -> Result<ExitCode> {
    let verified = failure.is_none() && out.is_some();
    if a.json {
        let report = out.map(|o| serde_json::to_value(&o.report).unwrap_or_default());
        let history = out.and_then(|o| match o.verdict {
            imasnap_verifier::Verdict::Verified { history_verified } => Some(history_verified),
            _ => None,
        });
        ui::print_json_doc(
            FORMAT,
            json!({
                "verdict": if verified { "verified" } else { "rejected" },
                "reason": failure.map(|f| f.kind()),
                "detail": failure.map(|f| f.to_string()),
                "record": failure.and_then(|f| f.index()),
                "input_error": failure.is_some_and(is_input_failure),
                "history_verified": history,
                "checkpoint": out.and_then(|o| o.state.as_ref()).map(|s| s.checkpoint),
                "ak_source": trust.text(),
                "ak_trust": trust.kind,
                "ak_first_trust": trust.origin,
                "ak_file": trust.file,
                "seconds": secs,
                "report": report,
            }),
        );
    } else {
        match (failure, out) {
            (None, Some(o)) => {
                let r = &o.report;
                let hist = matches!(o.verdict, imasnap_verifier::Verdict::Verified { history_verified: true });
                println!(
                    "VERIFIED{}: {} records replayed, {} skipped; {} snapshots replayed, {} crossed by marker; checkpoint {}; {} record(s) after the quote carried over",
                    if hist { "" } else { " (history not verified)" },
                    r.records_replayed,
                    r.records_skipped,
                    r.snapshots_replayed,
                    r.snapshots_skipped,
                    o.state.as_ref().map(|s| s.checkpoint).unwrap_or(0),
                    r.tail_records
                );
                if let Some(c) = r.checkpoint_used {
                    println!("from the checkpoint of segment {} at record {}", c.seq, c.index);
                }
                if r.ranges > 0 {
                    println!(
                        "{} ranges between {} checkpoints, each verified on its own",
                        r.ranges, r.checkpoints_checked
                    );
                }
                println!("ak: {}; {:.1} ms", trust.text(), secs * 1000.0);
            }
            (Some(f), _) => {
                println!("REJECTED ({}): {f}", f.kind());
                if let Some(r) = out.and_then(|o| o.report.failed_range) {
                    let to = r.to.map_or("the fresh quote".to_string(), |t| format!("record {t}"));
                    println!("first failing range: record {} to {to}", r.from);
                }
                println!("ak: {}", trust.text());
            }
            (None, None) => {}
        }
    }
    let code = match failure {
        None => ui::EXIT_OK,
        Some(f) if is_input_failure(f) => ui::EXIT_INPUT,
        Some(_) => ui::EXIT_FAIL,
    };
    Ok(ExitCode::from(code))
}
