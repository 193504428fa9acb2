//! HTTP/1.1 over mutual TLS, shared by both services: an accept loop for servers and a
//! keep-alive connection for clients. Bodies are size-limited on every read.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Who is on the other end of an accepted connection (already authenticated by mTLS).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// DER of the client's end-entity certificate.
    pub cert: Option<Vec<u8>>,
}

/// A request handler: gets the request and the authenticated peer.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>>;
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A response with `status`, a `content-type` and `body`. Built from typed parts, so
/// it cannot fail the way `Response::builder` can.
pub fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

pub fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    response(status, "application/json", full(b))
}

pub fn error_response(status: StatusCode, msg: impl std::fmt::Display) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": msg.to_string(), "status": status.as_u16() }))
}

pub fn text_response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    response(status, content_type, full(body))
}

/// Reads a request or response body, refusing more than `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(format!("body exceeds the limit of {limit} bytes"))
            } else {
                Err(format!("reading body: {e}"))
            }
        }
    }
}

/// Parses `a=b&c=d` (no percent-decoding: every parameter this project uses is hex,
/// decimal or a plain word).
pub fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Handshake timeout: a client that connects and says nothing is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A service started by [`serve`]'s callers: where it listens, what it serves (`service`),
/// and its tasks, all stopped by [`Running::stop`].
pub struct Running<S> {
    pub addr: SocketAddr,
    pub service: S,
    pub shutdown: watch::Sender<bool>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<S> Running<S> {
    /// Signals shutdown and waits for every task to end.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Serves `handler` on `listener` with TLS `cfg` until `shutdown` turns true.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(cfg);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
            let peer = Peer { addr, cert };
            let svc = hyper::service::service_fn(move |req| {
                let h = handler.clone();
                let p = peer.clone();
                async move { Ok::<_, Infallible>(h.handle(req, p).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
}

/// A keep-alive HTTPS connection to one server.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// DER of the server's end-entity certificate.
    pub server_cert: Option<Vec<u8>>,
    authority: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("TLS with {addr}: {detail}")]
    Tls { addr: String, detail: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the answer's content-length {declared} exceeds the limit of {limit} bytes")]
    TooLarge { declared: u64, limit: usize },
}

impl Conn {
    pub async fn connect(
        addr: &str,
        name: ServerName<'static>,
        cfg: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        let fut = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| ConnError::Connect { addr: addr.into(), detail: e.to_string() })?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| ConnError::Tls { addr: addr.into(), detail: e.to_string() })?;
            let server_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ConnError::Http(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Self { sender, server_cert, authority: addr.to_string() })
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| ConnError::Timeout(timeout))?
    }

    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends one request; returns the status and the body (at most `limit` bytes).
    pub async fn request(
        &mut self,
        method: hyper::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ConnError> {
        let fut = async {
            self.sender.ready().await.map_err(|e| ConnError::Http(e.to_string()))?;
            let mut b = Request::builder().method(method).uri(path_and_query).header("host", &self.authority);
            if body.is_some() {
                b = b.header("content-type", "application/json");
            }
            let req =
                b.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| ConnError::Http(e.to_string()))?;
            let resp = self.sender.send_request(req).await.map_err(|e| ConnError::Http(e.to_string()))?;
            let status = resp.status();
            // Refused on the header, before any of a body announced too large is read.
            let declared = resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
            if let Some(n) = declared.and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > limit as u64) {
                return Err(ConnError::TooLarge { declared: n, limit });
            }
            let bytes = read_limited(resp.into_body(), limit).await.map_err(ConnError::Http)?;
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| ConnError::Timeout(timeout))?
    }
}
