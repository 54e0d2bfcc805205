//! The one header rewrite, for requests from any client protocol, and the
//! heads the proxy writes on HTTP/1 connections.
//!
//! Upstream, the proxy always writes its own framing ([`UpstreamFraming`]:
//! `Content-Length: n`, `Transfer-Encoding: chunked` or nothing), decided
//! from the request head alone; no field the client sent can remove or
//! replace it. What a client sends is copied in order, except:
//! - hop-by-hop fields and the framing ([`crate::fields::CONNECTION_FIELDS`]),
//!   `Expect` (the proxy answers it) and the fields the client's
//!   `Connection` names — but `Connection` can never remove the framing,
//!   `Host` or what the proxy sets itself;
//! - header names with `_`, unless [`Underscores::Allow`];
//! - from a peer that is not a trusted proxy: `X-Forwarded-For` (replaced
//!   by the peer's address instead of appended to), `X-Forwarded-Proto`,
//!   `X-Forwarded-Host`, `X-Real-IP` and `Forwarded`. A trusted proxy's are
//!   kept, and the peer is appended to its `X-Forwarded-For`;
//! - `traceparent`: the caller's are replaced by the one the proxy decided
//!   ([`TraceContext`]: the caller's trace, or a new one, with the proxy's
//!   span or the caller's as parent); `tracestate` passes as sent;
//!   `X-Request-Id`: the first passes, or the trace id is used.

use std::net::IpAddr;

use http::{StatusCode, Version};

use crate::fields::{self, Fields, list};
use crate::request::{Body, RequestHead, Underscores};

/// What the proxy knows about the hop a request came over.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    pub peer: IpAddr,
    /// The peer is a trusted proxy: its forwarding fields are kept.
    pub trusted_peer: bool,
    /// `Host` for an HTTP/1.0 request that has none: the backend's address.
    pub backend_host: &'a str,
    /// The request arrived over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
    pub underscores: Underscores,
}

/// How the proxy frames the body it sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFraming {
    None,
    Length(u64),
    Chunked,
}

impl UpstreamFraming {
    /// The proxy's decision for `head`: the length when it is known, chunked
    /// otherwise, and `Content-Length: 0` for an empty body of a method
    /// whose body means something (some servers want a length for those).
    pub fn of(head: &RequestHead) -> Self {
        match head.body {
            Body::Length(n) => Self::Length(n),
            Body::Chunked | Body::Streamed => Self::Chunked,
            Body::None
                if matches!(
                    head.method,
                    http::Method::POST | http::Method::PUT | http::Method::PATCH
                ) =>
            {
                Self::Length(0)
            }
            Body::None => Self::None,
        }
    }
}

/// Writes the request head for the backend: the request line (origin form,
/// HTTP/1.1), `Host`, the client's fields as rewritten, the forwarding
/// fields, `traceparent` from `trace`, `framing`, and the blank line.
pub fn write_request_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    fwd: &Forwarding<'_>,
    framing: UpstreamFraming,
    trace: &TraceContext,
) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = head.host.as_deref();
    field(out, b"host", host.unwrap_or(fwd.backend_host.as_bytes()));

    let fields = &head.fields;
    // Tokens of Connection that name other fields (rare): only then is
    // each field checked against them.
    let names_fields = fields.values(b"connection").flat_map(list).any(|t| {
        !(t.eq_ignore_ascii_case(b"keep-alive")
            || t.eq_ignore_ascii_case(b"close")
            || t.eq_ignore_ascii_case(b"upgrade"))
    });
    let trusted = fwd.trusted_peer;
    let mut has_proto = false;
    let mut has_forwarded_host = false;
    let mut has_request_id = false;
    for (name, value) in fields.iter() {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if fields::is_connection_field(name) || is(b"host") || is(b"expect") {
            continue;
        }
        if names_fields
            && !fields::is_protected(name)
            && fields
                .values(b"connection")
                .flat_map(list)
                .any(|t| t.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if fwd.underscores != Underscores::Allow && name.contains(&b'_') {
            continue;
        }
        match name.len() {
            15 if is(b"x-forwarded-for") => continue,
            9 if (is(b"forwarded") || is(b"x-real-ip")) && !trusted => continue,
            17 if is(b"x-forwarded-proto") => {
                if !trusted || has_proto {
                    continue;
                }
                has_proto = true;
            }
            16 if is(b"x-forwarded-host") => {
                if !trusted || has_forwarded_host {
                    continue;
                }
                has_forwarded_host = true;
            }
            11 if is(b"traceparent") => continue,
            12 if is(b"x-request-id") => {
                if has_request_id {
                    continue;
                }
                has_request_id = true;
            }
            _ => {}
        }
        field(out, name, value);
    }
    if let Some(proto) = &head.upgrade {
        field(out, b"connection", b"upgrade");
        field(out, b"upgrade", proto);
    }

    // X-Forwarded-For: a trusted proxy's list with the peer appended, or
    // the peer alone.
    out.extend_from_slice(b"x-forwarded-for: ");
    if trusted {
        for v in fields.values(b"x-forwarded-for").flat_map(list) {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    let mut buf = [0u8; 64];
    out.extend_from_slice(format_ip(&mut buf, fwd.peer));
    out.extend_from_slice(b"\r\n");
    if !has_proto {
        let proto: &[u8] = if fwd.https { b"https" } else { b"http" };
        field(out, b"x-forwarded-proto", proto);
    }
    if !has_forwarded_host && let Some(h) = host {
        field(out, b"x-forwarded-host", h);
    }
    field(out, b"traceparent", &trace.traceparent());
    if !has_request_id {
        let mut rid = [0u8; 32];
        hex_into(&mut rid, trace.trace_id);
        field(out, b"x-request-id", &rid);
    }
    match framing {
        UpstreamFraming::None => {}
        UpstreamFraming::Length(n) => {
            let mut digits = [0u8; 20];
            field(out, b"content-length", decimal(&mut digits, n));
        }
        UpstreamFraming::Chunked => field(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

// === heads for HTTP/1 clients ===

/// How the proxy frames a body it sends an HTTP/1 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    /// HTTP/1.1 clients, when the length is not known.
    Chunked,
    /// HTTP/1.0 clients, when the length is not known: the close ends it.
    Close,
}

impl ClientFraming {
    /// The framing for an answer with `status` to a request (HEAD or not)
    /// from a client speaking `version`, when the body's length is
    /// `length` (if known).
    pub fn of(
        status: StatusCode,
        head_request: bool,
        version: Version,
        length: Option<u64>,
    ) -> Self {
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Self::None
        } else if let Some(n) = length {
            Self::Length(n)
        } else if version == Version::HTTP_10 {
            Self::Close
        } else {
            Self::Chunked
        }
    }
}

/// The fields of a backend's answer that go on to the client: not the
/// hop-by-hop ones, nor those its `Connection` names, nor the framing (the
/// proxy writes its own).
pub fn response_fields(fields: &Fields) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    let names_fields = fields
        .values(b"connection")
        .flat_map(list)
        .any(|t| !(t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")));
    let named = move |name: &[u8]| {
        names_fields
            && fields
                .values(b"connection")
                .flat_map(list)
                .any(|t| t.eq_ignore_ascii_case(name))
    };
    fields
        .iter()
        .filter(move |(name, _)| !fields::is_connection_field(name) && !named(name))
}

/// Writes an answer's head for an HTTP/1 client. `declared_length`: the
/// length a HEAD or 304 answer announces for the representation.
pub fn write_response_head<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    declared_length: Option<u64>,
    framing: ClientFraming,
    keep_alive: bool,
    client: Version,
) {
    status_line(out, status);
    for (name, value) in fields {
        field(out, name, value);
    }
    let mut digits = [0u8; 20];
    match framing {
        ClientFraming::Length(n) => field(out, b"content-length", decimal(&mut digits, n)),
        ClientFraming::Chunked => field(out, b"transfer-encoding", b"chunked"),
        ClientFraming::None if status != StatusCode::NO_CONTENT && !status.is_informational() => {
            if let Some(n) = declared_length {
                field(out, b"content-length", decimal(&mut digits, n));
            }
        }
        ClientFraming::None | ClientFraming::Close => {}
    }
    if !keep_alive || framing == ClientFraming::Close {
        field(out, b"connection", b"close");
    } else if client == Version::HTTP_10 {
        field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a 101 answer's head: the backend's fields and the upgrade it
/// agreed to.
pub fn write_switch_head<'a>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    upgrade: Option<&[u8]>,
) {
    status_line(out, StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in fields {
        field(out, name, value);
    }
    field(out, b"connection", b"upgrade");
    if let Some(u) = upgrade {
        field(out, b"upgrade", u);
    }
    out.extend_from_slice(b"\r\n");
}

pub fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
pub fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

// === trace context ===

/// The W3C trace context a request goes upstream with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The span the backend's span is a child of: the proxy's own when it
    /// traces, else the caller's.
    pub parent_id: u64,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// The `traceparent` value: `00-<trace id>-<parent id>-<flags>`.
    pub fn traceparent(&self) -> [u8; 55] {
        let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut tp[3..35], self.trace_id);
        hex_into(&mut tp[36..52], u128::from(self.parent_id));
        hex_into(&mut tp[53..55], u128::from(self.flags));
        tp
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// What a caller's valid `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// The first valid `traceparent` among `fields` (invalid ones are
    /// skipped, as if absent).
    pub fn find(fields: &Fields) -> Option<Self> {
        fields.values(b"traceparent").find_map(Self::parse)
    }

    /// A valid `traceparent` (`<version>-<32 hex>-<16 hex>-<2 hex>`,
    /// lowercase, ids not all zero, version 00 exactly this long, later
    /// versions possibly longer, never version ff).
    pub fn parse(v: &[u8]) -> Option<Self> {
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let hex = |s: &[u8]| {
            s.iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        };
        let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
        if !(hex(version) && hex(trace) && hex(parent) && hex(flags)) || version == b"ff" {
            return None;
        }
        // Version 00 has exactly this length; later versions may append
        // fields, after a dash.
        if (version == b"00" && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let text = |s| std::str::from_utf8(s).ok();
        let trace_id = u128::from_str_radix(text(trace)?, 16).ok()?;
        let parent_id = u64::from_str_radix(text(parent)?, 16).ok()?;
        let flags = u8::from_str_radix(text(flags)?, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Lowercase hex of the low `out.len() / 2` bytes of `v`, zero-padded.
fn hex_into(out: &mut [u8], mut v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// An address as text, IPv4 without the formatting machinery (every
/// request formats its client's), a v4-mapped IPv6 address as IPv4.
pub fn format_ip(buf: &mut [u8; 64], ip: IpAddr) -> &[u8] {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + (o / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            &buf[..n]
        }
        v6 => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"));
            let n = cursor.position() as usize;
            &buf[..n]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{ParseOptions, parse_request};
    use bytes::BytesMut;

    fn head(raw: &str) -> RequestHead {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_request(&mut buf, &ParseOptions::default(), &mut Vec::new())
            .unwrap()
            .unwrap()
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The caller's trace context passed on as it came, or a new one (the
    /// proxy when it does not trace).
    fn passed_on(h: &RequestHead) -> TraceContext {
        match TraceParent::find(&h.fields) {
            Some(t) => TraceContext {
                trace_id: t.trace_id,
                parent_id: t.parent_id,
                flags: t.flags,
            },
            None => TraceContext {
                trace_id: 0xabc,
                parent_id: 0xdef,
                flags: 0,
            },
        }
    }

    /// The head written for `raw` from `peer`, as (request line, fields
    /// lowercased in order).
    fn upstream(raw: &str, peer: &str, trusted: bool) -> (String, Vec<(String, String)>) {
        upstream_over(raw, peer, trusted, false)
    }

    fn upstream_over(
        raw: &str,
        peer: &str,
        trusted: bool,
        https: bool,
    ) -> (String, Vec<(String, String)>) {
        let h = head(raw);
        upstream_with(&h, peer, trusted, https, &passed_on(&h))
    }

    fn upstream_with(
        h: &RequestHead,
        peer: &str,
        trusted: bool,
        https: bool,
        trace: &TraceContext,
    ) -> (String, Vec<(String, String)>) {
        let fwd = Forwarding {
            peer: peer.parse().unwrap(),
            trusted_peer: trusted,
            backend_host: "10.0.0.1:80",
            https,
            underscores: Underscores::Drop,
        };
        let mut out = Vec::new();
        write_request_head(&mut out, h, &fwd, UpstreamFraming::of(h), trace);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let mut lines = text.trim_end().split("\r\n");
        let line = lines.next().unwrap().to_string();
        let fields = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap_or((l, ""));
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        (line, fields)
    }

    fn get<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn the_connection_field_cannot_remove_the_framing_the_host_or_the_proxys_fields() {
        let (line, f) = upstream(
            "POST /a HTTP/1.1\r\nHost: shop.test\r\nConnection: content-length, transfer-encoding, host, x-forwarded-for, x-request-id, X-Secret, keep-alive\r\nX-Secret: 1\r\nX-Kept: yes\r\nContent-Length: 5\r\n\r\n",
            "10.1.2.3",
            false,
        );
        assert_eq!(line, "POST /a HTTP/1.1");
        assert_eq!(get(&f, "content-length"), ["5"], "the proxy's own framing");
        assert_eq!(get(&f, "host"), ["shop.test"]);
        assert_eq!(get(&f, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(get(&f, "x-request-id").len(), 1);
        assert_eq!(get(&f, "x-kept"), ["yes"]);
        assert!(
            get(&f, "x-secret").is_empty(),
            "named in Connection: hop-by-hop"
        );
        assert!(get(&f, "connection").is_empty());
        assert!(get(&f, "transfer-encoding").is_empty());
    }

    #[test]
    fn chunked_requests_go_on_chunked_and_hop_by_hop_fields_stop_here() {
        let (_, f) = upstream(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nProxy-Authorization: Basic x\r\nUpgrade: h2c\r\nExpect: 100-continue\r\n\r\n",
            "10.1.2.3",
            false,
        );
        assert_eq!(get(&f, "transfer-encoding"), ["chunked"]);
        for gone in [
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "upgrade",
            "expect",
            "content-length",
        ] {
            assert!(get(&f, gone).is_empty(), "{gone}: {f:?}");
        }
        let (_, f) = upstream("POST / HTTP/1.1\r\nHost: a\r\n\r\n", "10.1.2.3", false);
        assert_eq!(get(&f, "content-length"), ["0"]);
        let (_, f) = upstream("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "10.1.2.3", false);
        assert!(get(&f, "content-length").is_empty());
    }

    #[test]
    fn forwarding_fields_depend_on_whether_the_peer_is_trusted() {
        let raw = "GET / HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n";
        let (_, f) = upstream(raw, "10.1.2.3", false);
        assert_eq!(
            get(&f, "x-forwarded-for"),
            ["10.1.2.3"],
            "replaced, not appended"
        );
        assert_eq!(get(&f, "x-forwarded-proto"), ["http"]);
        let (_, tls) = upstream_over(raw, "10.1.2.3", false, true);
        assert_eq!(
            get(&tls, "x-forwarded-proto"),
            ["https"],
            "arrived over TLS"
        );
        assert_eq!(get(&f, "x-forwarded-host"), ["shop.test"]);
        assert!(get(&f, "x-real-ip").is_empty());
        assert!(get(&f, "forwarded").is_empty());
        let (_, f) = upstream(raw, "::ffff:10.1.2.3", true);
        assert_eq!(
            get(&f, "x-forwarded-for"),
            ["6.6.6.6, 7.7.7.7, 8.8.8.8, 10.1.2.3"]
        );
        assert_eq!(get(&f, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&f, "x-forwarded-host"), ["evil.test"]);
        assert_eq!(get(&f, "x-real-ip"), ["6.6.6.6"]);
        assert_eq!(get(&f, "forwarded"), ["for=6.6.6.6"]);
    }

    #[test]
    fn underscores_traces_and_request_ids() {
        let (_, f) = upstream(
            &format!(
                "GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nmy_field: 1\r\ntraceparent: garbage\r\ntraceparent: {TP}\r\nX-Request-Id: r1\r\nX-Request-Id: r2\r\n\r\n"
            ),
            "10.1.2.3",
            false,
        );
        assert!(get(&f, "x_forwarded_for").is_empty() && get(&f, "my_field").is_empty());
        assert_eq!(get(&f, "traceparent"), [TP]);
        assert_eq!(get(&f, "x-request-id"), ["r1"]);
        let (_, f) = upstream("GET / HTTP/1.0\r\n\r\n", "10.1.2.3", false);
        let tp = get(&f, "traceparent")[0];
        assert_eq!(trace_id_of(tp.as_bytes()), Some(0xabc));
        assert_eq!(
            get(&f, "x-request-id"),
            [format!("{:032x}", 0xabc).as_str()]
        );
        assert_eq!(get(&f, "host"), ["10.0.0.1:80"], "HTTP/1.0 without Host");
        assert!(get(&f, "x-forwarded-host").is_empty());
    }

    #[test]
    fn the_proxys_span_becomes_the_backends_parent_and_tracestate_passes() {
        let h = head(&format!(
            "GET / HTTP/1.1\r\nHost: a\r\ntraceparent: {TP}\r\ntracestate: vendor=x,other=y\r\ntraceparent: {TP}\r\n\r\n"
        ));
        let caller = TraceParent::find(&h.fields).unwrap();
        assert!(caller.sampled() && caller.parent_id == 0x00f067aa0ba902b7);
        let mine = TraceContext {
            trace_id: caller.trace_id,
            parent_id: 0x1122334455667788,
            flags: 1,
        };
        let (_, f) = upstream_with(&h, "10.1.2.3", false, false, &mine);
        assert_eq!(
            get(&f, "traceparent"),
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-1122334455667788-01"],
            "one traceparent, the proxy's span as parent"
        );
        assert_eq!(get(&f, "tracestate"), ["vendor=x,other=y"]);
        assert_eq!(
            TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later")
                .map(|t| t.sampled()),
            Some(false),
            "a later version with more fields"
        );
        assert!(
            TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00x")
                .is_none()
        );
    }

    #[test]
    fn upgrades_and_absolute_targets() {
        let (line, f) = upstream(
            "GET http://abs.test/ws?x HTTP/1.1\r\nHost: other.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "10.1.2.3",
            false,
        );
        assert_eq!(line, "GET /ws?x HTTP/1.1");
        assert_eq!(get(&f, "host"), ["abs.test"]);
        assert_eq!(get(&f, "connection"), ["upgrade"]);
        assert_eq!(get(&f, "upgrade"), ["websocket"]);
    }

    fn trace_id_of(v: &[u8]) -> Option<u128> {
        TraceParent::parse(v).map(|t| t.trace_id)
    }

    #[test]
    fn traceparent_validation() {
        assert!(trace_id_of(TP.as_bytes()).is_some());
        let zero = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert!(trace_id_of(zero).is_none());
        let upper = b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert!(trace_id_of(upper).is_none());
        assert!(trace_id_of(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn answers_to_http1_clients() {
        let f = Fields::from_pairs([
            (&b"Content-Type"[..], &b"text/plain"[..]),
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"3"),
            (b"Set-Cookie", b"a=1"),
        ]);
        let kept: Vec<_> = response_fields(&f).map(|(n, _)| n.to_vec()).collect();
        assert_eq!(kept, [b"Content-Type".to_vec(), b"Set-Cookie".to_vec()]);

        let v11 = Version::HTTP_11;
        assert_eq!(
            ClientFraming::of(StatusCode::OK, false, v11, Some(3)),
            ClientFraming::Length(3)
        );
        assert_eq!(
            ClientFraming::of(StatusCode::OK, false, v11, None),
            ClientFraming::Chunked
        );
        assert_eq!(
            ClientFraming::of(StatusCode::OK, false, Version::HTTP_10, None),
            ClientFraming::Close
        );
        assert_eq!(
            ClientFraming::of(StatusCode::OK, true, v11, None),
            ClientFraming::None
        );
        assert_eq!(
            ClientFraming::of(StatusCode::NOT_MODIFIED, false, v11, Some(3)),
            ClientFraming::None
        );

        let mut out = Vec::new();
        write_response_head(
            &mut out,
            StatusCode::OK,
            response_fields(&f),
            Some(9),
            ClientFraming::None,
            true,
            Version::HTTP_10,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\ncontent-length: 9\r\nconnection: keep-alive\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            StatusCode::NO_CONTENT,
            std::iter::empty(),
            Some(9),
            ClientFraming::None,
            false,
            v11,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn numbers_and_addresses_format_like_display() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(decimal(&mut [0; 20], n), n.to_string().as_bytes());
        }
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "192.168.100.255",
            "9.99.100.250",
            "2001:db8::1",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(format_ip(&mut [0; 64], addr), ip.as_bytes());
        }
    }
}
