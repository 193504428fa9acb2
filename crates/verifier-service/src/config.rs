//! The verifier service's TOML configuration (`/etc/imasnap/verifier.toml`).

use crate::db::conn::Target;
use imasnap_net::duration::{Key, Unit};
use imasnap_net::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "/etc/imasnap/verifier.toml";
pub const DEFAULT_DB: &str = "/var/lib/imasnap/verifier.db";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8892";

fn d_db() -> PathBuf {
    DEFAULT_DB.into()
}
fn d_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn d_conc() -> usize {
    64
}
fn d_timeout() -> u64 {
    30_000
}
fn d_max() -> u64 {
    256 << 20
}
fn d_keep() -> u64 {
    1000
}
fn d_tick() -> u64 {
    50
}
fn d_lease() -> u64 {
    10_000
}

/// The duration keys of `verifier.toml` (`timeout = "30s"`; the `_ms` keys are the older
/// spelling).
pub const DURATION_KEYS: &[Key] = &[
    Key { table: "", key: "timeout", old_key: "timeout_ms", unit: Unit::Millis },
    Key { table: "", key: "tick", old_key: "tick_ms", unit: Unit::Millis },
    Key { table: "backoff", key: "max", old_key: "max_ms", unit: Unit::Millis },
    Key { table: "webhooks", key: "retry", old_key: "retry_ms", unit: Unit::Millis },
    Key { table: "webhooks", key: "timeout", old_key: "timeout_ms", unit: Unit::Millis },
    Key { table: "", key: "lease", old_key: "lease_ms", unit: Unit::Millis },
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    /// The database (created and migrated on start): a SQLite file, or
    /// `postgres://user@host:port/db` for PostgreSQL shared by replicas.
    #[serde(default = "d_db")]
    pub database: PathBuf,
    /// PostgreSQL only: how long a replica's claim on a host lasts without renewal
    /// (`lease = "10s"`). A dead replica's hosts move within two lease periods.
    #[serde(default = "d_lease")]
    pub lease_ms: u64,
    /// PostgreSQL only: this replica's name in `/v1/health` and the lease table (default:
    /// host name, process id and a random suffix).
    #[serde(default)]
    pub replica_id: Option<String>,
    /// `PRAGMA synchronous = FULL` (every commit fsynced) instead of NORMAL.
    #[serde(default)]
    pub sqlite_synchronous_full: bool,
    /// Address of the REST API.
    #[serde(default = "d_listen")]
    pub listen: String,
    /// Attestation rounds running at once.
    #[serde(default = "d_conc")]
    pub max_concurrency: usize,
    /// Connect + evidence transfer deadline per round, milliseconds (`timeout = "30s"`).
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Largest evidence accepted from an agent.
    #[serde(default = "d_max")]
    pub max_evidence_bytes: u64,
    /// Verdicts kept per host.
    #[serde(default = "d_keep")]
    pub keep_verdicts: u64,
    /// Scheduler resolution, milliseconds (`tick = "50ms"`).
    #[serde(default = "d_tick")]
    pub tick_ms: u64,
    /// The REST API's server identity and the CA its clients' certificates chain to.
    pub tls: TlsFiles,
    /// The identity presented to agents and the CA their certificates chain to.
    pub agent_tls: TlsFiles,
    /// `[backoff]`: how failing hosts are retried.
    #[serde(default)]
    pub backoff: crate::ops::backoff::BackoffConfig,
    /// `[webhooks]`: where revocation events go.
    #[serde(default)]
    pub webhooks: crate::ops::webhook::WebhookConfig,
    /// `[ek]`: which endorsement keys AK enrolment trusts ([`crate::enrol`]).
    #[serde(default)]
    pub ek: EkConfig,
}

/// `[ek]` in verifier.toml.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EkConfig {
    /// PEM files of CA certificates (TPM manufacturers' roots and intermediates, or a
    /// local CA such as swtpm-localca's). Every certificate in them is a trust anchor.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// EKs trusted without a certificate, for every host: SHA-256 fingerprints of their
    /// SubjectPublicKeyInfo (hex), or hex TPM2B_PUBLIC.
    #[serde(default)]
    pub trusted: Vec<String>,
}

impl VerifierConfig {
    pub fn from_toml(s: &str) -> Result<Self, String> {
        imasnap_net::duration::from_toml(s, DURATION_KEYS)
    }

    /// The engine `database` names: a `postgres://` or `postgresql://` URL, else a path.
    pub fn target(&self) -> Target {
        let s = self.database.to_string_lossy();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Target::Postgres { url: s.into_owned() }
        } else {
            Target::Sqlite { path: self.database.clone(), synchronous_full: self.sqlite_synchronous_full }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let c = VerifierConfig::from_toml(
            "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n[agent_tls]\ncert = \"/c2\"\nkey = \"/k2\"\nca = \"/ca2\"\n",
        )
        .unwrap();
        assert_eq!(c.database, PathBuf::from(DEFAULT_DB));
        assert_eq!(c.max_concurrency, 64);
        assert!(matches!(c.target(), Target::Sqlite { .. }));
        let pg = VerifierConfig::from_toml(
            "database = \"postgres://imasnap@127.0.0.1:5432/v\"\nlease = \"3s\"\n[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n[agent_tls]\ncert = \"/c2\"\nkey = \"/k2\"\nca = \"/ca2\"\n",
        )
        .unwrap();
        assert!(matches!(pg.target(), Target::Postgres { .. }));
        assert_eq!(pg.lease_ms, 3000);
        assert!(VerifierConfig::from_toml("[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n").is_err());
    }

    #[test]
    fn finding_3_durations_with_units() {
        let tls = "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n[agent_tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/ca\"\n";
        let c = VerifierConfig::from_toml(&format!("timeout = \"2m\"\ntick = \"500ms\"\n{tls}")).unwrap();
        assert_eq!((c.timeout_ms, c.tick_ms), (120_000, 500));
        let old = VerifierConfig::from_toml(&format!("timeout_ms = 1000\ntick_ms = 7\n{tls}")).unwrap();
        assert_eq!((old.timeout_ms, old.tick_ms), (1000, 7));
        assert!(VerifierConfig::from_toml(&format!("timeout = \"30\"\n{tls}")).unwrap_err().contains("timeout"));
        assert!(VerifierConfig::from_toml(&format!("timeout = \"1s\"\ntimeout_ms = 5\n{tls}")).is_err());
    }
}
