//! Which records are special: boot_aggregates and snapshot_aggregate markers (parsed
//! strictly, so a forged marker can never pass as an ordinary record).

use crate::reason::{Failure, Segment};
use imasnap_log::marker::{Marker, EVENT_NAME as MARKER_NAME};
use imasnap_log::template::{Field, FieldId};
use imasnap_log::{Endian, HashAlgo, Record, Template};

pub(super) enum Kind {
    Ordinary,
    BootAggregate,
    Marker(Marker),
}

/// The event name (`n`/`n-ng` without NUL), without allocating.
pub(super) fn event_name(rec: &Record, endian: Endian) -> Result<Option<&[u8]>, imasnap_log::Reason> {
    event_name_in(&rec.template, &rec.template_data, endian)
}

/// [`event_name`] of template data that is not in a [`Record`] (e.g. in a read buffer).
pub(super) fn event_name_in<'d>(
    template: &Template,
    data: &'d [u8],
    endian: Endian,
) -> Result<Option<&'d [u8]>, imasnap_log::Reason> {
    let Some(pos) = template.fields().iter().position(|f| matches!(f, FieldId::N | FieldId::NNg)) else {
        return Ok(None);
    };
    let mut i = 0;
    let mut out = None;
    template.walk(data, endian, |f| {
        if i == pos {
            out = Some(f);
        }
        i += 1;
    })?;
    Ok(out.map(|n| n.strip_suffix(&[0]).unwrap_or(n)))
}

/// Whether a record whose event name is `name` can only be ordinary: [`classify`] would
/// return [`Kind::Ordinary`] without looking further (not a boot_aggregate, not a marker).
pub(super) fn is_ordinary_name(name: Option<&[u8]>) -> bool {
    !matches!(name, Some(n) if n == b"boot_aggregate" || n == MARKER_NAME.as_bytes())
}

/// Recognises markers (strictly: a record named snapshot_aggregate is never ordinary)
/// and boot_aggregates.
pub(super) fn classify(rec: &Record, endian: Endian, pcr: u32, index: u64, seg: Segment) -> Result<Kind, Failure> {
    let name =
        event_name(rec, endian).map_err(|reason| Failure::Malformed { segment: seg, index, offset: 0, reason })?;
    match name {
        Some(b"boot_aggregate") => Ok(Kind::BootAggregate),
        Some(n) if n == MARKER_NAME.as_bytes() => parse_marker(rec, endian, pcr, index).map(Kind::Marker),
        _ => Ok(Kind::Ordinary),
    }
}

pub(super) fn parse_marker(rec: &Record, endian: Endian, pcr: u32, index: u64) -> Result<Marker, Failure> {
    let bad = |detail: String| Failure::MalformedMarker { index, detail };
    if rec.template.name() != "ima-buf" {
        return Err(bad(format!("template {:?}, want ima-buf", rec.template.name())));
    }
    if rec.pcr != pcr {
        return Err(bad(format!("in PCR {}, want the measurement PCR {pcr}", rec.pcr)));
    }
    if rec.is_violation() {
        return Err(bad("recorded as a violation".into()));
    }
    let fields = rec.fields(endian).map_err(|e| bad(e.to_string()))?;
    let (Some(d), Some(buf)) = (fields.first(), fields.get(2)) else {
        return Err(bad("ima-buf record without its fields".into()));
    };
    let m = Marker::parse(buf).map_err(bad)?;
    match rec.template.field(0, d, endian).map_err(|e| bad(e.to_string()))? {
        Field::Digest { algo: Some(a), digest, .. } => {
            let algo = HashAlgo::from_name(a).ok_or_else(|| bad(format!("d-ng uses unknown hash {a:?}")))?;
            if algo.hash(&[buf]).as_bytes() != digest {
                return Err(Failure::MarkerBufDigestMismatch { index });
            }
        }
        _ => return Err(bad("no d-ng digest".into())),
    }
    Ok(m)
}
