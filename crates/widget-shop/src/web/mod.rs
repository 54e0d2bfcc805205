//! HTTP: the routes, the state handlers share, and the middleware every
//! response goes through (served-by header, metrics, error pages, faults,
//! the request deadline).

pub mod api;
pub mod pages;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tracing::Instrument as _;

use crate::error::{Error, Public};
use crate::faults::{self, Faults};
use crate::html;
use crate::model::{CartId, Customer, IdempotencyKey};
use crate::store::{Placed, Store};

/// The cookie that names a shopper's cart.
pub const CART_COOKIE: &str = "cart";
/// A cart is kept this long after its last change, in seconds.
const CART_COOKIE_MAX_AGE: u64 = 30 * 24 * 3600;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    instance: Arc<str>,
    migrated: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(store: Store, instance: &str, migrated: Arc<AtomicBool>) -> AppState {
        AppState {
            store,
            instance: Arc::from(instance),
            migrated,
        }
    }

    /// The store, once migrations have run; before that the shop answers
    /// 503 rather than "relation does not exist".
    pub fn store(&self) -> Result<&Store, Error> {
        if self.migrated.load(Ordering::Acquire) {
            Ok(&self.store)
        } else {
            Err(Error::Starting)
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A full HTML page around `content`.
    fn render(&self, title: &str, cart_count: Option<i64>, content: &str) -> Response {
        Html(html::page(title, &self.instance, cart_count, content)).into_response()
    }

    /// Places the cart's order; shared by the form and the JSON API.
    async fn checkout(
        &self,
        headers: &HeaderMap,
        customer: Result<Customer, Error>,
        form_key: Option<&str>,
    ) -> Result<Placed, Error> {
        let header_key = match headers.get("idempotency-key") {
            Some(v) => Some(v.to_str().map_err(|_| Error::Invalid {
                field: "Idempotency-Key",
                message: "must be visible ASCII".into(),
            })?),
            None => None,
        };
        // The header wins over the form's hidden field.
        let key = header_key
            .or(form_key.filter(|k| !k.is_empty()))
            .map(IdempotencyKey::new)
            .transpose()?;
        let customer = customer?;
        let cart = cart_from(headers);
        let result = self
            .store()?
            .checkout(cart.as_ref(), &customer, key.as_ref(), &self.instance)
            .await;
        let outcome = match &result {
            Ok(p) if p.replayed => "replayed",
            Ok(_) => "placed",
            Err(e) => e.public().code,
        };
        metrics::counter!("shop_checkouts_total", "outcome" => outcome).increment(1);
        if let Ok(p) = &result
            && !p.replayed
        {
            metrics::counter!("shop_orders_placed_total").increment(1);
            tracing::info!(order = %p.order.code, total = %p.order.total_cents, "order placed");
        }
        result
    }
}

/// The shop's routes with every middleware, plus `extra` (the admin
/// endpoints `/healthz`, `/readyz`, `/metrics`).
pub fn router(state: AppState, faults: Faults, request_timeout: Duration, extra: Router) -> Router {
    let served_by = HeaderValue::from_str(state.instance()).unwrap_or_else(|_| {
        // The instance name is validated at start-up to be visible ASCII.
        HeaderValue::from_static("invalid-instance-name")
    });
    let admin = Router::new()
        .route(
            "/admin/fault",
            get(faults::get_fault)
                .put(faults::put_fault)
                .delete(faults::delete_fault),
        )
        .with_state(faults.clone());
    Router::new()
        .route("/", get(pages::catalogue))
        .route("/widgets/{slug}", get(pages::widget))
        .route("/cart", get(pages::cart))
        .route("/cart/items", post(pages::add_to_cart))
        .route("/cart/items/{slug}", post(pages::update_line))
        .route("/cart/items/{slug}/remove", post(pages::remove_line))
        .route("/checkout", post(pages::checkout))
        .route("/orders/{code}", get(pages::order))
        .route("/api/widgets", get(api::widgets))
        .route("/api/widgets/{slug}", get(api::widget))
        .route("/api/cart", get(api::cart))
        .route("/api/cart/items", post(api::add_to_cart))
        .route(
            "/api/cart/items/{slug}",
            axum::routing::put(api::set_quantity).delete(api::remove_line),
        )
        .route("/api/checkout", post(api::checkout))
        .route("/api/orders/{code}", get(api::order))
        .fallback(not_found)
        .with_state(state.clone())
        .merge(admin)
        .merge(extra)
        // Innermost first: the deadline bounds the handler, faults come
        // before it (a hang must hang), error pages get their frame, then
        // metrics and the served-by header see the final response.
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .layer(middleware::from_fn_with_state(faults, faults::inject))
        .layer(middleware::from_fn_with_state(state, finish_error_pages))
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn(trace_request))
        .layer(middleware::from_fn_with_state(served_by, add_served_by))
        .layer(middleware::from_fn(private))
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    error_response(
        Error::NotFound {
            what: "page",
            key: path.to_string(),
        },
        path.starts_with("/api/"),
    )
}

// === errors ===

/// An error on an HTML route; [`finish_error_pages`] gives it the page frame.
pub struct PageError(pub Error);

/// An error on a JSON route: `{"error": {"code", "message"}}`.
pub struct ApiError(pub Error);

impl<E: Into<Error>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

/// Marks a response whose body is still to be rendered as an error page.
#[derive(Clone)]
struct ErrorPage(Public);

fn with_retry_after(mut res: Response, p: &Public) -> Response {
    if p.status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    res
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let p = self.0.public();
        let mut res = (p.status, p.message.clone()).into_response();
        res.extensions_mut().insert(ErrorPage(p.clone()));
        with_retry_after(res, &p)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let p = self.0.public();
        let body = serde_json::json!({
            "error": { "code": p.code, "title": p.title, "message": p.message }
        });
        with_retry_after((p.status, axum::Json(body)).into_response(), &p)
    }
}

/// `e` as a JSON error (`api`) or an error page.
pub fn error_response(e: Error, api: bool) -> Response {
    if api {
        ApiError(e).into_response()
    } else {
        PageError(e).into_response()
    }
}

// === middleware ===

/// Pages and answers carry a shopper's cart, name and email: no shared
/// cache (a CDN, a caching proxy) may keep them for the next visitor.
async fn private(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("private, no-store"));
    res
}

async fn add_served_by(State(name): State<HeaderValue>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.headers_mut().insert("x-served-by", name);
    res
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = req.method().to_string();
    let start = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::histogram!("shop_http_request_duration_seconds", "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!("shop_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    res
}

/// A server span per request, continuing the caller's trace (the
/// proxy's span, from `traceparent`); the store's queries are its
/// children.
async fn trace_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    tandem_telemetry::continue_http(&span, req.headers());
    let res = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    res
}

/// Renders [`PageError`]s as full pages with the badge.
async fn finish_error_pages(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // "Try again" repeats a GET; after a form post it leads to the cart.
    let retry = if req.method() == Method::GET {
        req.uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string())
    } else {
        "/cart".to_string()
    };
    let mut res = next.run(req).await;
    let Some(ErrorPage(p)) = res.extensions_mut().remove::<ErrorPage>() else {
        return res;
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = html::page(p.title, state.instance(), None, &html::error(&p, &retry));
    Response::from_parts(parts, Body::from(body))
}

/// Abandons a request that runs past `limit` with a 503.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => error_response(Error::Timeout(limit), api),
    }
}

// === cookies ===

/// The cart named by the request's cookie, if it is one we could have issued.
pub fn cart_from(headers: &HeaderMap) -> Option<CartId> {
    tandem_telemetry::web::cookie(headers, CART_COOKIE).and_then(CartId::parse)
}

/// The request's cart, or a new one and the cookie that names it.
fn cart_or_new(headers: &HeaderMap) -> (CartId, Option<HeaderValue>) {
    match cart_from(headers) {
        Some(id) => (id, None),
        None => {
            let id = CartId::random();
            let cookie = format!(
                "{CART_COOKIE}={}; Path=/; Max-Age={CART_COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax",
                id.as_str()
            );
            // The id is hex, so the cookie is always a valid header value.
            let cookie = HeaderValue::from_str(&cookie)
                .unwrap_or_else(|_| HeaderValue::from_static("cart=; Max-Age=0"));
            (id, Some(cookie))
        }
    }
}

fn with_cookie(mut res: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cart_among_other_cookies() {
        let id = CartId::random();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; cart={}; lang=en", id.as_str()))
                .expect("valid header"),
        );
        assert_eq!(cart_from(&headers), Some(id));
    }

    #[test]
    fn ignores_a_tampered_cart_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("cart=../../etc"));
        assert_eq!(cart_from(&headers), None);
        let (id, cookie) = cart_or_new(&headers);
        let cookie = cookie.expect("a new cart gets a cookie");
        let cookie = cookie.to_str().expect("ascii");
        assert!(cookie.starts_with(&format!("cart={};", id.as_str())));
        assert!(cookie.contains("HttpOnly"));
    }
}
