//! Identifiers and units, each validated once in its constructor.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

// === Revision ===

/// The global configuration revision: bumped by one for every committed
/// change, never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    pub const ZERO: Revision = Revision(0);

    pub fn next(self) -> Revision {
        Revision(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === PoolName ===

/// A pool's name: a DNS label (1-63 of `a-z`, `0-9`, `-`, not starting or
/// ending with `-`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(String);

impl PoolName {
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        check_dns_label(&name).map_err(|rule| ValidationError::new("name", rule))?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("must be at most 63 characters (got {})", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "must be a DNS label of lowercase letters, digits and '-' (found {c:?} in {s:?})"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("must not start or end with '-' (got {s:?})"));
    }
    Ok(())
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PoolName {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<PoolName> for String {
    fn from(n: PoolName) -> String {
        n.0
    }
}

// === BackendAddr ===

/// A backend's `host:port`: an IPv4 address, a bracketed IPv6 address or a
/// DNS name, and a port from 1 to 65535. Stored in canonical form (lowercase
/// host).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackendAddr {
    text: String,
    port: u16,
}

impl BackendAddr {
    pub fn new(s: impl AsRef<str>) -> Result<Self, ValidationError> {
        let s = s.as_ref().trim();
        let err = |rule: String| ValidationError::new("address", rule);
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| err(format!("must be host:port (got {s:?})")))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("port must be 1-65535 (got {port:?} in {s:?})")))?;
        let host = host.to_ascii_lowercase();
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Ipv6Addr::from_str(inner)
                .map_err(|_| err(format!("{inner:?} is not an IPv6 address")))?;
        } else if host.contains(':') {
            return Err(err(format!(
                "IPv6 addresses must be bracketed, e.g. [::1]:8080 (got {s:?})"
            )));
        } else if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            Ipv4Addr::from_str(&host)
                .map_err(|_| err(format!("{host:?} is not an IPv4 address")))?;
        } else {
            check_hostname(&host).map_err(err)?;
        }
        Ok(Self {
            text: format!("{host}:{port}"),
            port,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host without the port (`[::1]` keeps its brackets).
    pub fn host(&self) -> &str {
        self.text
            .rsplit_once(':')
            .map_or(self.text.as_str(), |(h, _)| h)
    }

    /// The same host on another port (`port` must not be 0).
    pub fn with_port(&self, port: u16) -> BackendAddr {
        debug_assert!(port != 0, "ports start at 1");
        BackendAddr {
            text: format!("{}:{port}", self.host()),
            port,
        }
    }
}

pub(crate) fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > 253 {
        return Err(format!("host must be 1-253 characters (got {host:?})"));
    }
    for label in host.split('.') {
        check_dns_label(label).map_err(|rule| format!("host {host:?}: each label {rule}"))?;
    }
    Ok(())
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for BackendAddr {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<BackendAddr> for String {
    fn from(a: BackendAddr) -> String {
        a.text
    }
}

// === Weight ===

/// A backend's weight, 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u32);

impl Weight {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 1000;
    pub const DEFAULT: Weight = Weight(1);

    pub fn new(w: u32) -> Result<Self, ValidationError> {
        if (Self::MIN..=Self::MAX).contains(&w) {
            Ok(Self(w))
        } else {
            Err(ValidationError::new(
                "weight",
                format!("must be between {} and {} (got {w})", Self::MIN, Self::MAX),
            ))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u32> for Weight {
    type Error = ValidationError;
    fn try_from(w: u32) -> Result<Self, Self::Error> {
        Self::new(w)
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.0
    }
}

// === HostMatch ===

/// Which request hosts a route applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostMatch {
    /// Any host (written `*`).
    Any,
    /// Any subdomain of the suffix: `*.example.com` matches `a.example.com`
    /// and `a.b.example.com`, not `example.com`. Holds `.example.com`.
    Wildcard(String),
    /// Exactly this host (lowercase, without port).
    Exact(String),
}

impl HostMatch {
    pub fn new(s: &str) -> Result<Self, ValidationError> {
        let s = s.trim().to_ascii_lowercase();
        let err = |rule: String| ValidationError::new("host", rule);
        if s.is_empty() || s == "*" {
            return Ok(Self::Any);
        }
        if let Some(suffix) = s.strip_prefix("*.") {
            check_hostname(suffix).map_err(err)?;
            return Ok(Self::Wildcard(format!(".{suffix}")));
        }
        if s.contains('*') {
            return Err(err(format!(
                "a wildcard must be a leading \"*.\", as in \"*.example.com\" (got {s:?})"
            )));
        }
        check_hostname(&s).map_err(err)?;
        Ok(Self::Exact(s))
    }

    /// Does a request's host (lowercase, port already stripped) match?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            Self::Exact(h) => h == host,
        }
    }

    /// Higher is more specific: exact beats the longest wildcard beats any.
    pub fn specificity(&self) -> usize {
        match self {
            Self::Any => 0,
            Self::Wildcard(suffix) => suffix.len(),
            Self::Exact(_) => usize::MAX,
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
            Self::Exact(h) => f.write_str(h),
        }
    }
}

impl TryFrom<String> for HostMatch {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<HostMatch> for String {
    fn from(h: HostMatch) -> String {
        h.to_string()
    }
}

// === ListenAddr ===

/// Where a TCP route listens: an IP address (IPv6 bracketed) and a port
/// from 1 to 65535, e.g. `0.0.0.0:5432`, `127.0.0.1:6432`, `[::]:5432`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListenAddr(SocketAddr);

impl ListenAddr {
    pub fn new(s: &str) -> Result<Self, ValidationError> {
        let s = s.trim();
        let addr: SocketAddr = s.parse().map_err(|_| {
            ValidationError::new(
                "listen",
                format!(
                    "must be ip:port, e.g. 0.0.0.0:5432 or [::]:5432 (got {s:?}); host names are not allowed"
                ),
            )
        })?;
        if addr.port() == 0 {
            return Err(ValidationError::new(
                "listen",
                format!("port must be 1-65535 (got 0 in {s:?})"),
            ));
        }
        Ok(Self(addr))
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }

    /// Could both be bound on one host at once? Not on the same port when
    /// either is a wildcard address or both are the same address.
    pub fn conflicts_with(&self, other: &ListenAddr) -> bool {
        self.0.port() == other.0.port()
            && (self.0.ip() == other.0.ip()
                || self.0.ip().is_unspecified()
                || other.0.ip().is_unspecified())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.to_string()
    }
}

// === PathPrefix ===

/// A route's path prefix: starts with `/`, at most 1024 characters, no
/// whitespace, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn new(s: &str) -> Result<Self, ValidationError> {
        let err = |rule: String| ValidationError::new("path_prefix", rule);
        let s = if s.is_empty() { "/" } else { s };
        if !s.starts_with('/') {
            return Err(err(format!("must start with '/' (got {s:?})")));
        }
        if s.len() > 1024 {
            return Err(err(format!(
                "must be at most 1024 characters (got {})",
                s.len()
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
        {
            return Err(err(format!(
                "must not contain whitespace, control characters, '?' or '#' (found {c:?})"
            )));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does a request path fall under this prefix? `/api` matches `/api`,
    /// `/api/x` and `/api?q`, but not `/apix`; a prefix ending in `/` matches
    /// anything below it.
    pub fn matches(&self, path: &str) -> bool {
        let p = self.0.as_str();
        if !path.starts_with(p) {
            return false;
        }
        p.ends_with('/') || matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PathPrefix {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<PathPrefix> for String {
    fn from(p: PathPrefix) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_follow_dns_label_rules() {
        for ok in ["shop", "a", "web-1", &"x".repeat(63)] {
            assert!(PoolName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Shop", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            let e = PoolName::new(bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
        }
    }

    #[test]
    fn backend_addresses() {
        assert_eq!(
            BackendAddr::new("10.0.0.5:3000").unwrap().as_str(),
            "10.0.0.5:3000"
        );
        assert_eq!(
            BackendAddr::new("Web-1.Local:80").unwrap().as_str(),
            "web-1.local:80"
        );
        assert_eq!(BackendAddr::new("[::1]:8080").unwrap().port(), 8080);
        for bad in [
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:70000",
            "::1:80",
            "300.1.1.1:80",
            "a_b:80",
            ":80",
        ] {
            let e = BackendAddr::new(bad).unwrap_err();
            assert_eq!(e.field, "address", "{bad}");
        }
    }

    #[test]
    fn listen_addresses() {
        let any = ListenAddr::new("0.0.0.0:5432").unwrap();
        assert_eq!(any.to_string(), "0.0.0.0:5432");
        assert_eq!(
            ListenAddr::new(" [::]:5432 ").unwrap().to_string(),
            "[::]:5432"
        );
        for bad in [
            "localhost:5432",
            "0.0.0.0",
            "0.0.0.0:0",
            "1.2.3.4:70000",
            "",
        ] {
            assert_eq!(ListenAddr::new(bad).unwrap_err().field, "listen", "{bad}");
        }
        let lo = ListenAddr::new("127.0.0.1:5432").unwrap();
        let other = ListenAddr::new("127.0.0.2:5432").unwrap();
        assert!(any.conflicts_with(&lo) && lo.conflicts_with(&any) && lo.conflicts_with(&lo));
        assert!(!lo.conflicts_with(&other));
        assert!(!lo.conflicts_with(&ListenAddr::new("127.0.0.1:5433").unwrap()));
        let back: ListenAddr = serde_json::from_str("\"127.0.0.1:5432\"").unwrap();
        assert_eq!(back, lo);
    }

    #[test]
    fn backend_hosts_on_another_port() {
        let b = BackendAddr::new("10.0.0.5:5432").unwrap();
        assert_eq!(b.host(), "10.0.0.5");
        assert_eq!(
            b.with_port(8008),
            BackendAddr::new("10.0.0.5:8008").unwrap()
        );
        let v6 = BackendAddr::new("[::1]:5432").unwrap();
        assert_eq!(v6.with_port(8008), BackendAddr::new("[::1]:8008").unwrap());
    }

    #[test]
    fn weights_are_bounded() {
        assert!(Weight::new(0).is_err());
        assert!(Weight::new(1001).is_err());
        assert_eq!(Weight::new(1000).unwrap().get(), 1000);
    }

    #[test]
    fn host_matching() {
        let any = HostMatch::new("*").unwrap();
        let wild = HostMatch::new("*.example.com").unwrap();
        let exact = HostMatch::new("Shop.Example.com").unwrap();
        assert!(any.matches("anything"));
        assert!(wild.matches("a.example.com") && wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com") && !wild.matches("aexample.com"));
        assert!(exact.matches("shop.example.com"));
        assert!(exact.specificity() > wild.specificity() && wild.specificity() > any.specificity());
        assert!(HostMatch::new("a.*.com").is_err());
        assert_eq!(HostMatch::new("").unwrap(), HostMatch::Any);
    }

    #[test]
    fn path_prefixes_match_on_segment_boundaries() {
        let api = PathPrefix::new("/api").unwrap();
        assert!(api.matches("/api") && api.matches("/api/v1"));
        assert!(!api.matches("/apix") && !api.matches("/"));
        assert!(PathPrefix::new("/").unwrap().matches("/anything"));
        assert!(PathPrefix::new("api").is_err());
        assert!(PathPrefix::new("/a b").is_err());
        assert!(PathPrefix::new("/a?b").is_err());
    }
}
