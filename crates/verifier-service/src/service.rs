//! The verifier service: host registry (SQLite-backed, cached in memory), the scheduler
//! that polls every agent with bounded concurrency, and the REST API.
//!
//! REST API (mutual TLS; every route needs a client certificate from the configured CA):
//!
//! | route | |
//! |---|---|
//! | `GET /v1/health` | status, host count, rounds |
//! | `GET /v1/hosts` | every host's status |
//! | `POST /v1/hosts` | register ([`HostSpec`] JSON); 409 if the name exists |
//! | `GET /v1/hosts/{name}` | one host's status ([`HostStatus`]) |
//! | `PATCH /v1/hosts/{name}` | update ([`crate::model::HostPatch`]); a new AK or late-join policy resets the state |
//! | `DELETE /v1/hosts/{name}` | remove the host, its state and history |
//! | `GET /v1/hosts/{name}/verdicts?limit=N` | verdict history, newest first |
//! | `POST /v1/hosts/{name}/attest` | run a round now and return its verdict |

use crate::attest::{self, request_from};
use crate::db::{Db, Op, RoundWrite, StoredState};
use crate::model::{parse_ak, pinned_der, HostPatch, HostSpec, HostStatus, VerdictRow};
use crate::policy::{self, LoadedPolicy};
use crate::VerifierConfig;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use imasnap_net::http::{self, error_response, json_response, param, query, Body, Conn, Handler, Peer};
use imasnap_policy::KeyRing;
use imasnap_tpm::AkPublic;
use imasnap_verifier::State;
use rand::RngCore;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// In-memory view of one host (the database is the source of truth at start-up).
struct HostRt {
    spec: HostSpec,
    policy: Option<Arc<LoadedPolicy>>,
    state: Option<State>,
    /// Keys learned from the log (Keylime keyring semantics), saved with the state.
    learned: Arc<KeyRing>,
    ak: Option<AkPublic>,
    ak_pem: Option<String>,
    ak_source: Option<String>,
    accepted_marker: Option<serde_json::Value>,
    status: String,
    rounds: u64,
    last: Option<VerdictRow>,
    alert: Option<VerdictRow>,
    next_due: Instant,
    busy: bool,
    conn: Option<Conn>,
    /// Bumped by every registration change: a round that started before it does not
    /// save its result over the change.
    generation: u64,
}

impl HostRt {
    fn new(spec: HostSpec, stored: StoredState) -> Result<Self, String> {
        let policy = spec.policy.as_deref().map(policy::load).transpose()?.map(Arc::new);
        let state = stored.state.as_deref().map(State::from_json).transpose()?;
        let learned =
            Arc::new(stored.learned_keys.as_deref().map(policy::keys_from_json).transpose()?.unwrap_or_default());
        let (ak, ak_pem, ak_source) = match (&stored.ak_pem, &spec.ak) {
            (Some(p), _) => (Some(parse_ak(p)?), Some(p.clone()), stored.ak_source.clone()),
            (None, Some(a)) => {
                let k = parse_ak(a)?;
                let pem = k.to_pem();
                (Some(k), Some(pem), Some("registered".into()))
            }
            (None, None) => (None, None, None),
        };
        Ok(Self {
            spec,
            policy,
            state,
            learned,
            ak,
            ak_pem,
            ak_source,
            accepted_marker: stored.accepted_marker.as_deref().and_then(|s| serde_json::from_str(s).ok()),
            status: stored.status,
            rounds: stored.rounds,
            last: None,
            alert: stored.alert.as_deref().and_then(|s| serde_json::from_str(s).ok()),
            next_due: Instant::now(),
            busy: false,
            conn: None,
            generation: 0,
        })
    }

    fn status(&self) -> HostStatus {
        HostStatus {
            spec: self.spec.clone(),
            status: self.status.clone(),
            ak_source: self.ak_source.clone(),
            ak_enrolled_pem: self.ak_pem.clone(),
            checkpoint: self.state.as_ref().map(|s| s.checkpoint),
            reset_count: self.state.as_ref().map(|s| s.boot.reset_count),
            boot_aggregate_sha1: self.state.as_ref().and_then(|s| s.boot.boot_aggregate_sha1.map(hex::encode)),
            history_verified: self.state.as_ref().map(|s| s.history_verified),
            verified_snapshots: self.state.as_ref().map(|s| s.verified_snapshots),
            accepted_marker: self.accepted_marker.clone(),
            rounds: self.rounds,
            last: self.last.clone(),
            alert: self.alert.clone(),
            learned_keys: policy::keys_to_stored(&self.learned),
        }
    }
}

/// Counters for `/v1/health` and the load test.
#[derive(Default)]
pub struct Stats {
    pub rounds: AtomicU64,
    pub verified: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Verifier {
    cfg: VerifierConfig,
    db: Db,
    hosts: Mutex<HashMap<String, HostRt>>,
    agent_tls: Arc<rustls::ClientConfig>,
    sem: Arc<Semaphore>,
    pub stats: Stats,
    /// Per-round latency samples (milliseconds) for the load test; cleared by the reader.
    pub latencies: Mutex<Vec<f64>>,
    pub record_latencies: bool,
}

type Shared = Arc<Verifier>;

impl Verifier {
    pub fn open(cfg: VerifierConfig, agent_tls: Arc<rustls::ClientConfig>) -> Result<Shared, String> {
        if let Some(d) = cfg.database.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
        }
        let db = Db::open(&cfg.database, cfg.sqlite_synchronous_full)?;
        let mut hosts = HashMap::new();
        for (spec, stored) in db.load()? {
            let name = spec.name.clone();
            match HostRt::new(spec, stored) {
                Ok(h) => {
                    hosts.insert(name, h);
                }
                Err(e) => tracing::error!(host = %name, error = %e, "stored host unusable; skipped"),
            }
        }
        // Last verdicts for the status view.
        for (name, h) in hosts.iter_mut() {
            h.last = db.verdicts(name, 1)?.into_iter().next();
        }
        tracing::info!(hosts = hosts.len(), db = %cfg.database.display(), "verifier state loaded");
        let sem = Arc::new(Semaphore::new(cfg.max_concurrency.max(1)));
        Ok(Arc::new(Self {
            cfg,
            db,
            hosts: Mutex::new(hosts),
            agent_tls,
            sem,
            stats: Stats::default(),
            latencies: Mutex::new(Vec::new()),
            record_latencies: false,
        }))
    }

    pub fn with_latency_recording(self: Shared) -> Shared {
        // Only valid before the scheduler starts: the Arc is unique then.
        match Arc::try_unwrap(self) {
            Ok(mut v) => {
                v.record_latencies = true;
                Arc::new(v)
            }
            Err(a) => a,
        }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostRt>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn host_status(&self, name: &str) -> Option<HostStatus> {
        self.hosts().get(name).map(HostRt::status)
    }

    pub fn list(&self) -> Vec<HostStatus> {
        let mut v: Vec<_> = self.hosts().values().map(HostRt::status).collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }

    pub async fn add_host(&self, spec: HostSpec) -> Result<HostStatus, (StatusCode, String)> {
        spec.validate().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        if self.hosts().contains_key(&spec.name) {
            return Err((StatusCode::CONFLICT, format!("host {} exists", spec.name)));
        }
        let rt = HostRt::new(spec.clone(), StoredState { status: "pending".into(), ..Default::default() })
            .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        self.db
            .write(Op::PutHost { spec: spec.clone(), reset_state: true, now_ms: now_ms() })
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let st = rt.status();
        self.hosts().insert(spec.name.clone(), rt);
        tracing::info!(host = %spec.name, address = %spec.address, tofu = spec.tofu, late_join = spec.late_join.as_str(), "host registered");
        Ok(st)
    }

    pub async fn update_host(&self, name: &str, patch: HostPatch) -> Result<HostStatus, (StatusCode, String)> {
        let old =
            self.hosts().get(name).map(|h| h.spec.clone()).ok_or((StatusCode::NOT_FOUND, format!("no host {name}")))?;
        let mut spec = old.clone();
        spec.apply(patch);
        spec.validate().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        // A different trust root or late-join choice invalidates what was proven.
        let reset = spec.ak != old.ak || spec.tofu != old.tofu || spec.late_join != old.late_join;
        let policy = spec.policy.as_deref().map(policy::load).transpose().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        self.db
            .write(Op::PutHost { spec: spec.clone(), reset_state: reset, now_ms: now_ms() })
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let mut hosts = self.hosts();
        let h = hosts.get_mut(name).ok_or((StatusCode::NOT_FOUND, format!("no host {name}")))?;
        h.generation += 1;
        h.conn = None;
        h.alert = None;
        if reset {
            let fresh = HostRt::new(spec.clone(), StoredState { status: "pending".into(), ..Default::default() })
                .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
            let g = h.generation;
            *h = fresh;
            h.generation = g;
        } else {
            h.spec = spec;
            h.policy = policy.map(Arc::new);
        }
        h.next_due = Instant::now();
        Ok(h.status())
    }

    pub async fn remove_host(&self, name: &str) -> Result<(), (StatusCode, String)> {
        if self.hosts().remove(name).is_none() {
            return Err((StatusCode::NOT_FOUND, format!("no host {name}")));
        }
        self.db.write(Op::DeleteHost(name.to_string())).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        tracing::info!(host = %name, "host removed");
        Ok(())
    }

    pub fn verdicts(&self, name: &str, limit: u64) -> Result<Vec<VerdictRow>, String> {
        self.db.verdicts(name, limit)
    }

    /// One attestation round for `name` (the scheduler's unit of work). Returns the verdict.
    pub async fn attest(self: &Shared, name: &str) -> Result<VerdictRow, String> {
        let _permit = self.sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let (spec, state, ak, policy, learned, conn, generation) = {
            let mut hosts = self.hosts();
            let h = hosts.get_mut(name).ok_or_else(|| format!("no host {name}"))?;
            let learned = h.learned.clone();
            (h.spec.clone(), h.state.clone(), h.ak.clone(), h.policy.clone(), learned, h.conn.take(), h.generation)
        };
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut row = VerdictRow { host: name.to_string(), at_ms: now_ms(), ..Default::default() };
        row.checkpoint_before = state.as_ref().map(|s| s.checkpoint);
        let fetched = self.fetch(&spec, state.as_ref(), conn, timeout).await;
        let mut write = RoundWrite {
            name: name.to_string(),
            state: None,
            ak: None,
            accepted_marker: None,
            learned_keys: None,
            status: String::new(),
            alert: None,
            verdict: VerdictRow::default(),
            keep_verdicts: self.cfg.keep_verdicts,
        };
        let mut new_state: Option<State> = None;
        let mut enrolled: Option<AkPublic> = None;
        let mut accepted = None;
        let mut new_learned: Option<KeyRing> = None;
        let conn_back;
        match fetched {
            Err((kind, detail, conn)) => {
                conn_back = conn;
                row.verdict = "error".into();
                row.reason = Some(kind.into());
                row.detail = Some(detail);
            }
            Ok((body, nonce, conn)) => {
                conn_back = Some(conn);
                let late = spec.late_join;
                let tofu = spec.tofu;
                let prior = state.clone();
                let ak2 = ak.clone();
                let pol = policy.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let pol = pol.as_deref().map(|p| (p, &*learned));
                    attest::run_round(&body, &nonce, prior.as_ref(), late, ak2.as_ref(), tofu, pol)
                })
                .await
                .map_err(|e| e.to_string())?;
                match r {
                    Err(f) => {
                        row.verdict = "rejected".into();
                        row.reason = Some(f.kind().to_string());
                        row.record = f.index();
                        row.detail = Some(f.to_string());
                    }
                    Ok(rr) => {
                        let o = &rr.outcome;
                        row.mode = o.report.mode.map(|m| format!("{m:?}")).or(Some(format!("{:?}", rr.mode)));
                        row.restart = o.report.restart.as_ref().map(|r| format!("{r:?}"));
                        row.records_replayed = o.report.records_replayed;
                        row.tail_records = o.report.tail_records;
                        match o.verdict.failure() {
                            Some(f) => {
                                row.verdict = "rejected".into();
                                row.reason = Some(f.kind().to_string());
                                row.record = f.index();
                                row.detail = Some(f.to_string());
                            }
                            None => {
                                new_state = o.state.clone();
                                enrolled = rr.enrolled_ak.clone();
                                new_learned = rr.learned.clone();
                                accepted = rr.accepted_marker.clone();
                                row.checkpoint = new_state.as_ref().map(|s| s.checkpoint);
                                if rr.policy_failures.is_empty() {
                                    row.verdict = "verified".into();
                                } else {
                                    row.verdict = "policy_violation".into();
                                    row.reason = Some("policy".into());
                                    let first = &rr.policy_failures[0];
                                    row.record = first.get("index").and_then(|v| v.as_u64());
                                    row.detail = Some(format!(
                                        "{} record(s) break the runtime policy; first: {}",
                                        rr.policy_failures.len(),
                                        first.get("message").and_then(|m| m.as_str()).unwrap_or(&first.to_string())
                                    ));
                                    row.policy_failures = rr.policy_failures.clone();
                                }
                            }
                        }
                    }
                }
            }
        }
        row.duration_ms = t0.elapsed().as_secs_f64() * 1e3;
        write.status = row.verdict.clone();
        write.state = new_state.as_ref().map(State::to_json);
        write.ak = enrolled.as_ref().map(|k| (k.to_pem(), "tofu".to_string()));
        write.accepted_marker = accepted.as_ref().map(|v| v.to_string());
        write.learned_keys = new_learned.as_ref().map(policy::keys_to_json);
        if matches!(row.verdict.as_str(), "rejected" | "policy_violation") {
            write.alert = Some(serde_json::to_string(&row).unwrap_or_default());
        }
        write.verdict = row.clone();
        // Saved before the next round of this host can start (it is still `busy`).
        let saved = {
            let still_same = self.hosts().get(name).is_some_and(|h| h.generation == generation);
            if still_same {
                self.db.write(Op::Round(Box::new(write))).await
            } else {
                Err("host changed during the round; result discarded".into())
            }
        };
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        if row.verdict == "verified" {
            self.stats.verified.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut hosts = self.hosts();
            if let Some(h) = hosts.get_mut(name) {
                h.busy = false;
                h.next_due = Instant::now() + Duration::from_millis(h.spec.poll_interval_ms);
                if h.generation == generation && saved.is_ok() {
                    if let Some(s) = new_state {
                        h.state = Some(s);
                    }
                    if let Some(l) = new_learned {
                        if l.len() != h.learned.len() {
                            tracing::info!(host = %name, keys = l.len(), "learned keys (keyring measurements)");
                        }
                        h.learned = Arc::new(l);
                    }
                    if let Some(k) = enrolled {
                        h.ak_pem = Some(k.to_pem());
                        h.ak = Some(k);
                        h.ak_source = Some("tofu".into());
                    }
                    if accepted.is_some() {
                        h.accepted_marker = accepted;
                    }
                    h.status = row.verdict.clone();
                    h.rounds += 1;
                    if h.alert.is_none() && matches!(row.verdict.as_str(), "rejected" | "policy_violation") {
                        h.alert = Some(row.clone());
                    }
                    h.last = Some(row.clone());
                    h.conn = conn_back.filter(Conn::is_open);
                }
            }
        }
        if let Err(e) = saved {
            tracing::error!(host = %name, error = %e, "round not saved");
            return Err(e);
        }
        if self.record_latencies {
            self.latencies.lock().unwrap_or_else(|p| p.into_inner()).push(row.duration_ms);
        }
        match row.verdict.as_str() {
            "verified" => tracing::debug!(host = %name, checkpoint = ?row.checkpoint, replayed = row.records_replayed,
                tail = row.tail_records, mode = ?row.mode, ms = row.duration_ms, "verified"),
            v => tracing::warn!(host = %name, verdict = v, reason = ?row.reason, record = ?row.record,
                detail = ?row.detail, "attestation failed"),
        }
        Ok(row)
    }

    /// Connects (or reuses the connection) and fetches evidence with a fresh nonce.
    #[allow(clippy::type_complexity)]
    async fn fetch(
        &self,
        spec: &HostSpec,
        state: Option<&State>,
        conn: Option<Conn>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>, Conn), (&'static str, String, Option<Conn>)> {
        let mut conn = match conn.filter(Conn::is_open) {
            Some(c) => c,
            None => {
                let name =
                    imasnap_net::tls::server_name(&spec.tls_name()).map_err(|e| ("config", e.to_string(), None))?;
                let c = Conn::connect(&spec.address, name, self.agent_tls.clone(), timeout)
                    .await
                    .map_err(|e| ("unreachable", e.to_string(), None))?;
                if let Some(pin) = &spec.agent_cert {
                    let want = pinned_der(pin).map_err(|e| ("config", e, None))?;
                    if c.server_cert.as_deref() != Some(want.as_slice()) {
                        return Err(("tls_pin", "the agent's certificate is not the pinned agent_cert".into(), None));
                    }
                }
                c
            }
        };
        let mut nonce = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        let (from, boot) = request_from(state, spec.late_join);
        let mut path = format!(
            "/v1/evidence?nonce={}&from={}&max_bytes={}",
            hex::encode(&nonce),
            from.as_param(),
            self.cfg.max_evidence_bytes
        );
        if let Some(b) = boot {
            path.push_str(&format!("&boot={b}"));
        }
        let limit = usize::try_from(self.cfg.max_evidence_bytes).unwrap_or(usize::MAX).saturating_add(1 << 20);
        match conn.request(Method::GET, &path, None, limit, timeout).await {
            Ok((StatusCode::OK, body)) => Ok((body.to_vec(), nonce, conn)),
            Ok((s, body)) => {
                let msg = String::from_utf8_lossy(&body[..body.len().min(1024)]).to_string();
                Err(("agent_error", format!("agent answered {s}: {}", msg.trim()), Some(conn)))
            }
            Err(e) => Err(("transfer", e.to_string(), None)),
        }
    }

    /// Hosts due now, marked busy.
    fn take_due(&self, now: Instant) -> Vec<String> {
        let mut hosts = self.hosts();
        let mut due = Vec::new();
        for (n, h) in hosts.iter_mut() {
            if !h.busy && h.next_due <= now {
                h.busy = true;
                due.push(n.clone());
            }
        }
        due
    }

    fn mark_busy(&self, name: &str) -> bool {
        let mut hosts = self.hosts();
        match hosts.get_mut(name) {
            Some(h) if !h.busy => {
                h.busy = true;
                true
            }
            _ => false,
        }
    }

    /// The scheduler: every tick, starts a round for each due host (the semaphore bounds
    /// how many run at once; the timeout bounds each).
    pub async fn schedule(self: Shared, mut shutdown: watch::Receiver<bool>) {
        let mut iv = tokio::time::interval(Duration::from_millis(self.cfg.tick_ms.max(1)));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = iv.tick() => {}
                _ = shutdown.changed() => return,
            }
            for name in self.take_due(Instant::now()) {
                let v = self.clone();
                tokio::spawn(async move {
                    let hard = Duration::from_millis(v.cfg.timeout_ms.saturating_mul(2).max(1000));
                    if tokio::time::timeout(hard, v.attest(&name)).await.is_err() {
                        tracing::warn!(host = %name, "round exceeded its deadline");
                        let mut hosts = v.hosts();
                        if let Some(h) = hosts.get_mut(&name) {
                            h.busy = false;
                            h.conn = None;
                            h.next_due = Instant::now() + Duration::from_millis(h.spec.poll_interval_ms);
                        }
                    }
                });
            }
        }
    }

    /// `POST /v1/hosts/{name}/attest`: a round now (waits if one is running).
    pub async fn attest_now(self: &Shared, name: &str) -> Result<VerdictRow, (StatusCode, String)> {
        let deadline = Instant::now() + Duration::from_millis(self.cfg.timeout_ms.saturating_mul(2));
        loop {
            if !self.hosts().contains_key(name) {
                return Err((StatusCode::NOT_FOUND, format!("no host {name}")));
            }
            if self.mark_busy(name) {
                return self.attest(name).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e));
            }
            if Instant::now() > deadline {
                return Err((StatusCode::SERVICE_UNAVAILABLE, "a round for this host is still running".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// REST API

const MAX_REQUEST: usize = 40 << 20;

pub struct Api {
    v: Shared,
}

fn err((s, m): (StatusCode, String)) -> Response<Body> {
    error_response(s, m)
}

impl Api {
    async fn route(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        tracing::debug!(peer = %peer.addr, %method, %path, "api request");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let v = &self.v;
        match (&method, parts.as_slice()) {
            (&Method::GET, ["v1", "health"]) => json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "hosts": v.hosts().len(),
                    "rounds": v.stats.rounds.load(Ordering::Relaxed),
                    "verified": v.stats.verified.load(Ordering::Relaxed),
                    "failed": v.stats.failed.load(Ordering::Relaxed),
                    "policy_enforced": policy::ENFORCED,
                }),
            ),
            (&Method::GET, ["v1", "hosts"]) => json_response(StatusCode::OK, &v.list()),
            (&Method::POST, ["v1", "hosts"]) => {
                let spec: HostSpec = match body_json(req).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                match v.add_host(spec).await {
                    Ok(s) => json_response(StatusCode::CREATED, &s),
                    Err(e) => err(e),
                }
            }
            (&Method::GET, ["v1", "hosts", name]) => match v.host_status(name) {
                Some(s) => json_response(StatusCode::OK, &s),
                None => error_response(StatusCode::NOT_FOUND, format!("no host {name}")),
            },
            (&Method::PATCH, ["v1", "hosts", name]) | (&Method::PUT, ["v1", "hosts", name]) => {
                let name = name.to_string();
                let patch: HostPatch = match body_json(req).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                match v.update_host(&name, patch).await {
                    Ok(s) => json_response(StatusCode::OK, &s),
                    Err(e) => err(e),
                }
            }
            (&Method::DELETE, ["v1", "hosts", name]) => match v.remove_host(name).await {
                Ok(()) => json_response(StatusCode::OK, &serde_json::json!({ "removed": name })),
                Err(e) => err(e),
            },
            (&Method::GET, ["v1", "hosts", name, "verdicts"]) => {
                let q = query(&req);
                let limit = param(&q, "limit").and_then(|l| l.parse().ok()).unwrap_or(50u64).min(10_000);
                if v.host_status(name).is_none() {
                    return error_response(StatusCode::NOT_FOUND, format!("no host {name}"));
                }
                match v.verdicts(name, limit) {
                    Ok(rows) => json_response(StatusCode::OK, &rows),
                    Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (&Method::POST, ["v1", "hosts", name, "attest"]) => match v.attest_now(name).await {
                Ok(row) => json_response(StatusCode::OK, &row),
                Err(e) => err(e),
            },
            _ => error_response(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let b = http::read_limited(req.into_body(), MAX_REQUEST)
        .await
        .map_err(|e| error_response(StatusCode::PAYLOAD_TOO_LARGE, e))?;
    serde_json::from_slice(&b).map_err(|e| error_response(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

impl Handler for Api {
    fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> BoxFuture<'static, Response<Body>> {
        Box::pin(self.route(req, peer))
    }
}

/// A running verifier service.
pub struct Running {
    pub addr: SocketAddr,
    pub verifier: Shared,
    pub shutdown: watch::Sender<bool>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the REST API on `listener` and, if `schedule`, the scheduler.
pub fn spawn(
    listener: TcpListener,
    api_tls: Arc<rustls::ServerConfig>,
    v: Shared,
    schedule: bool,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(http::serve(listener, api_tls, Arc::new(Api { v: v.clone() }), rx.clone()))];
    if schedule {
        tasks.push(tokio::spawn(v.clone().schedule(rx)));
    }
    Ok(Running { addr, verifier: v, shutdown: tx, tasks })
}

/// `imasnap verifier run`: the whole service until SIGINT/SIGTERM.
pub async fn run(cfg: VerifierConfig) -> anyhow::Result<()> {
    let api_tls = cfg.tls.server()?;
    let agent_tls = cfg.agent_tls.client()?;
    let listener = TcpListener::bind(&cfg.listen).await.map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
    let v = Verifier::open(cfg, agent_tls).map_err(|e| anyhow::anyhow!(e))?;
    let running = spawn(listener, api_tls, v, true)?;
    tracing::info!(addr = %running.addr, "verifier service listening");
    println!("listening on {}", running.addr);
    imasnap_net::shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
