//! Proto enums as the lowercase words tables and JSON show (`round_robin`,
//! `backup`, `unhealthy`; an unknown value is `unknown(N)`), and the names
//! given to replicas and catch-all hosts.

use tandem_proto::v1;

pub fn policy_name(v: i32) -> &'static str {
    match v1::LbPolicy::try_from(v) {
        Ok(v1::LbPolicy::Unspecified) => "unspecified",
        Ok(v1::LbPolicy::RoundRobin) => "round_robin",
        Ok(v1::LbPolicy::LeastConnections) => "least_connections",
        Ok(v1::LbPolicy::IpHash) => "ip_hash",
        Ok(v1::LbPolicy::RandomTwoChoices) => "random_two_choices",
        Ok(v1::LbPolicy::SingleActive) => "single_active",
        Err(_) => "unknown",
    }
}

pub fn health_kind_name(v: i32) -> &'static str {
    match v1::HealthCheckKind::try_from(v) {
        Ok(v1::HealthCheckKind::Unspecified) => "unspecified",
        Ok(v1::HealthCheckKind::Http) => "http",
        Ok(v1::HealthCheckKind::Tcp) => "tcp",
        Err(_) => "unknown",
    }
}

pub fn role_name(v: i32) -> &'static str {
    match v1::BackendRole::try_from(v) {
        Ok(v1::BackendRole::Unspecified) => "unspecified",
        Ok(v1::BackendRole::Primary) => "primary",
        Ok(v1::BackendRole::Backup) => "backup",
        Err(_) => "unknown",
    }
}

pub fn admin_state_name(v: i32) -> &'static str {
    match v1::AdminState::try_from(v) {
        Ok(v1::AdminState::Unspecified) => "unspecified",
        Ok(v1::AdminState::Enabled) => "enabled",
        Ok(v1::AdminState::Draining) => "draining",
        Ok(v1::AdminState::Disabled) => "disabled",
        Err(_) => "unknown",
    }
}

pub fn node_kind_name(v: i32) -> &'static str {
    match v1::NodeKind::try_from(v) {
        Ok(v1::NodeKind::Unspecified) => "unspecified",
        Ok(v1::NodeKind::Proxy) => "proxy",
        Ok(v1::NodeKind::Agent) => "agent",
        Ok(v1::NodeKind::Cli) => "cli",
        Err(_) => "unknown",
    }
}

pub fn on_unhealthy_name(v: i32) -> &'static str {
    match v1::OnUnhealthy::try_from(v) {
        Ok(v1::OnUnhealthy::Unspecified) => "policy",
        Ok(v1::OnUnhealthy::Close) => "close",
        Ok(v1::OnUnhealthy::Keep) => "keep",
        Err(_) => "unknown",
    }
}

pub fn health_state_name(v: i32) -> &'static str {
    match v1::HealthState::try_from(v) {
        Ok(v1::HealthState::Unspecified) => "unspecified",
        Ok(v1::HealthState::Unknown) => "unknown",
        Ok(v1::HealthState::Healthy) => "healthy",
        Ok(v1::HealthState::Unhealthy) => "unhealthy",
        // A state this tandemctl does not know (a newer control plane).
        Err(_) => "unknown",
    }
}

/// Replicas are named after their raft id, as in `status` and `health`.
pub fn replica_name(id: u64) -> String {
    format!("control-{id}")
}

pub fn route_host(host: &str) -> &str {
    if host.is_empty() { "*" } else { host }
}
