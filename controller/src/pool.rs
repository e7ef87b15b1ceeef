//! Pool configuration: parsing `spec.addresses`, validating what the CRD schema cannot (ranges, overlaps,
//! selectors), and the arithmetic that maps a pool's usable addresses onto a dense index space so the
//! allocator never has to walk a pool.

use crate::selector::{Selector, SelectorProblem};
use crate::service::ServiceIntent;
use ferrolb_crds::IPAddressPoolSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::keys::Family;

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Address as an integer, so ranges of both families share one arithmetic.
pub(crate) fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(crate) fn from_int(family: Family, n: u128) -> IpAddr {
    match family {
        // Indices of an IPv4 family never exceed u32::MAX by construction; truncation cannot happen.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    /// Family of both ends.
    pub family: Family,
    /// First address, as an integer.
    pub first: u128,
    /// Last address, as an integer (inclusive).
    pub last: u128,
}

impl AddrRange {
    /// Parses one `spec.addresses` entry: a CIDR, or `start-end` with optional spaces around the dash.
    pub fn parse(entry: &str) -> Result<Self, PoolProblem> {
        let bad = |why: &str| PoolProblem::BadAddress { entry: entry.to_string(), why: why.to_string() };
        if let Some((start, end)) = entry.split_once('-') {
            let start: IpAddr = start.trim().parse().map_err(|_| bad("the start is not an IP address"))?;
            let end: IpAddr = end.trim().parse().map_err(|_| bad("the end is not an IP address"))?;
            if Family::of(start) != Family::of(end) {
                return Err(bad("start and end are of different address families"));
            }
            let (first, last) = (to_int(start), to_int(end));
            if first > last {
                return Err(bad("the start is after the end"));
            }
            return Ok(Self { family: Family::of(start), first, last });
        }
        if !entry.contains('/') {
            return Err(bad("expected a CIDR such as 192.168.10.0/24 or a range such as 192.168.9.1-192.168.9.5"));
        }
        let net: ipnetwork::IpNetwork = entry.trim().parse().map_err(|e| bad(&format!("not a valid CIDR: {e}")))?;
        let family = Family::of(net.ip());
        let (first, last) = match net {
            ipnetwork::IpNetwork::V4(n) => (u128::from(u32::from(n.network())), u128::from(u32::from(n.broadcast()))),
            ipnetwork::IpNetwork::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        };
        if family == Family::V6 && first == 0 && last == u128::MAX {
            return Err(bad("::/0 is not a pool"));
        }
        Ok(Self { family, first, last })
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &AddrRange) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }

    /// Whether the address lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.first..=self.last).contains(&to_int(ip))
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", from_int(self.family, self.first), from_int(self.family, self.last))
    }
}

/// Why a pool cannot be used; each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolProblem {
    /// An `addresses` entry does not parse.
    #[error("address {entry:?}: {why}")]
    BadAddress {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// `addresses` is empty.
    #[error("spec.addresses is empty; list at least one CIDR or range")]
    NoAddresses,
    /// Two entries of the same pool overlap.
    #[error("addresses {a} and {b} overlap within the pool; list each address once")]
    SelfOverlap {
        /// One range.
        a: AddrRange,
        /// The other.
        b: AddrRange,
    },
    /// The pool overlaps a pool that was there first.
    #[error(
        "addresses {ours} overlap pool {other:?} ({theirs}); each address may belong to one pool only, so this pool is not used until the overlap is removed"
    )]
    Overlapping {
        /// Our range.
        ours: AddrRange,
        /// The earlier pool.
        other: String,
        /// Its range.
        theirs: AddrRange,
    },
    /// A selector in `serviceAllocation` is malformed.
    #[error("serviceAllocation.{field}: {problem}")]
    BadSelector {
        /// Which selector list.
        field: &'static str,
        /// What is wrong.
        problem: SelectorProblem,
    },
    /// The pool holds more addresses than can be counted.
    #[error("the pool is too large to index (more than 2^128 addresses)")]
    TooLarge,
}

/// `serviceAllocation`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Lower first; `None` (or 0) last.
    pub priority: Option<i32>,
    /// Namespaces served by name.
    pub namespaces: BTreeSet<String>,
    /// Namespaces served by label.
    pub namespace_selectors: Vec<Selector>,
    /// Services served by label.
    pub service_selectors: Vec<Selector>,
}

/// A pool ready for the allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Pool name (the allocator's key and what `ip-allocated-from-pool` says).
    pub name: String,
    /// Ranges in the order listed; allocation walks them in this order.
    pub ranges: Vec<AddrRange>,
    /// Whether Services without an explicit pool may use it.
    pub auto_assign: bool,
    /// Skip IPv4 .0 and .255.
    pub avoid_buggy_ips: bool,
    /// Service pinning, if any.
    pub allocation: Option<Allocation>,
    /// The pool object is being deleted (kept by the controller's finalizer while its addresses are in use): its
    /// Services keep their addresses, and it hands out none.
    pub deleting: bool,
}

impl PoolConfig {
    /// Validates a pool spec; returns every problem found, not just the first.
    pub fn from_spec(name: &str, spec: &IPAddressPoolSpec) -> Result<Self, Vec<PoolProblem>> {
        let mut problems = Vec::new();
        if spec.addresses.is_empty() {
            problems.push(PoolProblem::NoAddresses);
        }
        let ranges: Vec<AddrRange> =
            spec.addresses.iter().filter_map(|a| AddrRange::parse(a).map_err(|p| problems.push(p)).ok()).collect();
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[i + 1..].iter().find(|b| a.overlaps(b)) {
                problems.push(PoolProblem::SelfOverlap { a: *a, b: *b });
            }
        }
        let mut parse_all =
            |field: &'static str, selectors: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector]| {
                selectors
                    .iter()
                    .filter_map(|s| {
                        Selector::parse(s)
                            .map_err(|problem| problems.push(PoolProblem::BadSelector { field, problem }))
                            .ok()
                    })
                    .collect::<Vec<_>>()
            };
        let allocation = spec.service_allocation.as_ref().map(|a| Allocation {
            priority: a.priority,
            namespaces: a.namespaces.iter().cloned().collect(),
            namespace_selectors: parse_all("namespaceSelectors", &a.namespace_selectors),
            service_selectors: parse_all("serviceSelectors", &a.service_selectors),
        });
        let pool = Self {
            name: name.to_string(),
            ranges,
            auto_assign: spec.auto_assign(),
            avoid_buggy_ips: spec.avoid_buggy_ips,
            allocation,
            deleting: false,
        };
        if pool.space(Family::V4).is_none() || pool.space(Family::V6).is_none() {
            problems.push(PoolProblem::TooLarge);
        }
        if problems.is_empty() { Ok(pool) } else { Err(problems) }
    }

    /// Whether `serviceAllocation` lets this Service use the pool (no `serviceAllocation` lets everyone).
    pub fn allows(&self, svc: &ServiceIntent) -> bool {
        let Some(a) = &self.allocation else {
            return true;
        };
        let namespace_ok = (a.namespaces.is_empty() && a.namespace_selectors.is_empty())
            || a.namespaces.contains(svc.key.namespace.as_ref())
            || a.namespace_selectors.iter().any(|s| s.matches(&svc.namespace_labels));
        let service_ok = a.service_selectors.is_empty() || a.service_selectors.iter().any(|s| s.matches(&svc.labels));
        namespace_ok && service_ok
    }

    /// Whether the address is one the pool hands out (in a range, and not a skipped .0/.255).
    pub fn contains_usable(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip)) && !(self.avoid_buggy_ips && is_buggy(ip))
    }

    /// Dense index space of the pool's usable addresses of one family; `None` if it cannot be counted.
    pub(crate) fn space(&self, family: Family) -> Option<Space> {
        let skip_buggy = self.avoid_buggy_ips && family == Family::V4;
        let mut segments = Vec::new();
        let mut total: u128 = 0;
        for r in self.ranges.iter().filter(|r| r.family == family) {
            let count = range_count(r, skip_buggy)?;
            if count > 0 {
                segments.push(Segment { offset: total, count, rank_of_first: usable_below(r.first, skip_buggy) });
                total = total.checked_add(count)?;
            }
        }
        Some(Space { family, skip_buggy, segments, total })
    }
}

/// IPv4 addresses ending in .0 or .255, which some old equipment mishandles.
fn is_buggy(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

fn is_buggy_int(n: u128) -> bool {
    matches!(n & 0xff, 0 | 0xff)
}

/// Usable addresses in a range; `None` only for a full 2^128 range, which cannot be counted.
fn range_count(r: &AddrRange, skip_buggy: bool) -> Option<u128> {
    let last_usable = u128::from(!skip_buggy || !is_buggy_int(r.last));
    (usable_below(r.last, skip_buggy) - usable_below(r.first, skip_buggy)).checked_add(last_usable)
}

/// How many usable addresses lie strictly below `n` (all of them, or 254 of every 256 when skipping .0/.255).
fn usable_below(n: u128, skip_buggy: bool) -> u128 {
    if !skip_buggy {
        return n;
    }
    (n >> 8) * 254 + (n & 0xff).saturating_sub(1).min(254)
}

/// The usable address with the given rank (inverse of `usable_below`).
fn usable_with_rank(rank: u128, skip_buggy: bool) -> u128 {
    if !skip_buggy {
        return rank;
    }
    ((rank / 254) << 8) | (rank % 254 + 1)
}

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    offset: u128,
    count: u128,
    rank_of_first: u128,
}

/// A pool's usable addresses of one family, numbered 0.. in the order the ranges are listed.
#[derive(Debug, Clone)]
pub(crate) struct Space {
    family: Family,
    skip_buggy: bool,
    segments: Vec<Segment>,
    /// Number of usable addresses.
    pub(crate) total: u128,
}

impl Space {
    /// The address at a dense index.
    pub(crate) fn address(&self, index: u128) -> Option<IpAddr> {
        let seg = self.segments.iter().find(|s| index >= s.offset && index - s.offset < s.count)?;
        let rank = seg.rank_of_first + (index - seg.offset);
        Some(from_int(self.family, usable_with_rank(rank, self.skip_buggy)))
    }

    /// The dense index of a usable address of this pool, or `None`.
    pub(crate) fn index(&self, ip: IpAddr, ranges: &[AddrRange]) -> Option<u128> {
        if Family::of(ip) != self.family || (self.skip_buggy && is_buggy(ip)) {
            return None;
        }
        let n = to_int(ip);
        let mut segments = self.segments.iter();
        for r in ranges.iter().filter(|r| r.family == self.family) {
            let seg = if range_count(r, self.skip_buggy)? > 0 { segments.next() } else { None };
            if (r.first..=r.last).contains(&n) {
                let seg = seg?;
                return Some(seg.offset + usable_below(n, self.skip_buggy) - seg.rank_of_first);
            }
        }
        None
    }
}

/// The pools the allocator may use and the problems of the others, given pools in precedence order (the
/// controller passes them oldest first, so a new pool that overlaps an existing one is the one set aside).
pub fn resolve_pools(
    pools: impl IntoIterator<Item = (String, Result<PoolConfig, Vec<PoolProblem>>)>,
) -> (Vec<PoolConfig>, BTreeMap<String, Vec<PoolProblem>>) {
    let mut accepted: Vec<PoolConfig> = Vec::new();
    // Accepted ranges keyed by (family, first) so an overlap check is one ordered lookup per range.
    let mut taken: BTreeMap<(Family, u128), (AddrRange, String)> = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for (name, pool) in pools {
        let pool = match pool {
            Ok(pool) => pool,
            Err(p) => {
                problems.insert(name, p);
                continue;
            }
        };
        let overlaps: Vec<PoolProblem> = pool
            .ranges
            .iter()
            .filter_map(|r| {
                let before = taken.range(..=(r.family, r.last)).next_back();
                before.filter(|(_, (theirs, _))| theirs.overlaps(r)).map(|(_, (theirs, other))| {
                    PoolProblem::Overlapping { ours: *r, other: other.clone(), theirs: *theirs }
                })
            })
            .collect();
        if overlaps.is_empty() {
            for r in &pool.ranges {
                taken.insert((r.family, r.first), (*r, pool.name.clone()));
            }
            accepted.push(pool);
        } else {
            problems.insert(name, overlaps);
        }
    }
    accepted.sort_by(|a, b| a.name.cmp(&b.name));
    (accepted, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addresses: &[&str]) -> IPAddressPoolSpec {
        IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: Some(true),
            avoid_buggy_ips: false,
            service_allocation: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_cidrs_and_ranges_of_both_families() {
        let r = AddrRange::parse("192.168.10.0/24").expect("cidr");
        assert_eq!(r.to_string(), "192.168.10.0-192.168.10.255");
        let r = AddrRange::parse("192.168.10.7/24").expect("host bits are masked, like Go's net.ParseCIDR");
        assert_eq!(r.to_string(), "192.168.10.0-192.168.10.255");
        let r = AddrRange::parse("172.17.255.1-172.17.255.255").expect("range");
        assert_eq!((r.last - r.first + 1), 255);
        let r = AddrRange::parse(" 10.0.0.1 - 10.0.0.3 ").expect("spaces around the dash are trimmed");
        assert_eq!(r.to_string(), "10.0.0.1-10.0.0.3");
        let r = AddrRange::parse("fc00:f853:ccd:e799::/124").expect("v6 cidr");
        assert_eq!((r.family, r.last - r.first + 1), (Family::V6, 16));
        let r = AddrRange::parse("fc00::1-fc00::ff").expect("v6 range");
        assert_eq!(r.last - r.first + 1, 255);
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let msg = |s: &str| AddrRange::parse(s).expect_err(s).to_string();
        assert!(msg("10.0.0.5-10.0.0.1").contains("start is after the end"));
        assert!(msg("10.0.0.1-fc00::1").contains("different address families"));
        assert!(msg("10.0.0.1").contains("expected a CIDR"));
        assert!(msg("10.0.0.0/33").contains("not a valid CIDR"));
        assert!(msg("banana-10.0.0.1").contains("start is not an IP"));
        assert!(msg("::/0").contains("not a pool"));
    }

    #[test]
    fn pool_reports_every_problem() {
        let problems =
            PoolConfig::from_spec("p", &spec(&["10.0.0.0/30", "10.0.0.2-10.0.0.9", "nope"])).expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| matches!(p, PoolProblem::BadAddress { .. })));
        assert!(problems.iter().any(|p| matches!(p, PoolProblem::SelfOverlap { .. })));
        assert_eq!(PoolConfig::from_spec("p", &spec(&[])).expect_err("empty"), vec![PoolProblem::NoAddresses]);
    }

    #[test]
    fn later_overlapping_pool_is_set_aside_and_the_first_kept() {
        let a = PoolConfig::from_spec("zeta", &spec(&["10.0.0.0/24"]));
        let b = PoolConfig::from_spec("alpha", &spec(&["10.0.0.128-10.0.1.5"]));
        let c = PoolConfig::from_spec("other", &spec(&["10.0.1.0/24", "fc00::/120"]));
        let (ok, problems) = resolve_pools([("zeta".into(), a), ("alpha".into(), b), ("other".into(), c)]);
        let names: Vec<_> = ok.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["other", "zeta"]);
        let msg = problems["alpha"][0].to_string();
        assert!(msg.contains("overlap pool \"zeta\""), "{msg}");
    }

    #[test]
    fn dense_index_walks_ranges_in_listed_order() {
        let pool = PoolConfig::from_spec("p", &spec(&["10.0.0.10-10.0.0.11", "10.0.0.1-10.0.0.2"])).expect("valid");
        let space = pool.space(Family::V4).expect("countable");
        assert_eq!(space.total, 4);
        let order: Vec<_> = (0..4).map(|i| space.address(i).expect("in space").to_string()).collect();
        assert_eq!(order, ["10.0.0.10", "10.0.0.11", "10.0.0.1", "10.0.0.2"]);
        assert_eq!(space.index(ip("10.0.0.1"), &pool.ranges), Some(2));
        assert_eq!(space.index(ip("10.0.0.3"), &pool.ranges), None);
    }

    #[test]
    fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
        let mut s = spec(&["10.0.0.250-10.0.2.1"]);
        s.avoid_buggy_ips = true;
        let pool = PoolConfig::from_spec("p", &s).expect("valid");
        let space = pool.space(Family::V4).expect("countable");
        let all: Vec<_> = (0..space.total).map(|i| space.address(i).expect("in space")).collect();
        assert_eq!(all.len(), 5 + 254 + 1);
        assert!(all.iter().all(|a| !is_buggy(*a)));
        assert_eq!(all[5], ip("10.0.1.1"));
        for (i, a) in all.iter().enumerate() {
            assert_eq!(space.index(*a, &pool.ranges), Some(i as u128));
        }
        assert_eq!(space.index(ip("10.0.1.0"), &pool.ranges), None);
        assert!(!pool.contains_usable(ip("10.0.1.255")));
        let v6 = pool.space(Family::V6).expect("countable");
        assert_eq!(v6.total, 0);
    }

    #[test]
    fn a_range_of_only_buggy_addresses_is_empty_but_later_ranges_still_index() {
        let mut s = spec(&["10.0.0.255-10.0.1.0", "10.0.5.7/32"]);
        s.avoid_buggy_ips = true;
        let pool = PoolConfig::from_spec("p", &s).expect("valid");
        let space = pool.space(Family::V4).expect("countable");
        assert_eq!(space.total, 1);
        assert_eq!(space.index(ip("10.0.5.7"), &pool.ranges), Some(0));
        assert_eq!(space.address(0), Some(ip("10.0.5.7")));
    }

    #[test]
    fn huge_ipv6_pools_are_counted_without_enumeration() {
        let pool = PoolConfig::from_spec("p", &spec(&["fc00::/8"])).expect("valid");
        let space = pool.space(Family::V6).expect("countable");
        assert_eq!(space.total, 1u128 << 120);
        assert_eq!(space.address(space.total - 1), Some(ip("fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }
}
