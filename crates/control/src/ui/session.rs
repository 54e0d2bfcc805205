//! Signing in to the status page: an admin credential, given once over
//! POST, opens a session held in this replica's memory; the browser keeps
//! only the session's random id in a cookie (`HttpOnly; SameSite=Strict;
//! Path=/ui`, `Secure` when the request came over TLS). The credential is
//! never stored, put in a cookie or logged. A session ends after
//! [`IDLE`] without a request, at sign-out, or when the replica restarts
//! (sessions are per replica: signing in on one replica does not sign in
//! on another).
//!
//! Every change the page makes is a POST that must carry the session's
//! CSRF token (compared in constant time) and must not come from another
//! origin ([`same_origin`]). Failed sign-ins are slowed down and, past
//! [`FAILURES_ALLOWED`] a minute, refused for a while ([`Sessions::try_sign_in`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

use crate::auth::{Credentials, Role};

/// The session cookie's name.
pub const COOKIE: &str = "tandem_ui_session";
/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// Sessions one replica holds; past it the least recently used ends.
pub const MAX_SESSIONS: usize = 1024;
/// Failed sign-ins accepted within [`FAILURE_WINDOW`] (on the whole
/// replica, since the admin listener does not see who is behind a proxy);
/// further attempts are refused until the oldest failure ages out.
pub const FAILURES_ALLOWED: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a failed sign-in waits before it is answered.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// The one place the page turns a credential into who signed in: `Some`
/// user name for a token of an admin whose scope is every pool (the
/// admin token or an access-file admin without `pools`; a revoked name is
/// refused), `None` otherwise. Pool-scoped admins and operators use
/// `tandemctl`.
pub fn admin_from_token(credentials: &Credentials, token: &str) -> Option<String> {
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    credentials
        .admitted_by_token(token.as_bytes())
        .filter(|who| who.role == Role::Admin && who.pools.is_none())
        .map(|who| who.name)
}

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// Must come back with every POST.
    pub csrf: String,
}

struct Entry {
    session: Session,
    last_used: Instant,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    failures: VecDeque<Instant>,
}

/// This replica's sessions.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(<redacted>)")
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for `user`: its id (for the cookie) and the session.
    pub fn open(&self, user: String, now: Instant) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            user,
            csrf: random_hex(),
        };
        let mut inner = self.lock();
        inner
            .by_id
            .retain(|_, e| now.saturating_duration_since(e.last_used) < IDLE);
        if inner.by_id.len() >= MAX_SESSIONS {
            let oldest = inner
                .by_id
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                inner.by_id.remove(&oldest);
            }
        }
        inner.by_id.insert(
            id.clone(),
            Entry {
                session: session.clone(),
                last_used: now,
            },
        );
        (id, session)
    }

    /// The session `id` names, if it is open; a request keeps it open.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut inner = self.lock();
        let entry = inner.by_id.get_mut(id)?;
        if now.saturating_duration_since(entry.last_used) >= IDLE {
            inner.by_id.remove(id);
            return None;
        }
        entry.last_used = now;
        Some(entry.session.clone())
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.lock().by_id.remove(id);
    }

    /// Starts a sign-in attempt at `now`, counted as failed until
    /// [`Sessions::succeeded`] says otherwise (so attempts made at the same
    /// time are counted too); refused, with how long until one may be
    /// tried, past [`FAILURES_ALLOWED`] within [`FAILURE_WINDOW`].
    pub fn try_sign_in(&self, now: Instant) -> Result<(), Duration> {
        let mut inner = self.lock();
        while inner
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= FAILURE_WINDOW)
        {
            inner.failures.pop_front();
        }
        if inner.failures.len() >= FAILURES_ALLOWED {
            let oldest = inner.failures.front().copied().unwrap_or(now);
            return Err(FAILURE_WINDOW
                .saturating_sub(now.saturating_duration_since(oldest))
                .max(Duration::from_secs(1)));
        }
        inner.failures.push_back(now);
        Ok(())
    }

    /// The attempt started at `now` succeeded: it is not a failure.
    pub fn succeeded(&self, now: Instant) {
        let mut inner = self.lock();
        if let Some(i) = inner.failures.iter().rposition(|t| *t == now) {
            inner.failures.remove(i);
        }
    }
}

/// 256 random bits from the thread's CSPRNG, as hex.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `presented` is `expected`, in a time that depends only on the
/// lengths (a CSRF token must not leak by how fast it is refused).
pub fn same_token(presented: &str, expected: &str) -> bool {
    !expected.is_empty()
        && tandem_client::constant_time_eq(presented.as_bytes(), expected.as_bytes())
}

/// The session id the request's cookies carry.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    tandem_telemetry::web::cookie(headers, COOKIE)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// Whether the browser reached us over TLS: the admin listener itself is
/// plain HTTP, so only a TLS-terminating proxy in front says so. Trusting
/// the header only ever makes the cookie stricter.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn attributes(secure: bool) -> &'static str {
    if secure {
        "Path=/ui; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/ui; HttpOnly; SameSite=Strict"
    }
}

/// The `Set-Cookie` value that opens session `id`.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!("{COOKIE}={id}; {}", attributes(secure))
}

/// The `Set-Cookie` value that forgets the session.
pub fn clear_cookie(secure: bool) -> String {
    format!("{COOKIE}=; Max-Age=0; {}", attributes(secure))
}

/// Refuses a request another site made the browser send: a
/// `Sec-Fetch-Site` other than `same-origin` (or `none`, typed by the
/// person), or an `Origin` that is not this page's (`null` only with
/// `Sec-Fetch-Site: same-origin`). A request with neither
/// header (not a browser) still needs the session cookie and its CSRF
/// token.
pub fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let site = headers
        .get("sec-fetch-site")
        .map(|s| s.to_str().unwrap_or("?"));
    if let Some(site) = site
        && !matches!(site, "same-origin" | "none")
    {
        return Err(format!(
            "the request came from another site (Sec-Fetch-Site: {site})"
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("?");
    // The page's `Referrer-Policy: no-referrer` makes a browser send
    // `Origin: null` with its own forms; it then says where the request
    // came from in `Sec-Fetch-Site`, which no page's script can set.
    if origin == "null" && site == Some("same-origin") {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ours = !host.is_empty()
        && (origin == format!("http://{host}") || origin == format!("https://{host}"));
    if ours {
        Ok(())
    } else {
        Err(format!(
            "the request came from another origin (Origin: {origin}, this page: {host})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_admin_token_signs_in() {
        let t = Credentials::new(
            "admin-secret".into(),
            Some("node-secret".into()),
            None,
            None,
        );
        assert_eq!(
            admin_from_token(&t, " admin-secret\n").as_deref(),
            Some("admin")
        );
        assert_eq!(admin_from_token(&t, "node-secret"), None);
        assert_eq!(admin_from_token(&t, "admin-secre"), None);
        assert_eq!(admin_from_token(&t, ""), None);
        assert_eq!(admin_from_token(&t, "   "), None);
    }

    #[test]
    fn sessions_open_expire_and_close() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let (id, session) = s.open("admin".into(), t0);
        assert_eq!(id.len(), 64);
        assert_eq!(session.csrf.len(), 64);
        assert_ne!(id, session.csrf);
        assert_eq!(s.get(&id, t0 + IDLE / 2), Some(session.clone()));
        // Used at IDLE / 2: still open IDLE / 2 + IDLE - 1s later.
        assert!(
            s.get(&id, t0 + IDLE / 2 + IDLE - Duration::from_secs(1))
                .is_some()
        );
        assert!(s.get(&id, t0 + 3 * IDLE).is_none(), "idle too long");
        assert!(s.get(&id, t0).is_none(), "and gone for good");
        let (id, _) = s.open("admin".into(), t0);
        s.close(&id);
        assert!(s.get(&id, t0).is_none());
        assert!(s.get("nope", t0).is_none());
        let (a, _) = s.open("admin".into(), t0);
        let (b, _) = s.open("admin".into(), t0);
        assert_ne!(a, b);
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let (first, _) = s.open("admin".into(), t0);
        for i in 0..MAX_SESSIONS {
            s.open("admin".into(), t0 + Duration::from_millis(1 + i as u64));
        }
        assert!(s.get(&first, t0).is_none(), "the least recently used went");
        assert_eq!(s.lock().by_id.len(), MAX_SESSIONS);
    }

    #[test]
    fn failed_sign_ins_are_limited() {
        let s = Sessions::default();
        let t0 = Instant::now();
        // A success does not count.
        s.try_sign_in(t0).unwrap();
        s.succeeded(t0);
        for i in 0..FAILURES_ALLOWED {
            s.try_sign_in(t0 + Duration::from_secs(i as u64))
                .unwrap_or_else(|_| panic!("attempt {i}"));
        }
        let wait = s.try_sign_in(t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, FAILURE_WINDOW - Duration::from_secs(10));
        assert!(s.try_sign_in(t0 + FAILURE_WINDOW).is_ok());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("abcd", "abc"));
        assert!(!same_token("", "abc"));
        assert!(
            !same_token("", ""),
            "an empty expected token matches nothing"
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_read_and_checked() {
        let id = "a".repeat(64);
        let h = headers(&[("cookie", &format!("x=1; {COOKIE}={id}; y=2"))]);
        assert_eq!(cookie(&h), Some(id.clone()));
        let h = headers(&[("cookie", "x=1"), ("cookie", &format!("{COOKIE}={id}"))]);
        assert_eq!(cookie(&h), Some(id));
        assert_eq!(
            cookie(&headers(&[("cookie", &format!("{COOKIE}=short"))])),
            None
        );
        assert_eq!(
            cookie(&headers(&[(
                "cookie",
                &format!("{COOKIE}={}", "z".repeat(64))
            )])),
            None
        );
        assert_eq!(cookie(&HeaderMap::new()), None);
        assert_eq!(
            set_cookie("abc", false),
            "tandem_ui_session=abc; Path=/ui; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert!(over_tls(&headers(&[("x-forwarded-proto", "https")])));
        assert!(!over_tls(&headers(&[("x-forwarded-proto", "http")])));
    }

    #[test]
    fn other_origins_are_refused() {
        let host = ("host", "127.0.0.1:7401");
        assert!(same_origin(&headers(&[host])).is_ok());
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:7401")])).is_ok());
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])).is_ok());
        // What Chromium sends with the page's own forms (no-referrer).
        assert!(
            same_origin(&headers(&[
                host,
                ("origin", "null"),
                ("sec-fetch-site", "same-origin")
            ]))
            .is_ok()
        );
        for bad in [
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "null"), ("sec-fetch-site", "cross-site")],
            vec![host, ("origin", "http://127.0.0.1:7402")],
            vec![("origin", "http://127.0.0.1:7401")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![
                host,
                ("origin", "http://127.0.0.1:7401"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert!(same_origin(&headers(&bad)).is_err(), "{bad:?}");
        }
    }
}
