//! Starting and stopping the service: the REST API and the scheduler.

use super::registry::{Shared, Verifier};
use super::routes::Api;
use crate::VerifierConfig;
use imasnap_net::http;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running verifier service (`service` is the verifier).
pub type Running = http::Running<Shared>;

/// Starts the REST API on `listener` and, if `schedule`, the scheduler.
pub fn spawn(
    listener: TcpListener,
    api_tls: Arc<rustls::ServerConfig>,
    v: Shared,
    schedule: bool,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(http::serve(listener, api_tls, Arc::new(Api::new(v.clone())), rx.clone()))];
    if schedule {
        tasks.push(tokio::spawn(v.clone().schedule(rx.clone())));
    }
    // Replicas: leases and the reload of other replicas' changes (a no-op with SQLite).
    tasks.push(tokio::spawn(v.clone().sync(rx)));
    Ok(Running { addr, service: v, shutdown: tx, tasks })
}

/// `imasnap verifier run`: the whole service until SIGINT/SIGTERM.
pub async fn run(cfg: VerifierConfig) -> anyhow::Result<()> {
    let stop = imasnap_net::shutdown_signal();
    let api_tls = cfg.tls.server()?;
    let agent_tls = cfg.agent_tls.client()?;
    let listener = TcpListener::bind(&cfg.listen).await.map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
    let v = Verifier::open(cfg, agent_tls).map_err(|e| anyhow::anyhow!(e))?;
    let running = spawn(listener, api_tls, v, true)?;
    tracing::info!(addr = %running.addr, "verifier service listening");
    println!("listening on {}", running.addr);
    imasnap_net::notify::ready();
    stop.await;
    imasnap_net::notify::stopping();
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
