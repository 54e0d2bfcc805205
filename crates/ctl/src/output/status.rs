//! `status` as text: the replica and its database, every proxy and agent,
//! each backend's traffic merged across proxies, and the warning printed
//! with an answer from a replica's copy in memory.

use tandem_proto::v1;

use super::health::{Health, health_view};
use super::names::node_kind_name;
use super::table::{Table, fields};

/// The one-line warning printed (on stderr) with an answer from memory:
/// `warning: control-2 answered from its copy in memory (revision 7): it
/// cannot reach its database 127.0.0.1:5432/tandem since 35s ago
/// (connection refused); changes made since may be missing`.
pub fn stale_warning(s: &v1::StaleRead, revision: u64, now_ms: i64) -> String {
    let copied = if s.copied_from.is_empty() {
        String::new()
    } else {
        format!(", copied from {}", s.copied_from)
    };
    let cause = if s.cause.is_empty() {
        String::new()
    } else {
        format!(" ({})", s.cause)
    };
    format!(
        "warning: {} answered from its copy in memory (revision {revision}{copied}): it cannot reach its database {} since {}{cause}; changes made since may be missing",
        s.replica,
        s.database,
        ago(now_ms, s.since_unix_ms),
    )
}

/// How long ago a Unix-millisecond time was, coarsely: `3s ago`, `5m ago`.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let secs = (now_ms.saturating_sub(then_ms) / 1_000).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `status`: the replica and database, every proxy and agent (with their
/// TCP listeners that are not bound and their alerts), alerts from the
/// health table, then health.
pub fn status(s: &v1::StatusReply, health: &Health, alerts: &[String], now_ms: i64) -> String {
    let mut out = fields(&[
        ("revision", s.revision.to_string()),
        ("replica", s.replica.clone()),
        (
            "database",
            if s.database_reachable {
                "reachable".into()
            } else {
                "UNREACHABLE (config writes fail; reads and watch are served from memory; health keeps flowing)".into()
            },
        ),
    ]);
    out.push('\n');
    out.push_str(&nodes_table(s, now_ms));
    let mut problems = Vec::new();
    for n in &s.nodes {
        for l in n.listeners.iter().filter(|l| !l.bound) {
            problems.push(format!(
                "{}: tcp listener {} (pool/{}) NOT BOUND: {}",
                n.node_id, l.listen, l.pool, l.error
            ));
        }
        for a in &n.alerts {
            problems.push(format!("ALERT {}: {a}", n.node_id));
        }
    }
    problems.extend(alerts.iter().map(|a| format!("ALERT {a}")));
    if !problems.is_empty() {
        out.push('\n');
        for p in problems {
            out.push_str(&p);
            out.push('\n');
        }
    }
    if !s.traffic.is_empty() {
        out.push('\n');
        out.push_str(&traffic_table(s));
    }
    out.push('\n');
    out.push_str(&health_view(health, now_ms));
    out
}

/// Each backend's traffic over the proxies' last few seconds, merged.
fn traffic_table(s: &v1::StatusReply) -> String {
    let mut t = Table::new(&[
        "pool",
        "backend",
        "proxies",
        "req/s",
        "err/s",
        "5xx/s",
        "failed tries/s",
        "p50",
        "p99",
    ]);
    let ms = |v: f64| {
        if v > 0.0 {
            format!("≤{v} ms")
        } else {
            "-".into()
        }
    };
    for m in &s.traffic {
        let failed = m.connect_failures_per_s + m.timeouts_per_s + m.resets_per_s + m.invalid_per_s;
        t.row(vec![
            m.pool.clone(),
            m.address.clone(),
            m.proxies.to_string(),
            format!("{:.1}", m.requests_per_s),
            format!("{:.2}", m.errors_per_s),
            format!("{:.2}", m.responses_per_s.get(4).copied().unwrap_or(0.0)),
            format!("{failed:.2}"),
            ms(m.p50_ms),
            ms(m.p99_ms),
        ]);
    }
    format!(
        "traffic over the proxies' last few seconds (p50/p99: time to the answer's head, to the bucket bound)\n{}",
        t.render()
    )
}

fn nodes_table(s: &v1::StatusReply, now_ms: i64) -> String {
    if s.nodes.is_empty() && !s.database_reachable {
        return "proxies and agents: unknown while the database is unreachable (their reports live there)\n".into();
    }
    if s.nodes.is_empty() {
        return "no proxies or agents have reported yet\n".into();
    }
    let mut t = Table::new(&[
        "node",
        "kind",
        "zone",
        "applied",
        "lag",
        "last seen",
        "replica",
        "detail",
    ]);
    for n in &s.nodes {
        let mut seen = ago(now_ms, n.last_seen_unix_ms);
        if n.stale {
            seen.push_str(" STALE");
        }
        t.row(vec![
            n.node_id.clone(),
            node_kind_name(n.kind).into(),
            n.zone.clone(),
            n.applied_revision.to_string(),
            s.revision.saturating_sub(n.applied_revision).to_string(),
            seen,
            n.replica.clone(),
            n.detail.clone(),
        ]);
    }
    let mut out = t.render();
    let stale: Vec<&str> = s
        .nodes
        .iter()
        .filter(|n| n.stale)
        .map(|n| n.node_id.as_str())
        .collect();
    if !stale.is_empty() {
        out.push_str(&format!(
            "STALE: {} sent no report for over {} s (nodes report every {} s): down, or cut off from the control plane\n",
            stale.join(", "),
            tandem_proto::NODE_STALE_AFTER.as_secs(),
            tandem_proto::REPORT_APPLIED_EVERY.as_secs(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::output::json::{SnapshotJson, StatusJson, to_json};
    use crate::output::testdata::*;

    #[test]
    fn status_shows_each_backends_traffic_merged_across_proxies() {
        let s = v1::StatusReply {
            revision: 3,
            replica: "control-1".into(),
            database_reachable: true,
            traffic: vec![v1::MergedTraffic {
                pool: "shop".into(),
                address: "10.0.0.5:3000".into(),
                proxies: 2,
                requests_per_s: 120.5,
                errors_per_s: 1.25,
                responses_per_s: vec![0.0, 119.0, 0.0, 0.25, 1.0],
                connect_failures_per_s: 0.25,
                p50_ms: 1.0,
                p99_ms: 25.0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = status(&s, &Health::Unavailable("x".into()), &[], 0);
        assert!(
            out.contains(
                "POOL   BACKEND         PROXIES   REQ/S   ERR/S   5XX/S   FAILED TRIES/S   P50     P99\n\
                 shop   10.0.0.5:3000   2         120.5   1.25    1.00    0.25             ≤1 ms   ≤25 ms\n"
            ),
            "{out}"
        );
        let v = parse(&to_json(&StatusJson::new(
            &s,
            &Health::Unavailable("x".into()),
            &[],
        )));
        assert_eq!(v["traffic"][0]["requests_per_s"], 120.5);
        assert_eq!(v["traffic"][0]["responses_per_s"][4], 1.0);
        assert_eq!(v["traffic"][0]["p99_ms"], 25.0);
    }

    #[test]
    fn status_shows_lag_and_age() {
        let s = v1::StatusReply {
            revision: 12,
            replica: "control-1".into(),
            database_reachable: true,
            traffic: Vec::new(),
            nodes: vec![
                v1::NodeStatus {
                    node_id: "proxy-1".into(),
                    kind: v1::NodeKind::Proxy.into(),
                    applied_revision: 10,
                    zone: "a".into(),
                    last_seen_unix_ms: 1_000_000,
                    replica: "control-1".into(),
                    detail: String::new(),
                    stale: false,
                    ..Default::default()
                },
                v1::NodeStatus {
                    node_id: "agent-2".into(),
                    kind: v1::NodeKind::Agent.into(),
                    applied_revision: 12,
                    zone: "b".into(),
                    last_seen_unix_ms: 980_000,
                    replica: "control-2".into(),
                    detail: String::new(),
                    stale: true,
                    ..Default::default()
                },
            ],
            stale: None,
            ..Default::default()
        };
        let health = Health::Known {
            reply: health_reply_of(vec![failing()]),
            note: None,
        };
        let out = status(&s, &health, &[], 1_003_400);
        assert_eq!(
            out,
            "\
revision:  12
replica:   control-1
database:  reachable

NODE      KIND    ZONE   APPLIED   LAG   LAST SEEN       REPLICA     DETAIL
proxy-1   proxy   a      10        2     3s ago          control-1   -
agent-2   agent   b      12        0     23s ago STALE   control-2   -
STALE: agent-2 sent no report for over 15 s (nodes report every 5 s): down, or cut off from the control plane

health decided by control-1 (term 3)
POOL   BACKEND         STATE       SINCE     REASON                     AGENTS
shop   10.0.0.5:3000   unhealthy   12s ago   HTTP 503 from 2/2 agents   agent-1:down(HTTP 503) agent-2:down(HTTP 503) agent-3:(silent)
"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &[])));
        assert_eq!(v["nodes"][0]["kind"], "proxy");
        assert_eq!(v["nodes"][0]["lag"], 2);
        assert_eq!(v["nodes"][0]["stale"], false);
        assert_eq!(v["nodes"][1]["stale"], true);
        assert_eq!(v["database_reachable"], true);
        assert_eq!(v["health"]["leader"], "control-1");
        assert_eq!(v["health"]["backends"][0]["state"], "unhealthy");
        assert!(v.get("health_error").is_none(), "{v}");
    }

    #[test]
    fn status_without_health_still_shows_the_rest_and_says_why() {
        let s = v1::StatusReply {
            revision: 3,
            replica: "control-2".into(),
            database_reachable: true,
            nodes: vec![],
            stale: None,
            traffic: Vec::new(),
            ..Default::default()
        };
        let health = Health::Unavailable("UNIMPLEMENTED: unknown method GetHealth".into());
        assert_eq!(
            status(&s, &health, &[], 0),
            "\
revision:  3
replica:   control-2
database:  reachable

no proxies or agents have reported yet

health: unavailable (UNIMPLEMENTED: unknown method GetHealth)
"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &[])));
        assert_eq!(v["health"], Value::Null);
        assert_eq!(v["health_error"], "UNIMPLEMENTED: unknown method GetHealth");
        assert_eq!(v["revision"], 3);
    }

    #[test]
    fn answers_from_memory_say_so_in_one_line_and_in_json() {
        let stale = v1::StaleRead {
            replica: "control-2".into(),
            database: "127.0.0.1:5432/tandem".into(),
            cause: "connection refused".into(),
            since_unix_ms: 1_000_000,
            copied_from: String::new(),
        };
        let line = stale_warning(&stale, 7, 1_035_000);
        assert_eq!(
            line,
            "warning: control-2 answered from its copy in memory (revision 7): it cannot reach \
             its database 127.0.0.1:5432/tandem since 35s ago (connection refused); changes made \
             since may be missing"
        );
        let copied = v1::StaleRead {
            copied_from: "control-1".into(),
            ..stale.clone()
        };
        assert!(
            stale_warning(&copied, 7, 1_035_000).contains("(revision 7, copied from control-1)")
        );

        let s = v1::StatusReply {
            revision: 7,
            replica: "control-2".into(),
            database_reachable: false,
            nodes: vec![],
            stale: Some(stale.clone()),
            traffic: Vec::new(),
            ..Default::default()
        };
        let health = Health::Known {
            reply: health_reply_of(vec![]),
            note: None,
        };
        let text = status(&s, &health, &[], 1_035_000);
        assert!(
            text.contains(
                "database:  UNREACHABLE (config writes fail; reads and watch are served from memory"
            ),
            "{text}"
        );
        assert!(
            text.contains("unknown while the database is unreachable"),
            "{text}"
        );
        let v = parse(&to_json(&StatusJson::new(&s, &health, &[])));
        assert_eq!(v["stale"]["database"], "127.0.0.1:5432/tandem");

        // A fresh answer has no `stale` key at all.
        let fresh = v1::Snapshot {
            revision: 7,
            ..Default::default()
        };
        let v = parse(&to_json(&SnapshotJson::from(&fresh)));
        assert!(v.get("stale").is_none(), "{v}");
        let from_memory = v1::Snapshot {
            stale: Some(stale),
            ..fresh
        };
        let v = parse(&to_json(&SnapshotJson::from(&from_memory)));
        assert_eq!(v["stale"]["replica"], "control-2");
        assert_eq!(v["stale"]["since_unix_ms"], 1_000_000);
    }

    #[test]
    fn ages() {
        assert_eq!(ago(10_000, 0), "never");
        assert_eq!(ago(10_000, 10_500), "0s ago", "clock skew");
        assert_eq!(ago(125_000, 5_000), "2m ago");
        assert_eq!(ago(7_300_000, 100_000), "2h ago");
        assert_eq!(ago(3 * 86_400_000, 1), "2d ago");
    }
}
