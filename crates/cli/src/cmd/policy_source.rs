//! Where `imasnap policy check|create` read records from: one log file (binary or ASCII,
//! any template), or the whole boot's log of a snapshot store, stitched by
//! `imasnap_store::StitchedReader` (the same reader the agent serves evidence from).

use crate::ui;
use anyhow::{bail, Context, Result};
use clap::Args;
use imasnap_log::{reader, BinaryFormat, Endian, Format, HashAlgo, Record};
use imasnap_store::{BootDir, BootId, Manifest};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The kernel's live list, the default tail of a state directory's stored segments.
pub const KERNEL_LIST: &str = "/sys/kernel/security/ima/binary_runtime_measurements";

/// How a log file is read (a store directory is always binary SHA1, little-endian).
#[derive(Args, Clone)]
pub struct LogOpts {
    /// Input format.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// Bank of the template digests in the file (default: from the file name, else sha1).
    #[arg(long = "input-bank")]
    pub input_bank: Option<HashAlgo>,
    /// Integers are big-endian (a big-endian host without ima_canonical_fmt).
    #[arg(long)]
    pub big_endian: bool,
    /// The live list after a state directory's stored segments [default: the kernel's
    /// binary_runtime_measurements]. A bundle directory has its own `live.bin`.
    #[arg(long, value_name = "FILE")]
    pub live: Option<PathBuf>,
}

impl LogOpts {
    pub fn endian(&self) -> Endian {
        if self.big_endian {
            Endian::Big
        } else {
            Endian::Little
        }
    }

    /// The bank of the template digests `path` carries.
    pub fn bank(&self, path: &Path) -> Result<HashAlgo> {
        if path.is_dir() {
            return Ok(HashAlgo::Sha1);
        }
        match self.input_bank {
            Some(b) => Ok(b),
            None => BinaryFormat::bank_from_file_name(&path.to_string_lossy()).map_err(anyhow::Error::msg),
        }
    }
}

/// Calls `f(global index, record, endian)` for every record of `path`, in order; returns
/// the number of records. A directory is a bundle (`bundle.json`), a boot directory
/// (`manifest.json`) or a state directory holding one boot under `boots/`.
pub fn for_each_record(
    path: &Path,
    opts: &LogOpts,
    f: &mut dyn FnMut(u64, &mut Record, Endian) -> Result<()>,
) -> Result<u64> {
    if path != Path::new("-") && path.is_dir() {
        return for_each_stitched(path, opts, f);
    }
    let mut fmt = BinaryFormat::new(opts.bank(path)?);
    fmt.endian = opts.endian();
    let src: Box<dyn Read> =
        if path == Path::new("-") { Box::new(std::io::stdin()) } else { Box::new(ui::open_regular(path)?) };
    let mut r = reader::open(src, opts.format, fmt)?;
    let mut slot: Option<Record> = None;
    let mut n = 0u64;
    while let Some(rec) = r.read_into(&mut slot).with_context(|| format!("reading {}", path.display()))? {
        f(n, rec, fmt.endian)?;
        n += 1;
    }
    Ok(n)
}

fn for_each_stitched(
    dir: &Path,
    opts: &LogOpts,
    f: &mut dyn FnMut(u64, &mut Record, Endian) -> Result<()>,
) -> Result<u64> {
    let (boot, manifest, live_path) = open_store(dir, opts.live.as_deref())?;
    let live = ui::open_regular(&live_path)
        .with_context(|| format!("the live list after the stored segments of {} (pass --live FILE)", dir.display()))?;
    let mut r = boot.stitched(&manifest, BufReader::with_capacity(128 << 10, live), 0);
    let mut slot: Option<Record> = None;
    let mut n = 0u64;
    while let Some((i, rec)) = r.read_into(&mut slot).with_context(|| format!("reading {}", dir.display()))? {
        f(i, rec, Endian::Little)?;
        n += 1;
    }
    Ok(n)
}

/// The boot directory (where the snapshot files are), its manifest and the live list.
fn open_store(dir: &Path, live: Option<&Path>) -> Result<(BootDir, Manifest, PathBuf)> {
    let load = |p: &Path| -> Result<Manifest> {
        let m = Manifest::from_json(&ui::read_small_file(p, imasnap_verifier::dir::MAX_MANIFEST_JSON_BYTES)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        m.validate().map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        Ok(m)
    };
    if dir.join("bundle.json").is_file() {
        // An evidence bundle: snapshots/ + live.bin (docs/SNAPSHOTS.md).
        let m = load(&dir.join("manifest.json"))?;
        let boot = BootDir::at(BootId::of(&m.boot), dir.join("snapshots"));
        return Ok((boot, m, live.map_or_else(|| dir.join("live.bin"), Path::to_path_buf)));
    }
    let boot_dir = if dir.join(imasnap_store::MANIFEST).is_file() {
        dir.to_path_buf()
    } else if dir.join("boots").is_dir() {
        let boots: Vec<PathBuf> = std::fs::read_dir(dir.join("boots"))
            .with_context(|| format!("{}/boots", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(imasnap_store::MANIFEST).is_file())
            .collect();
        match boots.as_slice() {
            [one] => one.clone(),
            [] => bail!("{}: no boot directory with a manifest.json under boots/", dir.display()),
            many => bail!(
                "{}: {} boots under boots/; name one: {}",
                dir.display(),
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    } else {
        bail!("{}: a directory that is not a bundle (bundle.json), a boot directory (manifest.json) or a state directory (boots/)", dir.display());
    };
    let m = load(&boot_dir.join(imasnap_store::MANIFEST))?;
    let boot = BootDir::at(BootId::of(&m.boot), boot_dir);
    Ok((boot, m, live.map_or_else(|| PathBuf::from(KERNEL_LIST), Path::to_path_buf)))
}

/// imasnap's `snapshot_aggregate` marker: proven by `imasnap verify` against the replay and
/// the quote, not by a policy (the verifier service skips it the same way).
pub fn is_marker(rec: &Record, endian: Endian) -> bool {
    rec.template.name() == "ima-buf" && rec.name(endian).as_deref() == Some(imasnap_log::marker::EVENT_NAME)
}
