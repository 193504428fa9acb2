//! The two engines behind one small interface: statements written once (`?N`
//! placeholders, SQL both engines accept), parameters and cells as plain values.

use std::collections::HashMap;
use std::path::PathBuf;

/// A statement parameter.
#[derive(Clone, Debug)]
pub enum Val {
    I(i64),
    T(Option<String>),
    /// A text array (`= ANY(?N)`): PostgreSQL only; SQLite binds NULL.
    A(Vec<String>),
}

impl Val {
    pub fn t(s: impl Into<String>) -> Self {
        Val::T(Some(s.into()))
    }
}

/// A result cell. SQLite's column types are loose: anything textual comes back as text.
#[derive(Clone, Debug)]
pub enum Cell {
    Null,
    I(i64),
    T(String),
}

impl Cell {
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::I(n) => Some(n.to_string()),
            Cell::T(s) => Some(s.clone()),
        }
    }
    pub fn int(&self) -> Option<i64> {
        match self {
            Cell::I(n) => Some(*n),
            Cell::T(s) => s.parse().ok(),
            Cell::Null => None,
        }
    }
}

pub type Rows = Vec<Vec<Cell>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Where the database is: a SQLite file or a PostgreSQL URL.
#[derive(Clone, Debug)]
pub enum Target {
    Sqlite { path: PathBuf, synchronous_full: bool },
    Postgres { url: String },
}

impl Target {
    pub fn dialect(&self) -> Dialect {
        match self {
            Target::Sqlite { .. } => Dialect::Sqlite,
            Target::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// For logs: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Target::Sqlite { path, .. } => path.display().to_string(),
            Target::Postgres { url } => match (url.find("://"), url.rfind('@')) {
                (Some(s), Some(at)) if at > s => {
                    let user = &url[s + 3..at];
                    let user = user.split(':').next().unwrap_or("");
                    format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
                }
                _ => url.clone(),
            },
        }
    }

    pub fn connect(&self) -> Result<Box<dyn SqlConn>, String> {
        match self {
            Target::Sqlite { path, synchronous_full } => {
                let c = rusqlite::Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
                c.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| e.to_string())?;
                c.execute_batch(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = {};",
                    if *synchronous_full { "FULL" } else { "NORMAL" }
                ))
                .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Box::new(Lite(c)))
            }
            Target::Postgres { url } => {
                if url.contains("sslmode=require") || url.contains("sslmode=verify") {
                    return Err(format!(
                        "{}: sslmode other than disable/prefer is not supported yet (connect over a trusted network or a local socket)",
                        self.describe()
                    ));
                }
                let mut cfg: postgres::Config = url.parse().map_err(|e| format!("{}: {e}", self.describe()))?;
                // A dead server must not hang a round forever.
                cfg.connect_timeout(std::time::Duration::from_secs(5));
                cfg.tcp_user_timeout(std::time::Duration::from_secs(10));
                let c = cfg.connect(postgres::NoTls).map_err(|e| format!("{}: {e}", self.describe()))?;
                Ok(Box::new(Pg { c, stmts: HashMap::new(), dead: false }))
            }
        }
    }
}

/// One connection of either engine.
pub trait SqlConn: Send {
    fn dialect(&self) -> Dialect;
    /// Rows changed.
    fn exec(&mut self, sql: &str, p: &[Val]) -> Result<u64, String>;
    fn rows(&mut self, sql: &str, p: &[Val]) -> Result<Rows, String>;
    /// Statements without parameters (transaction control, DDL).
    fn batch(&mut self, sql: &str) -> Result<(), String>;
    /// The connection is gone (reconnect before the next use).
    fn broken(&self) -> bool;
}

struct Lite(rusqlite::Connection);

fn lite_val(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::I(n) => rusqlite::types::Value::Integer(*n),
        Val::T(Some(s)) => rusqlite::types::Value::Text(s.clone()),
        Val::T(None) | Val::A(_) => rusqlite::types::Value::Null,
    }
}

impl SqlConn for Lite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    fn exec(&mut self, sql: &str, p: &[Val]) -> Result<u64, String> {
        let mut st = self.0.prepare_cached(sql).map_err(|e| e.to_string())?;
        st.execute(rusqlite::params_from_iter(p.iter().map(lite_val))).map(|n| n as u64).map_err(|e| e.to_string())
    }
    fn rows(&mut self, sql: &str, p: &[Val]) -> Result<Rows, String> {
        let mut st = self.0.prepare_cached(sql).map_err(|e| e.to_string())?;
        let n = st.column_count();
        let mut q = st.query(rusqlite::params_from_iter(p.iter().map(lite_val))).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(r) = q.next().map_err(|e| e.to_string())? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                use rusqlite::types::ValueRef;
                row.push(match r.get_ref(i) {
                    Ok(ValueRef::Integer(v)) => Cell::I(v),
                    Ok(ValueRef::Text(t)) | Ok(ValueRef::Blob(t)) => Cell::T(String::from_utf8_lossy(t).into_owned()),
                    Ok(ValueRef::Real(x)) => Cell::T(x.to_string()),
                    _ => Cell::Null,
                });
            }
            out.push(row);
        }
        Ok(out)
    }
    fn batch(&mut self, sql: &str) -> Result<(), String> {
        self.0.execute_batch(sql).map_err(|e| e.to_string())
    }
    fn broken(&self) -> bool {
        false
    }
}

struct Pg {
    c: postgres::Client,
    /// Prepared statements by their `?N` text (one round trip saved per use).
    stmts: HashMap<String, postgres::Statement>,
    /// The last error was the connection's (closed, server shutting down).
    dead: bool,
}

/// `?N` → `$N` (no statement here has a `?` inside a string literal).
fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_err(e: postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("postgres: {} ({})", d.message(), d.code().code()),
        None => format!("postgres: {e}"),
    }
}

impl Pg {
    /// The error as text; notes whether the connection is gone (I/O, SQLSTATE 08xxx
    /// connection exceptions, 57xxx operator intervention such as a server shutdown).
    fn err(&mut self, e: postgres::Error) -> String {
        let code = e.as_db_error().map(|d| d.code().code().to_string());
        if code.as_deref().is_none_or(|c| c.starts_with("08") || c.starts_with("57")) {
            self.dead = true;
        }
        pg_err(e)
    }

    fn stmt(&mut self, sql: &str) -> Result<postgres::Statement, String> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = match self.c.prepare(&pg_sql(sql)) {
            Ok(s) => s,
            Err(e) => return Err(self.err(e)),
        };
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

fn pg_params(p: &[Val]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    p.iter()
        .map(|v| match v {
            Val::I(n) => n as &(dyn postgres::types::ToSql + Sync),
            Val::T(s) => s as &(dyn postgres::types::ToSql + Sync),
            Val::A(a) => a as &(dyn postgres::types::ToSql + Sync),
        })
        .collect()
}

impl SqlConn for Pg {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    fn exec(&mut self, sql: &str, p: &[Val]) -> Result<u64, String> {
        let st = self.stmt(sql)?;
        let r = self.c.execute(&st, &pg_params(p));
        r.map_err(|e| self.err(e))
    }
    fn rows(&mut self, sql: &str, p: &[Val]) -> Result<Rows, String> {
        use postgres::types::Type;
        let st = self.stmt(sql)?;
        let rows = match self.c.query(&st, &pg_params(p)) {
            Ok(r) => r,
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let cell = if *col.type_() == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map_err(pg_err)?.map(Cell::I)
                } else if *col.type_() == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i).map_err(pg_err)?.map(|n| Cell::I(n.into()))
                } else {
                    r.try_get::<_, Option<String>>(i).map_err(pg_err)?.map(Cell::T)
                };
                row.push(cell.unwrap_or(Cell::Null));
            }
            out.push(row);
        }
        Ok(out)
    }
    fn batch(&mut self, sql: &str) -> Result<(), String> {
        let r = self.c.batch_execute(sql);
        r.map_err(|e| self.err(e))
    }
    fn broken(&self) -> bool {
        self.dead || self.c.is_closed()
    }
}
