use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use super::*;

#[derive(Debug, Clone)]
struct Ep {
    key: String,
    weight: u32,
    role: BackendRole,
    admin: AdminState,
    healthy: bool,
    in_flight: Cell<u64>,
    /// The agents' check passes (`single_active`).
    checked: bool,
    order: u32,
}

fn ep(key: &str, weight: u32) -> Ep {
    Ep {
        key: key.into(),
        weight,
        role: BackendRole::Primary,
        admin: AdminState::Enabled,
        healthy: true,
        in_flight: Cell::new(0),
        checked: true,
        order: 0,
    }
}

impl Endpoint for Ep {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn role(&self) -> BackendRole {
        self.role
    }
    fn admin_state(&self) -> AdminState {
        self.admin
    }
    fn healthy(&self) -> bool {
        self.healthy
    }
    fn in_flight(&self) -> u64 {
        self.in_flight.get()
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn passes_check(&self) -> bool {
        self.checked
    }
    fn order(&self) -> u32 {
        self.order
    }
}

/// A deterministic generator for the random numbers a pick needs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

/// A pick context on `cursor` with nothing excluded.
fn context(cursor: &AtomicU64, hash: u64, random: [u64; 2]) -> PickContext<'_> {
    PickContext {
        cursor,
        hash,
        exclude: &[],
        random,
    }
}

fn counts(
    b: &Balancer,
    eps: &[Ep],
    n: usize,
    mut hash: impl FnMut(usize) -> u64,
) -> HashMap<usize, usize> {
    let cursor = AtomicU64::new(0);
    let mut rng = Rng(7);
    let mut out = HashMap::new();
    for k in 0..n {
        let cx = context(&cursor, hash(k), [rng.next(), rng.next()]);
        let p = b.pick(eps, &cx).expect("a backend");
        *out.entry(p.index).or_default() += 1;
    }
    out
}

fn share(c: &HashMap<usize, usize>, i: usize, n: usize) -> f64 {
    *c.get(&i).unwrap_or(&0) as f64 / n as f64
}

// === smooth weighted round-robin ===

#[test]
fn smooth_wrr_gives_exact_shares_interleaved() {
    let mut wrr = SmoothWrr::new(&[1, 2, 3]);
    let seq: Vec<usize> = (0..6).map(|_| wrr.next_index().unwrap()).collect();
    // Exactly 1/6, 2/6, 3/6 per cycle...
    for (i, want) in [(0, 1), (1, 2), (2, 3)] {
        assert_eq!(seq.iter().filter(|&&x| x == i).count(), want, "{seq:?}");
    }
    // ...and interleaved: the heaviest never runs twice in a row here, and
    // nginx's reference order is c b a c b c.
    assert_eq!(seq, [2, 1, 0, 2, 1, 2]);
    let mut wrr = SmoothWrr::new(&[5, 1, 1]);
    let seq: Vec<usize> = (0..7).map(|_| wrr.next_index().unwrap()).collect();
    assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0], "not bursty like a a a a a b c");
}

#[test]
fn round_robin_balancer_keeps_weight_ratios() {
    let eps = vec![ep("a:1", 1), ep("b:1", 2), ep("c:1", 3)];
    let b = Balancer::new(LbPolicy::RoundRobin, &eps, 50);
    let n = 6_000;
    let c = counts(&b, &eps, n, |_| 0);
    assert_eq!(c[&0], 1_000);
    assert_eq!(c[&1], 2_000);
    assert_eq!(c[&2], 3_000);
}

#[test]
fn round_robin_skips_unusable_and_keeps_ratios_among_the_rest() {
    let mut eps = vec![ep("a:1", 1), ep("b:1", 2), ep("c:1", 3), ep("d:1", 4)];
    let b = Balancer::new(LbPolicy::RoundRobin, &eps, 0);
    eps[3].healthy = false; // ejected after the table was built
    let c = counts(&b, &eps, 6_000, |_| 0);
    assert_eq!(c.get(&3), None);
    assert_eq!((c[&0], c[&1], c[&2]), (1_000, 2_000, 3_000));
}

#[test]
fn long_sequences_are_scaled_down_but_keep_every_backend() {
    let seq = smooth_wrr_sequence(&[1000, 999, 1, 0], 100);
    assert!(seq.len() <= 103, "{}", seq.len());
    assert!(seq.contains(&2) && !seq.contains(&3));
    assert_eq!(
        smooth_wrr_sequence(&[4, 8], 100),
        vec![1, 0, 1],
        "gcd applied"
    );
    assert!(smooth_wrr_sequence(&[0, 0], 100).is_empty());
}

// === least connections ===

#[test]
fn least_connections_prefers_fewest_in_flight_relative_to_weight() {
    let eps = vec![ep("a:1", 1), ep("b:1", 2), ep("c:1", 1)];
    eps[0].in_flight.set(3);
    eps[1].in_flight.set(5); // (5+1)/2 = 3 per weight unit
    eps[2].in_flight.set(1);
    let b = Balancer::new(LbPolicy::LeastConnections, &eps, 50);
    let cursor = AtomicU64::new(0);
    let cx = context(&cursor, 0, [0, 0]);
    assert_eq!(b.pick(&eps, &cx).unwrap().index, 2);
    // Simulate requests that never finish: load follows weight, 1:2:1.
    for e in &eps {
        e.in_flight.set(0);
    }
    let mut c = [0usize; 3];
    for _ in 0..4_000 {
        let i = b.pick(&eps, &cx).unwrap().index;
        eps[i].in_flight.set(eps[i].in_flight.get() + 1);
        c[i] += 1;
    }
    assert!(
        c[0].abs_diff(1_000) <= 1 && c[2].abs_diff(1_000) <= 1,
        "{c:?}"
    );
    assert!(c[1].abs_diff(2_000) <= 2, "{c:?}");
}

#[test]
fn least_connections_on_an_idle_pool_follows_weights() {
    let eps = vec![ep("a:1", 1), ep("b:1", 2), ep("c:1", 3)];
    let b = Balancer::new(LbPolicy::LeastConnections, &eps, 50);
    let c = counts(&b, &eps, 6_000, |_| 0);
    assert_eq!((c[&0], c[&1], c[&2]), (1_000, 2_000, 3_000));
}

#[test]
fn least_connections_shares_ties() {
    let eps = vec![ep("a:1", 1), ep("b:1", 1), ep("c:1", 1)];
    let b = Balancer::new(LbPolicy::LeastConnections, &eps, 50);
    let c = counts(&b, &eps, 3_000, |_| 0);
    for i in 0..3 {
        assert_eq!(c[&i], 1_000, "{c:?}");
    }
}

// === ip_hash ===

fn client(k: usize) -> u64 {
    let ip = Ipv4Addr::from(0x0a00_0000u32 + k as u32);
    client_hash(IpAddr::V4(ip))
}

#[test]
fn ip_hash_is_stable_and_honours_weights() {
    let eps = vec![
        ep("10.0.0.1:80", 1),
        ep("10.0.0.2:80", 2),
        ep("10.0.0.3:80", 3),
    ];
    let b = Balancer::new(LbPolicy::IpHash, &eps, 50);
    let cursor = AtomicU64::new(0);
    let pick = |h: u64| b.pick(&eps, &context(&cursor, h, [1, 2])).unwrap().index;
    for k in 0..1_000 {
        assert_eq!(
            pick(client(k)),
            pick(client(k)),
            "same client, same backend"
        );
    }
    // A rebuilt balancer (a config reload, another proxy) agrees.
    let again = Balancer::new(LbPolicy::IpHash, &eps, 50);
    for k in 0..1_000 {
        let cx = context(&cursor, client(k), [0, 0]);
        assert_eq!(again.pick(&eps, &cx).unwrap().index, pick(client(k)));
    }
    let n = 60_000;
    let c = counts(&b, &eps, n, client);
    for (i, want) in [(0, 1.0 / 6.0), (1, 2.0 / 6.0), (2, 3.0 / 6.0)] {
        let got = share(&c, i, n);
        assert!(
            (got - want).abs() < 0.03,
            "backend {i}: {got:.3} vs {want:.3}"
        );
    }
}

#[test]
fn ip_hash_removing_one_of_n_moves_about_one_nth() {
    let n_backends = 10;
    let all: Vec<Ep> = (0..n_backends)
        .map(|i| ep(&format!("10.0.1.{i}:80"), 1))
        .collect();
    let before = Balancer::new(LbPolicy::IpHash, &all, 50);
    // Backend 4 is removed from the config.
    let fewer: Vec<Ep> = all
        .iter()
        .filter(|e| e.key != "10.0.1.4:80")
        .cloned()
        .collect();
    let after = Balancer::new(LbPolicy::IpHash, &fewer, 50);
    let cursor = AtomicU64::new(0);
    let key_of = |eps: &[Ep], b: &Balancer, h: u64| {
        let cx = context(&cursor, h, [0, 0]);
        eps[b.pick(eps, &cx).unwrap().index].key.clone()
    };
    let clients = 20_000;
    let (mut moved, mut bystanders) = (0, 0);
    for k in 0..clients {
        let (old, new) = (
            key_of(&all, &before, client(k)),
            key_of(&fewer, &after, client(k)),
        );
        if old != new {
            moved += 1;
            bystanders += usize::from(old != "10.0.1.4:80");
        }
    }
    let frac = moved as f64 / clients as f64;
    assert!(
        (frac - 0.1).abs() < 0.03,
        "moved {frac:.3}, expected about 1/10"
    );
    // Maglev trades a little extra movement for balance: clients of the
    // surviving backends almost all stay.
    let extra = bystanders as f64 / clients as f64;
    assert!(
        extra < 0.01,
        "{extra:.3} of clients moved between survivors"
    );
}

#[test]
fn ip_hash_ejection_moves_only_that_backends_clients() {
    let mut eps: Vec<Ep> = (0..5).map(|i| ep(&format!("10.0.2.{i}:80"), 1)).collect();
    let b = Balancer::new(LbPolicy::IpHash, &eps, 0);
    let cursor = AtomicU64::new(0);
    let pick = |eps: &[Ep], h: u64| {
        let cx = context(&cursor, h, [0, 0]);
        b.pick(eps, &cx).unwrap().index
    };
    let before: Vec<usize> = (0..5_000).map(|k| pick(&eps, client(k))).collect();
    eps[2].healthy = false;
    let mut spread = [0usize; 5];
    for (k, &old) in before.iter().enumerate() {
        let now = pick(&eps, client(k));
        if old == 2 {
            spread[now] += 1;
        } else {
            assert_eq!(now, old);
        }
    }
    assert_eq!(spread[2], 0);
    assert!(spread.iter().filter(|&&c| c > 0).count() >= 3, "{spread:?}");
}

// === random two choices ===

#[test]
fn two_choices_follows_weights_when_idle_and_avoids_the_loaded() {
    let eps = vec![ep("a:1", 1), ep("b:1", 2), ep("c:1", 3)];
    let b = Balancer::new(LbPolicy::RandomTwoChoices, &eps, 50);
    let n = 60_000;
    // With equal (zero) load the first candidate wins: weighted random.
    let c = counts(&b, &eps, n, |_| 0);
    for (i, want) in [(0, 1.0 / 6.0), (1, 2.0 / 6.0), (2, 3.0 / 6.0)] {
        let got = share(&c, i, n);
        assert!(
            (got - want).abs() < 0.02,
            "backend {i}: {got:.3} vs {want:.3}"
        );
    }
    // A busy backend is picked only when both choices land on it.
    eps[2].in_flight.set(100);
    let c = counts(&b, &eps, n, |_| 0);
    let got = share(&c, 2, n);
    assert!(
        (got - 0.25).abs() < 0.02,
        "busy backend got {got:.3}, want (3/6)^2"
    );
}

// === failover ===

#[test]
fn backups_take_traffic_only_when_no_primary_is_usable() {
    let mut eps = vec![ep("p1:1", 1), ep("p2:1", 1), ep("b1:1", 1)];
    eps[2].role = BackendRole::Backup;
    for policy in LbPolicy::ALL {
        let b = Balancer::new(policy, &eps, 0);
        let mut eps = eps.clone();
        let c = counts(&b, &eps, 1_000, client);
        assert_eq!(
            c.get(&2),
            None,
            "{policy:?}: backup idle while primaries serve"
        );
        eps[0].healthy = false;
        let c = counts(&b, &eps, 1_000, client);
        assert_eq!(c.get(&1), Some(&1_000), "{policy:?}: the surviving primary");
        eps[1].admin = AdminState::Disabled;
        let c = counts(&b, &eps, 1_000, client);
        assert_eq!(
            c.get(&2),
            Some(&1_000),
            "{policy:?}: failover to the backup"
        );
        eps[2].healthy = false;
        let cursor = AtomicU64::new(0);
        let cx = context(&cursor, 1, [1, 2]);
        assert_eq!(
            b.pick(&eps, &cx),
            None,
            "{policy:?}: nothing usable, no panic"
        );
    }
}

#[test]
fn draining_and_disabled_get_nothing_even_in_panic() {
    let mut eps = vec![ep("a:1", 1), ep("b:1", 1), ep("c:1", 1), ep("d:1", 1)];
    eps[1].admin = AdminState::Draining;
    eps[2].admin = AdminState::Disabled;
    for policy in LbPolicy::ALL {
        let b = Balancer::new(policy, &eps, 50);
        let c = counts(&b, &eps, 1_000, client);
        assert_eq!(c.get(&1), None, "{policy:?}");
        assert_eq!(c.get(&2), None, "{policy:?}");
        if policy == LbPolicy::SingleActive {
            continue; // no panic mode at all (its own test)
        }
        let mut sick = eps.clone();
        sick[0].healthy = false;
        sick[3].healthy = false;
        let c = counts(&b, &sick, 1_000, client);
        assert_eq!(c.get(&1).or(c.get(&2)), None, "{policy:?} in panic");
    }
}

#[test]
fn panic_threshold_spreads_over_all_primaries() {
    let mut eps: Vec<Ep> = (0..4).map(|i| ep(&format!("h{i}:1"), 1)).collect();
    eps[0].healthy = false;
    eps[1].healthy = false;
    // 2 of 4 healthy = 50%: not below a 50% threshold.
    assert_eq!(select_tier(&eps, 50), Some(Tier::Primaries));
    eps[2].healthy = false;
    // 1 of 4 = 25% < 50%: panic, all four share the load.
    assert_eq!(select_tier(&eps, 50), Some(Tier::PanicPrimaries));
    assert_eq!(
        select_tier(&eps, 0),
        Some(Tier::Primaries),
        "0 disables panic"
    );
    let b = Balancer::new(LbPolicy::RoundRobin, &eps, 50);
    let c = counts(&b, &eps, 4_000, |_| 0);
    for i in 0..4 {
        assert_eq!(c[&i], 1_000, "{c:?}");
    }
    eps[3].healthy = false;
    assert_eq!(select_tier(&eps, 50), Some(Tier::PanicAll));
    assert_eq!(select_tier(&eps, 0), None);
}

#[test]
fn retries_exclude_tried_backends() {
    let eps = vec![ep("a:1", 1), ep("b:1", 1), ep("c:1", 1)];
    for policy in LbPolicy::ALL {
        let b = Balancer::new(policy, &eps, 50);
        let cursor = AtomicU64::new(0);
        for h in 0..100u64 {
            let cx = context(&cursor, mix64(h), [mix64(h), mix64(h + 1)]);
            let first = b.pick(&eps, &cx).unwrap().index;
            let tried = [first];
            let cx = PickContext {
                exclude: &tried,
                ..cx
            };
            let second = b.pick(&eps, &cx).unwrap().index;
            assert_ne!(first, second, "{policy:?}");
            let tried = [0, 1, 2];
            let cx = PickContext {
                exclude: &tried,
                ..cx
            };
            assert_eq!(b.pick(&eps, &cx), None, "{policy:?}");
        }
    }
}

#[test]
fn hashing_is_stable_across_builds() {
    // Pinned values: a change here moves every ip_hash client.
    assert_eq!(hash_bytes(b"", 0), mix64(0xcbf2_9ce4_8422_2325));
    let v4 = client_hash("192.0.2.1".parse().unwrap());
    let mapped = client_hash("::ffff:192.0.2.1".parse().unwrap());
    assert_eq!(v4, mapped, "IPv4-mapped IPv6 hashes as IPv4");
}

// === single_active ===

fn member(key: &str, order: u32, checked: bool) -> Ep {
    Ep {
        order,
        checked,
        ..ep(key, 1)
    }
}

fn pick_once(b: &Balancer, eps: &[Ep], exclude: &[usize]) -> Option<usize> {
    let cursor = AtomicU64::new(0);
    let cx = PickContext {
        cursor: &cursor,
        hash: 0,
        exclude,
        random: [1, 2],
    };
    b.pick(eps, &cx).map(|p| p.index)
}

#[test]
fn single_active_sends_everything_to_the_first_member_that_passes_by_declared_order() {
    // Declared order is not address order.
    let mut eps = vec![
        member("10.0.0.1:5432", 3, true),
        member("10.0.0.2:5432", 1, false),
        member("10.0.0.3:5432", 2, true),
    ];
    let b = Balancer::new(LbPolicy::SingleActive, &eps, 50);
    let c = counts(&b, &eps, 1_000, |k| k as u64);
    assert_eq!(c.len(), 1, "one member at a time: {c:?}");
    assert_eq!(c[&2], 1_000, "order 2 passes first");
    // Two members pass (a partition, a split brain): still only the first,
    // and the pool says two claim it.
    assert_eq!(claimants(&eps), 2);
    // The first by order comes to pass its check: it takes over.
    eps[1].checked = true;
    assert_eq!(pick_once(&b, &eps, &[]), Some(1));
    assert_eq!(claimants(&eps), 3);
    // A connect failure moves down the order, never back up.
    assert_eq!(pick_once(&b, &eps, &[1]), Some(2));
    assert_eq!(pick_once(&b, &eps, &[1, 2]), Some(0));
    assert_eq!(pick_once(&b, &eps, &[0, 1, 2]), None, "no fallback");
    // Ties in order go by address.
    let tied = vec![member("b:1", 0, true), member("a:1", 0, true)];
    assert_eq!(pick_once(&b, &tied, &[]), Some(1));
}

#[test]
fn single_active_never_sends_to_a_member_whose_check_has_not_passed() {
    let mut eps = vec![member("a:1", 1, false), member("b:1", 2, false)];
    // Panic threshold 100: other policies would spread over everyone.
    let b = Balancer::new(LbPolicy::SingleActive, &eps, 100);
    assert_eq!(pick_once(&b, &eps, &[]), None, "no panic mode");
    // Passing the check but ejected locally, draining or disabled: no.
    eps[0].checked = true;
    eps[0].healthy = false;
    assert_eq!(pick_once(&b, &eps, &[]), None);
    eps[0].healthy = true;
    eps[0].admin = AdminState::Draining;
    assert_eq!(pick_once(&b, &eps, &[]), None);
    assert_eq!(claimants(&eps), 1, "a draining member still claims");
    eps[0].admin = AdminState::Disabled;
    assert_eq!(claimants(&eps), 0);
    // Backups only when no primary passes.
    eps[1].role = BackendRole::Backup;
    eps[1].checked = true;
    let p = Balancer::new(LbPolicy::SingleActive, &eps, 0);
    let cursor = AtomicU64::new(0);
    let cx = context(&cursor, 0, [0, 0]);
    assert_eq!(
        p.pick(&eps, &cx),
        Some(Picked {
            index: 1,
            tier: Tier::Backups
        })
    );
}

#[test]
fn a_full_member_is_waited_for_not_passed_over() {
    let eps = vec![member("a:1", 1, true), member("b:1", 2, true)];
    let cursor = AtomicU64::new(0);
    let cx = context(&cursor, 0, [0, 0]);
    let full_a = |i: usize| i != 0;
    let b = Balancer::new(LbPolicy::SingleActive, &eps, 0);
    assert_eq!(b.pick_admitted(&eps, &cx, &full_a), None, "wait for a");
    assert_eq!(b.pick(&eps, &cx).map(|p| p.index), Some(0));
    // Other policies go to another backend with room, and only to those.
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::LeastConnections,
        LbPolicy::IpHash,
        LbPolicy::RandomTwoChoices,
    ] {
        let b = Balancer::new(policy, &eps, 0);
        for _ in 0..20 {
            let p = b.pick_admitted(&eps, &cx, &full_a);
            assert_eq!(p.map(|p| p.index), Some(1), "{policy:?}");
        }
        assert_eq!(b.pick_admitted(&eps, &cx, &|_| false), None, "{policy:?}");
    }
}

proptest::proptest! {
    /// Every proxy with the same view picks the same member, whatever
    /// order it holds the backends in, and that member is the first usable
    /// one by (order, address).
    #[test]
    fn single_active_is_the_same_choice_on_every_proxy(
        members in proptest::collection::vec((0u32..4, proptest::bool::ANY, proptest::bool::ANY, 0u8..3), 1..8),
        rotation in 0usize..8,
    ) {
        let eps: Vec<Ep> = members
            .iter()
            .enumerate()
            .map(|(i, (order, checked, healthy, admin))| Ep {
                healthy: *healthy,
                admin: [AdminState::Enabled, AdminState::Draining, AdminState::Disabled][*admin as usize],
                ..member(&format!("10.0.0.{i}:5432"), *order, *checked)
            })
            .collect();
        let mut rotated = eps.clone();
        rotated.rotate_left(rotation % eps.len());
        let b = Balancer::new(LbPolicy::SingleActive, &eps, 100);
        let here = pick_once(&b, &eps, &[]).map(|i| eps[i].key.clone());
        let there = pick_once(&b, &rotated, &[]).map(|i| rotated[i].key.clone());
        proptest::prop_assert_eq!(&here, &there);
        let want = eps
            .iter()
            .filter(|e| e.admin == AdminState::Enabled && e.checked && e.healthy)
            .min_by(|a, b| (a.order, &a.key).cmp(&(b.order, &b.key)))
            .map(|e| e.key.clone());
        proptest::prop_assert_eq!(here, want);
    }
}
