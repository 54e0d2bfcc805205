//! A coarse monotonic clock in milliseconds since start-up.
//!
//! Passive health asks "is this backend ejected?" several times per pick;
//! reading one atomic that a ticker refreshes every few milliseconds is
//! cheaper than a clock call each time, and a few milliseconds of
//! imprecision do not matter for ejections measured in seconds.

use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

static START: OnceLock<Instant> = OnceLock::new();
static NOW_MS: AtomicU64 = AtomicU64::new(0);
static TICKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

const TICK: Duration = Duration::from_millis(10);

/// Milliseconds since start-up, to within a few milliseconds.
pub fn now_ms() -> u64 {
    if TICKING.load(Ordering::Relaxed) {
        NOW_MS.load(Ordering::Relaxed)
    } else {
        precise_ms()
    }
}

/// Milliseconds since start-up, read from the system clock.
pub fn precise_ms() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Starts the ticker on the current runtime (once per process).
pub fn start() {
    if TICKING.swap(true, Ordering::AcqRel) {
        return;
    }
    NOW_MS.store(precise_ms(), Ordering::Relaxed);
    std::thread::Builder::new()
        .name("tandem-clock".into())
        .spawn(|| {
            loop {
                NOW_MS.store(precise_ms(), Ordering::Relaxed);
                std::thread::sleep(TICK);
            }
        })
        .map(drop)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no clock thread; reading the system clock instead");
            TICKING.store(false, Ordering::Relaxed);
        });
}

/// A timer kept armed from one use to the next. Setting and clearing a
/// tokio timer for every request costs a timer-wheel insert and removal
/// each time; a connection's deadlines only move forward, so this one is
/// moved when it fires early (about once per timeout) or must fire earlier.
pub struct Deadline(Pin<Box<Sleep>>);

impl Deadline {
    pub fn new() -> Self {
        Self(Box::pin(tokio::time::sleep(Duration::ZERO)))
    }

    /// Resolves at `deadline`. Cancel-safe: dropping it leaves the timer
    /// armed for the next use.
    pub async fn until(&mut self, deadline: tokio::time::Instant) {
        if self.0.deadline() > deadline {
            self.0.as_mut().reset(deadline);
        }
        loop {
            self.0.as_mut().await;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            self.0.as_mut().reset(deadline);
        }
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_deadline_fires_at_the_time_asked_whatever_it_was_armed_for() {
        let mut d = Deadline::new();
        // Armed for earlier (the zero it starts with): it waits on.
        let at = Instant::now() + Duration::from_millis(30);
        d.until(at).await;
        assert!(Instant::now() >= at);
        // Armed for later: an earlier deadline still fires on time.
        let far = Instant::now() + Duration::from_secs(600);
        let cancelled = tokio::time::timeout(Duration::from_millis(10), d.until(far)).await;
        assert!(cancelled.is_err());
        let near = Instant::now() + Duration::from_millis(30);
        tokio::time::timeout(Duration::from_secs(60), d.until(near))
            .await
            .expect("moved earlier, not left at the far deadline");
        assert!(Instant::now() >= near);
    }
}
