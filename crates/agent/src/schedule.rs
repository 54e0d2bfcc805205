//! When to probe: every target on its pool's interval with jitter so that
//! probes never synchronise, and the set of targets kept in step with the
//! configuration.
//!
//! The first probe lands at a random point of the first interval; each
//! later one a jittered interval (±10%) after the previous one was due, so
//! the cadence does not drift with probe latency and two targets that
//! happen to line up drift apart again.
//!
//! Probe start times are rounded up to a grid shared by every target: the
//! engine ([`crate::engine`]) then wakes up once to start many probes rather
//! than once per probe, and their answers are gathered by the same
//! `epoll_wait` calls. Each wake-up is what costs (on the benchmark,
//! `scripts/bench/agent.sh`, tens of microseconds of CPU time each, mostly
//! the kernel putting the thread to sleep and waking it), not the probes it
//! starts. The grid's step grows with the interval ([`grid_step`]): about a
//! tenth of it, 100 ms at 1 s, so the ±10% jitter window still spans two
//! slots, and probes start at most one step late. At 1,000 HTTP targets
//! every second, a 10 ms grid took a third off the agent's CPU time against
//! none, 50 ms another quarter against 10 ms, and with the event loop 100 ms
//! another tenth against 50 ms (`docs/benchmarks.md`). Every step (10, 20,
//! 50 or 100 ms) divides 100 ms and all share one origin, so targets of
//! pools with different intervals still share wake-ups.
//!
//! Pure timing: instants in, instants out, no I/O and nothing else of the
//! agent's; the engine and the reporter build on it ([`crate::prober`]
//! keeps the engine's targets in step with the configuration).

use std::time::{Duration, Instant};

/// Each interval is stretched or shrunk by up to this fraction.
pub const JITTER: f64 = 0.10;

/// When a probe overran its slot, the next waits at least this fraction of
/// the interval, so a slow backend is not probed back to back.
pub const MIN_GAP: f64 = 0.10;

/// The finest grid step; every step is a multiple of it.
pub const TICK: Duration = Duration::from_millis(10);

/// The grid steps, coarsest first. Each divides 100 ms, so the coarser
/// grids' points are points of the finer ones.
const STEPS: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(50),
    Duration::from_millis(20),
    TICK,
];

/// A target's grid has at least this many slots per interval.
pub const SLOTS_PER_INTERVAL: u32 = 10;

/// The coarsest grid step not longer than `span` ([`TICK`] at least).
pub fn grid_step(span: Duration) -> Duration {
    STEPS.into_iter().find(|s| *s <= span).unwrap_or(TICK)
}

/// The first probe's delay: `r` (uniform in `[0, 1)`) of one interval.
pub fn first_delay(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(r.clamp(0.0, 1.0))
}

/// One interval, jittered by `r` (uniform in `[0, 1)`) within ±[`JITTER`].
pub fn jittered(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(1.0 - JITTER + 2.0 * JITTER * r.clamp(0.0, 1.0))
}

/// The next probe's deadline, given when this one was due and when it
/// finished.
pub fn next_deadline(due: Instant, now: Instant, interval: Duration, r: f64) -> Instant {
    let next = due + jittered(interval, r);
    next.max(now + interval.mul_f64(MIN_GAP))
}

/// `t` rounded up to the next point of the grid of `step` from `origin`.
pub fn on_grid(origin: Instant, t: Instant, step: Duration) -> Instant {
    let since = t.saturating_duration_since(origin).as_nanos();
    let step = step.as_nanos().max(1);
    let steps = since.div_ceil(step);
    origin + Duration::from_nanos(u64::try_from(steps * step).unwrap_or(u64::MAX))
}

/// One target's probe times.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    interval: Duration,
    /// When the next probe is due (off the grid, so rounding never drifts).
    due: Instant,
    /// The grid's origin, shared by every target.
    origin: Instant,
    /// The grid's step, from the interval.
    step: Duration,
}

impl Cadence {
    /// The first probe is due at `r` (uniform in `[0, 1)`) of an interval
    /// from `now`.
    pub fn new(interval: Duration, r: f64, origin: Instant, now: Instant) -> Cadence {
        Cadence {
            interval,
            due: now + first_delay(interval, r),
            origin,
            step: grid_step(interval / SLOTS_PER_INTERVAL),
        }
    }

    /// When the next probe starts: when it is due, on the grid.
    pub fn next_start(&self) -> Instant {
        on_grid(self.origin, self.due, self.step)
    }

    /// After a probe finished at `now`: the next is due a jittered interval
    /// later.
    pub fn advance(&mut self, r: f64, now: Instant) {
        self.due = next_deadline(self.due, now, self.interval, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn jitter_stays_within_ten_percent() {
        for r in [0.0, 0.25, 0.5, 0.999_999] {
            let d = jittered(SECOND, r);
            assert!(
                d >= Duration::from_millis(900) && d < Duration::from_millis(1_100),
                "{r}: {d:?}"
            );
            let f = first_delay(SECOND, r);
            assert!(f < SECOND, "{r}: {f:?}");
        }
        assert_eq!(jittered(SECOND, 0.5), SECOND);
        assert_eq!(first_delay(SECOND, 0.0), Duration::ZERO);
    }

    #[test]
    fn the_cadence_follows_the_due_time_not_the_probe_latency() {
        let t0 = Instant::now();
        // A fast probe: one interval after it was due.
        assert_eq!(
            next_deadline(t0, t0 + Duration::from_millis(30), SECOND, 0.5),
            t0 + SECOND
        );
        // An overrun (a 1 s timeout on a 0.9 s slot): not back to back.
        let late = t0 + Duration::from_millis(1_000);
        assert_eq!(
            next_deadline(t0, late, SECOND, 0.0),
            late + Duration::from_millis(100)
        );
    }

    #[test]
    fn start_times_round_up_to_the_shared_grid() {
        let o = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(on_grid(o, o, TICK), o);
        assert_eq!(on_grid(o, o + ms(1), TICK), o + ms(10));
        assert_eq!(on_grid(o, o + ms(10), TICK), o + ms(10));
        let just_after = o + ms(10) + Duration::from_nanos(1);
        assert_eq!(on_grid(o, just_after, TICK), o + ms(20));
        assert_eq!(on_grid(o, just_after, ms(50)), o + ms(50));
        assert_eq!(on_grid(o, o + ms(120), ms(50)), o + ms(150));
        assert_eq!(
            on_grid(o + ms(5), o, TICK),
            o + ms(5),
            "never before the origin"
        );
    }

    #[test]
    fn the_grid_step_is_a_tenth_of_the_interval_from_a_few_that_nest() {
        let ms = Duration::from_millis;
        for (interval, step) in [
            (100, 10),
            (199, 10),
            (200, 20),
            (499, 20),
            (500, 50),
            (999, 50),
            (1_000, 100),
            (3_600_000, 100),
        ] {
            assert_eq!(
                grid_step(ms(interval) / SLOTS_PER_INTERVAL),
                ms(step),
                "{interval} ms"
            );
        }
        // The coarser grids' points are on the finer ones: shared wake-ups.
        for step in STEPS {
            assert_eq!(Duration::from_millis(100).as_nanos() % step.as_nanos(), 0);
            assert_eq!(step.as_nanos() % TICK.as_nanos(), 0);
        }
    }

    #[test]
    fn probes_come_once_per_jittered_interval_and_never_in_step() {
        // Two targets with the same interval, sixty seconds of probes that
        // each take 3 ms.
        let origin = Instant::now();
        let step = Duration::from_millis(100);
        let mut times: Vec<Vec<Instant>> = Vec::new();
        for _ in 0..2 {
            let mut cadence = Cadence::new(SECOND, rand::random(), origin, origin);
            let mut probes = Vec::new();
            loop {
                let start = cadence.next_start();
                if start - origin > Duration::from_secs(60) {
                    break;
                }
                probes.push(start);
                cadence.advance(rand::random(), start + Duration::from_millis(3));
            }
            times.push(probes);
        }
        for probes in &times {
            assert!(
                (55..=67).contains(&probes.len()),
                "{} probes in 60 s",
                probes.len()
            );
            assert!(
                probes[0] - origin <= SECOND,
                "the first lands in the first interval"
            );
            // A 1 s interval: a 100 ms grid.
            for t in probes {
                assert_eq!((*t - origin).as_nanos() % step.as_nanos(), 0, "on the grid");
            }
            for w in probes.windows(2) {
                let gap = w[1] - w[0];
                // ±10%, give or take one step of the grid.
                assert!(
                    gap >= Duration::from_millis(800) && gap <= Duration::from_millis(1_200),
                    "{gap:?}"
                );
            }
        }
        // With independent jitter, the two schedules do not stay in step.
        let apart = times[0]
            .iter()
            .zip(times[1].iter())
            .filter(|(a, b)| (**a).max(**b) - (**a).min(**b) > Duration::from_millis(5))
            .count();
        assert!(apart > 0);
    }
}
