//! imasnap-net: the mutual-TLS HTTP kit both services share, with nothing of either
//! service in it (no agent, store, kernel model or verifier).
//!
//! - [`tls`]: rustls server and client configurations (client certificates required by
//!   servers, only the configured CA trusted by clients) and the `[tls]` config table.
//! - [`http`]: an HTTP/1.1 accept loop over TLS for servers, a keep-alive connection for
//!   clients, size-limited body reads and JSON responses.
//! - [`endpoint`]: `https://host:port` addresses, parsed with `http::Uri`.
//! - [`devpki`]: a development CA and leaf certificates (tests, trying things out).
//! - [`duration`]: `"30s"`-style durations in both services' TOML files.
//! - [`shutdown_signal`]: SIGINT or SIGTERM, for both daemons.
//! - [`notify`]: systemd's `READY=1`/`STOPPING=1` datagrams for `Type=notify` units.

pub mod devpki;
pub mod duration;
pub mod endpoint;
pub mod http;
pub mod notify;
pub mod tls;

pub use endpoint::{Endpoint, EndpointError};

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
