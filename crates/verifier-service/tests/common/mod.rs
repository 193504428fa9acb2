//! The agent and verifier the service tests start: in-process, on loopback, no scheduler
//! or ticker (the tests drive rounds and snapshots themselves), dev PKI for both TLS sides.
#![allow(dead_code)] // each test binary uses a different part

use imasnap_agent_server::config::AgentServiceConfig;
use imasnap_agent_server::devpki::DevPkiFiles;
use imasnap_agent_server::host::HostOps;
use imasnap_agent_server::service as agent;
use imasnap_agent_server::tls::TlsFiles;
use imasnap_verifier_service::model::{HostSpec, LateJoin};
use imasnap_verifier_service::service::{self as vsvc, Running};
use imasnap_verifier_service::{Verifier, VerifierConfig};
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;

pub mod pg;

/// Which engine a test's verifier stores its state in.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    /// A database of its own on the test server.
    Postgres(String),
}

impl Backend {
    /// A fresh PostgreSQL database, or `None` when PostgreSQL tests are skipped.
    pub fn postgres(tag: &str) -> Option<Self> {
        pg::fresh_db(tag).map(Backend::Postgres)
    }

    /// What `database =` says for this backend (a file under `dir` for SQLite).
    pub fn database(&self, dir: &Path) -> PathBuf {
        match self {
            Backend::Sqlite => dir.join("verifier.db"),
            Backend::Postgres(url) => PathBuf::from(url),
        }
    }
}

/// One `#[tokio::test]` per engine for `async fn $name(b: Backend)`: `$name::sqlite` and
/// `$name::postgres` (the same test, not a copy).
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = super::common::Backend::postgres(stringify!($name)) {
                    super::$name(b).await
                }
            }
        }
    };
}

pub async fn start_verifier(dir: &Path, pki: &DevPkiFiles) -> Running {
    start_verifier_with(dir, pki, |_| {}, false).await
}

/// A verifier on `database` (a SQLite path or a PostgreSQL URL).
pub async fn start_verifier_db(database: PathBuf, pki: &DevPkiFiles) -> Running {
    start_verifier_on(database, pki, |_| {}, false).await
}

/// [`start_verifier`] with `edit` applied to its configuration, and the scheduler if
/// `schedule`.
pub async fn start_verifier_with(
    dir: &Path,
    pki: &DevPkiFiles,
    edit: impl FnOnce(&mut VerifierConfig),
    schedule: bool,
) -> Running {
    start_verifier_on(dir.join("verifier.db"), pki, edit, schedule).await
}

/// A verifier on `database`, with `edit` applied and the scheduler if `schedule`.
pub async fn start_verifier_on(
    database: PathBuf,
    pki: &DevPkiFiles,
    edit: impl FnOnce(&mut VerifierConfig),
    schedule: bool,
) -> Running {
    let mut cfg = VerifierConfig {
        database,
        lease_ms: 10_000,
        replica_id: None,
        sqlite_synchronous_full: false,
        listen: "127.0.0.1:0".into(),
        max_concurrency: 8,
        timeout_ms: 10_000,
        max_evidence_bytes: 64 << 20,
        keep_verdicts: 100,
        tick_ms: 20,
        tls: pki.verifier.clone(),
        agent_tls: pki.verifier.clone(),
        backoff: Default::default(),
        webhooks: Default::default(),
        ek: Default::default(),
    };
    edit(&mut cfg);
    let v = Verifier::open(cfg.clone(), cfg.agent_tls.client().unwrap()).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    vsvc::spawn(l, cfg.tls.server().unwrap(), v, schedule).unwrap()
}

/// An agent configuration on loopback with `tls` as its identity and state under `dir`;
/// `extra` adds top-level keys (`backend`, `test_endpoints`, `ima_template`, …). No ticker.
/// The simulation (`backend = "model"`, `tpm = "soft"`) unless `extra` names them: the
/// defaults are the real machine.
pub fn agent_cfg(dir: &Path, tls: &TlsFiles, extra: &str) -> AgentServiceConfig {
    let backend = if extra.contains("backend") { "" } else { "backend = \"model\"\n" };
    let tpm = if extra.contains("tpm =") { "" } else { "tpm = \"soft\"\n" };
    let mut c = AgentServiceConfig::from_toml(&format!(
        "state_dir = {:?}\nlisten = \"127.0.0.1:0\"\n{backend}{tpm}{extra}\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        dir.join("agent-state"),
        tls.cert,
        tls.key,
        tls.ca
    ))
    .unwrap();
    c.tick_ms = 0;
    c
}

/// Serves `host` as `cfg` says.
pub async fn serve_agent(cfg: &AgentServiceConfig, host: Box<dyn HostOps>) -> agent::Running {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    agent::spawn(l, cfg.tls.server().unwrap(), host, agent::Serve::from_config(cfg)).unwrap()
}

/// The back end `cfg` names (the kernel model unless it says otherwise), served.
pub async fn start_agent(cfg: &AgentServiceConfig) -> agent::Running {
    serve_agent(cfg, agent::open_host(cfg).unwrap()).await
}

/// Host `name` at `address` (server name `localhost`, as the dev PKI issues), its AK trusted
/// on first use, full-history late join, polled hourly (the tests attest on demand),
/// registered as simulated (the test agents run the kernel model and the soft TPM).
pub fn tofu_host(name: &str, address: &str) -> HostSpec {
    HostSpec {
        name: name.into(),
        address: address.into(),
        server_name: Some("localhost".into()),
        ak: None,
        tofu: true,
        policy: None,
        agent_cert: None,
        poll_interval_ms: 3_600_000,
        late_join: LateJoin::FullHistory,
        simulated: true,
        ek_activate: false,
        ek: None,
        ak_enrolment: None,
    }
}
