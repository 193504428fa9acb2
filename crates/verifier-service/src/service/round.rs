//! One attestation round of one host, in steps: take the host's view ([`Verifier::begin`]),
//! fetch evidence ([`Verifier::fetch`]), judge it on a blocking thread ([`judge`]), save
//! ([`Verifier::save`]), update the view ([`Verifier::apply`]) and log.

use super::registry::{now_ms, Shared, Verifier};
use crate::attest::{self, request_from, RoundResult};
use crate::db::{Op, RoundWrite, REFUSED};
use crate::model::{pinned_der, HostSpec, HostState, Verdict, VerdictRow};
use crate::policy::{self, LoadedPolicy};
use hyper::{Method, StatusCode};
use imasnap_net::http::Conn;
use imasnap_policy::KeyRing;
use imasnap_tpm::AkPublic;
use imasnap_verifier::{Failure, Restart, State};
use rand::RngCore;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a round starts from: the host's view when it began.
struct RoundInput {
    spec: HostSpec,
    state: Option<State>,
    ak: Option<AkPublic>,
    policy: Option<Arc<LoadedPolicy>>,
    learned: Arc<KeyRing>,
    conn: Option<Conn>,
    generation: u64,
    version: i64,
}

/// Evidence fetched, or why not (error class, detail, the connection if still usable).
type Fetched = Result<(Vec<u8>, Vec<u8>, Conn), (&'static str, String, Option<Conn>)>;

/// What a judged round changes, beside its verdict row.
#[derive(Default)]
struct Judged {
    state: Option<State>,
    enrolled: Option<AkPublic>,
    accepted: Option<serde_json::Value>,
    learned: Option<KeyRing>,
}

fn reject(row: &mut VerdictRow, f: &Failure) {
    row.verdict = Verdict::Rejected;
    row.reason = Some(f.kind().to_string());
    row.record = f.index();
    row.detail = Some(f.to_string());
}

/// The verdict row and changes of one evaluated round.
fn record_result(row: &mut VerdictRow, rr: RoundResult) -> Judged {
    let o = &rr.outcome;
    row.mode = Some(o.report.mode.unwrap_or(rr.mode).as_str().to_string());
    if let Some(r) = &o.report.restart {
        row.restart = Some(r.as_str().to_string());
        row.restart_detail = match r {
            Restart::ResetCountChanged { saved, quoted } => Some(format!("saved {saved}, quoted {quoted}")),
            _ => None,
        };
    }
    row.records_replayed = o.report.records_replayed;
    row.tail_records = o.report.tail_records;
    row.evidence = Some(rr.summary.clone());
    if let Some(f) = o.verdict.failure() {
        reject(row, f);
        return Judged::default();
    }
    let j = Judged {
        state: o.state.clone(),
        enrolled: rr.enrolled_ak.clone(),
        accepted: rr.accepted_marker.clone(),
        learned: rr.learned.clone(),
    };
    row.checkpoint = j.state.as_ref().map(|s| s.checkpoint);
    match rr.policy_failures.first() {
        None => row.verdict = Verdict::Verified,
        Some(first) => {
            row.verdict = Verdict::PolicyViolation;
            row.reason = Some("policy".into());
            row.record = first.get("index").and_then(|v| v.as_u64());
            row.detail = Some(format!(
                "{} record(s) break the runtime policy; first: {}",
                rr.policy_failures.len(),
                first.get("message").and_then(|m| m.as_str()).unwrap_or(&first.to_string())
            ));
            row.policy_failures = rr.policy_failures.clone();
        }
    }
    j
}

/// Evidence bodies up to this size are judged on the runtime's own thread: an
/// incremental round (a few hundred records) takes a fraction of a millisecond, less
/// than the hand-off to the blocking pool costs in wake-ups and copies. Larger ones (a
/// first full-history round) go to the blocking pool, so they never stall the runtime.
const INLINE_JUDGE_BYTES: usize = 64 * 1024;

/// Runs the pure round (inline when small, else on a blocking thread) and turns the
/// result into a verdict row.
async fn judge(input: &RoundInput, body: Vec<u8>, nonce: Vec<u8>, row: &mut VerdictRow) -> Result<Judged, String> {
    let (late, tofu, sim) = (input.spec.late_join, input.spec.tofu, input.spec.simulated);
    let r = if body.len() <= INLINE_JUDGE_BYTES {
        let pol = input.policy.as_deref().map(|p| (p, &*input.learned));
        attest::run_round(&body, &nonce, input.state.as_ref(), late, input.ak.as_ref(), tofu, pol, sim)
    } else {
        let (prior, ak, pol, learned) =
            (input.state.clone(), input.ak.clone(), input.policy.clone(), input.learned.clone());
        tokio::task::spawn_blocking(move || {
            let pol = pol.as_deref().map(|p| (p, &*learned));
            attest::run_round(&body, &nonce, prior.as_ref(), late, ak.as_ref(), tofu, pol, sim)
        })
        .await
        .map_err(|e| format!("round worker: {e}"))?
    };
    Ok(match r {
        Err(f) => {
            reject(row, &f);
            Judged::default()
        }
        Ok(rr) => record_result(row, rr),
    })
}

impl Verifier {
    /// One attestation round for `name` (the scheduler's unit of work). Returns the verdict.
    /// The caller has marked the host busy.
    pub async fn attest(self: &Shared, name: &str) -> Result<VerdictRow, String> {
        let _permit = self.sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let mut input = self.begin(name)?;
        let mut row = VerdictRow { host: name.to_string(), at_ms: now_ms(), ..Default::default() };
        row.checkpoint_before = input.state.as_ref().map(|s| s.checkpoint);
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let conn = input.conn.take();
        let (judged, conn_back) = match self.fetch(&input.spec, input.state.as_ref(), conn, timeout).await {
            Err((kind, detail, conn)) => {
                row.verdict = Verdict::Error;
                row.reason = Some(kind.into());
                row.detail = Some(detail);
                (Judged::default(), conn)
            }
            Ok((body, nonce, conn)) => match judge(&input, body, nonce, &mut row).await {
                Ok(j) => (j, Some(conn)),
                Err(e) => {
                    row.verdict = Verdict::Error;
                    row.reason = Some("internal".into());
                    row.detail = Some(e);
                    (Judged::default(), None)
                }
            },
        };
        row.duration_ms = t0.elapsed().as_secs_f64() * 1e3;
        let saved = self.save(name, input.generation, input.version, &row, &judged).await;
        self.count(&row);
        self.apply(name, input.generation, &saved, &row, judged, conn_back);
        if let Err(e) = saved {
            if e.starts_with(REFUSED) {
                // A late round (lease lost, e.g. the process was paused): nothing written.
                tracing::warn!(host = %name, replica = self.replica_id().unwrap_or(""), error = %e,
                    "late round refused: its result is discarded");
            } else {
                tracing::error!(host = %name, error = %e, "round not saved");
            }
            return Err(e);
        }
        if self.record_latencies {
            self.latencies.lock().unwrap_or_else(|p| p.into_inner()).push(row.duration_ms);
        }
        log_round(&row);
        Ok(row)
    }

    /// The host's view at the start of the round (the connection is taken, given back by
    /// [`Verifier::apply`]).
    fn begin(&self, name: &str) -> Result<RoundInput, String> {
        let mut hosts = self.hosts();
        let h = hosts.get_mut(name).ok_or_else(|| format!("no host {name}"))?;
        if let Some(d) = &h.damage {
            h.busy = false;
            return Err(format!("host {name} is unusable ({d}); reset it"));
        }
        Ok(RoundInput {
            spec: h.spec.clone(),
            state: h.state.clone(),
            ak: h.ak.clone(),
            policy: h.policy.clone(),
            learned: h.learned.clone(),
            conn: h.conn.take(),
            generation: h.generation,
            version: h.version,
        })
    }

    /// Saves the round in one transaction, unless the registration changed meanwhile.
    /// Done before the next round of this host can start (it is still `busy`).
    async fn save(
        &self,
        name: &str,
        generation: u64,
        version: i64,
        row: &VerdictRow,
        j: &Judged,
    ) -> Result<i64, String> {
        let write = RoundWrite {
            name: name.to_string(),
            // Compact JSON (`State::from_json` reads it): fewer bytes per round than pretty.
            state: j.state.as_ref().map(serde_json::to_string).transpose().map_err(|e| format!("state: {e}"))?,
            ak: j.enrolled.as_ref().map(|k| (k.to_pem(), "tofu".to_string())),
            accepted_marker: j.accepted.as_ref().map(|v| v.to_string()),
            learned_keys: j.learned.as_ref().map(policy::keys_to_json).transpose()?,
            status: HostState::from(row.verdict).as_str(),
            alert: if row.verdict.is_alert() { serde_json::to_string(row).ok() } else { None },
            verdict: row.clone(),
            keep_verdicts: self.cfg.keep_verdicts,
            expect_version: version,
        };
        let still_same = self.hosts().get(name).is_some_and(|h| h.generation == generation);
        if !still_same {
            return Err("host changed during the round; result discarded".into());
        }
        let r = self.db_write(Op::Round(Box::new(write))).await;
        match &r {
            Ok(_) => self.set_db_error(None),
            Err(e) if !e.starts_with(REFUSED) && !e.starts_with("host changed") => self.set_db_error(Some(e.clone())),
            Err(_) => {}
        }
        r
    }

    fn count(&self, row: &VerdictRow) {
        self.ops.metrics.round(row);
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        if row.verdict == Verdict::Verified {
            self.stats.verified.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frees the host for its next round and, if the round was saved, moves its view on.
    fn apply(
        &self,
        name: &str,
        generation: u64,
        saved: &Result<i64, String>,
        row: &VerdictRow,
        j: Judged,
        conn: Option<Conn>,
    ) {
        let mut hosts = self.hosts();
        let Some(h) = hosts.get_mut(name) else { return };
        h.busy = false;
        h.next_due =
            self.next_attempt(&mut h.retry, h.spec.poll_interval_ms, crate::ops::backoff::is_failure(row.verdict));
        if h.generation != generation {
            return;
        }
        let version = match saved {
            Ok(v) => *v,
            Err(e) if e.starts_with(REFUSED) => {
                // Another replica moved the host on: read it again before the next round
                // (the reload does). SQLite has no reload and no other writer: keep going.
                if self.replica.is_some() {
                    h.version = -1;
                }
                return;
            }
            Err(e) => {
                // Database down: the status says why the round did not count; the state
                // stays where it was (nothing was written).
                let mut failed = row.clone();
                failed.verdict = Verdict::Error;
                failed.reason = Some("database".into());
                failed.detail = Some(format!("round not saved: {e}"));
                h.last = Some(failed);
                h.conn = conn.filter(Conn::is_open);
                return;
            }
        };
        h.version = version;
        if let Some(s) = j.state {
            h.state = Some(s);
        }
        if let Some(l) = j.learned {
            if l.len() != h.learned.len() {
                tracing::info!(host = %name, keys = l.len(), "learned keys (keyring measurements)");
            }
            h.learned = Arc::new(l);
        }
        if let Some(k) = j.enrolled {
            h.ak_pem = Some(k.to_pem());
            h.ak = Some(k);
            h.ak_source = Some("tofu".into());
        }
        if j.accepted.is_some() {
            h.accepted_marker = j.accepted;
        }
        let previous = h.status;
        h.status = row.verdict.into();
        h.rounds += 1;
        self.on_saved_verdict(previous, row, h.rounds);
        if h.alert.is_none() && row.verdict.is_alert() {
            h.alert = Some(row.clone());
        }
        h.last = Some(row.clone());
        h.conn = conn.filter(Conn::is_open);
    }

    /// Connects (or reuses the connection) and fetches evidence with a fresh nonce.
    async fn fetch(&self, spec: &HostSpec, state: Option<&State>, conn: Option<Conn>, timeout: Duration) -> Fetched {
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
        // The agent's framing (header, PEMs) on top of the data limit. A larger
        // `content-length` is refused before any of the body is read.
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
}

fn log_round(row: &VerdictRow) {
    let name = &row.host;
    match row.verdict {
        Verdict::Verified => {
            tracing::debug!(host = %name, checkpoint = row.checkpoint, replayed = row.records_replayed,
            tail = row.tail_records, mode = row.mode.as_deref().unwrap_or(""), ms = row.duration_ms, "verified")
        }
        v => tracing::warn!(host = %name, verdict = %v, reason = row.reason.as_deref().unwrap_or(""),
            record = row.record, detail = row.detail.as_deref().unwrap_or(""), "attestation failed"),
    }
}
