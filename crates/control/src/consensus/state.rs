//! The replicated health state machine: every backend's committed health
//! and the recent transitions (kept so the leader can write them to
//! Postgres as history, catching up after an outage).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tandem_core::config::AdminState;
use tandem_core::format::{self, VersionField, Versioned};
use tandem_core::health::{BackendHealth, BackendKey, Transition};
use tandem_proto::{convert, v1};

/// Transitions kept for the history writer.
const RECENT: usize = 10_000;

/// The health table's snapshot format this build writes (and the newest it
/// reads); tables written before versions existed are version 1. Raft
/// entries (`Command`) are versioned with the log that holds them
/// (`storage::WAL_FORMAT`) and by [`ENTRY_FORMAT`].
pub const TABLE_FORMAT: u32 = 1;

/// The newest raft entry format this build applies. Version 1: the
/// commands `transitions` and `forget`, written without a version field.
/// A later version writes `"format_version": N` into each entry it
/// changes; a replica that meets an entry it cannot decode (a newer
/// version, an unknown command) stops applying rather than skip it (see
/// `node::Driver::apply`), so two replicas never silently disagree.
pub const ENTRY_FORMAT: u32 = 1;

/// What a raft log entry carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Decided by the leader from agents' reports. `trace`: the W3C
    /// `traceparent` of the decision's span, passed on to watchers so a
    /// proxy's span of the update continues the decision's trace.
    Transitions {
        transitions: Vec<Transition>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace: Option<String>,
    },
    /// Backends removed from the configuration: their health is dropped,
    /// so a backend declared again later starts unknown, not with the
    /// verdict it had before.
    Forget { keys: Vec<BackendKey> },
    /// An operator's runtime override of a backend's admin state (the
    /// emergency lever while the control database is down, like HAProxy's
    /// `set server … state maint`): `state: None` clears it. Replicated so
    /// every replica, and every proxy through the Watch stream's health
    /// route, sees the same overrides.
    Override {
        key: BackendKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<AdminState>,
    },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands serialise")
    }

    pub fn decode(data: &[u8]) -> Result<Command, String> {
        // Versioned entries carry `format_version`; version 1 has none.
        let version = serde_json::from_slice::<EntryVersion>(data)
            .map(|v| v.format_version)
            .unwrap_or(1);
        if version > ENTRY_FORMAT {
            return Err(format!(
                "entry format version {version}, this build applies up to {ENTRY_FORMAT} \
                 (written by a newer Tandem: upgrade this replica)"
            ));
        }
        serde_json::from_slice(data).map_err(|e| e.to_string())
    }
}

#[derive(Deserialize)]
struct EntryVersion {
    #[serde(default = "one")]
    format_version: u32,
}

fn one() -> u32 {
    1
}

/// The state machine. Cloned into an `Arc` after each apply so readers
/// (watch streams, GetHealth) never wait for the raft driver.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HealthTable {
    /// Index of the last applied raft entry.
    pub index: u64,
    #[serde(with = "as_pairs")]
    pub backends: BTreeMap<BackendKey, BackendHealth>,
    pub recent: VecDeque<(u64, Transition)>,
    /// The raft members' gRPC addresses by id, as of the last applied
    /// membership change (empty until the first: the static
    /// `TANDEM_PEERS` list holds then). Replicated so that every replica,
    /// and one that catches up from a snapshot, can reach every member.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<u64, String>,
    /// Runtime admin-state overrides by backend (`Command::Override`),
    /// until reconciled into the declared configuration or cleared.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "overrides_as_pairs"
    )]
    pub overrides: BTreeMap<BackendKey, AdminState>,
}

impl HealthTable {
    /// Applies a committed command at `index`; returns the backends whose
    /// state changed (forgotten ones included: they are no longer in the
    /// table).
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Vec<BackendKey> {
        self.index = index;
        match cmd {
            Command::Transitions { transitions, .. } => {
                let mut changed = Vec::new();
                for t in transitions {
                    self.backends.insert(t.key.clone(), BackendHealth::from(t));
                    self.recent.push_back((index, t.clone()));
                    changed.push(t.key.clone());
                }
                while self.recent.len() > RECENT {
                    self.recent.pop_front();
                }
                changed
            }
            Command::Forget { keys } => keys
                .iter()
                .filter(|k| self.backends.remove(k).is_some())
                .cloned()
                .collect(),
            Command::Override { key, state } => {
                let before = match state {
                    Some(s) => self.overrides.insert(key.clone(), *s),
                    None => self.overrides.remove(key),
                };
                if before == *state {
                    Vec::new()
                } else {
                    vec![key.clone()]
                }
            }
        }
    }

    /// The table as snapshot data (on disk and sent to lagging followers),
    /// with its format version.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Versioned {
            format_version: TABLE_FORMAT,
            value: self,
        })
        .expect("the health table serialises")
    }

    pub fn decode(data: &[u8]) -> anyhow::Result<HealthTable> {
        if data.is_empty() {
            return Ok(HealthTable::default());
        }
        let VersionField { format_version } = serde_json::from_slice(data)?;
        format::check(
            || "the raft snapshot's health table".into(),
            format_version,
            TABLE_FORMAT,
        )?;
        Ok(serde_json::from_slice(data)?)
    }

    /// The full table as a watch event.
    pub fn full_update(&self) -> v1::HealthUpdate {
        v1::HealthUpdate {
            traceparent: String::new(),
            index: self.index,
            full: true,
            backends: self
                .backends
                .keys()
                .chain(self.overrides.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter_map(|k| self.wire(k))
                .collect(),
        }
    }

    /// The given backends as a watch event.
    pub fn partial_update(&self, keys: &[BackendKey]) -> v1::HealthUpdate {
        v1::HealthUpdate {
            traceparent: String::new(),
            index: self.index,
            full: false,
            backends: keys
                .iter()
                .map(|k| {
                    // Neither verdict nor override (a cleared override on a
                    // backend the agents never judged, a forgotten one):
                    // unknown, so a proxy does not keep an override's state.
                    self.wire(k).unwrap_or_else(|| {
                        convert::backend_health_to_proto(
                            k,
                            &BackendHealth {
                                state: tandem_core::health::HealthState::Unknown,
                                since_ms: 0,
                                reason: String::new(),
                                views: Vec::new(),
                            },
                        )
                    })
                })
                .collect(),
        }
    }

    /// A backend's state as watchers see it: the agents' verdict, and an
    /// override's admin state (`admin_override`) that proxies put in place
    /// of the declared one: a drain or a disable there is the same as a
    /// declared one (no new requests, not even in panic mode; a disabled
    /// backend's TCP connections closed as the pool says), an enable puts
    /// the backend back under the agents' verdict. The reason names the
    /// override so `tandemctl status` shows it.
    fn wire(&self, k: &BackendKey) -> Option<v1::BackendHealth> {
        let verdict = self.backends.get(k);
        let Some(s) = self.overrides.get(k) else {
            return verdict.map(|h| convert::backend_health_to_proto(k, h));
        };
        let unknown = BackendHealth {
            state: tandem_core::health::HealthState::Unknown,
            since_ms: 0,
            reason: String::new(),
            views: Vec::new(),
        };
        let mut wire = convert::backend_health_to_proto(k, verdict.unwrap_or(&unknown));
        let agents = std::mem::take(&mut wire.reason);
        wire.reason = format!("override: {} (raft, control database down)", s.as_str());
        if !agents.is_empty() {
            wire.reason = format!("{}; agents: {agents}", wire.reason);
        }
        wire.admin_override = Some(convert::admin_state_to_proto(*s).into());
        Some(wire)
    }
}

// === /metrics ===

impl HealthTable {
    /// `tandem_health_backend_state{pool, backend, state}`: 1 for each
    /// backend's committed state, 0 for the other two (a state set, so an
    /// alert can select `state="unhealthy"`). Rendered from the table at
    /// scrape time, so a forgotten backend leaves `/metrics` with it.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        use tandem_core::health::HealthState;
        out.push_str(
            "# HELP tandem_health_backend_state Each backend's health as committed through raft (1: its state).\n",
        );
        out.push_str("# TYPE tandem_health_backend_state gauge\n");
        for (key, health) in &self.backends {
            for state in [
                HealthState::Healthy,
                HealthState::Unhealthy,
                HealthState::Unknown,
            ] {
                let _ = writeln!(
                    out,
                    "tandem_health_backend_state{{pool=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
                    key.pool,
                    key.address,
                    state.as_str(),
                    u8::from(health.state == state)
                );
            }
        }
    }
}

/// A committed health change, in wire form once for all watchers.
pub type HealthEvent = Arc<v1::HealthUpdate>;

/// The overrides map as a list of pairs, like [`as_pairs`].
mod overrides_as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tandem_core::config::AdminState;
    use tandem_core::health::BackendKey;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<BackendKey, AdminState>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<BackendKey, AdminState>, D::Error> {
        Ok(Vec::<(BackendKey, AdminState)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// JSON maps need string keys: store the map as a list of pairs.
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tandem_core::health::{BackendHealth, BackendKey};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<BackendKey, BackendHealth>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<BackendKey, BackendHealth>, D::Error> {
        Ok(Vec::<(BackendKey, BackendHealth)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use tandem_core::health::HealthState;
    use tandem_core::{BackendAddr, PoolName};

    use super::*;

    fn key(addr: &str) -> BackendKey {
        BackendKey {
            pool: PoolName::new("shop").unwrap(),
            address: BackendAddr::new(addr).unwrap(),
        }
    }

    fn down(addr: &str) -> Transition {
        Transition {
            key: key(addr),
            from: HealthState::Healthy,
            to: HealthState::Unhealthy,
            reason: "HTTP 503 from 1/1 agent".into(),
            at_ms: 1,
            views: vec![],
        }
    }

    #[test]
    fn forgetting_drops_only_known_backends_and_survives_the_log() {
        let mut t = HealthTable::default();
        let cmd = Command::Transitions {
            trace: None,
            transitions: vec![down("10.0.0.1:80"), down("10.0.0.2:80")],
        };
        assert_eq!(t.apply(1, &cmd).len(), 2);
        let forget = Command::Forget {
            keys: vec![key("10.0.0.2:80"), key("10.0.0.9:80")],
        };
        // Through the log's encoding, as a follower applies it.
        let forget = Command::decode(&forget.encode()).unwrap();
        assert_eq!(
            t.apply(2, &forget),
            [key("10.0.0.2:80")],
            "only what was there"
        );
        assert_eq!(
            t.backends.keys().cloned().collect::<Vec<_>>(),
            [key("10.0.0.1:80")]
        );
        assert_eq!(t.index, 2);
        assert_eq!(t.recent.len(), 2, "history is not rewritten");
    }

    #[test]
    fn overrides_set_clear_and_survive_log_and_snapshot() {
        let mut t = HealthTable::default();
        let drain = Command::Override {
            key: key("10.0.0.1:80"),
            state: Some(AdminState::Draining),
        };
        let drain = Command::decode(&drain.encode()).unwrap();
        assert_eq!(t.apply(1, &drain), [key("10.0.0.1:80")]);
        assert!(
            t.apply(2, &drain).is_empty(),
            "the same override again changes nothing"
        );
        let back = HealthTable::decode(&t.encode()).unwrap();
        assert_eq!(
            back.overrides.get(&key("10.0.0.1:80")),
            Some(&AdminState::Draining)
        );
        let clear = Command::Override {
            key: key("10.0.0.1:80"),
            state: None,
        };
        assert_eq!(t.apply(3, &clear), [key("10.0.0.1:80")]);
        assert!(t.overrides.is_empty());
        assert!(
            !String::from_utf8(t.encode()).unwrap().contains("overrides"),
            "an empty map is not written: older replicas read the snapshot"
        );
    }

    #[test]
    fn an_override_travels_as_an_admin_state_beside_the_agents_verdict() {
        let mut t = HealthTable::default();
        let verdict = Command::Transitions {
            trace: None,
            transitions: vec![down("10.0.0.1:80")],
        };
        t.apply(1, &verdict);
        let disable = Command::Override {
            key: key("10.0.0.1:80"),
            state: Some(AdminState::Disabled),
        };
        let changed = t.apply(2, &disable);
        let update = t.partial_update(&changed);
        let wire = &update.backends[0];
        assert_eq!(wire.admin_override, Some(v1::AdminState::Disabled.into()));
        assert_eq!(
            wire.state,
            i32::from(v1::HealthState::Unhealthy),
            "the verdict stays the agents'"
        );
        assert!(
            wire.reason.starts_with("override: disabled (raft")
                && wire.reason.ends_with("agents: HTTP 503 from 1/1 agent"),
            "{}",
            wire.reason
        );
        // An override on a backend the agents never judged: unknown, enabled.
        let enable = Command::Override {
            key: key("10.0.0.2:80"),
            state: Some(AdminState::Enabled),
        };
        t.apply(3, &enable);
        let full = t.full_update();
        let never = full
            .backends
            .iter()
            .find(|b| b.address == "10.0.0.2:80")
            .expect("listed for its override");
        assert_eq!(never.admin_override, Some(v1::AdminState::Enabled.into()));
        assert_eq!(never.state, i32::from(v1::HealthState::Unknown));
        // Cleared: the update carries no override, so proxies drop theirs.
        let clear = Command::Override {
            key: key("10.0.0.1:80"),
            state: None,
        };
        let changed = t.apply(4, &clear);
        assert_eq!(t.partial_update(&changed).backends[0].admin_override, None);
    }
}
