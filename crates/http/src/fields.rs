//! Header fields as received: the head's bytes, and where each field's name
//! and value lie in them. Nothing is copied or lowercased; lookups compare
//! names case-blind.

use bytes::{BufMut, Bytes, BytesMut};

/// Where one field's name and value lie in its head (heads are far shorter
/// than 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The span of `name` and `value`, two slices of `base`.
    pub(crate) fn within(base: &[u8], name: &[u8], value: &[u8]) -> Span {
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - base.as_ptr() as usize;
            (start as u32, (start + s.len()) as u32)
        };
        Span {
            name: at(name),
            value: at(value),
        }
    }
}

/// The header fields of one head, in the order received.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    head: Bytes,
    spans: Vec<Span>,
}

impl Fields {
    /// `spans` must lie within `head` (as the parsers make them).
    pub(crate) fn new(head: Bytes, spans: Vec<Span>) -> Fields {
        Fields { head, spans }
    }

    /// Fields from name/value pairs (HTTP/2 requests, tests). The caller
    /// has checked the names and values.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Fields {
        let mut head = BytesMut::new();
        let mut spans = Vec::new();
        for (name, value) in pairs {
            let n = head.len() as u32;
            head.put_slice(name);
            head.put_slice(b": ");
            let v = head.len() as u32;
            head.put_slice(value);
            head.put_slice(b"\r\n");
            spans.push(Span {
                name: (n, n + name.len() as u32),
                value: (v, v + value.len() as u32),
            });
        }
        Fields {
            head: head.freeze(),
            spans,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every field as (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|s| self.pair(s))
    }

    fn pair(&self, s: &Span) -> (&[u8], &[u8]) {
        let h = &self.head[..];
        (
            &h[s.name.0 as usize..s.name.1 as usize],
            &h[s.value.0 as usize..s.value.1 as usize],
        )
    }

    /// The values of the fields called `name` (any case).
    pub fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first field called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first field called `name`, sharing the head's bytes.
    pub fn get_shared(&self, name: &[u8]) -> Option<Bytes> {
        self.spans
            .iter()
            .find(|s| self.pair(s).0.eq_ignore_ascii_case(name))
            .map(|s| self.head.slice(s.value.0 as usize..s.value.1 as usize))
    }

    /// Does the comma-separated field `name` carry `token` (any case)?
    pub fn has_token(&self, name: &[u8], token: &[u8]) -> bool {
        self.values(name)
            .flat_map(list)
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// Gives back the span list, emptied, to parse the next head into.
    pub fn into_spans(self) -> Vec<Span> {
        let mut spans = self.spans;
        spans.clear();
        spans
    }
}

/// The elements of a comma-separated list value, trimmed, empty ones
/// skipped (RFC 9110 §5.6.1).
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A token (RFC 9110 §5.6.2): one or more tchars.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value a proxy may write on an HTTP/1 connection: no CR, LF or
/// NUL, nor any other control character but HTAB (RFC 9110 §5.5).
pub fn is_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the framing fields: what a
/// proxy never copies from one connection to the next (it writes its own
/// framing). Lowercase.
pub const CONNECTION_FIELDS: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"proxy-authorization",
];

pub(crate) fn is_connection_field(name: &[u8]) -> bool {
    CONNECTION_FIELDS
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

/// Fields that a `Connection` header may never remove: the framing (which
/// the proxy decides and writes itself), `Host`, and what the proxy sets.
pub(crate) fn is_protected(name: &[u8]) -> bool {
    [
        &b"content-length"[..],
        b"transfer-encoding",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"traceparent",
    ]
    .iter()
    .any(|f| name.eq_ignore_ascii_case(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_case_blind_and_keep_order() {
        let f = Fields::from_pairs([
            (&b"Host"[..], &b"a"[..]),
            (b"X-A", b"1"),
            (b"x-a", b"2"),
            (b"Connection", b"keep-alive, , Upgrade"),
        ]);
        assert_eq!(f.len(), 4);
        assert_eq!(f.get(b"host"), Some(&b"a"[..]));
        assert_eq!(f.values(b"X-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(f.get_shared(b"x-A").as_deref(), Some(&b"1"[..]));
        assert!(f.has_token(b"connection", b"upgrade"));
        assert!(!f.has_token(b"connection", b"close"));
        assert_eq!(f.into_spans().len(), 0);
    }

    #[test]
    fn tokens_and_values() {
        assert!(is_token(b"content-length"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a:b"));
        assert!(is_field_value(b"a\tb c~\x80"));
        for bad in [&b"a\rb"[..], b"a\nb", b"a\0b", b"\x7f"] {
            assert!(!is_field_value(bad), "{bad:?}");
        }
        assert_eq!(
            list(b" a ,, b,c ").collect::<Vec<_>>(),
            [&b"a"[..], b"b", b"c"]
        );
    }
}
