//! A coarse monotonic clock in milliseconds since start-up.
//!
//! Passive health asks "is this backend ejected?" several times per pick;
//! reading one atomic that a ticker refreshes every few milliseconds is
//! cheaper than a clock call each time, and a few milliseconds of
//! imprecision do not matter for ejections measured in seconds.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
