//! The retry policy, as pure decisions: after a try failed, send the
//! request again on a fresh connection to the same backend, try another
//! backend, or give up; and whether the failure counts against the backend
//! for outlier ejection.
//!
//! - A request the backend provably got none of goes again, whatever its
//!   method: the connect failed, or the backend's close of a kept-alive
//!   connection was seen before the request head was fully written, or it
//!   crossed the request and the backend's kernel refused the request with
//!   a reset after its FIN (HAProxy retries these too: `http-reuse safe`).
//!   A stale kept-alive connection is not the
//!   backend's fault: the request goes again on a fresh connection to the
//!   same backend, uncounted.
//! - A request that left without an answer coming back may have run: only
//!   one that may run twice with the effect of once, and whose body the
//!   proxy can send again, is retried. That is an idempotent method (RFC
//!   9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE, TRACE) or a request
//!   carrying an `Idempotency-Key` field (the client declares a retry safe,
//!   draft-ietf-httpapi-idempotency-key-header; the backend finds the first
//!   attempt's outcome by the key). A POST or PATCH without a key that left
//!   is never sent again: the client gets the 502 and decides. When it left
//!   on a kept-alive connection and nothing came back, that is the likely
//!   keep-alive race: a fresh connection to the same backend first,
//!   uncounted.
//! - Everything else that failed counts against the backend.

/// May the request run twice with the effect of once: an idempotent method,
/// or a non-empty `Idempotency-Key` field.
pub fn replay_safe(head: &tandem_http::RequestHead) -> bool {
    head.idempotent()
        || head
            .fields
            .get(b"idempotency-key")
            .is_some_and(|v| !v.trim_ascii().is_empty())
}

/// How one try on one backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection: nothing was sent.
    Connect,
    /// The backend had closed the kept-alive connection before the request
    /// reached it (seen before the head was fully written, or proved by
    /// the reset after its FIN): nothing it could act on was sent.
    Stale,
    /// The request left; the connection closed or reset before any byte of
    /// an answer.
    NoResponse,
    /// The backend's answer was not usable HTTP.
    Invalid,
    /// No answer in time.
    Timeout,
}

/// What is known about the request and the try.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// It may run twice with the effect of once ([`replay_safe`]).
    pub idempotent: bool,
    /// Everything read of the body so far is kept: it can be sent again.
    pub replayable: bool,
    /// The try used a kept-alive connection from the pool.
    pub reused: bool,
    /// This backend already got a fresh-connection resend of this request.
    pub resent: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Again on a fresh connection to the same backend (not its fault).
    Resend,
    /// Another backend, within the retry budget.
    Failover,
    GiveUp,
}

pub fn next(failure: Failure, f: Facts) -> Next {
    if !f.replayable {
        return Next::GiveUp;
    }
    match failure {
        Failure::Stale if !f.resent => Next::Resend,
        Failure::NoResponse if f.reused && f.idempotent && !f.resent => Next::Resend,
        Failure::Connect | Failure::Stale => Next::Failover,
        Failure::NoResponse | Failure::Invalid | Failure::Timeout if f.idempotent => Next::Failover,
        Failure::NoResponse | Failure::Invalid | Failure::Timeout => Next::GiveUp,
    }
}

/// Does the failure count against the backend (outlier ejection)?
pub fn blames_backend(failure: Failure, next: Next) -> bool {
    next != Next::Resend && failure != Failure::Stale
}

/// Does a retry after this failure take from the retry budget? Retries of
/// requests that never reached a backend cannot amplify its load.
pub fn spends_budget(failure: Failure) -> bool {
    !matches!(failure, Failure::Connect | Failure::Stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(idempotent: bool, replayable: bool, reused: bool, resent: bool) -> Facts {
        Facts {
            idempotent,
            replayable,
            reused,
            resent,
        }
    }

    #[test]
    fn a_request_the_backend_got_none_of_goes_again_whatever_its_method() {
        let post = facts(false, true, true, false);
        assert_eq!(next(Failure::Stale, post), Next::Resend);
        assert!(!blames_backend(Failure::Stale, Next::Resend));
        assert_eq!(next(Failure::Connect, post), Next::Failover);
        assert!(blames_backend(Failure::Connect, Next::Failover));
        // Twice stale on the same backend: another one.
        assert_eq!(
            next(Failure::Stale, facts(false, true, false, true)),
            Next::Failover
        );
        assert!(!spends_budget(Failure::Stale) && !spends_budget(Failure::Connect));
    }

    #[test]
    fn a_request_that_may_have_run_is_retried_only_when_idempotent_and_replayable() {
        let post = facts(false, true, true, false);
        for f in [Failure::NoResponse, Failure::Invalid, Failure::Timeout] {
            assert_eq!(next(f, post), Next::GiveUp, "{f:?}");
            assert!(spends_budget(f));
        }
        let get = facts(true, true, false, false);
        for f in [Failure::NoResponse, Failure::Invalid, Failure::Timeout] {
            assert_eq!(next(f, get), Next::Failover, "{f:?}");
        }
        let too_big = facts(true, false, true, false);
        assert_eq!(next(Failure::NoResponse, too_big), Next::GiveUp);
        assert_eq!(next(Failure::Stale, too_big), Next::GiveUp);
    }

    #[test]
    fn the_keep_alive_race_is_resent_once_on_a_fresh_connection_uncounted() {
        let get_on_kept = facts(true, true, true, false);
        assert_eq!(next(Failure::NoResponse, get_on_kept), Next::Resend);
        assert!(!blames_backend(Failure::NoResponse, Next::Resend));
        let again = facts(true, true, false, true);
        assert_eq!(next(Failure::NoResponse, again), Next::Failover);
        assert!(blames_backend(Failure::NoResponse, Next::Failover));
    }
}
