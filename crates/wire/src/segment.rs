//! Which piece of a boot's log a record came from: shared by the store's stitched reader
//! and the verifier's failures (and so part of the verifier's JSON output).

use std::fmt;

/// A snapshot file (by manifest `seq`) or the live list. JSON: `{"snapshot": 3}` or
/// `"live"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// The snapshot file with this manifest `seq`.
    Snapshot(u64),
    /// The live (in-kernel) list.
    Live,
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Snapshot(s) => write!(f, "snapshot {s}"),
            Self::Live => f.write_str("live list"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_9_segment_round_trip() {
        for (s, j, t) in
            [(Segment::Snapshot(3), r#"{"snapshot":3}"#, "snapshot 3"), (Segment::Live, r#""live""#, "live list")]
        {
            assert_eq!(serde_json::to_string(&s).unwrap(), j);
            assert_eq!(serde_json::from_str::<Segment>(j).unwrap(), s);
            assert_eq!(s.to_string(), t);
        }
        assert!(serde_json::from_str::<Segment>(r#""dead""#).is_err());
    }
}
