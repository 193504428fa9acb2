//! `imasnap policy create`: a Keylime runtime policy from measurement logs and directory
//! trees. The policy logic is `imasnap_policy::create`; this file reads logs, walks trees
//! and hashes files (in parallel, with rayon).

use super::policy_source::{for_each_record, LogOpts};
use crate::ui;
use anyhow::{bail, Context, Result};
use clap::Args;
use imasnap_log::HashAlgo;
use imasnap_policy::create::{CreateOptions, Creator, Stats};
use imasnap_policy::{model, KeyRing, Policy};
use rayon::prelude::*;
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Build a Keylime runtime policy (JSON, version 1) from logs and directory trees
///
/// The equivalent of Keylime's `keylime_create_policy` / `keylime-policy create runtime`.
/// Sources, any number of each, merged:
///
/// - `--log`: a measurement log in any format imasnap reads (binary or ASCII, any
///   template, `-` for stdin), or a snapshot bundle, boot or state directory, read as the
///   whole boot's log (stored segments, then the live list). File records go to
///   `digests`; keys measured into keyrings go to `keyrings` with --keyrings; other
///   ima-buf records go to `ima-buf` with --ima-buf. Violations and imasnap's
///   snapshot_aggregate markers are left out.
///
/// - `--rootfs DIR`: the digest of every regular file under DIR, computed in parallel, named
///   as on the host (`DIR/usr/bin/x` is `/usr/bin/x`). Symlinks, devices, FIFOs and sockets
///   are skipped; directories on other file systems too, unless --cross-filesystems.
///
/// - `--base FILE`: an existing policy (runtime policy, JSON or flat allowlist) to add to.
///
/// Names matching an exclude are left out (they are allowed anyway). The policy goes to
/// stdout, or to -o FILE. Exit 0 on success, 2 when an input cannot be used (the error
/// names the file, or the record index).
///
/// Examples:
///
///   imasnap policy create --log binary_runtime_measurements --keyrings -o p.json
///   imasnap policy create --log /var/lib/imasnap --rootfs /mnt/image -o p.json
///   imasnap policy create --rootfs / --skip-path /home --base old.json -e excl.txt
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct CreateArgs {
    /// Measurement log file or snapshot store directory. Repeatable.
    #[arg(long = "log", visible_alias = "ima-measurement-list", short = 'm', value_name = "LOG|DIR")]
    logs: Vec<PathBuf>,
    #[command(flatten)]
    log_opts: LogOpts,
    /// Directory tree to hash, as the root file system of the host. Repeatable.
    #[arg(long, value_name = "DIR")]
    rootfs: Vec<PathBuf>,
    /// Digest algorithm for --rootfs [default: the algorithm of the first file record of
    /// the logs (the boot_aggregate's), else sha256].
    #[arg(long)]
    algo: Option<HashAlgo>,
    /// A directory not to hash, as a host path (`/home`) or under a --rootfs. Repeatable.
    #[arg(long = "skip-path", short = 's', value_name = "DIR", value_delimiter = ',')]
    skip_path: Vec<PathBuf>,
    /// Descend into directories on other file systems (by default a tree stays on the file
    /// system of its root, so `--rootfs /` skips /proc, /sys, /dev and /run).
    #[arg(long)]
    cross_filesystems: bool,
    /// Hash only files owned by root (what keylime-policy does with --rootfs).
    #[arg(long)]
    root_owned_only: bool,
    /// List keys measured into keyrings (ima-buf records whose buffer is a key) in `keyrings`.
    #[arg(long, short = 'k')]
    keyrings: bool,
    /// List other ima-buf records in `ima-buf`.
    #[arg(long, short = 'b')]
    ima_buf: bool,
    /// Keyring whose measured keys are not checked (`ima.ignored_keyrings`; `*` for all). Repeatable.
    #[arg(long = "ignored-keyrings", value_name = "NAME")]
    ignored_keyrings: Vec<String>,
    /// Exclude regex (Keylime syntax: matched at the start of the name). Repeatable.
    #[arg(long, value_name = "REGEX")]
    exclude: Vec<String>,
    /// Exclude list: one regex per line, `#` comments (Keylime's exclude list file).
    #[arg(long, short = 'e', value_name = "FILE")]
    exclude_list: Option<PathBuf>,
    /// Existing policy to merge into (runtime policy, legacy JSON or flat allowlist).
    #[arg(long, short = 'p', visible_alias = "base-policy", value_name = "FILE")]
    base: Option<PathBuf>,
    /// Signature verification keys for `verification-keys` (certificates or public keys). Repeatable.
    #[arg(long = "keys", value_name = "CERT")]
    keys: Vec<PathBuf>,
    /// Output file [default: stdout].
    #[arg(short = 'o', long = "out", alias = "output", value_name = "FILE")]
    out: Option<PathBuf>,
    /// With -o: print a JSON report (format "imasnap-policy-create/1") of what went in.
    #[arg(long, requires = "out")]
    json: bool,
    /// Threads hashing files [default: one per CPU].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

pub fn run(a: &CreateArgs) -> Result<ExitCode> {
    if a.logs.is_empty() && a.rootfs.is_empty() && a.base.is_none() {
        bail!("nothing to build a policy from: give --log, --rootfs or --base");
    }
    let opts = CreateOptions { keyrings: a.keyrings, ima_buf: a.ima_buf, ignored_keyrings: a.ignored_keyrings.clone() };
    let mut c = match &a.base {
        Some(p) => {
            let bytes = ui::read_small_file(p, model::MAX_POLICY_BYTES as u64)?;
            let base = Policy::parse(&bytes).with_context(|| format!("base policy {}", p.display()))?;
            Creator::with_base(base, opts)
        }
        None => Creator::new(opts),
    };
    c.add_excludes(&a.exclude).context("--exclude")?;
    if let Some(x) = &a.exclude_list {
        let text = ui::read_small_text(x, model::MAX_POLICY_BYTES as u64)?;
        c.add_excludes(&model::parse_exclude_list(&text)).with_context(|| format!("exclude list {}", x.display()))?;
    }
    let mut ring = KeyRing::new();
    for k in &a.keys {
        let data = ui::read_small_file(k, imasnap_policy::keys::MAX_KEY_INPUT as u64)?;
        ring.add_bytes(&data, &k.display().to_string())?;
    }
    c.add_keys(&ring);

    // Logs first: their file digest algorithm is the default for the trees.
    let mut log_algo: Option<HashAlgo> = None;
    let mut log_bank: Option<HashAlgo> = None;
    for log in &a.logs {
        let bank = a.log_opts.bank(log)?;
        if log_bank.is_some_and(|b| b != bank) {
            bail!(
                "{}: template digests in {bank}, an earlier log's are in {}",
                log.display(),
                log_bank.unwrap_or(bank)
            );
        }
        log_bank = Some(bank);
        let n = for_each_record(log, &a.log_opts, &mut |i, rec, endian| {
            let added = c.add_record(i, rec, endian).with_context(|| log.display().to_string())?;
            if log_algo.is_none() && added == imasnap_policy::create::Contribution::Digest {
                log_algo = first_digest_algo(rec, endian);
            }
            Ok(())
        })?;
        if n == 0 {
            bail!("{}: empty log: no records (an IMA log starts with its boot_aggregate)", log.display());
        }
    }
    // Keylime's `log_hash_alg` is the template-digest bank of the list it will read.
    c.set_log_hash_alg(log_bank.unwrap_or(HashAlgo::Sha1));

    let algo = a.algo.or(log_algo).unwrap_or(HashAlgo::Sha256);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.jobs.unwrap_or(0)).build()?;
    for root in &a.rootfs {
        let files = walk(root, &a.skip_path, !a.cross_filesystems, a.root_owned_only)?;
        let digests: Vec<Result<Option<Vec<u8>>>> = pool.install(|| {
            files.par_iter().map_init(|| vec![0u8; 256 << 10], |buf, f| hash_file(&f.path, algo, buf)).collect()
        });
        for (f, d) in files.iter().zip(digests) {
            match d? {
                Some(d) => {
                    c.add_file(&f.name, &d)?;
                }
                None => eprintln!("imasnap: {}: vanished while the tree was read; left out", f.path.display()),
            }
        }
    }

    let (policy, stats) = c.finish(Some(timestamp()))?;
    let text = serde_json::to_string_pretty(&policy.to_keylime_json())? + "\n";
    match &a.out {
        Some(p) => {
            let mut f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            f.write_all(text.as_bytes()).with_context(|| format!("writing {}", p.display()))?;
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    report(&policy, &stats, algo, a.json);
    Ok(ExitCode::SUCCESS)
}

fn report(policy: &Policy, s: &Stats, algo: HashAlgo, json_out: bool) {
    let d = policy.data();
    let entries = |m: &model::DigestMap| m.values().map(Vec::len).sum::<usize>();
    if json_out {
        ui::print_json_doc(
            "imasnap-policy-create/1",
            json!({
                "stats": s,
                "rootfs_algo": algo.name(),
                "paths": d.digests.len(),
                "digests": entries(&d.digests),
                "keyrings": entries(&d.keyrings),
                "ima_buf": entries(&d.ima_buf),
                "excludes": d.excludes.len(),
            }),
        );
        return;
    }
    for n in &s.notes {
        eprintln!("imasnap: {n}");
    }
    eprintln!(
        "policy: {} paths ({} digests), {} keyring and {} ima-buf digests, {} excludes; from {} records \
         ({} violations, {} markers, {} buffers not listed, {} excluded) and {} files ({algo})",
        d.digests.len(),
        entries(&d.digests),
        entries(&d.keyrings),
        entries(&d.ima_buf),
        d.excludes.len(),
        s.records,
        s.violations,
        s.markers,
        s.buffers_not_listed,
        s.excluded,
        s.files,
    );
}

/// The algorithm of a record's file digest (`sha256:` prefix; a bare 20 bytes is sha1).
fn first_digest_algo(rec: &imasnap_log::Record, endian: imasnap_log::Endian) -> Option<HashAlgo> {
    let fields = rec.fields(endian).ok()?;
    let f0 = fields.first()?;
    match f0.iter().position(|&b| b == 0) {
        Some(nul) if f0[..nul].ends_with(b":") => HashAlgo::from_name(std::str::from_utf8(&f0[..nul - 1]).ok()?),
        _ if f0.len() == 20 => Some(HashAlgo::Sha1),
        _ => None,
    }
}

/// One file to hash: where it is, and its name on the host.
struct FileRef {
    path: PathBuf,
    name: Vec<u8>,
}

/// Every regular file under `root`, sorted by name. Symlinks are not followed (their
/// target, if inside the tree, is listed under its own name, as IMA measures it).
fn walk(root: &Path, skip: &[PathBuf], one_fs: bool, root_owned_only: bool) -> Result<Vec<FileRef>> {
    let meta = std::fs::metadata(root).with_context(|| format!("--rootfs {}", root.display()))?;
    if !meta.is_dir() {
        bail!("--rootfs {}: not a directory", root.display());
    }
    let dev = meta.dev();
    // A skip path is a host path (`/home`) or a path under this root (`ROOT/home`).
    let skip: Vec<Vec<u8>> = skip
        .iter()
        .map(|p| match p.strip_prefix(root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => p.clone(),
        })
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    let mut out = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, name)) = dirs.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", dir.display())),
        };
        for e in rd {
            let e = e.with_context(|| dir.display().to_string())?;
            let t = e.file_type().with_context(|| e.path().display().to_string())?;
            let mut child = name.clone();
            child.push(b'/');
            child.extend_from_slice(e.file_name().as_bytes());
            if t.is_dir() {
                if skip.iter().any(|s| s == &child) {
                    continue;
                }
                if one_fs {
                    let m = e.metadata().with_context(|| e.path().display().to_string())?;
                    if m.dev() != dev {
                        continue;
                    }
                }
                dirs.push((e.path(), child));
            } else if t.is_file() {
                if root_owned_only && e.metadata().with_context(|| e.path().display().to_string())?.uid() != 0 {
                    continue;
                }
                out.push(FileRef { path: e.path(), name: child });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The digest of one regular file; `None` when it vanished after the walk. Opened without
/// following a symlink and without blocking, and checked on the handle, so a file swapped
/// for a FIFO or a link meanwhile is refused instead of hanging or leaving the tree.
fn hash_file(path: &Path, algo: HashAlgo, buf: &mut [u8]) -> Result<Option<Vec<u8>>> {
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    if !f.metadata().with_context(|| path.display().to_string())?.is_file() {
        bail!("{}: no longer a regular file", path.display());
    }
    let mut h = algo.hasher();
    loop {
        let n = f.read(buf).with_context(|| path.display().to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Some(h.finish().as_bytes().to_vec()))
}

/// `meta.timestamp`: UTC, `YYYY-MM-DD HH:MM:SS` (Keylime writes its local `datetime.now()`).
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d, h, mi, sec) = ui::utc_civil(secs as i64);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{sec:02}")
}
