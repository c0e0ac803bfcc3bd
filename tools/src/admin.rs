//! The admin HTTP API: Prometheus metrics, health, brokers, partitions, the effective config
//! and the log level. HTTP is `tiny_http`'s; the API runs on its own threads, never on a shard:
//! what it needs from the shards it asks through the [`AdminHub`] (one message per shard per
//! request), so a scrape never blocks a shard's data path.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /v1/health`, `/v1/health/live`, `/v1/health/ready` | JSON; 200, or 503 when not live / not ready |
//! | `GET /v1/brokers` | this broker: node id, addresses, version, shards, data dir, uptime |
//! | `GET /v1/partitions[?topic=NAME]` | every partition: shard, offsets, size, segments, state |
//! | `GET /v1/config` | the effective broker config and where it came from |
//! | `GET`, `PUT /v1/log-level` | the log filter; PUT sets it (body: a filter directive) |

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use corelog_net::admin::{self, AdminHub};
use serde_json::json;

use crate::logging::LogControl;

/// How long a request waits for the shards' answers: a shard slower than this is reported down.
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Threads answering requests: a scrape waiting on a stuck shard does not hold up a health check.
const WORKERS: usize = 2;

/// Largest request body read (a log filter directive).
const BODY_BYTES_MAX: u64 = 4096;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const JSON: &str = "application/json";

/// What the API serves, shared by its threads.
pub struct AdminState {
    pub hub: Arc<AdminHub>,
    pub log: Option<Arc<LogControl>>,
    /// `{"source": ..., "config": {...}}`.
    pub config: serde_json::Value,
    /// This broker as `/v1/brokers` lists it; completed once the Kafka listener is bound.
    pub broker: Mutex<serde_json::Value>,
}

/// An HTTP answer: status, content type, body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn json(status: u16, value: &serde_json::Value) -> Self {
        Self { status, content_type: JSON, body: value.to_string() }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &json!({ "error": message.into() }))
    }
}

/// Answers one request. `body` is the request body (read only for PUT).
pub fn route(state: &AdminState, method: &str, url: &str, body: &str) -> Answer {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let path = path.trim_end_matches('/');
    match (method, path) {
        ("GET", "/metrics") => {
            let collected = state.hub.collect(SHARD_ANSWER_TIMEOUT);
            Answer { status: 200, content_type: OPENMETRICS, body: admin::render_metrics(&state.hub, collected) }
        }
        ("GET", "/v1/health" | "/v1/health/live" | "/v1/health/ready") => {
            let collected = state.hub.ping(SHARD_ANSWER_TIMEOUT);
            let (live, ready, body) = admin::health_json(&state.hub, &collected);
            let ok = match path {
                "/v1/health/live" => live,
                _ => ready,
            };
            Answer::json(if ok { 200 } else { 503 }, &body)
        }
        ("GET", "/v1/brokers") => {
            let mut broker = state.broker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            broker["uptime_seconds"] = json!(state.hub.uptime().as_secs());
            Answer::json(200, &json!([broker]))
        }
        ("GET", "/v1/partitions") => {
            let topic = query.split('&').find_map(|pair| pair.strip_prefix("topic=")).map(percent_decode);
            let topic = topic.as_deref();
            let collected = state.hub.collect(SHARD_ANSWER_TIMEOUT);
            if !collected.all_up() {
                let (down, starting) = (&collected.down, &collected.starting);
                let message = format!("shards not answering: down {down:?}, still starting {starting:?}");
                return Answer::error(503, message);
            }
            Answer::json(200, &admin::partitions_json(&collected, topic))
        }
        ("GET", "/v1/config") => Answer::json(200, &state.config),
        ("GET", "/v1/log-level") => match &state.log {
            Some(log) => Answer::json(200, &json!({ "filter": log.filter() })),
            None => Answer::error(503, "logging is not under the broker's control"),
        },
        ("PUT", "/v1/log-level") => match &state.log {
            Some(log) => match log.set(body) {
                Ok(()) => Answer::json(200, &json!({ "filter": log.filter() })),
                Err(message) => Answer::error(400, message),
            },
            None => Answer::error(503, "logging is not under the broker's control"),
        },
        (_, "/metrics" | "/v1/health" | "/v1/health/live" | "/v1/health/ready" | "/v1/brokers" | "/v1/partitions")
        | (_, "/v1/config" | "/v1/log-level") => Answer::error(405, format!("{method} is not allowed on {path}")),
        _ => Answer::error(404, format!("no such endpoint: {path}")),
    }
}

/// The running API.
pub struct AdminServer {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `address` (failing clearly when it is taken) and starts answering.
    pub fn start(address: SocketAddr, state: Arc<AdminState>) -> Result<Self, String> {
        let server = tiny_http::Server::http(address)
            .map_err(|e| format!("cannot listen on {address} for the admin API (admin_listen): {e}"))?;
        let bound = match server.server_addr() {
            tiny_http::ListenAddr::IP(bound) => bound,
            other => return Err(format!("the admin API is bound to an unexpected address {other:?}")),
        };
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(WORKERS);
        for worker in 0..WORKERS {
            let (server, state, stop) = (Arc::clone(&server), Arc::clone(&state), Arc::clone(&stop));
            let thread = std::thread::Builder::new()
                .name(format!("admin-{worker}"))
                .spawn(move || serve(&server, &state, &stop))
                .map_err(|e| format!("cannot start the admin API thread: {e}"))?;
            workers.push(thread);
        }
        Ok(Self { address: bound, stop, workers })
    }

    /// Stops answering and waits for the threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn serve(server: &tiny_http::Server, state: &AdminState, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let mut request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(%error, "admin API: receiving a request failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let method = request.method().as_str().to_string();
        let url = request.url().to_string();
        let mut body = String::new();
        if method == "PUT" || method == "POST" {
            // One byte more than allowed tells an oversized body from one that just fits.
            let read = request.as_reader().take(BODY_BYTES_MAX + 1).read_to_string(&mut body);
            if let Err(error) = read {
                let answer = Answer::error(400, format!("unreadable request body: {error}"));
                respond(request, answer, &method, &url);
                continue;
            }
            if body.len() as u64 > BODY_BYTES_MAX {
                let answer = Answer::error(413, format!("the request body is over {BODY_BYTES_MAX} bytes"));
                respond(request, answer, &method, &url);
                continue;
            }
        }
        let answer = route(state, &method, &url, &body);
        respond(request, answer, &method, &url);
    }
}

fn respond(request: tiny_http::Request, answer: Answer, method: &str, url: &str) {
    let status = answer.status;
    // Always a Content-Length: every body is in memory, and simple clients need no chunk decoding.
    let mut response =
        tiny_http::Response::from_string(answer.body).with_status_code(status).with_chunked_threshold(usize::MAX);
    if let Ok(header) = tiny_http::Header::from_bytes(&b"Content-Type"[..], answer.content_type.as_bytes()) {
        response.add_header(header);
    }
    if let Err(error) = request.respond(response) {
        tracing::debug!(%error, method, url, "admin API: the response could not be written");
    }
}

/// `%XX` escapes (and `+` for a space) of a query value decoded; malformed escapes are kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod percent_tests {
    use super::percent_decode;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("orders%2Eeu"), "orders.eu");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz1"), "%zz1");
    }
}
