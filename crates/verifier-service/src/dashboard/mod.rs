//! The web dashboard, served by the verifier on its REST listener (so behind the same
//! mutual TLS and roles: a browser needs a client certificate with role `reader` or
//! `admin`). Read-only: every route is a `GET`.
//!
//! | route | |
//! |---|---|
//! | `GET /` | redirect to `/dashboard/` |
//! | `GET /dashboard/`, `GET /dashboard/hosts/{name}` | the page (one HTML document; the script draws the fleet or the host) |
//! | `GET /dashboard/assets/{app.js,style.css}` | embedded in the binary: no CDN, no external fetch |
//! | `GET /dashboard/api/fleet` | hosts by status, failing first ([`view::fleet`]) |
//! | `GET /dashboard/api/hosts/{name}` | one host: timeline, segment chain, log size, failure ([`view::host`]) |
//! | `GET /dashboard/events` | server-sent events: `change` whenever a host's status or round count moves |

pub mod view;

use crate::service::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, X_CONTENT_TYPE_OPTIONS};
use hyper::{Response, StatusCode};
use imasnap_net::http::{error_response, full, json_response, response, Body};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Everything comes from the verifier itself; scripts and styles only from files (no
/// inline code), images only inline SVG built by the script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Event streams open at once; past it the page falls back to polling.
const MAX_STREAMS: usize = 64;
/// How often a stream looks for changes, and how long one lasts (the browser reconnects).
const STREAM_TICK: Duration = Duration::from_secs(1);
const STREAM_LIFE: Duration = Duration::from_secs(600);
/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

static STREAMS: AtomicUsize = AtomicUsize::new(0);

fn hardened(mut r: Response<Body>, cache: &'static str) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    hardened(response(StatusCode::OK, content_type, full(body)), "no-cache")
}

/// Answers a dashboard route (`parts`: the path split on `/`), or `None` when the path
/// is not one. The caller has checked the role for `GET`.
pub fn route(v: &Shared, parts: &[&str]) -> Option<Response<Body>> {
    let r = match parts {
        [""] => {
            let mut r = response(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", full("see /dashboard/\n"));
            r.headers_mut().insert(LOCATION, HeaderValue::from_static("/dashboard/"));
            r
        }
        ["dashboard"] | ["dashboard", ""] | ["dashboard", "hosts", _] => asset("text/html; charset=utf-8", INDEX_HTML),
        ["dashboard", "assets", "app.js"] => asset("text/javascript; charset=utf-8", APP_JS),
        ["dashboard", "assets", "style.css"] => asset("text/css; charset=utf-8", STYLE_CSS),
        ["dashboard", "api", "fleet"] => hardened(json_response(StatusCode::OK, &view::fleet(v)), "no-store"),
        ["dashboard", "api", "hosts", name] => match view::host(v, name) {
            Ok(Some(j)) => hardened(json_response(StatusCode::OK, &j), "no-store"),
            Ok(None) => error_response(StatusCode::NOT_FOUND, format!("no host {name}")),
            Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        ["dashboard", "events"] => events(v.clone()),
        _ => return None,
    };
    Some(r)
}

/// Ends a stream's slot when the stream is dropped (client gone, or its time is up).
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `text/event-stream`: one `change` event (data: the fleet's fingerprint) at once and
/// whenever it moves; the page then fetches the JSON it shows.
fn events(v: Shared) -> Response<Body> {
    if STREAMS.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS {
        STREAMS.fetch_sub(1, Ordering::Relaxed);
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "too many event streams; poll instead");
    }
    let slot = Slot;
    let start = Instant::now();
    // State: (the verifier, last fingerprint sent, last write, the slot).
    let init = (v, None::<u64>, Instant::now(), slot);
    let stream = futures_util::stream::unfold(init, move |(v, last, mut wrote, slot)| async move {
        loop {
            if start.elapsed() > STREAM_LIFE {
                return None;
            }
            let fp = view::fingerprint(&v);
            if last != Some(fp) {
                let ev = format!("event: change\ndata: {fp:x}\n\n");
                return Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(ev))),
                    (v, Some(fp), Instant::now(), slot),
                ));
            }
            if wrote.elapsed() >= KEEPALIVE {
                wrote = Instant::now();
                return Some((Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n"))), (v, last, wrote, slot)));
            }
            tokio::time::sleep(STREAM_TICK).await;
        }
    });
    let body = StreamBody::new(stream).boxed();
    hardened(response(StatusCode::OK, "text/event-stream", body), "no-store")
}
