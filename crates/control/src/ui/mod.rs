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
//! Read-only by default. A person who signs in with an admin credential
//! ([`session`]) can drain, enable or disable a backend from its page
//! ([`actions`]): POST forms with a CSRF token, same-origin only, each
//! confirmed on a page of its own, through the same write as `tandemctl`.

pub mod actions;
pub mod assets;
mod data;
pub mod html;
pub mod live;
pub mod session;
pub mod view;

use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tandem_core::health::BackendKey;
use tandem_core::{BackendAddr, PoolName};

pub use live::{Live, Sources};

use crate::auth::Credentials;
use crate::consensus::aggregator::now_ms;
use html::Viewer;
use view::{BackendPage, HistoryFrom};

/// Transitions a backend's page shows.
const HISTORY_LEN: usize = 200;

/// What the page's handlers share: the live view, and who may act.
#[derive(Clone)]
pub struct Ui {
    live: Live,
    access: Arc<Access>,
}

/// The credentials the page checks and the sessions it opened.
#[derive(Debug)]
struct Access {
    credentials: Credentials,
    sessions: session::Sessions,
}

impl FromRef<Ui> for Live {
    fn from_ref(ui: &Ui) -> Live {
        ui.live.clone()
    }
}

/// Forms the page posts are small: a token, a CSRF token, a confirmation.
const FORM_LIMIT: usize = 8 * 1024;

/// The page's routes, to merge into the admin router. `credentials`: what
/// a person signs in with (the replica's, as for the gRPC API).
pub fn router(live: Live, credentials: Credentials) -> Router {
    let ui = Ui {
        live,
        access: Arc::new(Access {
            credentials,
            sessions: session::Sessions::default(),
        }),
    };
    Router::new()
        .route("/", get(index))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/events", get(overview_events))
        .route(
            "/ui/signin",
            get(actions::sign_in_page).post(actions::sign_in),
        )
        .route("/ui/signout", post(actions::sign_out))
        .route("/ui/pools/{pool}/backends/{address}", get(backend))
        .route(
            "/ui/pools/{pool}/backends/{address}/events",
            get(backend_events),
        )
        .route(
            "/ui/pools/{pool}/backends/{address}/{action}",
            post(actions::act),
        )
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/{*rest}", get(not_found))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(axum::middleware::map_response(protect))
        .with_state(ui)
}

/// Marks an answer whose page holds forms: its policy lets them post here.
#[derive(Debug, Clone, Copy)]
struct Forms;

/// An HTML page as an answer; `forms` when it holds any.
pub(crate) fn page_response(status: StatusCode, page: String, forms: bool) -> Response {
    let mut res = (status, Html(page)).into_response();
    if forms {
        res.extensions_mut().insert(Forms);
    }
    res
}

/// Headers on every answer: only this origin's stylesheet and script run,
/// forms post only here and only from pages that hold them, the page
/// cannot be framed, nothing is sniffed or leaks a referrer.
async fn protect(mut res: Response) -> Response {
    let forms = res.extensions().get::<Forms>().is_some();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(if forms {
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        } else {
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        }),
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

/// Who asks, from the request's session cookie.
fn viewer(ui: &Ui, headers: &HeaderMap) -> Viewer {
    actions::viewer_of(actions::signed_in(ui, headers).map(|(_, s)| s).as_ref())
}

async fn index(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let viewer = viewer(&ui, &headers);
    let page = html::index(ui.live.replica(), now_ms(), &viewer);
    page_response(StatusCode::OK, page, viewer.has_forms())
}

async fn overview(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let viewer = viewer(&ui, &headers);
    let overview = ui.live.overview().await;
    let feed = ui.live.feed();
    let page = html::overview(&overview, &feed.entries, &viewer);
    page_response(StatusCode::OK, page, viewer.has_forms())
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
    State(ui): State<Ui>,
    Path((pool, address)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let viewer = viewer(&ui, &headers);
    let live = &ui.live;
    let Some(key) = backend_key(&pool, &address) else {
        return missing(
            live,
            &viewer,
            &format!(
                "There is no backend {address:?} in pool {pool:?}: not a pool name and a host:port."
            ),
        );
    };
    let overview = live.overview().await;
    let state = view::backend_state(&overview, key.pool.as_str(), key.address.as_str());
    let (history, history_from) = history(live, &key).await;
    if state.backend.is_none() && history.is_empty() {
        return missing(
            live,
            &viewer,
            &format!(
                "Pool {} has no backend {} and none was ever recorded.",
                key.pool, key.address
            ),
        );
    }
    let page = html::backend_page(
        &BackendPage {
            state,
            history,
            history_from,
        },
        &viewer,
    );
    page_response(StatusCode::OK, page, viewer.has_forms())
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

fn missing(live: &Live, viewer: &Viewer, what: &str) -> Response {
    let page = html::not_found(live.replica(), now_ms(), what, viewer);
    page_response(StatusCode::NOT_FOUND, page, viewer.has_forms())
}

async fn not_found(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let viewer = viewer(&ui, &headers);
    missing(
        &ui.live,
        &viewer,
        "The status page has nothing at this address.",
    )
}
