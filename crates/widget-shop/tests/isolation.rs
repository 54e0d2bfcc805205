//! One shopper's order never reaches another, through the real stack: two
//! shop servers behind a real `tandem-proxy` (round robin, so consecutive
//! requests land on different servers), and two independent clients, each
//! with its own connection pool and its own cookie jar (the `cart` cookie it
//! was given, and nothing else).
//!
//! The attacker, Eve, knows everything Ada's client could leak except her
//! cookie: her Idempotency-Key and her order's code.

mod common;

use common::tandem::ShopsBehindTandem;
use common::{Shopper, assert_api_error, client, count_orders, db, stock_of};
use reqwest::StatusCode;
use serde_json::Value;

const ADA: (&str, &str) = ("Ada Lovelace", "ada@example.com");
const EVE: (&str, &str) = ("Eve Mallory", "eve@example.net");

/// A body must not carry Ada's name, email, or (where given) her order's
/// code.
fn assert_nothing_of_adas(body: &str, ada_order: Option<&str>) {
    for secret in [Some(ADA.0), Some(ADA.1), ada_order].into_iter().flatten() {
        assert!(!body.contains(secret), "leaked {secret:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_or_an_order_code_never_hands_out_someone_elses_order()
-> anyhow::Result<()> {
    let site = ShopsBehindTandem::start().await?;
    let proxy = site.tandem.proxy("proxy-1").await?;
    let base = proxy.url("");
    let db = db(&site.url).await?;

    // Ada checks out with a key.
    let mut ada = Shopper::new(&base);
    ada.add("sprocket", 2).await?;
    let key = "4f1c2a9e-5b7d-4c1e-9a2b-7d6e5f4c3b2a";
    let res = ada.checkout_as(Some(key), ADA.0, ADA.1).await?;
    assert_eq!(res.status(), StatusCode::CREATED);
    let adas: Value = res.json().await?;
    let ada_code = adas["code"].as_str().expect("an order code").to_string();
    assert_eq!(adas["email"], ADA.1);

    // Eve replays Ada's key with no cart: nothing to check out, nothing of
    // Ada's in the answer (on either server).
    let mut eve = Shopper::new(&base);
    for _ in 0..2 {
        let res = eve.checkout_as(Some(key), EVE.0, EVE.1).await?;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let body = res.text().await?;
        assert!(body.contains("empty_cart"), "{body}");
        assert_nothing_of_adas(&body, Some(&ada_code));
    }
    assert!(eve.cart.is_none(), "no cart was made for her");

    // With a cart of her own, the same key is her own checkout.
    eve.add("doodad", 1).await?;
    let res = eve.checkout_as(Some(key), EVE.0, EVE.1).await?;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body = res.text().await?;
    assert_nothing_of_adas(&body, Some(&ada_code));
    let eves: Value = serde_json::from_str(&body)?;
    let eve_code = eves["code"].as_str().expect("an order code").to_string();
    assert_ne!(eve_code, ada_code);
    assert_eq!(eves["total_cents"], 499);
    assert_eq!(eves["customer_name"], EVE.0);

    // Each retry replays its own cart's order, whichever server answers.
    for _ in 0..2 {
        let res = eve.checkout_as(Some(key), EVE.0, EVE.1).await?;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["idempotent-replayed"], "true");
        let again: Value = res.json().await?;
        assert_eq!(again["code"], eve_code.as_str());
        let res = ada.checkout_as(Some(key), ADA.0, ADA.1).await?;
        assert_eq!(res.status(), StatusCode::OK);
        let again: Value = res.json().await?;
        assert_eq!(again["code"], ada_code.as_str());
    }
    // Ada's key with other details is a 422 naming the key, not a replay.
    let res = ada
        .checkout_as(Some(key), ADA.0, "someone@else.example")
        .await?;
    assert_api_error(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        key,
    )
    .await?;

    // Ada's order by its code: hers to see, on both servers, and kept out
    // of shared caches.
    for _ in 0..2 {
        let res = ada.get(&format!("/api/orders/{ada_code}")).await?;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["cache-control"], "private, no-store");
        let order: Value = res.json().await?;
        assert_eq!(order["email"], ADA.1);
        let page = ada.page(&format!("/orders/{ada_code}")).await?;
        assert!(page.contains(ADA.0));
    }
    // Eve, a client with no cookie, and one with a forged cart id: the same
    // 404 as for a code never issued, on both servers.
    let mut stranger = Shopper::new(&base);
    let mut forger = Shopper::new(&base);
    forger.cart = Some(format!("{:032x}", 0x5eed_u128));
    for who in [&mut eve, &mut stranger, &mut forger] {
        for path in [
            format!("/api/orders/{ada_code}"),
            format!("/orders/{ada_code}"),
        ] {
            for _ in 0..2 {
                let res = who.get(&path).await?;
                assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
                assert_eq!(res.headers()["cache-control"], "private, no-store");
                // (The code is in the URL Eve asked for: no news to her.)
                assert_nothing_of_adas(&res.text().await?, None);
            }
        }
    }
    let never = "W-ABCDEFGHJK";
    let res = client()
        .get(format!("{base}/api/orders/{never}"))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Eve still sees her own.
    let res = eve.get(&format!("/api/orders/{eve_code}")).await?;
    assert_eq!(res.status(), StatusCode::OK);

    // Two orders, each taking its own stock once.
    assert_eq!(count_orders(&db).await?, 2);
    assert_eq!(stock_of(&db, "sprocket").await?, 118);
    assert_eq!(stock_of(&db, "doodad").await?, 499);
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT code, email FROM orders ORDER BY id")
            .fetch_all(&db)
            .await?;
    assert_eq!(
        owners,
        [(ada_code, ADA.1.to_string()), (eve_code, EVE.1.to_string())]
    );
    Ok(())
}
