//! The shop's Postgres store: its own database and migrations
//! (`crates/widget-shop/migrations/`), never the control plane's.
//!
//! Carts live here too, keyed by the cookie's random id, so whichever shop
//! instance serves a shopper's next request sees the same cart. A checkout is
//! one transaction: lock the cart, take the stock with conditional updates
//! (a widget's stock never goes negative), write the order, empty the cart.
//!
//! With a replica address (`SHOP_REPLICA_DATABASE_URL`), reads are split:
//! the catalogue and order pages read from the replica address first, the
//! cart and every write from the primary address, each falling back to the
//! other when it is unavailable. While the primary is away (a failover in
//! progress), browsing goes on and writes fail at once with
//! [`Error::WritesPaused`]; nothing is queued, so nothing a shopper was told
//! is confirmed can be lost, and the pools reconnect by themselves.
//!
//! The cart's id is the only credential: an order is found by its code *and*
//! the cart that placed it, and an Idempotency-Key replays an order only for
//! the cart that placed it (keys are unique per cart).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use tracing::Instrument as _;

use crate::error::Error;
use crate::model::{
    Cart, CartId, CartLine, Cents, Customer, IdempotencyKey, Order, OrderCode, OrderLine, Quantity,
    Widget,
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The constraint that makes a retried checkout place one order (one per
/// cart and key).
const IDEMPOTENCY_CONSTRAINT: &str = "orders_cart_idempotency_key";

#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// How long a request waits for a connection before it is told the
    /// database is unavailable. Short, so a dead database means a fast 503.
    pub acquire_timeout: Duration,
    /// Postgres `statement_timeout`: no query runs longer than this.
    pub statement_timeout: Duration,
}

#[derive(Clone)]
pub struct Store {
    /// The primary address: writes, the cart, migrations.
    pool: PgPool,
    /// The replica address, when the shop has one: catalogue and orders.
    replica: Option<PgPool>,
}

/// Which address a read tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefer {
    Primary,
    Replica,
}

/// What a checkout did.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: Order,
    /// True when the Idempotency-Key matched an order placed earlier: this
    /// is that order, and nothing new was written.
    pub replayed: bool,
}

// === rows (stay in this module) ===

#[derive(sqlx::FromRow)]
struct WidgetRow {
    slug: String,
    name: String,
    tagline: String,
    description: String,
    price_cents: i32,
    stock: i32,
    color: String,
    shape: String,
}

impl From<WidgetRow> for Widget {
    fn from(r: WidgetRow) -> Widget {
        Widget {
            slug: r.slug,
            name: r.name,
            tagline: r.tagline,
            description: r.description,
            price_cents: Cents(i64::from(r.price_cents)),
            stock: r.stock,
            color: r.color,
            shape: r.shape,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CartLineRow {
    slug: String,
    name: String,
    color: String,
    shape: String,
    price_cents: i32,
    quantity: i32,
    stock: i32,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: i64,
    code: String,
    customer_name: String,
    email: String,
    total_cents: i64,
    placed_by: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(sqlx::FromRow)]
struct OrderLineRow {
    slug: String,
    name: String,
    unit_price_cents: i32,
    quantity: i32,
}

#[derive(sqlx::FromRow)]
struct CheckoutLineRow {
    widget_id: i64,
    quantity: i32,
}

// === impl Store ===

impl Store {
    /// A pool that connects on first use, so the shop starts (and says it is
    /// not ready) while its database is down.
    ///
    /// `replica_url`, when given, is where catalogue and order reads go
    /// first (a load-balanced address of the database's replicas).
    pub fn connect_lazy(
        url: &str,
        replica_url: Option<&str>,
        options: StoreOptions,
    ) -> Result<Store> {
        let pool = lazy_pool("DATABASE_URL", url, options)?;
        let replica = replica_url
            .map(|u| lazy_pool("SHOP_REPLICA_DATABASE_URL", u, options))
            .transpose()?;
        Ok(Store { pool, replica })
    }

    pub fn pg(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (schema and seed catalogue). Safe when
    /// several instances start at once: sqlx holds an advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations")
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
                other => Error::Unavailable(other.to_string()),
            })
    }

    /// Opens the pool's warm connections now, one after another, so the
    /// first shoppers after a start do not each wait on a login (SCRAM
    /// costs real CPU) past the acquire timeout.
    pub async fn warm(&self) -> Result<()> {
        let want = self.pool.options().get_min_connections() as usize;
        let mut held = Vec::with_capacity(want);
        while held.len() < want {
            held.push(self.pool.acquire().await?);
        }
        Ok(())
    }

    /// Whether the shop can serve at least its pages: the primary address
    /// or, failing that, the replica address answers.
    pub async fn ping(&self) -> Result<()> {
        self.read(Prefer::Primary, |pool| async move {
            sqlx::query("SELECT 1").execute(&pool).await?;
            Ok(())
        })
        .await
    }

    /// Runs a read on the preferred address, then on the other one when the
    /// first is unavailable (no healthy member behind it, or down).
    async fn read<T, F, Fut>(&self, prefer: Prefer, f: F) -> Result<T>
    where
        F: Fn(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let Some(replica) = &self.replica else {
            return f(self.pool.clone()).await;
        };
        let (first, second, from) = match prefer {
            Prefer::Primary => (&self.pool, replica, "primary"),
            Prefer::Replica => (replica, &self.pool, "replica"),
        };
        match f(first.clone()).await {
            Err(Error::Unavailable(cause)) => {
                tracing::debug!(%cause, from, "read falls back to the other database address");
                metrics::counter!("shop_db_read_fallbacks_total", "from" => from).increment(1);
                f(second.clone()).await
            }
            other => other,
        }
    }

    /// A write's error as the shopper should hear it: with a replica
    /// address, an unreachable primary means a failover is under way.
    fn written<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(Error::Unavailable(cause)) if self.replica.is_some() => {
                Err(Error::WritesPaused(cause))
            }
            other => other,
        }
    }

    // === catalogue ===

    pub async fn widgets(&self) -> Result<Vec<Widget>> {
        let rows: Vec<WidgetRow> = self
            .read(Prefer::Replica, |pool| async move {
                Ok(sqlx::query_as(
                    "SELECT slug, name, tagline, description, price_cents, stock, color, shape
                       FROM widgets ORDER BY id",
                )
                .fetch_all(&pool)
                .instrument(query_span("SELECT", "widgets"))
                .await?)
            })
            .await?;
        Ok(rows.into_iter().map(Widget::from).collect())
    }

    pub async fn widget(&self, slug: &str) -> Result<Widget> {
        let row: Option<WidgetRow> = self
            .read(Prefer::Replica, |pool| async move {
                Ok(sqlx::query_as(
                    "SELECT slug, name, tagline, description, price_cents, stock, color, shape
                       FROM widgets WHERE slug = $1",
                )
                .bind(slug)
                .fetch_optional(&pool)
                .instrument(query_span("SELECT", "widgets"))
                .await?)
            })
            .await?;
        row.map(Widget::from).ok_or_else(|| Error::NotFound {
            what: "widget",
            key: slug.to_string(),
        })
    }

    // === cart ===

    /// The cart behind a cookie; empty when there is none yet.
    pub async fn cart(&self, cart: Option<&CartId>) -> Result<Cart> {
        let Some(cart) = cart else {
            return Ok(Cart::default());
        };
        // The primary first: a shopper sees the line they just added.
        let rows: Vec<CartLineRow> = self
            .read(Prefer::Primary, |pool| async move {
                Ok(sqlx::query_as(
                    "SELECT w.slug, w.name, w.color, w.shape, w.price_cents, ci.quantity, w.stock
                       FROM cart_items ci JOIN widgets w ON w.id = ci.widget_id
                      WHERE ci.cart_id = $1
                      ORDER BY w.id",
                )
                .bind(cart.as_str())
                .fetch_all(&pool)
                .instrument(query_span("SELECT", "cart_items"))
                .await?)
            })
            .await?;
        Ok(Cart {
            lines: rows
                .into_iter()
                .map(|r| CartLine {
                    slug: r.slug,
                    name: r.name,
                    color: r.color,
                    shape: r.shape,
                    unit_price_cents: Cents(i64::from(r.price_cents)),
                    quantity: r.quantity,
                    stock: r.stock,
                })
                .collect(),
        })
    }

    /// Adds `quantity` of a widget (capped at the per-line maximum). A sold
    /// out widget cannot be added.
    pub async fn add_to_cart(&self, cart: &CartId, slug: &str, quantity: Quantity) -> Result<()> {
        self.written(self.add(cart, slug, quantity, false).await)
    }

    /// Puts exactly `quantity` of a widget in the cart, adding the line
    /// (and the cart) when missing: the same request run twice leaves the
    /// same cart, so a client or a proxy may send it again when its answer
    /// was lost (PUT's promise, RFC 9110 §9.2.2). A sold out widget cannot
    /// be put in.
    pub async fn put_in_cart(&self, cart: &CartId, slug: &str, quantity: Quantity) -> Result<()> {
        self.written(self.add(cart, slug, quantity, true).await)
    }

    /// Adds to the line, or with `replace` sets it.
    async fn add(
        &self,
        cart: &CartId,
        slug: &str,
        quantity: Quantity,
        replace: bool,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let widget: Option<(i64, String, i32)> =
            sqlx::query_as("SELECT id, name, stock FROM widgets WHERE slug = $1")
                .bind(slug)
                .fetch_optional(&mut *tx)
                .instrument(query_span("SELECT", "widgets"))
                .await?;
        let (widget_id, name, stock) = widget.ok_or_else(|| Error::NotFound {
            what: "widget",
            key: slug.to_string(),
        })?;
        if stock == 0 {
            return Err(Error::OutOfStock {
                name,
                available: 0,
                requested: quantity.get(),
            });
        }
        sqlx::query(
            "INSERT INTO carts (id) VALUES ($1)
             ON CONFLICT (id) DO UPDATE SET updated_at = now()",
        )
        .bind(cart.as_str())
        .execute(&mut *tx)
        .instrument(query_span("INSERT", "carts"))
        .await?;
        sqlx::query(if replace {
            "INSERT INTO cart_items (cart_id, widget_id, quantity) VALUES ($1, $2, $3)
             ON CONFLICT (cart_id, widget_id)
             DO UPDATE SET quantity = LEAST(EXCLUDED.quantity, $4)"
        } else {
            "INSERT INTO cart_items (cart_id, widget_id, quantity) VALUES ($1, $2, $3)
             ON CONFLICT (cart_id, widget_id)
             DO UPDATE SET quantity = LEAST(cart_items.quantity + EXCLUDED.quantity, $4)"
        })
        .bind(cart.as_str())
        .bind(widget_id)
        .bind(quantity.get())
        .bind(Quantity::MAX)
        .execute(&mut *tx)
        .instrument(query_span("INSERT", "cart_items"))
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a line's quantity; the widget must be in the cart.
    pub async fn set_quantity(&self, cart: &CartId, slug: &str, quantity: Quantity) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE cart_items SET quantity = $3
              WHERE cart_id = $1 AND widget_id = (SELECT id FROM widgets WHERE slug = $2)",
        )
        .bind(cart.as_str())
        .bind(slug)
        .bind(quantity.get())
        .execute(&self.pool)
        .instrument(query_span("UPDATE", "cart_items"))
        .await;
        let updated = self.written(updated.map_err(Error::from))?.rows_affected();
        if updated == 0 {
            return Err(Error::NotFound {
                what: "widget in your cart",
                key: slug.to_string(),
            });
        }
        Ok(())
    }

    /// Removes a line; removing what is not there is not an error.
    pub async fn remove_from_cart(&self, cart: &CartId, slug: &str) -> Result<()> {
        let removed = sqlx::query(
            "DELETE FROM cart_items
              WHERE cart_id = $1 AND widget_id = (SELECT id FROM widgets WHERE slug = $2)",
        )
        .bind(cart.as_str())
        .bind(slug)
        .execute(&self.pool)
        .instrument(query_span("DELETE", "cart_items"))
        .await;
        self.written(removed.map_err(Error::from))?;
        Ok(())
    }

    // === checkout and orders ===

    /// Places the cart's order in one transaction, or returns the order an
    /// earlier request of the same cart with the same `key` placed. Without
    /// a cart there is nothing to check out, and nothing to replay: a key
    /// alone names no order.
    pub async fn checkout(
        &self,
        cart: Option<&CartId>,
        customer: &Customer,
        key: Option<&IdempotencyKey>,
        placed_by: &str,
    ) -> Result<Placed> {
        let Some(cart) = cart else {
            return Err(Error::EmptyCart);
        };
        let checkout = Checkout {
            cart,
            customer,
            key,
            placed_by,
        };
        self.written(self.checkout_cart(checkout).await)
    }

    async fn checkout_cart(&self, checkout: Checkout<'_>) -> Result<Placed> {
        let Checkout {
            cart,
            customer,
            key,
            ..
        } = checkout;
        // Fast path for a retry whose first attempt committed.
        if let Some(key) = key
            && let Some(order) = self
                .order_by_key(&mut *self.pool.acquire().await?, cart, key)
                .await?
        {
            return replay(order, customer, key);
        }
        match self.place(checkout).await {
            Err(Error::Database(sqlx::Error::Database(db)))
                if db.constraint() == Some(IDEMPOTENCY_CONSTRAINT) =>
            {
                // Another request of this cart with this key committed
                // while we worked; ours rolled back. Answer with theirs.
                let Some(key) = key else {
                    return Err(Error::Database(sqlx::Error::Database(db)));
                };
                let mut conn = self.pool.acquire().await?;
                match self.order_by_key(&mut conn, cart, key).await? {
                    Some(order) => replay(order, customer, key),
                    None => Err(Error::Database(sqlx::Error::Database(db))),
                }
            }
            other => other,
        }
    }

    async fn place(&self, checkout: Checkout<'_>) -> Result<Placed> {
        let Checkout {
            cart,
            customer,
            key,
            placed_by,
        } = checkout;
        let mut tx = self.pool.begin().await?;
        // Serialises checkouts of one cart: a concurrent retry waits here,
        // then finds the order below instead of an empty cart.
        let locked: Option<(String,)> =
            sqlx::query_as("SELECT id FROM carts WHERE id = $1 FOR UPDATE")
                .bind(cart.as_str())
                .fetch_optional(&mut *tx)
                .instrument(query_span("SELECT", "carts"))
                .await?;
        if let Some(key) = key
            && let Some(order) = self.order_by_key(&mut tx, cart, key).await?
        {
            return replay(order, customer, key);
        }
        if locked.is_none() {
            return Err(Error::EmptyCart);
        }
        // Widget order, so concurrent checkouts lock stock rows in the same
        // order and cannot deadlock.
        let lines: Vec<CheckoutLineRow> = sqlx::query_as(
            "SELECT widget_id, quantity FROM cart_items WHERE cart_id = $1 ORDER BY widget_id",
        )
        .bind(cart.as_str())
        .fetch_all(&mut *tx)
        .instrument(query_span("SELECT", "cart_items"))
        .await?;
        if lines.is_empty() {
            return Err(Error::EmptyCart);
        }

        let mut order_lines = Vec::with_capacity(lines.len());
        let mut ids = Vec::with_capacity(lines.len());
        let mut prices = Vec::with_capacity(lines.len());
        for line in &lines {
            // Takes the stock only if there is enough: the row lock makes
            // concurrent buyers of the last widget queue here, and all but
            // one find too little.
            let taken: Option<(String, String, i32)> = sqlx::query_as(
                "UPDATE widgets SET stock = stock - $2
                  WHERE id = $1 AND stock >= $2
              RETURNING slug, name, price_cents",
            )
            .bind(line.widget_id)
            .bind(line.quantity)
            .fetch_optional(&mut *tx)
            .instrument(query_span("UPDATE", "widgets"))
            .await?;
            let Some((slug, name, price)) = taken else {
                let (name, available): (String, i32) =
                    sqlx::query_as("SELECT name, stock FROM widgets WHERE id = $1")
                        .bind(line.widget_id)
                        .fetch_one(&mut *tx)
                        .instrument(query_span("SELECT", "widgets"))
                        .await?;
                return Err(Error::OutOfStock {
                    name,
                    available,
                    requested: line.quantity,
                });
            };
            ids.push(line.widget_id);
            prices.push(price);
            order_lines.push(OrderLine {
                slug,
                name,
                unit_price_cents: Cents(i64::from(price)),
                quantity: line.quantity,
            });
        }
        let total: Cents = order_lines.iter().map(OrderLine::subtotal).sum();

        let code = OrderCode::random();
        let (order_id, created_at): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
            "INSERT INTO orders (code, cart_id, idempotency_key, customer_name, email, total_cents, placed_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING id, created_at",
        )
        .bind(code.as_str())
        .bind(cart.as_str())
        .bind(key.map(IdempotencyKey::as_str))
        .bind(&customer.name)
        .bind(&customer.email)
        .bind(total.0)
        .bind(placed_by)
        .fetch_one(&mut *tx)
        .instrument(query_span("INSERT", "orders"))
        .await?;
        sqlx::query(
            "INSERT INTO order_items (order_id, widget_id, name, unit_price_cents, quantity)
             SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::int[], $5::int[])",
        )
        .bind(order_id)
        .bind(&ids)
        .bind(
            order_lines
                .iter()
                .map(|l| l.name.clone())
                .collect::<Vec<_>>(),
        )
        .bind(&prices)
        .bind(order_lines.iter().map(|l| l.quantity).collect::<Vec<_>>())
        .execute(&mut *tx)
        .instrument(query_span("INSERT", "order_items"))
        .await?;
        sqlx::query("DELETE FROM cart_items WHERE cart_id = $1")
            .bind(cart.as_str())
            .execute(&mut *tx)
            .instrument(query_span("DELETE", "cart_items"))
            .await?;
        if let Err(e) = tx.commit().await {
            if crate::error::is_unavailable(&e) {
                // The commit may or may not have happened: the shopper is
                // told to retry, and the retry's Idempotency-Key finds the
                // order if it did (exactly one order either way).
                metrics::counter!("shop_checkout_outcome_unknown_total").increment(1);
                tracing::warn!(order = %code, error = %e, "checkout outcome unknown: the database went away during the commit");
            }
            return Err(e.into());
        }

        Ok(Placed {
            order: Order {
                code,
                customer_name: customer.name.clone(),
                email: customer.email.clone(),
                total_cents: total,
                placed_by: placed_by.to_string(),
                created_at,
                lines: order_lines,
            },
            replayed: false,
        })
    }

    /// The order with this code placed by this cart. Anyone else (another
    /// cart, no cart) is told it does not exist, as for a code never
    /// issued: the code is a reference, not a credential.
    pub async fn order(&self, code: &OrderCode, cart: Option<&CartId>) -> Result<Order> {
        let not_found = || Error::NotFound {
            what: "order",
            key: code.to_string(),
        };
        let Some(cart) = cart else {
            return Err(not_found());
        };
        // The order and its lines on one connection: behind a balanced
        // replica address two connections may reach two replicas, one of
        // which has replayed the order and the other not yet (an order
        // with no lines). One replica shows a transaction whole or not at all.
        let find = |pool: PgPool| async move {
            let mut conn = pool.acquire().await?;
            let sql = "SELECT id, code, customer_name, email, total_cents, placed_by, created_at
                         FROM orders WHERE code = $1 AND cart_id = $2";
            order_with_lines(&mut conn, sql, code.as_str(), cart.as_str())
                .await?
                .ok_or_else(not_found)
        };
        match self.read(Prefer::Replica, find).await {
            // A replica may not have replayed an order placed a moment
            // ago (its commit waited for the WAL to be flushed there, not
            // applied): the primary has it.
            Err(Error::NotFound { .. }) if self.replica.is_some() => {
                match find(self.pool.clone()).await {
                    Err(Error::Unavailable(_)) => Err(not_found()),
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn order_by_key(
        &self,
        conn: &mut PgConnection,
        cart: &CartId,
        key: &IdempotencyKey,
    ) -> Result<Option<Order>> {
        let sql = "SELECT id, code, customer_name, email, total_cents, placed_by, created_at
                     FROM orders WHERE cart_id = $1 AND idempotency_key = $2";
        order_with_lines(conn, sql, cart.as_str(), key.as_str()).await
    }
}

/// The cart's earlier order for a reused key, unless the request asks for
/// something else (another name or email): a key names one checkout, so
/// that is a client bug, answered 422 rather than with the old order.
fn replay(order: Order, customer: &Customer, key: &IdempotencyKey) -> Result<Placed> {
    if order.customer_name != customer.name || order.email != customer.email {
        return Err(Error::IdempotencyKeyReused {
            key: key.as_str().to_string(),
        });
    }
    Ok(Placed {
        order,
        replayed: true,
    })
}

/// One checkout of a cart, as [`Store::checkout`] hands it on.
#[derive(Clone, Copy)]
struct Checkout<'a> {
    cart: &'a CartId,
    customer: &'a Customer,
    key: Option<&'a IdempotencyKey>,
    placed_by: &'a str,
}

/// The order `sql` selects (an [`OrderRow`], with `$1` and `$2` bound to
/// `first` and `second`) and its lines, read on `conn`.
async fn order_with_lines(
    conn: &mut PgConnection,
    sql: &'static str,
    first: &str,
    second: &str,
) -> Result<Option<Order>> {
    let row: Option<OrderRow> = sqlx::query_as(sql)
        .bind(first)
        .bind(second)
        .fetch_optional(&mut *conn)
        .instrument(query_span("SELECT", "orders"))
        .await?;
    match row {
        Some(row) => Ok(Some(with_lines(conn, row).await?)),
        None => Ok(None),
    }
}

async fn with_lines(conn: &mut PgConnection, row: OrderRow) -> Result<Order> {
    let lines: Vec<OrderLineRow> = sqlx::query_as(
        "SELECT w.slug, oi.name, oi.unit_price_cents, oi.quantity
           FROM order_items oi JOIN widgets w ON w.id = oi.widget_id
          WHERE oi.order_id = $1
          ORDER BY oi.widget_id",
    )
    .bind(row.id)
    .fetch_all(&mut *conn)
    .instrument(query_span("SELECT", "order_items"))
    .await?;
    let code = OrderCode::parse(&row.code).map_err(|_| {
        Error::Database(sqlx::Error::Decode(
            format!("stored order code {:?} is malformed", row.code).into(),
        ))
    })?;
    Ok(Order {
        code,
        customer_name: row.customer_name,
        email: row.email,
        total_cents: Cents(row.total_cents),
        placed_by: row.placed_by,
        created_at: row.created_at,
        lines: lines
            .into_iter()
            .map(|l| OrderLine {
                slug: l.slug,
                name: l.name,
                unit_price_cents: Cents(i64::from(l.unit_price_cents)),
                quantity: l.quantity,
            })
            .collect(),
    })
}

fn lazy_pool(field: &'static str, url: &str, options: StoreOptions) -> Result<PgPool> {
    let connect: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| Error::Invalid {
        field,
        message: e.to_string(),
    })?;
    let statement_timeout = format!("{}", options.statement_timeout.as_millis());
    let connect = connect
        .application_name("widget-shop")
        .options([("statement_timeout", statement_timeout.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections)
        // Warm connections, so the first burst of shoppers after a start
        // does not wait on connection set-up past the acquire timeout (seen
        // under load in the compose check).
        .min_connections(options.max_connections.min(4))
        .acquire_timeout(options.acquire_timeout)
        // A connection to a database that died (or a primary that was
        // failed over) is found out at once rather than by the next
        // shopper: the pool recovers by itself.
        .test_before_acquire(true)
        .connect_lazy_with(connect))
}

/// A client span for one query, a child of the request's span: what a
/// trace shows of the database (the statement's kind and table, never its
/// values).
fn query_span(operation: &'static str, table: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db query",
        otel.name = %format_args!("{operation} {table}"),
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = table,
    )
}
