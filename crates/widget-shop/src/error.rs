//! The shop's error type and its one translation into what a shopper or an
//! API client is told ([`Error::public`]), which also logs the cause. Raw SQL
//! errors never reach a client.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no {what} {key:?}")]
    NotFound { what: &'static str, key: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("only {available} of {name} left (asked for {requested})")]
    OutOfStock {
        name: String,
        available: i32,
        requested: i32,
    },
    #[error("the cart is empty")]
    EmptyCart,
    /// The cart already placed an order with this key, for other details.
    #[error("Idempotency-Key {key:?} is in use for another checkout of this cart")]
    IdempotencyKeyReused { key: String },
    /// The database cannot be reached (down, restarting, network cut, or no
    /// connection free within the acquire timeout).
    #[error("the shop database is unavailable: {0}")]
    Unavailable(String),
    /// The primary address is unavailable while a replica answers: the
    /// database is failing over. Browsing goes on; writes wait for it.
    #[error("writes are paused: the shop database's primary is unavailable: {0}")]
    WritesPaused(String),
    /// Migrations have not run yet (the database has not been reachable
    /// since start-up).
    #[error("the shop database is not migrated yet")]
    Starting,
    /// The request ran past the shop's own deadline.
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// The demo's fault injection asked for it.
    #[error("fault injected by an operator")]
    InjectedFault,
    /// Anything else from the database: a bug or a schema problem.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            Error::Unavailable(e.to_string())
        } else {
            Error::Database(e)
        }
    }
}

/// Errors that mean "the database is not there right now", as opposed to a
/// query that is wrong.
pub(crate) fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P01-57P03: admin shutdown, crash
            // shutdown, cannot connect now; 57014: statement timeout;
            // 53300: too many connections; 25006: a write reached a
            // read-only server (a primary demoted, not yet left).
            c.starts_with("08") || c.starts_with("57") || c == "53300" || c == "25006"
        }),
        _ => false,
    }
}

/// What a client is told: status, a stable machine-readable code, a title
/// and a sentence a person can act on.
#[derive(Debug, Clone)]
pub struct Public {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub message: String,
}

impl Error {
    /// The one place errors become client-facing; logs what the client is
    /// not told.
    pub fn public(&self) -> Public {
        let p = |status, code, title, message: String| Public {
            status,
            code,
            title,
            message,
        };
        match self {
            Error::NotFound { what, .. } => p(
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                format!("We could not find that {what}."),
            ),
            Error::Invalid { field, message } => p(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Please check your input",
                format!("{field}: {message}"),
            ),
            Error::OutOfStock {
                name,
                available,
                requested,
            } => p(
                StatusCode::CONFLICT,
                "out_of_stock",
                "Not enough stock",
                if *available == 0 {
                    format!("{name} is sold out. Remove it from your cart to check out.")
                } else {
                    format!(
                        "Only {available} {name} left, and your cart asks for {requested}. \
                         Lower the quantity to check out."
                    )
                },
            ),
            Error::EmptyCart => p(
                StatusCode::CONFLICT,
                "empty_cart",
                "Your cart is empty",
                "Add a widget to your cart before checking out.".into(),
            ),
            Error::IdempotencyKeyReused { key } => p(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency-Key already used",
                format!(
                    "The Idempotency-Key {key:?} is in use: your cart already placed an order \
                     with it, with another name or email. Use a new key for a new order."
                ),
            ),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "shop database unavailable");
                p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "The shop's database is unavailable",
                    "This shop server cannot reach its database right now, so nothing was \
                     changed. Please try again in a moment."
                        .into(),
                )
            }
            Error::WritesPaused(cause) => {
                tracing::warn!(%cause, "write refused: no primary database");
                p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "orders_paused",
                    "Orders are paused for a few seconds",
                    "Orders are paused for a few seconds while the shop's database switches to \
                     its spare; your cart is kept. Browsing still works. Please try again in a \
                     moment: if you were checking out, retrying is safe, it will not place a \
                     second order."
                        .into(),
                )
            }
            Error::Starting => p(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "The shop is starting",
                "This shop server has not reached its database since it started. Please try \
                 again in a moment."
                    .into(),
            ),
            Error::Timeout(after) => {
                tracing::warn!(?after, "request deadline passed");
                p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "The shop is too slow right now",
                    format!(
                        "This request took longer than {} ms and was abandoned. If you were \
                         checking out, retrying is safe: it will not place a second order.",
                        after.as_millis()
                    ),
                )
            }
            Error::InjectedFault => p(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fault_injected",
                "Something broke (on purpose)",
                "An operator told this shop server to fail, to show what Tandem does about it."
                    .into(),
            ),
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                p(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Something went wrong",
                    "The shop hit an internal error (it is in the server's log) and nothing \
                     was changed. Please try again."
                        .into(),
                )
            }
        }
    }
}
