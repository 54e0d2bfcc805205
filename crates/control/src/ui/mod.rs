//! The status page: every control replica serves, on its admin listener,
//! a read-only view of the whole platform at `/ui/` (linked from `/`):
//! alerts first (a `single_active` pool's split brain, proxies' alerts,
//! TCP listeners a proxy cannot bind); the configuration revision, the
//! database and the raft group; every pool with its HTTP and TCP routes and
//! each backend's state and why; every proxy and agent as it last reported
//! (a proxy's listeners among it); and the configuration changes and health
//! transitions as they commit, newest first. A backend has a page of its
//! own with its recorded health history and each agent's view.
//!
//! The page is rendered on the server ([`html`] from the [`view`] model)
//! and usable without JavaScript; a small script ([`assets`]) keeps it live
//! over server-sent events fed by the replica's own streams ([`live`]).
//! Nothing is fetched from elsewhere, and the Content-Security-Policy
//! allows nothing else. It answers from memory, so it keeps working, and
//! says what it cannot know, while the database is away.
//!
//! Read-only: it has no action and accepts only GET. Actions come with
//! component identities and an admin credential (issue 18).

pub mod assets;
mod data;
pub mod html;
pub mod live;
pub mod view;

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use tandem_core::health::BackendKey;
use tandem_core::{BackendAddr, PoolName};

pub use live::{Live, Sources};

use crate::consensus::aggregator::now_ms;
use view::{BackendPage, HistoryFrom};

/// Transitions a backend's page shows.
const HISTORY_LEN: usize = 200;

/// The page's routes, to merge into the admin router.
pub fn router(live: Live) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/events", get(overview_events))
        .route("/ui/pools/{pool}/backends/{address}", get(backend))
        .route(
            "/ui/pools/{pool}/backends/{address}/events",
            get(backend_events),
        )
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/{*rest}", get(not_found))
        .layer(axum::middleware::map_response(protect))
        .with_state(live)
}

/// Headers on every answer: only this origin's stylesheet and script run,
/// the page cannot be framed, nothing is sniffed or leaks a referrer.
async fn protect(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn index(State(live): State<Live>) -> Html<String> {
    Html(html::index(live.replica(), now_ms()))
}

async fn overview(State(live): State<Live>) -> Html<String> {
    let overview = live.overview().await;
    let feed = live.feed();
    Html(html::overview(&overview, &feed.entries))
}

fn too_many() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "10")],
        "too many status page streams on this replica; try again shortly\n",
    )
        .into_response()
}

fn sse(
    stream: impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
    + Send
    + 'static,
) -> Response {
    (
        // A reverse proxy in front must not buffer the stream.
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
        .into_response()
}

async fn overview_events(State(live): State<Live>) -> Response {
    match live.overview_stream().await {
        Some(stream) => sse(stream),
        None => too_many(),
    }
}

/// The backend a path names, in canonical form.
fn backend_key(pool: &str, address: &str) -> Option<BackendKey> {
    Some(BackendKey {
        pool: PoolName::new(pool).ok()?,
        address: BackendAddr::new(address).ok()?,
    })
}

async fn backend(
    State(live): State<Live>,
    Path((pool, address)): Path<(String, String)>,
) -> Response {
    let Some(key) = backend_key(&pool, &address) else {
        return missing(
            &live,
            &format!(
                "There is no backend {address:?} in pool {pool:?}: not a pool name and a host:port."
            ),
        );
    };
    let overview = live.overview().await;
    let state = view::backend_state(&overview, key.pool.as_str(), key.address.as_str());
    let (history, history_from) = history(&live, &key).await;
    if state.backend.is_none() && history.is_empty() {
        return missing(
            &live,
            &format!(
                "Pool {} has no backend {} and none was ever recorded.",
                key.pool, key.address
            ),
        );
    }
    Html(html::backend_page(&BackendPage {
        state,
        history,
        history_from,
    }))
    .into_response()
}

/// A backend's recorded history; from memory while the database cannot
/// be read.
async fn history(live: &Live, key: &BackendKey) -> (Vec<view::HistoryRow>, HistoryFrom) {
    let src = live.sources();
    let why = if src.store.availability().is_up() {
        match tokio::time::timeout(
            Duration::from_secs(2),
            data::history(src.store.pg(), key, HISTORY_LEN),
        )
        .await
        {
            Ok(Ok(rows)) => return (rows, HistoryFrom::Database),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2s".to_string(),
        }
    } else {
        live::unreachable(src.store.availability())
    };
    let table = src.consensus.table();
    (
        view::history_in_memory(&table.recent, key, HISTORY_LEN),
        HistoryFrom::Memory { why },
    )
}

async fn backend_events(
    State(live): State<Live>,
    Path((pool, address)): Path<(String, String)>,
) -> Response {
    let Some(key) = backend_key(&pool, &address) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match live
        .backend_stream(key.pool.to_string(), key.address.to_string())
        .await
    {
        Some(stream) => sse(stream),
        None => too_many(),
    }
}

#[derive(serde::Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

async fn asset(Path(name): Path<String>, Query(q): Query<AssetQuery>) -> Response {
    let Some(asset) = assets::ALL.iter().find(|a| a.name == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Asked for by its hash: the same bytes for good.
    let cache = if q.v.as_deref() == Some(format!("{:016x}", asset.hash).as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
        ],
        asset.body,
    )
        .into_response()
}

fn missing(live: &Live, what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(html::not_found(live.replica(), now_ms(), what)),
    )
        .into_response()
}

async fn not_found(State(live): State<Live>) -> Response {
    missing(&live, "The status page has nothing at this address.")
}
