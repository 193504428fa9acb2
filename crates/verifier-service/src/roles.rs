//! Who may call what on the REST API: the role a client certificate carries as a SAN URI
//! (`urn:imasnap:role:admin`, see [`imasnap_net::tls::Role`]).
//!
//! - `admin`: every route.
//! - `reader`: the read-only routes (`GET`).
//! - `agent`, `verifier`, an unknown role, several roles, or none: refused on every route
//!   (403). An agent's certificate is an attested host's identity; accepting it here would
//!   let a host re-register another (its address, its AK).

use hyper::Method;
pub use imasnap_net::tls::role_of;
use imasnap_net::tls::Role;

/// Whether `role` may call `method` on the REST API.
pub fn allowed(role: Role, method: &Method) -> bool {
    match role {
        Role::Admin => true,
        Role::Reader => method == Method::GET || method == Method::HEAD,
        Role::Agent | Role::Verifier => false,
    }
}

/// The caller's role if it may call `method`; otherwise why not (for the 403).
pub fn authorize(cert_der: Option<&[u8]>, method: &Method) -> Result<Role, String> {
    let der = cert_der.ok_or("no client certificate")?;
    let role = role_of(der)?;
    if allowed(role, method) {
        Ok(role)
    } else if matches!(role, Role::Reader) {
        Err(format!("role {role} is read-only: {method} needs role admin"))
    } else {
        Err(format!("role {role} is not a client of the verifier API"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imasnap_net::devpki::DevCa;

    fn der(pem: &str) -> Vec<u8> {
        crate::model::pinned_der(pem).unwrap()
    }

    #[test]
    fn finding_4_role_is_read_from_the_san_uri() {
        let ca = DevCa::new("t").unwrap();
        for r in Role::ALL {
            let l = ca.leaf_with_role("x", &["localhost"], Some(r)).unwrap();
            assert_eq!(role_of(&der(&l.cert_pem)), Ok(r));
        }
        let none = ca.leaf("x", &["localhost"]).unwrap();
        let e = role_of(&der(&none.cert_pem)).unwrap_err();
        assert!(e.contains("no role"), "{e}");
        assert!(authorize(Some(&der(&none.cert_pem)), &Method::GET).is_err());
        assert!(authorize(None, &Method::GET).is_err());
        assert!(role_of(b"not a certificate").is_err());
    }

    #[test]
    fn finding_4_matrix() {
        for m in [Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::PUT] {
            assert!(allowed(Role::Admin, &m));
            assert_eq!(allowed(Role::Reader, &m), m == Method::GET);
            assert!(!allowed(Role::Agent, &m));
            assert!(!allowed(Role::Verifier, &m));
        }
    }
}
