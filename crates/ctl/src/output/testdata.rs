//! Replies shared by the output tests.

use serde_json::Value;
use tandem_proto::v1;
use tandem_proto::v1::watch_event::Event;

pub(super) fn shop() -> v1::Pool {
    v1::Pool {
        name: "shop".into(),
        policy: v1::LbPolicy::LeastConnections.into(),
        health_check: Some(v1::HealthCheck {
            kind: Some(v1::HealthCheckKind::Http.into()),
            path: Some("/healthz".into()),
            method: Some("GET".into()),
            host: Some(String::new()),
            expected_status_min: Some(200),
            expected_status_max: Some(399),
            interval_ms: Some(1_000),
            timeout_ms: Some(500),
            rise: Some(2),
            fall: Some(3),
            port: None,
        }),
        connect_timeout_ms: Some(1_000),
        request_timeout_ms: Some(30_000),
        retry: Some(v1::RetryPolicy {
            attempts: Some(1),
            per_try_timeout_ms: Some(5_000),
            budget_percent: Some(20),
        }),
        outlier: Some(v1::OutlierDetection {
            consecutive_failures: Some(5),
            base_ejection_ms: Some(30_000),
            max_ejected_percent: Some(50),
        }),
        panic_threshold_percent: Some(50),
        tcp: None,
        max_request_body_bytes: Some(10 << 20),
        upstream_idle_timeout_ms: Some(4_000),
        tunnel_idle_timeout_ms: Some(300_000),
        backend_tls: None,
        backends: vec![
            v1::Backend {
                address: "10.0.0.5:3000".into(),
                weight: Some(2),
                role: v1::BackendRole::Backup.into(),
                admin_state: v1::AdminState::Enabled.into(),
                order: None,
            },
            v1::Backend {
                address: "10.0.0.6:3000".into(),
                weight: Some(1),
                role: v1::BackendRole::Primary.into(),
                admin_state: v1::AdminState::Draining.into(),
                order: None,
            },
        ],
        revision: 7,
        stale: None,
    }
}

pub(super) fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

pub(super) fn agent(id: &str, healthy: Option<bool>, detail: &str, live: bool) -> v1::AgentView {
    v1::AgentView {
        agent_id: id.into(),
        zone: "z1".into(),
        healthy,
        last_detail: detail.into(),
        last_seen_unix_ms: 990_000,
        live,
    }
}

/// 10.0.0.5:3000 down for 12 s at now = 1_003_400: two agents see 503,
/// the third has gone quiet.
pub(super) fn failing() -> v1::BackendHealth {
    v1::BackendHealth {
        pool: "shop".into(),
        address: "10.0.0.5:3000".into(),
        state: v1::HealthState::Unhealthy.into(),
        since_unix_ms: 991_400,
        reason: "HTTP 503 from 2/2 agents".into(),
        agents: vec![
            agent("agent-1", Some(false), "HTTP 503", true),
            agent("agent-2", Some(false), "HTTP 503", true),
            agent("agent-3", Some(true), "HTTP 200", false),
        ],
        admin_override: None,
    }
}

pub(super) fn health_of(pool: &str, address: &str, state: v1::HealthState) -> v1::BackendHealth {
    v1::BackendHealth {
        pool: pool.into(),
        address: address.into(),
        state: state.into(),
        since_unix_ms: 1_000_000,
        reason: String::new(),
        agents: vec![],
        admin_override: None,
    }
}

pub(super) fn health_reply_of(backends: Vec<v1::BackendHealth>) -> v1::HealthReply {
    v1::HealthReply {
        index: 42,
        backends,
        leader: "control-1".into(),
        term: 3,
    }
}

pub(super) fn health_event(full: bool, backends: Vec<v1::BackendHealth>) -> v1::WatchEvent {
    v1::WatchEvent {
        revision: 5,
        event: Some(Event::Health(v1::HealthUpdate {
            index: 42,
            full,
            backends,
            ..Default::default()
        })),
        ..Default::default()
    }
}
