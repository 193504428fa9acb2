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

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing readiness (a "listening on" line,
/// READY=1), so a signal sent right after the announcement is not met by the default
/// action (death without cleanup or STOPPING=1). Needs a Tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async fn first(s: Option<Signal>) {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    async move {
        tokio::select! {
            _ = first(term) => {}
            _ = first(int) => {}
        }
    }
}
