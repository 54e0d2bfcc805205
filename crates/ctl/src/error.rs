//! What can go wrong, as one line for the user and a distinct exit code for
//! scripts (documented in `tandemctl --help`).

use std::time::Duration;

use tonic::Code;

use crate::duration::format_duration;

/// Exit codes. 2 is also what clap uses for bad flags.
///
/// 6 and 8 tell apart the two ways a call can find no control plane to do
/// it: a replica answered UNAVAILABLE (it is alive, but cannot do it now:
/// its database is away, it is shutting down), or no replica answered at
/// all (refused connections, no answer within the timeout, a connection
/// that broke mid-call).
pub mod exit {
    pub const OK: u8 = 0;
    pub const GENERIC: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const INVALID_ARGUMENT: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
    pub const AUTH: u8 = 7;
    pub const NO_ANSWER: u8 = 8;
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A flag or argument that parsed but cannot be used.
    #[error("{0}")]
    Usage(String),
    /// No endpoint took the call; each with why. `answered`: at least one
    /// replica answered (UNAVAILABLE), rather than none.
    #[error("{}", describe_unreachable(.failures, *.answered))]
    Unreachable {
        failures: Vec<(String, String)>,
        answered: bool,
    },
    /// The call was made and the replica at `endpoint` refused it.
    #[error("{}", describe_status(.status, *.token_sent, .endpoint))]
    Status {
        status: tonic::Status,
        token_sent: bool,
        endpoint: String,
    },
    /// The connection broke during the call: no answer came.
    #[error("no answer from the control plane at {endpoint}: {cause}")]
    Lost { endpoint: String, cause: String },
    #[error("the control plane did not answer within {}", format_duration(*.0))]
    Timeout(Duration),
    #[error("the control plane closed the watch stream")]
    StreamEnded,
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Unreachable { answered: true, .. } | Self::StreamEnded => exit::UNAVAILABLE,
            Self::Unreachable {
                answered: false, ..
            }
            | Self::Lost { .. }
            | Self::Timeout(_) => exit::NO_ANSWER,
            Self::Status { status, .. } => code_exit(status.code()),
            Self::Output(_) => exit::GENERIC,
        }
    }

    /// `tandemctl watch | head -1` closing the pipe is not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

pub fn code_exit(code: Code) -> u8 {
    match code {
        Code::Ok => exit::OK,
        Code::NotFound => exit::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => exit::INVALID_ARGUMENT,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => exit::CONFLICT,
        Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
        Code::Unauthenticated | Code::PermissionDenied => exit::AUTH,
        Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => exit::GENERIC,
    }
}

/// The canonical gRPC name, as `grpcurl` and the docs print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a status was made on this side from a transport error (a
/// refused or broken connection, an HTTP/2 failure) rather than sent by a
/// replica: tonic keeps the transport error as its source, while a status
/// read from a replica's answer has none.
pub fn made_locally(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// `INVALID_ARGUMENT: pool.health_check.interval_ms: must be ...`, on one
/// line. An UNAVAILABLE answer names the replica that gave it, so it reads
/// apart from "nothing answered".
fn describe_status(status: &tonic::Status, token_sent: bool, endpoint: &str) -> String {
    let message = one_line(status.message());
    let mut s = code_name(status.code()).to_string();
    if !message.is_empty() {
        s.push_str(": ");
        s.push_str(&message);
    }
    if status.code() == Code::Unauthenticated && !token_sent {
        s.push_str(" (no token was sent: pass --token, --token-file or set TANDEM_TOKEN)");
    }
    if status.code() == Code::Unavailable && !endpoint.is_empty() {
        s.push_str(&format!(" (answered by {endpoint})"));
    }
    s
}

fn describe_unreachable(failures: &[(String, String)], answered: bool) -> String {
    let list = match failures {
        [(endpoint, why)] => format!("{endpoint}: {why}"),
        _ => failures
            .iter()
            .map(|(endpoint, why)| format!("{endpoint} ({why})"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    if answered {
        format!("no control replica could take the call: {list}")
    } else {
        format!("cannot reach the control plane at {list}")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The innermost cause of an error, as a user reads it: `connection
/// refused`, `failed to lookup address information: ...`, `no such file or
/// directory`.
pub fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    tandem_client::innermost_cause(e).unwrap_or_else(|| one_line(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> CtlError {
        CtlError::Status {
            status: tonic::Status::new(code, message),
            token_sent: true,
            endpoint: "http://127.0.0.1:7400".into(),
        }
    }

    #[test]
    fn statuses_read_as_one_line_with_the_code_name() {
        let e = status(
            Code::InvalidArgument,
            "pool.health_check.interval_ms: must be between 100 and 3600000 (got 50)",
        );
        assert_eq!(
            e.to_string(),
            "INVALID_ARGUMENT: pool.health_check.interval_ms: must be between 100 and 3600000 (got 50)"
        );
        assert_eq!(e.exit_code(), 4);
        let e = status(Code::Internal, "line one\nline two");
        assert_eq!(e.to_string(), "INTERNAL: line one line two");
        assert_eq!(status(Code::NotFound, "").to_string(), "NOT_FOUND");
    }

    #[test]
    fn each_family_of_codes_has_its_exit_code() {
        assert_eq!(status(Code::NotFound, "").exit_code(), 3);
        assert_eq!(status(Code::OutOfRange, "").exit_code(), 4);
        for c in [Code::AlreadyExists, Code::FailedPrecondition, Code::Aborted] {
            assert_eq!(status(c, "").exit_code(), 5);
        }
        assert_eq!(status(Code::Unavailable, "").exit_code(), 6);
        assert_eq!(status(Code::DeadlineExceeded, "").exit_code(), 6);
        assert_eq!(status(Code::Unauthenticated, "").exit_code(), 7);
        assert_eq!(status(Code::PermissionDenied, "").exit_code(), 7);
        assert_eq!(status(Code::Internal, "").exit_code(), 1);
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CtlError::Timeout(Duration::from_secs(10)).exit_code(), 8);
        let lost = CtlError::Lost {
            endpoint: "http://127.0.0.1:7400".into(),
            cause: "connection reset by peer".into(),
        };
        assert_eq!(lost.exit_code(), 8);
        let unreachable = |answered| CtlError::Unreachable {
            failures: vec![("http://a:1".into(), "connection refused".into())],
            answered,
        };
        assert_eq!(unreachable(false).exit_code(), 8);
        assert_eq!(unreachable(true).exit_code(), 6);
    }

    #[test]
    fn an_unavailable_answer_names_who_answered() {
        let e = status(
            Code::Unavailable,
            "the control-plane database 127.0.0.1:5432/postgres is unavailable",
        );
        assert_eq!(
            e.to_string(),
            "UNAVAILABLE: the control-plane database 127.0.0.1:5432/postgres is unavailable \
             (answered by http://127.0.0.1:7400)"
        );
        // Other refusals do not need it.
        assert_eq!(
            status(Code::NotFound, "no pool").to_string(),
            "NOT_FOUND: no pool"
        );
    }

    #[test]
    fn statuses_made_from_transport_errors_are_told_from_answers() {
        let answered = tonic::Status::unavailable("shutting down");
        assert!(!made_locally(&answered));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let local = tonic::Status::from_error(Box::new(io));
        assert!(made_locally(&local), "{local:?}");
    }

    #[test]
    fn missing_tokens_get_a_hint() {
        let e = CtlError::Status {
            status: tonic::Status::unauthenticated("missing bearer token"),
            token_sent: false,
            endpoint: String::new(),
        };
        assert!(e.to_string().contains("pass --token"), "{e}");
    }

    #[test]
    fn unreachable_endpoints_are_listed() {
        let one = CtlError::Unreachable {
            failures: vec![("http://127.0.0.1:7400".into(), "connection refused".into())],
            answered: false,
        };
        assert_eq!(
            one.to_string(),
            "cannot reach the control plane at http://127.0.0.1:7400: connection refused"
        );
        let two = CtlError::Unreachable {
            failures: vec![
                ("http://a:1".into(), "connection refused".into()),
                ("http://b:2".into(), "timed out after 10s".into()),
            ],
            answered: false,
        };
        assert_eq!(
            two.to_string(),
            "cannot reach the control plane at http://a:1 (connection refused), http://b:2 (timed out after 10s)"
        );
        let mixed = CtlError::Unreachable {
            failures: vec![
                ("http://a:1".into(), "UNAVAILABLE: shutting down".into()),
                ("http://b:2".into(), "connection refused".into()),
            ],
            answered: true,
        };
        assert_eq!(
            mixed.to_string(),
            "no control replica could take the call: http://a:1 (UNAVAILABLE: shutting down), http://b:2 (connection refused)"
        );
        assert_eq!(
            CtlError::Timeout(Duration::from_millis(1_500)).to_string(),
            "the control plane did not answer within 1.5s"
        );
    }

    #[test]
    fn errors_are_told_by_their_innermost_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(111));
        let text = innermost_cause(&e);
        assert!(!text.contains("os error"), "{text}");
        assert!(text.starts_with(char::is_lowercase), "{text}");
    }
}
