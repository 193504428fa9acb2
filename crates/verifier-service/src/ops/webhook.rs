//! Revocation webhooks (Keylime's "revocation notifier"): when a host's verdict turns from
//! good (or pending, or unreachable) to failed — `rejected` or `policy_violation` — the
//! verifier POSTs one JSON event to every configured URL.
//!
//! Rounds never wait for a receiver: events go into a bounded queue (full: dropped with a
//! warning and counted), a background task delivers them, each URL with bounded retries
//! and exponential backoff. `https://` URLs are checked against `[webhooks] ca` only (no
//! system roots, like every other imasnap client), presenting `cert`/`key` when set;
//! `http://` is for tests and local relays.

use super::metrics::Metrics;
use crate::model::VerdictRow;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use imasnap_net::http::Conn;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

/// The event's `format`.
pub const EVENT_FORMAT: &str = "imasnap-revocation/1";
/// Deliveries in flight at once (across URLs and events).
const MAX_IN_FLIGHT: usize = 32;
/// Receivers' answers are read up to this many bytes (only the status matters).
const MAX_ANSWER: usize = 64 << 10;

fn d_attempts() -> u32 {
    5
}
fn d_retry() -> u64 {
    1000
}
fn d_timeout() -> u64 {
    10_000
}
fn d_queue() -> usize {
    1024
}

/// `[webhooks]` in `verifier.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Receivers, `https://host[:port]/path` (or `http://` for a local relay).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The CA that `https://` receivers' certificates chain to (required with one).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A client certificate and key to present to `https://` receivers (mutual TLS;
    /// both or neither). Without them the verifier presents none.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Tries per event and URL, the first included (at least 1).
    #[serde(default = "d_attempts")]
    pub attempts: u32,
    /// Wait before the first retry, milliseconds (`retry = "1s"`); doubled after each.
    #[serde(default = "d_retry")]
    pub retry_ms: u64,
    /// Connect and answer deadline per try, milliseconds (`timeout = "10s"`).
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Events waiting for delivery; past it new events are dropped (logged, counted).
    #[serde(default = "d_queue")]
    pub queue: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            attempts: d_attempts(),
            retry_ms: d_retry(),
            timeout_ms: d_timeout(),
            queue: d_queue(),
        }
    }
}

/// The JSON a receiver gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevocationEvent {
    pub format: String,
    /// Always `revocation`.
    pub event: String,
    pub host: String,
    /// `rejected` or `policy_violation`.
    pub verdict: String,
    /// The engine's failure kind, or `policy`.
    pub reason: Option<String>,
    /// The global index of the record the failure names, if any.
    pub record: Option<u64>,
    /// The file path of that record (policy violations).
    pub path: Option<String>,
    pub detail: Option<String>,
    /// When the verdict was reached, Unix milliseconds.
    pub verdict_at_ms: i64,
    /// The host's round number (its `rounds` count, this round included).
    pub round: u64,
    /// The host's status before this verdict (`pending`, `verified`, `error`).
    pub previous_status: String,
}

impl RevocationEvent {
    pub fn new(row: &VerdictRow, round: u64, previous_status: &str) -> Self {
        let first = row.policy_failures.first();
        Self {
            format: EVENT_FORMAT.into(),
            event: "revocation".into(),
            host: row.host.clone(),
            verdict: row.verdict.as_str().into(),
            reason: row.reason.clone(),
            record: row.record,
            path: first.and_then(|f| f.get("path")).and_then(|p| p.as_str()).map(String::from),
            detail: row.detail.clone(),
            verdict_at_ms: row.at_ms,
            round,
            previous_status: previous_status.into(),
        }
    }
}

/// Where one URL points.
#[derive(Clone, Debug)]
struct Target {
    url: String,
    tls: bool,
    host: String,
    authority: String,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let fail = |why: &str| format!("webhook URL {url:?}: {why}");
    let u: Uri = url.trim().parse().map_err(|e: hyper::http::uri::InvalidUri| fail(&e.to_string()))?;
    let tls = match u.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(fail("want https://host[:port]/path (or http:// for a local relay)")),
    };
    let auth = u.authority().ok_or_else(|| fail("no host"))?;
    if auth.as_str().contains('@') {
        return Err(fail("user information is not supported"));
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() {
        return Err(fail("no host"));
    }
    let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let path = u.path_and_query().map(|p| p.as_str().to_string()).filter(|p| !p.is_empty());
    Ok(Target { url: url.to_string(), tls, host, authority, path: path.unwrap_or_else(|| "/".into()) })
}

/// The sending side the rounds use; cheap to call, never blocks.
pub struct Webhooks {
    tx: Option<mpsc::Sender<RevocationEvent>>,
    metrics: Arc<Metrics>,
}

/// What a delivery task needs.
struct Delivery {
    targets: Vec<Target>,
    tls: Option<Arc<rustls::ClientConfig>>,
    cfg: WebhookConfig,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Checks the URLs (and the CA for `https://`) and, with any URL, starts the delivery
    /// task (it needs a Tokio runtime). Errors name the setting.
    pub fn start(cfg: &WebhookConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        if cfg.urls.is_empty() {
            return Ok(Self { tx: None, metrics });
        }
        let targets = cfg.urls.iter().map(|u| target(u)).collect::<Result<Vec<_>, _>>()?;
        let tls = if targets.iter().any(|t| t.tls) {
            let ca = cfg.ca.as_ref().ok_or("webhooks.ca: required for https:// URLs (no system roots are trusted)")?;
            let roots =
                imasnap_net::tls::roots_from_file(ca).map_err(|e| format!("webhooks.ca {}: {e}", ca.display()))?;
            let id = match (&cfg.cert, &cfg.key) {
                (Some(c), Some(k)) => {
                    Some(imasnap_net::tls::Identity::from_files(c, k).map_err(|e| format!("webhooks.cert/key: {e}"))?)
                }
                (None, None) => None,
                _ => return Err("webhooks: set both cert and key, or neither".into()),
            };
            Some(imasnap_net::tls::client_config(id.as_ref(), roots).map_err(|e| format!("webhooks TLS: {e}"))?)
        } else {
            None
        };
        let rt = tokio::runtime::Handle::try_current().map_err(|e| format!("webhooks need a Tokio runtime: {e}"))?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let d = Arc::new(Delivery { targets, tls, cfg: cfg.clone(), metrics: metrics.clone() });
        rt.spawn(deliver_all(d, rx));
        Ok(Self { tx: Some(tx), metrics })
    }

    /// Queues `ev` for every URL; when the queue is full it is dropped with a warning.
    pub fn send(&self, ev: RevocationEvent) {
        let Some(tx) = &self.tx else { return };
        tracing::info!(host = %ev.host, verdict = %ev.verdict, record = ev.record, "revocation event queued");
        if let Err(e) = tx.try_send(ev) {
            let (why, ev) = match e {
                mpsc::error::TrySendError::Full(ev) => ("queue full", ev),
                mpsc::error::TrySendError::Closed(ev) => ("delivery task stopped", ev),
            };
            tracing::warn!(host = %ev.host, record = ev.record, reason = why, "revocation event dropped");
            self.metrics.webhook("dropped");
        }
    }
}

async fn deliver_all(d: Arc<Delivery>, mut rx: mpsc::Receiver<RevocationEvent>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(ev) = rx.recv().await {
        let body = match serde_json::to_vec(&ev) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(host = %ev.host, error = %e, "revocation event not encoded");
                continue;
            }
        };
        for i in 0..d.targets.len() {
            // Waits here when MAX_IN_FLIGHT deliveries run: the queue absorbs the rest.
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (d, body, host) = (d.clone(), body.clone(), ev.host.clone());
            tokio::spawn(async move {
                let _permit = permit;
                deliver(&d, i, &host, body).await;
            });
        }
    }
}

/// One event to one URL, with bounded retries.
async fn deliver(d: &Delivery, i: usize, host: &str, body: Bytes) {
    let Some(t) = d.targets.get(i) else { return };
    let attempts = d.cfg.attempts.max(1);
    let mut wait = d.cfg.retry_ms;
    for n in 1..=attempts {
        match post(t, d.tls.as_ref(), body.clone(), Duration::from_millis(d.cfg.timeout_ms)).await {
            Ok(s) if s.is_success() => {
                tracing::info!(%host, url = %t.url, attempt = n, "revocation event delivered");
                d.metrics.webhook("delivered");
                return;
            }
            Ok(s) => tracing::warn!(%host, url = %t.url, attempt = n, status = %s, "revocation webhook refused"),
            Err(e) => tracing::warn!(%host, url = %t.url, attempt = n, error = %e, "revocation webhook failed"),
        }
        if n < attempts {
            // ±20 % so that receivers coming back are not hit by every verifier at once.
            let ms = rand::thread_rng().gen_range(wait.saturating_mul(8) / 10..=wait.saturating_mul(12) / 10);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            wait = wait.saturating_mul(2);
        }
    }
    tracing::error!(%host, url = %t.url, attempts, "revocation webhook gave up");
    d.metrics.webhook("gave_up");
}

/// POSTs `body` (JSON) to `t`; returns the receiver's status.
async fn post(
    t: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    body: Bytes,
    timeout: Duration,
) -> Result<StatusCode, String> {
    if t.tls {
        let cfg = tls.ok_or("no TLS configuration for an https:// URL")?;
        let name = imasnap_net::tls::server_name(&t.host).map_err(|e| e.to_string())?;
        let mut c = Conn::connect(&t.authority, name, cfg.clone(), timeout).await.map_err(|e| e.to_string())?;
        let (s, _) = c
            .request(Method::POST, &t.path, Some(body.to_vec()), MAX_ANSWER, timeout)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(s);
    }
    let fut = async {
        let tcp = TcpStream::connect(&t.authority).await.map_err(|e| format!("connect {}: {e}", t.authority))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(&t.path)
            .header("host", &t.authority)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
        let s = resp.status();
        // Drain a little of the answer so the receiver sees a clean exchange.
        let _ = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
        Ok(s)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("timed out after {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = target("https://hooks.example:8443/imasnap/revoked?k=1").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.authority.as_str(), t.path.as_str()),
            ("hooks.example", "hooks.example:8443", "/imasnap/revoked?k=1")
        );
        let t = target("http://[::1]/").unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str(), t.tls), ("[::1]:80", "/", false));
        assert_eq!(target("https://h").unwrap().authority, "h:443");
        assert!(target("ftp://h/x").unwrap_err().contains("ftp://h/x"));
        assert!(target("h:80").is_err());
        assert!(target("https://u@h/").is_err());
    }

    #[test]
    fn https_needs_a_ca() {
        let cfg = WebhookConfig { urls: vec!["https://h/x".into()], ..Default::default() };
        let e = Webhooks::start(&cfg, Arc::default()).err().unwrap();
        assert!(e.contains("webhooks.ca"), "{e}");
        // No URL: nothing to start, sending is a no-op (no runtime needed).
        let none = Webhooks::start(&WebhookConfig::default(), Arc::default()).unwrap();
        none.send(RevocationEvent::new(&VerdictRow::default(), 1, "verified"));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::default());
        let (tx, mut rx) = mpsc::channel(1);
        let w = Webhooks { tx: Some(tx), metrics: metrics.clone() };
        let ev = |h: &str| RevocationEvent::new(&VerdictRow { host: h.into(), ..Default::default() }, 1, "verified");
        w.send(ev("a"));
        w.send(ev("b")); // the queue holds one: dropped, never blocks
        let snap = super::super::metrics::Snapshot { hosts: [0; 6], hosts_backing_off: 0 };
        assert!(metrics.encode(&snap).contains("imasnap_verifier_webhook_events_total{outcome=\"dropped\"} 1"));
        assert_eq!(rx.try_recv().unwrap().host, "a");
        assert!(rx.try_recv().is_err());
    }
}
