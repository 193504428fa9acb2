//! The evidence bundle of docs/SNAPSHOTS.md: what a verifier consumes.

use crate::agent::{Agent, AgentError};
use crate::kernel::SnapshotKernel;
use imasnap_log::BinaryReader;
use imasnap_store::fsio::HashingReader;
use imasnap_store::StoreError;
pub use imasnap_wire::{BundleIndex, QuoteFile, BUNDLE_FORMAT};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// The attestation key's public part, as the bundle carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AkKey {
    /// A marshalled TPM2B_PUBLIC: written hex-encoded to `ak.pub`.
    Tpm2bPublic(Vec<u8>),
    /// PEM text: written to `ak.pem`.
    Pem(String),
}

/// What the caller brings: the quote (taken before the bundle is written, so the log can
/// only run ahead of it), its nonce and the AK.
#[derive(Clone, Debug)]
pub struct Evidence<'a> {
    /// `quote.json` content: `{ "attest", "nonce", "pcr_values", "signature" }`.
    pub quote: &'a QuoteFile,
    pub nonce: &'a [u8],
    pub ak: &'a AkKey,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleInfo {
    pub dir: PathBuf,
    pub index: BundleIndex,
    pub snapshots: usize,
    pub live_bytes: u64,
}

fn io<T>(op: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T, AgentError> {
    r.map_err(|source| AgentError::Store(StoreError::Io { op, path: path.to_path_buf(), source }))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    io("write", path, std::fs::write(path, bytes))
}

/// `quote.json` from a TPM quote and its nonce.
pub fn quote_json(q: &imasnap_tpm::Quote, nonce: &[u8]) -> QuoteFile {
    QuoteFile::new(q.clone(), nonce)
}

/// A fresh quote for a bundle: PCR 0-9 (boot_aggregate) and the measurement PCR in every
/// bank, signed over `nonce`, as `quote.json` content plus the AK the bundle carries.
/// Take it before [`Agent::write_bundle`] copies the live list, so the log can only run
/// ahead of the quote (the verifier carries that tail over).
pub fn attest(
    tpm: &mut (impl imasnap_tpm::Tpm + ?Sized),
    pcr: u32,
    nonce: &[u8],
) -> Result<(QuoteFile, AkKey), imasnap_tpm::TpmError> {
    let banks = tpm.banks();
    let mut pcrs: Vec<u32> = (0..10).collect();
    if pcr >= 10 {
        pcrs.push(pcr);
    }
    let sel = imasnap_tpm::PcrSelection::uniform(&banks, &pcrs)?;
    let q = tpm.quote(nonce, &sel)?;
    let ak = tpm.ak_public();
    let ak = match ak.public_area() {
        Some(p) => AkKey::Tpm2bPublic(p.to_tpm2b()),
        None => AkKey::Pem(ak.to_pem()),
    };
    Ok((quote_json(&q, nonce), ak))
}

/// Opens the bytes of one segment of a manifest.
pub type SegmentOpener<'a> =
    dyn FnMut(&imasnap_store::SnapshotEntry) -> Result<Box<dyn std::io::Read>, AgentError> + 'a;

/// Writes a bundle into `out` (created; must not exist or be empty) from a manifest, a
/// reader for each of its segments and the live list that follows them. Segments are
/// re-hashed while copied and must match the manifest's sha256, and the live list must
/// continue the manifest, so the bundle is consistent when this returns. The snapshot
/// agent and the legacy back end (whose segments are ranges of its copy) both use it.
pub fn write_bundle_from(
    out: &Path,
    manifest: &imasnap_store::Manifest,
    segment: &mut SegmentOpener<'_>,
    live: &mut dyn std::io::Read,
    ev: &Evidence<'_>,
) -> Result<BundleInfo, AgentError> {
    let mut m = manifest.clone();
    if out.exists() && io("list", out, std::fs::read_dir(out))?.next().is_some() {
        return Err(AgentError::Store(StoreError::Exists(out.to_path_buf())));
    }
    let snaps = out.join("snapshots");
    io("create directory", &snaps, std::fs::create_dir_all(&snaps))?;
    for s in &mut m.snapshots {
        // One file per segment, named by the store's rule, whatever holds it here.
        let name = imasnap_store::manifest::snap_file_name(s.seq);
        let dst = snaps.join(&name);
        let mut r = HashingReader::new(BufReader::new(segment(s)?));
        let mut w = io("create", &dst, File::create(&dst))?;
        io("copy", &dst, std::io::copy(&mut r, &mut w))?;
        let got = r.finish_hex();
        if got != s.sha256 {
            return Err(AgentError::Inconsistent(format!(
                "segment {} ({}): sha256 {got} does not match the manifest's {}",
                s.seq, s.file, s.sha256
            )));
        }
        s.file = name;
    }
    write_file(&out.join("manifest.json"), &m.to_json_pretty())?;

    let live_path = out.join("live.bin");
    let mut w = io("create", &live_path, File::create(&live_path))?;
    let live_bytes = io("copy", &live_path, std::io::copy(live, &mut w))?;
    io("write", &live_path, w.flush())?;
    drop(w);
    let f = io("open", &live_path, File::open(&live_path))?;
    match BinaryReader::new(BufReader::new(f), imasnap_store::snapshot_format()).next() {
        Some(Ok(head)) => m
            .check_boundary(m.next_index, &head)
            .map_err(|why| AgentError::Inconsistent(format!("live list: {why}")))?,
        Some(Err(e)) => return Err(AgentError::Inconsistent(format!("live list: {e}"))),
        // After a staging A/D cut (or a legacy checkpoint) the list may hold nothing yet.
        None if m.snapshots.last().is_some_and(|s| s.cut == imasnap_store::manifest::Cut::Stage) => {}
        None => return Err(AgentError::Inconsistent("live list is empty".into())),
    }

    write_file(&out.join("quote.json"), &ev.quote.to_json_pretty())?;
    match ev.ak {
        AkKey::Tpm2bPublic(b) => write_file(&out.join("ak.pub"), format!("{}\n", hex::encode(b)).as_bytes())?,
        AkKey::Pem(p) => write_file(&out.join("ak.pem"), p.as_bytes())?,
    }
    let index = BundleIndex::new(m.banks.clone(), m.pcr, m.next_index, ev.nonce);
    write_file(&out.join("bundle.json"), &index.to_json_pretty())?;
    Ok(BundleInfo { dir: out.to_path_buf(), index, snapshots: m.snapshots.len(), live_bytes })
}

impl<K: SnapshotKernel> Agent<K> {
    /// Writes the evidence bundle into `out` ([`write_bundle_from`] over the store's
    /// snapshot files and the kernel's live list).
    pub fn write_bundle(&mut self, out: &Path, ev: &Evidence<'_>) -> Result<BundleInfo, AgentError> {
        let (dir, m) = match (self.boot_dir(), self.manifest()) {
            (Some(d), Some(m)) => (d.clone(), m.clone()),
            _ => return Err(AgentError::NotRecovered),
        };
        let mut open = |s: &imasnap_store::SnapshotEntry| -> Result<Box<dyn std::io::Read>, AgentError> {
            let src = dir.path().join(&s.file);
            Ok(Box::new(io("open", &src, File::open(&src))?))
        };
        let mut live = self.live_tail()?;
        write_bundle_from(out, &m, &mut open, &mut live, ev)
    }
}
