//! Fixtures for the shop's end-to-end tests: the real `widget-shop` binary
//! on a throwaway Postgres, and a shopper that keeps its cart cookie.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod tandem;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use tandem_testkit::{Postgres, Process, free_addr, wait_http_ok};

/// The fault-injection token every test shop accepts.
pub const SHOP_ADMIN_TOKEN: &str = "test-shop-admin-token-0123456789";

/// The shop binary this package built.
pub const SHOP_BIN: &str = env!("CARGO_BIN_EXE_widget-shop");

/// A throwaway Postgres with an empty `shop` database; returns its URL too.
pub fn shop_database() -> anyhow::Result<(Postgres, String)> {
    let pg = Postgres::start()?;
    let url = pg.create_database("shop")?;
    Ok((pg, url))
}

/// A connection pool for checking what the shop wrote.
pub async fn db(url: &str) -> anyhow::Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?)
}

pub async fn count_orders(db: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(db)
        .await?)
}

pub async fn stock_of(db: &sqlx::PgPool, slug: &str) -> anyhow::Result<i32> {
    Ok(
        sqlx::query_scalar("SELECT stock FROM widgets WHERE slug = $1")
            .bind(slug)
            .fetch_one(db)
            .await?,
    )
}

/// A running `widget-shop` process.
pub struct Shop {
    pub process: Process,
    pub addr: SocketAddr,
    pub name: String,
    database_url: String,
    env: Vec<(String, String)>,
}

impl Shop {
    /// Starts instance `name` on a free port and waits for `/readyz`.
    pub async fn start(name: &str, database_url: &str) -> anyhow::Result<Shop> {
        let mut shop = Shop::spawn(name, database_url, &[])?;
        shop.wait_ready().await?;
        Ok(shop)
    }

    /// Starts it without waiting; `env` adds or overrides variables.
    pub fn spawn(name: &str, database_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Shop> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let addr = free_addr();
        Ok(Shop {
            process: launch(name, addr, database_url, &env)?,
            addr,
            name: name.to_string(),
            database_url: database_url.to_string(),
            env,
        })
    }

    /// Starts it again on the same address (after a kill) and waits for
    /// `/readyz`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = launch(&self.name, self.addr, &self.database_url, &self.env)?;
        self.wait_ready().await
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        if let Err(e) = wait_http_ok(&self.url("/readyz"), Duration::from_secs(30)).await {
            bail!("{e}\n--- {} log ---\n{}", self.name, self.process.logs());
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the injected fault (`{"mode": ...}`).
    pub async fn set_fault(&self, fault: Value) -> anyhow::Result<()> {
        let res = client()
            .put(self.url("/admin/fault"))
            .bearer_auth(SHOP_ADMIN_TOKEN)
            .json(&fault)
            .send()
            .await?;
        if !res.status().is_success() {
            bail!(
                "setting fault {fault}: {} {}",
                res.status(),
                res.text().await?
            );
        }
        Ok(())
    }
}

fn launch(
    name: &str,
    addr: SocketAddr,
    database_url: &str,
    env: &[(String, String)],
) -> anyhow::Result<Process> {
    let mut vars: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database_url.to_string()),
        ("SHOP_LISTEN", addr.to_string()),
        ("SHOP_INSTANCE", name.to_string()),
        ("SHOP_ADMIN_TOKEN", SHOP_ADMIN_TOKEN.to_string()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    // An absolute path: the testkit launches it as is.
    Process::spawn(name, SHOP_BIN, &[], &vars)
}

/// A client that does not follow redirects (so tests see the 303s), with
/// no proxy from the environment.
pub fn client() -> reqwest::Client {
    tandem_testkit::init_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("building a reqwest client")
}

/// One shopper: a base URL and the cart cookie the shop gave it.
pub struct Shopper {
    pub client: reqwest::Client,
    pub base: String,
    pub cart: Option<String>,
}

impl Shopper {
    pub fn new(base: &str) -> Shopper {
        Shopper {
            client: client(),
            base: base.to_string(),
            cart: None,
        }
    }

    fn remember_cookie(&mut self, res: &reqwest::Response) {
        for v in res.headers().get_all(SET_COOKIE) {
            if let Some(cart) = v
                .to_str()
                .ok()
                .and_then(|v| v.split(';').next())
                .and_then(|kv| kv.strip_prefix("cart="))
            {
                self.cart = Some(cart.to_string());
            }
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.cart {
            Some(c) => req.header(COOKIE, format!("cart={c}")),
            None => req,
        }
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<reqwest::Response> {
        let res = self.request(reqwest::Method::GET, path).send().await?;
        self.remember_cookie(&res);
        Ok(res)
    }

    /// GET that must answer 200; returns the body.
    pub async fn page(&mut self, path: &str) -> anyhow::Result<String> {
        let res = self.get(path).await?;
        let status = res.status();
        let body = res.text().await?;
        if status != StatusCode::OK {
            bail!("GET {path}: {status}\n{body}");
        }
        Ok(body)
    }

    pub async fn post_form(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let res = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_encode(form))
            .send()
            .await?;
        self.remember_cookie(&res);
        Ok(res)
    }

    pub async fn send_json(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<reqwest::Response> {
        let res = self.request(method, path).json(&body).send().await?;
        self.remember_cookie(&res);
        Ok(res)
    }

    /// Adds a widget through the API; the cart must accept it.
    pub async fn add(&mut self, slug: &str, quantity: i64) -> anyhow::Result<Value> {
        let res = self
            .send_json(
                reqwest::Method::POST,
                "/api/cart/items",
                json!({"widget": slug, "quantity": quantity}),
            )
            .await?;
        let status = res.status();
        let body: Value = res.json().await.context("cart JSON")?;
        if status != StatusCode::OK {
            bail!("adding {slug}: {status} {body}");
        }
        Ok(body)
    }

    /// POST /api/checkout, with an Idempotency-Key when given.
    pub async fn checkout(&mut self, key: Option<&str>) -> anyhow::Result<reqwest::Response> {
        self.checkout_as(key, "Ada Lovelace", "ada@example.com")
            .await
    }

    /// POST /api/checkout for `name` and `email`.
    pub async fn checkout_as(
        &mut self,
        key: Option<&str>,
        name: &str,
        email: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self
            .request(reqwest::Method::POST, "/api/checkout")
            .json(&json!({"name": name, "email": email}));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await?;
        self.remember_cookie(&res);
        Ok(res)
    }
}

/// `application/x-www-form-urlencoded`, as a browser sends a form.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of `name="<field>" value="..."` in a form.
pub fn hidden_field(html: &str, field: &str) -> Option<String> {
    let marker = format!(r#"name="{field}" value=""#);
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_string())
}

/// The response's `X-Served-By`.
pub fn served_by(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An API error answer: `status`, error `code`, and a message that
/// mentions `mentions`.
pub async fn assert_api_error(
    res: reqwest::Response,
    status: StatusCode,
    code: &str,
    mentions: &str,
) -> anyhow::Result<()> {
    assert_eq!(res.status(), status);
    let err: Value = res.json().await?;
    assert_eq!(err["error"]["code"], code);
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(mentions)),
        "{err}"
    );
    Ok(())
}
