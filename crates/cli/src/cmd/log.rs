//! `imasnap log …`: the measurement-log tools.

use crate::ui;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use imasnap_log::replay::{replay_stream, PcrTarget};
use imasnap_log::{
    ascii, check, pcrfile, reader, BinaryFormat, Endian, ExtendMode, Format, HashAlgo, Record, ReplayOptions, Replayer,
};
use serde_json::json;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const BATCH: usize = 4096;

#[derive(Subcommand)]
pub enum LogCmd {
    /// Print a log exactly as the kernel's `ascii_runtime_measurements` would.
    ///
    /// For a per-bank file (`binary_runtime_measurements_sha256`) the digest column is that
    /// bank's template digest, as in `ascii_runtime_measurements_sha256`.
    Show {
        #[command(flatten)]
        input: Input,
    },
    /// Convert between binary and ASCII, optionally re-digesting for another bank.
    ///
    /// `--bank sha256` on a classic (SHA1) log recomputes every template digest with
    /// SHA256, giving the `_sha256` per-bank file. Violations stay all-zero.
    Convert {
        #[command(flatten)]
        input: Input,
        /// Output format.
        #[arg(long, value_enum)]
        to: OutFormat,
        /// Bank whose template digest the output carries (default: the input's).
        #[arg(long)]
        bank: Option<HashAlgo>,
        /// Output file [default: stdout].
        #[arg(short = 'o', long = "out", alias = "output", value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Replay a log into PCR values for several banks.
    ///
    /// Template digests are recomputed for every bank and compared with the digest stored
    /// in the log; mismatching records are listed and make the exit code 1.
    ///
    /// Example: imasnap log replay /sys/kernel/security/ima/binary_runtime_measurements --json
    Replay {
        #[command(flatten)]
        input: Input,
        /// Banks to replay, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "sha1,sha256")]
        banks: Vec<HashAlgo>,
        /// Extend non-SHA1 banks with the zero-padded SHA1 digest (kernels before 5.8).
        #[arg(long)]
        padded_sha1: bool,
        /// Print JSON (format "imasnap-log-replay/1"): records, violations, template_digest_mismatches, pcrs.
        #[arg(long)]
        json: bool,
    },
    /// Verify a log against PCR values, as `evmctl ima_measurement` does.
    ///
    /// Passes (exit 0) when a prefix of the log replays to the given values in every given
    /// bank: the log may run ahead of the PCR read. Each bank may match with 5.8+ or
    /// pre-5.8 (padded SHA1) extend semantics. Violations fail unless --ignore-violations.
    ///
    /// Example: imasnap log verify binary_runtime_measurements --pcrs sha1,pcrs-sha1.txt --pcrs sha256,pcrs-sha256.txt
    Verify {
        #[command(flatten)]
        input: Input,
        /// `[ALG,]FILE` with `PCR-NN: hex` lines (evmctl format); ALG defaults to sha1. Repeatable.
        #[arg(long = "pcrs", required = true, value_name = "[ALG,]PCRFILE")]
        pcrs: Vec<String>,
        /// Accept violation (ToMToU, open-writers) records.
        #[arg(long)]
        ignore_violations: bool,
        /// Print the verdict as JSON (format "imasnap-log-verify/1").
        #[arg(long)]
        json: bool,
    },
    /// Write a realistic synthetic log and its PCR files, for benchmarks and tests.
    ///
    /// Writes DIR/binary_runtime_measurements (SHA1 digests) and DIR/pcrs-sha1.txt,
    /// DIR/pcrs-sha256.txt with the replayed values. Like a real workload, the log holds
    /// violation records (ToMToU, open-writers), so `log verify` of it needs
    /// --ignore-violations.
    ///
    /// Example: imasnap log synth --records 100000 -o /tmp/s && imasnap log verify /tmp/s/binary_runtime_measurements --pcrs sha1,/tmp/s/pcrs-sha1.txt --ignore-violations
    Synth {
        /// Number of log records to write.
        #[arg(long)]
        records: u64,
        /// Seed of the generator (same seed, same log).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write only `ima-ng` records (and violations): no `ima-sig`, `ima-buf` or `ima-ngv2`.
        #[arg(long)]
        ima_ng_only: bool,
        /// Output directory (created if missing).
        #[arg(short = 'o', long = "out", value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct Input {
    /// Log file (`-` for stdin).
    file: PathBuf,
    /// Input format.
    #[arg(long, default_value = "auto")]
    format: Format,
    /// Bank of the digests in the file (default: from the file name, `_sha256` etc., else sha1).
    #[arg(long = "input-bank")]
    input_bank: Option<HashAlgo>,
    /// Integers are big-endian (a big-endian host without ima_canonical_fmt).
    #[arg(long)]
    big_endian: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutFormat {
    Ascii,
    Binary,
}

impl Input {
    /// An empty file is not an IMA log (a real one starts with its boot_aggregate): bad
    /// input (exit 2) for every command, rather than 0 for some and 1 for others.
    fn empty(&self) -> anyhow::Error {
        let name = if self.file == Path::new("-") { "stdin".into() } else { self.file.display().to_string() };
        anyhow::anyhow!("{name}: empty log: no records (an IMA log starts with its boot_aggregate)")
    }

    fn bank(&self) -> Result<HashAlgo> {
        match self.input_bank {
            Some(b) => Ok(b),
            None => BinaryFormat::bank_from_file_name(&self.file.to_string_lossy()).map_err(anyhow::Error::msg),
        }
    }

    fn binary_format(&self) -> Result<BinaryFormat> {
        let mut f = BinaryFormat::new(self.bank()?);
        f.endian = if self.big_endian { Endian::Big } else { Endian::Little };
        Ok(f)
    }

    /// Opens the input with a byte progress bar.
    fn open(&self, quiet: bool) -> Result<(reader::LogReader<impl Read + Send>, indicatif::ProgressBar)> {
        let fmt = self.binary_format()?;
        let (src, len): (Box<dyn Read + Send>, u64) = if self.file == Path::new("-") {
            (Box::new(std::io::stdin()), 0)
        } else {
            let f = ui::open_regular(&self.file)?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            (Box::new(f), len)
        };
        let pb = ui::bytes_bar(len, quiet);
        let r = reader::open(pb.wrap_read(src), self.format, fmt)?;
        Ok((r, pb))
    }
}

pub fn run(cmd: LogCmd) -> Result<ExitCode> {
    match cmd {
        LogCmd::Show { input } => convert(&input, OutFormat::Ascii, None, None),
        LogCmd::Convert { input, to, bank, out } => convert(&input, to, bank, out.as_deref()),
        LogCmd::Replay { input, banks, padded_sha1, json } => replay(&input, &banks, padded_sha1, json),
        LogCmd::Verify { input, pcrs, ignore_violations, json } => verify(&input, &pcrs, ignore_violations, json),
        LogCmd::Synth { records, seed, ima_ng_only, dir } => synth(records, seed, ima_ng_only, &dir),
    }
}

fn convert(input: &Input, to: OutFormat, bank: Option<HashAlgo>, output: Option<&Path>) -> Result<ExitCode> {
    let in_bank = input.bank()?;
    let endian = input.binary_format()?.endian;
    let (mut r, pb) = input.open(output.is_none())?;
    let sink: Box<dyn Write> = match output {
        Some(p) => Box::new(File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(256 << 10, sink);
    let mut slot: Option<Record> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    while let Some(rec) = r.read_into(&mut slot)? {
        n += 1;
        if let Some(b) = bank.filter(|b| *b != in_bank) {
            if !rec.is_violation() {
                rec.digest = imasnap_log::digest::template_hash(b, rec, endian)?.as_bytes().to_vec();
            } else {
                rec.digest = vec![0; b.size()];
            }
        }
        buf.clear();
        match to {
            OutFormat::Ascii => ascii::write_line(rec, endian, &mut buf).map_err(anyhow::Error::msg)?,
            OutFormat::Binary => rec.encode(endian, &mut buf),
        }
        if let Err(e) = out.write_all(&buf) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    pb.finish_and_clear();
    if n == 0 {
        return Err(input.empty());
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn replayer(input: &Input, banks: &[HashAlgo], modes: Vec<ExtendMode>) -> Result<Replayer> {
    if banks.is_empty() {
        bail!("no banks to replay");
    }
    let mut opts = ReplayOptions::new(banks);
    opts.log_bank = input.bank()?;
    opts.endian = input.binary_format()?.endian;
    opts.modes = modes;
    Ok(Replayer::new(opts))
}

fn replay(input: &Input, banks: &[HashAlgo], padded: bool, json: bool) -> Result<ExitCode> {
    let mode = if padded { ExtendMode::PaddedSha1 } else { ExtendMode::Native };
    let mut rp = replayer(input, banks, vec![mode])?;
    let (mut r, pb) = input.open(json)?;
    replay_stream(&mut r, &mut rp, BATCH, |_| {})?;
    pb.finish_and_clear();
    let rep = rp.finish();
    if rep.records == 0 {
        return Err(input.empty());
    }
    if json {
        ui::print_json_doc(
            "imasnap-log-replay/1",
            json!({
                "records": rep.records,
                "violations": rep.violations,
                "template_digest_mismatches": rep.template_digest_mismatches,
                "pcrs": rep.state().to_map(),
            }),
        );
    } else {
        println!(
            "records: {}  violations: {}  template digest mismatches: {}",
            rep.records, rep.violations, rep.mismatch_count
        );
        for (pcr, banks) in rep.state().to_map() {
            for (alg, v) in banks {
                println!("PCR-{pcr:0>2} {alg:<7} {v}");
            }
        }
        for i in rep.template_digest_mismatches.iter().take(20) {
            println!("mismatch: record {i}: template digest does not match its data");
        }
    }
    Ok(ExitCode::from(if rep.mismatch_count > 0 { ui::EXIT_FAIL } else { ui::EXIT_OK }))
}

fn verify(input: &Input, pcr_args: &[String], ignore_violations: bool, json: bool) -> Result<ExitCode> {
    let mut target = PcrTarget::default();
    for a in pcr_args {
        let (alg, path) = match a.split_once(',') {
            Some((alg, p)) => (alg.parse::<HashAlgo>().map_err(anyhow::Error::msg)?, p),
            None => (HashAlgo::Sha1, a.as_str()),
        };
        let text = ui::read_small_text(Path::new(path), ui::MAX_PCR_FILE_BYTES)
            .with_context(|| format!("PCR file of --pcrs {a}"))?;
        let vals = pcrfile::parse(alg, &text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        target.values.entry(alg).or_default().extend(vals);
    }
    let banks: Vec<HashAlgo> = target.values.keys().copied().collect();
    let mut rp = replayer(input, &banks, vec![ExtendMode::Native, ExtendMode::PaddedSha1])?;
    rp.set_target(&target);
    let endian = input.binary_format()?.endian;
    let (mut r, pb) = input.open(json)?;
    // Keep the first record for the boot_aggregate check; stream the rest.
    let mut first = None;
    let Some(rec0) = r.read_into(&mut first)? else {
        return Err(input.empty());
    };
    rp.push(rec0)?;
    replay_stream(&mut r, &mut rp, BATCH, |_| {})?;
    pb.finish_and_clear();
    let rep = rp.finish();
    let verdict = check::judge(&rep, &target, check::Policy { ignore_violations }, first.as_ref(), endian);
    let modes: serde_json::Map<String, serde_json::Value> =
        rep.matched_modes.iter().map(|(a, m)| (a.name().to_owned(), json!(m))).collect();
    let state_for = |m: ExtendMode| rep.states.iter().find(|(x, _)| *x == m).map(|(_, s)| s.to_map());
    if json {
        let (verdict_s, reason, record) = match &verdict {
            Ok(()) => ("pass", None, None),
            Err(f) => ("fail", Some(f.reason.clone()), f.record),
        };
        ui::print_json_doc(
            "imasnap-log-verify/1",
            json!({
                "verdict": verdict_s,
                "reason": reason,
                "record": record,
                "records": rep.records,
                "matched_after": rep.matched_after,
                "unverified_tail": rep.matched_after.map(|k| rep.next_index - k),
                "extend_modes": modes,
                "violations": rep.violations,
                "template_digest_mismatches": rep.template_digest_mismatches,
                "pcrs": state_for(ExtendMode::Native),
            }),
        );
    } else {
        match &verdict {
            Ok(()) => {
                let k = rep.matched_after.unwrap_or(0);
                println!(
                    "PASS: first {k} of {} records match the PCR values ({})",
                    rep.records,
                    rep.matched_modes
                        .iter()
                        .map(|(a, m)| format!(
                            "{a}: {}",
                            if *m == ExtendMode::Native { "native" } else { "padded-sha1" }
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if rep.next_index > k {
                    println!("note: {} trailing records are newer than the PCR values", rep.next_index - k);
                }
            }
            Err(f) => match f.record {
                Some(i) => println!("FAIL: record {i}: {}", f.reason),
                None => println!("FAIL: {}", f.reason),
            },
        }
    }
    Ok(ExitCode::from(if verdict.is_ok() { ui::EXIT_OK } else { ui::EXIT_FAIL }))
}

fn synth(records: u64, seed: u64, ima_ng_only: bool, dir: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("binary_runtime_measurements");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut gen = imasnap_log::synth::Synth::new(seed, HashAlgo::Sha1);
    if ima_ng_only {
        gen = gen.ima_ng_only();
    }
    let banks = [HashAlgo::Sha1, HashAlgo::Sha256];
    let mut start = imasnap_log::PcrState::new(&banks);
    for a in banks {
        for (i, v) in gen.platform_pcrs(a).into_iter().enumerate() {
            start.set(i, v);
        }
    }
    let mut rp = Replayer::resume(ReplayOptions::new(&banks), start, 0);
    let pb = ui::count_bar(records, "records", false);
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = Vec::with_capacity(1 << 16);
    let mut left = records;
    while left > 0 {
        batch.clear();
        batch.extend(gen.by_ref().take(left.min(BATCH as u64) as usize));
        left -= batch.len() as u64;
        buf.clear();
        for r in &batch {
            r.encode(Endian::Little, &mut buf);
        }
        out.write_all(&buf).with_context(|| format!("writing {}", path.display()))?;
        rp.push_batch(&batch)?;
        pb.set_position(records - left);
    }
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    pb.finish_and_clear();
    let rep = rp.finish();
    let mut pcr_args = String::new();
    for a in [HashAlgo::Sha1, HashAlgo::Sha256] {
        let Some(bank) = rep.state().bank(a) else { bail!("{a} bank missing from the replay") };
        let p = dir.join(format!("pcrs-{a}.txt"));
        std::fs::write(&p, pcrfile::format(bank)).with_context(|| format!("writing {}", p.display()))?;
        pcr_args.push_str(&format!(" --pcrs {a},{}", p.display()));
    }
    eprintln!("wrote {records} records ({} violations) to {}", rep.violations, path.display());
    if rep.violations > 0 {
        // The log holds violations like a real one: say how to verify it.
        eprintln!("verify with: imasnap log verify {}{pcr_args} --ignore-violations", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
