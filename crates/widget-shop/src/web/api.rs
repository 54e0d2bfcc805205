//! The JSON API: the same operations as the pages.
//!
//! ```text
//! GET    /api/widgets                 {"widgets": [...]}
//! GET    /api/widgets/{slug}          a widget
//! GET    /api/cart                    the cart behind the `cart` cookie
//! POST   /api/cart/items              {"widget": "sprocket", "quantity": 2}   (sets the cookie)
//! PUT    /api/cart/items/{slug}       {"quantity": 3}   (0 removes; adds the line, and the
//!                                     cart with its cookie, when missing: the idempotent add)
//! DELETE /api/cart/items/{slug}
//! POST   /api/checkout                {"name": "...", "email": "..."} + Idempotency-Key
//!                                     201 and the order; 200 and `Idempotent-Replayed: true`
//!                                     when this cart already placed it with that key
//! GET    /api/orders/{code}           an order this cart placed
//! ```
//! The `cart` cookie is the shopper's only credential. An Idempotency-Key
//! counts within the cart that sent it: the same key from another cart (or
//! with no cart) is another checkout, never a replay of someone else's
//! order; from the same cart with another name or email it is a 422. An
//! order is shown only to the cart that placed it; anyone else gets the same
//! 404 as for a code never issued. Nothing the shop answers may be stored
//! by a shared cache (`Cache-Control: private, no-store`).
//! Errors: `{"error": {"code": "out_of_stock", "title": "...", "message": "..."}}`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, cart_from, cart_or_new, with_cookie};
use crate::error::Error;
use crate::model::{Cart, CartLine, Cents, Customer, Order, OrderCode, Quantity, Widget};

type ApiResult<T> = Result<T, ApiError>;

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Error> {
    b.map(|Json(t)| t).map_err(|e| Error::Invalid {
        field: "body",
        message: e.body_text(),
    })
}

#[derive(Serialize)]
pub struct WidgetList {
    widgets: Vec<Widget>,
}

#[derive(Serialize)]
pub struct CartBody {
    lines: Vec<CartLine>,
    item_count: i64,
    total_cents: Cents,
}

impl From<Cart> for CartBody {
    fn from(c: Cart) -> CartBody {
        CartBody {
            item_count: c.item_count(),
            total_cents: c.total(),
            lines: c.lines,
        }
    }
}

pub async fn widgets(State(s): State<AppState>) -> ApiResult<Json<WidgetList>> {
    let widgets = s.store()?.widgets().await?;
    Ok(Json(WidgetList { widgets }))
}

pub async fn widget(
    State(s): State<AppState>,
    Path(slug): Path<String>,
) -> ApiResult<Json<Widget>> {
    Ok(Json(s.store()?.widget(&slug).await?))
}

pub async fn cart(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Json<CartBody>> {
    let cart = s.store()?.cart(cart_from(&headers).as_ref()).await?;
    Ok(Json(cart.into()))
}

#[derive(Deserialize)]
pub struct AddItem {
    widget: String,
    quantity: Option<i64>,
}

pub async fn add_to_cart(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<AddItem>, JsonRejection>,
) -> ApiResult<Response> {
    let b = body(b)?;
    let quantity = Quantity::new(b.quantity.unwrap_or(1))?;
    let (cart, cookie) = cart_or_new(&headers);
    let store = s.store()?;
    store.add_to_cart(&cart, &b.widget, quantity).await?;
    let body: CartBody = store.cart(Some(&cart)).await?.into();
    Ok(with_cookie(Json(body).into_response(), cookie))
}

#[derive(Deserialize)]
pub struct SetQuantity {
    quantity: i64,
}

pub async fn set_quantity(
    State(s): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    b: Result<Json<SetQuantity>, JsonRejection>,
) -> ApiResult<Response> {
    let b = body(b)?;
    let store = s.store()?;
    if b.quantity == 0 {
        let cart = cart_from(&headers);
        if let Some(cart) = &cart {
            store.remove_from_cart(cart, &slug).await?;
        }
        let body: CartBody = store.cart(cart.as_ref()).await?.into();
        return Ok(Json(body).into_response());
    }
    let quantity = Quantity::new(b.quantity)?;
    let (cart, cookie) = cart_or_new(&headers);
    store.put_in_cart(&cart, &slug, quantity).await?;
    let body: CartBody = store.cart(Some(&cart)).await?.into();
    Ok(with_cookie(Json(body).into_response(), cookie))
}

pub async fn remove_line(
    State(s): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<CartBody>> {
    let store = s.store()?;
    let cart = cart_from(&headers);
    if let Some(cart) = &cart {
        store.remove_from_cart(cart, &slug).await?;
    }
    Ok(Json(store.cart(cart.as_ref()).await?.into()))
}

#[derive(Deserialize)]
pub struct CheckoutBody {
    name: String,
    email: String,
}

pub async fn checkout(
    State(s): State<AppState>,
    headers: HeaderMap,
    b: Result<Json<CheckoutBody>, JsonRejection>,
) -> ApiResult<Response> {
    let b = body(b)?;
    let placed = s
        .checkout(&headers, Customer::new(&b.name, &b.email), None)
        .await?;
    let location = format!("/api/orders/{}", placed.order.code);
    let mut res = if placed.replayed {
        let mut res = Json(placed.order).into_response();
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        res
    } else {
        (StatusCode::CREATED, Json(placed.order)).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

pub async fn order(
    State(s): State<AppState>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Order>> {
    let code = OrderCode::parse(&code)?;
    let cart = cart_from(&headers);
    Ok(Json(s.store()?.order(&code, cart.as_ref()).await?))
}
