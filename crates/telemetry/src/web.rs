//! Two small pieces of the services' own web pages (the control plane's
//! status page, the widget shop): escaping text for HTML and reading a
//! cookie from a request.

use axum::http::{HeaderMap, header};

/// Escapes text for HTML element content and quoted attribute values. A
/// carriage return becomes a character reference too, so no value can end
/// a server-sent event's line.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// The value of the first cookie called `name` in the request's `Cookie`
/// fields, trimmed; `None` without one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_line_ends_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">Tom & Jerry's</a>\r\n"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;&#13;\n"
        );
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn the_first_cookie_of_that_name_is_found_in_any_field() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "x=1; cart= abc ; cart=second".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "cart"), Some("abc"));
        assert_eq!(cookie(&h, "x"), Some("1"));
        assert_eq!(cookie(&h, "car"), None);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "x=1".parse().unwrap());
        h.append(header::COOKIE, "session=s".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some("s"));
        assert_eq!(cookie(&HeaderMap::new(), "session"), None);
    }
}
