//! End to end: the real `widget-shop` binary on a throwaway Postgres, driven
//! over HTTP the way a shopper's browser or an API client would.

mod common;

use std::time::{Duration, Instant};

use common::{
    Shop, Shopper, assert_api_error, client, count_orders, db, hidden_field, served_by,
    shop_database, stock_of,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn a_shopper_browses_fills_a_cart_checks_out_and_sees_the_order() -> anyhow::Result<()> {
    let (_pg, url) = shop_database()?;
    let shop = Shop::start("shop-1", &url).await?;
    let db = db(&url).await?;
    let mut ada = Shopper::new(&shop.base());

    // The catalogue: a dozen widgets, and the badge naming the server.
    let res = ada.get("/").await?;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served_by(&res).as_deref(), Some("shop-1"));
    let html = res.text().await?;
    assert_eq!(html.matches(r#"<article class="card""#).count(), 12);
    for name in ["Sprocket", "Flux Capacitor", "Mega Widget"] {
        assert!(html.contains(name), "the catalogue lists {name}");
    }
    assert!(html.contains("served by <strong>shop-1</strong>"));
    assert!(html.contains("$12.50"), "prices are shown");

    let html = ada.page("/widgets/flux-capacitor").await?;
    assert!(html.contains("Requires 1.21 gigawatts"));
    assert!(html.contains("12 in stock"));

    // Add to cart: a redirect to the cart, and a cookie naming it.
    let res = ada
        .post_form(
            "/cart/items",
            &[("widget", "flux-capacitor"), ("quantity", "2")],
        )
        .await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/cart");
    assert!(ada.cart.is_some(), "the shop set a cart cookie");
    ada.post_form("/cart/items", &[("widget", "sprocket")])
        .await?;

    let cart = ada.page("/cart").await?;
    assert!(cart.contains("Flux Capacitor") && cart.contains("Sprocket"));
    assert!(
        cart.contains(r#"id="cart-total">$188.50<"#),
        "2 × $88 + $12.50"
    );
    assert!(cart.contains(r#"id="cart-count">3<"#));
    let key = hidden_field(&cart, "idempotency_key").expect("the checkout form carries a key");

    // Checkout: a redirect to the order page.
    let form = [
        ("name", "Ada Lovelace"),
        ("email", "ada@example.com"),
        ("idempotency_key", key.as_str()),
    ];
    let res = ada.post_form("/checkout", &form).await?;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let order_url = res.headers()["location"].to_str()?.to_string();
    assert!(order_url.starts_with("/orders/W-"), "{order_url}");

    let order = ada.page(&order_url).await?;
    assert!(order.contains("Thank you, Ada Lovelace!"));
    assert!(order.contains(r#"id="order-total">$188.50<"#));
    assert!(order.contains("recorded by <strong>shop-1</strong>"));

    // A double submit of the same form is the same order.
    let again = ada.post_form("/checkout", &form).await?;
    assert_eq!(again.headers()["location"].to_str()?, order_url);

    // The cart is empty, the stock went down, one order exists.
    assert!(ada.page("/cart").await?.contains("Your cart is empty"));
    assert_eq!(stock_of(&db, "flux-capacitor").await?, 10);
    assert_eq!(stock_of(&db, "sprocket").await?, 119);
    assert_eq!(count_orders(&db).await?, 1);

    // Unknown pages are a clear 404, still naming the server.
    let res = ada.get("/widgets/unobtainium").await?;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(served_by(&res).as_deref(), Some("shop-1"));
    assert!(res.text().await?.contains("We could not find that widget."));
    let res = ada.get("/orders/W-NOTANORDER").await?;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn the_json_api_does_the_same() -> anyhow::Result<()> {
    let (_pg, url) = shop_database()?;
    let shop = Shop::start("shop-api", &url).await?;
    let mut bot = Shopper::new(&shop.base());

    let res = bot.get("/api/widgets").await?;
    assert_eq!(served_by(&res).as_deref(), Some("shop-api"));
    let list: Value = res.json().await?;
    let widgets = list["widgets"].as_array().expect("a list");
    assert_eq!(widgets.len(), 12);
    assert!(widgets.iter().all(|w| w["price_cents"].as_i64() > Some(0)));

    let gizmo: Value = bot.get("/api/widgets/gizmo").await?.json().await?;
    assert_eq!(gizmo["name"], "Gizmo");
    assert_eq!(gizmo["price_cents"], 3400);

    bot.add("gizmo", 1).await?;
    let cart = bot.add("doodad", 4).await?;
    assert_eq!(cart["item_count"], 5);
    assert_eq!(cart["total_cents"], 3400 + 4 * 499);

    let cart: Value = bot
        .send_json(
            Method::PUT,
            "/api/cart/items/doodad",
            json!({"quantity": 2}),
        )
        .await?
        .json()
        .await?;
    assert_eq!(cart["total_cents"], 3400 + 2 * 499);
    // PUT sets the line, adding it when missing: sent twice (an answer
    // lost, the request sent again), the cart is the same.
    for _ in 0..2 {
        let res = bot
            .send_json(
                Method::PUT,
                "/api/cart/items/sprocket",
                json!({"quantity": 3}),
            )
            .await?;
        assert_eq!(res.status(), 200);
        let cart: Value = res.json().await?;
        let sprockets: Vec<&Value> = cart["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .filter(|l| l["slug"] == "sprocket")
            .collect();
        assert_eq!(sprockets.len(), 1, "{cart}");
        assert_eq!(sprockets[0]["quantity"], 3, "{cart}");
    }
    let res = bot
        .send_json(
            Method::PUT,
            "/api/cart/items/sprocket",
            json!({"quantity": 0}),
        )
        .await?;
    assert_eq!(res.status(), 200);
    let cart: Value = bot
        .send_json(Method::DELETE, "/api/cart/items/gizmo", json!({}))
        .await?
        .json()
        .await?;
    assert_eq!(cart["lines"].as_array().map(Vec::len), Some(1));

    // Validation errors name the field.
    let res = bot
        .send_json(
            Method::POST,
            "/api/cart/items",
            json!({"widget": "gizmo", "quantity": 500}),
        )
        .await?;
    assert_api_error(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid", "quantity").await?;

    let res = bot.checkout(None).await?;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str()?.to_string();
    let order: Value = res.json().await?;
    assert_eq!(order["total_cents"], 2 * 499);
    assert_eq!(order["placed_by"], "shop-api");
    let fetched: Value = bot.get(&location).await?.json().await?;
    assert_eq!(fetched["code"], order["code"]);
    assert_eq!(fetched["lines"][0]["slug"], "doodad");

    // The cart is now empty: checking out again is refused.
    let res = bot.checkout(None).await?;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let err: Value = res.json().await?;
    assert_eq!(err["error"]["code"], "empty_cart");

    // Metrics count what happened.
    let metrics = client()
        .get(shop.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("shop_orders_placed_total 1"), "{metrics}");
    assert!(metrics.contains("shop_http_requests_total"));
    Ok(())
}

#[tokio::test]
async fn concurrent_checkouts_of_the_last_widget_exactly_one_succeeds() -> anyhow::Result<()> {
    let (_pg, url) = shop_database()?;
    // Two instances on one database: the race is between servers too.
    let shops = [
        Shop::start("shop-1", &url).await?,
        Shop::start("shop-2", &url).await?,
    ];
    let db = db(&url).await?;
    sqlx::query("UPDATE widgets SET stock = 1 WHERE slug = 'contraption'")
        .execute(&db)
        .await?;

    let mut shoppers = Vec::new();
    for i in 0..10 {
        let mut s = Shopper::new(&shops[i % 2].base());
        s.add("contraption", 1).await?;
        shoppers.push(s);
    }
    let results = futures::future::join_all(shoppers.iter_mut().enumerate().map(|(i, s)| {
        let key = format!("last-widget-{i}");
        async move {
            let res = s.checkout(Some(&key)).await?;
            let status = res.status();
            let body: Value = res.json().await?;
            anyhow::Ok((status, body))
        }
    }))
    .await;

    let mut won = 0;
    for r in results {
        let (status, body) = r?;
        match status {
            StatusCode::CREATED => won += 1,
            StatusCode::CONFLICT => assert_eq!(body["error"]["code"], "out_of_stock", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(won, 1, "exactly one shopper gets the last contraption");
    assert_eq!(stock_of(&db, "contraption").await?, 0, "never negative");
    assert_eq!(count_orders(&db).await?, 1);

    // The catalogue now says so, and it cannot be added any more.
    let mut late = Shopper::new(&shops[0].base());
    assert!(late.page("/").await?.contains("Sold out"));
    let res = late
        .send_json(
            Method::POST,
            "/api/cart/items",
            json!({"widget": "contraption"}),
        )
        .await?;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    Ok(())
}

#[tokio::test]
async fn a_retried_checkout_with_the_same_idempotency_key_places_one_order() -> anyhow::Result<()> {
    let (_pg, url) = shop_database()?;
    let shops = [
        Shop::start("shop-1", &url).await?,
        Shop::start("shop-2", &url).await?,
    ];
    let db = db(&url).await?;

    // A retry after the first attempt committed, as after a lost response.
    let mut ada = Shopper::new(&shops[0].base());
    ada.add("whatchamacallit", 3).await?;
    let first = ada.checkout(Some("retry-me")).await?;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await?;
    // The retry lands on the other server, as it would behind a proxy.
    ada.base = shops[1].base();
    let retry = ada.checkout(Some("retry-me")).await?;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await?;
    assert_eq!(retry["code"], first["code"]);
    assert_eq!(count_orders(&db).await?, 1);
    assert_eq!(stock_of(&db, "whatchamacallit").await?, 37);

    // Retries racing each other on both servers: still one order.
    let mut bob = Shopper::new(&shops[1].base());
    bob.add("gizmo", 2).await?;
    let cart = bob.cart.clone();
    let attempts = futures::future::join_all((0..6).map(|i| {
        let mut s = Shopper::new(&shops[i % 2].base());
        s.cart = cart.clone();
        async move {
            let res = s.checkout(Some("racing-retries")).await?;
            let status = res.status();
            let body: Value = res.json().await?;
            anyhow::Ok((status, body))
        }
    }))
    .await;
    let mut codes = std::collections::HashSet::new();
    let mut created = 0;
    for a in attempts {
        let (status, body) = a?;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}: {body}"
        );
        created += usize::from(status == StatusCode::CREATED);
        codes.insert(body["code"].to_string());
    }
    assert_eq!(created, 1, "one attempt placed it, the others replayed it");
    assert_eq!(codes.len(), 1, "every attempt answered with the same order");
    assert_eq!(count_orders(&db).await?, 2);
    assert_eq!(stock_of(&db, "gizmo").await?, 58, "stock taken once");

    // The same key from another cart is that cart's own checkout, never
    // someone else's order (see tests/isolation.rs for more).
    let mut eve = Shopper::new(&shops[0].base());
    eve.add("doodad", 1).await?;
    let res = eve.checkout(Some("retry-me")).await?;
    assert_eq!(res.status(), StatusCode::CREATED);
    let eves: Value = res.json().await?;
    assert_ne!(eves["code"], first["code"]);
    assert_eq!(eves["total_cents"], 499);
    assert_eq!(count_orders(&db).await?, 3);

    // The same key from the same cart with other details is a client bug:
    // 422 naming the key, nothing placed.
    let res = ada
        .checkout_as(Some("retry-me"), "Ada Byron", "ada@example.com")
        .await?;
    let reused = "idempotency_key_reused";
    assert_api_error(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        reused,
        "\"retry-me\"",
    )
    .await?;
    assert_eq!(count_orders(&db).await?, 3);
    Ok(())
}

#[tokio::test]
async fn with_its_database_down_the_shop_says_so_quickly_and_recovers() -> anyhow::Result<()> {
    let (pg, url) = shop_database()?;
    let shop = Shop::start("shop-1", &url).await?;
    let mut ada = Shopper::new(&shop.base());
    ada.add("sprocket", 1).await?;

    pg.stop()?;

    // Generous bounds: the behaviour is "an answer, not a hang" (the shop's
    // own acquire timeout is 1 s).
    let quick = Duration::from_secs(5);
    let start = Instant::now();
    let res = client().get(shop.url("/readyz")).send().await?;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.text().await?.contains("database"));
    assert!(
        start.elapsed() < quick,
        "/readyz took {:?}",
        start.elapsed()
    );

    for path in ["/", "/cart", "/widgets/sprocket"] {
        let start = Instant::now();
        let res = ada.get(path).await?;
        let took = start.elapsed();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(served_by(&res).as_deref(), Some("shop-1"));
        assert!(res.headers().contains_key("retry-after"));
        let html = res.text().await?;
        assert!(
            html.contains("The shop&#39;s database is unavailable"),
            "{path}: {html}"
        );
        assert!(html.contains("served by <strong>shop-1</strong>"));
        assert!(took < quick, "{path} took {took:?}");
    }
    let start = Instant::now();
    let res = ada.checkout(Some("while-down")).await?;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err: Value = res.json().await?;
    assert_eq!(err["error"]["code"], "database_unavailable");
    assert!(start.elapsed() < quick);

    // The process itself is fine.
    let res = client().get(shop.url("/healthz")).send().await?;
    assert_eq!(res.status(), StatusCode::OK);

    // The database comes back: so does the shop, by itself, and the
    // shopper's cart and retried checkout go through.
    pg.restart()?;
    tandem_testkit::wait_http_ok(&shop.url("/readyz"), Duration::from_secs(15)).await?;
    let res = ada.checkout(Some("while-down")).await?;
    assert_eq!(res.status(), StatusCode::CREATED);
    Ok(())
}

#[tokio::test]
async fn a_shop_started_before_its_database_waits_then_serves() -> anyhow::Result<()> {
    let (pg, url) = shop_database()?;
    pg.stop()?;
    let mut shop = Shop::spawn("shop-early", &url, &[])?;
    // It answers at once, but its health check keeps it out of a load
    // balancer's rotation until it has its database.
    let healthz = shop.url("/healthz");
    tandem_testkit::wait_until(Duration::from_secs(15), &healthz, || async {
        client().get(&healthz).send().await.is_ok()
    })
    .await?;
    let res = client().get(&healthz).send().await?;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.text().await?, "starting\n");

    let res = client().get(shop.url("/readyz")).send().await?;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.text().await?.contains("not migrated yet"));
    let res = client().get(shop.url("/")).send().await?;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.text().await?.contains("The shop is starting"));

    pg.restart()?;
    shop.wait_ready().await?;
    tandem_testkit::wait_http_ok(&healthz, Duration::from_secs(15)).await?;
    let html = Shopper::new(&shop.base()).page("/").await?;
    assert!(html.contains("Sprocket"));
    Ok(())
}

#[tokio::test]
async fn faults_are_injected_with_the_token_and_turned_off() -> anyhow::Result<()> {
    let (_pg, url) = shop_database()?;
    let shop = Shop::start("shop-1", &url).await?;
    let c = client();

    // The admin endpoint wants the token.
    let res = c
        .put(shop.url("/admin/fault"))
        .json(&json!({"mode": "error"}))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = c
        .put(shop.url("/admin/fault"))
        .bearer_auth("not-the-token")
        .json(&json!({"mode": "error"}))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = c
        .put(shop.url("/admin/fault"))
        .bearer_auth(common::SHOP_ADMIN_TOKEN)
        .json(&json!({"mode": "explode"}))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // 500s: pages, API and probes.
    shop.set_fault(json!({"mode": "error"})).await?;
    let res = c.get(shop.url("/")).send().await?;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(served_by(&res).as_deref(), Some("shop-1"));
    assert!(res.text().await?.contains("Something broke (on purpose)"));
    let res = c.get(shop.url("/api/widgets")).send().await?;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let err: Value = res.json().await?;
    assert_eq!(err["error"]["code"], "fault_injected");
    assert_eq!(
        c.get(shop.url("/healthz")).send().await?.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        c.get(shop.url("/metrics")).send().await?.status(),
        StatusCode::OK,
        "metrics stay observable"
    );

    // Slow.
    shop.set_fault(json!({"mode": "slow", "delay_ms": 400}))
        .await?;
    let start = Instant::now();
    assert_eq!(c.get(shop.url("/")).send().await?.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(400));

    // Hang: no answer until the fault is turned off, then the answer comes.
    shop.set_fault(json!({"mode": "hang"})).await?;
    let hung = tokio::spawn(c.get(shop.url("/api/widgets")).send());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!hung.is_finished(), "a hung shop does not answer");
    let res = c
        .delete(shop.url("/admin/fault"))
        .bearer_auth(common::SHOP_ADMIN_TOKEN)
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    let released = tokio::time::timeout(Duration::from_secs(5), hung).await???;
    assert_eq!(released.status(), StatusCode::OK);

    let state: Value = c
        .get(shop.url("/admin/fault"))
        .bearer_auth(common::SHOP_ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(state["fault"]["mode"], "off");
    Ok(())
}

#[tokio::test]
async fn without_an_admin_token_fault_injection_is_disabled() -> anyhow::Result<()> {
    let (_pg, url) = shop_database()?;
    let mut shop = Shop::spawn("shop-1", &url, &[("SHOP_ADMIN_TOKEN", "")])?;
    shop.wait_ready().await?;
    let res = client()
        .put(shop.url("/admin/fault"))
        .bearer_auth("")
        .json(&json!({"mode": "error"}))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.text().await?.contains("SHOP_ADMIN_TOKEN"));
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_the_shop_cleanly() -> anyhow::Result<()> {
    let (_pg, url) = shop_database()?;
    let mut shop = Shop::start("shop-1", &url).await?;
    let status = shop.process.terminate(Duration::from_secs(15))?;
    assert!(status.success(), "exit status {status}");
    assert!(shop.process.logs().contains("stopped"));
    Ok(())
}

#[test]
fn bad_configuration_exits_with_one_clear_line() -> anyhow::Result<()> {
    let out = std::process::Command::new(common::SHOP_BIN)
        .env("DATABASE_URL", "postgres://127.0.0.1:1/shop")
        .env("SHOP_INSTANCE", "shop one")
        .env("SHOP_LISTEN", "127.0.0.1:0")
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHOP_INSTANCE: must be 1 to 64 visible ASCII characters"),
        "{stderr}"
    );
    Ok(())
}
