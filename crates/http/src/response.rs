//! Response heads from backends (RFC 9112 §4 and §6.3): the status, how
//! the body ends, whether the connection may carry another request, and
//! how long the backend keeps it idle.
//!
//! A proxy reads a backend's answer to forward it, and any bytes it
//! misreads as the end of one answer become the start of the next client's:
//! so anything that could be read two ways is refused here (the proxy
//! answers 502 and closes the connection):
//! - `Content-Length` values that are not numbers or disagree;
//! - `Transfer-Encoding` other than exactly `chunked`, or in an HTTP/1.0
//!   answer.
//!
//! `Transfer-Encoding: chunked` with `Content-Length` is read as chunked,
//! and the connection is not used again (RFC 9112 §6.3, item 3).

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{StatusCode, Version};

use crate::fields::{Fields, Span, list};
use crate::request::parse_length;

/// The most interim (1xx) answers read before a final one.
pub const MAX_INTERIM: usize = 16;

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body: an answer to HEAD, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// When the backend closes the connection.
    UntilClose,
}

/// Why a backend's answer cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResponseError(pub &'static str);

/// What a response head says, without its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseMeta {
    pub status: StatusCode,
    pub version: Version,
    pub body: ResponseBody,
    /// The connection may carry another request after this answer.
    pub keep_alive: bool,
    /// `Keep-Alive: timeout=N`: the backend closes the connection after N
    /// idle seconds.
    pub keep_alive_timeout: Option<u32>,
    /// The `Content-Length` a HEAD or 304 answer announces for the
    /// representation (its own body is empty).
    pub declared_length: Option<u64>,
    /// Bytes of the head (with the interim answers before it, for
    /// [`parse_final`]).
    pub len: usize,
}

/// A response head with its fields.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub meta: ResponseMeta,
    pub fields: Fields,
}

/// Parses one response head at the start of `buf`: `None` while it is
/// incomplete. Field positions go into `spans` when given.
pub fn parse_meta(
    buf: &[u8],
    head_request: bool,
    max_headers: usize,
    spans: Option<&mut Vec<Span>>,
) -> Result<Option<ResponseMeta>, ResponseError> {
    const MAX: usize = 256;
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX];
    let slots = &mut slots[..max_headers.clamp(1, MAX)];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError("too many header fields"));
        }
        Err(_) => return Err(ResponseError("not an HTTP/1.x response head")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ResponseError("status code out of range"))?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };

    let mut length: Option<u64> = None;
    let mut codings = 0usize;
    let mut only_chunked = true;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut keep_alive_timeout = None;
    let mut spans = spans;
    if let Some(s) = spans.as_deref_mut() {
        s.clear();
    }
    for h in resp.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        if let Some(s) = spans.as_deref_mut() {
            s.push(Span::within(buf, name, value));
        }
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"content-length") {
            let mut any = false;
            for v in list(value) {
                any = true;
                let n = parse_length(v).ok_or(ResponseError("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ResponseError("conflicting Content-Length values"));
                }
                length = Some(n);
            }
            if !any {
                return Err(ResponseError("invalid Content-Length"));
            }
        } else if is(b"transfer-encoding") {
            for c in list(value) {
                codings += 1;
                only_chunked &= c.eq_ignore_ascii_case(b"chunked");
            }
            if codings == 0 {
                only_chunked = false;
            }
        } else if is(b"connection") {
            for t in list(value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if is(b"keep-alive") {
            for param in list(value) {
                let Some(eq) = param.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if param[..eq].trim_ascii().eq_ignore_ascii_case(b"timeout") {
                    keep_alive_timeout = parse_length(param[eq + 1..].trim_ascii())
                        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
                }
            }
        }
    }
    let chunked = codings > 0 || !only_chunked; // a Transfer-Encoding was sent
    if chunked {
        if version == Version::HTTP_10 {
            return Err(ResponseError("Transfer-Encoding in an HTTP/1.0 response"));
        }
        if !(only_chunked && codings == 1) {
            return Err(ResponseError("unsupported transfer coding in the response"));
        }
    }
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if no_body {
        ResponseBody::Empty
    } else if chunked {
        ResponseBody::Chunked
    } else if let Some(n) = length {
        ResponseBody::Length(n)
    } else {
        ResponseBody::UntilClose
    };
    let keep_alive = !close
        && (version == Version::HTTP_11 || keep_alive_token)
        && body != ResponseBody::UntilClose
        && status != StatusCode::SWITCHING_PROTOCOLS
        // Both framings: read as chunked, then closed (RFC 9112 §6.3).
        && !(chunked && length.is_some());
    let declared_length = match status {
        StatusCode::NO_CONTENT => None,
        s if s.is_informational() => None,
        _ if chunked => None,
        _ => length,
    };
    Ok(Some(ResponseMeta {
        status,
        version,
        body,
        keep_alive,
        keep_alive_timeout,
        declared_length,
        len,
    }))
}

/// Parses one response head off the front of `buf`, taking it from the
/// buffer: `None` while it is incomplete. `spans` is an empty list to
/// reuse.
pub fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    max_headers: usize,
    spans: &mut Vec<Span>,
) -> Result<Option<ResponseHead>, ResponseError> {
    let Some(meta) = parse_meta(buf, head_request, max_headers, Some(spans))? else {
        return Ok(None);
    };
    let head = buf.split_to(meta.len).freeze();
    Ok(Some(ResponseHead {
        meta,
        fields: Fields::new(head, std::mem::take(spans)),
    }))
}

/// The final answer at the start of `buf`, interim (1xx but 101) answers
/// skipped; its `len` counts them too.
pub fn parse_final(
    buf: &[u8],
    head_request: bool,
    max_headers: usize,
) -> Result<Option<ResponseMeta>, ResponseError> {
    let mut at = 0;
    for _ in 0..=MAX_INTERIM {
        let Some(mut meta) = parse_meta(&buf[at..], head_request, max_headers, None)? else {
            return Ok(None);
        };
        at += meta.len;
        if meta.status.is_informational() && meta.status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        meta.len = at;
        return Ok(Some(meta));
    }
    Err(ResponseError("too many interim responses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(raw: &str, head: bool) -> Result<ResponseMeta, ResponseError> {
        parse_meta(raw.as_bytes(), head, 128, None).map(|m| m.expect("complete"))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use ResponseBody::*;
        let cases: &[(&str, bool, ResponseBody, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                false,
                Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Empty,
                true,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Empty, true),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                Empty,
                true,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", false, Empty, true),
            (
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                false,
                Empty,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                Chunked,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
                Length(0),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
                false,
                Length(1),
                true,
            ),
            (
                "HTTP/1.1 503\nContent-Length: 0\n\n",
                false,
                Length(0),
                true,
            ),
        ];
        for (raw, head, body, keep_alive) in cases {
            let m = meta(raw, *head).unwrap();
            assert_eq!((m.body, m.keep_alive), (*body, *keep_alive), "{raw:?}");
        }
        let m = meta(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(m.declared_length, Some(9));
        let m = meta(
            "HTTP/1.1 200 OK\r\nKeep-Alive: max=100, Timeout=5\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(m.keep_alive_timeout, Some(5));
    }

    #[test]
    fn answers_that_read_two_ways_are_refused() {
        for (raw, why) in [
            (
                "SSH-2.0-OpenSSH_9.6\r\n\r\n",
                "not an HTTP/1.x response head",
            ),
            ("HTTP/2 200\r\n\r\n", "not an HTTP/1.x response head"),
            ("HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x response head"),
            (
                "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                "not an HTTP/1.x response head",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting Content-Length values",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "unsupported transfer coding in the response",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "unsupported transfer coding in the response",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "unsupported transfer coding in the response",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
                "unsupported transfer coding in the response",
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding in an HTTP/1.0 response",
            ),
        ] {
            assert_eq!(meta(raw, false), Err(ResponseError(why)), "{raw:?}");
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=128 {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_meta(&many, false, 128, None),
            Err(ResponseError("too many header fields"))
        );
        assert_eq!(
            parse_meta(b"HTTP/1.1 200 OK\r\nContent-Le", false, 128, None),
            Ok(None)
        );
    }

    #[test]
    fn interim_answers_are_skipped_up_to_a_limit() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let m = parse_final(raw.as_bytes(), false, 128).unwrap().unwrap();
        assert_eq!(m.status, StatusCode::CREATED);
        assert_eq!(&raw[m.len..], "ok");
        let endless = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1);
        assert_eq!(
            parse_final(endless.as_bytes(), false, 128),
            Err(ResponseError("too many interim responses"))
        );
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok"[..]);
        let h = parse_head(&mut buf, false, 128, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.fields.get(b"x-a"), Some(&b"1"[..]));
        assert_eq!(&buf[..], b"ok");
    }
}
