//! What can go wrong, as one line for the user and a distinct exit code for
//! scripts (documented in `tandemctl --help`).

use std::time::Duration;

use tonic::Code;

use crate::duration::format_duration;

/// Exit codes. 2 is also what clap uses for bad flags.
pub mod exit {
    pub const OK: u8 = 0;
    pub const GENERIC: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const INVALID_ARGUMENT: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
    pub const AUTH: u8 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A flag or argument that parsed but cannot be used.
    #[error("{0}")]
    Usage(String),
    /// No endpoint accepted a connection; each with why.
    #[error("cannot reach the control plane at {}", describe_failures(.0))]
    Unreachable(Vec<(String, String)>),
    /// The call was made and the control plane refused it.
    #[error("{}", describe_status(.status, *.token_sent))]
    Status {
        status: tonic::Status,
        token_sent: bool,
    },
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
            Self::Unreachable(_) | Self::Timeout(_) | Self::StreamEnded => exit::UNAVAILABLE,
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

/// `INVALID_ARGUMENT: pool.health_check.interval_ms: must be ...`, on one line.
fn describe_status(status: &tonic::Status, token_sent: bool) -> String {
    let message = one_line(status.message());
    let mut s = code_name(status.code()).to_string();
    if !message.is_empty() {
        s.push_str(": ");
        s.push_str(&message);
    }
    if status.code() == Code::Unauthenticated && !token_sent {
        s.push_str(" (no token was sent: pass --token, --token-file or set TANDEM_TOKEN)");
    }
    s
}

fn describe_failures(failures: &[(String, String)]) -> String {
    match failures {
        [(endpoint, why)] => format!("{endpoint}: {why}"),
        _ => failures
            .iter()
            .map(|(endpoint, why)| format!("{endpoint} ({why})"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The innermost cause of an error, as a user reads it: `connection
/// refused`, `failed to lookup address information: ...`, `no such file or
/// directory`.
pub fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost: &(dyn std::error::Error + 'static) = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = if let Some(io) = innermost.downcast_ref::<std::io::Error>() {
        io.to_string()
    } else {
        innermost.to_string()
    };
    // "Connection refused (os error 111)" -> "connection refused"
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => one_line(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> CtlError {
        CtlError::Status {
            status: tonic::Status::new(code, message),
            token_sent: true,
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
        assert_eq!(status(Code::Unauthenticated, "").exit_code(), 7);
        assert_eq!(status(Code::PermissionDenied, "").exit_code(), 7);
        assert_eq!(status(Code::Internal, "").exit_code(), 1);
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CtlError::Timeout(Duration::from_secs(10)).exit_code(), 6);
    }

    #[test]
    fn missing_tokens_get_a_hint() {
        let e = CtlError::Status {
            status: tonic::Status::unauthenticated("missing bearer token"),
            token_sent: false,
        };
        assert!(e.to_string().contains("pass --token"), "{e}");
    }

    #[test]
    fn unreachable_endpoints_are_listed() {
        let one = CtlError::Unreachable(vec![(
            "http://127.0.0.1:7400".into(),
            "connection refused".into(),
        )]);
        assert_eq!(
            one.to_string(),
            "cannot reach the control plane at http://127.0.0.1:7400: connection refused"
        );
        let two = CtlError::Unreachable(vec![
            ("http://a:1".into(), "connection refused".into()),
            ("http://b:2".into(), "timed out after 10s".into()),
        ]);
        assert_eq!(
            two.to_string(),
            "cannot reach the control plane at http://a:1 (connection refused), http://b:2 (timed out after 10s)"
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
