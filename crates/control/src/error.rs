//! The control plane's error type and its one conversion to `tonic::Status`.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::database::Outage;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Domain(#[from] tandem_core::Error),
    /// A query found the database unreachable (down, restarting, network
    /// cut). The API names the database before answering
    /// ([`Error::naming`]).
    #[error("the control-plane database is unavailable: {0}")]
    Unavailable(String),
    /// The database is unreachable: a write not even tried, or a query
    /// that failed, with the database named.
    #[error("the control-plane database {} is {}", .0.database, .0.how_long())]
    DatabaseDown(Outage),
    /// A read this replica cannot answer: its database is unreachable and
    /// it holds no copy of the configuration (it has not reached the
    /// database since it started and no other replica gave it one).
    #[error("{replica} has no copy of the configuration: its database {} is {}", .outage.database, .outage.how_long())]
    NoCopy { replica: String, outage: Outage },
    /// Anything else from the database: a bug or a schema problem.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Stored data in a format this build does not read yet.
    #[error(transparent)]
    NewerFormat(#[from] tandem_core::format::NewerFormat),
    /// `Explain` could not reach the proxy it was to ask, or the proxy
    /// could not answer.
    #[error("{0}")]
    Proxy(ProxyError),
    /// A certificate's key cannot be sealed or opened: no secrets key, or
    /// not the one it was sealed under.
    #[error("{0}")]
    Secrets(String),
    /// The caller may not make this call (no credentials, bad ones, or
    /// not what the authorization table allows).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The call needs the raft leader and this replica cannot reach one
    /// (or the call was already forwarded once).
    #[error("{0}")]
    Leader(LeaderError),
    /// The health decider's queue is full.
    #[error("the health decider is saturated; retry shortly")]
    Saturated,
    /// This replica is stopping (ends Watch streams).
    #[error("control replica shutting down; reconnect to another")]
    ShuttingDown,
    /// A message of the internal raft transport that does not parse.
    #[error("messages: not a raft message: {0}")]
    NotRaft(String),
    /// The leader's answer to a call forwarded to it, passed on as it is.
    #[error("{}", .0.message())]
    Forwarded(Status),
    /// A membership change refused or failed (its checks, raft-rs's
    /// refusals); the leader's answer to a forwarded one is `Forwarded`.
    #[error("{0}")]
    Membership(MembershipError),
}

/// Why a membership change (`tandemctl cluster add-member` /
/// `remove-member`) was not made.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("id: must be a positive integer")]
    InvalidId,
    #[error("address: {0:?} is not host:port (the new replica's gRPC address)")]
    InvalidAddress(String),
    #[error("{id} is the leader and no other voter is reachable to take over")]
    NoSuccessor { id: u64 },
    #[error("leadership did not move from {from} to {to} within {waited:?}; retry")]
    TransferTimedOut {
        from: u64,
        to: u64,
        waited: std::time::Duration,
    },
    /// Raft refused the change (one already in flight, a removal that
    /// would leave no voter, ...), in raft's or the driver's words.
    #[error("{0}")]
    Refused(String),
    #[error("this replica is no longer the leader (leader: {leader}); retry")]
    NotLeader { leader: u64 },
    #[error(
        "leadership changed before the change was committed: check `tandemctl cluster status`, then retry"
    )]
    Lost,
    #[error("the raft driver has stopped")]
    Stopped,
}

/// Why a call for the raft leader cannot be made here.
#[derive(Debug, thiserror::Error)]
#[allow(clippy::enum_variant_names)] // each is a case of "the leader"
pub enum LeaderError {
    #[error("control-{id} is not the raft leader (leader: {leader}); retry")]
    NotLeader { id: u64, leader: u64 },
    #[error("no raft leader (no quorum of control replicas): health decisions are paused")]
    NoLeader,
    #[error("raft leader {0} is not a known member")]
    UnknownLeader(u64),
    /// A call to pass on to the leader, with no leader to pass it to.
    #[error("no raft leader (no quorum of control replicas) to pass the call on to; retry")]
    NoLeaderToAsk,
    #[error("cannot reach the raft leader control-{leader} at {address}: {cause}")]
    Unreachable {
        leader: u64,
        address: String,
        cause: String,
    },
}

/// Asking a proxy through its admin port (`Explain`).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no proxy {name:?} has reported to the control plane (known: {known})")]
    Unknown { name: String, known: String },
    #[error("several proxies have reported ({known}): name one (tandemctl explain --proxy NAME)")]
    Unnamed { known: String },
    #[error("no proxy has reported an admin address yet")]
    None,
    #[error("proxy {name} refused the question: {message}")]
    Refused { name: String, message: String },
    #[error("proxy {name} at {address} did not answer: {cause}")]
    Unreachable {
        name: String,
        address: String,
        cause: String,
    },
}

impl From<tandem_core::ValidationError> for Error {
    fn from(e: tandem_core::ValidationError) -> Self {
        Error::Domain(e.into())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            Error::Unavailable(innermost_cause(&e))
        } else {
            Error::Database(e)
        }
    }
}

/// The innermost cause of an error as a person reads it: "connection
/// refused", "pool timed out while waiting for an open connection".
pub fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    tandem_client::innermost_cause(e).unwrap_or_else(|| e.to_string())
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
            // shutdown, cannot connect now; 53300: too many connections;
            // 25006: a write reached a read-only server (a primary demoted
            // by Patroni, not yet left).
            c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "25006"
        }),
        _ => false,
    }
}

impl Error {
    /// Names the database in an [`Error::Unavailable`] (the store's
    /// queries do not know which database they talk to).
    pub fn naming(self, availability: &crate::database::Availability) -> Error {
        match self {
            Error::Unavailable(cause) => Error::DatabaseDown(availability.outage(Some(cause))),
            e => e,
        }
    }

    pub fn code(&self) -> Code {
        use tandem_core::Error as D;
        match self {
            Error::Domain(d) => match d {
                D::Invalid(_) => Code::InvalidArgument,
                D::UnknownPool { .. }
                | D::UnknownBackend { .. }
                | D::UnknownRoute { .. }
                | D::UnknownTcpRoute { .. }
                | D::UnknownCertificate { .. } => Code::NotFound,
                D::PoolExists { .. }
                | D::BackendExists { .. }
                | D::RouteExists { .. }
                | D::TcpRouteExists { .. } => Code::AlreadyExists,
                D::PoolInUse { .. } | D::StaleRevision { .. } => Code::FailedPrecondition,
            },
            Error::Unavailable(_) | Error::DatabaseDown(_) | Error::NoCopy { .. } => {
                Code::Unavailable
            }
            Error::Database(_) | Error::Corrupt(_) => Code::Internal,
            Error::NewerFormat(_) => Code::FailedPrecondition,
            Error::Proxy(p) => match p {
                ProxyError::Unknown { .. } | ProxyError::None => Code::NotFound,
                ProxyError::Unnamed { .. } | ProxyError::Refused { .. } => Code::InvalidArgument,
                ProxyError::Unreachable { .. } => Code::Unavailable,
            },
            Error::Secrets(_) => Code::FailedPrecondition,
            Error::Auth(a) if a.is_denied() => Code::PermissionDenied,
            Error::Auth(_) => Code::Unauthenticated,
            Error::Leader(_) | Error::ShuttingDown => Code::Unavailable,
            Error::Saturated => Code::ResourceExhausted,
            Error::NotRaft(_) => Code::InvalidArgument,
            Error::Membership(m) => match m {
                MembershipError::InvalidId | MembershipError::InvalidAddress(_) => {
                    Code::InvalidArgument
                }
                MembershipError::NoSuccessor { .. } | MembershipError::Refused(_) => {
                    Code::FailedPrecondition
                }
                MembershipError::TransferTimedOut { .. }
                | MembershipError::NotLeader { .. }
                | MembershipError::Lost
                | MembershipError::Stopped => Code::Unavailable,
            },
            Error::Forwarded(status) => status.code(),
        }
    }
}

impl From<Error> for Status {
    /// Logs the cause and returns a message a user can act on; raw SQL
    /// errors never reach the client.
    fn from(e: Error) -> Status {
        let e = match e {
            Error::Forwarded(status) => return status,
            e => e,
        };
        let code = e.code();
        match &e {
            Error::Domain(_)
            | Error::Auth(_)
            | Error::Leader(_)
            | Error::Saturated
            | Error::ShuttingDown
            | Error::NotRaft(_)
            | Error::Membership(_) => Status::new(code, e.to_string()),
            Error::Forwarded(_) => unreachable!("returned above"),
            Error::Proxy(p) => {
                tracing::debug!(error = %p, "explain");
                Status::new(code, e.to_string())
            }
            Error::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                Status::unavailable(
                    "the control-plane database is unavailable; the change was not made, retry later",
                )
            }
            Error::DatabaseDown(outage) => {
                tracing::debug!(database = %outage.database, cause = %outage.cause, "refused: database unavailable");
                Status::unavailable(format!("{e}; nothing was changed, retry when it is back"))
            }
            Error::NoCopy { .. } => Status::unavailable(format!(
                "{e}; ask another replica, or retry when the database is back"
            )),
            Error::Secrets(_) => {
                tracing::error!(error = %e, "certificate keys unavailable");
                Status::new(code, e.to_string())
            }
            Error::Database(_) | Error::Corrupt(_) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error in the control plane (see its log)")
            }
            Error::NewerFormat(_) => {
                tracing::error!(error = %e, "stored data from a newer Tandem");
                Status::new(code, format!("{e}; upgrade this replica"))
            }
        }
    }
}
