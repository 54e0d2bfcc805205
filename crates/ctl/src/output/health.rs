//! Backend health: what a command could learn of it ([`Health`]), merged
//! with the configured backends no agent has reported on (shown as
//! `unknown`), the `health` text, and the split-brain alerts of
//! `single_active` pools.

use std::collections::HashSet;

use tandem_proto::v1;

use super::declared::ordered;
use super::names::health_state_name;
use super::status::ago;
use super::table::Table;

/// One line for each `single_active` pool with more than one member whose
/// health check passes: every proxy still sends only to the first by
/// declared order, but two database primaries at once is a split brain
/// someone must look at.
pub fn single_active_alerts(pools: &[v1::Pool], health: &Health) -> Vec<String> {
    let Health::Known { reply, .. } = health else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in pools.iter().filter(|p| ordered(p)) {
        let mut claiming: Vec<&v1::Backend> = p
            .backends
            .iter()
            .filter(|b| b.admin_state != v1::AdminState::Disabled as i32)
            .filter(|b| {
                reply.backends.iter().any(|h| {
                    h.pool == p.name
                        && h.address == b.address
                        && h.state == v1::HealthState::Healthy as i32
                })
            })
            .collect();
        if claiming.len() < 2 {
            continue;
        }
        claiming.sort_by_key(|b| (b.order.unwrap_or(0), b.address.clone()));
        let names: Vec<&str> = claiming.iter().map(|b| b.address.as_str()).collect();
        out.push(format!(
            "pool/{} (single_active): {} members pass the health check ({}); proxies send only to {}, the first by declared order. Two primaries at once: check for a split brain",
            p.name,
            claiming.len(),
            names.join(", "),
            names[0]
        ));
    }
    out
}

/// What a command could learn of backend health.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// GetHealth answered: the backends to show (see [`with_unreported`]),
    /// and a note saying what is missing, if anything.
    Known {
        reply: v1::HealthReply,
        note: Option<String>,
    },
    /// GetHealth did not answer: why, as one line (`UNAVAILABLE: ...`).
    Unavailable(String),
}

impl Health {
    /// The one line printed after the data, if any.
    pub fn note(&self) -> Option<String> {
        match self {
            Self::Known { note, .. } => note.clone(),
            Self::Unavailable(why) => Some(format!("health: unavailable ({why})")),
        }
    }
}

/// The reason shown for a configured backend no agent has reported on.
pub const NOT_REPORTED: &str = "no agent has reported on it yet";

/// The note when the configuration could not be read to find those.
pub fn unreported_unknown_note(why: &str) -> String {
    format!(
        "backends no agent has reported on are not listed: cannot read the configuration ({why})"
    )
}

/// `reply`'s backends (only pool `only`'s, when given) plus every backend of
/// `pools` it does not mention, as `unknown`: such a backend takes traffic
/// though nobody has checked it, which people should see. In pool, then
/// address order.
pub fn with_unreported(
    reply: &v1::HealthReply,
    pools: &[v1::Pool],
    only: Option<&str>,
) -> v1::HealthReply {
    let wanted = |pool: &str| only.is_none_or(|only| only == pool);
    let reported: HashSet<(&str, &str)> = reply
        .backends
        .iter()
        .map(|b| (b.pool.as_str(), b.address.as_str()))
        .collect();
    let mut backends: Vec<v1::BackendHealth> = reply
        .backends
        .iter()
        .filter(|b| wanted(&b.pool))
        .cloned()
        .collect();
    for p in pools.iter().filter(|p| wanted(&p.name)) {
        for b in &p.backends {
            if !reported.contains(&(p.name.as_str(), b.address.as_str())) {
                backends.push(v1::BackendHealth {
                    pool: p.name.clone(),
                    address: b.address.clone(),
                    state: v1::HealthState::Unknown.into(),
                    since_unix_ms: 0,
                    reason: NOT_REPORTED.into(),
                    agents: Vec::new(),
                    admin_override: None,
                });
            }
        }
    }
    backends.sort_by(|a, b| (&a.pool, &a.address).cmp(&(&b.pool, &b.address)));
    v1::HealthReply {
        index: reply.index,
        backends,
        leader: reply.leader.clone(),
        term: reply.term,
    }
}

/// `health decided by control-1 (term 3)`.
pub fn decided_by(h: &v1::HealthReply) -> String {
    if h.leader.is_empty() {
        format!(
            "health decided by no replica right now: no raft leader is known (term {})",
            h.term
        )
    } else {
        format!("health decided by {} (term {})", h.leader, h.term)
    }
}

/// The `health` command's text, and the health part of `status`: who
/// decides, the table, then the note if any.
pub fn health_view(health: &Health, now_ms: i64) -> String {
    let mut out = match health {
        Health::Known { reply, .. } => health_reply(reply, now_ms),
        Health::Unavailable(_) => String::new(),
    };
    if let Some(note) = health.note() {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// Who decides, then the table.
pub fn health_reply(reply: &v1::HealthReply, now_ms: i64) -> String {
    let mut out = decided_by(reply);
    out.push('\n');
    if reply.backends.is_empty() {
        out.push_str("no backends\n");
    } else {
        out.push_str(&health_table(&reply.backends, now_ms));
    }
    out
}

pub fn health_table(backends: &[v1::BackendHealth], now_ms: i64) -> String {
    let mut t = Table::new(&["pool", "backend", "state", "since", "reason", "agents"]);
    for b in backends {
        t.row(vec![
            b.pool.clone(),
            b.address.clone(),
            health_state_name(b.state).into(),
            if b.since_unix_ms > 0 {
                ago(now_ms, b.since_unix_ms)
            } else {
                String::new()
            },
            b.reason.clone(),
            agents_compact(&b.agents),
        ]);
    }
    t.render()
}

/// Each agent's view in a few characters:
/// `agent-1:down(HTTP 503) agent-2:up agent-3:pending(HTTP 200) agent-4:(silent)`.
/// `pending`: not yet `rise` successes or `fall` failures in a row;
/// `(silent)`: no report for three intervals, so it does not vote.
pub fn agents_compact(agents: &[v1::AgentView]) -> String {
    let view = |a: &v1::AgentView| {
        let id = if a.agent_id.is_empty() {
            "?"
        } else {
            &a.agent_id
        };
        let with_detail = |word: &str| {
            let detail = a
                .last_detail
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if detail.is_empty() {
                format!("{id}:{word}")
            } else {
                format!("{id}:{word}({detail})")
            }
        };
        match (a.live, a.healthy) {
            (false, _) => format!("{id}:(silent)"),
            (true, Some(true)) => format!("{id}:up"),
            (true, Some(false)) => with_detail("down"),
            (true, None) => with_detail("pending"),
        }
    };
    agents.iter().map(view).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::output::declared::{backend_list, pool_detail};
    use crate::output::json::{BackendsJson, StatusJson, to_json};
    use crate::output::status::status;
    use crate::output::testdata::*;

    fn db(states: &[(&str, u32, v1::HealthState)]) -> (Vec<v1::Pool>, Health) {
        let pool = v1::Pool {
            name: "db".into(),
            policy: v1::LbPolicy::SingleActive.into(),
            backends: states
                .iter()
                .map(|(a, order, _)| v1::Backend {
                    address: (*a).into(),
                    order: Some(*order),
                    admin_state: v1::AdminState::Enabled.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let reply = v1::HealthReply {
            backends: states
                .iter()
                .map(|(a, _, state)| v1::BackendHealth {
                    pool: "db".into(),
                    address: (*a).into(),
                    state: (*state).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        (vec![pool], Health::Known { reply, note: None })
    }

    #[test]
    fn two_members_of_a_single_active_pool_passing_their_check_raise_an_alert() {
        use v1::HealthState::{Healthy, Unhealthy};
        let (pools, health) = db(&[
            ("10.0.0.1:5432", 1, Unhealthy),
            ("10.0.0.2:5432", 2, Healthy),
        ]);
        assert!(single_active_alerts(&pools, &health).is_empty());
        let (pools, health) = db(&[("10.0.0.9:5432", 1, Healthy), ("10.0.0.2:5432", 2, Healthy)]);
        let alerts = single_active_alerts(&pools, &health);
        assert_eq!(alerts.len(), 1);
        assert!(
            alerts[0].starts_with("pool/db (single_active): 2 members pass the health check (10.0.0.9:5432, 10.0.0.2:5432); proxies send only to 10.0.0.9:5432"),
            "{}",
            alerts[0]
        );
        // Shown loudly in `status`, with the proxies' unbound listeners.
        let s = v1::StatusReply {
            revision: 3,
            replica: "control-1".into(),
            database_reachable: true,
            traffic: Vec::new(),
            nodes: vec![v1::NodeStatus {
                node_id: "proxy-1".into(),
                kind: v1::NodeKind::Proxy.into(),
                applied_revision: 3,
                listeners: vec![v1::ListenerStatus {
                    listen: "0.0.0.0:5432".into(),
                    pool: "db".into(),
                    bound: false,
                    error: "Address already in use (os error 98)".into(),
                }],
                alerts: vec!["two claim".into()],
                ..Default::default()
            }],
            stale: None,
            ..Default::default()
        };
        let out = status(&s, &health, &alerts, 0);
        assert!(out.contains("proxy-1: tcp listener 0.0.0.0:5432 (pool/db) NOT BOUND: Address already in use (os error 98)\n"), "{out}");
        assert!(out.contains("ALERT proxy-1: two claim\n"), "{out}");
        assert!(
            out.contains("ALERT pool/db (single_active): 2 members"),
            "{out}"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &alerts)));
        assert_eq!(v["nodes"][0]["listeners"][0]["bound"], false);
        assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
        // The pool's backends in declared order, with it.
        let detail = pool_detail(&pools[0]);
        assert!(
            detail.contains(
                "ADDRESS         ORDER   WEIGHT   ROLE          STATE\n10.0.0.9:5432   1"
            ),
            "{detail}"
        );
    }

    #[test]
    fn agents_read_compactly() {
        assert_eq!(
            agents_compact(&[
                agent("agent-1", Some(false), "HTTP 503", true),
                agent("agent-2", Some(true), "HTTP 200", true),
                agent("agent-3", None, "connect: connection\nrefused", true),
                agent("agent-4", Some(false), "HTTP 503", false),
                agent("agent-5", Some(false), "", true),
            ]),
            "agent-1:down(HTTP 503) agent-2:up agent-3:pending(connect: connection refused) \
             agent-4:(silent) agent-5:down"
        );
        assert_eq!(agents_compact(&[]), "");
    }

    #[test]
    fn health_renders_as_a_table_under_who_decides() {
        let healthy = v1::BackendHealth {
            address: "10.0.0.6:3000".into(),
            state: v1::HealthState::Healthy.into(),
            since_unix_ms: 1_003_400 - 125_000,
            reason: "HTTP 200 from 2/2 agents".into(),
            agents: vec![
                agent("agent-1", Some(true), "HTTP 200", true),
                agent("agent-2", Some(true), "HTTP 200", true),
            ],
            ..failing()
        };
        let reply = with_unreported(&health_reply_of(vec![healthy, failing()]), &[shop()], None);
        let out = health_view(&Health::Known { reply, note: None }, 1_003_400);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "health decided by control-1 (term 3)");
        assert_eq!(
            lines[1],
            "POOL   BACKEND         STATE       SINCE     REASON                     AGENTS"
        );
        assert_eq!(
            lines[2],
            "shop   10.0.0.5:3000   unhealthy   12s ago   HTTP 503 from 2/2 agents   \
             agent-1:down(HTTP 503) agent-2:down(HTTP 503) agent-3:(silent)"
        );
        assert_eq!(
            lines[3],
            "shop   10.0.0.6:3000   healthy     2m ago    HTTP 200 from 2/2 agents   \
             agent-1:up agent-2:up"
        );
        assert_eq!(lines.len(), 4, "{out}");

        let empty = health_reply_of(vec![]);
        assert_eq!(
            health_reply(&empty, 0),
            "health decided by control-1 (term 3)\nno backends\n"
        );
        let leaderless = v1::HealthReply {
            leader: String::new(),
            ..empty
        };
        assert_eq!(
            decided_by(&leaderless),
            "health decided by no replica right now: no raft leader is known (term 3)"
        );
    }

    #[test]
    fn configured_backends_nobody_reported_on_are_unknown() {
        let mut web = shop();
        web.name = "web".into();
        web.backends.truncate(1);
        let reported = health_reply_of(vec![
            health_of("web", "10.0.0.9:80", v1::HealthState::Healthy),
            failing(),
        ]);
        let all = with_unreported(&reported, &[web.clone(), shop()], None);
        let rows: Vec<(&str, &str, &str, &str)> = all
            .backends
            .iter()
            .map(|b| {
                (
                    b.pool.as_str(),
                    b.address.as_str(),
                    health_state_name(b.state),
                    b.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "shop",
                    "10.0.0.5:3000",
                    "unhealthy",
                    "HTTP 503 from 2/2 agents"
                ),
                ("shop", "10.0.0.6:3000", "unknown", NOT_REPORTED),
                ("web", "10.0.0.5:3000", "unknown", NOT_REPORTED),
                // Reported though not configured (any more): still shown.
                ("web", "10.0.0.9:80", "healthy", ""),
            ]
        );
        assert_eq!(
            (all.index, all.term, all.leader.as_str()),
            (42, 3, "control-1")
        );

        let only_web = with_unreported(&reported, &[web, shop()], Some("web"));
        assert!(only_web.backends.iter().all(|b| b.pool == "web"));
        assert_eq!(only_web.backends.len(), 2);

        let out = health_table(&all.backends, 1_003_400);
        let unreported = out
            .lines()
            .find(|l| l.starts_with("shop   10.0.0.6:3000"))
            .unwrap();
        assert_eq!(
            unreported,
            "shop   10.0.0.6:3000   unknown     -         no agent has reported on it yet   -"
        );
    }

    #[test]
    fn backend_list_gains_a_health_column() {
        let p = shop();
        let health = Health::Known {
            reply: with_unreported(
                &health_reply_of(vec![failing()]),
                std::slice::from_ref(&p),
                Some("shop"),
            ),
            note: None,
        };
        assert_eq!(
            backend_list(&p, &health),
            "\
ADDRESS         WEIGHT   ROLE      STATE      HEALTH
10.0.0.5:3000   2        backup    enabled    unhealthy
10.0.0.6:3000   1        primary   draining   unknown
"
        );
        let v = parse(&to_json(&BackendsJson::new(&p, &health)));
        assert_eq!(v["pool"], "shop");
        assert_eq!(v["backends"][1]["admin_state"], "draining");
        assert_eq!(v["health"][0]["state"], "unhealthy");
        assert_eq!(v["health"][1]["state"], "unknown");

        let gone = Health::Unavailable("UNAVAILABLE: no raft".into());
        assert_eq!(
            backend_list(&p, &gone),
            "\
ADDRESS         WEIGHT   ROLE      STATE
10.0.0.5:3000   2        backup    enabled
10.0.0.6:3000   1        primary   draining
health: unavailable (UNAVAILABLE: no raft)
"
        );
        assert_eq!(
            parse(&to_json(&BackendsJson::new(&p, &gone)))["health"],
            Value::Null
        );
        let empty = v1::Pool {
            name: "bare".into(),
            ..Default::default()
        };
        assert_eq!(backend_list(&empty, &gone), "pool/bare has no backends\n");
    }

    #[test]
    fn notes_follow_the_health_table() {
        let health = Health::Known {
            reply: health_reply_of(vec![]),
            note: Some(unreported_unknown_note("UNAVAILABLE: database down")),
        };
        assert_eq!(
            health_view(&health, 0),
            "health decided by control-1 (term 3)\nno backends\n\
             backends no agent has reported on are not listed: cannot read the configuration \
             (UNAVAILABLE: database down)\n"
        );
    }
}
