//! The REST API: routing, the caller's role ([`crate::roles`]), request bodies (JSON only,
//! size-limited) and the answers (JSON objects with a `format` field).

use super::registry::{ApiError, Shared};
use crate::model::{HostPatch, HostSpec, API_FORMAT};
use crate::roles;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use imasnap_net::http::{self, error_response, json_response, param, query, Body, Handler, Peer};
use std::sync::Arc;

/// Largest request body (a policy is at most 32 MiB, PEMs are small).
const MAX_REQUEST: usize = 40 << 20;
const DEFAULT_VERDICTS: u64 = 50;
const MAX_VERDICTS: u64 = 10_000;

pub struct Api {
    v: Shared,
}

fn err((s, m): ApiError) -> Response<Body> {
    error_response(s, m)
}

/// A JSON answer: objects get `"format"`, lists are wrapped as `{"format", key: [...]}`.
fn answer(status: StatusCode, v: &impl serde::Serialize, list_key: &str) -> Response<Body> {
    let mut j = match serde_json::to_value(v) {
        Ok(j) => j,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("answer: {e}")),
    };
    if j.is_array() {
        j = serde_json::json!({ list_key: j });
    }
    if let Some(o) = j.as_object_mut() {
        o.insert("format".into(), API_FORMAT.into());
    }
    json_response(status, &j)
}

fn ok(v: &impl serde::Serialize) -> Response<Body> {
    answer(StatusCode::OK, v, "items")
}

impl Api {
    pub fn new(v: Shared) -> Self {
        Self { v }
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let role = match roles::authorize(peer.cert.as_deref(), &method) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %peer.addr, %method, %path, reason = %e, "api request refused");
                return error_response(StatusCode::FORBIDDEN, e);
            }
        };
        tracing::debug!(peer = %peer.addr, %role, %method, %path, "api request");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let v = &self.v;
        match (&method, parts.as_slice()) {
            (&Method::GET, ["v1", "health"]) => ok(&v.health()),
            (&Method::GET, ["metrics"]) => {
                http::text_response(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", v.metrics_text())
            }
            (&Method::GET, ["v1", "hosts"]) => answer(StatusCode::OK, &v.list(), "hosts"),
            (&Method::POST, ["v1", "hosts"]) => {
                let spec: HostSpec = match body_json(req).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                match v.add_host(spec).await {
                    Ok(s) => answer(StatusCode::CREATED, &s, "items"),
                    Err(e) => err(e),
                }
            }
            (&Method::GET, ["v1", "hosts", name]) => match v.host_status(name) {
                Some(s) => ok(&s),
                None => error_response(StatusCode::NOT_FOUND, format!("no host {name}")),
            },
            (&Method::PATCH, ["v1", "hosts", name]) | (&Method::PUT, ["v1", "hosts", name]) => {
                let name = name.to_string();
                let patch: HostPatch = match body_json(req).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                match v.update_host(&name, patch).await {
                    Ok(s) => ok(&s),
                    Err(e) => err(e),
                }
            }
            (&Method::DELETE, ["v1", "hosts", name]) => match v.remove_host(name).await {
                Ok(()) => ok(&serde_json::json!({ "removed": name })),
                Err(e) => err(e),
            },
            (&Method::GET, ["v1", "hosts", name, "verdicts"]) => {
                let q = query(&req);
                let limit = match param(&q, "limit").map(str::parse::<u64>) {
                    None => DEFAULT_VERDICTS,
                    Some(Ok(n)) => n.min(MAX_VERDICTS),
                    Some(Err(_)) => {
                        return error_response(
                            StatusCode::BAD_REQUEST,
                            format!("limit must be a number 0-{MAX_VERDICTS}"),
                        )
                    }
                };
                if v.host_status(name).is_none() {
                    return error_response(StatusCode::NOT_FOUND, format!("no host {name}"));
                }
                match v.verdicts(name, limit) {
                    Ok(rows) => answer(StatusCode::OK, &rows, "verdicts"),
                    Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
                }
            }
            (&Method::POST, ["v1", "hosts", name, "attest"]) => match v.attest_now(name).await {
                Ok(row) => ok(&row),
                Err(e) => err(e),
            },
            (&Method::POST, ["v1", "hosts", name, "reset"]) => match v.reset_host(name).await {
                Ok(s) => ok(&s),
                Err(e) => err(e),
            },
            (&Method::GET, _) => match crate::dashboard::route(v, &parts) {
                Some(r) => r,
                None => error_response(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
            },
            (&Method::POST, ["v1", "hosts", name, "enrol"]) => match v.enrol(name).await {
                Ok(s) => ok(&s),
                Err(e) => err(e),
            },
            (&Method::POST, ["v1", "hosts", name, "enrol", "challenge"]) => {
                let name = name.to_string();
                let p: imasnap_wire::enrolment::EkPresentation = match body_json(req).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                match v.enrol_challenge(&name, &p) {
                    Ok(c) => ok(&c),
                    Err(e) => err(e),
                }
            }
            (&Method::POST, ["v1", "hosts", name, "enrol", "response"]) => {
                let name = name.to_string();
                let r: crate::enrol::ChallengeResponse = match body_json(req).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                match v.enrol_response(&name, &r).await {
                    Ok(s) => ok(&s),
                    Err(e) => err(e),
                }
            }
            _ => error_response(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
        }
    }
}

/// `application/json`, or a `+json` type, with any parameters.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The JSON body: 415 for another content type, 413 by `content-length` before reading
/// (or while reading, for a chunked body), 400 for bad JSON.
async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let ct = req.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if !is_json(ct) {
        return Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the body must be application/json, not {}", ct.unwrap_or("(no content-type)")),
        ));
    }
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if let Some(n) = declared.and_then(|v| v.parse::<u64>().ok()) {
        if n > MAX_REQUEST as u64 {
            return Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("content-length {n} exceeds the limit of {MAX_REQUEST} bytes"),
            ));
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn finding_8_json_content_types() {
        assert!(super::is_json(Some("application/json")));
        assert!(super::is_json(Some("Application/JSON; charset=utf-8")));
        assert!(super::is_json(Some("application/merge-patch+json")));
        assert!(!super::is_json(Some("text/plain")));
        assert!(!super::is_json(Some("application/x-www-form-urlencoded")));
        assert!(!super::is_json(None));
    }
}
