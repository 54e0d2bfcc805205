//! Load balancing as pure code: which backends of a pool may take a request
//! (failover tiers, draining, panic mode) and, among them, which one a
//! policy picks.
//!
//! Nothing here does I/O or reads a clock. The caller describes each
//! backend through [`Endpoint`] (its weight, role and admin state from the
//! declared config; whether it is healthy and how many requests it has in
//! flight from whatever the caller observes) and hands in the cursor, the
//! client's hash and the random numbers a policy needs. A [`Balancer`] is
//! built once per configuration and is immutable; its per-pick state is the
//! caller's `AtomicU64` cursor, so a balancer can be shared by every thread
//! without a lock.
//!
//! Failover, in order:
//! 1. enabled, healthy primaries — unless fewer than the panic threshold of
//!    the enabled primaries are healthy, in which case all enabled primaries
//!    (panic mode: spread the load rather than crush the few);
//! 2. when no primary is usable: enabled, healthy backups;
//! 3. when nothing is usable and panic mode is on: every enabled backend.
//!
//! Draining and disabled backends never get a new request, not even in panic
//! mode.
//!
//! `single_active` is stricter: a member takes traffic only while its
//! health check is known to pass ([`Endpoint::passes_check`]) and it is
//! usable; the first such enabled primary by declared order
//! ([`Endpoint::order`], then address) takes every connection, or, when no
//! primary passes, the first such backup. There is no panic mode: a
//! database replica must never receive a primary's traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{AdminState, BackendRole, LbPolicy};

// === Endpoint ===

/// What the balancer needs to know about one backend.
pub trait Endpoint {
    /// 1 to 1000.
    fn weight(&self) -> u32;
    fn role(&self) -> BackendRole;
    fn admin_state(&self) -> AdminState;
    /// Not ejected, not known to be down.
    fn healthy(&self) -> bool;
    /// Requests sent and not yet finished.
    fn in_flight(&self) -> u64;
    /// A stable identity for consistent hashing (its address).
    fn key(&self) -> &str;
    /// The agents' health check is known to pass (not merely not known to
    /// fail). `single_active` sends only to such members.
    fn passes_check(&self) -> bool {
        self.healthy()
    }
    /// Its place in the declared order, lowest first (`single_active`).
    fn order(&self) -> u32 {
        0
    }
}

// === Tiers ===

/// The set of backends a pick chooses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Enabled, healthy primaries.
    Primaries,
    /// Enabled primaries, healthy or not (panic mode).
    PanicPrimaries,
    /// Enabled, healthy backups (no primary is usable).
    Backups,
    /// Every enabled backend (nothing is usable and panic mode is on).
    PanicAll,
}

impl Tier {
    pub fn is_panic(self) -> bool {
        matches!(self, Tier::PanicPrimaries | Tier::PanicAll)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Primaries => "primaries",
            Tier::PanicPrimaries => "panic_primaries",
            Tier::Backups => "backups",
            Tier::PanicAll => "panic_all",
        }
    }

    /// Does this tier include the backend?
    pub fn admits<E: Endpoint>(self, e: &E) -> bool {
        if e.admin_state() != AdminState::Enabled {
            return false;
        }
        match self {
            Tier::Primaries => e.role() == BackendRole::Primary && e.healthy(),
            Tier::PanicPrimaries => e.role() == BackendRole::Primary,
            Tier::Backups => e.role() == BackendRole::Backup && e.healthy(),
            Tier::PanicAll => true,
        }
    }
}

/// Which tier takes traffic now, or `None` when no backend may take any.
pub fn select_tier<E: Endpoint>(endpoints: &[E], panic_threshold_percent: u32) -> Option<Tier> {
    let (mut primaries, mut healthy_primaries, mut healthy_backups, mut enabled) = (0, 0, 0, 0);
    for e in endpoints {
        if e.admin_state() != AdminState::Enabled {
            continue;
        }
        enabled += 1;
        match e.role() {
            BackendRole::Primary => {
                primaries += 1;
                healthy_primaries += usize::from(e.healthy());
            }
            BackendRole::Backup => healthy_backups += usize::from(e.healthy()),
        }
    }
    let below_threshold = |healthy: usize, total: usize| {
        panic_threshold_percent > 0 && healthy * 100 < total * panic_threshold_percent as usize
    };
    if healthy_primaries > 0 {
        if below_threshold(healthy_primaries, primaries) {
            return Some(Tier::PanicPrimaries);
        }
        return Some(Tier::Primaries);
    }
    if healthy_backups > 0 {
        return Some(Tier::Backups);
    }
    if enabled > 0 && panic_threshold_percent > 0 {
        return Some(Tier::PanicAll);
    }
    None
}

// === Balancer ===

/// Per-pick input.
pub struct PickContext<'a> {
    /// Round-robin position, shared by every pick of the pool (and, ideally,
    /// across configuration versions so a reload does not restart the cycle).
    pub cursor: &'a AtomicU64,
    /// Hash of the client address (ip_hash).
    pub hash: u64,
    /// Backends already tried by this request (retries go elsewhere).
    pub exclude: &'a [usize],
    /// Two uniformly random numbers (random_two_choices).
    pub random: [u64; 2],
}

/// The outcome of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    pub tier: Tier,
}

/// A pool's balancer: the policy and what it precomputes from the declared
/// backends (the smooth round-robin sequence, the Maglev tables).
#[derive(Debug, Clone)]
pub struct Balancer {
    policy: LbPolicy,
    panic_threshold_percent: u32,
    /// Smooth weighted round-robin order over all enabled backends.
    sequence: Vec<u32>,
    /// Consistent-hash tables: one over enabled primaries, one over enabled
    /// backups, one over both (panic).
    maglev_primaries: Option<Maglev>,
    maglev_backups: Option<Maglev>,
    maglev_all: Option<Maglev>,
}

impl Balancer {
    pub fn new<E: Endpoint>(
        policy: LbPolicy,
        endpoints: &[E],
        panic_threshold_percent: u32,
    ) -> Self {
        let enabled = |e: &E| e.admin_state() == AdminState::Enabled;
        let weights: Vec<u32> = endpoints
            .iter()
            .map(|e| if enabled(e) { e.weight() } else { 0 })
            .collect();
        let sequence = match policy {
            LbPolicy::RoundRobin | LbPolicy::LeastConnections => {
                smooth_wrr_sequence(&weights, MAX_SEQUENCE)
            }
            _ => Vec::new(),
        };
        let maglev = |keep: &dyn Fn(&E) -> bool| {
            let members: Vec<(usize, &str, u32)> = endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| enabled(e) && keep(e))
                .map(|(i, e)| (i, e.key(), e.weight()))
                .collect();
            (!members.is_empty()).then(|| Maglev::new(&members))
        };
        let (maglev_primaries, maglev_backups, maglev_all) = if policy == LbPolicy::IpHash {
            (
                maglev(&|e| e.role() == BackendRole::Primary),
                maglev(&|e| e.role() == BackendRole::Backup),
                maglev(&|_| true),
            )
        } else {
            (None, None, None)
        };
        Self {
            policy,
            panic_threshold_percent,
            sequence,
            maglev_primaries,
            maglev_backups,
            maglev_all,
        }
    }

    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Picks a backend for a request, or `None` when none may take it.
    ///
    /// When every backend of the chosen tier is excluded (a retry that has
    /// tried them all), any other enabled, healthy backend is acceptable
    /// (except for `single_active`, which only ever moves down its order).
    pub fn pick<E: Endpoint>(&self, endpoints: &[E], cx: &PickContext<'_>) -> Option<Picked> {
        self.pick_admitted(endpoints, cx, &|_| true)
    }

    /// Like [`Balancer::pick`], among the backends `admit` accepts (say,
    /// those below their connection limit). `None` from here while
    /// [`Balancer::pick`] finds one means every candidate is full: the
    /// caller may wait. A full `single_active` member is not passed over.
    pub fn pick_admitted<E: Endpoint>(
        &self,
        endpoints: &[E],
        cx: &PickContext<'_>,
        admit: &dyn Fn(usize) -> bool,
    ) -> Option<Picked> {
        if self.policy == LbPolicy::SingleActive {
            return single_active(endpoints, cx.exclude).filter(|p| admit(p.index));
        }
        let tier = select_tier(endpoints, self.panic_threshold_percent)?;
        let ok = |i: usize| tier.admits(&endpoints[i]) && !cx.exclude.contains(&i) && admit(i);
        let index = match self.policy {
            LbPolicy::RoundRobin => self.pick_round_robin(endpoints, cx, &ok),
            LbPolicy::LeastConnections => self.pick_least_connections(endpoints, cx, &ok),
            LbPolicy::IpHash => self.pick_hashed(endpoints, tier, cx, &ok),
            LbPolicy::RandomTwoChoices => pick_two_choices(endpoints, cx, &ok),
            LbPolicy::SingleActive => unreachable!("handled above"),
        };
        if let Some(index) = index {
            return Some(Picked { index, tier });
        }
        // The tier is exhausted by exclusions: fall back to anything usable.
        let fallback = |i: usize| {
            let e = &endpoints[i];
            e.admin_state() == AdminState::Enabled
                && e.healthy()
                && !cx.exclude.contains(&i)
                && admit(i)
        };
        pick_least_loaded(endpoints, cx, &fallback).map(|index| Picked { index, tier })
    }

    fn pick_round_robin<E: Endpoint>(
        &self,
        endpoints: &[E],
        cx: &PickContext<'_>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = self.sequence.len() as u64;
        if len == 0 {
            return None;
        }
        // Each skipped slot is consumed from the shared cursor, so over a
        // cycle the usable backends keep exactly their weight ratios.
        for _ in 0..len.min(MAX_RR_PROBES) {
            let slot = cx.cursor.fetch_add(1, Ordering::Relaxed) % len;
            let i = self.sequence[slot as usize] as usize;
            if ok(i) {
                return Some(i);
            }
        }
        // Most of the cycle is unusable (many ejected or excluded): weighted
        // least-loaded among what is left.
        pick_least_loaded(endpoints, cx, ok)
    }

    /// nginx's least_conn: the fewest in-flight requests relative to
    /// weight; ties (an idle pool) go by smooth weighted round-robin, so
    /// weights hold when there is no load to compare.
    fn pick_least_connections<E: Endpoint>(
        &self,
        endpoints: &[E],
        cx: &PickContext<'_>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut best: Option<(u64, u64)> = None;
        for (i, e) in endpoints.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let (load, weight) = (e.in_flight(), u64::from(e.weight().max(1)));
            if best.is_none_or(|(bl, bw)| load * bw < bl * weight) {
                best = Some((load, weight));
            }
        }
        let (bl, bw) = best?;
        let tied = |i: usize| {
            let e = &endpoints[i];
            ok(i) && e.in_flight() * bw == bl * u64::from(e.weight().max(1))
        };
        // Loads move while we look: if the tie vanished, the least loaded.
        self.pick_round_robin(endpoints, cx, &tied)
            .or_else(|| pick_least_loaded(endpoints, cx, ok))
    }

    fn pick_hashed<E: Endpoint>(
        &self,
        endpoints: &[E],
        tier: Tier,
        cx: &PickContext<'_>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let table = match tier {
            Tier::Primaries | Tier::PanicPrimaries => self.maglev_primaries.as_ref(),
            Tier::Backups => self.maglev_backups.as_ref(),
            Tier::PanicAll => self.maglev_all.as_ref(),
        }?;
        // A client whose backend is unusable is rehashed: it lands on another
        // backend chosen by the same table, so only its clients move.
        let mut h = cx.hash;
        for _ in 0..MAX_HASH_PROBES {
            let i = table.lookup(h);
            if ok(i) {
                return Some(i);
            }
            h = mix64(h ^ 0x9e37_79b9_7f4a_7c15);
        }
        pick_least_loaded(endpoints, cx, ok)
    }
}

// === single_active ===

/// Which tier a `single_active` pool serves from: enabled primaries that
/// pass their check and are usable, else such backups, else nothing.
pub fn single_active_tier<E: Endpoint>(endpoints: &[E]) -> Option<Tier> {
    let usable = |e: &E, role| {
        e.admin_state() == AdminState::Enabled
            && e.role() == role
            && e.passes_check()
            && e.healthy()
    };
    if endpoints.iter().any(|e| usable(e, BackendRole::Primary)) {
        Some(Tier::Primaries)
    } else if endpoints.iter().any(|e| usable(e, BackendRole::Backup)) {
        Some(Tier::Backups)
    } else {
        None
    }
}

/// The member a `single_active` pool sends to: the first usable one of its
/// tier by (order, address), skipping `exclude` (tried already). Allocates
/// nothing.
pub fn single_active<E: Endpoint>(endpoints: &[E], exclude: &[usize]) -> Option<Picked> {
    let tier = single_active_tier(endpoints)?;
    let role = if tier == Tier::Primaries {
        BackendRole::Primary
    } else {
        BackendRole::Backup
    };
    let mut best: Option<usize> = None;
    for (i, e) in endpoints.iter().enumerate() {
        if e.admin_state() != AdminState::Enabled
            || e.role() != role
            || !e.passes_check()
            || !e.healthy()
            || exclude.contains(&i)
        {
            continue;
        }
        let earlier = |b: usize| {
            let o = &endpoints[b];
            (e.order(), e.key()) < (o.order(), o.key())
        };
        if best.is_none_or(earlier) {
            best = Some(i);
        }
    }
    best.map(|index| Picked { index, tier })
}

/// How many members of a pool claim to be able to take a `single_active`
/// pool's traffic: every one not disabled whose check passes. More than
/// one is a split brain (two database primaries) to report loudly.
pub fn claimants<E: Endpoint>(endpoints: &[E]) -> usize {
    endpoints
        .iter()
        .filter(|e| e.admin_state() != AdminState::Disabled && e.passes_check())
        .count()
}

/// Longest smooth round-robin cycle kept; longer cycles are scaled down.
const MAX_SEQUENCE: usize = 1 << 16;
const MAX_RR_PROBES: u64 = 64;
const MAX_HASH_PROBES: usize = 16;

/// Fewest in-flight requests relative to weight: minimises
/// `(in_flight + 1) / weight`. Ties go to the first candidate after a
/// rotating start, so equal backends share the load.
fn pick_least_loaded<E: Endpoint>(
    endpoints: &[E],
    cx: &PickContext<'_>,
    ok: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let start = (cx.cursor.fetch_add(1, Ordering::Relaxed) % n as u64) as usize;
    let mut best: Option<(usize, u64, u64)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if !ok(i) {
            continue;
        }
        let e = &endpoints[i];
        let (load, weight) = (e.in_flight() + 1, u64::from(e.weight().max(1)));
        match best {
            // load/weight < best_load/best_weight, without division.
            Some((_, bl, bw)) if load * bw >= bl * weight => {}
            _ => best = Some((i, load, weight)),
        }
    }
    best.map(|(i, _, _)| i)
}

/// Power of two choices: two weighted random candidates, the one with fewer
/// in-flight requests relative to its weight wins (the first on a tie, so an
/// idle pool is spread by weight).
fn pick_two_choices<E: Endpoint>(
    endpoints: &[E],
    cx: &PickContext<'_>,
    ok: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let total: u64 = (0..endpoints.len())
        .filter(|&i| ok(i))
        .map(|i| u64::from(endpoints[i].weight().max(1)))
        .sum();
    if total == 0 {
        return None;
    }
    // Health is read live, so a backend may drop out between the two scans:
    // then the last admitted one seen stands in rather than nothing.
    let weighted = |r: u64| {
        let mut target = r % total;
        let mut last = None;
        for (i, e) in endpoints.iter().enumerate() {
            if !ok(i) {
                continue;
            }
            let w = u64::from(e.weight().max(1));
            if target < w {
                return Some(i);
            }
            target -= w;
            last = Some(i);
        }
        last
    };
    let (a, b) = (weighted(cx.random[0])?, weighted(cx.random[1])?);
    let load = |i: usize| {
        let e = &endpoints[i];
        (e.in_flight(), u64::from(e.weight().max(1)))
    };
    let ((la, wa), (lb, wb)) = (load(a), load(b));
    Some(if lb * wa < la * wb { b } else { a })
}

// === Smooth weighted round-robin ===

/// nginx's smooth weighted round-robin: each round every backend gains its
/// weight, the richest is picked and pays the total. Weights 5:1:1 give
/// `a a b a c a a` rather than `a a a a a b c`.
#[derive(Debug, Clone)]
pub struct SmoothWrr {
    weights: Vec<i64>,
    current: Vec<i64>,
    total: i64,
}

impl SmoothWrr {
    /// Weight 0 means "never pick".
    pub fn new(weights: &[u32]) -> Self {
        Self {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: vec![0; weights.len()],
            total: weights.iter().map(|&w| i64::from(w)).sum(),
        }
    }

    /// The next backend, or `None` when every weight is 0.
    pub fn next_index(&mut self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let mut best = None;
        for (i, w) in self.weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            self.current[i] += w;
            if best.is_none_or(|b: usize| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= self.total;
        Some(b)
    }
}

/// One full cycle of smooth weighted round-robin, as backend indices.
/// Weights are divided by their greatest common divisor; a cycle longer than
/// `max_len` is scaled down proportionally (each non-zero weight keeps at
/// least one slot).
pub fn smooth_wrr_sequence(weights: &[u32], max_len: usize) -> Vec<u32> {
    let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let mut reduced: Vec<u32> = weights.iter().map(|w| w / g).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total > max_len as u64 {
        let scale = max_len as f64 / total as f64;
        for w in &mut reduced {
            if *w > 0 {
                *w = ((f64::from(*w) * scale) as u32).max(1);
            }
        }
    }
    let len: usize = reduced.iter().map(|&w| w as usize).sum();
    let mut wrr = SmoothWrr::new(&reduced);
    (0..len)
        .filter_map(|_| wrr.next_index().map(|i| i as u32))
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

// === Maglev ===

/// Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights: a
/// lookup table of prime size where each backend owns slots in proportion to
/// its weight. Removing one of N backends moves about 1/N of the keys; the
/// others keep their backend.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

/// Table sizes: primes, ~1000 slots per backend where possible: a bigger
/// table spreads weights more evenly and moves fewer bystanders on a change.
const MAGLEV_SIZES: [u64; 8] = [1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071];

impl Maglev {
    /// `members`: (index returned by lookups, stable key, weight ≥ 1).
    pub fn new(members: &[(usize, &str, u32)]) -> Self {
        let m = MAGLEV_SIZES
            .iter()
            .copied()
            .find(|&m| m >= 1_000 * members.len() as u64)
            .unwrap_or(MAGLEV_SIZES[MAGLEV_SIZES.len() - 1]);
        let mut table = vec![u32::MAX; m as usize];
        if members.is_empty() {
            return Self { table: Vec::new() };
        }
        let perm: Vec<(u64, u64)> = members
            .iter()
            .map(|(_, key, _)| {
                let offset = hash_bytes(key.as_bytes(), 0x5bd1_e995) % m;
                let skip = hash_bytes(key.as_bytes(), 0x2718_2818) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = members.iter().map(|m| m.2.max(1)).max().unwrap_or(1) as u64;
        let mut next = vec![0u64; members.len()];
        let mut credit = vec![0u64; members.len()];
        let mut filled = 0u64;
        'fill: loop {
            for (k, (index, _, weight)) in members.iter().enumerate() {
                // Weighted Maglev: a backend takes a turn each time its
                // accumulated weight reaches the largest weight.
                credit[k] += u64::from((*weight).max(1));
                if credit[k] < max_w {
                    continue;
                }
                credit[k] -= max_w;
                let (offset, skip) = perm[k];
                loop {
                    let slot = (offset + next[k] * skip) % m;
                    next[k] += 1;
                    if table[slot as usize] == u32::MAX {
                        table[slot as usize] = *index as u32;
                        break;
                    }
                }
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self { table }
    }

    pub fn lookup(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

// === Hashing ===

/// A fast, stable 64-bit hash (FNV-1a then a finaliser), the same on every
/// machine and every build: clients keep their backend across proxies and
/// restarts.
pub fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// splitmix64's finaliser: spreads every input bit over the output.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ip_hash key of a client address.
pub fn client_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets(), 0),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets(), 0),
            None => hash_bytes(&v6.octets(), 0),
        },
    }
}

#[cfg(test)]
mod tests;
