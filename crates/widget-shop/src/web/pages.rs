//! The HTML pages and the forms they post. Every post answers with a
//! redirect (post/redirect/get), so a reload never repeats it.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{AppState, PageError, cart_from, cart_or_new, with_cookie};
use crate::error::Error;
use crate::html;
use crate::model::{Customer, IdempotencyKey, OrderCode, Quantity};

type PageResult = Result<Response, PageError>;

fn form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, Error> {
    f.map(|Form(t)| t).map_err(|e| Error::Invalid {
        field: "form",
        message: e.body_text(),
    })
}

/// A quantity typed into a form; empty means 1.
fn quantity_field(raw: Option<&str>, allow_zero: bool) -> Result<Option<Quantity>, Error> {
    let raw = raw.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("1");
    let n: i64 = raw.parse().map_err(|_| Error::Invalid {
        field: "quantity",
        message: format!("must be a whole number (got {raw:?})"),
    })?;
    if allow_zero && n == 0 {
        return Ok(None);
    }
    Quantity::new(n).map(Some)
}

pub async fn catalogue(State(s): State<AppState>, headers: HeaderMap) -> PageResult {
    let store = s.store()?;
    let cart = cart_from(&headers);
    let (widgets, cart) = tokio::try_join!(store.widgets(), store.cart(cart.as_ref()))?;
    Ok(s.render(
        "Catalogue",
        Some(cart.item_count()),
        &html::catalogue(&widgets),
    ))
}

pub async fn widget(
    State(s): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let store = s.store()?;
    let cart = cart_from(&headers);
    let (widget, cart) = tokio::try_join!(store.widget(&slug), store.cart(cart.as_ref()))?;
    Ok(s.render(
        &widget.name,
        Some(cart.item_count()),
        &html::widget(&widget),
    ))
}

pub async fn cart(State(s): State<AppState>, headers: HeaderMap) -> PageResult {
    let cart = s.store()?.cart(cart_from(&headers).as_ref()).await?;
    let key = IdempotencyKey::random();
    Ok(s.render(
        "Your cart",
        Some(cart.item_count()),
        &html::cart(&cart, key.as_str()),
    ))
}

#[derive(Deserialize)]
pub struct AddForm {
    widget: String,
    quantity: Option<String>,
}

pub async fn add_to_cart(
    State(s): State<AppState>,
    headers: HeaderMap,
    f: Result<Form<AddForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    let quantity = quantity_field(f.quantity.as_deref(), false)?.ok_or(Error::Invalid {
        field: "quantity",
        message: "must be at least 1".into(),
    })?;
    let (cart, cookie) = cart_or_new(&headers);
    s.store()?.add_to_cart(&cart, &f.widget, quantity).await?;
    Ok(with_cookie(Redirect::to("/cart").into_response(), cookie))
}

#[derive(Deserialize)]
pub struct QuantityForm {
    quantity: Option<String>,
}

/// Sets a line's quantity; 0 removes it.
pub async fn update_line(
    State(s): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    f: Result<Form<QuantityForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    let quantity = quantity_field(f.quantity.as_deref(), true)?;
    if let Some(cart) = cart_from(&headers) {
        let store = s.store()?;
        match quantity {
            Some(q) => store.set_quantity(&cart, &slug, q).await?,
            None => store.remove_from_cart(&cart, &slug).await?,
        }
    }
    Ok(Redirect::to("/cart").into_response())
}

pub async fn remove_line(
    State(s): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    if let Some(cart) = cart_from(&headers) {
        s.store()?.remove_from_cart(&cart, &slug).await?;
    }
    Ok(Redirect::to("/cart").into_response())
}

#[derive(Deserialize)]
pub struct CheckoutForm {
    name: String,
    email: String,
    idempotency_key: Option<String>,
}

pub async fn checkout(
    State(s): State<AppState>,
    headers: HeaderMap,
    f: Result<Form<CheckoutForm>, FormRejection>,
) -> PageResult {
    let f = form(f)?;
    let placed = s
        .checkout(
            &headers,
            Customer::new(&f.name, &f.email),
            f.idempotency_key.as_deref(),
        )
        .await?;
    Ok(Redirect::to(&format!("/orders/{}?placed=1", placed.order.code)).into_response())
}

#[derive(Deserialize)]
pub struct OrderQuery {
    placed: Option<String>,
}

pub async fn order(
    State(s): State<AppState>,
    Path(code): Path<String>,
    Query(q): Query<OrderQuery>,
    headers: HeaderMap,
) -> PageResult {
    let code = OrderCode::parse(&code)?;
    let store = s.store()?;
    let cart = cart_from(&headers);
    // Only the cart that placed it sees it.
    let (order, cart) =
        tokio::try_join!(store.order(&code, cart.as_ref()), store.cart(cart.as_ref()))?;
    Ok(s.render(
        &format!("Order {}", order.code),
        Some(cart.item_count()),
        &html::order(&order, q.placed.is_some()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_quantities() {
        let q = |raw, zero| quantity_field(raw, zero).map(|q| q.map(Quantity::get));
        assert_eq!(q(None, false).ok(), Some(Some(1)));
        assert_eq!(q(Some(" 3 "), false).ok(), Some(Some(3)));
        assert_eq!(q(Some("0"), true).ok(), Some(None));
        assert!(q(Some("0"), false).is_err());
        assert!(q(Some("two"), false).is_err());
        assert!(q(Some("100"), false).is_err());
    }
}
