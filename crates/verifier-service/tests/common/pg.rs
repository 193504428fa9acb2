//! PostgreSQL for the tests: the server scripts/test.sh starts (scripts/postgres.sh) and
//! exports as IMASNAP_POSTGRES_URL. Without it a PostgreSQL test fails, unless
//! IMASNAP_SKIP_POSTGRES=1: the same rule as swtpm's and Keylime's.

pub const ENV_URL: &str = "IMASNAP_POSTGRES_URL";
pub const ENV_SKIP: &str = "IMASNAP_SKIP_POSTGRES";

/// The server's URL, or `None` when the test is to be skipped.
pub fn base_url() -> Option<String> {
    if std::env::var(ENV_SKIP).is_ok_and(|v| v == "1") {
        eprintln!("PostgreSQL test skipped: {ENV_SKIP}=1");
        return None;
    }
    let Ok(url) = std::env::var(ENV_URL) else {
        panic!(
            "this test needs PostgreSQL: run it through scripts/test.sh, or start a throwaway server with \
             `scripts/postgres.sh start DIR 55432` and set {ENV_URL}=postgres://imasnap@127.0.0.1:55432/postgres, \
             or set {ENV_SKIP}=1 to skip it"
        );
    };
    Some(url)
}

/// A new, empty database for one test (tests run in parallel), as a URL.
pub fn fresh_db(tag: &str) -> Option<String> {
    let base = base_url()?;
    // Identifiers stop at 63 bytes.
    let tag: String = tag.chars().take(32).collect();
    let name = format!("imasnap_{tag}_{}_{:08x}", std::process::id(), rand::random::<u32>()).to_lowercase();
    let b = base.clone();
    let n = name.clone();
    // The synchronous client may not run on an async runtime's thread.
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&b, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{ENV_URL}={b}: cannot connect: {e}"));
        // CREATE DATABASE copies template1 and fails while another one does: retry.
        let mut tries = 0;
        while let Err(e) = c.batch_execute(&format!("CREATE DATABASE {n}")) {
            tries += 1;
            assert!(tries < 50, "CREATE DATABASE {n}: {e}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    })
    .join()
    .unwrap();
    Some(with_db(&base, &name))
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = head[scheme_end..].find('/').map(|i| scheme_end + i).unwrap_or(head.len());
    format!("{}/{db}{query}", &head[..host_end])
}

/// Runs `sql` on `url` (outside the async runtime) and returns the rows as strings.
pub fn query(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let (u, s) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        c.simple_query(&s)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()
    })
    .join()
    .unwrap()
}
