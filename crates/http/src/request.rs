//! Request heads: one type for HTTP/1 and HTTP/2, and the rules that make
//! one (RFC 9112 §3 and §6, RFC 9110 §7.2, RFC 9113 §8.2).
//!
//! A request is refused when the proxy would have to guess at it:
//! - framing: `Transfer-Encoding` with `Content-Length`, in HTTP/1.0, or
//!   not ending in `chunked` (400); codings before `chunked`, which the
//!   proxy does not implement (501); `Content-Length` values that are not
//!   numbers or disagree (400; identical ones collapse into one);
//! - host: none in HTTP/1.1, more than one, or not a valid `host[:port]`
//!   (400); an absolute-form target's authority replaces `Host`;
//! - target: only origin and absolute (`http`/`https`) forms, no userinfo,
//!   and a path that normalises ([`crate::target`]); `CONNECT` is 405;
//! - HTTP/2: connection-specific fields, invalid characters in any field
//!   (400);
//! - header names with `_` are refused when [`Underscores::Reject`];
//! - `Expect` other than `100-continue` (417).

use std::borrow::Cow;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Version};

use crate::fields::{self, Fields, Span, list};
use crate::target::{self, EncodedSlashes};

/// The most header fields a request may carry, whatever the configured
/// limit.
pub const MAX_HEADERS: usize = 256;

/// What to do with header names containing `_`: some stacks (CGI, many
/// frameworks) read `X_Forwarded_For` as `X-Forwarded-For`, which lets a
/// client pass a field the proxy would otherwise have replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Not forwarded (nginx's default).
    #[default]
    Drop,
    /// Forwarded like any other.
    Allow,
    /// The request is refused (400).
    Reject,
}

/// Limits and policies of request parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Most header fields (at most [`MAX_HEADERS`]).
    pub max_headers: usize,
    /// Largest head, in bytes.
    pub max_head_bytes: usize,
    pub underscores: Underscores,
    pub encoded_slashes: EncodedSlashes,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            max_headers: 100,
            max_head_bytes: 64 * 1024,
            underscores: Underscores::Drop,
            encoded_slashes: EncodedSlashes::Reject,
        }
    }
}

/// How a request's body arrives, as its head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// HTTP/2 without `content-length`: until the end of the stream.
    Streamed,
}

/// A request refused: the status to answer with and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} {reason}", status.as_u16())]
pub struct RequestError {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl RequestError {
    pub fn bad(reason: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }

    fn with(status: StatusCode, reason: &'static str) -> Self {
        Self { status, reason }
    }
}

/// A request head, whatever protocol it came in on.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// HTTP/1.0, HTTP/1.1 or HTTP/2.
    pub version: Version,
    /// The normalised path and the query, in origin form.
    target: Bytes,
    path_len: usize,
    /// The host asked for (absolute-form authority or `:authority`, else
    /// `Host`), checked; `None` only for HTTP/1.0 without `Host`.
    pub host: Option<Bytes>,
    pub body: Body,
    /// HTTP/1: the client keeps the connection after this request.
    pub keep_alive: bool,
    /// HTTP/1.1: the client waits for `100 Continue` before its body.
    pub expect_continue: bool,
    /// HTTP/1.1: the protocol of an upgrade the client asks for.
    pub upgrade: Option<Bytes>,
    /// The fields as received (including `Host`, the framing and the
    /// hop-by-hop ones: [`crate::rewrite`] decides what goes on).
    pub fields: Fields,
}

impl RequestHead {
    /// The normalised path (what routes match on).
    pub fn path(&self) -> &str {
        std::str::from_utf8(&self.target[..self.path_len])
            .expect("targets are checked to be ASCII when parsed")
    }

    /// The normalised path and the query: the target sent upstream.
    pub fn target(&self) -> &[u8] {
        &self.target
    }

    /// [`RequestHead::target`] as a shared buffer (no copy), for what
    /// outlives the request (an access-log line).
    pub fn target_shared(&self) -> Bytes {
        self.target.clone()
    }

    /// The host as text ("" when there is none).
    pub fn host_str(&self) -> &str {
        self.host
            .as_deref()
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or("")
    }

    /// A method that may run twice with the effect of once (RFC 9110
    /// §9.2.2).
    pub fn idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        )
    }

    /// HTTP/2: the head of a request hyper received. `end_of_stream`: no
    /// body follows.
    pub fn from_h2(
        parts: &http::request::Parts,
        end_of_stream: bool,
        opts: &ParseOptions,
    ) -> Result<RequestHead, RequestError> {
        if parts.method == Method::CONNECT {
            return Err(RequestError::with(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported",
            ));
        }
        if let Some(s) = parts.uri.scheme_str()
            && !(s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
        {
            return Err(RequestError::bad("only http and https targets are served"));
        }
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes();
        for (_, value) in &parts.headers {
            if !fields::is_field_value(value.as_bytes()) {
                return Err(RequestError::bad("invalid character in a header value"));
            }
        }
        let fields = Fields::from_pairs(
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        );
        let authority = parts
            .uri
            .authority()
            .map(|a| Bytes::copy_from_slice(a.as_str().as_bytes()));
        build(
            Raw {
                method: parts.method.clone(),
                version: Version::HTTP_2,
                target: Bytes::copy_from_slice(pq),
                authority,
                fields,
                end_of_stream,
            },
            opts,
        )
    }
}

/// Parses a request head off the front of `buf`: `None` while it is
/// incomplete. `spans` is where the field positions go (an empty list,
/// kept from an earlier head to save its allocation).
pub fn parse_request(
    buf: &mut BytesMut,
    opts: &ParseOptions,
    spans: &mut Vec<Span>,
) -> Result<Option<RequestHead>, RequestError> {
    let too_large = RequestError::with(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request head too large",
    );
    // Uninitialised: nothing is cleared per request.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let slots = &mut slots[..opts.max_headers.clamp(1, MAX_HEADERS)];
    let mut req = httparse::Request::new(&mut []);
    let (len, method, version, target) = {
        let len = match req.parse_with_uninit_headers(&buf[..], slots) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= opts.max_head_bytes => {
                return Err(too_large);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(RequestError::with(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many header fields",
                ));
            }
            Err(e) => return Err(RequestError::bad(reason(e))),
        };
        if len > opts.max_head_bytes {
            return Err(too_large);
        }
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| RequestError::bad("invalid method"))?;
        let version = match req.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let base = &buf[..];
        spans.clear();
        for h in req.headers.iter() {
            spans.push(Span::within(base, h.name.as_bytes(), h.value));
        }
        let path = req.path.unwrap_or_default().as_bytes();
        let start = path.as_ptr() as usize - base.as_ptr() as usize;
        (len, method, version, start..start + path.len())
    };
    // The head is done with the buffer: its bytes are shared, not copied,
    // by the target and the fields.
    let head = buf.split_to(len).freeze();
    if method == Method::CONNECT {
        return Err(RequestError::with(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        ));
    }
    let target = head.slice(target);
    let fields = Fields::new(head, std::mem::take(spans));
    build(
        Raw {
            method,
            version,
            target,
            authority: None,
            fields,
            end_of_stream: false,
        },
        opts,
    )
    .map(Some)
}

struct Raw {
    method: Method,
    version: Version,
    target: Bytes,
    /// HTTP/2's `:authority`.
    authority: Option<Bytes>,
    fields: Fields,
    /// HTTP/2: no body follows.
    end_of_stream: bool,
}

/// The fields a request's meaning depends on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Named {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Upgrade,
    /// Connection-specific in HTTP/2 (RFC 9113 §8.2.2).
    H2Forbidden,
    Te,
    Other,
}

fn named(name: &[u8]) -> Named {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 if is(b"te") => Named::Te,
        4 if is(b"host") => Named::Host,
        6 if is(b"expect") => Named::Expect,
        7 if is(b"upgrade") => Named::Upgrade,
        10 if is(b"connection") => Named::Connection,
        10 if is(b"keep-alive") => Named::H2Forbidden,
        14 if is(b"content-length") => Named::ContentLength,
        16 if is(b"proxy-connection") => Named::H2Forbidden,
        17 if is(b"transfer-encoding") => Named::TransferEncoding,
        _ => Named::Other,
    }
}

fn build(raw: Raw, opts: &ParseOptions) -> Result<RequestHead, RequestError> {
    let h2 = raw.version == Version::HTTP_2;
    let h1_0 = raw.version == Version::HTTP_10;

    // === the target ===
    let mut authority = raw.authority;
    let t = &raw.target[..];
    let origin: Bytes = if t.first() == Some(&b'/') {
        raw.target.clone()
    } else if t == b"*" {
        return Err(RequestError::bad("asterisk-form targets are not served"));
    } else if t.windows(3).any(|w| w == b"://") {
        let (auth, rest) = target::split_absolute(t).map_err(RequestError::bad)?;
        target::check_authority(auth).map_err(RequestError::bad)?;
        let base = raw.target.as_ptr() as usize;
        let a = auth.as_ptr() as usize - base;
        authority = Some(raw.target.slice(a..a + auth.len()));
        if rest.first() == Some(&b'/') {
            let r = rest.as_ptr() as usize - base;
            raw.target.slice(r..r + rest.len())
        } else {
            let mut owned = b"/".to_vec();
            owned.extend_from_slice(rest);
            Bytes::from(owned)
        }
    } else {
        return Err(RequestError::bad("invalid request target"));
    };
    let (path, query) =
        target::normalize(&origin, opts.encoded_slashes).map_err(RequestError::bad)?;
    let path_len = path.len();
    let target = match path {
        // Unchanged: the target is the origin as received.
        Cow::Borrowed(_) => origin.clone(),
        Cow::Owned(mut p) => {
            p.extend_from_slice(query);
            Bytes::from(p)
        }
    };

    // === the fields, in one pass ===
    let mut hosts = 0usize;
    let mut host = None;
    let mut length: Option<u64> = None;
    let mut lengths_seen = false;
    let mut codings = 0usize;
    let mut last_coding: &[u8] = b"";
    let mut chunked_before_last = false;
    let mut other_coding = false;
    let mut te_seen = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut expect = None;
    let mut upgrade = None;
    for (name, value) in raw.fields.iter() {
        if opts.underscores == Underscores::Reject && name.contains(&b'_') {
            return Err(RequestError::bad("underscore in a header name"));
        }
        match named(name) {
            Named::Host => {
                hosts += 1;
                host.get_or_insert(value);
            }
            Named::ContentLength => {
                lengths_seen = true;
                let mut any = false;
                for v in list(value) {
                    any = true;
                    let n = parse_length(v).ok_or(RequestError::bad("invalid Content-Length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(RequestError::bad("conflicting Content-Length values"));
                    }
                    length = Some(n);
                }
                if !any {
                    return Err(RequestError::bad("invalid Content-Length"));
                }
            }
            Named::TransferEncoding => {
                if h2 {
                    return Err(RequestError::bad("connection-specific field in HTTP/2"));
                }
                te_seen = true;
                for c in list(value) {
                    if !fields::is_token(c) {
                        return Err(RequestError::bad("invalid Transfer-Encoding"));
                    }
                    if codings > 0 {
                        if last_coding.eq_ignore_ascii_case(b"chunked") {
                            chunked_before_last = true;
                        } else {
                            other_coding = true;
                        }
                    }
                    codings += 1;
                    last_coding = c;
                }
            }
            Named::Connection => {
                if h2 {
                    return Err(RequestError::bad("connection-specific field in HTTP/2"));
                }
                for t in list(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_token = true;
                    }
                }
            }
            Named::Upgrade if h2 => {
                return Err(RequestError::bad("connection-specific field in HTTP/2"));
            }
            Named::Upgrade => {
                upgrade.get_or_insert(value);
            }
            Named::H2Forbidden if h2 => {
                return Err(RequestError::bad("connection-specific field in HTTP/2"));
            }
            Named::Te if h2 && !value.trim_ascii().eq_ignore_ascii_case(b"trailers") => {
                return Err(RequestError::bad("connection-specific field in HTTP/2"));
            }
            Named::Expect => {
                expect.get_or_insert(value);
            }
            Named::H2Forbidden | Named::Te | Named::Other => {}
        }
    }

    // === the host ===
    if hosts > 1 {
        return Err(RequestError::bad("more than one Host header"));
    }
    if let Some(h) = host {
        target::check_authority(h).map_err(RequestError::bad)?;
    } else if raw.version == Version::HTTP_11 {
        return Err(RequestError::bad("missing Host header"));
    }
    let host = match authority {
        Some(a) => {
            target::check_authority(&a).map_err(RequestError::bad)?;
            Some(a)
        }
        None => raw.fields.get_shared(b"host"),
    };
    if h2 && host.is_none() {
        return Err(RequestError::bad("missing :authority"));
    }

    // === the framing ===
    let body = if te_seen {
        if h1_0 {
            return Err(RequestError::bad(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if lengths_seen {
            return Err(RequestError::bad(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if codings == 0 || !last_coding.eq_ignore_ascii_case(b"chunked") {
            return Err(RequestError::bad(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        if chunked_before_last {
            return Err(RequestError::bad("chunked applied more than once"));
        }
        if other_coding {
            return Err(RequestError::with(
                StatusCode::NOT_IMPLEMENTED,
                "transfer codings other than chunked are not implemented",
            ));
        }
        Body::Chunked
    } else {
        match length {
            Some(0) => Body::None,
            Some(n) => Body::Length(n),
            None if h2 && !raw.end_of_stream => Body::Streamed,
            None => Body::None,
        }
    };

    // === the connection ===
    let keep_alive = match raw.version {
        Version::HTTP_10 => keep_alive_token && !close,
        _ => !close,
    };
    let expect_continue = match expect {
        None => false,
        Some(v) if v.trim_ascii().eq_ignore_ascii_case(b"100-continue") => {
            raw.version == Version::HTTP_11 && body != Body::None
        }
        Some(_) => {
            return Err(RequestError::with(
                StatusCode::EXPECTATION_FAILED,
                "unsupported expectation",
            ));
        }
    };
    let upgrade = match upgrade {
        Some(u) if upgrade_token && raw.version == Version::HTTP_11 => {
            raw.fields.get_shared(b"upgrade").filter(|_| !u.is_empty())
        }
        _ => None,
    };

    Ok(RequestHead {
        method: raw.method,
        version: raw.version,
        target,
        path_len,
        host,
        body,
        keep_alive,
        expect_continue,
        upgrade,
        fields: raw.fields,
    })
}

/// A `Content-Length` value: 1 to 19 digits (no sign, no spaces inside).
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "invalid request line or HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<RequestHead, RequestError> {
        parse_with(raw, &ParseOptions::default())
    }

    fn parse_with(raw: &str, opts: &ParseOptions) -> Result<RequestHead, RequestError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        let mut spans = Vec::new();
        parse_request(&mut buf, opts, &mut spans).map(|h| h.expect("a complete head"))
    }

    fn refused(raw: &str) -> (u16, &'static str) {
        match parse(raw) {
            Err(e) => (e.status.as_u16(), e.reason),
            Ok(h) => panic!("accepted {raw:?}: {h:?}"),
        }
    }

    #[test]
    fn framing_that_would_need_a_guess_is_refused() {
        let req = |fields: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        for (fields, want) in [
            ("", Body::None),
            ("Content-Length: 0\r\n", Body::None),
            ("Content-Length: 12\r\n", Body::Length(12)),
            (
                "Content-Length: 12\r\nContent-Length: 12\r\n",
                Body::Length(12),
            ),
            ("Content-Length: 7, 7\r\n", Body::Length(7)),
            ("Transfer-Encoding: chunked\r\n", Body::Chunked),
            ("Transfer-Encoding: Chunked\r\n", Body::Chunked),
            ("Transfer-Encoding: ,chunked,\r\n", Body::Chunked),
        ] {
            assert_eq!(parse(&req(fields)).unwrap().body, want, "{fields:?}");
        }
        for (fields, status, why) in [
            (
                "Content-Length: 3\r\nContent-Length: 4\r\n",
                400,
                "conflicting Content-Length values",
            ),
            (
                "Content-Length: 3, 4\r\n",
                400,
                "conflicting Content-Length values",
            ),
            ("Content-Length: abc\r\n", 400, "invalid Content-Length"),
            ("Content-Length: -1\r\n", 400, "invalid Content-Length"),
            ("Content-Length: +5\r\n", 400, "invalid Content-Length"),
            ("Content-Length: 1 2\r\n", 400, "invalid Content-Length"),
            ("Content-Length: \r\n", 400, "invalid Content-Length"),
            (
                "Content-Length: 99999999999999999999\r\n",
                400,
                "invalid Content-Length",
            ),
            (
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                400,
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "Transfer-Encoding: gzip\r\n",
                400,
                "Transfer-Encoding does not end in chunked",
            ),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                400,
                "Transfer-Encoding does not end in chunked",
            ),
            (
                "Transfer-Encoding: \r\n",
                400,
                "Transfer-Encoding does not end in chunked",
            ),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                501,
                "transfer codings other than chunked are not implemented",
            ),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                501,
                "transfer codings other than chunked are not implemented",
            ),
            (
                "Transfer-Encoding: chunked, chunked\r\n",
                400,
                "chunked applied more than once",
            ),
            (
                "Transfer-Encoding: chunked;q=1\r\n",
                400,
                "invalid Transfer-Encoding",
            ),
            ("Expect: 200-ok\r\n", 417, "unsupported expectation"),
        ] {
            assert_eq!(refused(&req(fields)), (status, why), "{fields:?}");
        }
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (400, "Transfer-Encoding in an HTTP/1.0 request")
        );
    }

    #[test]
    fn the_connection_field_never_changes_the_framing() {
        let h = parse(
            "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.body, Body::Length(5));
        assert_eq!(h.host.as_deref(), Some(&b"a"[..]));
        assert!(h.keep_alive);
    }

    #[test]
    fn the_host_is_checked_and_an_absolute_target_replaces_it() {
        let h = parse("GET http://Shop.test:8080/a/../b?x HTTP/1.1\r\nHost: other.test\r\n\r\n")
            .unwrap();
        assert_eq!(h.host.as_deref(), Some(&b"Shop.test:8080"[..]));
        assert_eq!(h.target(), b"/b?x");
        assert_eq!(h.path(), "/b");
        let h = parse("GET https://s.test HTTP/1.1\r\nHost: s.test\r\n\r\n").unwrap();
        assert_eq!(h.target(), b"/");
        for (raw, why) in [
            ("GET / HTTP/1.1\r\n\r\n", "missing Host header"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                "more than one Host header",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                "invalid character in the host",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                "invalid character in the host",
            ),
            ("GET / HTTP/1.1\r\nHost: a:\r\n\r\n", "empty port"),
            ("GET / HTTP/1.1\r\nHost: \r\n\r\n", "empty host"),
            (
                "GET http://u@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "userinfo in the request target",
            ),
            (
                "GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "only http and https targets are served",
            ),
            (
                "GET http://a.test:x/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "invalid port",
            ),
            (
                "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                "asterisk-form targets are not served",
            ),
            (
                "GET /api/..%2Fsecret HTTP/1.1\r\nHost: a\r\n\r\n",
                "encoded slash or backslash in the path",
            ),
        ] {
            assert_eq!(refused(raw), (400, why), "{raw:?}");
        }
        // HTTP/1.0 may leave it out.
        assert_eq!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().host, None);
        assert_eq!(
            refused("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"),
            (405, "CONNECT is not supported")
        );
    }

    #[test]
    fn keep_alive_continue_and_upgrade() {
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        let h =
            parse("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap();
        assert!(h.expect_continue);
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert!(!h.expect_continue, "nothing to wait for without a body");
        let h = parse(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.upgrade.as_deref(), Some(&b"websocket"[..]));
        let h = parse("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert_eq!(h.upgrade, None, "Upgrade needs Connection: upgrade");
    }

    #[test]
    fn limits_and_underscores() {
        let opts = ParseOptions {
            max_headers: 2,
            max_head_bytes: 64,
            underscores: Underscores::Reject,
            ..ParseOptions::default()
        };
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n"[..]);
        let e = parse_request(&mut buf, &opts, &mut Vec::new()).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.reason),
            (431, "too many header fields")
        );
        let mut buf = BytesMut::from(format!("GET /{} HTTP/1.1\r\n", "a".repeat(80)).as_bytes());
        let e = parse_request(&mut buf, &opts, &mut Vec::new()).unwrap_err();
        assert_eq!(e.status.as_u16(), 431);
        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHo"[..]);
        assert!(
            parse_request(&mut partial, &opts, &mut Vec::new())
                .unwrap()
                .is_none()
        );
        assert_eq!(
            partial.len(),
            18,
            "nothing consumed before the head is complete"
        );
        let e = parse_with("GET / HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\n\r\n", &opts).unwrap_err();
        assert_eq!(e.reason, "underscore in a header name");
        assert!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\n\r\n").is_ok(),
            "dropped later, not refused"
        );
    }

    #[test]
    fn the_head_is_taken_and_the_body_left() {
        let mut buf =
            BytesMut::from(&b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nokGET"[..]);
        let mut spans = Vec::new();
        let h = parse_request(&mut buf, &ParseOptions::default(), &mut spans)
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..], b"okGET");
        assert_eq!(h.fields.len(), 2);
        assert_eq!(h.method, Method::POST);
        assert!(!h.idempotent());
    }

    fn h2(req: http::Request<()>, end: bool) -> Result<RequestHead, RequestError> {
        let (parts, ()) = req.into_parts();
        RequestHead::from_h2(&parts, end, &ParseOptions::default())
    }

    #[test]
    fn http2_heads_become_the_same_type() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://shop.test/a/./b?q")
            .header("content-length", "3")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let h = h2(req, false).unwrap();
        assert_eq!(h.version, Version::HTTP_2);
        assert_eq!(h.host.as_deref(), Some(&b"shop.test"[..]));
        assert_eq!(h.target(), b"/a/b?q");
        assert_eq!(h.body, Body::Length(3));
        let req = http::Request::builder()
            .uri("http://s.test/")
            .body(())
            .unwrap();
        assert_eq!(h2(req, false).unwrap().body, Body::Streamed);
        for (name, value) in [
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("keep-alive", "5"),
            ("upgrade", "websocket"),
            ("proxy-connection", "x"),
            ("te", "gzip"),
        ] {
            let req = http::Request::builder()
                .uri("http://s.test/")
                .header(name, value)
                .body(())
                .unwrap();
            assert_eq!(
                h2(req, true).unwrap_err().reason,
                "connection-specific field in HTTP/2",
                "{name}"
            );
        }
        let req = http::Request::builder()
            .uri("http://s.test/")
            .header("te", "trailers")
            .body(())
            .unwrap();
        assert!(h2(req, true).is_ok());
        let req = http::Request::builder().uri("/").body(()).unwrap();
        assert_eq!(h2(req, true).unwrap_err().reason, "missing :authority");
    }
}
