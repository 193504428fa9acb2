//! A client for the verifier's REST API (the CLI's `imasnap verifier host …` and tests).

use hyper::{Method, StatusCode};
use imasnap_agent_server::http::Conn;
use imasnap_agent_server::tls;
use std::sync::Arc;
use std::time::Duration;

pub struct ApiClient {
    pub addr: String,
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
}

impl ApiClient {
    /// `url` is `https://host:port` or `host:port`.
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        let addr = url.trim_start_matches("https://").trim_end_matches('/').to_string();
        let host =
            addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
        Self { server_name: host.to_string(), addr, tls, timeout: Duration::from_secs(120) }
    }

    /// One request; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
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
