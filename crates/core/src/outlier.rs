//! Passive health (outlier detection) as a pure state machine.
//!
//! A backend that fails `consecutive_failures` times in a row (connect
//! failures, resets, timeouts or 5xx answers) is ejected for
//! `base_ejection_ms × n`, where `n` counts its ejections in a row (capped at
//! [`MAX_EJECTION_MULTIPLIER`]); it comes back by itself when the time is
//! up. A backend that then behaves for as long as it was out has its count
//! reset. An ejection is refused when it would take the pool past
//! `max_ejected_percent` (the caller counts, since only it sees the pool).
//!
//! Time is passed in as milliseconds on any monotonic clock. The state packs
//! into a `u64` so the proxy can keep it in one atomic and update it with
//! compare-and-swap, without a lock.

use serde::Serialize;

use crate::OutlierSpec;

/// The longest ejection is this many base ejection times.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// One backend's passive-health state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutlierState {
    /// Failures in a row since the last success (saturates at 65535).
    pub consecutive_failures: u16,
    /// Ejections in a row (saturates at 255).
    pub ejections: u8,
    /// Ejected until this time (ms); 0 when never ejected. It stays set after
    /// the ejection ends, to know when the count can be forgiven.
    pub ejected_until_ms: u64,
}

/// What a recorded outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The backend was just ejected until this time.
    Ejected {
        until_ms: u64,
    },
    /// The threshold was reached but the pool is at its ejection cap.
    EjectionRefused,
}

/// Times are kept in 40 bits of milliseconds (about 34 years of uptime).
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

impl OutlierState {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms
    }

    /// A request succeeded (any answer that is not a 5xx).
    pub fn on_success(self, now_ms: u64, spec: &OutlierSpec) -> Self {
        let mut s = self;
        s.consecutive_failures = 0;
        if s.ejections > 0 && !s.is_ejected(now_ms) {
            let out_for = ejection_ms(spec, u32::from(s.ejections));
            if now_ms >= s.ejected_until_ms.saturating_add(out_for) {
                s.ejections = 0;
            }
        }
        s
    }

    /// A request failed. `may_eject` is false when ejecting this backend
    /// would exceed the pool's max ejected percent.
    pub fn on_failure(
        self,
        now_ms: u64,
        spec: &OutlierSpec,
        may_eject: bool,
    ) -> (Self, Transition) {
        let mut s = self;
        if spec.consecutive_failures == 0 || s.is_ejected(now_ms) {
            // Disabled, or failures of requests that started before the
            // ejection: they must not extend it.
            return (s, Transition::None);
        }
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        if u32::from(s.consecutive_failures) < spec.consecutive_failures {
            return (s, Transition::None);
        }
        if !may_eject {
            return (s, Transition::EjectionRefused);
        }
        s.ejections = s.ejections.saturating_add(1);
        let until = now_ms.saturating_add(ejection_ms(spec, u32::from(s.ejections)));
        s.ejected_until_ms = until.min(TIME_MASK);
        s.consecutive_failures = 0;
        (
            s,
            Transition::Ejected {
                until_ms: s.ejected_until_ms,
            },
        )
    }

    /// The agents saw the backend recover (unhealthy → healthy): a local
    /// ejection running since it failed ends now, as Envoy's
    /// `successful_active_health_check_uneject_host` does. The count of
    /// ejections in a row stays, so a backend that keeps failing again is
    /// still ejected for longer each time.
    pub fn on_active_recovery(self, now_ms: u64) -> Self {
        let mut s = self;
        s.consecutive_failures = 0;
        if s.is_ejected(now_ms) {
            s.ejected_until_ms = now_ms;
        }
        s
    }

    pub fn to_bits(self) -> u64 {
        (u64::from(self.consecutive_failures) << 48)
            | (u64::from(self.ejections) << TIME_BITS)
            | (self.ejected_until_ms & TIME_MASK)
    }

    pub fn from_bits(bits: u64) -> Self {
        Self {
            consecutive_failures: (bits >> 48) as u16,
            ejections: ((bits >> TIME_BITS) & 0xff) as u8,
            ejected_until_ms: bits & TIME_MASK,
        }
    }
}

/// How long the `n`th ejection in a row lasts.
pub fn ejection_ms(spec: &OutlierSpec, n: u32) -> u64 {
    u64::from(spec.base_ejection_ms) * u64::from(n.clamp(1, MAX_EJECTION_MULTIPLIER))
}

/// May one more backend of a pool of `total` be ejected when `ejected`
/// already are? At least one backend may always be ejected when the
/// percentage is above zero, so small pools still get passive health.
pub fn may_eject(spec: &OutlierSpec, ejected: usize, total: usize) -> bool {
    if spec.max_ejected_percent == 0 || total == 0 {
        return false;
    }
    let allowed = (total * spec.max_ejected_percent as usize / 100).max(1);
    ejected < allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> OutlierSpec {
        OutlierSpec {
            consecutive_failures: 3,
            base_ejection_ms: 1_000,
            max_ejected_percent: 50,
        }
    }

    fn fail(s: OutlierState, now: u64) -> (OutlierState, Transition) {
        s.on_failure(now, &spec(), true)
    }

    #[test]
    fn consecutive_failures_eject_and_time_brings_back() {
        let s = OutlierState::default();
        let (s, t) = fail(s, 10);
        assert_eq!(t, Transition::None);
        let (s, _) = fail(s, 11);
        let (s, t) = fail(s, 12);
        assert_eq!(t, Transition::Ejected { until_ms: 1_012 });
        assert!(s.is_ejected(500));
        assert!(!s.is_ejected(1_012), "back by itself");
        // Failures while ejected (requests already in flight) change nothing.
        assert_eq!(fail(s, 600), (s, Transition::None));
    }

    #[test]
    fn an_active_recovery_ends_the_ejection_but_remembers_it() {
        let mut s = OutlierState::default();
        for now in 0..3 {
            s = fail(s, now).0;
        }
        assert!(s.is_ejected(100));
        let back = s.on_active_recovery(100);
        assert!(!back.is_ejected(100), "the agents' verdict lifts it");
        assert_eq!(back.ejections, 1, "the count stays");
        // Failing again at once ejects for twice as long.
        let mut again = back;
        let mut t = Transition::None;
        for now in 101..104 {
            (again, t) = fail(again, now);
        }
        assert_eq!(
            t,
            Transition::Ejected {
                until_ms: 103 + 2_000
            }
        );
        // Not ejected: nothing changes but the failure count.
        let healthy = OutlierState::default();
        assert_eq!(healthy.on_active_recovery(5), healthy);
    }

    #[test]
    fn a_success_resets_the_count() {
        let (s, _) = fail(OutlierState::default(), 1);
        let (s, _) = fail(s, 2);
        let s = s.on_success(3, &spec());
        let (s, t) = fail(s, 4);
        assert_eq!((s.consecutive_failures, t), (1, Transition::None));
    }

    #[test]
    fn repeated_ejections_grow_and_good_behaviour_forgives() {
        let mut s = OutlierState::default();
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..12 {
            for _ in 0..3 {
                let (next, t) = fail(s, now);
                s = next;
                if let Transition::Ejected { until_ms } = t {
                    lengths.push(until_ms - now);
                    now = until_ms;
                }
            }
        }
        assert_eq!(&lengths[..3], &[1_000, 2_000, 3_000]);
        assert_eq!(*lengths.last().unwrap(), 10_000, "capped");
        // Back, and well behaved for as long as it was out: forgiven.
        let s = s.on_success(now + 5_000, &spec());
        assert_eq!(s.ejections, 12, "not yet");
        let s = s.on_success(now + 10_000, &spec());
        assert_eq!(s.ejections, 0);
    }

    #[test]
    fn the_cap_refuses_ejection() {
        let (s, _) = OutlierState::default().on_failure(0, &spec(), false);
        let (s, _) = s.on_failure(0, &spec(), false);
        let (s, t) = s.on_failure(0, &spec(), false);
        assert_eq!(t, Transition::EjectionRefused);
        assert!(!s.is_ejected(1));
        assert!(may_eject(&spec(), 0, 1), "one may always go");
        assert!(may_eject(&spec(), 1, 4));
        assert!(!may_eject(&spec(), 2, 4));
        let off = OutlierSpec {
            max_ejected_percent: 0,
            ..spec()
        };
        assert!(!may_eject(&off, 0, 4));
    }

    #[test]
    fn disabled_never_ejects() {
        let off = OutlierSpec {
            consecutive_failures: 0,
            ..spec()
        };
        let mut s = OutlierState::default();
        for t in 0..100 {
            let (next, tr) = s.on_failure(t, &off, true);
            assert_eq!(tr, Transition::None);
            s = next;
        }
    }

    #[test]
    fn packs_into_a_u64() {
        let s = OutlierState {
            consecutive_failures: 65_535,
            ejections: 7,
            ejected_until_ms: 123_456_789_012,
        };
        assert_eq!(OutlierState::from_bits(s.to_bits()), s);
        assert_eq!(OutlierState::from_bits(0), OutlierState::default());
    }
}
