//! Active-health decisions as pure logic: time is passed in, nothing here
//! touches a network or a clock.
//!
//! Agents report raw probe results. For each (agent, backend) the
//! [`Decider`] keeps consecutive counts and flips that agent's verdict after
//! `rise` successes or `fall` failures. A backend's state follows a strict
//! majority of *live* agents (an agent silent for three intervals does not
//! vote), so one agent that lost its own path to a backend cannot take it
//! down while another still reaches it; a lone agent's verdict stands. A
//! backend that keeps flipping is held down until it is stable (flap
//! damping).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{BackendAddr, HealthCheckSpec, PoolName};

/// Intervals of silence after which an agent no longer votes.
pub const SILENT_INTERVALS: u64 = 3;
/// Transitions within the flap window that make a backend "flapping".
pub const FLAP_TRANSITIONS: usize = 4;
/// The flap window, in probe intervals (at least 30 s).
pub const FLAP_WINDOW_INTERVALS: u64 = 10;
const MIN_FLAP_WINDOW_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No agent has an opinion yet; the backend may take traffic.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthState {
    /// Whether active health lets the backend take traffic.
    pub fn is_usable(self) -> bool {
        self != HealthState::Unhealthy
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendKey {
    pub pool: PoolName,
    pub address: BackendAddr,
}

/// One probe result from one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub agent: String,
    pub zone: String,
    pub key: BackendKey,
    pub ok: bool,
    /// What the agent saw, e.g. "HTTP 503", "connect: connection refused".
    pub detail: String,
    pub at_ms: u64,
}

/// One agent's current opinion of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub agent: String,
    pub zone: String,
    /// `None` until the agent has seen `rise` successes or `fall` failures.
    pub verdict: Option<bool>,
    pub last_detail: String,
    pub last_seen_ms: u64,
    /// Whether it still votes (reported within three intervals).
    pub live: bool,
}

/// A decided change of a backend's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub key: BackendKey,
    pub from: HealthState,
    pub to: HealthState,
    pub reason: String,
    pub at_ms: u64,
    pub views: Vec<AgentView>,
}

/// A backend's committed health, as proxies and operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackendHealth {
    pub state: HealthState,
    /// When it entered this state, milliseconds since the Unix epoch.
    pub since_ms: u64,
    pub reason: String,
    pub views: Vec<AgentView>,
}

impl From<&Transition> for BackendHealth {
    fn from(t: &Transition) -> Self {
        BackendHealth {
            state: t.to,
            since_ms: t.at_ms,
            reason: t.reason.clone(),
            views: t.views.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct AgentTrack {
    zone: String,
    successes: u32,
    failures: u32,
    verdict: Option<bool>,
    last_detail: String,
    last_seen_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct BackendTrack {
    agents: BTreeMap<String, AgentTrack>,
    state: HealthState,
    transitions: VecDeque<u64>,
    held_until_ms: Option<u64>,
}

/// Aggregates observations into backend states.
#[derive(Debug, Clone, Default)]
pub struct Decider {
    backends: BTreeMap<BackendKey, BackendTrack>,
}

impl Decider {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one probe result, updating that agent's verdict.
    pub fn observe(&mut self, obs: &Observation, spec: &HealthCheckSpec) {
        let track = self.backends.entry(obs.key.clone()).or_default();
        let agent = track.agents.entry(obs.agent.clone()).or_default();
        agent.zone.clone_from(&obs.zone);
        agent.last_detail.clone_from(&obs.detail);
        agent.last_seen_ms = agent.last_seen_ms.max(obs.at_ms);
        if obs.ok {
            agent.successes = agent.successes.saturating_add(1);
            agent.failures = 0;
            if agent.successes >= spec.rise {
                agent.verdict = Some(true);
            }
        } else {
            agent.failures = agent.failures.saturating_add(1);
            agent.successes = 0;
            if agent.failures >= spec.fall {
                agent.verdict = Some(false);
            }
        }
    }

    /// Sets a backend's state as committed elsewhere (e.g. when this
    /// replica becomes the decider), without deciding anything.
    pub fn adopt(&mut self, key: &BackendKey, state: HealthState) {
        self.backends.entry(key.clone()).or_default().state = state;
    }

    pub fn state(&self, key: &BackendKey) -> HealthState {
        self.backends.get(key).map(|t| t.state).unwrap_or_default()
    }

    /// Forgets backends for which `keep` is false (removed from config).
    pub fn retain(&mut self, mut keep: impl FnMut(&BackendKey) -> bool) {
        self.backends.retain(|k, _| keep(k));
    }

    pub fn views(&self, key: &BackendKey, spec: &HealthCheckSpec, now_ms: u64) -> Vec<AgentView> {
        self.backends
            .get(key)
            .map(|t| views(t, spec, now_ms))
            .unwrap_or_default()
    }

    /// Decides every backend's state at `now_ms` and returns the changes.
    /// `spec_of` gives each backend's pool health-check spec; backends it
    /// does not know are skipped.
    pub fn evaluate<'a>(
        &mut self,
        now_ms: u64,
        spec_of: impl Fn(&BackendKey) -> Option<&'a HealthCheckSpec>,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        for (key, track) in &mut self.backends {
            let Some(spec) = spec_of(key) else { continue };
            if let Some(t) = decide(key, track, spec, now_ms) {
                out.push(t);
            }
        }
        out
    }
}

fn views(track: &BackendTrack, spec: &HealthCheckSpec, now_ms: u64) -> Vec<AgentView> {
    track
        .agents
        .iter()
        .map(|(id, a)| AgentView {
            agent: id.clone(),
            zone: a.zone.clone(),
            verdict: a.verdict,
            last_detail: a.last_detail.clone(),
            last_seen_ms: a.last_seen_ms,
            live: is_live(a, spec, now_ms),
        })
        .collect()
}

fn is_live(a: &AgentTrack, spec: &HealthCheckSpec, now_ms: u64) -> bool {
    now_ms.saturating_sub(a.last_seen_ms) <= SILENT_INTERVALS * u64::from(spec.interval_ms)
}

fn decide(
    key: &BackendKey,
    track: &mut BackendTrack,
    spec: &HealthCheckSpec,
    now_ms: u64,
) -> Option<Transition> {
    let live: Vec<&AgentTrack> = track
        .agents
        .values()
        .filter(|a| is_live(a, spec, now_ms))
        .collect();
    if live.is_empty() {
        return None; // nobody to ask: hold the current state
    }
    let up = live.iter().filter(|a| a.verdict == Some(true)).count();
    let down = live.iter().filter(|a| a.verdict == Some(false)).count();
    let n = live.len();
    let majority = |votes: usize| votes * 2 > n;

    let window = (FLAP_WINDOW_INTERVALS * u64::from(spec.interval_ms)).max(MIN_FLAP_WINDOW_MS);
    while track
        .transitions
        .front()
        .is_some_and(|&t| now_ms.saturating_sub(t) > window)
    {
        track.transitions.pop_front();
    }

    let (to, reason) = if majority(down) {
        (HealthState::Unhealthy, summarise(&live, false, n))
    } else if majority(up) {
        if let Some(until) = track.held_until_ms {
            if now_ms < until {
                return None; // flapping: held down
            }
            track.held_until_ms = None;
        }
        if track.state == HealthState::Unhealthy && track.transitions.len() + 1 >= FLAP_TRANSITIONS
        {
            // Coming back would be one flip too many: hold it down.
            track.held_until_ms = Some(now_ms + window);
            return None;
        }
        (HealthState::Healthy, summarise(&live, true, n))
    } else {
        return None; // split or undecided: hold
    };
    if to == track.state {
        return None;
    }
    let from = track.state;
    track.state = to;
    track.transitions.push_back(now_ms);
    Some(Transition {
        key: key.clone(),
        from,
        to,
        reason,
        at_ms: now_ms,
        views: views(track, spec, now_ms),
    })
}

/// "HTTP 503 from 2/2 agents": the most common detail among the agents
/// that voted `ok`.
fn summarise(live: &[&AgentTrack], ok: bool, n: usize) -> String {
    let voters: Vec<&&AgentTrack> = live.iter().filter(|a| a.verdict == Some(ok)).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &voters {
        *counts.entry(a.last_detail.as_str()).or_default() += 1;
    }
    let detail = counts
        .into_iter()
        .max_by_key(|(_, c)| *c)
        .map(|(d, _)| d)
        .unwrap_or(if ok { "ok" } else { "failing" });
    let agents = if n == 1 { "agent" } else { "agents" };
    format!("{detail} from {}/{n} {agents}", voters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rise: u32, fall: u32) -> HealthCheckSpec {
        HealthCheckSpec {
            rise,
            fall,
            interval_ms: 1_000,
            timeout_ms: 500,
            ..Default::default()
        }
    }

    fn key() -> BackendKey {
        BackendKey {
            pool: PoolName::new("shop").unwrap(),
            address: BackendAddr::new("10.0.0.1:80").unwrap(),
        }
    }

    fn obs(agent: &str, ok: bool, at_ms: u64) -> Observation {
        Observation {
            agent: agent.into(),
            zone: "z".into(),
            key: key(),
            ok,
            detail: if ok {
                "HTTP 200".into()
            } else {
                "HTTP 503".into()
            },
            at_ms,
        }
    }

    /// Feeds (agent, ok) results one interval apart and returns the state
    /// after each step.
    fn run(
        d: &mut Decider,
        s: &HealthCheckSpec,
        steps: &[&[(&str, bool)]],
        start_ms: u64,
    ) -> Vec<HealthState> {
        let mut states = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let now = start_ms + i as u64 * 1_000;
            for (agent, ok) in *step {
                d.observe(&obs(agent, *ok, now), s);
            }
            d.evaluate(now, |_| Some(s));
            states.push(d.state(&key()));
        }
        states
    }

    use HealthState::{Healthy as H, Unhealthy as D, Unknown as U};

    #[test]
    fn rise_and_fall_thresholds_for_a_single_agent() {
        struct Case {
            name: &'static str,
            rise: u32,
            fall: u32,
            results: &'static [bool],
            states: &'static [HealthState],
        }
        let cases = [
            Case {
                name: "rise 2",
                rise: 2,
                fall: 3,
                results: &[true, true],
                states: &[U, H],
            },
            Case {
                name: "fall 3",
                rise: 1,
                fall: 3,
                results: &[true, false, false, false],
                states: &[H, H, H, D],
            },
            Case {
                name: "a success resets the failure count",
                rise: 1,
                fall: 2,
                results: &[true, false, true, false, false],
                states: &[H, H, H, H, D],
            },
            Case {
                name: "back up after rise",
                rise: 2,
                fall: 1,
                results: &[true, true, false, true, true],
                states: &[U, H, D, D, H],
            },
            Case {
                name: "fall 1",
                rise: 1,
                fall: 1,
                results: &[false],
                states: &[D],
            },
        ];
        for c in cases {
            let s = spec(c.rise, c.fall);
            let mut d = Decider::new();
            let steps: Vec<Vec<(&str, bool)>> =
                c.results.iter().map(|ok| vec![("a1", *ok)]).collect();
            let steps: Vec<&[(&str, bool)]> = steps.iter().map(|v| v.as_slice()).collect();
            assert_eq!(run(&mut d, &s, &steps, 0), c.states, "{}", c.name);
        }
    }

    #[test]
    fn quorum_of_live_agents() {
        let s = spec(1, 2);
        // Two agents: one that cannot reach the backend does not take it down.
        let mut d = Decider::new();
        let states = run(
            &mut d,
            &s,
            &[
                &[("a1", true), ("a2", true)],
                &[("a1", true), ("a2", false)],
                &[("a1", true), ("a2", false)],
                &[("a1", true), ("a2", false)],
            ],
            0,
        );
        assert_eq!(states, [H, H, H, H]);

        // Both see it failing: down, with the reason naming the votes.
        let mut d = Decider::new();
        d.observe(&obs("a1", true, 0), &s);
        d.observe(&obs("a2", true, 0), &s);
        d.evaluate(0, |_| Some(&s));
        let mut last = Vec::new();
        for t in 1..=2 {
            d.observe(&obs("a1", false, t * 1000), &s);
            d.observe(&obs("a2", false, t * 1000), &s);
            last = d.evaluate(t * 1000, |_| Some(&s));
        }
        assert_eq!(d.state(&key()), D);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].reason, "HTTP 503 from 2/2 agents");
        assert_eq!(last[0].views.len(), 2);

        // Three agents: two of three decide.
        let mut d = Decider::new();
        let states = run(
            &mut d,
            &s,
            &[
                &[("a1", true), ("a2", true), ("a3", true)],
                &[("a1", false), ("a2", false), ("a3", true)],
                &[("a1", false), ("a2", false), ("a3", true)],
            ],
            0,
        );
        assert_eq!(states, [H, H, D]);
    }

    #[test]
    fn silent_agents_do_not_vote() {
        let s = spec(1, 1);
        let mut d = Decider::new();
        // a2 says healthy once, then goes silent; a1 keeps reporting failure.
        d.observe(&obs("a2", true, 0), &s);
        d.observe(&obs("a1", true, 0), &s);
        d.evaluate(0, |_| Some(&s));
        assert_eq!(d.state(&key()), H);
        for t in 1..=3u64 {
            d.observe(&obs("a1", false, t * 1000), &s);
            d.evaluate(t * 1000, |_| Some(&s));
            assert_eq!(d.state(&key()), H, "a2 is still live at {t} s: split, hold");
        }
        d.observe(&obs("a1", false, 4000), &s);
        d.evaluate(4000, |_| Some(&s));
        assert_eq!(
            d.state(&key()),
            D,
            "a2 silent for over 3 intervals: a1's verdict stands"
        );
        let views = d.views(&key(), &s, 4000);
        assert!(!views.iter().find(|v| v.agent == "a2").unwrap().live);
    }

    #[test]
    fn nobody_live_holds_the_state() {
        let s = spec(1, 1);
        let mut d = Decider::new();
        d.observe(&obs("a1", false, 0), &s);
        d.evaluate(0, |_| Some(&s));
        assert_eq!(d.state(&key()), D);
        assert!(d.evaluate(60_000, |_| Some(&s)).is_empty());
        assert_eq!(d.state(&key()), D);
    }

    #[test]
    fn flapping_backends_are_held_down() {
        let s = spec(1, 1);
        let mut d = Decider::new();
        let mut t = 0;
        let mut states = Vec::new();
        for ok in [true, false, true, false, true, true, true] {
            d.observe(&obs("a1", ok, t), &s);
            d.evaluate(t, |_| Some(&s));
            states.push(d.state(&key()));
            t += 1000;
        }
        // up, down, up, down: the fourth flip (back up) is held down.
        assert_eq!(states, [H, D, H, D, D, D, D]);
        // Once the window has passed and it is still healthy, it returns.
        let later = 4_000 + 30_000 + 1; // held at 4 s for one 30 s window
        d.observe(&obs("a1", true, later), &s);
        let ts = d.evaluate(later, |_| Some(&s));
        assert_eq!(d.state(&key()), H, "{ts:?}");
    }

    #[test]
    fn unknown_backends_are_skipped_and_can_be_forgotten() {
        let s = spec(1, 1);
        let mut d = Decider::new();
        d.observe(&obs("a1", false, 0), &s);
        assert!(d.evaluate(0, |_| None).is_empty());
        d.retain(|_| false);
        assert_eq!(d.state(&key()), U);
    }
}
