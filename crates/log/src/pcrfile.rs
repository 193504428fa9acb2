//! PCR value files: evmctl's `PCR-NN: hex` lines (also `tpm2_pcrread`-style `NN : 0xHEX`).

use crate::algo::{HashAlgo, PcrValue};
use std::collections::BTreeMap;

/// Parses PCR lines for one bank. Unknown lines are errors, so a wrong file is not silently empty.
pub fn parse(algo: HashAlgo, text: &str) -> Result<BTreeMap<usize, PcrValue>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.ends_with(':') && !l.contains(' ') {
            continue; // blank, comment, or a `sha256:` bank header
        }
        let (k, v) = l.split_once(':').ok_or_else(|| format!("line {}: want `PCR-NN: hex`", n + 1))?;
        let k = k.trim();
        let k = k.strip_prefix("PCR-").or_else(|| k.strip_prefix("PCR")).unwrap_or(k).trim();
        let idx: usize = k.parse().map_err(|_| format!("line {}: bad PCR index {k:?}", n + 1))?;
        if idx >= 24 {
            return Err(format!("line {}: PCR index {idx} out of range", n + 1));
        }
        let val = PcrValue::from_hex(algo, v).map_err(|e| format!("line {}: {e}", n + 1))?;
        out.insert(idx, val);
    }
    Ok(out)
}

/// Formats a bank as evmctl-style lines.
pub fn format(values: &[PcrValue]) -> String {
    values.iter().enumerate().map(|(i, v)| format!("PCR-{i:02}: {}\n", v.to_hex())).collect()
}
