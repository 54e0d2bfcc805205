//! `watch` for people: one logfmt-like line per event, health transitions
//! told from the state seen before on the stream.

use std::collections::BTreeMap;

use tandem_proto::v1;
use tandem_proto::v1::config_change::Change;
use tandem_proto::v1::watch_event::Event;

use super::declared::{backend_count, health_summary};
use super::names::{admin_state_name, health_state_name, policy_name, role_name, route_host};
use super::table::num;

/// `watch` for people: lines for each event, remembering each backend's
/// last health state on the stream so a transition reads
/// `unknown→unhealthy`.
#[derive(Debug, Default)]
pub struct WatchText {
    /// (pool, address) to the last state seen.
    states: BTreeMap<(String, String), i32>,
}

impl WatchText {
    pub fn lines(&mut self, e: &v1::WatchEvent) -> Vec<String> {
        match &e.event {
            Some(Event::Health(h)) => self.health(h),
            Some(Event::Change(c)) => {
                self.forget(c);
                vec![watch_line(e)]
            }
            Some(Event::Snapshot(_)) | None => vec![watch_line(e)],
        }
    }

    /// A full update: `health full index=12 backends=3`, replacing every
    /// state remembered. A partial one: one line per backend,
    /// `health pool=shop backend=10.0.0.5:3000 healthy→unhealthy reason="HTTP 503 from 2/2 agents"`.
    fn health(&mut self, h: &v1::HealthUpdate) -> Vec<String> {
        if h.full {
            self.states = h
                .backends
                .iter()
                .map(|b| ((b.pool.clone(), b.address.clone()), b.state))
                .collect();
            return vec![format!(
                "health full index={} backends={}",
                h.index,
                h.backends.len()
            )];
        }
        h.backends
            .iter()
            .map(|b| {
                let key = (b.pool.clone(), b.address.clone());
                // Never seen: no agent had an opinion, which is `unknown`.
                let from = self
                    .states
                    .insert(key, b.state)
                    .unwrap_or(v1::HealthState::Unknown as i32);
                let to = health_state_name(b.state);
                let states = if from == b.state {
                    to.to_string()
                } else {
                    format!("{}→{to}", health_state_name(from))
                };
                format!(
                    "health pool={} backend={} {states} reason={:?}",
                    b.pool, b.address, b.reason
                )
            })
            .collect()
    }

    /// A backend removed and added again starts over from `unknown`.
    fn forget(&mut self, c: &v1::ConfigChange) {
        match &c.change {
            Some(Change::PoolDeleted(pool)) => self.states.retain(|(p, _), _| p != pool),
            Some(Change::BackendRemoved(b)) => {
                self.states.remove(&(b.pool.clone(), b.address.clone()));
            }
            _ => {}
        }
    }
}

/// One line per watch event, logfmt-like so it greps well:
/// `revision=8 pool_upserted pool=shop policy=ip_hash actor="alice (admin token)"`. Health events are
/// rendered by [`WatchText`], which knows the previous states; alone, a
/// transition reads as coming from `unknown`.
pub fn watch_line(e: &v1::WatchEvent) -> String {
    let what = match &e.event {
        Some(Event::Health(_)) => return WatchText::default().lines(e).join("\n"),
        Some(Event::Snapshot(s)) => format!(
            "snapshot pools={} backends={} routes={}",
            s.pools.len(),
            backend_count(s),
            s.routes.len()
        ),
        Some(Event::Change(c)) => match &c.change {
            Some(Change::PoolUpserted(p)) => format!(
                "pool_upserted pool={} policy={} health=\"{}\"",
                p.name,
                policy_name(p.policy),
                health_summary(p.health_check.as_ref())
            ),
            Some(Change::PoolDeleted(name)) => format!("pool_deleted pool={name}"),
            Some(Change::BackendUpserted(b)) => {
                let mut s = format!("backend_upserted pool={}", b.pool);
                if let Some(b) = &b.backend {
                    s.push_str(&format!(
                        " address={} weight={} role={} state={}",
                        b.address,
                        num(b.weight),
                        role_name(b.role),
                        admin_state_name(b.admin_state)
                    ));
                }
                s
            }
            Some(Change::BackendRemoved(b)) => {
                format!("backend_removed pool={} address={}", b.pool, b.address)
            }
            Some(Change::RouteUpserted(r)) => format!(
                "route_upserted host={} prefix={} pool={}",
                route_host(&r.host),
                r.path_prefix,
                r.pool
            ),
            Some(Change::RouteDeleted(r)) => format!(
                "route_deleted host={} prefix={}",
                route_host(&r.host),
                r.path_prefix
            ),
            Some(Change::TcpRouteUpserted(r)) => {
                format!("tcp_route_upserted listen={} pool={}", r.listen, r.pool)
            }
            Some(Change::TcpRouteDeleted(listen)) => format!("tcp_route_deleted listen={listen}"),
            Some(Change::CertificateUpserted(c)) => {
                format!("certificate_upserted certificate={}", c.name)
            }
            Some(Change::CertificateDeleted(name)) => {
                format!("certificate_deleted certificate={name}")
            }
            None => "unknown_change".into(),
        },
        None => "unknown_event".into(),
    };
    if e.actor.is_empty() {
        format!("revision={} {what}", e.revision)
    } else {
        format!("revision={} {what} actor={:?}", e.revision, e.actor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::testdata::*;

    #[test]
    fn watch_tells_each_transition_from_the_state_seen_before() {
        let mut text = WatchText::default();
        let healthy = health_of("shop", "10.0.0.5:3000", v1::HealthState::Healthy);
        let other = health_of("shop", "10.0.0.6:3000", v1::HealthState::Healthy);
        assert_eq!(
            text.lines(&health_event(true, vec![healthy, other])),
            ["health full index=42 backends=2"]
        );
        let mut down = failing();
        let mut never_seen = health_of("web", "10.0.0.7:80", v1::HealthState::Unhealthy);
        never_seen.reason = "connect: connection refused from 1/1 agent".into();
        assert_eq!(
            text.lines(&health_event(false, vec![down.clone(), never_seen])),
            [
                "health pool=shop backend=10.0.0.5:3000 healthy→unhealthy reason=\"HTTP 503 from 2/2 agents\"",
                "health pool=web backend=10.0.0.7:80 unknown→unhealthy reason=\"connect: connection refused from 1/1 agent\"",
            ]
        );
        down.state = v1::HealthState::Healthy.into();
        down.reason = "HTTP 200 from 2/2 agents".into();
        assert_eq!(
            text.lines(&health_event(false, vec![down.clone()])),
            [
                "health pool=shop backend=10.0.0.5:3000 unhealthy→healthy reason=\"HTTP 200 from 2/2 agents\""
            ]
        );
        // The same state again (new agent views): no arrow.
        assert_eq!(
            text.lines(&health_event(false, vec![down.clone()])),
            ["health pool=shop backend=10.0.0.5:3000 healthy reason=\"HTTP 200 from 2/2 agents\""]
        );

        // A full update replaces what was remembered.
        text.lines(&health_event(
            true,
            vec![health_of(
                "shop",
                "10.0.0.5:3000",
                v1::HealthState::Unhealthy,
            )],
        ));
        let line = &text.lines(&health_event(false, vec![down.clone()]))[0];
        assert!(line.contains(" unhealthy→healthy "), "{line}");
        let line = &text.lines(&health_event(false, vec![failing()]))[0];
        assert!(line.contains(" healthy→unhealthy "), "{line}");

        // A removed backend starts over from unknown.
        let removed = v1::WatchEvent {
            revision: 6,
            event: Some(Event::Change(v1::ConfigChange {
                change: Some(Change::BackendRemoved(v1::BackendRemoved {
                    pool: "shop".into(),
                    address: "10.0.0.5:3000".into(),
                })),
            })),
            ..Default::default()
        };
        assert_eq!(
            text.lines(&removed),
            ["revision=6 backend_removed pool=shop address=10.0.0.5:3000"]
        );
        let line = &text.lines(&health_event(false, vec![failing()]))[0];
        assert!(line.contains(" unknown→unhealthy "), "{line}");
        // So does every backend of a deleted pool.
        let deleted = v1::WatchEvent {
            revision: 7,
            event: Some(Event::Change(v1::ConfigChange {
                change: Some(Change::PoolDeleted("shop".into())),
            })),
            ..Default::default()
        };
        text.lines(&deleted);
        let line = &text.lines(&health_event(false, vec![failing()]))[0];
        assert!(line.contains(" unknown→unhealthy "), "{line}");

        // Alone, without the stream's memory, a transition is from unknown.
        assert_eq!(
            watch_line(&health_event(false, vec![failing()])),
            "health pool=shop backend=10.0.0.5:3000 unknown→unhealthy reason=\"HTTP 503 from 2/2 agents\""
        );
        // An update naming no backend prints nothing.
        assert!(text.lines(&health_event(false, vec![])).is_empty());
    }
}
