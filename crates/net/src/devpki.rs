//! A development PKI: one CA and leaf certificates signed by it, for tests, benchmarks and
//! trying the services on one machine (`imasnap` docs show how). Not for production: the
//! keys are written unencrypted.

use crate::tls::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

pub struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
}

/// A leaf: PEM certificate and PKCS#8 key.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    pub fn new(cn: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = p.clone().self_signed(&key)?;
        Ok(Self { params: p, key, cert_pem: cert.pem() })
    }

    /// A certificate for `names` (DNS names or IP addresses), usable as both TLS server
    /// and TLS client.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Result<Leaf, rcgen::Error> {
        self.leaf_with_role(cn, names, None)
    }

    /// Like [`DevCa::leaf`], with the role as a SAN URI ([`Role::uri`]).
    pub fn leaf_with_role(&self, cn: &str, names: &[&str], role: Option<Role>) -> Result<Leaf, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        if let Some(r) = role {
            p.subject_alt_names.push(SanType::URI(r.uri().try_into()?));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = p.signed_by(&key, &issuer, &self.key)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

impl Leaf {
    pub fn identity(&self) -> Result<crate::tls::Identity, crate::tls::TlsError> {
        crate::tls::Identity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem)?;
        std::fs::write(&k, &self.key_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok((c, k))
    }
}

/// The files of a development PKI written by [`write_dev_pki`].
#[derive(Clone, Debug)]
pub struct DevPkiFiles {
    pub ca: PathBuf,
    pub agent: crate::tls::TlsFiles,
    pub verifier: crate::tls::TlsFiles,
    pub admin: crate::tls::TlsFiles,
    /// Read-only client of the verifier API (dashboards, scrapers).
    pub reader: crate::tls::TlsFiles,
}

/// One CA plus four identities for `names`, written to `dir`, each with its role
/// ([`Role`]): `agent.pem`, `verifier.pem`, `admin.pem`, `reader.pem` (and `.key`).
pub fn write_dev_pki(dir: &Path, names: &[&str]) -> Result<DevPkiFiles, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = DevCa::new("imasnap development CA").map_err(|e| e.to_string())?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).map_err(|e| e.to_string())?;
    let mk = |role: Role| -> Result<crate::tls::TlsFiles, String> {
        let who = role.as_str();
        let l = ca.leaf_with_role(&format!("imasnap {who}"), names, Some(role)).map_err(|e| e.to_string())?;
        let (cert, key) = l.write(dir, who).map_err(|e| e.to_string())?;
        Ok(crate::tls::TlsFiles { cert, key, ca: ca_path.clone() })
    };
    Ok(DevPkiFiles {
        agent: mk(Role::Agent)?,
        verifier: mk(Role::Verifier)?,
        admin: mk(Role::Admin)?,
        reader: mk(Role::Reader)?,
        ca: ca_path.clone(),
    })
}
