//! What a replica knows of its database: reachable or not, since when and
//! why.
//!
//! The hub (its `LISTEN` connection and a ping every second) and the
//! start-up migrations set it; the API reads it to fail writes at once
//! rather than wait out a connection timeout, and to answer reads and new
//! Watch streams from the hub's copy in memory, marked stale, while the
//! database is away.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

/// Shared by the store, the hub and the API of one replica.
#[derive(Clone)]
pub struct Availability {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port/name`: how errors and stale answers name the database.
    name: String,
    state: ArcSwap<State>,
}

/// The database as the replica last saw it.
#[derive(Debug, Clone)]
pub struct State {
    pub up: bool,
    /// When it last went up or down (the start, until it first goes up).
    pub since: Instant,
    pub since_unix_ms: i64,
    /// Why it is down, as the driver said it ("connection refused"); empty
    /// when up.
    pub cause: String,
    /// Whether the replica has reached it since it started.
    pub ever_up: bool,
}

/// The database is away: which, why, and for how long. What an
/// UNAVAILABLE answer and a stale read say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub database: String,
    pub cause: String,
    /// How long it has been away (since the start when never reached).
    pub down_for: Duration,
    pub since_unix_ms: i64,
    pub ever_up: bool,
}

impl Availability {
    /// A database not reached yet: down, since now.
    pub fn new(name: impl Into<String>) -> Availability {
        metrics::gauge!("tandem_control_database_up").set(0.0);
        Availability {
            inner: Arc::new(Inner {
                name: name.into(),
                state: ArcSwap::from_pointee(State {
                    up: false,
                    since: Instant::now(),
                    since_unix_ms: now_unix_ms(),
                    cause: "not reached yet since this replica started".into(),
                    ever_up: false,
                }),
            }),
        }
    }

    /// `host:port/name`, never credentials.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn is_up(&self) -> bool {
        self.inner.state.load().up
    }

    pub fn state(&self) -> Arc<State> {
        self.inner.state.load_full()
    }

    /// The database answered.
    pub fn up(&self) {
        let was = self.inner.state.load();
        if was.up {
            return;
        }
        tracing::info!(database = %self.inner.name, down_for = %format_duration(was.since.elapsed()), "database reachable");
        metrics::gauge!("tandem_control_database_up").set(1.0);
        self.inner.state.store(Arc::new(State {
            up: true,
            since: Instant::now(),
            since_unix_ms: now_unix_ms(),
            cause: String::new(),
            ever_up: true,
        }));
    }

    /// The database did not answer, because of `cause`. The first call of
    /// an outage logs it and starts its clock; later ones only update why.
    pub fn down(&self, cause: impl fmt::Display) {
        let cause = cause.to_string();
        let was = self.inner.state.load_full();
        if !was.up && was.cause == cause {
            return;
        }
        let (since, since_unix_ms) = if was.up {
            tracing::warn!(database = %self.inner.name, %cause, "database unreachable: writes fail, reads and Watch are served from memory");
            metrics::gauge!("tandem_control_database_up").set(0.0);
            (Instant::now(), now_unix_ms())
        } else {
            (was.since, was.since_unix_ms)
        };
        self.inner.state.store(Arc::new(State {
            up: false,
            since,
            since_unix_ms,
            cause,
            ever_up: was.ever_up,
        }));
    }

    /// The current outage, with `cause` in place of the last one seen when
    /// given (a query that just failed knows better).
    pub fn outage(&self, cause: Option<String>) -> Outage {
        let s = self.state();
        let (down_for, since_unix_ms) = if s.up {
            (Duration::ZERO, now_unix_ms())
        } else {
            (s.since.elapsed(), s.since_unix_ms)
        };
        Outage {
            database: self.inner.name.clone(),
            cause: cause.unwrap_or_else(|| s.cause.clone()),
            down_for,
            since_unix_ms,
            ever_up: s.ever_up,
        }
    }
}

impl Outage {
    /// "unavailable for 12.5s (connection refused)" or "not reached since
    /// this replica started 3.0s ago (connection refused)".
    pub fn how_long(&self) -> String {
        if self.down_for.is_zero() {
            format!("unavailable ({})", self.cause)
        } else if self.ever_up {
            format!(
                "unavailable for {} ({})",
                format_duration(self.down_for),
                self.cause
            )
        } else {
            format!(
                "not reached since this replica started {} ago ({})",
                format_duration(self.down_for),
                self.cause
            )
        }
    }
}

/// `850ms`, `12.5s`, `3m20s`, `2h5m`: what a person reads in a message.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{}s", ms / 60_000, (ms / 1_000) % 60)
    } else {
        format!("{}h{}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_keeps_its_start_and_takes_the_latest_cause() {
        let a = Availability::new("127.0.0.1:5432/tandem");
        assert!(!a.is_up(), "not reached yet");
        assert!(!a.outage(None).ever_up);
        a.up();
        assert!(a.is_up());
        a.down("connection refused");
        let first = a.state();
        assert!(!first.up && first.ever_up);
        a.down("pool timed out");
        let later = a.state();
        assert_eq!(later.since, first.since, "one outage, one clock");
        let o = a.outage(None);
        assert_eq!(o.cause, "pool timed out");
        assert_eq!(o.database, "127.0.0.1:5432/tandem");
        assert!(o.how_long().starts_with("unavailable for "), "{o:?}");
        assert_eq!(a.outage(Some("reset".into())).cause, "reset");
        a.up();
        assert!(a.is_up() && a.state().cause.is_empty());
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(12_500)), "12.5s");
        assert_eq!(format_duration(Duration::from_secs(200)), "3m20s");
        assert_eq!(format_duration(Duration::from_secs(7_500)), "2h5m");
    }
}
