//! `imasnap tpm ak`: the attestation key a verifier enrols.

use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TpmCmd {
    /// Print (or write) the public part of the TPM's default attestation key.
    ///
    /// The default AK is an ECC P-256 restricted signing primary in the endorsement
    /// hierarchy: derived from the TPM's seed, so it is the same key whenever it is
    /// re-created on that TPM — a verifier enrols it once, before the host boots, and
    /// pins it with `imasnap verify --ak FILE`. Output: hex TPM2B_PUBLIC (the bundle's
    /// ak.pub format), or PEM with --pem.
    ///
    /// Example: imasnap tpm ak --tpm swtpm:host=127.0.0.1,port=2321 -o host1-ak.pub
    Ak(AkArgs),
}

#[derive(Args)]
pub struct AkArgs {
    /// The TPM: device:/dev/tpmrm0, swtpm:host=H,port=P, tabrmd, or the in-process
    /// software TPM soft:seed=N (`sim run --seed N` uses that one; soft = seed 0).
    #[arg(long, default_value = "device:/dev/tpmrm0")]
    tpm: String,
    /// Output file [default: stdout].
    #[arg(short = 'o', long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// PEM (SubjectPublicKeyInfo) instead of hex TPM2B_PUBLIC.
    #[arg(long)]
    pem: bool,
    /// Print both encodings as JSON (format "imasnap-tpm-ak/1").
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: TpmCmd) -> Result<ExitCode> {
    let TpmCmd::Ak(a) = cmd;
    let tpm = imasnap_tpm::open_tpm(&a.tpm).with_context(|| format!("opening TPM {}", a.tpm))?;
    let ak = tpm.ak_public();
    let tpm2b = ak.public_area().map(|p| hex::encode(p.to_tpm2b()));
    let text = match (&tpm2b, a.pem) {
        (Some(h), false) => format!("{h}\n"),
        _ => ak.to_pem(),
    };
    if let Some(p) = &a.out {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    if a.json {
        ui::print_json_doc(
            "imasnap-tpm-ak/1",
            json!({ "tpm2b_public": tpm2b, "pem": ak.to_pem(), "kind": format!("{:?}", ak.kind()) }),
        );
    } else if a.out.is_none() {
        print!("{text}");
    }
    Ok(ExitCode::from(ui::EXIT_OK))
}
