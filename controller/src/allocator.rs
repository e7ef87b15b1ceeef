//! The allocator: MetalLB's allocation semantics (docs/design.md §3) over plain data.
//!
//! Allocating or freeing an address never walks a pool: each pool family keeps its free addresses as runs of
//! a dense index space ([`crate::pool`]), so "lowest free" is the first run, and freeing merges neighbours.

use crate::pool::{Family, PoolConfig, Space};
use crate::service::{PortKey, ServiceIntent, ServiceKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// Addresses held by one Service, all from one pool, IPv4 first (MetalLB's ingress order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The pool they came from.
    pub pool: String,
    /// One address per family.
    pub ips: Vec<IpAddr>,
}

/// Result of [`Allocator::allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the Service holds now.
    pub assignment: Assignment,
    /// Whether it differs from what it held before the call.
    pub changed: bool,
    /// Whether it held addresses before and now shares on other terms (sharing key, backend key or ports): a
    /// Service refused for a clash with it may fit now, though no address was freed.
    pub sharing_changed: bool,
}

/// Address counts of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    /// IPv4 addresses held by at least one Service.
    pub assigned_v4: u128,
    /// IPv6 addresses held by at least one Service.
    pub assigned_v6: u128,
    /// IPv4 addresses free.
    pub available_v4: u128,
    /// IPv6 addresses free.
    pub available_v6: u128,
}

pub use crate::refusal::Refusal;

/// Free addresses of one pool family as runs `start -> end` (inclusive) of dense indices.
#[derive(Debug, Clone)]
struct FreeRuns {
    runs: BTreeMap<u128, u128>,
    free: u128,
}

impl FreeRuns {
    fn new(total: u128) -> Self {
        let mut runs = BTreeMap::new();
        if total > 0 {
            runs.insert(0, total - 1);
        }
        Self { runs, free: total }
    }

    fn lowest(&self) -> Option<u128> {
        self.runs.first_key_value().map(|(start, _)| *start)
    }

    fn take(&mut self, index: u128) -> bool {
        let Some((&start, &end)) = self.runs.range(..=index).next_back() else {
            return false;
        };
        if end < index {
            return false;
        }
        self.runs.remove(&start);
        if start < index {
            self.runs.insert(start, index - 1);
        }
        if index < end {
            self.runs.insert(index + 1, end);
        }
        self.free -= 1;
        true
    }

    fn give_back(&mut self, index: u128) {
        let (mut start, mut end) = (index, index);
        if let Some((&s, &e)) = self.runs.range(..index).next_back()
            && e.checked_add(1) == Some(index)
        {
            self.runs.remove(&s);
            start = s;
        }
        if let Some(next) = index.checked_add(1)
            && let Some(e) = self.runs.remove(&next)
        {
            end = e;
        }
        self.runs.insert(start, end);
        self.free += 1;
    }
}

#[derive(Debug, Clone)]
struct FamilyState {
    space: Space,
    free: FreeRuns,
}

#[derive(Debug, Clone)]
struct PoolState {
    config: PoolConfig,
    v4: FamilyState,
    v6: FamilyState,
    /// Addresses in use under a sharing key, by (sharing key, backend key), so a Service that may share finds
    /// candidates without scanning the pool.
    shareable: BTreeMap<(String, String), BTreeSet<(Family, u128)>>,
}

impl PoolState {
    fn new(config: PoolConfig) -> Option<Self> {
        let v4 = config.space(Family::V4)?;
        let v6 = config.space(Family::V6)?;
        Some(Self {
            v4: FamilyState { free: FreeRuns::new(v4.total), space: v4 },
            v6: FamilyState { free: FreeRuns::new(v6.total), space: v6 },
            config,
            shareable: BTreeMap::new(),
        })
    }

    fn family(&self, family: Family) -> &FamilyState {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FamilyState {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

/// Who uses one address. Usually one Service with a port or two: short vectors, not maps, whose smallest node
/// alone is hundreds of bytes (docs/design.md §4.6).
#[derive(Debug, Clone)]
struct AddressUse {
    index: u128,
    sharing_key: Option<String>,
    backend_key: String,
    /// Each port in use on the address and its holder, sorted by port.
    ports: Vec<(PortKey, ServiceKey)>,
    /// The Services holding the address, sorted.
    holders: Vec<ServiceKey>,
}

#[derive(Debug, Clone)]
struct Held {
    assignment: Assignment,
    sharing_key: Option<String>,
    backend_key: String,
    ports: Vec<PortKey>,
}

/// All pools and who holds which address. Plain data: no client, no clock.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    pools: BTreeMap<String, PoolState>,
    unusable: BTreeMap<String, String>,
    services: BTreeMap<ServiceKey, Held>,
    addresses: HashMap<IpAddr, AddressUse>,
}

impl Allocator {
    /// An allocator with no pools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the pool configuration. `unusable` names invalid pools with their problem, so a Service that asks
    /// for one by name is told why. Assignments whose addresses are no longer in any pool are dropped and
    /// returned; the caller re-runs every Service afterwards, as the pools may no longer allow them.
    pub fn set_pools(
        &mut self,
        pools: Vec<PoolConfig>,
        unusable: BTreeMap<String, String>,
    ) -> Vec<(ServiceKey, Assignment)> {
        self.unusable = unusable;
        self.pools = pools
            .into_iter()
            .filter_map(|p| {
                let name = p.name.clone();
                match PoolState::new(p) {
                    Some(state) => Some((name, state)),
                    None => {
                        self.unusable.insert(name, "the pool is too large to index".into());
                        None
                    }
                }
            })
            .collect();
        self.addresses.clear();
        let held = std::mem::take(&mut self.services);
        let mut dropped = Vec::new();
        for (key, h) in held {
            match self.single_pool_of(&h.assignment.ips) {
                Some(pool) => {
                    let assignment = Assignment { pool, ips: h.assignment.ips.clone() };
                    self.register(&key, assignment, h.sharing_key, h.backend_key, h.ports);
                }
                None => dropped.push((key, h.assignment)),
            }
        }
        dropped
    }

    /// Re-registers an address a Service already holds (from its status), without choosing anything new.
    /// Run for every Service before any [`Self::allocate`] so a restart never moves an address.
    pub fn restore(&mut self, intent: &ServiceIntent, ips: &[IpAddr]) -> Result<Assignment, Refusal> {
        let previous = self.unregister(&intent.key);
        match self.validate_held(intent, ips, false) {
            Ok(assignment) => {
                self.register_intent(intent, assignment.clone());
                Ok(assignment)
            }
            Err(refusal) => {
                if let Some(h) = previous {
                    self.register(&intent.key, h.assignment, h.sharing_key, h.backend_key, h.ports);
                }
                Err(refusal)
            }
        }
    }

    /// Gives the Service the addresses it should hold: keeps its current ones while they still satisfy it,
    /// else picks new ones. On refusal the Service holds nothing.
    pub fn allocate(&mut self, intent: &ServiceIntent) -> Result<Outcome, Refusal> {
        let previous = self.unregister(&intent.key);
        let sharing_changed = previous.as_ref().is_some_and(|prev| {
            prev.sharing_key != intent.sharing_key
                || prev.backend_key != intent.backend_key
                || !prev.ports.iter().eq(intent.ports.iter())
        });
        if let Some(prev) = &previous
            && let Ok(assignment) = self.validate_held(intent, &prev.assignment.ips, true)
        {
            let changed = assignment != prev.assignment;
            self.register_intent(intent, assignment.clone());
            return Ok(Outcome { assignment, changed, sharing_changed });
        }
        let assignment = self.choose(intent)?;
        self.register_intent(intent, assignment.clone());
        let changed = previous.is_none_or(|p| p.assignment != assignment);
        Ok(Outcome { assignment, changed, sharing_changed })
    }

    /// Frees whatever the Service holds (deleted, or no longer a LoadBalancer of our class).
    pub fn release(&mut self, key: &ServiceKey) -> Option<Assignment> {
        self.unregister(key).map(|h| h.assignment)
    }

    /// What the Service holds.
    pub fn assignment(&self, key: &ServiceKey) -> Option<&Assignment> {
        self.services.get(key).map(|h| &h.assignment)
    }

    /// Every assignment, by Service.
    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &Assignment)> {
        self.services.iter().map(|(k, h)| (k, &h.assignment))
    }

    /// Counts for a pool, if it is in use.
    pub fn pool_usage(&self, pool: &str) -> Option<PoolUsage> {
        let p = self.pools.get(pool)?;
        let used = |f: &FamilyState| f.space.total - f.free.free;
        Some(PoolUsage {
            assigned_v4: used(&p.v4),
            assigned_v6: used(&p.v6),
            available_v4: p.v4.free.free,
            available_v6: p.v6.free.free,
        })
    }

    /// Services holding an address (usually one; several when shared).
    pub fn holders(&self, ip: IpAddr) -> impl Iterator<Item = &ServiceKey> {
        self.addresses.get(&ip).into_iter().flat_map(|u| u.holders.iter())
    }

    fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        self.pools.values().find(|p| p.config.contains_usable(ip)).map(|p| p.config.name.as_str())
    }

    fn single_pool_of(&self, ips: &[IpAddr]) -> Option<String> {
        let first = self.pool_of(*ips.first()?)?;
        ips.iter().all(|ip| self.pool_of(*ip) == Some(first)).then(|| first.to_string())
    }

    /// Whether this Service may use the address alongside its current holders.
    fn check_share(&self, ip: IpAddr, intent: &ServiceIntent) -> Result<(), Refusal> {
        let Some(used) = self.addresses.get(&ip) else {
            return Ok(());
        };
        let Some(holder) = used.holders.iter().find(|h| **h != intent.key) else {
            return Ok(());
        };
        let holder = holder.clone();
        let (Some(theirs), Some(ours)) = (&used.sharing_key, &intent.sharing_key) else {
            return Err(Refusal::NotShared { ip, holder });
        };
        if theirs != ours {
            return Err(Refusal::SharingKeyMismatch { ip, holder, theirs: theirs.clone(), ours: ours.clone() });
        }
        if used.backend_key != intent.backend_key {
            return Err(Refusal::BackendMismatch { ip, holder });
        }
        if let Some((port, holder)) = intent
            .ports
            .iter()
            .find_map(|p| used.ports.iter().find(|(q, h)| q == p && *h != intent.key).map(|(_, h)| (p, h)))
        {
            return Err(Refusal::PortInUse { port: port.clone(), holder: holder.clone(), ip });
        }
        Ok(())
    }

    /// Checks addresses the Service already holds (or names) against what it asks for now. With `extend`, a
    /// dual-stack Service missing a family gets it from the same pool when possible.
    fn validate_held(&self, intent: &ServiceIntent, ips: &[IpAddr], extend: bool) -> Result<Assignment, Refusal> {
        let requested_changed = !intent.requested.is_empty()
            && ips.iter().collect::<BTreeSet<_>>() != intent.requested.iter().collect::<BTreeSet<_>>();
        let first = *ips.first().ok_or(Refusal::NoEligiblePool { namespace: intent.key.namespace.to_string() })?;
        if requested_changed {
            return Err(Refusal::RequestedIpNotInPool { ip: first });
        }
        let mut ips = self.validate_addresses(intent, ips)?;
        let pool = self.single_pool_of(&ips).ok_or(Refusal::RequestedIpNotInPool { ip: first })?;
        let missing: Vec<Family> =
            intent.families.iter().copied().filter(|f| !ips.iter().any(|ip| Family::of(*ip) == *f)).collect();
        if !missing.is_empty() && intent.requested.is_empty() && (extend || intent.require_all_families) {
            let state = &self.pools[&pool];
            // A pool being deleted gives no new address, not even the missing family of a dual-stack Service.
            if state.config.deleting {
                if intent.require_all_families {
                    return Err(Refusal::PoolDeleting { pool: pool.clone() });
                }
                ips.sort_by_key(|ip| Family::of(*ip));
                return Ok(Assignment { pool, ips });
            }
            for family in missing {
                match self.candidate(state, family, intent) {
                    Some(ip) => ips.push(ip),
                    None if intent.require_all_families => {
                        return Err(Refusal::PoolExhausted { pool: pool.clone(), family });
                    }
                    None => {}
                }
            }
        }
        ips.sort_by_key(|ip| Family::of(*ip));
        Ok(Assignment { pool, ips })
    }

    /// The checks shared by requested and held addresses: one pool, the right families, allowed, shareable.
    fn validate_addresses(&self, intent: &ServiceIntent, ips: &[IpAddr]) -> Result<Vec<IpAddr>, Refusal> {
        let mut pool: Option<(&str, IpAddr)> = None;
        let mut families = BTreeSet::new();
        for &ip in ips {
            let this = self.pool_of(ip).ok_or(Refusal::RequestedIpNotInPool { ip })?;
            if let Some((other, other_ip)) = pool
                && other != this
            {
                return Err(Refusal::RequestedIpsInDifferentPools {
                    a: other_ip,
                    pool_a: other.to_string(),
                    b: ip,
                    pool_b: this.to_string(),
                });
            }
            pool = Some((this, ip));
            if !intent.families.contains(&Family::of(ip)) || !families.insert(Family::of(ip)) {
                return Err(Refusal::RequestedFamilyMismatch { ip, families: intent.families.clone() });
            }
        }
        let Some((pool, _)) = pool else {
            return Err(Refusal::NoEligiblePool { namespace: intent.key.namespace.to_string() });
        };
        if let Some(named) = &intent.pool
            && named != pool
        {
            return Err(Refusal::RequestedIpNotInNamedPool { ip: ips[0], pool: named.clone() });
        }
        if !self.pools[pool].config.allows(intent) {
            return Err(Refusal::PoolNotAllowed { pool: pool.to_string() });
        }
        for &ip in ips {
            self.check_share(ip, intent)?;
        }
        Ok(ips.to_vec())
    }

    /// Picks addresses for a Service that holds none it may keep (MetalLB's order: requested, named pool,
    /// pinned pools by priority, then every autoAssign pool, here by name for reproducible results).
    fn choose(&self, intent: &ServiceIntent) -> Result<Assignment, Refusal> {
        if !intent.requested.is_empty() {
            let ips = self.validate_addresses(intent, &intent.requested)?;
            let pool = self.single_pool_of(&ips).ok_or(Refusal::RequestedIpNotInPool { ip: ips[0] })?;
            if self.pools.get(&pool).is_some_and(|p| p.config.deleting) {
                return Err(Refusal::PoolDeleting { pool });
            }
            let mut ips = ips;
            ips.sort_by_key(|ip| Family::of(*ip));
            return Ok(Assignment { pool, ips });
        }
        if let Some(name) = &intent.pool {
            let Some(state) = self.pools.get(name) else {
                return Err(match self.unusable.get(name) {
                    Some(why) => Refusal::UnusablePool { pool: name.clone(), why: why.clone() },
                    None => Refusal::UnknownPool { pool: name.clone() },
                });
            };
            if !state.config.allows(intent) {
                return Err(Refusal::PoolNotAllowed { pool: name.clone() });
            }
            if state.config.deleting {
                return Err(Refusal::PoolDeleting { pool: name.clone() });
            }
            return self.first_fitting_pool(intent, &[state]).map_err(|_| Refusal::PoolExhausted {
                pool: name.clone(),
                family: self.first_missing_family(state, intent),
            });
        }
        let mut pinned: Vec<&PoolState> = self
            .pools
            .values()
            .filter(|p| {
                p.config.auto_assign && !p.config.deleting && p.config.allocation.is_some() && p.config.allows(intent)
            })
            .collect();
        pinned.sort_by_key(|p| {
            let priority = p.config.allocation.as_ref().and_then(|a| a.priority).filter(|&n| n > 0);
            (priority.unwrap_or(i32::MAX), p.config.name.clone())
        });
        let general =
            self.pools.values().filter(|p| p.config.auto_assign && !p.config.deleting && p.config.allocation.is_none());
        let order: Vec<&PoolState> = pinned.into_iter().chain(general).collect();
        if order.is_empty() {
            return Err(Refusal::NoEligiblePool { namespace: intent.key.namespace.to_string() });
        }
        self.first_fitting_pool(intent, &order)
    }

    fn first_missing_family(&self, state: &PoolState, intent: &ServiceIntent) -> Family {
        let primary = intent.families.first().copied().unwrap_or(Family::V4);
        intent.families.iter().copied().find(|f| self.candidate(state, *f, intent).is_none()).unwrap_or(primary)
    }

    /// First pool (in order) that gives every wanted family; unless every family is required, then the first
    /// that gives any one, the primary family first.
    fn first_fitting_pool(&self, intent: &ServiceIntent, order: &[&PoolState]) -> Result<Assignment, Refusal> {
        for state in order {
            let ips: Option<Vec<IpAddr>> = intent.families.iter().map(|f| self.candidate(state, *f, intent)).collect();
            if let Some(mut ips) = ips {
                ips.sort_by_key(|ip| Family::of(*ip));
                return Ok(Assignment { pool: state.config.name.clone(), ips });
            }
        }
        if !intent.require_all_families && intent.families.len() > 1 {
            for family in &intent.families {
                for state in order {
                    if let Some(ip) = self.candidate(state, *family, intent) {
                        return Ok(Assignment { pool: state.config.name.clone(), ips: vec![ip] });
                    }
                }
            }
        }
        Err(Refusal::NoFreeAddress {
            pools: order.iter().map(|p| p.config.name.clone()).collect(),
            families: intent.families.clone(),
        })
    }

    /// The lowest address of the family this Service may take in the pool: free, or shared under its key.
    fn candidate(&self, state: &PoolState, family: Family, intent: &ServiceIntent) -> Option<IpAddr> {
        let fam = state.family(family);
        let free = fam.free.lowest();
        let shared = intent.sharing_key.as_ref().and_then(|key| {
            let set = state.shareable.get(&(key.clone(), intent.backend_key.clone()))?;
            set.range((family, 0)..=(family, u128::MAX))
                .map(|(_, index)| *index)
                .take_while(|index| free.is_none_or(|f| *index < f))
                .find(|index| fam.space.address(*index).is_some_and(|ip| self.check_share(ip, intent).is_ok()))
        });
        shared.or(free).and_then(|index| fam.space.address(index))
    }

    fn register_intent(&mut self, intent: &ServiceIntent, assignment: Assignment) {
        let ports = intent.ports.iter().cloned().collect();
        self.register(&intent.key, assignment, intent.sharing_key.clone(), intent.backend_key.clone(), ports);
    }

    fn register(
        &mut self,
        key: &ServiceKey,
        assignment: Assignment,
        sharing_key: Option<String>,
        backend_key: String,
        ports: Vec<PortKey>,
    ) {
        for &ip in &assignment.ips {
            let family = Family::of(ip);
            let used = match self.addresses.get_mut(&ip) {
                Some(used) => used,
                None => {
                    let Some(state) = self.pools.get_mut(&assignment.pool) else {
                        continue;
                    };
                    let Some(index) = state.family(family).space.index(ip, &state.config.ranges) else {
                        continue;
                    };
                    state.family_mut(family).free.take(index);
                    if let Some(sk) = &sharing_key {
                        state.shareable.entry((sk.clone(), backend_key.clone())).or_default().insert((family, index));
                    }
                    self.addresses.entry(ip).or_insert(AddressUse {
                        index,
                        sharing_key: sharing_key.clone(),
                        backend_key: backend_key.clone(),
                        ports: Vec::new(),
                        holders: Vec::new(),
                    })
                }
            };
            if let Err(at) = used.holders.binary_search(key) {
                used.holders.insert(at, key.clone());
            }
            for p in &ports {
                match used.ports.binary_search_by(|(q, _)| q.cmp(p)) {
                    Ok(at) => used.ports[at].1 = key.clone(),
                    Err(at) => used.ports.insert(at, (p.clone(), key.clone())),
                }
            }
            used.ports.shrink_to_fit();
            used.holders.shrink_to_fit();
        }
        self.services.insert(key.clone(), Held { assignment, sharing_key, backend_key, ports });
    }

    fn unregister(&mut self, key: &ServiceKey) -> Option<Held> {
        let held = self.services.remove(key)?;
        for ip in &held.assignment.ips {
            let Some(used) = self.addresses.get_mut(ip) else {
                continue;
            };
            used.holders.retain(|holder| holder != key);
            used.ports.retain(|(_, holder)| holder != key);
            if !used.holders.is_empty() {
                continue;
            }
            let Some(used) = self.addresses.remove(ip) else {
                continue;
            };
            if let Some(state) = self.pools.get_mut(&held.assignment.pool) {
                let family = Family::of(*ip);
                state.family_mut(family).free.give_back(used.index);
                if let Some(sk) = &used.sharing_key {
                    let shared_key = (sk.clone(), used.backend_key.clone());
                    if let Some(set) = state.shareable.get_mut(&shared_key) {
                        set.remove(&(family, used.index));
                        if set.is_empty() {
                            state.shareable.remove(&shared_key);
                        }
                    }
                }
            }
        }
        Some(held)
    }
}
