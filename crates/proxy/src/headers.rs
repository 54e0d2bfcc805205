//! Header rewriting between the client and the backend: hop-by-hop
//! stripping, `X-Forwarded-*`, `X-Request-Id` and W3C `traceparent`.

use std::net::IpAddr;
use std::ops::Range;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1):
/// never forwarded.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fields the client named in Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            // Never let a client strip what the proxy itself sets.
            if name != X_FORWARDED_FOR && name != X_REQUEST_ID && name != header::HOST {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Rewrites a client's request headers for the backend. `host` is the host
/// the client asked for (Host header or URI authority); `upgrade` is the
/// protocol of a WebSocket-style upgrade to pass through. Runs on every
/// request, so it formats into stack buffers: one allocation per header it
/// adds.
pub fn prepare_request(
    headers: &mut HeaderMap,
    host: Option<&HeaderValue>,
    peer: IpAddr,
    upgrade: Option<HeaderValue>,
    backend_host: &str,
) {
    strip_hop_by_hop(headers);
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    match host {
        Some(h) => {
            if !headers.contains_key(header::HOST) {
                // HTTP/2 clients send :authority, HTTP/1.1 backends need Host.
                headers.insert(header::HOST, h.clone());
            }
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(backend_host) {
                headers.insert(header::HOST, v);
            }
        }
    }

    // X-Forwarded-For: append the peer to what earlier proxies wrote.
    let mut buf = [0u8; 64];
    let ip = match canonical_ip(peer) {
        IpAddr::V4(v4) => format_ipv4(&mut buf, v4.octets()),
        v6 => format_into(&mut buf, format_args!("{v6}")),
    };
    let xff = match headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(prev) if !prev.trim_ascii().is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip);
            HeaderValue::from_bytes(&v)
        }
        _ => HeaderValue::from_bytes(ip),
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    // This proxy terminates plain HTTP; a client cannot claim otherwise.
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));

    let valid_trace = headers
        .get(&TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()));
    let trace_id = match valid_trace {
        Some(id) => id,
        None => {
            // Start a trace (not sampled) so the backend's logs and ours
            // share an id; a malformed one is replaced, as W3C asks.
            let (id, tp) = new_traceparent();
            if let Ok(v) = HeaderValue::from_bytes(&tp) {
                headers.insert(TRACEPARENT.clone(), v);
            }
            id
        }
    };
    if !headers.contains_key(&X_REQUEST_ID) {
        let mut rid = [0u8; 32];
        hex_into(&mut rid, trace_id);
        if let Ok(v) = HeaderValue::from_bytes(&rid) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
}

/// An HTTP/1 request head as received: the whole head and where each
/// field's name and value lie in it.
/// Where one field's name and value lie in its head.
pub type Field = (Range<usize>, Range<usize>);

#[derive(Clone, Copy)]
pub struct RawFields<'a> {
    pub head: &'a Bytes,
    pub fields: &'a [Field],
}

impl<'a> RawFields<'a> {
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let head: &'a [u8] = self.head;
        self.fields
            .iter()
            .map(move |(n, v)| (&head[n.clone()], &head[v.clone()]))
    }

    /// The values of the fields called `name` (lowercase).
    pub fn values(&self, name: &'static [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first field called `name` (lowercase), sharing the head's bytes.
    pub fn value(&self, name: &'static [u8]) -> Option<Bytes> {
        let head = self.head;
        self.fields
            .iter()
            .find(|(n, _)| head[n.clone()].eq_ignore_ascii_case(name))
            .map(|(_, v)| head.slice(v.clone()))
    }

    /// Does a comma-separated field `name` carry `token`?
    pub fn has_token(&self, name: &'static [u8], token: &[u8]) -> bool {
        self.values(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    }

    /// [`upgrade_request`] on a raw head: the protocol a WebSocket-style
    /// upgrade asks for.
    pub fn upgrade(&self) -> Option<&'a [u8]> {
        let upgrade = self.values(b"upgrade").next()?;
        self.has_token(b"connection", b"upgrade").then_some(upgrade)
    }
}

/// A head holding `fields` as `name: value` lines, and where each lies in
/// it (for tests of what reads [`RawFields`]).
#[cfg(test)]
pub(crate) fn test_head(fields: &[(&str, &str)]) -> (Bytes, Vec<Field>) {
    let (mut head, mut ranges) = (Vec::new(), Vec::new());
    for (n, v) in fields {
        let name = head.len()..head.len() + n.len();
        head.extend_from_slice(n.as_bytes());
        head.extend_from_slice(b": ");
        let value = head.len()..head.len() + v.len();
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
        ranges.push((name, value));
    }
    (Bytes::from(head), ranges)
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), lowercase.
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
];

/// What [`prepare_request`] does to a header map, done while copying an
/// HTTP/1 head as received: the request line (`target` in origin form) and
/// the fields for the backend, each line ending in CRLF, without the blank
/// line that ends the head. Fields keep the client's spelling and order;
/// the ones the proxy sets come last.
#[allow(clippy::too_many_arguments)] // the same inputs as prepare_request, plus the line
pub fn encode_raw_request(
    out: &mut Vec<u8>,
    method: &[u8],
    target: &[u8],
    raw: RawFields<'_>,
    host: Option<&HeaderValue>,
    peer: IpAddr,
    upgrade: Option<&[u8]>,
    backend_host: &str,
) {
    out.clear();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // Fields the client named in Connection are hop-by-hop too; rare, so
    // only then is anything collected.
    let named: Vec<&[u8]> = if raw.values(b"connection").next().is_some() {
        raw.values(b"connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                // Never let a client strip what the proxy itself sets.
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"x-forwarded-for")
                    && !t.eq_ignore_ascii_case(b"x-request-id")
                    && !t.eq_ignore_ascii_case(b"host")
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut prior_xff: Option<&[u8]> = None;
    let mut has_host = false;
    let mut has_request_id = false;
    let mut trace_id = None;
    for (name, value) in raw.iter() {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if HOP_BY_HOP.iter().any(|h| is(h)) || named.iter().any(|n| is(n)) {
            continue;
        }
        if is(b"x-forwarded-proto") || is(b"x-forwarded-host") {
            continue;
        }
        if is(b"x-forwarded-for") {
            prior_xff.get_or_insert(value);
            continue;
        }
        if is(b"traceparent") {
            // The first valid one passes unchanged; others are dropped.
            match parse_traceparent(value) {
                Some(id) if trace_id.is_none() => trace_id = Some(id),
                _ => continue,
            }
        }
        has_host |= is(b"host");
        has_request_id |= is(b"x-request-id");
        line(out, name, value);
    }
    if let Some(proto) = upgrade {
        line(out, b"connection", b"upgrade");
        line(out, b"upgrade", proto);
    }
    match host {
        Some(h) => {
            if !has_host {
                // Absolute-form targets name the host; backends want Host.
                line(out, b"host", h.as_bytes());
            }
            line(out, b"x-forwarded-host", h.as_bytes());
        }
        None if !has_host => line(out, b"host", backend_host.as_bytes()),
        None => {}
    }
    let mut buf = [0u8; 64];
    let ip = match canonical_ip(peer) {
        IpAddr::V4(v4) => format_ipv4(&mut buf, v4.octets()),
        v6 => format_into(&mut buf, format_args!("{v6}")),
    };
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = prior_xff.map(<[u8]>::trim_ascii).filter(|p| !p.is_empty()) {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip);
    out.extend_from_slice(b"\r\n");
    line(out, b"x-forwarded-proto", b"http");
    let trace_id = match trace_id {
        Some(id) => id,
        None => {
            let (id, tp) = new_traceparent();
            line(out, b"traceparent", &tp);
            id
        }
    };
    if !has_request_id {
        let mut rid = [0u8; 32];
        hex_into(&mut rid, trace_id);
        line(out, b"x-request-id", &rid);
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A fresh (not sampled) W3C trace context: its trace id and the header.
fn new_traceparent() -> (u128, [u8; 55]) {
    let id: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut tp[3..35], id);
    hex_into(&mut tp[36..52], u128::from(span));
    (id, tp)
}

/// Lowercase hex of the low `out.len() / 2` bytes of `v`, zero-padded.
fn hex_into(out: &mut [u8], mut v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Dotted decimal, without the formatting machinery (every request
/// formats its client's address).
fn format_ipv4(buf: &mut [u8; 64], octets: [u8; 4]) -> &[u8] {
    let mut n = 0;
    for (i, o) in octets.into_iter().enumerate() {
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

/// Formats into a stack buffer (truncating what does not fit).
fn format_into<'a>(buf: &'a mut [u8; 64], args: std::fmt::Arguments<'_>) -> &'a [u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, args);
    let n = cursor.position() as usize;
    &buf[..n]
}

/// Strips hop-by-hop headers from a backend's response. For a 101 answer
/// the upgrade headers stay: the client needs them.
pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
    if switching_protocols {
        let upgrade = headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(headers);
        if let Some(u) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u);
        }
    } else {
        strip_hop_by_hop(headers);
    }
}

/// Does the client ask to switch protocols (WebSocket)? Returns the
/// protocol it asks for.
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// The trace id of a valid version-00 `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
pub fn parse_traceparent(v: &[u8]) -> Option<u128> {
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
    // Version 00 has exactly this length; later versions may append fields.
    if version == b"00" && v.len() != 55 {
        return None;
    }
    let trace = u128::from_str_radix(std::str::from_utf8(trace).ok()?, 16).ok()?;
    let parent = u64::from_str_radix(std::str::from_utf8(parent).ok()?, 16).ok()?;
    (trace != 0 && parent != 0).then_some(trace)
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> IpAddr {
        "10.1.2.3".parse().unwrap()
    }

    /// The fields of `lines` (request line dropped), lowercased and sorted.
    fn fields_of(lines: &[u8]) -> Vec<(String, String)> {
        let text = String::from_utf8(lines.to_vec()).unwrap();
        let mut out: Vec<(String, String)> = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_raw_http1_path_forwards_what_the_header_map_path_does() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // (fields, the host asked for, the upgrade asked for)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: &[Case<'_>] = &[
            (
                &[
                    ("Host", "shop.test"),
                    ("Connection", "keep-alive, X-Secret"),
                    ("X-Secret", "1"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("Proxy-Authorization", "Basic x"),
                    ("Transfer-Encoding", "chunked"),
                    ("X-Kept", "yes"),
                    ("X-Forwarded-For", "192.0.2.7"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "evil.test"),
                    ("traceparent", tp),
                    ("X-Request-Id", "abc"),
                ],
                Some("shop.test"),
                None,
            ),
            // No Host at all (HTTP/1.0): the backend's address.
            (&[("traceparent", tp), ("x-request-id", "r")], None, None),
            // Absolute form: the target's host, given separately.
            (
                &[("traceparent", tp), ("x-request-id", "r")],
                Some("abs.test"),
                None,
            ),
            // A client may not strip what the proxy sets.
            (
                &[
                    ("host", "a"),
                    ("connection", "Upgrade, host, x-forwarded-for"),
                    ("upgrade", "websocket"),
                    ("traceparent", tp),
                    ("x-request-id", "r"),
                ],
                Some("a"),
                Some("websocket"),
            ),
        ];
        for (fields, host, upgrade) in cases {
            let host = host.map(HeaderValue::from_static);
            let mut map = HeaderMap::new();
            for (n, v) in *fields {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let (head, ranges) = test_head(fields);
            let raw = RawFields {
                head: &head,
                fields: &ranges,
            };
            let up = upgrade.map(HeaderValue::from_static);
            prepare_request(&mut map, host.as_ref(), peer(), up.clone(), "10.0.0.1:80");
            let mut from_map = Vec::new();
            crate::upstream::encode_lines(
                &mut from_map,
                &http::Method::GET,
                &"/x".parse().unwrap(),
                &map,
            );
            let mut from_raw = Vec::new();
            encode_raw_request(
                &mut from_raw,
                b"GET",
                b"/x",
                raw,
                host.as_ref(),
                peer(),
                upgrade.map(str::as_bytes),
                "10.0.0.1:80",
            );
            assert!(from_raw.starts_with(b"GET /x HTTP/1.1\r\n"));
            assert_eq!(fields_of(&from_raw), fields_of(&from_map), "{fields:?}");
        }
    }

    #[test]
    fn the_raw_http1_path_starts_a_trace_when_the_client_sent_none_valid() {
        let head = Bytes::from_static(b"traceparent: garbage\r\n");
        let raw = RawFields {
            head: &head,
            fields: &[(0..11, 13..20)],
        };
        let mut out = Vec::new();
        encode_raw_request(&mut out, b"GET", b"/", raw, None, peer(), None, "b:1");
        let fields = fields_of(&out);
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(fields.iter().filter(|(k, _)| k == "traceparent").count(), 1);
        let id = parse_traceparent(get("traceparent").unwrap().as_bytes()).expect("valid");
        assert_eq!(get("x-request-id").unwrap(), format!("{id:032x}"));
        assert_eq!(get("host").unwrap(), "b:1");
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        prepare_request(
            &mut h,
            Some(&HeaderValue::from_static("shop.test")),
            peer(),
            None,
            "10.0.0.1:80",
        );
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["host"], "shop.test");
        assert_eq!(h["x-forwarded-host"], "shop.test");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn forwarded_for_appends_and_ids_are_generated_or_kept() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.7"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(tp));
        prepare_request(&mut h, None, peer(), None, "10.0.0.1:80");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7, 10.1.2.3");
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(h["traceparent"], tp, "a valid traceparent passes unchanged");
        assert_eq!(h["host"], "10.0.0.1:80");

        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("garbage"));
        prepare_request(
            &mut h,
            Some(&HeaderValue::from_static("a")),
            peer(),
            None,
            "b:1",
        );
        let tp = h["traceparent"].to_str().unwrap().to_string();
        let id = parse_traceparent(tp.as_bytes()).expect("a fresh valid traceparent");
        assert_eq!(h["x-request-id"].to_str().unwrap(), format!("{id:032x}"));
    }

    #[test]
    fn ipv4_addresses_format_like_display() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "192.168.100.255",
            "9.99.100.250",
        ] {
            let v4: std::net::Ipv4Addr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(format_ipv4(&mut buf, v4.octets()), ip.as_bytes());
        }
    }

    #[test]
    fn traceparent_validation() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse_traceparent(ok).is_some());
        let zero = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert!(parse_traceparent(zero).is_none());
        let upper = b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert!(parse_traceparent(upper).is_none());
        assert!(
            parse_traceparent(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
    }

    #[test]
    fn upgrades_are_recognised_and_kept_on_101() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let proto = upgrade_request(&h).unwrap();
        prepare_request(
            &mut h,
            Some(&HeaderValue::from_static("a")),
            peer(),
            Some(proto),
            "b:1",
        );
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        let mut r = h.clone();
        prepare_response(&mut r, true);
        assert_eq!(r["upgrade"], "websocket");
        prepare_response(&mut h, false);
        assert!(!h.contains_key("upgrade"));
    }
}
