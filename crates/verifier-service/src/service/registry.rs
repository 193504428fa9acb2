//! The host registry: every host's in-memory view (loaded from SQLite at start-up, saved
//! after every change), registration changes, and the repair of damaged hosts.

use crate::db::conn::{Dialect, Target};
use crate::db::{Db, LoadedHost, Op, ReplicaRow, StoredState};
use crate::model::{parse_ak, Damage, HostPatch, HostSpec, HostState, HostStatus, LateJoin, VerdictRow};
use crate::policy::{self, LoadedPolicy};
use crate::VerifierConfig;
use hyper::StatusCode;
use imasnap_net::http::Conn;
use imasnap_policy::KeyRing;
use imasnap_tpm::AkPublic;
use imasnap_verifier::State;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// An API error: the HTTP status and the message.
pub type ApiError = (StatusCode, String);

/// In-memory view of one host (the database is the source of truth at start-up).
pub(crate) struct HostRt {
    pub spec: HostSpec,
    pub policy: Option<Arc<LoadedPolicy>>,
    pub state: Option<State>,
    /// Keys learned from the log (Keylime keyring semantics), saved with the state.
    pub learned: Arc<KeyRing>,
    pub ak: Option<AkPublic>,
    pub ak_pem: Option<String>,
    pub ak_source: Option<String>,
    pub accepted_marker: Option<serde_json::Value>,
    pub status: HostState,
    /// Set when a stored value cannot be read: the host is listed but never attested
    /// until an admin resets it (or removes and registers it again).
    pub damage: Option<Damage>,
    pub rounds: u64,
    pub last: Option<VerdictRow>,
    pub alert: Option<VerdictRow>,
    pub next_due: Instant,
    pub busy: bool,
    pub conn: Option<Conn>,
    /// Bumped by every registration change: a round that started before it does not
    /// save its result over the change.
    pub generation: u64,
    /// Consecutive failures, for the backoff ([`crate::ops::backoff`]).
    pub retry: crate::ops::backoff::Retry,
    /// `host_state.version` this view was read at (compare-and-swap for the next round's
    /// write); -1 forces a reload from the database.
    pub version: i64,
}

fn damage(table: &str, column: &str, reason: impl ToString) -> Damage {
    Damage { table: table.into(), column: column.into(), reason: reason.to_string() }
}

/// A stand-in registration for a host whose `hosts.spec` cannot be read: only the name is
/// known. Never attested (the host is unusable).
fn placeholder_spec(name: &str) -> HostSpec {
    HostSpec {
        name: name.to_string(),
        address: String::new(),
        server_name: None,
        ak: None,
        tofu: false,
        policy: None,
        agent_cert: None,
        poll_interval_ms: 30_000,
        late_join: LateJoin::default(),
        simulated: false,
        ek_activate: false,
        ek: None,
        ak_enrolment: None,
    }
}

impl HostRt {
    fn blank(spec: HostSpec) -> Self {
        Self {
            spec,
            policy: None,
            state: None,
            learned: Arc::new(KeyRing::new()),
            ak: None,
            ak_pem: None,
            ak_source: None,
            accepted_marker: None,
            status: HostState::Pending,
            damage: None,
            rounds: 0,
            last: None,
            alert: None,
            next_due: Instant::now(),
            busy: false,
            conn: None,
            generation: 0,
            retry: Default::default(),
            version: 0,
        }
    }

    /// A host with no state yet (registration, reset). Errors name the bad field.
    pub fn fresh(spec: HostSpec) -> Result<Self, String> {
        Self::build(spec, StoredState { status: "pending".into(), ..Default::default() }).map_err(|d| d.reason)
    }

    /// A host as stored; any unreadable value makes it unusable rather than hidden.
    pub(crate) fn from_db(h: LoadedHost) -> Self {
        let version = h.stored.version;
        let mut rt = Self::from_db_inner(h);
        rt.version = version;
        rt
    }

    fn from_db_inner(h: LoadedHost) -> Self {
        let spec = match h.spec {
            Ok(s) => s,
            Err(d) => {
                let mut rt = Self::blank(placeholder_spec(&h.name));
                rt.status = HostState::Unusable;
                rt.damage = Some(d);
                return rt;
            }
        };
        let rounds = h.stored.rounds;
        match Self::build(spec.clone(), h.stored) {
            Ok(rt) => rt,
            Err(d) => {
                let mut rt = Self::blank(spec);
                rt.status = HostState::Unusable;
                rt.rounds = rounds;
                rt.damage = Some(d);
                rt
            }
        }
    }

    fn build(spec: HostSpec, stored: StoredState) -> Result<Self, Damage> {
        let policy =
            spec.policy.as_deref().map(policy::load).transpose().map_err(|e| damage("hosts", "spec", e))?.map(Arc::new);
        let state =
            stored.state.as_deref().map(State::from_json).transpose().map_err(|e| damage("host_state", "state", e))?;
        let learned = stored
            .learned_keys
            .as_deref()
            .map(policy::keys_from_json)
            .transpose()
            .map_err(|e| damage("host_state", "learned_keys", e))?
            .unwrap_or_default();
        let (ak, ak_pem, ak_source) = match (&stored.ak_pem, &spec.ak) {
            (Some(p), _) => {
                (Some(parse_ak(p).map_err(|e| damage("host_state", "ak_pem", e))?), Some(p.clone()), stored.ak_source)
            }
            (None, Some(a)) => {
                let k = parse_ak(a).map_err(|e| damage("hosts", "spec", e))?;
                let pem = k.to_pem();
                let source = if spec.ak_enrolment.is_some() { "ek_activated" } else { "registered" };
                (Some(k), Some(pem), Some(source.into()))
            }
            (None, None) => (None, None, None),
        };
        let status = HostState::parse(&stored.status)
            .filter(|s| *s != HostState::Unusable)
            .ok_or_else(|| damage("host_state", "status", format!("unknown status {:?}", stored.status)))?;
        // The marker and the alert are only shown: an unreadable one is dropped, not fatal.
        let shown = |col: &str, v: Option<String>| -> Option<serde_json::Value> {
            let v = v?;
            match serde_json::from_str(&v) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!(host = %spec.name, table = "host_state", column = col, error = %e,
                        "unreadable value dropped");
                    None
                }
            }
        };
        let accepted_marker = shown("accepted_marker", stored.accepted_marker);
        let alert = shown("alert", stored.alert).and_then(|v| serde_json::from_value(v).ok());
        let mut rt = Self::blank(spec);
        rt.policy = policy;
        rt.state = state;
        rt.learned = Arc::new(learned);
        rt.ak = ak;
        rt.ak_pem = ak_pem;
        rt.ak_source = ak_source;
        rt.accepted_marker = accepted_marker;
        rt.status = status;
        rt.rounds = stored.rounds;
        rt.alert = alert;
        Ok(rt)
    }

    pub fn status(&self) -> HostStatus {
        HostStatus {
            spec: self.spec.clone(),
            status: self.status,
            damage: self.damage.clone(),
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
            retry: crate::ops::RetryStatus::of(&self.retry, self.next_due, self.busy),
        }
    }

    /// Replaces this host's view with `fresh`, keeping the generation counter (bumped) so
    /// that a round in flight does not save over the change.
    pub(crate) fn replace(&mut self, fresh: HostRt) {
        let g = self.generation + 1;
        *self = fresh;
        self.generation = g;
    }
}

/// Counters for `/v1/health` and the load test.
#[derive(Default)]
pub struct Stats {
    pub rounds: AtomicU64,
    pub verified: AtomicU64,
    pub failed: AtomicU64,
}

/// This process as one of several replicas sharing a PostgreSQL database.
pub(crate) struct Replica {
    pub id: String,
    pub lease_ms: u64,
    /// Hosts whose lease this replica holds (only these are scheduled).
    pub owned: Mutex<HashSet<String>>,
    /// Every replica as of the last lease cycle (for `/v1/health`).
    pub replicas: Mutex<Vec<ReplicaRow>>,
    /// When the last lease cycle succeeded: past one lease period without one, the
    /// leases are gone and nothing is scheduled.
    pub last_ok: Mutex<Instant>,
    /// A reload of other replicas' changes is running (one at a time, beside the cycle).
    pub reloading: std::sync::atomic::AtomicBool,
}

impl Replica {
    pub fn owned(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}-{:04x}", host.trim(), std::process::id(), rand::random::<u16>())
}

pub struct Verifier {
    pub(crate) cfg: VerifierConfig,
    pub(crate) db: Db,
    /// `None` with SQLite: the one process owns every host.
    pub(crate) replica: Option<Replica>,
    /// The last database failure seen by a round or the lease cycle, cleared by success.
    pub(crate) db_error: Mutex<Option<String>>,
    pub(crate) hosts: Mutex<HashMap<String, HostRt>>,
    pub(crate) agent_tls: Arc<rustls::ClientConfig>,
    pub(crate) sem: Arc<Semaphore>,
    pub stats: Stats,
    /// Per-round latency samples (milliseconds) for the load test; cleared by the reader.
    pub latencies: Mutex<Vec<f64>>,
    pub record_latencies: bool,
    /// Metrics, webhooks ([`crate::ops`]).
    pub ops: crate::ops::Ops,
    /// EK trust and pending credential challenges ([`crate::enrol`]).
    pub(crate) enrolment: crate::enrol::Enrolment,
}

pub type Shared = Arc<Verifier>;

impl Verifier {
    /// Opens the database and loads every host. Unreadable rows make their host
    /// `unusable` (logged with table, column and reason); they never stop the start.
    pub fn open(cfg: VerifierConfig, agent_tls: Arc<rustls::ClientConfig>) -> Result<Shared, String> {
        let target = cfg.target();
        if let Target::Sqlite { path, .. } = &target {
            if let Some(d) = path.parent() {
                if !d.as_os_str().is_empty() {
                    std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
                }
            }
        }
        let replica = (target.dialect() == Dialect::Postgres).then(|| Replica {
            id: cfg.replica_id.clone().unwrap_or_else(default_replica_id),
            lease_ms: cfg.lease_ms.max(100),
            owned: Mutex::new(HashSet::new()),
            replicas: Mutex::new(Vec::new()),
            last_ok: Mutex::new(Instant::now()),
            reloading: std::sync::atomic::AtomicBool::new(false),
        });
        let db = Db::open(target, replica.as_ref().map(|r| r.id.clone()))?;
        let mut hosts = HashMap::new();
        for row in db.load()? {
            let name = row.name.clone();
            let mut h = HostRt::from_db(row);
            if let Some(d) = &h.damage {
                tracing::error!(host = %name, table = %d.table, column = %d.column, reason = %d.reason,
                    "stored host unusable: shown as such, not attested until reset");
            }
            // The last verdict for the status view (unreadable rows are skipped).
            h.last = db.verdicts(&name, 1).unwrap_or_default().into_iter().next();
            hosts.insert(name, h);
        }
        tracing::info!(hosts = hosts.len(), db = %db.describe(), replica = replica.as_ref().map(|r| r.id.as_str()),
            "verifier state loaded");
        let sem = Arc::new(Semaphore::new(cfg.max_concurrency.max(1)));
        let ops = crate::ops::Ops::new(&cfg)?;
        let enrolment = crate::enrol::Enrolment::from_config(&cfg.ek)?;
        Ok(Arc::new(Self {
            cfg,
            db,
            replica,
            db_error: Mutex::new(None),
            hosts: Mutex::new(hosts),
            agent_tls,
            sem,
            stats: Stats::default(),
            latencies: Mutex::new(Vec::new()),
            record_latencies: false,
            ops,
            enrolment,
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

    pub(crate) fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostRt>> {
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

    /// Names of the hosts whose stored data is unreadable.
    pub fn unusable(&self) -> Vec<String> {
        let mut v: Vec<_> = self.hosts().iter().filter(|(_, h)| h.damage.is_some()).map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }

    /// This replica's id (`None` with SQLite).
    pub fn replica_id(&self) -> Option<&str> {
        self.replica.as_ref().map(|r| r.id.as_str())
    }

    /// Hosts this process may verify now (all of them with SQLite).
    pub fn owns(&self, name: &str) -> bool {
        self.replica.as_ref().is_none_or(|r| r.owned().contains(name))
    }

    pub(crate) fn set_db_error(&self, e: Option<String>) {
        *self.db_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// `GET /v1/health`: `ok`, or `degraded` while any host is unusable or the database
    /// fails. With PostgreSQL: every replica, its last heartbeat and its lease count.
    pub fn health(&self) -> serde_json::Value {
        let unusable = self.unusable();
        let db_error = self.db_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (replica, replicas, held) = match &self.replica {
            None => (None, serde_json::Value::Null, self.hosts().len()),
            Some(r) => (
                Some(r.id.clone()),
                serde_json::to_value(&*r.replicas.lock().unwrap_or_else(|p| p.into_inner()))
                    .unwrap_or(serde_json::Value::Null),
                r.owned().len(),
            ),
        };
        serde_json::json!({
            "status": if unusable.is_empty() && db_error.is_none() { "ok" } else { "degraded" },
            "database": match self.db.dialect() { Dialect::Sqlite => "sqlite", Dialect::Postgres => "postgres" },
            "database_error": db_error,
            "replica": replica,
            "replicas": replicas,
            "leases_held": held,
            "hosts": self.hosts().len(),
            "unusable": unusable,
            "rounds": self.stats.rounds.load(Ordering::Relaxed),
            "verified": self.stats.verified.load(Ordering::Relaxed),
            "failed": self.stats.failed.load(Ordering::Relaxed),
            "policy_enforced": policy::ENFORCED,
        })
    }

    pub async fn add_host(&self, spec: HostSpec) -> Result<HostStatus, ApiError> {
        if spec.ak_enrolment.is_some() {
            return Err((
                StatusCode::BAD_REQUEST,
                "ak_enrolment is written by the verifier after EK credential activation, never registered".into(),
            ));
        }
        spec.validate().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        if self.hosts().contains_key(&spec.name) {
            return Err((StatusCode::CONFLICT, format!("host {} already exists", spec.name)));
        }
        let mut rt = HostRt::fresh(spec.clone()).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        rt.version = self
            .db_write(Op::PutHost { spec: spec.clone(), reset_state: true, now_ms: now_ms() })
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let st = rt.status();
        self.hosts().insert(spec.name.clone(), rt);
        tracing::info!(host = %spec.name, address = %spec.address, tofu = spec.tofu, late_join = spec.late_join.as_str(), "host registered");
        Ok(st)
    }

    fn spec_of(&self, name: &str) -> Result<HostSpec, ApiError> {
        let hosts = self.hosts();
        let h = hosts.get(name).ok_or((StatusCode::NOT_FOUND, format!("no host {name}")))?;
        if let Some(d) = h.damage.as_ref().filter(|d| d.table == "hosts") {
            return Err((
                StatusCode::CONFLICT,
                format!("host {name}: its registration is unreadable ({d}); remove it and register it again"),
            ));
        }
        Ok(h.spec.clone())
    }

    pub async fn update_host(&self, name: &str, patch: HostPatch) -> Result<HostStatus, ApiError> {
        let old = self.spec_of(name)?;
        let mut spec = old.clone();
        spec.apply(patch);
        spec.validate().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        // A different trust root or late-join choice invalidates what was proven.
        let reset = spec.ak != old.ak
            || spec.ak_enrolment != old.ak_enrolment
            || spec.tofu != old.tofu
            || spec.late_join != old.late_join;
        let policy = spec.policy.as_deref().map(policy::load).transpose().map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let fresh =
            if reset { Some(HostRt::fresh(spec.clone()).map_err(|e| (StatusCode::BAD_REQUEST, e))?) } else { None };
        let version = self
            .db_write(Op::PutHost { spec: spec.clone(), reset_state: reset, now_ms: now_ms() })
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let mut hosts = self.hosts();
        let h = hosts.get_mut(name).ok_or((StatusCode::NOT_FOUND, format!("no host {name}")))?;
        match fresh {
            Some(f) => h.replace(f),
            None => {
                h.generation += 1;
                h.conn = None;
                h.alert = None;
                h.spec = spec;
                h.policy = policy.map(Arc::new);
            }
        }
        h.version = version;
        h.next_due = Instant::now();
        Ok(h.status())
    }

    /// `POST /v1/hosts/{name}/reset`: forgets the host's state, enrolled AK, learned keys,
    /// accepted marker and alert, and attests it again from the start (with a TOFU host,
    /// the AK is enrolled again from the next quote). Repairs a host that is unusable
    /// because of its state columns; a host whose registration is unreadable must be
    /// removed and registered again.
    pub async fn reset_host(&self, name: &str) -> Result<HostStatus, ApiError> {
        let spec = self.spec_of(name)?;
        let mut fresh = HostRt::fresh(spec).map_err(|e| (StatusCode::CONFLICT, e))?;
        fresh.version = self
            .db_write(Op::ResetState(name.to_string()))
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let mut hosts = self.hosts();
        let h = hosts.get_mut(name).ok_or((StatusCode::NOT_FOUND, format!("no host {name}")))?;
        let rounds = h.rounds;
        let was = h.damage.take();
        h.replace(fresh);
        h.rounds = rounds;
        let repaired = was.map(|d| d.to_string()).unwrap_or_else(|| "nothing (host was usable)".into());
        tracing::warn!(host = %name, %repaired, "host state reset by an admin");
        Ok(h.status())
    }

    pub async fn remove_host(&self, name: &str) -> Result<(), ApiError> {
        if self.hosts().remove(name).is_none() {
            return Err((StatusCode::NOT_FOUND, format!("no host {name}")));
        }
        self.db_write(Op::DeleteHost(name.to_string())).await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
        tracing::info!(host = %name, "host removed");
        Ok(())
    }

    pub fn verdicts(&self, name: &str, limit: u64) -> Result<Vec<VerdictRow>, String> {
        self.db.verdicts(name, limit)
    }
}
