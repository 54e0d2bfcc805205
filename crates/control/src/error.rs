//! The control plane's error type and its one conversion to `tonic::Status`.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Domain(#[from] tandem_core::Error),
    /// The database cannot be reached (down, restarting, network cut).
    #[error("the control-plane database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else from the database: a bug or a schema problem.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<tandem_core::ValidationError> for Error {
    fn from(e: tandem_core::ValidationError) -> Self {
        Error::Domain(e.into())
    }
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
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P01-57P03: admin shutdown, crash
            // shutdown, cannot connect now; 53300: too many connections.
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        }),
        _ => false,
    }
}

impl Error {
    pub fn code(&self) -> Code {
        use tandem_core::Error as D;
        match self {
            Error::Domain(d) => match d {
                D::Invalid(_) => Code::InvalidArgument,
                D::UnknownPool { .. }
                | D::UnknownBackend { .. }
                | D::UnknownRoute { .. }
                | D::UnknownTcpRoute { .. } => Code::NotFound,
                D::PoolExists { .. }
                | D::BackendExists { .. }
                | D::RouteExists { .. }
                | D::TcpRouteExists { .. } => Code::AlreadyExists,
                D::PoolInUse { .. } | D::StaleRevision { .. } => Code::FailedPrecondition,
            },
            Error::Unavailable(_) => Code::Unavailable,
            Error::Database(_) | Error::Corrupt(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    /// Logs the cause and returns a message a user can act on; raw SQL
    /// errors never reach the client.
    fn from(e: Error) -> Status {
        let code = e.code();
        match &e {
            Error::Domain(_) => Status::new(code, e.to_string()),
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                Status::unavailable(
                    "the control-plane database is unavailable; the change was not made, retry later",
                )
            }
            Error::Database(_) | Error::Corrupt(_) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error in the control plane (see its log)")
            }
        }
    }
}
