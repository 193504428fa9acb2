//! The verifier every service test starts: in-process, on loopback, no scheduler (the
//! tests drive rounds themselves), dev PKI for both TLS sides.

use imasnap_agent_server::devpki::DevPkiFiles;
use imasnap_verifier_service::service::{self as vsvc, Running};
use imasnap_verifier_service::{Verifier, VerifierConfig};
use std::path::Path;
use tokio::net::TcpListener;

pub async fn start_verifier(dir: &Path, pki: &DevPkiFiles) -> Running {
    let cfg = VerifierConfig {
        database: dir.join("verifier.db"),
        sqlite_synchronous_full: false,
        listen: "127.0.0.1:0".into(),
        max_concurrency: 8,
        timeout_ms: 10_000,
        max_evidence_bytes: 64 << 20,
        keep_verdicts: 100,
        tick_ms: 20,
        tls: pki.verifier.clone(),
        agent_tls: pki.verifier.clone(),
    };
    let v = Verifier::open(cfg.clone(), cfg.agent_tls.client().unwrap()).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    vsvc::spawn(l, cfg.tls.server().unwrap(), v, false).unwrap()
}
