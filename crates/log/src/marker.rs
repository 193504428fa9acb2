//! The `snapshot_aggregate` marker: our exact `buf` encoding (docs/SNAPSHOTS.md).
//!
//! `Snapshot_Attempt_Count=<n>;` then per bank, in TPM bank order, one space and
//! `<alg>:PCR<i>:0x<hex>` for i = 0..23 joined by `,` and closed by `;`. ASCII, no NUL.
//! The parser is strict: one spelling per marker, so a marker cannot be re-encoded into a
//! different `buf` with the same meaning.

use crate::algo::{HashAlgo, PcrValue};
use crate::codec::{Endian, Record};
use crate::entry::{build, builtin, d_ng, n_ng};
use crate::replay::{PcrState, NUM_PCRS};

/// Event name of the marker record.
pub const EVENT_NAME: &str = "snapshot_aggregate";
const PREFIX: &str = "Snapshot_Attempt_Count=";

/// A parsed marker: the attempt counter and PCR 0-23 of every bank just before its own extend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub attempt: u64,
    pub banks: Vec<(HashAlgo, [PcrValue; NUM_PCRS])>,
}

impl Marker {
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{PREFIX}{};", self.attempt);
        for (algo, vals) in &self.banks {
            s.push(' ');
            for (i, v) in vals.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("{}:PCR{}:0x{}", algo.name(), i, v.to_hex()));
            }
            s.push(';');
        }
        s.into_bytes()
    }

    /// Strict parse of a marker `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, String> {
        let s = std::str::from_utf8(buf).map_err(|_| "marker buf is not ASCII".to_string())?;
        let rest = s.strip_prefix(PREFIX).ok_or("marker buf does not start with Snapshot_Attempt_Count=")?;
        let (num, mut rest) = rest.split_once(';').ok_or("attempt count is not closed by ';'")?;
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || (num.len() > 1 && num.starts_with('0')) {
            return Err(format!("attempt count {num:?} is not a canonical decimal"));
        }
        let attempt: u64 = num.parse().map_err(|_| format!("attempt count {num:?} overflows"))?;
        let mut banks: Vec<(HashAlgo, [PcrValue; NUM_PCRS])> = Vec::new();
        while !rest.is_empty() {
            let body = rest.strip_prefix(' ').ok_or("bank list must be separated by one space")?;
            let (bank_s, after) = body.split_once(';').ok_or("bank not closed by ';'")?;
            rest = after;
            let mut algo = None;
            let mut vals = [PcrValue::zero(HashAlgo::Sha1); NUM_PCRS];
            let items: Vec<&str> = bank_s.split(',').collect();
            if items.len() != NUM_PCRS {
                return Err(format!("bank has {} PCR values, want {NUM_PCRS}", items.len()));
            }
            for (i, item) in items.iter().enumerate() {
                let mut parts = item.splitn(3, ':');
                let (a, p, v) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let a =
                    HashAlgo::from_name(a).filter(|x| x.name() == a).ok_or_else(|| format!("unknown bank {a:?}"))?;
                if *algo.get_or_insert(a) != a {
                    return Err(format!("PCR{i} of bank {} is labelled {a}", algo.unwrap_or(a)));
                }
                if p != format!("PCR{i}") {
                    return Err(format!("expected PCR{i}, found {p:?}"));
                }
                let hexs = v.strip_prefix("0x").ok_or_else(|| format!("{a} PCR{i} lacks 0x"))?;
                if hexs.len() != a.size() * 2 || hexs.bytes().any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(format!("{a} PCR{i} is not {} lowercase hex digits", a.size() * 2));
                }
                vals[i] = PcrValue::from_hex(a, hexs)?;
            }
            let a = algo.ok_or("empty bank")?;
            if banks.iter().any(|(b, _)| *b == a) {
                return Err(format!("bank {a} appears twice"));
            }
            banks.push((a, vals));
        }
        if banks.is_empty() {
            return Err("marker has no banks".into());
        }
        Ok(Self { attempt, banks })
    }

    /// The marker's values as replay state, all PCRs touched (a marker states every PCR).
    pub fn to_state(&self) -> PcrState {
        let algos: Vec<HashAlgo> = self.banks.iter().map(|(a, _)| *a).collect();
        let mut s = PcrState::new(&algos);
        for (_, vals) in &self.banks {
            for (i, v) in vals.iter().enumerate() {
                s.set(i, *v);
            }
        }
        s
    }

    pub fn bank(&self, a: HashAlgo) -> Option<&[PcrValue; NUM_PCRS]> {
        self.banks.iter().find(|(b, _)| *b == a).map(|(_, v)| v)
    }

    /// The marker as an `ima-buf` record: `d-ng` is the IMA hash of `buf`.
    pub fn to_record(&self, pcr: u32, ima_hash: HashAlgo, bank: HashAlgo, endian: Endian) -> Record {
        let buf = self.encode();
        let d = ima_hash.hash(&[&buf]);
        build(
            &builtin("ima-buf"),
            &[&d_ng(ima_hash.name(), d.as_bytes()), &n_ng(EVENT_NAME.as_bytes()), &buf],
            bank,
            pcr,
            false,
            endian,
        )
    }

    /// Recognises a marker record and parses it. `Ok(None)`: not a marker. `Err`: a record
    /// named `snapshot_aggregate` that is malformed — never silently treated as ordinary.
    pub fn from_record(rec: &Record, endian: Endian) -> Result<Option<Self>, String> {
        if rec.template.name() != "ima-buf" {
            return Ok(None);
        }
        let fields = rec.fields(endian).map_err(|e| e.to_string())?;
        let name = fields[1].strip_suffix(&[0]).unwrap_or(fields[1]);
        if name != EVENT_NAME.as_bytes() {
            return Ok(None);
        }
        let m = Self::parse(fields[2])?;
        // d-ng must be the hash of buf, as for any ima-buf record.
        match rec.template.field(0, fields[0], endian).map_err(|e| e.to_string())? {
            crate::template::Field::Digest { algo: Some(a), digest, .. } => {
                let algo = HashAlgo::from_name(a).ok_or_else(|| format!("marker d-ng uses unknown hash {a}"))?;
                if algo.hash(&[fields[2]]).as_bytes() != digest {
                    return Err("marker d-ng is not the hash of its buf".into());
                }
            }
            _ => return Err("marker has no d-ng digest".into()),
        }
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Marker {
        let mut v1 = [PcrValue::zero(HashAlgo::Sha1); 24];
        v1[10] = HashAlgo::Sha1.hash(&[b"x"]);
        let v2 = [PcrValue::ones(HashAlgo::Sha256); 24];
        Marker { attempt: 7, banks: vec![(HashAlgo::Sha1, v1), (HashAlgo::Sha256, v2)] }
    }

    #[test]
    fn encode_parse_round_trip_and_shape() {
        let m = sample();
        let b = m.encode();
        let s = String::from_utf8(b.clone()).unwrap();
        assert!(
            s.starts_with("Snapshot_Attempt_Count=7; sha1:PCR0:0x0000000000000000000000000000000000000000,sha1:PCR1:")
        );
        assert!(s.ends_with(&format!("sha256:PCR23:0x{};", "ff".repeat(32))));
        assert!(!b.contains(&0));
        assert_eq!(Marker::parse(&b).unwrap(), m);
        let rec = m.to_record(10, HashAlgo::Sha256, HashAlgo::Sha1, Endian::Little);
        assert_eq!(Marker::from_record(&rec, Endian::Little).unwrap().unwrap(), m);
    }

    #[test]
    fn strictness() {
        let good = String::from_utf8(sample().encode()).unwrap();
        for bad in [
            good.replace("Count=7;", "Count=07;"),
            good.replace("Count=7;", "Count=+7;"),
            good.replace("PCR5:", "PCR6:"),
            good.replacen("0x", "0X", 1),
            good.replacen(" sha256", "  sha256", 1),
            format!("{good} "),
            good.replace(",sha1:PCR23", ",sha256:PCR23"),
            good.trim_end_matches(';').to_string(),
            good.replacen("0x00", "0xAA", 1),
        ] {
            assert!(Marker::parse(bad.as_bytes()).is_err(), "accepted {bad}");
        }
    }
}
