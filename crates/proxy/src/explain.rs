//! "Why this backend": what the proxy would do with a request for a host,
//! a path and a client, answered on the admin port (`GET /explain`).
//!
//! It reads the live table as a request does and runs the same route
//! lookup and the same balancer, on a copy of the pool's round-robin
//! cursor: asking never moves the real one, so the answer is the backend
//! the next request would get (other requests arriving meanwhile aside).
//! Nothing here is on the request path.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tandem_core::lb::{PickContext, client_hash};
use tandem_core::routing::normalize_host;
use tandem_core::{AdminState, BackendRole, HostMatch, LbPolicy};
use tandem_http::target::{EncodedSlashes, check_authority, normalize};

use crate::clock;
use crate::table::{HealthNote, PoolRt, Table};

/// A refused question: which parameter and why.
#[derive(Debug, PartialEq, Eq)]
pub struct BadQuestion {
    pub field: &'static str,
    pub why: String,
}

impl std::fmt::Display for BadQuestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

/// The request to explain, checked as the proxy checks a real one.
#[derive(Debug, Serialize)]
pub struct Question {
    pub host: String,
    /// Normalised as the proxy normalises it (what routes match on).
    pub path: String,
    pub client: IpAddr,
}

impl Question {
    /// From the query parameters `host` (required), `path` (default `/`)
    /// and `client` (an IP address; default 0.0.0.0, which only `ip_hash`
    /// pools care about).
    pub fn parse(
        host: Option<&str>,
        path: Option<&str>,
        client: Option<&str>,
        slashes: EncodedSlashes,
    ) -> Result<Question, BadQuestion> {
        let bad = |field, why: &str| BadQuestion {
            field,
            why: why.to_string(),
        };
        let host = host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("host", "is required (the Host a client would send)"))?;
        check_authority(host.as_bytes()).map_err(|why| bad("host", why))?;
        let path = path.filter(|p| !p.is_empty()).unwrap_or("/");
        if path.len() > 8192 {
            return Err(bad("path", "longer than 8192 bytes"));
        }
        let (path, _query) = normalize(path.as_bytes(), slashes).map_err(|why| bad("path", why))?;
        let path = String::from_utf8(path.into_owned())
            .map_err(|_| bad("path", "not UTF-8 once normalised"))?;
        let client = match client.filter(|c| !c.is_empty()) {
            Some(c) => c
                .parse()
                .map_err(|_| bad("client", "must be an IP address (e.g. 203.0.113.7)"))?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        Ok(Question {
            host: normalize_host(host).into_owned(),
            path,
            client,
        })
    }
}

// === the answer ===

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub revision: u64,
    /// Where the configuration came from (control plane or disk).
    pub source: &'static str,
    pub request: Question,
    /// The route taken, or none (the proxy answers 404).
    pub route: Option<RouteChoice>,
    /// Every route whose host and prefix match, in precedence order (the
    /// first is taken).
    pub matching_routes: Vec<RouteChoice>,
    pub pool: Option<PoolExplained>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteChoice {
    pub host: String,
    pub path_prefix: String,
    pub pool: String,
    /// Why it matches, and why it wins or loses.
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct PoolExplained {
    pub name: String,
    pub policy: &'static str,
    pub panic_threshold_percent: u32,
    /// The tier picks choose from now: primaries, panic_primaries,
    /// backups, panic_all, or nothing.
    pub serving: &'static str,
    pub panic: bool,
    pub backends: Vec<BackendExplained>,
    /// The backend the policy picks now, if any.
    pub pick: Option<String>,
    /// How the policy chose (or why nothing can be chosen).
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct BackendExplained {
    pub address: String,
    /// primary or backup.
    pub tier: &'static str,
    /// One word: disabled, draining, unhealthy, ejected, healthy, unknown.
    pub state: &'static str,
    /// The agents' verdict: unknown, healthy or unhealthy.
    pub health: &'static str,
    /// The agents' reason for their verdict, and since when (Unix ms).
    pub health_reason: String,
    pub health_since_unix_ms: Option<u64>,
    /// Ejected by this proxy after consecutive failures: until when.
    pub ejected_until_unix_ms: Option<u64>,
    pub ejected_for_ms: u64,
    pub consecutive_failures: u16,
    pub weight: u32,
    pub in_flight: u64,
    /// In the tier that takes traffic now.
    pub eligible: bool,
}

/// Explains `q` against `table`. `notes` returns the agents' reason for a
/// backend's verdict.
pub fn explain(
    table: &Table,
    q: Question,
    notes: &dyn Fn(&PoolRt, usize) -> Option<HealthNote>,
) -> Explanation {
    let matching = matching_routes(table, &q);
    let chosen = table.routes.lookup(&q.host, &q.path).map(|t| t.pool);
    let route = chosen.and_then(|i| {
        let name = &table.pools[i].config.name;
        matching.iter().find(|r| r.pool == name.as_str()).cloned()
    });
    let pool = chosen.map(|i| explain_pool(&table.pools[i], q.client, notes));
    Explanation {
        revision: table.revision.0,
        source: table.source.as_str(),
        request: q,
        route,
        matching_routes: matching,
        pool,
    }
}

/// Declared routes matching a host (normalised) and a path, by the
/// lookup's precedence: an exact host, then wildcards (longest suffix
/// first), then any host; within a host, the longest prefix.
fn candidates<'a>(table: &'a Table, host: &str, path: &str) -> Vec<&'a tandem_core::Route> {
    let mut found: Vec<&tandem_core::Route> = table
        .declared_routes
        .iter()
        .filter(|r| r.host.matches(host) && r.path_prefix.matches(path))
        .collect();
    found.sort_by_key(|r| std::cmp::Reverse((r.host.specificity(), r.path_prefix.as_str().len())));
    found
}

/// The declared route a request for `host` and `path` takes (the one the
/// table's lookup picks), for the access log.
pub fn route_taken<'a>(table: &'a Table, host: &str, path: &str) -> Option<&'a tandem_core::Route> {
    let host = normalize_host(host);
    let target = table.routes.lookup(&host, path)?;
    table.declared_routes.get(target.route)
}

fn matching_routes(table: &Table, q: &Question) -> Vec<RouteChoice> {
    candidates(table, &q.host, &q.path)
        .iter()
        .enumerate()
        .map(|(rank, r)| {
            let host = match &r.host {
                HostMatch::Exact(_) => "the host matches exactly".to_string(),
                HostMatch::Wildcard(_) => format!("the host matches the wildcard {}", r.host),
                HostMatch::Any => "any host".to_string(),
            };
            let verdict = if rank == 0 {
                "taken: the most specific host, then the longest prefix"
            } else {
                "not taken: a more specific host or a longer prefix wins"
            };
            RouteChoice {
                host: r.host.to_string(),
                path_prefix: r.path_prefix.to_string(),
                pool: r.pool.to_string(),
                why: format!(
                    "{host}; the path starts with {} ({} bytes); {verdict}",
                    r.path_prefix,
                    r.path_prefix.as_str().len()
                ),
            }
        })
        .collect()
}

fn explain_pool(
    pool: &PoolRt,
    client: IpAddr,
    notes: &dyn Fn(&PoolRt, usize) -> Option<HealthNote>,
) -> PoolExplained {
    let now = clock::now_ms();
    let wall_now = wall_clock_ms();
    let serving = pool.serving();
    let backends = pool
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let o = b.state.outlier_state();
            let ejected = o.is_ejected(now);
            let health = b.state.health();
            let note = notes(pool, i);
            let state = match b.declared.admin_state {
                AdminState::Disabled => "disabled",
                AdminState::Draining => "draining",
                AdminState::Enabled if !health.is_usable() => "unhealthy",
                AdminState::Enabled if ejected => "ejected",
                AdminState::Enabled => health.as_str(),
            };
            let eligible = serving.tier.is_some_and(|t| {
                if pool.config.policy == LbPolicy::SingleActive {
                    tandem_core::lb::single_active(&pool.backends, &[])
                        .is_some_and(|p| p.index == i)
                } else {
                    t.admits(b)
                }
            });
            BackendExplained {
                address: b.declared.address.to_string(),
                tier: match b.declared.role {
                    BackendRole::Primary => "primary",
                    BackendRole::Backup => "backup",
                },
                state,
                health: health.as_str(),
                health_reason: note.as_ref().map(|n| n.reason.clone()).unwrap_or_default(),
                health_since_unix_ms: note.map(|n| n.since_unix_ms).filter(|&s| s > 0),
                ejected_until_unix_ms: ejected
                    .then(|| wall_now + o.ejected_until_ms.saturating_sub(now)),
                ejected_for_ms: if ejected {
                    o.ejected_until_ms.saturating_sub(now)
                } else {
                    0
                },
                consecutive_failures: o.consecutive_failures,
                weight: b.declared.weight.get(),
                in_flight: b.state.in_flight.load(Ordering::Relaxed),
                eligible,
            }
        })
        .collect();

    // The same pick a request makes, on a copy of the cursor.
    let cursor = AtomicU64::new(pool.state.cursor.load(Ordering::Relaxed));
    let cx = PickContext {
        cursor: &cursor,
        hash: client_hash(client),
        exclude: &[],
        random: if pool.config.policy == LbPolicy::RandomTwoChoices {
            [rand::random(), rand::random()]
        } else {
            [0, 0]
        },
    };
    let picked = pool.balancer.pick(&pool.backends, &cx);
    let tier = serving.tier.map_or("nothing", |t| t.as_str());
    let why = match (&picked, serving.tier) {
        (None, _) => "no backend may take a request: the proxy answers 503".to_string(),
        (Some(p), _) => {
            let how = match pool.config.policy {
                LbPolicy::RoundRobin => "the next one in the smooth weighted round-robin cycle",
                LbPolicy::LeastConnections => {
                    "the fewest requests in flight for its weight (ties: the round-robin cycle)"
                }
                LbPolicy::IpHash => "the client address's place on the consistent-hash ring",
                LbPolicy::RandomTwoChoices => {
                    "the less loaded of two random backends (another ask may differ)"
                }
                LbPolicy::SingleActive => "the first member by declared order whose check passes",
            };
            let from = match p.tier {
                tandem_core::lb::Tier::Primaries => "among the usable primaries",
                tandem_core::lb::Tier::PanicPrimaries => {
                    "among all enabled primaries, usable or not (panic mode: too few are usable)"
                }
                tandem_core::lb::Tier::Backups => "among the usable backups (no primary is usable)",
                tandem_core::lb::Tier::PanicAll => {
                    "among every enabled backend (panic mode: none is usable)"
                }
            };
            format!("{how}, {from}")
        }
    };
    PoolExplained {
        name: pool.config.name.to_string(),
        policy: pool.config.policy.as_str(),
        panic_threshold_percent: pool.config.panic_threshold_percent,
        serving: tier,
        panic: serving.panic,
        backends,
        pick: picked.map(|p| pool.backends[p.index].declared.address.to_string()),
        why,
    }
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Registry, Source};
    use tandem_core::{
        Backend, BackendAddr, PathPrefix, Pool, PoolConfig, PoolName, Revision, Route, Snapshot,
    };

    fn q(host: &str, path: &str) -> Question {
        Question::parse(Some(host), Some(path), None, EncodedSlashes::Reject).unwrap()
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            revision: Revision(7),
            ..Default::default()
        };
        for (name, addrs) in [
            ("web", ["10.0.0.1:80", "10.0.0.2:80"]),
            ("api", ["10.0.1.1:80", "10.0.1.2:80"]),
        ] {
            let name = PoolName::new(name).unwrap();
            let mut backends: Vec<Backend> = addrs
                .iter()
                .map(|a| Backend::new(BackendAddr::new(a).unwrap()))
                .collect();
            backends[1].role = BackendRole::Backup;
            s.pools.insert(
                name.clone(),
                Pool {
                    config: PoolConfig::new(name),
                    backends,
                    revision: Revision(7),
                },
            );
        }
        let route = |host: &str, prefix: &str, pool: &str| Route {
            host: HostMatch::new(host).unwrap(),
            path_prefix: PathPrefix::new(prefix).unwrap(),
            pool: PoolName::new(pool).unwrap(),
            redirect_https: false,
            hsts_max_age_s: 0,
        };
        s.routes = vec![
            route("*", "/", "web"),
            route("*.example.com", "/", "web"),
            route("api.example.com", "/v1", "api"),
        ];
        s
    }

    #[test]
    fn questions_are_checked_like_requests() {
        let parse = |h, p, c| Question::parse(h, p, c, EncodedSlashes::Reject);
        assert_eq!(parse(None, None, None).unwrap_err().field, "host");
        assert_eq!(parse(Some("a b"), None, None).unwrap_err().field, "host");
        assert_eq!(
            parse(Some("a"), Some("no-slash"), None).unwrap_err().field,
            "path"
        );
        assert_eq!(
            parse(Some("a"), Some("/%2F"), None).unwrap_err().field,
            "path"
        );
        assert_eq!(
            parse(Some("a"), None, Some("nope")).unwrap_err().field,
            "client"
        );
        let ok = parse(
            Some("API.Example.com:8080"),
            Some("/v1/../v1/x"),
            Some("::1"),
        )
        .unwrap();
        assert_eq!(
            (ok.host.as_str(), ok.path.as_str()),
            ("api.example.com", "/v1/x")
        );
    }

    #[test]
    fn the_route_taken_is_the_lookups_and_the_others_are_listed_below_it() {
        let registry = Registry::new(4);
        let table = registry.build(&snapshot(), Source::Disk);
        let e = explain(&table, q("api.example.com", "/v1/orders"), &|_, _| None);
        let route = e.route.unwrap();
        assert_eq!(
            (route.host.as_str(), route.pool.as_str()),
            ("api.example.com", "api")
        );
        let order: Vec<_> = e.matching_routes.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(order, ["api.example.com", "*.example.com", "*"]);
        // A host whose routes do not match the path falls through.
        let e = explain(&table, q("api.example.com", "/v2"), &|_, _| None);
        assert_eq!(e.route.unwrap().host, "*.example.com");
    }

    #[test]
    fn the_pick_is_the_next_requests_and_asking_does_not_move_the_cursor() {
        let registry = Registry::new(4);
        let mut s = snapshot();
        let web = PoolName::new("web").unwrap();
        for b in &mut s.pools.get_mut(&web).unwrap().backends {
            b.role = BackendRole::Primary;
        }
        let table = registry.build(&s, Source::Disk);
        let pool = &table.pools.iter().find(|p| p.config.name == web).unwrap();
        let before = pool.state.cursor.load(Ordering::Relaxed);
        let first = explain(&table, q("x", "/"), &|_, _| None)
            .pool
            .unwrap()
            .pick;
        let again = explain(&table, q("x", "/"), &|_, _| None)
            .pool
            .unwrap()
            .pick;
        assert_eq!(first, again);
        assert_eq!(pool.state.cursor.load(Ordering::Relaxed), before);
        let real = crate::forward::pick::backend(pool, &[], 0).unwrap();
        assert_eq!(
            first.as_deref(),
            Some(pool.backends[real].declared.address.as_str())
        );
    }

    #[test]
    fn backends_say_their_tier_state_and_the_agents_reason() {
        let registry = Registry::new(4);
        let table = registry.build(&snapshot(), Source::Disk);
        let pool = PoolName::new("api").unwrap();
        registry.apply_health(
            false,
            vec![(
                pool.clone(),
                BackendAddr::new("10.0.1.1:80").unwrap(),
                tandem_core::health::HealthState::Unhealthy,
            )],
        );
        let note = |_: &PoolRt, i: usize| {
            (i == 0).then(|| HealthNote {
                reason: "HTTP 503 from 2/2 agents".into(),
                since_unix_ms: 1_700_000_000_000,
            })
        };
        let e = explain(&table, q("api.example.com", "/v1"), &note);
        let p = e.pool.unwrap();
        let (a, b) = (&p.backends[0], &p.backends[1]);
        assert_eq!(
            (a.tier, a.state, a.eligible),
            ("primary", "unhealthy", false)
        );
        assert_eq!(a.health_reason, "HTTP 503 from 2/2 agents");
        assert_eq!((b.tier, b.state, b.eligible), ("backup", "unknown", true));
        assert_eq!(p.serving, "backups");
        assert_eq!(p.pick.as_deref(), Some("10.0.1.2:80"));
        assert!(p.why.contains("backups"), "{}", p.why);
    }
}
