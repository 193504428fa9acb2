//! Where a client connects: `https://host:port` (or a bare `host:port`), parsed with
//! `http::Uri` rather than by hand, so that every malformed address gets a reason.

use http::uri::Uri;
use std::fmt;

/// A server address: what to dial and which name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address, without IPv6 brackets (the TLS server name).
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("address {addr:?}: {reason}")]
pub struct EndpointError {
    pub addr: String,
    pub reason: String,
}

/// The port of `https://host` without one.
pub const HTTPS_PORT: u16 = 443;

impl Endpoint {
    /// Parses `https://host[:port][/]` or `host:port`. Anything else (another scheme, a
    /// path, a query, user information, a port out of range) is refused.
    pub fn parse(addr: &str) -> Result<Self, EndpointError> {
        let fail = |reason: &str| EndpointError { addr: addr.to_string(), reason: reason.to_string() };
        let uri: Uri = addr.trim().parse().map_err(|e: http::uri::InvalidUri| fail(&e.to_string()))?;
        match uri.scheme_str() {
            None | Some("https") => {}
            Some("http") => return Err(fail("imasnap speaks only https:// with mutual TLS")),
            Some(s) => return Err(fail(&format!("scheme {s}:// is not supported; use https://host:port"))),
        }
        let auth = uri.authority().ok_or_else(|| fail("no host; use https://host:port"))?;
        if auth.as_str().contains('@') {
            return Err(fail("user information is not supported"));
        }
        if let Some(pq) = uri.path_and_query() {
            if pq.query().is_some() || !matches!(pq.path(), "" | "/") {
                return Err(fail("a path or query is not supported; give only https://host:port"));
            }
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(fail("no host"));
        }
        // `Authority::port` is None both without a port and with one out of range.
        let raw_port = auth.as_str().strip_prefix(auth.host()).and_then(|r| r.strip_prefix(':'));
        let port = match raw_port {
            Some("") => return Err(fail("empty port")),
            Some(p) => p.parse::<u16>().map_err(|_| fail(&format!("port {p} is not a number from 1 to 65535")))?,
            None if uri.scheme_str().is_some() => HTTPS_PORT,
            None => return Err(fail("no port; use https://host or host:port")),
        };
        if port == 0 {
            return Err(fail("port 0"));
        }
        Ok(Self { host: host.to_string(), port })
    }

    /// `host:port` for `TcpStream::connect` and the `host` header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(a: &str) -> (String, u16) {
        let e = Endpoint::parse(a).unwrap_or_else(|e| panic!("{a}: {e}"));
        (e.host, e.port)
    }

    #[test]
    fn finding_10_good_addresses() {
        assert_eq!(ok("https://localhost:8892"), ("localhost".into(), 8892));
        assert_eq!(ok("https://localhost:8892/"), ("localhost".into(), 8892));
        assert_eq!(ok("localhost:8892"), ("localhost".into(), 8892));
        assert_eq!(ok("https://verifier.example"), ("verifier.example".into(), 443));
        assert_eq!(ok("https://127.0.0.1:9"), ("127.0.0.1".into(), 9));
        assert_eq!(ok("https://[::1]:8892"), ("::1".into(), 8892));
        assert_eq!(ok("[::1]:8892"), ("::1".into(), 8892));
        assert_eq!(Endpoint::parse("https://[::1]:8892").unwrap().authority(), "[::1]:8892");
        assert_eq!(Endpoint::parse("https://h:1").unwrap().authority(), "h:1");
    }

    #[test]
    fn finding_10_http_scheme_is_refused_clearly() {
        let e = Endpoint::parse("http://localhost:8892").unwrap_err();
        assert!(e.to_string().contains("imasnap speaks only https:// with mutual TLS"), "{e}");
        assert!(!e.to_string().contains("dns"), "{e}");
    }

    #[test]
    fn finding_10_bad_addresses() {
        for (a, want) in [
            ("ftp://h:1", "scheme ftp://"),
            ("https://h:99999", "port 99999 is not a number"),
            ("https://h:1/v1/hosts", "path"),
            ("https://h:1/?x=1", "path or query"),
            ("https://user@h:1", "user information"),
            ("localhost", "no port"),
            ("https://h:0", "port 0"),
            ("https://h:", "empty port"),
            ("", "address"),
            ("https://", "address"),
            ("h:1 x", "address"),
        ] {
            let e = Endpoint::parse(a).expect_err(a);
            assert!(e.to_string().contains(want), "{a}: {e}");
        }
    }
}
