//! Mutual TLS for both services (rustls with the *ring* provider, TLS 1.2 and 1.3).
//!
//! - Servers (the agent's evidence API, the verifier's REST API) require a client
//!   certificate that chains to the configured client CA; a client without one fails the
//!   handshake and never reaches HTTP.
//! - Clients (the verifier polling agents, the CLI talking to the verifier) present their
//!   own certificate and trust only the configured CA (no system roots).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {detail}")]
    File { what: &'static str, path: String, detail: String },
    #[error("{0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM bytes of a certificate chain, key and CA, from files or in memory.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let cert_chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Config(format!("certificate PEM: {e}")))?;
        if cert_chain.is_empty() {
            return Err(TlsError::Config("certificate PEM holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Config(format!("key PEM: {e}")))?;
        Ok(Self { cert_chain, key: Arc::new(key) })
    }

    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let c = read(cert, "certificate")?;
        let k = read(key, "private key")?;
        Self::from_pem(&c, &k).map_err(|e| TlsError::File {
            what: "identity",
            path: format!("{} + {}", cert.display(), key.display()),
            detail: e.to_string(),
        })
    }
}

fn read(p: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|e| TlsError::File { what, path: p.display().to_string(), detail: e.to_string() })
}

/// Trust anchors from PEM (one or more CA certificates).
pub fn roots_from_pem(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| TlsError::Config(format!("CA PEM: {e}")))?;
        roots.add(c).map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config("CA PEM holds no certificate".into()));
    }
    Ok(Arc::new(roots))
}

pub fn roots_from_file(p: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    roots_from_pem(&read(p, "CA")?)
}

/// A server that requires a client certificate chaining to `client_roots`.
pub fn server_config(id: &Identity, client_roots: Arc<RootCertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(client_roots, provider())
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.cert_chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(format!("server certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client presenting `id` (if any) and trusting only `roots`.
pub fn client_config(id: Option<&Identity>, roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, TlsError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match id {
        Some(id) => b
            .with_client_auth_cert(id.cert_chain.clone(), id.key.clone_key())
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Many agents per verifier: keep resumption tickets for all of them.
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(16 * 1024);
    Ok(Arc::new(cfg))
}

pub fn server_name(s: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(s.to_string()).map_err(|e| TlsError::Config(format!("TLS server name {s:?}: {e}")))
}

/// The `[tls]` table of both services' configuration files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This service's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA that client certificates must chain to (servers), or that the peer's server
    /// certificate must chain to (clients).
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn server(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&Identity::from_files(&self.cert, &self.key)?, roots_from_file(&self.ca)?)
    }
    pub fn client(&self) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(Some(&Identity::from_files(&self.cert, &self.key)?), roots_from_file(&self.ca)?)
    }
}

/// Prefix of the SAN URI that carries a certificate's role (`urn:imasnap:role:admin`), in
/// the manner of SPIFFE IDs: a standard extension every tool can write and show.
pub const ROLE_URI_PREFIX: &str = "urn:imasnap:role:";

/// What a client certificate may do; each API decides what each role may call (the
/// verifier's `roles` module, the agent's `service::agent_allows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Reader,
    /// An attested host's agent: never a client of the verifier API.
    Agent,
    /// The verifier's identity towards agents: never a client of the verifier API.
    Verifier,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Reader, Role::Agent, Role::Verifier];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Reader => "reader",
            Self::Agent => "agent",
            Self::Verifier => "verifier",
        }
    }

    /// The SAN URI for this role.
    pub fn uri(&self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    /// The role a SAN URI names: `None` if it is not a role URI, `Some(Err)` for an
    /// unknown role.
    pub fn from_uri(uri: &str) -> Option<Result<Self, String>> {
        let r = uri.strip_prefix(ROLE_URI_PREFIX)?;
        Some(Self::ALL.into_iter().find(|x| x.as_str() == r).ok_or_else(|| format!("unknown role {r:?} in {uri:?}")))
    }
}

/// The role in a DER certificate. Errors say why there is no usable role.
pub fn role_of(cert_der: &[u8]) -> Result<Role, String> {
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| format!("client certificate: {e}"))?;
    let mut found: Vec<Role> = Vec::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id != <SubjectAltName as AssociatedOid>::OID {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|e| format!("client certificate subjectAltName: {e}"))?;
        for n in san.0 {
            if let GeneralName::UniformResourceIdentifier(u) = n {
                if let Some(r) = Role::from_uri(u.as_str()) {
                    found.push(r?);
                }
            }
        }
    }
    match found.as_slice() {
        [r] => Ok(*r),
        [] => Err(format!("the client certificate carries no role (a subjectAltName URI {ROLE_URI_PREFIX}<role>)")),
        _ => Err("the client certificate carries more than one role".into()),
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
