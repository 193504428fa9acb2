//! Durations in both services' configuration files: `"500ms"`, `"30s"`, `"2m"`, `"1h"`,
//! `"1d"` (one number, one unit). The older keys with the unit in their name (`tick_ms`,
//! `timeout_ms`, `interval_secs`) still work; a file may not set both forms of one key.
//!
//! The files are rewritten at the TOML level (new key → old key in its unit) before they
//! are deserialised, so the Rust structs keep one field per setting.

use std::time::Duration;

/// Parses `<digits><unit>`, unit one of `ms`, `s`, `m`, `h`, `d` (spaces allowed between).
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("duration {s:?}: want a whole number and a unit, e.g. \"30s\""))?;
    let ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("duration {s:?}: a unit is required (ms, s, m, h, d)")),
        u => return Err(format!("duration {s:?}: unknown unit {u:?} (ms, s, m, h, d)")),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(|| format!("duration {s:?}: too large"))
}

/// The unit an older key counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Secs,
}

/// One duration setting: `table.key = "30s"`, formerly `table.old_key = N` (in `unit`).
/// `table` is `""` for the top level.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub table: &'static str,
    pub key: &'static str,
    pub old_key: &'static str,
    pub unit: Unit,
}

/// Rewrites every `key = "DURATION"` of `keys` in `doc` to its `old_key` in the old unit.
/// Errors name the key.
pub fn rewrite(doc: &mut toml::Table, keys: &[Key]) -> Result<(), String> {
    for k in keys {
        let t = if k.table.is_empty() {
            &mut *doc
        } else {
            match doc.get_mut(k.table).and_then(|v| v.as_table_mut()) {
                Some(t) => t,
                None => continue,
            }
        };
        let Some(v) = t.remove(k.key) else { continue };
        let name = if k.table.is_empty() { k.key.to_string() } else { format!("{}.{}", k.table, k.key) };
        if t.contains_key(k.old_key) {
            return Err(format!("{name}: set either {} or {} (deprecated), not both", k.key, k.old_key));
        }
        let s = v.as_str().ok_or_else(|| format!("{name}: want a duration string such as \"30s\""))?;
        let d = parse(s).map_err(|e| format!("{name}: {e}"))?;
        let n = match k.unit {
            Unit::Millis => d.as_millis(),
            Unit::Secs => {
                if d.subsec_millis() != 0 {
                    return Err(format!("{name}: {s:?} is not a whole number of seconds"));
                }
                u128::from(d.as_secs())
            }
        };
        let n = i64::try_from(n).map_err(|_| format!("{name}: {s:?} too large"))?;
        t.insert(k.old_key.to_string(), toml::Value::Integer(n));
    }
    Ok(())
}

/// Parses a configuration file with [`rewrite`] applied first.
pub fn from_toml<T: serde::de::DeserializeOwned>(s: &str, keys: &[Key]) -> Result<T, String> {
    let mut doc: toml::Table = toml::from_str(s).map_err(|e| e.to_string())?;
    rewrite(&mut doc, keys)?;
    doc.try_into().map_err(|e: toml::de::Error| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_3_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(" 1 h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse("30").unwrap_err().contains("unit"));
        assert!(parse("3x").unwrap_err().contains("unknown unit"));
        assert!(parse("-1s").is_err());
        assert!(parse("1.5s").is_err());
        assert!(parse("99999999999999999999s").is_err());
    }

    #[test]
    fn finding_3_rewrite_old_and_new_keys() {
        const K: &[Key] = &[
            Key { table: "", key: "tick", old_key: "tick_ms", unit: Unit::Millis },
            Key { table: "snapshot", key: "interval", old_key: "interval_secs", unit: Unit::Secs },
        ];
        let mut d: toml::Table = toml::from_str("tick = \"2s\"\n[snapshot]\ninterval = \"1h\"\n").unwrap();
        rewrite(&mut d, K).unwrap();
        assert_eq!(d["tick_ms"].as_integer(), Some(2000));
        assert_eq!(d["snapshot"]["interval_secs"].as_integer(), Some(3600));
        let mut both: toml::Table = toml::from_str("tick = \"2s\"\ntick_ms = 5\n").unwrap();
        assert!(rewrite(&mut both, K).unwrap_err().contains("not both"));
        let mut frac: toml::Table = toml::from_str("[snapshot]\ninterval = \"1500ms\"\n").unwrap();
        assert!(rewrite(&mut frac, K).unwrap_err().contains("snapshot.interval"));
        let mut num: toml::Table = toml::from_str("tick = 5\n").unwrap();
        assert!(rewrite(&mut num, K).is_err());
    }
}
