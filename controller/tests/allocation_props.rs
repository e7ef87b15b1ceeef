//! Property tests: random pool changes and Service add/update/delete, driven the way the controller drives
//! the allocator (a pool change re-runs every Service). After every step: no address is held by two Services
//! that may not share it, no address lies outside its pool, the pool counters agree with the assignments, and
//! restoring a fresh allocator from the resulting statuses gives back exactly the same assignment.

use ferrolb_controller::service::ServiceIntent;
use ferrolb_controller::{Allocator, Family, PoolConfig, PortKey, ServiceKey};
use ferrolb_crds::{IPAddressPoolSpec, ServiceAllocation};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

const SERVICES: usize = 8;

#[derive(Debug, Clone)]
struct PoolChoice {
    v4: Option<(u8, u8)>,
    v6: Option<(u8, u8)>,
    auto_assign: bool,
    avoid_buggy: bool,
    pinned_to: Option<&'static str>,
}

#[derive(Debug, Clone)]
enum Op {
    SetPools([Option<PoolChoice>; 3]),
    Upsert(usize, ServiceIntent),
    Delete(usize),
}

const POOL_NAMES: [&str; 3] = ["a", "b", "c"];

/// Each pool owns its own /24 (and IPv6 /120), so pools never overlap and all stay valid.
fn pool_config(slot: usize, c: &PoolChoice) -> Option<PoolConfig> {
    let mut addresses = Vec::new();
    if let Some((x, y)) = c.v4 {
        addresses.push(format!("10.0.{slot}.{}-10.0.{slot}.{}", x.min(y), x.max(y)));
    }
    if let Some((x, y)) = c.v6 {
        addresses.push(format!("fc00::{slot}:{:x}-fc00::{slot}:{:x}", x.min(y), x.max(y)));
    }
    if addresses.is_empty() {
        return None;
    }
    let spec = IPAddressPoolSpec {
        addresses,
        auto_assign: Some(c.auto_assign),
        avoid_buggy_ips: c.avoid_buggy,
        service_allocation: c.pinned_to.map(|ns| ServiceAllocation {
            priority: Some(1),
            namespaces: vec![ns.to_string()],
            ..ServiceAllocation::default()
        }),
    };
    Some(PoolConfig::from_spec(POOL_NAMES[slot], &spec).expect("generated pools are valid"))
}

fn small_range() -> impl Strategy<Value = (u8, u8)> {
    // Near .0 and .255 on purpose, so avoidBuggyIPs matters.
    prop_oneof![(0u8..6, 0u8..6), (250u8..=255, 250u8..=255), (0u8..=255, 0u8..=255).prop_map(|(a, _)| (a, a))]
}

fn pool_choice() -> impl Strategy<Value = PoolChoice> {
    (
        proptest::option::weighted(0.9, small_range()),
        proptest::option::of(small_range()),
        proptest::bool::weighted(0.8),
        any::<bool>(),
        proptest::option::weighted(0.2, Just("team")),
    )
        .prop_map(|(v4, v6, auto_assign, avoid_buggy, pinned_to)| PoolChoice {
            v4,
            v6,
            auto_assign,
            avoid_buggy,
            pinned_to,
        })
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..3, prop_oneof![0u8..6, 250u8..=255]).prop_map(|(s, h)| IpAddr::from([10, 0, s, h])),
        (0u16..3, 0u16..6).prop_map(|(s, h)| IpAddr::from([0xfc00, 0, 0, 0, 0, 0, s, h])),
    ]
}

fn intent(index: usize) -> impl Strategy<Value = ServiceIntent> {
    let ports = proptest::sample::subsequence(vec![("TCP", 53), ("UDP", 53), ("TCP", 80)], 0..=3);
    let families = prop_oneof![
        Just((vec![Family::V4], false)),
        Just((vec![Family::V6], false)),
        Just((vec![Family::V4, Family::V6], false)),
        Just((vec![Family::V6, Family::V4], true)),
    ];
    (
        proptest::option::of(prop_oneof![Just("k1"), Just("k2")]),
        prop_oneof![Just(""), Just("app=x")],
        ports,
        proptest::option::weighted(0.3, address()),
        proptest::option::weighted(0.2, proptest::sample::select(POOL_NAMES.to_vec())),
        families,
        prop_oneof![Just("default"), Just("team")],
    )
        .prop_map(move |(sharing, backend, ports, requested, pool, (families, require), ns)| {
            let mut s = ServiceIntent::simple(ns, &format!("svc{index}"), &[]);
            s.sharing_key = sharing.map(String::from);
            s.backend_key = backend.to_string();
            s.ports = ports.into_iter().map(|(p, n)| PortKey { protocol: p.into(), port: n }).collect();
            s.requested = requested.into_iter().filter(|ip| families.contains(&Family::of(*ip))).collect();
            s.pool = pool.map(String::from);
            s.families = families;
            s.require_all_families = require && s.requested.is_empty();
            s
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => proptest::array::uniform3(proptest::option::weighted(0.8, pool_choice())).prop_map(Op::SetPools),
        6 => (0..SERVICES).prop_flat_map(|i| intent(i).prop_map(move |s| Op::Upsert(i, s))),
        1 => (0..SERVICES).prop_map(Op::Delete),
    ]
}

struct Model {
    allocator: Allocator,
    pools: Vec<PoolConfig>,
    /// Current intent per live Service; the key may change namespace, so index by slot.
    live: BTreeMap<usize, ServiceIntent>,
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::SetPools(choices) => {
                self.pools = choices
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.as_ref().and_then(|c| pool_config(i, c)))
                    .collect();
                self.allocator.set_pools(self.pools.clone(), BTreeMap::new());
                for s in self.live.values() {
                    let _ = self.allocator.allocate(s);
                }
            }
            Op::Upsert(i, s) => {
                if let Some(old) = self.live.get(i)
                    && old.key != s.key
                {
                    self.allocator.release(&old.key);
                }
                self.live.insert(*i, s.clone());
                let _ = self.allocator.allocate(s);
            }
            Op::Delete(i) => {
                if let Some(old) = self.live.remove(i) {
                    self.allocator.release(&old.key);
                }
            }
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let intents: BTreeMap<&ServiceKey, &ServiceIntent> = self.live.values().map(|s| (&s.key, s)).collect();
        let mut holders: BTreeMap<IpAddr, Vec<&ServiceIntent>> = BTreeMap::new();
        let mut used: BTreeMap<(&str, Family), BTreeSet<IpAddr>> = BTreeMap::new();
        for (key, a) in self.allocator.assignments() {
            let intent =
                intents.get(key).ok_or_else(|| TestCaseError::fail(format!("{key} holds an address but is gone")))?;
            let pool =
                self.pools.iter().find(|p| p.name == a.pool).ok_or_else(|| TestCaseError::fail("unknown pool"))?;
            let families: BTreeSet<Family> = a.ips.iter().map(|ip| Family::of(*ip)).collect();
            prop_assert_eq!(families.len(), a.ips.len(), "one address per family: {:?}", a);
            prop_assert!(!a.ips.is_empty());
            for ip in &a.ips {
                prop_assert!(pool.contains_usable(*ip), "{} outside pool {}", ip, pool.name);
                prop_assert!(intent.families.contains(&Family::of(*ip)));
                holders.entry(*ip).or_default().push(intent);
                used.entry((pool.name.as_str(), Family::of(*ip))).or_default().insert(*ip);
            }
            if !intent.requested.is_empty() {
                prop_assert_eq!(
                    a.ips.iter().collect::<BTreeSet<_>>(),
                    intent.requested.iter().collect::<BTreeSet<_>>()
                );
            }
            if let Some(named) = &intent.pool {
                prop_assert_eq!(named, &a.pool);
            }
            prop_assert!(pool.allows(intent));
        }
        for (ip, on_ip) in &holders {
            for (i, x) in on_ip.iter().enumerate() {
                for y in &on_ip[i + 1..] {
                    prop_assert!(
                        x.sharing_key.is_some() && x.sharing_key == y.sharing_key,
                        "{} shared without a common key",
                        ip
                    );
                    prop_assert_eq!(&x.backend_key, &y.backend_key);
                    prop_assert!(x.ports.is_disjoint(&y.ports), "{} and {} clash on {}", x.key, y.key, ip);
                }
            }
        }
        for pool in &self.pools {
            let usage = self.allocator.pool_usage(&pool.name).ok_or_else(|| TestCaseError::fail("usage"))?;
            let count = |f| used.get(&(pool.name.as_str(), f)).map_or(0, |s| s.len() as u128);
            prop_assert_eq!(usage.assigned_v4, count(Family::V4));
            prop_assert_eq!(usage.assigned_v6, count(Family::V6));
        }

        let mut restored = Allocator::new();
        restored.set_pools(self.pools.clone(), BTreeMap::new());
        for (key, a) in self.allocator.assignments() {
            let got = restored.restore(intents[key], &a.ips);
            prop_assert_eq!(got.as_ref(), Ok(a), "restoring {}", key);
        }
        let before: Vec<_> = self.allocator.assignments().collect();
        let after: Vec<_> = restored.assignments().collect();
        prop_assert_eq!(before, after);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn random_histories_keep_the_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut model = Model { allocator: Allocator::new(), pools: Vec::new(), live: BTreeMap::new() };
        for op in &ops {
            model.apply(op);
            model.check()?;
        }
    }
}
