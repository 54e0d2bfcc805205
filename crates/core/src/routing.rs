//! Route matching as pure code: a request's host and path pick a target.
//!
//! Precedence: an exact host beats the longest matching wildcard, which beats
//! any host; within the chosen host, the longest matching path prefix wins.
//! A host whose routes have no prefix matching the path falls through to the
//! next, less specific host (so a catch-all `*` `/` route still catches
//! `shop.example.com/other` when `shop.example.com` only routes `/api`).
//!
//! The table is built once per configuration and only read afterwards;
//! lookups do not allocate when the host is already lowercase.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::{HostMatch, PathPrefix};

/// Routes grouped by host, each group's prefixes longest first.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: HashMap<String, Vec<(PathPrefix, T)>>,
    /// Longest suffix first.
    wildcard: Vec<(HostMatch, Vec<(PathPrefix, T)>)>,
    any: Vec<(PathPrefix, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: Vec::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Builds a table from `(host, prefix, target)`. A later duplicate of the
    /// same host and prefix replaces an earlier one.
    pub fn new(routes: impl IntoIterator<Item = (HostMatch, PathPrefix, T)>) -> Self {
        let mut table = Self::default();
        for (host, prefix, target) in routes {
            let group = match &host {
                HostMatch::Any => &mut table.any,
                HostMatch::Exact(h) => table.exact.entry(h.clone()).or_default(),
                HostMatch::Wildcard(_) => {
                    match table.wildcard.iter().position(|(h, _)| h == &host) {
                        Some(i) => &mut table.wildcard[i].1,
                        None => {
                            table.wildcard.push((host.clone(), Vec::new()));
                            let last = table.wildcard.len() - 1;
                            &mut table.wildcard[last].1
                        }
                    }
                }
            };
            match group.iter().position(|(p, _)| p == &prefix) {
                Some(i) => group[i].1 = target,
                None => group.push((prefix, target)),
            }
        }
        let longest_first = |g: &mut Vec<(PathPrefix, T)>| {
            g.sort_by_key(|r| std::cmp::Reverse(r.0.as_str().len()));
        };
        table.exact.values_mut().for_each(longest_first);
        table
            .wildcard
            .iter_mut()
            .for_each(|(_, g)| longest_first(g));
        longest_first(&mut table.any);
        table
            .wildcard
            .sort_by_key(|(h, _)| std::cmp::Reverse(h.specificity()));
        table
    }

    /// The target for a request. `host` is the Host header or the URI's
    /// authority, with or without a port, in any case; `path` is the URI
    /// path (a query string, if passed along, is ignored).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&T> {
        let host = normalize_host(host);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        if let Some(group) = self.exact.get(host.as_ref())
            && let Some(t) = longest_prefix(group, path)
        {
            return Some(t);
        }
        for (h, group) in &self.wildcard {
            if h.matches(&host)
                && let Some(t) = longest_prefix(group, path)
            {
                return Some(t);
            }
        }
        longest_prefix(&self.any, path)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_empty()
    }
}

fn longest_prefix<'a, T>(group: &'a [(PathPrefix, T)], path: &str) -> Option<&'a T> {
    group.iter().find(|(p, _)| p.matches(path)).map(|(_, t)| t)
}

/// Strips the port and a trailing dot, lowercases (allocating only when
/// needed). `[::1]:8080` becomes `[::1]`.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    let h = without_port.strip_suffix('.').unwrap_or(without_port);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, &'static str)]) -> RouteTable<&'static str> {
        RouteTable::new(
            routes
                .iter()
                .map(|(h, p, t)| (HostMatch::new(h).unwrap(), PathPrefix::new(p).unwrap(), *t)),
        )
    }

    #[test]
    fn exact_beats_longest_wildcard_beats_any() {
        let t = table(&[
            ("*", "/", "any"),
            ("*.example.com", "/", "wild"),
            ("*.shop.example.com", "/", "wild-shop"),
            ("www.shop.example.com", "/", "exact"),
        ]);
        assert_eq!(t.lookup("www.shop.example.com", "/"), Some(&"exact"));
        assert_eq!(t.lookup("WWW.Shop.Example.com:8080", "/x"), Some(&"exact"));
        assert_eq!(t.lookup("img.shop.example.com", "/"), Some(&"wild-shop"));
        assert_eq!(t.lookup("a.example.com", "/"), Some(&"wild"));
        assert_eq!(t.lookup("example.com", "/"), Some(&"any"));
        assert_eq!(t.lookup("other.org", "/"), Some(&"any"));
        assert_eq!(t.lookup("", "/"), Some(&"any"));
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table(&[
            ("*", "/", "root"),
            ("*", "/api", "api"),
            ("*", "/api/v2", "v2"),
            ("*", "/static/", "static"),
        ]);
        assert_eq!(t.lookup("h", "/api/v2/users"), Some(&"v2"));
        assert_eq!(t.lookup("h", "/api/v2"), Some(&"v2"));
        assert_eq!(t.lookup("h", "/api/v1"), Some(&"api"));
        assert_eq!(t.lookup("h", "/api?x=1"), Some(&"api"));
        assert_eq!(t.lookup("h", "/apiary"), Some(&"root"));
        assert_eq!(t.lookup("h", "/static/app.js"), Some(&"static"));
        assert_eq!(t.lookup("h", "/static"), Some(&"root"));
    }

    #[test]
    fn a_host_without_a_matching_prefix_falls_through() {
        let t = table(&[("shop.example.com", "/api", "shop-api"), ("*", "/", "any")]);
        assert_eq!(t.lookup("shop.example.com", "/api/x"), Some(&"shop-api"));
        assert_eq!(t.lookup("shop.example.com", "/"), Some(&"any"));
        let t = table(&[("shop.example.com", "/api", "shop-api")]);
        assert_eq!(t.lookup("shop.example.com", "/"), None);
        assert_eq!(t.lookup("other.example.com", "/api"), None);
        assert!(RouteTable::<u8>::new([]).lookup("h", "/").is_none());
    }

    #[test]
    fn duplicates_replace() {
        let t = table(&[("*", "/", "old"), ("*", "/", "new")]);
        assert_eq!(t.lookup("h", "/"), Some(&"new"));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert!(matches!(normalize_host("plain.host"), Cow::Borrowed(_)));
    }
}
