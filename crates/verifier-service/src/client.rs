//! A client for the verifier's REST API (the CLI's `imasnap verifier host …` and tests).

use hyper::{Method, StatusCode};
use imasnap_net::http::Conn;
use imasnap_net::{tls, Endpoint};
use std::sync::Arc;
use std::time::Duration;

pub struct ApiClient {
    pub addr: String,
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
    /// Why `url` was refused, reported by the first call (see [`ApiClient::new`]).
    bad_url: Option<String>,
}

impl ApiClient {
    /// `url` is `https://host[:port]` or `host:port`. A malformed one (e.g. `http://`) is
    /// reported by the first call; [`ApiClient::parse`] reports it at once.
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        match Self::parse(url, tls.clone()) {
            Ok(c) => c,
            Err(e) => Self {
                addr: url.to_string(),
                server_name: String::new(),
                tls,
                timeout: Duration::from_secs(120),
                bad_url: Some(e.to_string()),
            },
        }
    }

    pub fn parse(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, imasnap_net::EndpointError> {
        let e = Endpoint::parse(url)?;
        Ok(Self { addr: e.authority(), server_name: e.host, tls, timeout: Duration::from_secs(120), bad_url: None })
    }

    /// One request; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        if let Some(e) = &self.bad_url {
            anyhow::bail!("{e}");
        }
        let name = tls::server_name(&self.server_name)?;
        let mut c = Conn::connect(&self.addr, name, self.tls.clone(), self.timeout).await?;
        let b = body.map(|v| serde_json::to_vec(&v)).transpose()?;
        let (s, bytes) = c.request(method, path, b, 64 << 20, self.timeout).await?;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((s, v))
    }

    /// Like [`ApiClient::call`], but a non-2xx status is an error carrying the message.
    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (s, v) = self.call(method, path, body).await?;
        if !s.is_success() {
            let msg = v.get("error").and_then(|e| e.as_str()).map(String::from).unwrap_or_else(|| v.to_string());
            anyhow::bail!("verifier answered {s}: {msg}");
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Arc<rustls::ClientConfig> {
        let dir = tempfile::tempdir().unwrap();
        let pki = imasnap_net::devpki::write_dev_pki(dir.path(), &["localhost"]).unwrap();
        pki.admin.client().unwrap()
    }

    #[test]
    fn finding_10_api_client_addresses() {
        let t = tls();
        let c = ApiClient::parse("https://localhost:8892/", t.clone()).unwrap();
        assert_eq!((c.addr.as_str(), c.server_name.as_str()), ("localhost:8892", "localhost"));
        let c = ApiClient::parse("https://[::1]:8892", t.clone()).unwrap();
        assert_eq!((c.addr.as_str(), c.server_name.as_str()), ("[::1]:8892", "::1"));
        let e = ApiClient::parse("http://localhost:8892", t.clone()).err().unwrap();
        assert!(e.to_string().contains("imasnap speaks only https:// with mutual TLS"), "{e}");
        // Through `new`, the first call says the same (and never "invalid dns name").
        let c = ApiClient::new("http://localhost:8892", t);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let e = rt.block_on(c.call(Method::GET, "/v1/health", None)).unwrap_err().to_string();
        assert!(e.contains("only https://") && !e.contains("dns"), "{e}");
    }
}
