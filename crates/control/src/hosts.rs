//! A `DATABASE_URL` naming several hosts, as libpq reads one:
//! `postgres://user@db-1:5432,db-2:5432,db-3:5432/tandem?target_session_attrs=read-write`.
//!
//! With a Patroni cluster behind those hosts, the primary moves when Patroni
//! promotes a replica. The store connects to one host at a time; whenever the
//! database is away, the hub asks [`Hosts::find`] for the one to use (the
//! first, in the URL's order, that answers and, with `read-write`, is not in
//! recovery) and points the pool at it, so configuration writes resume by
//! themselves once Patroni has promoted a replica. sqlx itself knows one
//! host per pool; this module is that one addition.

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tandem_core::ValidationError;

use crate::error::{Error, innermost_cause};

/// How long one host may take to answer [`Hosts::find`].
const PER_HOST: Duration = Duration::from_secs(2);

/// libpq's `target_session_attrs`: which server a session may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any server that answers (libpq's default).
    Any,
    /// Only a primary: a server not in recovery.
    ReadWrite,
}

/// The hosts of a `DATABASE_URL`, each as a complete set of connect
/// options, in the URL's order.
#[derive(Debug, Clone)]
pub struct Hosts {
    candidates: Vec<PgConnectOptions>,
    attrs: SessionAttrs,
}

impl Hosts {
    /// Parses `url`; the error names `DATABASE_URL` and what is wrong with
    /// it (never the password).
    pub fn parse(url: &str) -> Result<Hosts, ValidationError> {
        let invalid = |m: String| ValidationError::new("DATABASE_URL", m);
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected postgres://user@host:port/database".into()))?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(invalid(format!(
                "scheme {scheme:?}: expected postgres:// or postgresql://"
            )));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(i) => (&authority[..=i], &authority[i + 1..]),
            None => ("", authority),
        };
        // target_session_attrs is libpq's; sqlx would ignore it with a
        // warning, so it is taken out here.
        let (path, attrs) = take_session_attrs(path).map_err(invalid)?;
        let hosts: Vec<&str> = hosts.split(',').collect();
        if hosts.len() > 16 {
            return Err(invalid(format!("{} hosts: at most 16", hosts.len())));
        }
        let candidates = hosts
            .iter()
            .map(|host| {
                if host.is_empty() {
                    return Err(invalid("an empty host in the host list".into()));
                }
                format!("{scheme}://{userinfo}{host}{path}")
                    .parse::<PgConnectOptions>()
                    .map_err(|e| invalid(format!("host {host:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Hosts { candidates, attrs })
    }

    /// The first host's options: where the pool starts.
    pub fn first(&self) -> &PgConnectOptions {
        &self.candidates[0]
    }

    /// Whether the pool must be pointed at a host found by [`Hosts::find`]
    /// (several hosts, or a primary required).
    pub fn follows(&self) -> bool {
        self.candidates.len() > 1 || self.attrs == SessionAttrs::ReadWrite
    }

    pub fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// `host:port,host:port/database`: how errors name the database.
    pub fn describe(&self) -> String {
        let o = self.first();
        let database = o.get_database().unwrap_or_else(|| o.get_username());
        let hosts = self
            .candidates
            .iter()
            .map(|o| format!("{}:{}", o.get_host(), o.get_port()))
            .collect::<Vec<_>>()
            .join(",");
        format!("{hosts}/{database}")
    }

    /// The first host, in order, that answers within 2 s and suits the
    /// session attributes. The error says what each host answered.
    pub async fn find(&self) -> Result<PgConnectOptions, Error> {
        let mut causes = Vec::with_capacity(self.candidates.len());
        for options in &self.candidates {
            let host = format!("{}:{}", options.get_host(), options.get_port());
            match tokio::time::timeout(PER_HOST, self.suits(options)).await {
                Ok(Ok(())) => return Ok(options.clone()),
                Ok(Err(cause)) => causes.push(format!("{host}: {cause}")),
                Err(_) => causes.push(format!("{host}: no answer within 2 s")),
            }
        }
        Err(Error::Unavailable(if self.candidates.len() == 1 {
            causes.concat()
        } else {
            format!("no host is usable ({})", causes.join("; "))
        }))
    }

    async fn suits(&self, options: &PgConnectOptions) -> Result<(), String> {
        let mut conn = PgConnection::connect_with(options)
            .await
            .map_err(|e| innermost_cause(&e))?;
        let result = match self.attrs {
            SessionAttrs::Any => Ok(()),
            SessionAttrs::ReadWrite => {
                match sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut conn)
                    .await
                {
                    Ok(false) => Ok(()),
                    Ok(true) => Err("a read-only replica".to_string()),
                    Err(e) => Err(innermost_cause(&e)),
                }
            }
        };
        let _ = conn.close().await;
        result
    }
}

/// Removes `target_session_attrs` from a URL's path and query.
fn take_session_attrs(path: &str) -> Result<(String, SessionAttrs), String> {
    let Some((before, query)) = path.split_once('?') else {
        return Ok((path.to_string(), SessionAttrs::Any));
    };
    let mut attrs = SessionAttrs::Any;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                attrs = match value {
                    "any" => SessionAttrs::Any,
                    "read-write" | "primary" => SessionAttrs::ReadWrite,
                    other => {
                        return Err(format!(
                            "target_session_attrs={other:?}: expected any, read-write or primary"
                        ));
                    }
                }
            }
            _ => kept.push(pair),
        }
    }
    let path = if kept.is_empty() {
        before.to_string()
    } else {
        format!("{before}?{}", kept.join("&"))
    };
    Ok((path, attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_is_what_sqlx_reads() {
        let h = Hosts::parse("postgres://tandem:secret@db:6432/tandem").expect("valid");
        assert!(!h.follows());
        assert_eq!(h.describe(), "db:6432/tandem");
        assert_eq!(h.first().get_port(), 6432);
    }

    #[test]
    fn several_hosts_with_a_primary_required() {
        let h = Hosts::parse(
            "postgresql://u:p%40ss@10.0.0.1:5432,10.0.0.2,db-3:5433/tandem?sslmode=disable&target_session_attrs=read-write",
        )
        .expect("valid");
        assert!(h.follows());
        assert_eq!(h.attrs(), SessionAttrs::ReadWrite);
        assert_eq!(h.candidates.len(), 3);
        assert_eq!(h.candidates[1].get_port(), 5432, "the default port");
        assert_eq!(h.candidates[2].get_port(), 5433);
        assert_eq!(h.candidates[0].get_username(), "u");
        assert_eq!(h.first().get_database(), Some("tandem"));
        assert_eq!(h.describe(), "10.0.0.1:5432,10.0.0.2:5432,db-3:5433/tandem");
    }

    #[test]
    fn bad_urls_name_what_is_wrong_and_never_the_password() {
        for (url, says) in [
            ("mysql://u@h/db", "scheme"),
            ("postgres://u:hunter2@a,,b/db", "empty host"),
            (
                "postgres://u:hunter2@a,b/db?target_session_attrs=standby",
                "target_session_attrs",
            ),
            ("db.example.com", "expected postgres://"),
        ] {
            let e = Hosts::parse(url).expect_err(url).to_string();
            assert!(e.contains("DATABASE_URL") && e.contains(says), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }
}
