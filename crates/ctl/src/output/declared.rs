//! The declared configuration as text: pools (their settings, health check
//! and TCP settings), backends, HTTP and TCP routes, certificates and whole
//! snapshots.

use std::collections::BTreeMap;

use tandem_proto::v1;

use super::health::Health;
use super::json::BackendTlsJson;
use super::names::{
    admin_state_name, health_kind_name, health_state_name, on_unhealthy_name, policy_name,
    role_name,
};
use super::table::{Table, fields, ms, num, percent};
use crate::duration::format_size;

/// A Unix time in seconds as a UTC date: `2027-03-01 12:00 UTC`.
pub fn unix_date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// `cert list`: a row per certificate.
pub fn certificates_table(reply: &v1::ListCertificatesReply) -> String {
    if reply.certificates.is_empty() {
        return format!("no certificates (revision {})", reply.revision);
    }
    let mut t = Table::new(&["name", "names (SAN)", "not after", "key", "served by"]);
    for c in &reply.certificates {
        let served = if c.proxies.is_empty() {
            "-".to_string()
        } else {
            c.proxies.join(", ")
        };
        t.row(vec![
            c.name.clone(),
            c.sans.join(", "),
            unix_date(c.not_after_unix_s),
            c.key_type.clone(),
            served,
        ]);
    }
    t.render()
}

/// `http GET /healthz (200-399) every 1s, timeout 1s, rise 2, fall 2`.
pub fn health_summary(h: Option<&v1::HealthCheck>) -> String {
    let Some(h) = h else {
        return String::new();
    };
    let kind = h.kind.map(health_kind_name).unwrap_or("http");
    let port = h.port.filter(|p| *p != 0);
    let mut s = if kind == "tcp" {
        match port {
            Some(p) => format!("tcp connect port {p}"),
            None => "tcp connect".to_string(),
        }
    } else {
        let method = h.method.as_deref().unwrap_or("GET");
        let path = h.path.as_deref().unwrap_or("/");
        let mut s = format!("{kind} {method} {path}");
        if let Some(host) = h.host.as_deref().filter(|h| !h.is_empty()) {
            s.push_str(&format!(" Host {host}"));
        }
        if let Some(p) = port {
            s.push_str(&format!(" port {p}"));
        }
        if let (Some(min), Some(max)) = (h.expected_status_min, h.expected_status_max) {
            s.push_str(&format!(" ({min}-{max})"));
        }
        s
    };
    if h.interval_ms.is_some() {
        s.push_str(&format!(" every {}", ms(h.interval_ms)));
    }
    for (label, v) in [
        ("timeout", ms(h.timeout_ms)),
        ("rise", num(h.rise)),
        ("fall", num(h.fall)),
    ] {
        if !v.is_empty() {
            s.push_str(&format!(", {label} {v}"));
        }
    }
    s
}

/// Does the pool's policy follow the declared order (show it)?
pub(super) fn ordered(p: &v1::Pool) -> bool {
    p.policy == v1::LbPolicy::SingleActive as i32
}

/// `backend list`: a pool's backends, with a HEALTH column when the replica
/// could tell, then the note saying why it could not (or what is missing).
pub fn backend_list(p: &v1::Pool, health: &Health) -> String {
    if p.backends.is_empty() {
        return format!("pool/{} has no backends\n", p.name);
    }
    let mut out = match health {
        Health::Known { reply, .. } => {
            let states: BTreeMap<&str, i32> = reply
                .backends
                .iter()
                .filter(|b| b.pool == p.name)
                .map(|b| (b.address.as_str(), b.state))
                .collect();
            backends_rows(&p.backends, Some(&states), ordered(p))
        }
        Health::Unavailable(_) => backends_rows(&p.backends, None, ordered(p)),
    };
    if let Some(note) = health.note() {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// Backends as rows; with `health` (address to state), a HEALTH column in
/// which a backend no agent has reported on is `unknown`.
fn backends_rows(
    backends: &[v1::Backend],
    health: Option<&BTreeMap<&str, i32>>,
    with_order: bool,
) -> String {
    let mut headers = vec!["address", "weight", "role", "state"];
    if with_order {
        headers.insert(1, "order");
    }
    if health.is_some() {
        headers.push("health");
    }
    let mut t = Table::new(&headers);
    let mut sorted: Vec<&v1::Backend> = backends.iter().collect();
    if with_order {
        sorted.sort_by_key(|b| (b.order.unwrap_or(0), b.address.clone()));
    }
    for b in sorted {
        let mut row = vec![
            b.address.clone(),
            num(b.weight),
            role_name(b.role).into(),
            admin_state_name(b.admin_state).into(),
        ];
        if with_order {
            row.insert(1, num(b.order));
        }
        if let Some(health) = health {
            let state = health
                .get(b.address.as_str())
                .copied()
                .unwrap_or(v1::HealthState::Unknown as i32);
            row.push(health_state_name(state).into());
        }
        t.row(row);
    }
    t.render()
}

/// `pool get`: the settings as aligned fields, then the backends.
/// One line for `pool get`.
fn backend_tls_summary(p: &v1::Pool) -> String {
    let Some(t) = p.backend_tls.as_ref().and_then(BackendTlsJson::from) else {
        return "off (plain HTTP)".into();
    };
    let verify = match t.verify_against {
        "none" => "NOT VERIFIED (--backend-tls-insecure)".to_string(),
        "pool bundle" => format!(
            "verified against the pool's CA bundle ({} certificate{})",
            t.ca_certificates,
            if t.ca_certificates == 1 { "" } else { "s" }
        ),
        _ => "verified against the Mozilla roots".to_string(),
    };
    let sni = if t.sni.is_empty() {
        "each backend's host".to_string()
    } else {
        t.sni.to_string()
    };
    format!("on, {verify}, SNI {sni}")
}

pub fn pool_detail(p: &v1::Pool) -> String {
    let retry = p
        .retry
        .as_ref()
        .map(|r| {
            format!(
                "{} (per try {}, budget {})",
                num(r.attempts),
                ms(r.per_try_timeout_ms),
                percent(r.budget_percent)
            )
        })
        .unwrap_or_default();
    let outlier = p
        .outlier
        .as_ref()
        .map(|o| {
            format!(
                "eject after {} failures for {}, at most {} of backends",
                num(o.consecutive_failures),
                ms(o.base_ejection_ms),
                percent(o.max_ejected_percent)
            )
        })
        .unwrap_or_default();
    let mut out = fields(&[
        ("name", p.name.clone()),
        ("revision", p.revision.to_string()),
        ("policy", policy_name(p.policy).into()),
        ("health check", health_summary(p.health_check.as_ref())),
        ("connect timeout", ms(p.connect_timeout_ms)),
        ("request timeout", ms(p.request_timeout_ms)),
        ("retries", retry),
        ("outlier detection", outlier),
        ("panic threshold", percent(p.panic_threshold_percent)),
        ("tcp routes", tcp_summary(p)),
        (
            "max request body",
            p.max_request_body_bytes
                .map(|n| {
                    if n == 0 {
                        "no limit".into()
                    } else {
                        format_size(n)
                    }
                })
                .unwrap_or_default(),
        ),
        ("upstream idle timeout", ms(p.upstream_idle_timeout_ms)),
        ("tunnel idle timeout", ms(p.tunnel_idle_timeout_ms)),
        ("tls to backends", backend_tls_summary(p)),
    ]);
    out.push('\n');
    if p.backends.is_empty() {
        out.push_str("no backends\n");
    } else {
        out.push_str(&backends_rows(&p.backends, None, ordered(p)));
    }
    out
}

/// `idle 30m, max 100 per backend (queue 128 for 5s), unhealthy: close after 0ms, proxy protocol v2`.
pub fn tcp_summary(p: &v1::Pool) -> String {
    let Some(t) = &p.tcp else {
        return String::new();
    };
    let idle = match t.idle_timeout_ms {
        Some(0) => "no idle timeout".to_string(),
        v => format!("idle {}", ms(v)),
    };
    let limit = match t.max_connections {
        Some(0) | None => "no connection limit".to_string(),
        Some(n) => format!(
            "max {n} per backend (queue {} for {})",
            num(t.max_queue),
            ms(t.queue_timeout_ms)
        ),
    };
    let by_policy = if ordered(p) { "close" } else { "keep" };
    let set = t.on_unhealthy.map(on_unhealthy_name).unwrap_or("policy");
    let (action, why) = match set {
        "policy" => (by_policy, " (policy)"),
        other => (other, ""),
    };
    let unhealthy = if action == "close" {
        format!("unhealthy: close after {}{why}", ms(t.unhealthy_grace_ms))
    } else {
        format!("unhealthy: {action}{why}")
    };
    let proxy = if t.proxy_protocol == Some(true) {
        ", proxy protocol v2"
    } else {
        ""
    };
    format!("{idle}, {limit}, {unhealthy}{proxy}")
}

pub fn pools_table(pools: &[v1::Pool]) -> String {
    let mut t = Table::new(&["name", "policy", "backends", "health check", "revision"]);
    for p in pools {
        let usable = p
            .backends
            .iter()
            .filter(|b| b.admin_state == v1::AdminState::Enabled as i32)
            .count();
        t.row(vec![
            p.name.clone(),
            policy_name(p.policy).into(),
            format!("{usable}/{} enabled", p.backends.len()),
            health_summary(p.health_check.as_ref()),
            p.revision.to_string(),
        ]);
    }
    t.render()
}

/// `route list`: the HTTP routes, then the TCP ones.
pub fn route_list(reply: &v1::ListRoutesReply) -> String {
    if reply.routes.is_empty() && reply.tcp_routes.is_empty() {
        return format!("no routes (revision {})", reply.revision);
    }
    let mut out = String::new();
    if !reply.routes.is_empty() {
        out.push_str(&routes_table(&reply.routes));
    }
    if !reply.tcp_routes.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&tcp_routes_table(&reply.tcp_routes));
    }
    out
}

pub fn tcp_routes_table(routes: &[v1::TcpRoute]) -> String {
    let mut t = Table::new(&["tcp listen", "pool"]);
    for r in routes {
        t.row(vec![r.listen.clone(), r.pool.clone()]);
    }
    t.render()
}

pub fn routes_table(routes: &[v1::Route]) -> String {
    // The https column only when some route uses it.
    let https = routes
        .iter()
        .any(|r| r.redirect_https || r.hsts_max_age_s > 0);
    let mut t = if https {
        Table::new(&["host", "prefix", "pool", "https"])
    } else {
        Table::new(&["host", "prefix", "pool"])
    };
    for r in routes {
        let host = if r.host.is_empty() { "*" } else { &r.host };
        let mut row = vec![host.into(), r.path_prefix.clone(), r.pool.clone()];
        if https {
            let mut what = Vec::new();
            if r.redirect_https {
                what.push("redirect".to_string());
            }
            if r.hsts_max_age_s > 0 {
                what.push(format!("hsts={}s", r.hsts_max_age_s));
            }
            row.push(what.join(" "));
        }
        t.row(row);
    }
    t.render()
}

pub(super) fn backend_count(s: &v1::Snapshot) -> usize {
    s.pools.iter().map(|p| p.backends.len()).sum()
}

/// `revision 7: 2 pools, 3 backends, 1 route`.
pub fn snapshot_summary(s: &v1::Snapshot) -> String {
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    format!(
        "revision {}: {}, {}, {}",
        s.revision,
        plural(s.pools.len(), "pool"),
        plural(backend_count(s), "backend"),
        plural(s.routes.len(), "route")
    )
}

pub fn snapshot(s: &v1::Snapshot) -> String {
    let mut out = snapshot_summary(s);
    out.push_str("\n\n");
    if !s.pools.is_empty() {
        out.push_str(&pools_table(&s.pools));
        out.push('\n');
    }
    if !s.routes.is_empty() {
        out.push_str(&routes_table(&s.routes));
    }
    if !s.tcp_routes.is_empty() {
        out.push('\n');
        out.push_str(&tcp_routes_table(&s.tcp_routes));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::{SnapshotJson, to_json};
    use crate::output::testdata::*;

    #[test]
    fn backends_render_as_a_table() {
        assert_eq!(
            backends_rows(&shop().backends, None, false),
            "\
ADDRESS         WEIGHT   ROLE      STATE
10.0.0.5:3000   2        backup    enabled
10.0.0.6:3000   1        primary   draining
"
        );
    }

    #[test]
    fn pool_list_summarises_each_pool() {
        let out = pools_table(&[shop()]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME   POLICY"), "{out}");
        assert!(lines[1].contains("least_connections"), "{out}");
        assert!(lines[1].contains("1/2 enabled"), "{out}");
        assert!(
            lines[1]
                .contains("http GET /healthz (200-399) every 1s, timeout 500ms, rise 2, fall 3"),
            "{out}"
        );
        assert!(lines[1].ends_with(" 7"), "{out}");
    }

    #[test]
    fn pool_detail_shows_every_setting() {
        let out = pool_detail(&shop());
        for needle in [
            "name:                   shop\n",
            "policy:                 least_connections\n",
            "retries:                1 (per try 5s, budget 20%)\n",
            "outlier detection:      eject after 5 failures for 30s, at most 50% of backends\n",
            "panic threshold:        50%\n",
            "max request body:       10MiB\n",
            "upstream idle timeout:  4s\n",
            "tunnel idle timeout:    5m\n",
            "10.0.0.6:3000   1        primary   draining\n",
        ] {
            assert!(out.contains(needle), "{needle:?} not in\n{out}");
        }
    }

    #[test]
    fn snapshot_summary_counts() {
        let s = v1::Snapshot {
            revision: 7,
            pools: vec![shop()],
            routes: vec![v1::Route {
                host: "shop.local".into(),
                path_prefix: "/".into(),
                pool: "shop".into(),
                ..Default::default()
            }],
            stale: None,
            tcp_routes: vec![v1::TcpRoute {
                listen: "0.0.0.0:5432".into(),
                pool: "shop".into(),
            }],
            certificates: vec![],
            ..Default::default()
        };
        assert_eq!(
            snapshot_summary(&s),
            "revision 7: 1 pool, 2 backends, 1 route"
        );
        assert!(snapshot(&s).contains("HOST         PREFIX   POOL\nshop.local   /        shop\n"));
        assert!(snapshot(&s).contains("TCP LISTEN     POOL\n0.0.0.0:5432   shop\n"));
        let v = parse(&to_json(&SnapshotJson::from(&s)));
        assert_eq!(v["tcp_routes"][0]["listen"], "0.0.0.0:5432");
    }
}
