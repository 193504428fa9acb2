//! `imasnap verify DIR`: offline verification of an evidence bundle.

use crate::ui;
use anyhow::{bail, Context, Result};
use clap::Args;
use imasnap_tpm::AkPublic;
use imasnap_verifier::dir::BundleDir;
use imasnap_verifier::{verify, Mode, Options, Outcome, State, TpmQuote};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Verify an evidence bundle (snapshots + live list + quote), as written by `sim run` or an agent.
///
/// Full history by default: every snapshot is replayed from record 0 and every marker is
/// checked. With --from-state, only records after the saved checkpoint are replayed and
/// verified snapshots are crossed by their end markers. --latest-only starts from the
/// marker heading the live list (history not verified).
///
/// Trust: the AK comes from --ak, else from the state file, else the bundle's own ak.pub
/// (trust on first use, reported as such). The nonce comes from --nonce, else bundle.json.
///
/// Example: imasnap verify /tmp/b --save-state host.json && imasnap verify /tmp/b2 --from-state host.json --save-state host.json
#[derive(Args)]
pub struct VerifyArgs {
    /// Bundle directory.
    dir: PathBuf,
    /// Continue from this saved state (incremental).
    #[arg(long)]
    from_state: Option<PathBuf>,
    /// Save the new state here (only when verified; a rejection never saves).
    #[arg(long)]
    save_state: Option<PathBuf>,
    /// Verify only the latest segment, from the marker heading the live list.
    #[arg(long, conflicts_with = "from_state")]
    latest_only: bool,
    /// Trusted AK: PEM file or hex TPM2B_PUBLIC.
    #[arg(long)]
    ak: Option<PathBuf>,
    /// The nonce the quote must answer (hex); default: the bundle's.
    #[arg(long)]
    nonce: Option<String>,
    #[arg(long)]
    json: bool,
}

/// What `--save-state` writes: the engine's state plus the AK it was proven with.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedState {
    state: serde_json::Value,
    ak_pem: String,
}

fn load_ak(p: &Path) -> Result<AkPublic> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    imasnap_wire::ak::parse_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let (prior, saved_ak) = match &a.from_state {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let s: SavedState = serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            let st = State::from_json(&s.state.to_string()).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let ak = imasnap_verifier::bundle::ak_from_pem(&s.ak_pem).map_err(|e| anyhow::anyhow!("{e}"))?;
            (Some(st), Some(ak))
        }
        None => (None, None),
    };
    let bundle = match BundleDir::open(&a.dir) {
        Ok(b) => b,
        Err(f) => return finish(&a, None, Err(f), "none", 0.0),
    };
    let (ak, ak_source) = match (&a.ak, saved_ak) {
        (Some(p), _) => (load_ak(p)?, "--ak"),
        (None, Some(k)) => (k, "saved state"),
        (None, None) => match bundle.shipped_ak.clone() {
            Some(k) => (k, "bundle (trust on first use)"),
            None => bail!("no AK: pass --ak or --from-state (the bundle ships none)"),
        },
    };
    let nonce = match &a.nonce {
        Some(h) => hex::decode(h).context("--nonce is not hex")?,
        None => bundle.index.nonce.clone(),
    };
    let mode = if a.latest_only {
        Mode::LatestSegment
    } else if prior.is_some() {
        Mode::Incremental
    } else {
        Mode::FullHistory
    };
    let ev = match bundle.evidence() {
        Ok(e) => e,
        Err(f) => return finish(&a, None, Err(f), ak_source, 0.0),
    };
    let q = TpmQuote { quote: &bundle.quote, trusted_ak: &ak, claimed_ak: bundle.shipped_ak.as_ref() };
    let t = Instant::now();
    let out = verify(&Options::new(mode), ev, &q, &nonce, prior.as_ref());
    let secs = t.elapsed().as_secs_f64();
    if out.verdict.is_verified() {
        if let (Some(p), Some(st)) = (&a.save_state, &out.state) {
            let saved = SavedState { state: serde_json::from_str(&st.to_json())?, ak_pem: ak.to_pem() };
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&saved)?)?;
            std::fs::rename(&tmp, p)?;
        }
    }
    finish(&a, Some(&out), Ok(()), ak_source, secs)
}

fn finish(
    a: &VerifyArgs,
    out: Option<&Outcome>,
    early: Result<(), imasnap_verifier::Failure>,
    ak_source: &str,
    secs: f64,
) -> Result<ExitCode> {
    let failure = match (&early, out) {
        (Err(f), _) => Some(f.clone()),
        (Ok(()), Some(o)) => o.verdict.failure().cloned(),
        _ => None,
    };
    let verified = failure.is_none();
    if a.json {
        let report = out.map(|o| serde_json::to_value(&o.report).unwrap_or_default());
        let history = out.and_then(|o| match o.verdict {
            imasnap_verifier::Verdict::Verified { history_verified } => Some(history_verified),
            _ => None,
        });
        ui::print_json(&json!({
            "verdict": if verified { "verified" } else { "rejected" },
            "reason": failure.as_ref().map(|f| f.kind()),
            "detail": failure.as_ref().map(|f| f.to_string()),
            "record": failure.as_ref().and_then(|f| f.index()),
            "history_verified": history,
            "checkpoint": out.and_then(|o| o.state.as_ref()).map(|s| s.checkpoint),
            "ak_source": ak_source,
            "seconds": secs,
            "report": report,
        }));
    } else {
        match (&failure, out) {
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
                println!("AK: {ak_source}; {:.1} ms", secs * 1000.0);
            }
            (Some(f), _) => println!("REJECTED ({}): {f}", f.kind()),
            _ => {}
        }
    }
    // A bundle that cannot be read at all is bad input (2), not a rejection (1).
    let code = match (&early, verified) {
        (Err(_), _) => ui::EXIT_INPUT,
        (Ok(()), true) => ui::EXIT_OK,
        (Ok(()), false) => ui::EXIT_FAIL,
    };
    Ok(ExitCode::from(code))
}
