//! `tandem-fake-backend`: a real HTTP backend for tests and demos.
//!
//! Every answer carries `X-Served-By: <name>`, and by default the body is
//! the name. Endpoints:
//!
//! - `GET /stats`: `{"name": ..., "requests": N}` (requests other than
//!   `/stats`, `/healthz` and `/_admin/*`);
//! - `GET /healthz`: 200, or 503 after `POST /_admin/health/fail` (until
//!   `POST /_admin/health/ok`);
//! - `/status/{code}`: answers that status;
//! - `/delay/{ms}`: waits, then answers;
//! - `/headers`: the request's headers as a JSON object;
//! - `/echo`: the request body back;
//! - `/stall`: a 200 head and the first bytes of a body, then silence
//!   (the connection stays open);
//! - `/ws`: a WebSocket echo;
//! - anything else: the name (after `--delay-ms`, with `--status`).
//!
//! Keep-alive is on (HTTP/1.1 and HTTP/2 prior knowledge).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use clap::Parser;

/// A fake HTTP backend that says who it is.
#[derive(Debug, Parser)]
struct Args {
    /// Listener (host:port).
    #[arg(long, env = "FAKE_BACKEND_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name returned in bodies and the X-Served-By header.
    #[arg(long, env = "FAKE_BACKEND_NAME", default_value = "backend")]
    name: String,
    /// Delay before answering plain requests (a slow backend), milliseconds.
    #[arg(long, env = "FAKE_BACKEND_DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
    /// Status of plain requests (e.g. 500 for a sick backend).
    #[arg(long, env = "FAKE_BACKEND_STATUS", default_value_t = 200)]
    status: u16,
}

struct Backend {
    name: String,
    delay: Duration,
    status: StatusCode,
    header: HeaderValue,
    requests: AtomicU64,
    healthy: AtomicBool,
}

type Shared = Arc<Backend>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = Arc::new(Backend {
        header: HeaderValue::from_str(&args.name)?,
        name: args.name,
        delay: Duration::from_millis(args.delay_ms),
        status: StatusCode::from_u16(args.status)?,
        requests: AtomicU64::new(0),
        healthy: AtomicBool::new(true),
    });
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/healthz", get(healthz))
        .route("/_admin/health/fail", post(health_fail))
        .route("/_admin/health/ok", post(health_ok))
        .route("/status/{code}", any(status))
        .route("/delay/{ms}", any(delay))
        .route("/headers", any(headers))
        .route("/echo", any(echo))
        .route("/stall", get(stall))
        .route("/ws", get(ws))
        .fallback(name)
        .layer(middleware::from_fn_with_state(backend.clone(), served_by))
        .with_state(backend.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Tests read this line to learn the port.
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn served_by(State(b): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !(path == "/stats" || path == "/healthz" || path.starts_with("/_admin/")) {
        b.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut resp = next.run(req).await;
    resp.headers_mut().insert("x-served-by", b.header.clone());
    resp
}

async fn name(State(b): State<Shared>) -> (StatusCode, String) {
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    (b.status, b.name.clone())
}

async fn stats(State(b): State<Shared>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "name": b.name,
        "requests": b.requests.load(Ordering::Relaxed),
        "healthy": b.healthy.load(Ordering::Relaxed),
    }))
}

async fn healthz(State(b): State<Shared>) -> (StatusCode, &'static str) {
    if b.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "failing on purpose\n")
    }
}

async fn health_fail(State(b): State<Shared>) -> &'static str {
    b.healthy.store(false, Ordering::Relaxed);
    "healthz now fails\n"
}

async fn health_ok(State(b): State<Shared>) -> &'static str {
    b.healthy.store(true, Ordering::Relaxed);
    "healthz now passes\n"
}

async fn status(State(b): State<Shared>, Path(code): Path<u16>) -> Response {
    match StatusCode::from_u16(code) {
        Ok(s) => (s, b.name.clone()).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "no such status\n").into_response(),
    }
}

async fn delay(State(b): State<Shared>, Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    b.name.clone()
}

async fn headers(h: HeaderMap) -> impl IntoResponse {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &h {
        out.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    axum::Json(out)
}

async fn echo(body: Bytes) -> Body {
    Body::from(body)
}

async fn stall() -> Body {
    let first = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("partial ")) });
    Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
}

async fn ws(up: WebSocketUpgrade) -> Response {
    up.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
