//! Request targets and hosts: what a route is matched on must be what the
//! backend receives.
//!
//! The path is normalised before routing, and the normalised path is the
//! one sent upstream:
//! - percent-encoded unreserved characters (`%41` → `A`, `%2E` → `.`, RFC
//!   3986 §6.2.2.2) are decoded, so an encoded dot cannot hide a dot
//!   segment; other escapes stay as they are (hex digits uppercased);
//! - dot segments are removed (RFC 3986 §5.2.4): `/api/../secret` is
//!   `/secret`, and `..` above the root stays at the root;
//! - runs of `/` are merged into one (`//a///b` → `/a/b`), as nginx's
//!   `merge_slashes` does;
//! - an encoded slash or backslash (`%2F`, `%5C`) and a raw backslash are
//!   refused by default (400): a backend that decodes them would see a path
//!   the route was not matched on. [`EncodedSlashes::Keep`] passes `%2F` and
//!   `%5C` through untouched instead (never as separators).
//!
//! Targets are ASCII: control characters, spaces, `#` and non-ASCII bytes
//! are refused. The query is passed on as received.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlashes {
    /// 400 (the default).
    #[default]
    Reject,
    /// Pass them on, encoded; they never separate segments.
    Keep,
}

/// Why a target or host is refused.
pub type Invalid = &'static str;

/// Splits an origin-form target into its normalised path and its query
/// (with the `?`). The path borrows from `target` when nothing changes.
pub fn normalize(
    target: &[u8],
    slashes: EncodedSlashes,
) -> Result<(Cow<'_, [u8]>, &[u8]), Invalid> {
    if target.first() != Some(&b'/') {
        return Err("the request target must start with '/'");
    }
    for &b in target {
        if !(0x21..=0x7e).contains(&b) || b == b'#' {
            return Err("invalid character in the request target");
        }
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => target.split_at(q),
        None => (target, &b""[..]),
    };
    if path.contains(&b'\\') {
        return Err("backslash in the path");
    }
    if !needs_work(path) {
        return Ok((Cow::Borrowed(path), query));
    }
    Ok((Cow::Owned(normalize_path(path, slashes)?), query))
}

/// Anything that normalisation could change: a `%`, a `//`, or a `.`
/// segment.
fn needs_work(path: &[u8]) -> bool {
    path.windows(2).any(|w| w == b"//" || w == b"/.") || path.contains(&b'%')
}

fn normalize_path(path: &[u8], slashes: EncodedSlashes) -> Result<Vec<u8>, Invalid> {
    // Decode what may be decoded, segment by segment.
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let raw_segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let last = raw_segments.len() - 1;
    for (i, raw) in raw_segments.iter().enumerate() {
        let seg = decode_segment(raw, slashes)?;
        match &seg[..] {
            b"." => {
                if i == last {
                    segments.push(Vec::new());
                }
            }
            b".." => {
                segments.pop();
                if i == last {
                    segments.push(Vec::new());
                }
            }
            // An empty segment inside the path is a `//`: merged away. The
            // last one is a trailing slash, which is kept.
            b"" if i != last => {}
            _ => segments.push(seg),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    // A trailing slash after a removed segment ("/a/.." gives "/" + "")
    // shows as "//" here.
    if out.ends_with(b"//") {
        out.pop();
    }
    Ok(out)
}

fn decode_segment(raw: &[u8], slashes: EncodedSlashes) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'%' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let (Some(hi), Some(lo)) = (
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("invalid percent-encoding in the path");
        };
        let byte = (hi * 16 + lo) as u8;
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte);
        } else if (byte == b'/' || byte == b'\\') && slashes == EncodedSlashes::Reject {
            return Err("encoded slash or backslash in the path");
        } else {
            out.push(b'%');
            out.extend_from_slice(format!("{byte:02X}").as_bytes());
        }
        i += 3;
    }
    Ok(out)
}

/// An absolute-form target (`http://host[:port]/path?query`, RFC 9112
/// §3.2.2): its authority and the origin-form rest. Only `http` and
/// `https`; userinfo is refused.
pub fn split_absolute(target: &[u8]) -> Result<(&[u8], &[u8]), Invalid> {
    let colon = target
        .iter()
        .position(|&b| b == b':')
        .ok_or("invalid request target")?;
    let (scheme, rest) = target.split_at(colon);
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err("only http and https targets are served");
    }
    let rest = rest.strip_prefix(b"://").ok_or("invalid request target")?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains(&b'@') {
        return Err("userinfo in the request target");
    }
    Ok((authority, path))
}

/// Checks a host as the `Host` field or a URI authority carries it:
/// `host[:port]`, where host is a name of letters, digits, `-`, `.`, `_`
/// and `~`, an IPv4 address, or a bracketed IPv6 literal, and the port 1 to
/// 5 digits up to 65535.
pub fn check_authority(a: &[u8]) -> Result<(), Invalid> {
    if a.is_empty() {
        return Err("empty host");
    }
    if a.len() > 261 {
        return Err("host too long");
    }
    let (host, port) = if a[0] == b'[' {
        let close = a.iter().position(|&b| b == b']').ok_or("invalid host")?;
        let literal = &a[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("invalid host");
        }
        (&a[..=close], &a[close + 1..])
    } else {
        let colon = a.iter().position(|&b| b == b':').unwrap_or(a.len());
        let host = &a[..colon];
        if host.is_empty() {
            return Err("empty host");
        }
        if !host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err("invalid character in the host");
        }
        (host, &a[colon..])
    };
    debug_assert!(!host.is_empty());
    match port {
        [] => Ok(()),
        [b':', digits @ ..] => {
            if digits.is_empty() {
                return Err("empty port");
            }
            if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
                return Err("invalid port");
            }
            let n: u32 = digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'));
            if n > 65_535 {
                return Err("invalid port");
            }
            Ok(())
        }
        _ => Err("invalid host"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(t: &str) -> Result<String, Invalid> {
        normalize(t.as_bytes(), EncodedSlashes::Reject).map(|(p, q)| {
            let mut s = String::from_utf8(p.into_owned()).unwrap();
            s.push_str(std::str::from_utf8(q).unwrap());
            s
        })
    }

    #[test]
    fn paths_are_normalised_before_routing() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b?x=/../y", "/a/b?x=/../y"),
            ("/api/../secret", "/secret"),
            ("/api/%2e%2e/secret", "/secret"),
            ("/api/%2E%2E/secret", "/secret"),
            ("/api/.%2e/secret", "/secret"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("//", "/"),
            ("/a//", "/a/"),
            ("/%41%7e%5f", "/A~_"),
            ("/%3f%3F?q", "/%3F%3F?q"),
            ("/a%20b", "/a%20b"),
            ("/.hidden/x", "/.hidden/x"),
            ("/a..b/", "/a..b/"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
        for (input, why) in [
            ("/api/..%2Fsecret", "encoded slash or backslash in the path"),
            ("/a%2fb", "encoded slash or backslash in the path"),
            ("/a%5Cb", "encoded slash or backslash in the path"),
            ("/a\\b", "backslash in the path"),
            ("/a%zz", "invalid percent-encoding in the path"),
            ("/a%4", "invalid percent-encoding in the path"),
            ("/a b", "invalid character in the request target"),
            ("/a#b", "invalid character in the request target"),
            ("/a\u{e9}", "invalid character in the request target"),
            ("*", "the request target must start with '/'"),
        ] {
            assert_eq!(norm(input), Err(why), "{input}");
        }
        let (p, _) = normalize(b"/a%2Fb/../c", EncodedSlashes::Keep).unwrap();
        assert_eq!(
            &p[..],
            b"/c",
            "kept encoded slashes do not separate segments"
        );
        assert!(matches!(
            normalize(b"/plain/path", EncodedSlashes::Reject).unwrap().0,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn absolute_targets_give_their_authority() {
        assert_eq!(
            split_absolute(b"http://shop.test:8080/a?b"),
            Ok((&b"shop.test:8080"[..], &b"/a?b"[..]))
        );
        assert_eq!(
            split_absolute(b"HTTPS://s.test"),
            Ok((&b"s.test"[..], &b""[..]))
        );
        assert_eq!(
            split_absolute(b"http://s.test?q"),
            Ok((&b"s.test"[..], &b"?q"[..]))
        );
        assert_eq!(
            split_absolute(b"ftp://s.test/"),
            Err("only http and https targets are served")
        );
        assert_eq!(
            split_absolute(b"http://user:pw@s.test/"),
            Err("userinfo in the request target")
        );
        assert_eq!(
            split_absolute(b"http:/s.test/"),
            Err("invalid request target")
        );
    }

    #[test]
    fn hosts_are_names_addresses_or_literals_with_a_port() {
        for ok in [
            "shop.test",
            "SHOP.test:8080",
            "127.0.0.1",
            "[::1]:443",
            "[2001:db8::1]",
            "a_b-c~d",
            "x:65535",
        ] {
            assert_eq!(check_authority(ok.as_bytes()), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty host"),
            (":80", "empty host"),
            ("shop.test:", "empty port"),
            ("a b", "invalid character in the host"),
            ("a/b", "invalid character in the host"),
            ("a@b", "invalid character in the host"),
            ("a:80:80", "invalid port"),
            ("a:99999", "invalid port"),
            ("a:8x", "invalid port"),
            ("[::1", "invalid host"),
            ("[zz]", "invalid host"),
            ("[::1]x", "invalid host"),
        ] {
            assert_eq!(check_authority(bad.as_bytes()), Err(why), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever the path, the normalised one starts with '/', has no
        /// dot segment, no empty segment but a trailing one, no encoded
        /// unreserved byte, and normalising it again changes nothing.
        #[test]
        fn normalisation_is_complete_and_idempotent(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("..".to_string()), Just(".".to_string()), Just(String::new()),
                    Just("%2e".to_string()), Just("%2E%2e".to_string()), Just("a".to_string()),
                    Just("%41b".to_string()), Just("%20".to_string()), "[a-z.]{1,4}",
                ],
                0..10,
            )
        ) {
            let path = format!("/{}", parts.join("/"));
            let (once, _) = normalize(path.as_bytes(), EncodedSlashes::Reject).unwrap();
            let once = once.into_owned();
            prop_assert!(once.starts_with(b"/"));
            let text = String::from_utf8(once.clone()).unwrap();
            let inner: Vec<&str> = text[1..].split('/').collect();
            for (i, seg) in inner.iter().enumerate() {
                prop_assert!(*seg != "." && *seg != "..", "{path} -> {text}");
                prop_assert!(!seg.is_empty() || i == inner.len() - 1, "{path} -> {text}");
            }
            prop_assert!(!text.to_ascii_lowercase().contains("%2e") && !text.contains("%41"));
            let (twice, _) = normalize(&once, EncodedSlashes::Reject).unwrap();
            prop_assert_eq!(&twice[..], &once[..]);
        }
    }
}
