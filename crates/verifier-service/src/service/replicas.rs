//! Replicas on PostgreSQL: the lease cycle (heartbeat, renew, claim a fair share), the
//! reload of hosts that other replicas registered or attested, and the on-demand claim
//! of `POST /v1/hosts/{name}/attest`. With SQLite none of this runs: one process owns all.

use super::registry::{HostRt, Shared, Verifier};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;

impl Verifier {
    /// How often leases renew and hosts reload: a third of the lease, at most a second
    /// (the REST view of other replicas' hosts lags by at most this).
    fn sync_period(&self) -> Option<Duration> {
        let r = self.replica.as_ref()?;
        Some(Duration::from_millis((r.lease_ms / 3).clamp(10, 1000)))
    }

    /// Runs until `shutdown`; then hands this replica's leases back.
    pub async fn sync(self: Shared, mut shutdown: watch::Receiver<bool>) {
        let Some(period) = self.sync_period() else { return };
        let mut iv = tokio::time::interval(period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = iv.tick() => {}
                _ = shutdown.changed() => break,
            }
            self.sync_once().await;
        }
        let v = self.clone();
        let released = tokio::task::spawn_blocking(move || match v.replica.as_ref() {
            Some(r) => v.db.release(&r.id),
            None => Ok(()),
        })
        .await;
        if let Ok(Err(e)) = released {
            tracing::warn!(error = %e, "leases not released (they expire on their own)");
        }
    }

    /// One lease cycle and reload.
    pub async fn sync_once(self: &Shared) {
        let Some(r) = self.replica.as_ref() else { return };
        let (id, lease_ms) = (r.id.clone(), r.lease_ms);
        let v = self.clone();
        let cycle = tokio::task::spawn_blocking(move || v.db.lease_cycle(&id, lease_ms))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let view = match cycle {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(error = %e, "lease cycle failed");
                self.set_db_error(Some(e));
                let last = r.last_ok.lock().unwrap_or_else(|p| p.into_inner());
                // Past one lease period the leases are gone: stop scheduling.
                if last.elapsed() > Duration::from_millis(r.lease_ms) {
                    r.owned().clear();
                    self.set_leases_held(0);
                }
                drop(last);
                return;
            }
        };
        *r.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.set_db_error(None);
        if !view.claimed.is_empty() {
            tracing::info!(replica = %r.id, claimed = view.claimed.len(), held = view.held.len(), "leases claimed");
        }
        *r.replicas.lock().unwrap_or_else(|p| p.into_inner()) = view.replicas;
        // Newly claimed hosts are read again before they are scheduled: their last owner
        // moved them on.
        let claimed: HashSet<String> = view.claimed.into_iter().collect();
        if !claimed.is_empty() {
            if let Err(e) = self.load_hosts(claimed.iter().cloned().collect(), &claimed).await {
                tracing::warn!(error = %e, "reload of claimed hosts failed");
            }
        }
        let held: HashSet<String> = view.held.into_iter().collect();
        self.set_leases_held(held.len() as u64);
        *r.owned() = held;
        // What other replicas changed (for the REST view) is read in its own task: with
        // thousands of hosts it takes longer than a lease period, and the cycle that keeps
        // the leases must never wait for it.
        if !r.reloading.swap(true, Ordering::AcqRel) {
            let v = self.clone();
            tokio::spawn(async move {
                if let Err(e) = v.reload(&HashSet::new()).await {
                    tracing::warn!(error = %e, "host reload failed");
                }
                if let Some(r) = v.replica.as_ref() {
                    r.reloading.store(false, Ordering::Release);
                }
            });
        }
    }

    /// Reads the hosts whose stored version differs from this view (or that are in
    /// `force`), adds new ones and, after a full comparison, drops removed ones. Hosts in a
    /// round are left alone.
    async fn reload(self: &Shared, force: &HashSet<String>) -> Result<(), String> {
        let v = self.clone();
        let changed = tokio::task::spawn_blocking(move || v.db.changed()).await.map_err(|e| e.to_string())??;
        let mut stale = Vec::new();
        {
            let hosts = self.hosts();
            if changed.full {
                let names: HashSet<&str> = changed.versions.iter().map(|(n, _)| n.as_str()).collect();
                // Gone from the list (or registered after it was read): the load decides.
                stale.extend(
                    hosts.iter().filter(|(n, h)| !h.busy && !names.contains(n.as_str())).map(|(n, _)| n.clone()),
                );
            }
            for (n, ver) in &changed.versions {
                match hosts.get(n) {
                    Some(h) if h.busy => {}
                    Some(h) if h.version == *ver && !force.contains(n) => {}
                    _ => stale.push(n.clone()),
                }
            }
        }
        self.load_hosts(stale, force).await
    }

    /// Reads hosts `names` again from the database (added, replaced or dropped), a few
    /// hundred per query; a host in `force` is due at once.
    async fn load_hosts(self: &Shared, names: Vec<String>, force: &HashSet<String>) -> Result<(), String> {
        for chunk in names.chunks(500) {
            let v = self.clone();
            let asked = chunk.to_vec();
            let loaded =
                tokio::task::spawn_blocking(move || v.db.load_many(asked)).await.map_err(|e| e.to_string())??;
            // Parsed before the registry is locked (state JSON, AK, policy).
            let mut found: std::collections::HashMap<String, HostRt> = loaded
                .into_iter()
                .map(|(row, last)| {
                    let name = row.name.clone();
                    let mut fresh = HostRt::from_db(row);
                    fresh.last = last;
                    (name, fresh)
                })
                .collect();
            let mut hosts = self.hosts();
            for n in chunk {
                match found.remove(n) {
                    None => {
                        hosts.remove(n);
                    }
                    Some(fresh) => match hosts.get_mut(n) {
                        Some(h) if h.busy => {}
                        Some(h) => {
                            let due = h.next_due;
                            h.replace(fresh);
                            h.next_due = if force.contains(n) { Instant::now() } else { due };
                        }
                        None => {
                            hosts.insert(n.clone(), fresh);
                        }
                    },
                }
            }
        }
        Ok(())
    }

    /// `POST /v1/hosts/{name}/attest` on a replica: claims the host if it is free (or
    /// already ours) and reads it again if it was not ours. `Err`: who holds it.
    pub(crate) async fn claim_now(self: &Shared, name: &str) -> Result<(), String> {
        let Some(r) = self.replica.as_ref() else { return Ok(()) };
        let (id, lease_ms, host) = (r.id.clone(), r.lease_ms, name.to_string());
        let v = self.clone();
        let got = tokio::task::spawn_blocking(move || v.db.claim(&id, &host, lease_ms))
            .await
            .map_err(|e| e.to_string())??;
        if !got {
            return Err(format!("host {name} is leased by another replica; ask it, or wait for the lease to expire"));
        }
        let was_ours = !r.owned().insert(name.to_string());
        if !was_ours {
            let force: HashSet<String> = [name.to_string()].into();
            self.load_hosts(vec![name.to_string()], &force).await?;
        }
        Ok(())
    }
}
