//! What must be the same on the kernel model and the real kernel: where the markers and
//! boot_aggregates sit, their attempt numbers, what the snapshots hold, what is left in
//! memory, and the verifier's verdict. Read from an evidence bundle.

use anyhow::{anyhow, Context, Result};
use imasnap_log::marker::{Marker, EVENT_NAME};
use imasnap_log::{BinaryReader, Endian};
use imasnap_store::Manifest;
use serde::Serialize;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Structure {
    /// Records since boot (snapshots + live list).
    pub records: u64,
    /// Global indices of boot_aggregate records (one per kernel: boot, then each kexec).
    pub boot_aggregates: Vec<u64>,
    /// (global index, attempt) of every snapshot_aggregate.
    pub markers: Vec<(u64, u64)>,
    /// (first index, count) of each committed snapshot.
    pub snapshots: Vec<(u64, u64)>,
    /// How each was cut: `marker`, `trim` or `stage`.
    pub cuts: Vec<String>,
    /// Global index of the live list's head, and how many records it holds.
    pub live_first: u64,
    pub live_records: u64,
    /// `imasnap verify` verdict, filled in by the caller.
    pub verdict: String,
}

/// Walks the bundle's snapshots (manifest order) and live list.
pub fn of_bundle(dir: &Path) -> Result<Structure> {
    let mtext = std::fs::read_to_string(dir.join("manifest.json")).context("bundle manifest.json")?;
    let m: Manifest = serde_json::from_str(&mtext).context("parsing manifest.json")?;
    let mut s = Structure::default();
    let mut index;
    for e in &m.snapshots {
        s.snapshots.push((e.first_index, e.count));
        s.cuts.push(e.cut.as_str().into());
        index = e.first_index;
        scan(&dir.join("snapshots").join(&e.file), &mut index, &mut s)?;
    }
    s.live_first = m.next_index;
    index = m.next_index;
    let before = index;
    scan(&dir.join("live.bin"), &mut index, &mut s)?;
    s.live_records = index - before;
    s.records = index;
    Ok(s)
}

fn scan(path: &Path, index: &mut u64, s: &mut Structure) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for rec in BinaryReader::new(BufReader::new(f), imasnap_store::snapshot_format()) {
        let rec = rec.map_err(|e| anyhow!("{}: {e}", path.display()))?;
        match rec.name(Endian::Little).as_deref() {
            Some("boot_aggregate") => s.boot_aggregates.push(*index),
            Some(EVENT_NAME) => {
                let m = Marker::from_record(&rec, Endian::Little)
                    .map_err(|e| anyhow!("{}: record {index}: {e}", path.display()))?
                    .ok_or_else(|| anyhow!("{}: record {index}: not a marker", path.display()))?;
                s.markers.push((*index, m.attempt));
            }
            _ => {}
        }
        *index += 1;
    }
    Ok(())
}
