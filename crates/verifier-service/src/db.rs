//! SQLite persistence (the embedded default): hosts, per-host verifier state, verdicts.
//!
//! - Schema versions in `PRAGMA user_version`, applied in order by [`migrate`].
//! - One writer thread owns the write connection and commits in groups: every message
//!   waiting when a transaction starts goes into it, and each sender is answered only
//!   after the COMMIT. So "state saved after every round" holds, at the cost of one
//!   transaction per batch rather than per round.
//! - Reads (verdict history) use their own connection (WAL lets them run beside writes).

use crate::model::{Damage, HostSpec, VerdictRow};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

const MIGRATIONS: &[&str] = &[
    // 1: hosts, their state, verdict history.
    "CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
     );
     CREATE TABLE host_state (
        name TEXT PRIMARY KEY REFERENCES hosts(name) ON DELETE CASCADE,
        state TEXT,
        ak_pem TEXT,
        ak_source TEXT,
        accepted_marker TEXT,
        learned_keys TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL DEFAULT 'pending',
        rounds INTEGER NOT NULL DEFAULT 0,
        alert TEXT
     );
     CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL REFERENCES hosts(name) ON DELETE CASCADE,
        at_ms INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        row TEXT NOT NULL
     );
     CREATE INDEX verdicts_by_host ON verdicts(host, id);",
];

pub fn migrate(c: &Connection) -> rusqlite::Result<u32> {
    let v: u32 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(v as usize) {
        c.execute_batch(&format!("BEGIN; {m}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
    }
    Ok(MIGRATIONS.len() as u32)
}

fn open_conn(path: &Path, synchronous_full: bool) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = {};",
        if synchronous_full { "FULL" } else { "NORMAL" }
    ))?;
    Ok(c)
}

/// Per-host state as loaded at start-up.
#[derive(Clone, Debug, Default)]
pub struct StoredState {
    pub state: Option<String>,
    pub ak_pem: Option<String>,
    pub ak_source: Option<String>,
    pub accepted_marker: Option<String>,
    /// JSON list of [`crate::policy::LearnedKey`].
    pub learned_keys: Option<String>,
    pub status: String,
    pub rounds: u64,
    pub alert: Option<String>,
}

/// One `hosts` row as loaded at start-up: the spec, or why it cannot be read.
#[derive(Clone, Debug)]
pub struct LoadedHost {
    pub name: String,
    pub spec: Result<HostSpec, Damage>,
    pub stored: StoredState,
}

/// What one attestation round saves.
#[derive(Debug)]
pub struct RoundWrite {
    pub name: String,
    /// New engine state (JSON); `None` keeps the stored one.
    pub state: Option<String>,
    /// `Some(None)` clears the state (e.g. the operator changed the AK).
    pub ak: Option<(String, String)>,
    pub accepted_marker: Option<String>,
    /// The host's learned keys (JSON); `None` keeps the stored ones.
    pub learned_keys: Option<String>,
    pub status: &'static str,
    pub alert: Option<String>,
    pub verdict: VerdictRow,
    pub keep_verdicts: u64,
}

pub enum Op {
    PutHost {
        spec: HostSpec,
        reset_state: bool,
        now_ms: i64,
    },
    DeleteHost(String),
    /// Forget what was proven (state, enrolled AK, learned keys, marker, alert): the
    /// repair of a host whose stored state is unreadable.
    ResetState(String),
    Round(Box<RoundWrite>),
}

struct Msg {
    op: Op,
    reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// What the writer did (the load bench reports it per round): transactions, ops, and
/// the SQL statements of rounds (with BEGIN, COMMIT and the savepoints of every op) and
/// the bytes of the values bound to them.
#[derive(Default, Debug)]
pub struct WriteStats {
    pub transactions: AtomicU64,
    pub ops: AtomicU64,
    pub statements: AtomicU64,
    pub bound_bytes: AtomicU64,
}

pub struct Db {
    tx: mpsc::Sender<Msg>,
    read: Mutex<Connection>,
    pub stats: Arc<WriteStats>,
}

impl Db {
    /// Opens (creating and migrating) the database and starts the writer thread.
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, String> {
        let w = open_conn(path, synchronous_full).map_err(|e| format!("{}: {e}", path.display()))?;
        migrate(&w).map_err(|e| format!("{}: migration: {e}", path.display()))?;
        let read = open_conn(path, synchronous_full).map_err(|e| format!("{}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let stats = Arc::new(WriteStats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name("imasnap-db-writer".into())
            .spawn(move || writer(w, rx, &st))
            .map_err(|e| e.to_string())?;
        Ok(Self { tx, read: Mutex::new(read), stats })
    }

    pub async fn write(&self, op: Op) -> Result<(), String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Msg { op, reply }).map_err(|_| "database writer stopped".to_string())?;
        rx.await.map_err(|_| "database writer stopped".to_string())?
    }

    /// Every host with its stored state. A row whose spec cannot be read is returned with
    /// the reason (the host is shown as unusable), never an error for the whole load.
    pub fn load(&self) -> Result<Vec<LoadedHost>, String> {
        let c = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = c
            .prepare(
                "SELECT h.name, CAST(h.spec AS TEXT), s.state, s.ak_pem, s.ak_source, s.accepted_marker, s.status,
                        s.rounds, s.alert, s.learned_keys
                 FROM hosts h LEFT JOIN host_state s ON s.name = h.name ORDER BY h.name",
            )
            .map_err(|e| format!("hosts: {e}"))?;
        // Text columns are read leniently (a wrong SQLite type is damage of that column,
        // not a failed start).
        let text = |r: &rusqlite::Row, i: usize| -> Option<String> {
            match r.get_ref(i) {
                Ok(rusqlite::types::ValueRef::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
                Ok(rusqlite::types::ValueRef::Blob(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Ok(rusqlite::types::ValueRef::Integer(n)) => Some(n.to_string()),
                Ok(rusqlite::types::ValueRef::Real(x)) => Some(x.to_string()),
                _ => None,
            }
        };
        let rows = st
            .query_map([], |r| {
                Ok(LoadedHost {
                    name: text(r, 0).unwrap_or_default(),
                    spec: {
                        let raw = text(r, 1).unwrap_or_default();
                        serde_json::from_str::<HostSpec>(&raw).map_err(|e| Damage {
                            table: "hosts".into(),
                            column: "spec".into(),
                            reason: e.to_string(),
                        })
                    },
                    stored: StoredState {
                        state: text(r, 2),
                        ak_pem: text(r, 3),
                        ak_source: text(r, 4),
                        accepted_marker: text(r, 5),
                        status: text(r, 6).unwrap_or_else(|| "pending".into()),
                        rounds: r.get::<_, Option<i64>>(7).ok().flatten().unwrap_or(0).max(0) as u64,
                        alert: text(r, 8),
                        learned_keys: text(r, 9),
                    },
                })
            })
            .map_err(|e| format!("hosts: {e}"))?;
        let mut out = Vec::new();
        for r in rows {
            let h = r.map_err(|e| format!("hosts: {e}"))?;
            if let Ok(s) = &h.spec {
                if s.name != h.name {
                    let reason = format!("spec names host {:?}", s.name);
                    out.push(LoadedHost {
                        spec: Err(Damage { table: "hosts".into(), column: "spec".into(), reason }),
                        ..h
                    });
                    continue;
                }
            }
            out.push(h);
        }
        Ok(out)
    }

    /// The latest `limit` verdicts of `host`, newest first.
    pub fn verdicts(&self, host: &str, limit: u64) -> Result<Vec<VerdictRow>, String> {
        let c = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = c
            .prepare_cached("SELECT id, CAST(row AS TEXT) FROM verdicts WHERE host = ?1 ORDER BY id DESC LIMIT ?2")
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map(params![host, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default()))
            })
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for r in rows {
            let (id, j) = r.map_err(|e| e.to_string())?;
            // One unreadable history row is skipped (and logged), not an error for the
            // host: history is informational, the state is what matters.
            match serde_json::from_str::<VerdictRow>(&j) {
                Ok(mut v) => {
                    v.id = id;
                    out.push(v);
                }
                Err(e) => tracing::error!(table = "verdicts", column = "row", id, host, error = %e,
                    "unreadable verdict row skipped"),
            }
        }
        Ok(out)
    }

    pub fn verdict_count(&self, host: &str) -> Result<u64, String> {
        let c = self.read.lock().unwrap_or_else(|p| p.into_inner());
        c.query_row("SELECT count(*) FROM verdicts WHERE host = ?1", [host], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    }
}

fn apply(c: &Connection, op: &Op, stats: &WriteStats) -> rusqlite::Result<()> {
    match op {
        Op::PutHost { spec, reset_state, now_ms } => {
            let j = serde_json::to_string(spec).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            c.prepare_cached(
                "INSERT INTO hosts(name, spec, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms",
            )?
            .execute(params![spec.name, j, now_ms])?;
            c.prepare_cached("INSERT OR IGNORE INTO host_state(name) VALUES (?1)")?.execute([&spec.name])?;
            if *reset_state {
                c.prepare_cached(
                    "UPDATE host_state SET state = NULL, ak_pem = NULL, ak_source = NULL, accepted_marker = NULL,
                     learned_keys = '[]', status = 'pending', alert = NULL WHERE name = ?1",
                )?
                .execute([&spec.name])?;
            } else {
                c.prepare_cached("UPDATE host_state SET alert = NULL WHERE name = ?1")?.execute([&spec.name])?;
            }
        }
        Op::DeleteHost(name) => {
            c.prepare_cached("DELETE FROM hosts WHERE name = ?1")?.execute([name])?;
        }
        Op::ResetState(name) => {
            c.prepare_cached("INSERT OR IGNORE INTO host_state(name) VALUES (?1)")?.execute([name])?;
            c.prepare_cached(
                "UPDATE host_state SET state = NULL, ak_pem = NULL, ak_source = NULL, accepted_marker = NULL,
                 learned_keys = '[]', status = 'pending', alert = NULL WHERE name = ?1",
            )?
            .execute([name])?;
        }
        Op::Round(w) => {
            let row =
                serde_json::to_string(&w.verdict).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let len = |v: &Option<String>| v.as_ref().map_or(0, String::len) as u64;
            let ak = w.ak.as_ref().map_or(0, |a| a.0.len() + a.1.len()) as u64;
            let bound = 2 * w.name.len() as u64
                + len(&w.state)
                + ak
                + len(&w.accepted_marker)
                + w.status.len() as u64
                + len(&w.alert)
                + len(&w.learned_keys)
                + (w.verdict.verdict.as_str().len() + row.len() + 16) as u64;
            stats.statements.fetch_add(2, Ordering::Relaxed);
            stats.bound_bytes.fetch_add(bound, Ordering::Relaxed);
            c.prepare_cached(
                "UPDATE host_state SET state = COALESCE(?2, state), ak_pem = COALESCE(?3, ak_pem),
                 ak_source = COALESCE(?4, ak_source), accepted_marker = COALESCE(?5, accepted_marker),
                 status = ?6, rounds = rounds + 1, alert = COALESCE(alert, ?7),
                 learned_keys = COALESCE(?8, learned_keys) WHERE name = ?1",
            )?
            .execute(params![
                w.name,
                w.state,
                w.ak.as_ref().map(|a| &a.0),
                w.ak.as_ref().map(|a| &a.1),
                w.accepted_marker,
                w.status,
                w.alert,
                w.learned_keys
            ])?;
            let id = c
                .prepare_cached("INSERT INTO verdicts(host, at_ms, verdict, row) VALUES (?1, ?2, ?3, ?4)")?
                .insert(params![w.name, w.verdict.at_ms, w.verdict.verdict.as_str(), row])?;
            // Keep the newest `keep_verdicts`; prune every 64 rows to keep rounds cheap.
            if id % 64 == 0 && w.keep_verdicts > 0 {
                stats.statements.fetch_add(2, Ordering::Relaxed);
                let cut: Option<i64> = c
                    .prepare_cached("SELECT id FROM verdicts WHERE host = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2")?
                    .query_row(params![w.name, w.keep_verdicts as i64], |r| r.get(0))
                    .optional()?;
                if let Some(cut) = cut {
                    c.prepare_cached("DELETE FROM verdicts WHERE host = ?1 AND id <= ?2")?
                        .execute(params![w.name, cut])?;
                }
            }
        }
    }
    Ok(())
}

fn writer(mut c: Connection, rx: mpsc::Receiver<Msg>, stats: &WriteStats) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(batch.len());
        // BEGIN and COMMIT, then a SAVEPOINT and its RELEASE per op.
        let n = batch.len() as u64;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(n, Ordering::Relaxed);
        stats.statements.fetch_add(2 + 2 * n, Ordering::Relaxed);
        let commit = (|| -> rusqlite::Result<()> {
            let mut tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for m in &batch {
                // A savepoint per op: one failing op does not undo the others.
                let sp = tx.savepoint()?;
                match apply(&sp, &m.op, stats) {
                    Ok(()) => {
                        sp.commit()?;
                        results.push(Ok(()));
                    }
                    Err(e) => {
                        drop(sp);
                        results.push(Err(e.to_string()));
                    }
                }
            }
            tx.commit()
        })();
        for (i, m) in batch.into_iter().enumerate() {
            let r = match &commit {
                Ok(()) => results.get(i).cloned().unwrap_or_else(|| Err("not applied".into())),
                Err(e) => Err(format!("commit: {e}")),
            };
            let _ = m.reply.send(r);
        }
    }
}
