//! The agent's HTTPS API. Every route requires a client certificate from the configured CA
//! that carries a role ([`agent_allows`]): `verifier` and `admin` may call every route,
//! `reader` only `GET /v1/health` and `GET /v1/metrics` (or `/metrics`); `agent`, no role or several are
//! refused (403).
//!
//! | route | |
//! |---|---|
//! | `GET /v1/health` | status and the metrics as JSON |
//! | `GET /v1/metrics`, `GET /metrics` | Prometheus text (the same; `/metrics` is where scrapers look by default) |
//! | `GET /v1/evidence?nonce=HEX&from=N\|latest[&boot=RC:SHA1][&max_bytes=N]` | quote + records (see [`crate::api`]) |
//! | `GET /v1/snapshots` | the current boot's manifest |
//! | `GET /v1/snapshots/{seq}` | one snapshot file |
//! | `POST /v1/snapshots[?crash_at=POINT]` | take a snapshot now (`crash_at` only with `test_endpoints`); rate-limited (429 with `Retry-After`) |
//! | `POST /v1/test/records?count=N` | workload: measure N events (`test_endpoints` only) |
//! | `POST /v1/test/measure` | `{"path", "digest"[, "xattr"]}` or `{"path", "buffer"}`: measure one file or buffer (`test_endpoints` only) |
//! | `GET /version`, `GET /v2.N/quotes/integrity\|identity` | Keylime's agent API, with `[keylime] enabled = true` ([`crate::keylime`]; `verifier` and `admin` roles) |

use crate::api;
use crate::config::{AgentServiceConfig, Backend};
use crate::host::{Host, HostError, HostOps, WorkloadCfg};
use crate::http::{self, error_response, json_response, param, query, text_response, Body, Handler, Peer};
use crate::keylime::{self, KeylimeSettings};
use crate::legacy::LegacyHost;
use crate::tls::{role_of, Role};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use imasnap_agent::{CrashPoint, SecurityFs};
use imasnap_agent::{Interface, InterfaceChoice, SnapshotKernel};
#[cfg(feature = "sim")]
use imasnap_kernel_model::{Config as KernelConfig, Kernel};
#[cfg(feature = "sim")]
use imasnap_tpm::SoftTpm;
use imasnap_tpm::Tpm;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type SharedHost = Arc<Mutex<Box<dyn HostOps>>>;

pub struct AgentService {
    host: SharedHost,
    max_evidence: u64,
    test_endpoints: bool,
    snapshot_limit: Mutex<RateLimit>,
    keylime: KeylimeSettings,
}

/// A token bucket: `burst` requests at once, then one per `every`. Guards
/// `POST /v1/snapshots`, which costs a TPM quote and fsyncs and trims the kernel's list:
/// any client the CA admits could otherwise call it in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotLimit {
    pub burst: u32,
    pub every: Duration,
}

impl Default for SnapshotLimit {
    fn default() -> Self {
        Self { burst: 10, every: Duration::from_secs(10) }
    }
}

#[derive(Debug)]
struct RateLimit {
    limit: SnapshotLimit,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(limit: SnapshotLimit) -> Self {
        Self { limit, tokens: f64::from(limit.burst), last: Instant::now() }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let every = self.limit.every.as_secs_f64();
        if every > 0.0 {
            let refill = now.saturating_duration_since(self.last).as_secs_f64() / every;
            self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        } else {
            self.tokens = f64::from(self.limit.burst.max(1));
        }
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) * every))
        }
    }
}

fn status_of(e: &HostError) -> StatusCode {
    match e {
        HostError::BadRequest(_) => StatusCode::BAD_REQUEST,
        // Another process holds the measurement files: try again shortly.
        HostError::Agent(imasnap_agent::AgentError::Kernel(imasnap_agent::KernelIfError::Busy(_))) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        HostError::Conflict(_) => StatusCode::CONFLICT,
        HostError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn crash_point(name: &str) -> Option<CrashPoint> {
    CrashPoint::ALL.into_iter().find(|p| format!("{p:?}").eq_ignore_ascii_case(name))
}

impl AgentService {
    pub fn new(host: SharedHost, opts: &Serve) -> Self {
        Self {
            host,
            max_evidence: opts.max_evidence,
            test_endpoints: opts.test_endpoints,
            snapshot_limit: Mutex::new(RateLimit::new(opts.snapshot_limit)),
            keylime: opts.keylime,
        }
    }

    /// Runs `f` on the host in the blocking pool (TPM commands, fsync).
    async fn with_host<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn HostOps) -> Result<T, HostError> + Send + 'static,
    ) -> Result<T, HostError> {
        let h = self.host.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = h.lock().unwrap_or_else(|p| p.into_inner());
            f(g.as_mut())
        })
        .await
        .map_err(|e| HostError::Other(format!("worker: {e}")))?
    }

    async fn evidence(&self, req: &Request<Incoming>) -> Response<Body> {
        let q = query(req);
        let nonce = match param(&q, "nonce").map(hex::decode) {
            Some(Ok(n)) => n,
            _ => return error_response(StatusCode::BAD_REQUEST, "nonce=HEX is required"),
        };
        let from = match param(&q, "from").map(api::From::parse) {
            None => api::From::Index(0),
            Some(Some(f)) => f,
            Some(None) => return error_response(StatusCode::BAD_REQUEST, "from must be an index or `latest`"),
        };
        let boot = match param(&q, "boot") {
            None => None,
            Some(b) => {
                let (rc, ba) = b.split_once(':').map_or((b, None), |(r, a)| (r, Some(a)));
                match (rc.parse::<u64>(), ba) {
                    (Ok(rc), None) => Some((rc, None)),
                    (Ok(rc), Some(a)) if a.len() == 40 && a.bytes().all(|c| c.is_ascii_hexdigit()) => {
                        Some((rc, Some(a.to_ascii_lowercase())))
                    }
                    _ => return error_response(StatusCode::BAD_REQUEST, "boot must be RESETCOUNT[:SHA1HEX]"),
                }
            }
        };
        let limit = match param(&q, "max_bytes").map(str::parse::<u64>) {
            None => self.max_evidence,
            Some(Ok(n)) => n.min(self.max_evidence),
            Some(Err(_)) => return error_response(StatusCode::BAD_REQUEST, "max_bytes must be a number"),
        };
        let view = match self.with_host(move |h| h.evidence(&nonce, from, boot)).await {
            Ok(v) => v,
            Err(e) => return error_response(status_of(&e), e),
        };
        let prefix = match api::encode_prefix(&view.header) {
            Ok(p) => p,
            Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        let total = view.header.body_len(prefix.len() - api::MAGIC.len() - 4);
        if total > limit {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({
                    "error": format!("evidence from record {} is {total} bytes, limit {limit}", view.header.from),
                    "bytes": total, "limit": limit,
                }),
            );
        }
        if view.files.is_empty() {
            // Nothing to read from disk (the usual incremental round): one body, no
            // blocking-pool hop.
            let mut b = prefix;
            b.extend_from_slice(&view.live);
            let mut r = http::response(StatusCode::OK, api::CONTENT_TYPE, http::full(b));
            r.headers_mut().insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(total));
            return r;
        }
        // Stream: prefix, each snapshot file (exactly the length announced), the live list.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let files = view.files;
        let live = view.live;
        tokio::task::spawn_blocking(move || {
            let send = |b: Vec<u8>| tx.blocking_send(Ok(Frame::data(Bytes::from(b)))).is_ok();
            if !send(prefix) {
                return;
            }
            for (p, off, len) in files {
                if let Err(e) = stream_file(&p, off, len, &send) {
                    tracing::error!(file = %p.display(), error = %e, "evidence stream aborted");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
            send(live);
        });
        let mut r = http::response(StatusCode::OK, api::CONTENT_TYPE, StreamBody::new(tokio_stream(rx)).boxed());
        r.headers_mut().insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(total));
        r
    }

    /// Keylime's agent API: answers in Keylime's envelope, errors included.
    async fn keylime(&self, req: &Request<Incoming>, path: &str) -> Response<Body> {
        let fail = |code: StatusCode, why: &str| {
            json_response(code, &keylime::envelope(code.as_u16(), why, serde_json::json!({})))
        };
        if req.method() != Method::GET {
            return fail(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
        }
        let s = self.keylime;
        let q = query(req);
        let parsed = match keylime::route(&s, path) {
            Err(why) => return fail(StatusCode::BAD_REQUEST, &why),
            Ok(None) => return fail(StatusCode::NOT_FOUND, &format!("no Keylime route {path} on an imasnap agent")),
            Ok(Some(keylime::Route::Version)) => {
                let v = s.versions();
                let r = serde_json::json!({ "supported_version": v.last(), "supported_versions": v });
                return json_response(StatusCode::OK, &keylime::envelope(200, "Success", r));
            }
            Ok(Some(keylime::Route::Integrity)) => keylime::parse_integrity(&q),
            Ok(Some(keylime::Route::Identity)) => keylime::parse_identity(&q),
        };
        let kq = match parsed {
            Ok(k) => k,
            Err(why) => return fail(StatusCode::BAD_REQUEST, &why),
        };
        let kr = keylime::QuoteRequest::new(&kq, s.hash, self.max_evidence);
        let ev = match self.with_host(move |h| h.keylime_quote(&kr)).await {
            Ok(ev) => ev,
            Err(e) => return fail(status_of(&e), &e.to_string()),
        };
        match keylime::results(&ev, &kq, s.hash) {
            Ok(r) => json_response(StatusCode::OK, &keylime::envelope(200, "Success", r)),
            Err(why) => fail(StatusCode::INTERNAL_SERVER_ERROR, &why),
        }
    }

    async fn snapshot_get(&self, seq: &str) -> Response<Body> {
        let Ok(seq) = seq.parse::<u64>() else {
            return error_response(StatusCode::BAD_REQUEST, "snapshot number must be decimal");
        };
        let found = {
            let g = self.host.lock().unwrap_or_else(|p| p.into_inner());
            g.snapshot_file(seq)
        };
        let Some((path, entry)) = found else {
            return error_response(StatusCode::NOT_FOUND, format!("no snapshot {seq} in the current boot"));
        };
        match tokio::task::spawn_blocking(move || std::fs::read(&path)).await {
            Ok(Ok(b)) => {
                // The manifest's text goes into a header: refuse what a header cannot hold.
                let Ok(sha) = HeaderValue::from_str(&entry.sha256) else {
                    return error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("snapshot {seq}: manifest sha256 {:?} is not header text", entry.sha256),
                    );
                };
                let mut r = http::response(StatusCode::OK, "application/octet-stream", http::full(b));
                let h = r.headers_mut();
                h.insert("x-imasnap-first-index", HeaderValue::from(entry.first_index));
                h.insert("x-imasnap-count", HeaderValue::from(entry.count));
                h.insert("x-imasnap-sha256", sha);
                r
            }
            Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let role = match authorize(peer.cert.as_deref(), &method, &path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %peer.addr, %method, %path, reason = %e, "request refused");
                return error_response(StatusCode::FORBIDDEN, e);
            }
        };
        tracing::debug!(peer = %peer.addr, %role, %method, %path, "request");
        if self.keylime.enabled && keylime::is_keylime_path(&path) {
            return self.keylime(&req, &path).await;
        }
        let test = self.test_endpoints;
        match (&method, path.as_str()) {
            (&Method::GET, "/v1/health") => {
                let m = self.with_host(|h| Ok((h.mode(), h.metrics()))).await;
                match m {
                    Ok((mode, m)) => json_response(
                        StatusCode::OK,
                        &serde_json::json!({ "status": "ok", "mode": mode, "metrics": m }),
                    ),
                    Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, e),
                }
            }
            (&Method::GET, "/v1/metrics" | "/metrics") => match self.with_host(|h| Ok(h.metrics())).await {
                Ok(m) => text_response(StatusCode::OK, "text/plain; version=0.0.4", m.prometheus()),
                Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, e),
            },
            (&Method::GET, "/v1/evidence") => self.evidence(&req).await,
            (&Method::GET, "/v1/enrolment") => match self.with_host(crate::enrol::present).await {
                Ok(p) => json_response(StatusCode::OK, &p),
                Err(e) => error_response(status_of(&e), e),
            },
            (&Method::POST, "/v1/enrolment/activate") => {
                let body = match http::read_limited(req.into_body(), 64 << 10).await {
                    Ok(b) => b,
                    Err(e) => return error_response(StatusCode::PAYLOAD_TOO_LARGE, e),
                };
                let r: imasnap_wire::enrolment::ActivateRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("request body: {e}")),
                };
                match self.with_host(move |h| crate::enrol::activate(h, &r)).await {
                    Ok(a) => json_response(StatusCode::OK, &a),
                    Err(e) => error_response(status_of(&e), e),
                }
            }
            (&Method::GET, "/v1/snapshots") => {
                let m = self.host.lock().unwrap_or_else(|p| p.into_inner()).manifest();
                json_response(StatusCode::OK, &m)
            }
            (&Method::GET, p) if p.starts_with("/v1/snapshots/") => {
                self.snapshot_get(p.trim_start_matches("/v1/snapshots/")).await
            }
            (&Method::POST, "/v1/snapshots") => {
                let limited = self.snapshot_limit.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now());
                if let Err(wait) = limited {
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    tracing::warn!(peer = %peer.addr, retry_after = secs, "snapshot request rate-limited");
                    let mut r = error_response(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("snapshot requests are rate-limited; retry in {secs} s"),
                    );
                    r.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(secs.max(1)));
                    return r;
                }
                let q = query(&req);
                let crash = match param(&q, "crash_at") {
                    None => None,
                    Some(_) if !test => {
                        return error_response(StatusCode::FORBIDDEN, "crash_at needs test_endpoints = true")
                    }
                    Some(n) => match crash_point(n) {
                        Some(p) => Some(p),
                        None => return error_response(StatusCode::BAD_REQUEST, format!("unknown crash point {n:?}")),
                    },
                };
                match self.with_host(move |h| h.snapshot(crash)).await {
                    Ok(Some(e)) => json_response(StatusCode::OK, &serde_json::json!({ "snapshot": e })),
                    Ok(None) => json_response(
                        StatusCode::OK,
                        &serde_json::json!({ "snapshot": null, "crashed_at": crash.map(|p| format!("{p:?}")),
                                             "restarted": true }),
                    ),
                    Err(e) => error_response(StatusCode::CONFLICT, e),
                }
            }
            (&Method::POST, "/v1/test/records") if test => {
                let q = query(&req);
                let n = param(&q, "count").and_then(|c| c.parse::<u64>().ok()).unwrap_or(1).min(1_000_000);
                match self.with_host(move |h| h.add_records(n)).await {
                    Ok(added) => json_response(StatusCode::OK, &serde_json::json!({ "events": n, "appended": added })),
                    Err(e) => error_response(status_of(&e), e),
                }
            }
            (&Method::POST, "/v1/test/measure") if test => {
                let body = match http::read_limited(req.into_body(), 64 << 10).await {
                    Ok(b) => b,
                    Err(e) => return error_response(StatusCode::PAYLOAD_TOO_LARGE, e),
                };
                #[derive(serde::Deserialize)]
                struct M {
                    path: String,
                    #[serde(default)]
                    digest: String,
                    /// The file's `security.ima` xattr (hex), e.g. an evmctl v2 signature.
                    #[serde(default)]
                    xattr: Option<String>,
                    /// A buffer measurement instead (ima-buf, `path` is its name: a keyring
                    /// for a key), hex.
                    #[serde(default)]
                    buffer: Option<String>,
                }
                let m: M = match serde_json::from_slice(&body) {
                    Ok(m) => m,
                    Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
                };
                if let Some(b) = &m.buffer {
                    let Ok(b) = hex::decode(b) else {
                        return error_response(StatusCode::BAD_REQUEST, "buffer must be hex");
                    };
                    return match self.with_host(move |h| h.measure_buffer(m.path.as_bytes(), &b)).await {
                        Ok(added) => json_response(StatusCode::OK, &serde_json::json!({ "appended": added })),
                        Err(e) => error_response(status_of(&e), e),
                    };
                }
                let Ok(d) = hex::decode(&m.digest) else {
                    return error_response(StatusCode::BAD_REQUEST, "digest must be hex");
                };
                let x = match m.xattr.as_deref().map(hex::decode).transpose() {
                    Ok(x) => x,
                    Err(_) => return error_response(StatusCode::BAD_REQUEST, "xattr must be hex"),
                };
                match self.with_host(move |h| h.measure(m.path.as_bytes(), &d, x.as_deref())).await {
                    Ok(added) => json_response(StatusCode::OK, &serde_json::json!({ "appended": added })),
                    Err(e) => error_response(status_of(&e), e),
                }
            }
            _ => error_response(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }
}

impl Handler for AgentService {
    fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>> {
        Box::pin(self.route(req, peer))
    }
}

fn stream_file(p: &Path, off: u64, len: u64, send: &dyn Fn(Vec<u8>) -> bool) -> std::io::Result<()> {
    use std::io::Seek;
    let mut f = std::fs::File::open(p)?;
    f.seek(std::io::SeekFrom::Start(off))?;
    let mut f = f.take(len);
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; (256 << 10).min(left as usize)];
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(format!("{} shrank while being sent", p.display())));
        }
        buf.truncate(n);
        left -= n as u64;
        if !send(buf) {
            return Ok(());
        }
    }
    Ok(())
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------------------------------
// Start-up

/// The soft TPM of the embedded kernel model: a process start is a cold boot of the
/// simulated machine, so resetCount counts starts (kept in `<state_dir>/model-boots`).
#[cfg(feature = "sim")]
fn soft_tpm(spec: &str, state_dir: &Path) -> anyhow::Result<SoftTpm> {
    let seed = match spec.strip_prefix("soft:seed=") {
        Some(s) => s.parse::<u64>().map_err(|_| anyhow::anyhow!("bad TPM spec {spec:?}"))?,
        None => 0,
    };
    std::fs::create_dir_all(state_dir)?;
    let counter = state_dir.join("model-boots");
    let boots: u64 = std::fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let tmp = state_dir.join(".model-boots.tmp");
    std::fs::write(&tmp, format!("{}\n", boots + 1))?;
    std::fs::rename(&tmp, &counter)?;
    let mut t = SoftTpm::new(seed);
    for _ in 0..boots {
        t.reset();
    }
    Ok(t)
}

/// Builds the host from the configuration (kernel back end, TPM, store recovery).
pub fn open_host(cfg: &AgentServiceConfig) -> anyhow::Result<Box<dyn HostOps>> {
    let wcfg = WorkloadCfg {
        seed: cfg.workload.seed,
        records_per_second: cfg.workload.records_per_second,
        records_per_evidence: cfg.workload.records_per_evidence,
    };
    match cfg.backend {
        #[cfg(not(feature = "sim"))]
        Backend::Model => {
            let _ = wcfg;
            anyhow::bail!(
                "backend = \"model\" (the in-process kernel model) needs imasnap-agent-server built with \
                 the cargo feature `sim`; use backend = \"securityfs\" on a real kernel"
            )
        }
        #[cfg(feature = "sim")]
        Backend::Model => {
            let tpm: Box<dyn Tpm> = if cfg.tpm == "soft" || cfg.tpm.starts_with("soft:") {
                Box::new(soft_tpm(&cfg.tpm, &cfg.state_dir)?)
            } else {
                let mut t = imasnap_tpm::open_tpm(&cfg.tpm)?;
                imasnap_sim::run::check_fresh(&mut t, cfg.pcr)?;
                t
            };
            let kcfg = KernelConfig { pcr: cfg.pcr, template: cfg.ima_template.clone(), ..KernelConfig::default() };
            if imasnap_log::Template::parse(&cfg.ima_template).is_err() {
                anyhow::bail!("ima_template {:?} is not a kernel built-in template", cfg.ima_template);
            }
            let k = Kernel::boot(kcfg, tpm)?;
            tracing::info!(mode = "model", template = %cfg.ima_template, "agent back end: the in-process kernel model");
            Ok(Box::new(Host::start(k, cfg.agent_config(), wcfg)?))
        }
        Backend::Securityfs => {
            if let Some(m) = cfg.missing_on_this_machine() {
                anyhow::bail!(m);
            }
            if cfg.tpm == "soft" || cfg.tpm.starts_with("soft:") {
                anyhow::bail!(
                    "backend = \"securityfs\" needs the TPM the kernel extends (swtpm:…, device:…, tabrmd), \
                     not the soft TPM {:?}",
                    cfg.tpm
                );
            }
            open_securityfs(cfg, imasnap_tpm::open_tpm(&cfg.tpm)?)
        }
    }
}

/// A real kernel's securityfs at `cfg.ima_dir` with `tpm` (the TPM its IMA extends). The
/// interface (`interface` in agent.toml, `auto` by default): the RFC `snapshot` file
/// (`securityfs-snapshot`), upstream staging (`securityfs-staging`), or neither: legacy
/// read-only mode with the agent's own copy (`securityfs-legacy`).
///
/// A forced interface the kernel lacks is an error at start that names the missing file
/// (the service and `imasnap agent snapshot` both go through [`resolve_interface`]).
/// The interface `choice` names on this kernel; an error naming the missing file when a
/// forced one is absent.
pub fn resolve_interface<T: Tpm>(fs: &mut SecurityFs<T>, choice: InterfaceChoice) -> anyhow::Result<Interface> {
    let interface = match choice {
        InterfaceChoice::Auto => fs.interface(),
        InterfaceChoice::Snapshot => Interface::Snapshot,
        InterfaceChoice::Staging => Interface::Staging,
        InterfaceChoice::Legacy => Interface::Legacy,
    };
    let dir = fs.dir().display();
    match interface {
        Interface::Snapshot if !fs.can_snapshot() => {
            anyhow::bail!("interface = \"snapshot\": {dir}/snapshot does not exist (CONFIG_IMA_LOG_SNAPSHOT)")
        }
        Interface::Staging if !fs.can_stage() => {
            anyhow::bail!(
                "interface = \"staging\": {dir}/{} does not exist (CONFIG_IMA_STAGING)",
                imasnap_agent::securityfs::STAGED_FILE
            )
        }
        i => Ok(i),
    }
}

pub fn open_securityfs<T: Tpm + 'static>(cfg: &AgentServiceConfig, tpm: T) -> anyhow::Result<Box<dyn HostOps>> {
    let mut fs = SecurityFs::new(&cfg.ima_dir, tpm, cfg.pcr);
    let interface = resolve_interface(&mut fs, cfg.interface)?;
    let dir = cfg.ima_dir.display();
    match interface {
        Interface::Legacy => {
            tracing::info!(mode = "securityfs-legacy", ima_dir = %dir,
                "agent back end: legacy read-only mode (own copy of the list, no trimming)");
            Ok(Box::new(LegacyHost::open(fs, &cfg.agent_config())?))
        }
        i => {
            let mut acfg = cfg.agent_config();
            acfg.interface = match i {
                Interface::Staging => InterfaceChoice::Staging,
                _ => InterfaceChoice::Snapshot,
            };
            tracing::info!(mode = %format!("securityfs-{}", i.as_str()), ima_dir = %dir, staging = ?cfg.staging,
                "agent back end: the kernel's list is trimmed");
            Ok(Box::new(Host::start(fs, acfg, WorkloadCfg::default())?))
        }
    }
}

/// Whether a client with `role` may call `method path` on the agent. Evidence costs a TPM
/// quote and snapshots change the host, so they need the verifier (or an operator); a
/// reader (a metrics scraper) sees health and metrics only; Keylime's routes are quotes,
/// so only the verifier and admin roles reach them. Another host's agent
/// certificate is never a client: it would let one attested host drive another.
pub fn agent_allows(role: Role, method: &Method, path: &str) -> bool {
    match role {
        Role::Verifier | Role::Admin => true,
        Role::Reader => *method == Method::GET && matches!(path, "/v1/health" | "/v1/metrics" | "/metrics"),
        Role::Agent => false,
    }
}

fn authorize(cert_der: Option<&[u8]>, method: &Method, path: &str) -> Result<Role, String> {
    let role = role_of(cert_der.ok_or("no client certificate")?)?;
    if agent_allows(role, method, path) {
        Ok(role)
    } else if role == Role::Agent {
        Err("role agent is not a client of the agent API (it is an attested host's identity)".into())
    } else {
        Err(format!("role {role} may not call {method} {path} on the agent"))
    }
}

/// A running agent service (`service` is the host it serves).
pub type Running = http::Running<SharedHost>;

/// How [`spawn`] serves a host: the knobs of `agent.toml` that the server loop uses.
#[derive(Clone, Copy, Debug)]
pub struct Serve {
    /// Largest evidence body answered (413 above it).
    pub max_evidence: u64,
    /// `/v1/test/*` and `crash_at` fault injection.
    pub test_endpoints: bool,
    /// How often the snapshot policy and workload run; zero: never (tests drive them).
    pub tick: Duration,
    pub snapshot_limit: SnapshotLimit,
    /// `[keylime]`: Keylime's agent API on the same listener.
    pub keylime: KeylimeSettings,
}

impl Default for Serve {
    /// 64 MiB bodies, no test endpoints, no ticker, the default snapshot request limit.
    fn default() -> Self {
        Self {
            max_evidence: 64 << 20,
            test_endpoints: false,
            tick: Duration::ZERO,
            snapshot_limit: SnapshotLimit::default(),
            keylime: KeylimeSettings::default(),
        }
    }
}

impl Serve {
    pub fn from_config(cfg: &AgentServiceConfig) -> Self {
        Self {
            max_evidence: cfg.max_evidence_bytes,
            test_endpoints: cfg.test_endpoints,
            tick: Duration::from_millis(cfg.tick_ms),
            snapshot_limit: SnapshotLimit {
                burst: cfg.snapshot_request_burst,
                every: Duration::from_millis(cfg.snapshot_request_interval_ms),
            },
            // Checked when the file was read (`AgentServiceConfig::from_toml`).
            keylime: cfg.keylime.settings().unwrap_or_default(),
        }
    }
}

/// Serves `host` on `listener` and runs its ticker, until [`Running::stop`].
pub fn spawn(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    host: Box<dyn HostOps>,
    opts: Serve,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let host: SharedHost = Arc::new(Mutex::new(host));
    let (tx, rx) = watch::channel(false);
    let svc = Arc::new(AgentService::new(host.clone(), &opts));
    let tick = opts.tick;
    let server = tokio::spawn(http::serve(listener, tls, svc, rx.clone()));
    let mut tasks = vec![server];
    if !tick.is_zero() {
        let h = host.clone();
        let mut rx = rx;
        tasks.push(tokio::spawn(async move {
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = iv.tick() => {}
                    _ = rx.changed() => return,
                }
                let h = h.clone();
                let r = tokio::task::spawn_blocking(move || {
                    h.lock().unwrap_or_else(|p| p.into_inner()).tick(Instant::now())
                })
                .await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "tick");
                }
            }
        }));
    }
    Ok(Running { addr, service: host, shutdown: tx, tasks })
}

/// `imasnap agent run`: the whole service until SIGINT/SIGTERM.
pub async fn run(cfg: AgentServiceConfig) -> anyhow::Result<()> {
    // Before anything is announced: see `shutdown_signal`.
    let stop = shutdown_signal();
    let tls = cfg.tls.server()?;
    let host = open_host(&cfg)?;
    let listener = TcpListener::bind(&cfg.listen).await.map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
    let running = spawn(listener, tls, host, Serve::from_config(&cfg))?;
    tracing::info!(addr = %running.addr, backend = ?cfg.backend, tpm = %cfg.tpm, state_dir = %cfg.state_dir.display(),
        "agent service listening");
    if cfg.keylime.enabled {
        tracing::info!(versions = ?cfg.keylime.api_versions, hash_alg = %cfg.keylime.hash_alg,
            "Keylime agent API on the same listener (PCR 16 is reset before each Keylime quote)");
    }
    // One line on stdout for scripts and tests: the bound address.
    println!("listening on {}", running.addr);
    let mounted = match &cfg.mount {
        Some(m) => {
            let ima = (cfg.backend == crate::config::Backend::Securityfs).then(|| cfg.ima_dir.clone());
            let v = crate::mount::mount_host(running.service.clone(), m, ima)?;
            tracing::info!(mountpoint = %v.mountpoint.display(), source = %v.source, "whole-log view mounted");
            println!("mounted {}", v.mountpoint.display());
            Some(v)
        }
        None => None,
    };
    imasnap_net::notify::ready();
    stop.await;
    imasnap_net::notify::stopping();
    tracing::info!("shutting down");
    if let Some(v) = mounted {
        if let Err(e) = v.unmount() {
            tracing::warn!(error = %e, "unmount");
        }
    }
    running.stop().await;
    Ok(())
}

/// SIGINT or SIGTERM (kept here for callers of this path).
pub use imasnap_net::shutdown_signal;

#[cfg(test)]
mod tests {
    use super::*;

    fn model_cfg() -> AgentServiceConfig {
        let dir = std::env::temp_dir().join(format!("imasnap-agent-server-{}", std::process::id()));
        let mut c = AgentServiceConfig::from_toml(
            "backend = \"model\"\ntpm = \"soft\"\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nca = \"/ca.pem\"\n",
        )
        .unwrap();
        c.state_dir = dir;
        c
    }

    /// Without the `sim` feature the model back end is refused by name (and the crate
    /// links no kernel model or simulator: see `cargo tree -p imasnap-agent-server`).
    #[cfg(not(feature = "sim"))]
    #[test]
    fn finding_10_model_backend_needs_the_sim_feature() {
        let e = open_host(&model_cfg()).err().unwrap().to_string();
        assert!(e.contains("cargo feature `sim`"), "{e}");
    }

    #[cfg(feature = "sim")]
    #[test]
    fn finding_10_model_backend_with_the_sim_feature() {
        let cfg = model_cfg();
        let mut h = open_host(&cfg).unwrap();
        assert_eq!(h.mode(), "model");
        assert!(h.add_records(3).unwrap() > 0);
        let _ = std::fs::remove_dir_all(&cfg.state_dir);
    }

    #[test]
    fn finding_4_snapshot_requests_rate_limited() {
        let mut r = RateLimit::new(SnapshotLimit { burst: 2, every: Duration::from_secs(10) });
        let t0 = r.last;
        assert!(r.take(t0).is_ok());
        assert!(r.take(t0).is_ok());
        let wait = r.take(t0).unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(10), "{wait:?}");
        let wait = r.take(t0 + Duration::from_secs(5)).unwrap_err();
        assert!(wait <= Duration::from_secs(5), "{wait:?}");
        assert!(r.take(t0 + Duration::from_secs(11)).is_ok());
        // No interval: unlimited.
        let mut free = RateLimit::new(SnapshotLimit { burst: 1, every: Duration::ZERO });
        assert!((0..100).all(|_| free.take(t0).is_ok()));
    }
}
