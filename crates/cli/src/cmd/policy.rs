//! `imasnap policy …`: judge a measurement log against a runtime policy, convert one, create
//! one (`policy_create.rs`).

use super::policy_source::{for_each_record, is_marker, LogOpts};
use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use imasnap_policy::{model, Allowed, KeyRing, Options, Policy};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use super::policy_create::CreateArgs;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Check every record of a log against a runtime policy.
    ///
    /// The policy is a Keylime runtime policy (JSON), a legacy Keylime JSON allowlist, or a
    /// flat `sha256sum`-style allowlist. ima-sig signatures are verified with the keys of
    /// --keys and of the policy's `verification-keys`. Exit 0 when every record is allowed,
    /// 1 when some are not (each failure names the record index, path and reason), 2 when
    /// the log, the policy or a key cannot be read.
    ///
    /// Example: imasnap policy check binary_runtime_measurements --policy policy.json --keys signing-cert.der
    Check {
        #[command(flatten)]
        input: LogInput,
        #[command(flatten)]
        policy: PolicyInput,
        /// Accept violation (ToMToU, open-writers) records.
        #[arg(long)]
        ignore_violations: bool,
        /// A signature from a configured key that does not verify fails the record even
        /// when its digest is allowed.
        #[arg(long)]
        strict_signatures: bool,
        /// Print a JSON report (format "imasnap-policy-check/1"): records, allowed (by
        /// reason), failures [{index, path, reason, detail}].
        #[arg(long)]
        json: bool,
    },
    /// Convert a policy (flat allowlist, legacy JSON allowlist, runtime policy) with extra
    /// excludes and keys to a Keylime runtime policy (JSON, version 1) on stdout.
    Convert {
        #[command(flatten)]
        policy: PolicyInput,
    },
    Create(CreateArgs),
}

#[derive(Args)]
pub struct LogInput {
    /// Log file (`-` for stdin), binary or ASCII; or a snapshot bundle, boot or state
    /// directory (the whole boot's log: every stored segment, then the live list).
    log: PathBuf,
    #[command(flatten)]
    opts: LogOpts,
}

#[derive(Args)]
pub struct PolicyInput {
    /// Policy file: Keylime runtime policy / JSON allowlist, or flat allowlist.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Verification keys: X.509 certificates (DER or PEM) or public keys (PEM or DER). Repeatable.
    #[arg(long = "keys", value_name = "CERT", num_args = 1..)]
    keys: Vec<PathBuf>,
    /// Exclude list: one regex per line (Keylime format), added to the policy's excludes.
    #[arg(long, value_name = "FILE")]
    exclude_list: Option<PathBuf>,
}

fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>> {
    ui::read_small_file(path, limit as u64)
}

impl PolicyInput {
    fn load(&self) -> Result<Policy> {
        let bytes = read_limited(&self.policy, model::MAX_POLICY_BYTES)?;
        let mut p = Policy::parse(&bytes).with_context(|| format!("policy {}", self.policy.display()))?;
        for w in p.warnings() {
            eprintln!("imasnap: policy {}: {w}", self.policy.display());
        }
        if let Some(x) = &self.exclude_list {
            let text = String::from_utf8(read_limited(x, model::MAX_POLICY_BYTES)?)
                .with_context(|| format!("exclude list {} is not UTF-8", x.display()))?;
            p = p
                .with_excludes(&model::parse_exclude_list(&text))
                .with_context(|| format!("exclude list {}", x.display()))?;
        }
        let mut ring = KeyRing::new();
        for k in &self.keys {
            let data = read_limited(k, imasnap_policy::keys::MAX_KEY_INPUT)?;
            ring.add_bytes(&data, &k.display().to_string())?;
        }
        Ok(p.with_keys(&ring)?)
    }
}

pub fn run(cmd: PolicyCmd) -> Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { input, policy, ignore_violations, strict_signatures, json } => {
            let opts = Options { allow_violations: ignore_violations, strict_signatures, ..Options::default() };
            check(&input, policy.load()?.with_options(opts), json)
        }
        PolicyCmd::Convert { policy } => {
            // A Keylime document, printed as Keylime reads it (no `format` field).
            let text = serde_json::to_string_pretty(&policy.load()?.to_keylime_json())?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Create(a) => super::policy_create::run(&a),
    }
}

fn check(input: &LogInput, policy: Policy, json_out: bool) -> Result<ExitCode> {
    let mut learned = KeyRing::new();
    let mut allowed: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let index = for_each_record(&input.log, &input.opts, &mut |i, rec, endian| {
        if is_marker(rec, endian) {
            *allowed.entry("snapshot-marker").or_default() += 1;
            return Ok(());
        }
        match policy.check_with(i, rec, endian, Some(&mut learned)) {
            Ok(a) => *allowed.entry(allowed_name(&a)).or_default() += 1,
            Err(f) => {
                if !json_out {
                    println!("{f}");
                }
                failures.push(f);
            }
        }
        Ok(())
    })?;
    if index == 0 {
        // As for `imasnap log`: an empty file is not an IMA log.
        anyhow::bail!("{}: empty log: no records (an IMA log starts with its boot_aggregate)", input.log.display());
    }
    if json_out {
        ui::print_json_doc(
            "imasnap-policy-check/1",
            json!({
                "records": index,
                "allowed": allowed,
                "failures": failures,
                "learned_keys": learned.len(),
            }),
        );
    } else {
        let by: Vec<String> = allowed.iter().map(|(k, v)| format!("{v} by {k}")).collect();
        eprintln!(
            "{index} records: {} allowed ({}), {} not allowed",
            index - failures.len() as u64,
            if by.is_empty() { "none".to_string() } else { by.join(", ") },
            failures.len()
        );
    }
    Ok(ExitCode::from(if failures.is_empty() { ui::EXIT_OK } else { ui::EXIT_FAIL }))
}

fn allowed_name(a: &Allowed) -> &'static str {
    match a {
        Allowed::Digest => "digest",
        Allowed::Signature { .. } => "signature",
        Allowed::Excluded => "exclude",
        Allowed::BootAggregate => "boot-aggregate",
        Allowed::IgnoredKeyring => "ignored-keyring",
        Allowed::Keyring => "keyring",
        Allowed::Buffer => "ima-buf",
        Allowed::Violation => "ignored-violation",
    }
}
