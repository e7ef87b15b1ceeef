//! Which interfaces answer for an address, decided purely from a description of the node's interfaces.

use crate::error::Error;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Interface names never answered on unless an L2Advertisement names them: MetalLB's default list
/// (`excludel2.yaml` in its chart) plus the overlay devices ferrolb excluded before it was configurable (cilium,
/// vxlan, weave). Container veths, bridges and overlay devices are no place for a Service address, and
/// `kube-ipvs0` holds every Service address (answering there would be exactly the IPVS-without-strictARP
/// problem). Regular expressions, matched anywhere in the name unless anchored; the chart's
/// `speaker.excludeInterfaces` replaces the list.
pub const DEFAULT_EXCLUDED: [&str; 17] = [
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo$",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^nodelocaldns.*",
    "^lxc.*",
    "^cilium.*",
    "^vxlan.*",
    "^weave.*",
];

/// The interface names excluded unless named: a list of regular expressions, any of which excludes.
#[derive(Debug, Clone)]
pub struct Exclusions {
    patterns: Vec<String>,
    set: regex::RegexSet,
}

impl Exclusions {
    /// Compiles a list of regular expressions; the first bad one is the error (named, so the operator can fix
    /// the chart value).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, Error> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        for pattern in &patterns {
            regex::Regex::new(pattern)
                .map_err(|e| Error::BadExclusion { pattern: pattern.clone(), reason: e.to_string() })?;
        }
        let set = regex::RegexSet::new(&patterns)
            .map_err(|e| Error::BadExclusion { pattern: patterns.join(" "), reason: e.to_string() })?;
        Ok(Self { patterns, set })
    }

    /// The list as the speaker's flag takes it: patterns separated by whitespace (interface names cannot contain
    /// whitespace, so no pattern needs it); empty: exclude nothing.
    pub fn parse(list: &str) -> Result<Self, Error> {
        Self::new(&list.split_whitespace().collect::<Vec<_>>())
    }

    /// Whether this name is excluded.
    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl Default for Exclusions {
    fn default() -> Self {
        // The default patterns are constants that the unit tests compile.
        Self::new(&DEFAULT_EXCLUDED).unwrap_or_else(|_| Self { patterns: Vec::new(), set: regex::RegexSet::empty() })
    }
}

/// One interface as the OS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// Name.
    pub name: String,
    /// Index.
    pub index: u32,
    /// Hardware address, if any.
    pub mac: Option<[u8; 6]>,
    /// Administratively up and running.
    pub up: bool,
    /// Its IPv4 networks as (address, prefix length).
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// Its IPv6 networks as (address, prefix length), link-local ones included.
    pub ipv6: Vec<(Ipv6Addr, u8)>,
    /// Its name is on the speaker's exclusion list ([`Exclusions`], set where interfaces are read).
    pub excluded: bool,
}

/// An address family: which protocol answers for an address (ARP or NDP) and which interface addresses count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// IPv4, answered with ARP.
    V4,
    /// IPv6, answered with neighbour discovery.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv6() { Family::V6 } else { Family::V4 }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

fn prefix_match(addr: &[u8], ip: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits).min(addr.len() * 8);
    let (whole, rest) = (bits / 8, bits % 8);
    addr[..whole] == ip[..whole] && (rest == 0 || (addr[whole] ^ ip[whole]) >> (8 - rest) == 0)
}

impl InterfaceInfo {
    /// Whether the address lies in one of the interface's subnets of its family.
    pub fn subnet_contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => self.ipv4.iter().any(|(a, bits)| prefix_match(&a.octets(), &ip.octets(), *bits)),
            // Link-local prefixes hold no Service address; skipping them keeps every interface's fe80::/64
            // from matching nothing in particular.
            IpAddr::V6(ip) => self
                .ipv6
                .iter()
                .filter(|(a, _)| !a.is_unicast_link_local())
                .any(|(a, bits)| prefix_match(&a.octets(), &ip.octets(), *bits)),
        }
    }

    /// Whether it has an address of this family (for IPv6 a link-local one is enough: NDP runs on it).
    pub fn has(&self, family: Family) -> bool {
        match family {
            Family::V4 => !self.ipv4.is_empty(),
            Family::V6 => !self.ipv6.is_empty(),
        }
    }
}

/// Interfaces that may answer for addresses of `family` at all. When the advertisements name interfaces, exactly
/// those that are up with a MAC, whatever their addresses and the exclusion list: the operator chose them, and
/// MetalLB too answers ARP on an interface without an IPv4 address (a VLAN interface kept for Service traffic).
/// Otherwise every interface up with a MAC and an address of the family whose name is not excluded.
pub fn usable<'a>(all: &'a [InterfaceInfo], allowed: &BTreeSet<String>, family: Family) -> Vec<&'a InterfaceInfo> {
    all.iter()
        .filter(|i| {
            if allowed.is_empty() {
                can_answer(i) && i.has(family) && !i.excluded
            } else {
                can_answer(i) && allowed.contains(&i.name)
            }
        })
        .collect()
}

/// Up and running with a real MAC: raw frames can be answered there.
fn can_answer(i: &InterfaceInfo) -> bool {
    i.up && i.mac.is_some_and(|m| m != [0; 6])
}

/// Why no interface may answer here (the node was elected, yet the address would go unanswered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// No interface is up with a MAC and an address of the family.
    NoneUp(Family),
    /// The advertisements name these interfaces, and none of them is up here with a MAC.
    NotInAdvertisement(BTreeSet<String>),
    /// Every interface that could answer has a name excluded by default (veths, bridges, overlays…).
    ExcludedByName(Vec<String>),
}

impl Unusable {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Unusable::NoneUp(_) => "none_up",
            Unusable::NotInAdvertisement(..) => "not_in_advertisement",
            Unusable::ExcludedByName(_) => "excluded_by_name",
        }
    }

    /// For a human: what is wrong and what would fix it.
    pub fn describe(&self) -> String {
        match self {
            Unusable::NoneUp(family) => format!("no interface is up with a MAC and an {family} address"),
            Unusable::NotInAdvertisement(allowed) => format!(
                "none of the L2Advertisement's interfaces ({}) is up here with a MAC",
                allowed.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
            ),
            Unusable::ExcludedByName(names) => format!(
                "every interface that is up ({}) is excluded by name (speaker.excludeInterfaces); list the right \
                 one in the L2Advertisement's interfaces",
                names.join(", ")
            ),
        }
    }
}

/// Why [`usable`] is empty for these arguments; `None` when it is not.
pub fn why_unusable(all: &[InterfaceInfo], allowed: &BTreeSet<String>, family: Family) -> Option<Unusable> {
    if !usable(all, allowed, family).is_empty() {
        return None;
    }
    let up: Vec<&InterfaceInfo> = all.iter().filter(|i| can_answer(i) && i.has(family)).collect();
    Some(if !allowed.is_empty() {
        Unusable::NotInAdvertisement(allowed.clone())
    } else if up.is_empty() {
        Unusable::NoneUp(family)
    } else {
        Unusable::ExcludedByName(up.iter().map(|i| i.name.clone()).collect())
    })
}

/// Interfaces that answer for `ip`: the usable ones whose subnet holds it, or every usable one when none does
/// (a pool routed on-link from a different prefix, as in the lab and with static routes).
pub fn for_address<'a>(usable: &[&'a InterfaceInfo], ip: IpAddr) -> Vec<&'a InterfaceInfo> {
    let same_subnet: Vec<&InterfaceInfo> = usable.iter().copied().filter(|i| i.subnet_contains(ip)).collect();
    if same_subnet.is_empty() { usable.to_vec() } else { same_subnet }
}

/// What differs between two readings of the interfaces, for the log: `eth2 added`, `eth1 down`,
/// `eth1 addresses`, `eth2 removed` (by name; a name that came back with another index counts as added again).
pub fn changes(before: &[InterfaceInfo], after: &[InterfaceInfo]) -> Vec<String> {
    let mut out = Vec::new();
    for now in after {
        match before.iter().find(|b| b.name == now.name && b.index == now.index) {
            None => out.push(format!("{} added", now.name)),
            Some(was) => {
                if was.up != now.up {
                    out.push(format!("{} {}", now.name, if now.up { "up" } else { "down" }));
                }
                if was.ipv4 != now.ipv4 || was.ipv6 != now.ipv6 || was.mac != now.mac {
                    out.push(format!("{} addresses", now.name));
                }
            }
        }
    }
    for was in before.iter().filter(|b| !after.iter().any(|a| a.name == b.name && a.index == b.index)) {
        out.push(format!("{} removed", was.name));
    }
    out
}

/// kube-proxy in IPVS mode puts every Service address on this interface.
pub const IPVS_INTERFACE: &str = "kube-ipvs0";

/// Whether kube-proxy runs IPVS without `strictARP`: `kube-ipvs0` holds addresses while some usable interface
/// answers ARP for any local address (effective `arp_ignore` = max of `all` and the interface's, 0 here). Then
/// every node's kernel answers for every VIP, and no announcer can keep one owner per address.
/// `arp_ignore` maps interface name (and "all") to its value.
pub fn ipvs_without_strict_arp(all: &[InterfaceInfo], arp_ignore: &std::collections::BTreeMap<String, u8>) -> bool {
    let ipvs_has_addresses = all.iter().any(|i| i.name == IPVS_INTERFACE && !i.ipv4.is_empty());
    let global = arp_ignore.get("all").copied().unwrap_or(0);
    ipvs_has_addresses
        && usable(all, &BTreeSet::new(), Family::V4)
            .iter()
            .any(|i| global.max(arp_ignore.get(&i.name).copied().unwrap_or(0)) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ip: &str, bits: u8) -> InterfaceInfo {
        InterfaceInfo {
            name: name.into(),
            index: 1,
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: true,
            ipv4: vec![(ip.parse().expect("ip"), bits)],
            ipv6: vec![],
            excluded: Exclusions::default().matches(name),
        }
    }

    #[test]
    fn default_exclusions_and_explicit_lists() {
        let all = [
            iface("eth0", "10.0.0.5", 24),
            iface("veth12ab", "10.1.0.1", 32),
            iface("kube-ipvs0", "10.0.0.100", 32),
            iface("lo", "127.0.0.1", 8),
            InterfaceInfo { ipv4: vec![], ..iface("eth1", "0.0.0.0", 0) },
            InterfaceInfo { up: false, ..iface("eth2", "10.2.0.5", 24) },
        ];
        let names = |v: Vec<&InterfaceInfo>| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        let named = |list: &[&str]| list.iter().map(ToString::to_string).collect::<BTreeSet<String>>();
        assert_eq!(names(usable(&all, &BTreeSet::new(), Family::V4)), ["eth0"], "eth1 has no IPv4 address");
        assert_eq!(names(usable(&all, &named(&["veth12ab"]), Family::V4)), ["veth12ab"], "named explicitly");
        assert_eq!(
            names(usable(&all, &named(&["eth1", "eth2"]), Family::V4)),
            ["eth1"],
            "a named interface answers without an address of its own; one that is down does not"
        );
        assert!(usable(&all, &BTreeSet::new(), Family::V6).is_empty(), "no interface has IPv6");
    }

    #[test]
    fn metallbs_default_list_and_ours_exclude_by_regex() {
        let default = Exclusions::default();
        assert_eq!(default.patterns().len(), DEFAULT_EXCLUDED.len(), "every default pattern compiles");
        for name in [
            "docker0",
            "cbr0",
            "dummy0",
            "virbr0",
            "lxcbr0",
            "veth1a2b",
            "lo",
            "cali12",
            "tunl0",
            "flannel.1",
            "kube-ipvs0",
            "kube-ipvs0-peer",
            "cni0",
            "nodelocaldns",
            "lxc1",
            "cilium_host",
            "vxlan.calico",
            "weave",
        ] {
            assert!(default.matches(name), "{name} is excluded by default");
        }
        for name in ["eth0", "ens3", "bond0", "eno1.100", "br-lan", "lo0x", "wlan0", "mycni0"] {
            assert!(!default.matches(name), "{name} is not excluded by default");
        }
        let custom = Exclusions::parse("  ^eth1$   ^vlan[0-9]{1,4}$ ").expect("valid");
        assert_eq!(custom.patterns(), ["^eth1$", "^vlan[0-9]{1,4}$"]);
        assert!(custom.matches("eth1") && custom.matches("vlan100") && !custom.matches("eth10"));
        assert!(!custom.matches("docker0"), "a list replaces the default, it does not add to it");
        let none = Exclusions::parse("").expect("empty");
        assert!(!none.matches("lo") && none.patterns().is_empty(), "an empty list excludes nothing");
        let bad = Exclusions::parse("^eth0$ ^(docker").expect_err("unbalanced parenthesis");
        assert!(bad.to_string().contains("\"^(docker\"") && bad.to_string().contains("not a valid regular expression"));
    }

    #[test]
    fn says_why_no_interface_may_answer() {
        let down = InterfaceInfo { up: false, ..iface("eth0", "10.0.0.5", 24) };
        let bridge = iface("cni0", "10.244.0.1", 24);
        let none = BTreeSet::new();
        assert_eq!(why_unusable(&[iface("eth0", "10.0.0.5", 24)], &none, Family::V4), None);
        let lo = InterfaceInfo { mac: Some([0; 6]), ..iface("lo", "127.0.0.1", 8) };
        assert_eq!(why_unusable(&[down.clone(), lo], &none, Family::V4), Some(Unusable::NoneUp(Family::V4)));
        assert_eq!(
            why_unusable(&[down.clone(), bridge.clone()], &none, Family::V4),
            Some(Unusable::ExcludedByName(vec!["cni0".into()]))
        );
        let eth0 = BTreeSet::from(["eth0".to_string()]);
        let why = why_unusable(&[down, bridge], &eth0, Family::V4);
        assert_eq!(why, Some(Unusable::NotInAdvertisement(eth0)));
        assert_eq!(
            why.map(|w| w.describe()).as_deref(),
            Some("none of the L2Advertisement's interfaces (eth0) is up here with a MAC")
        );
        let v4_only = [iface("eth0", "10.0.0.5", 24)];
        assert_eq!(
            why_unusable(&v4_only, &none, Family::V6).map(|w| w.describe()).as_deref(),
            Some("no interface is up with a MAC and an IPv6 address"),
            "an IPv6 address needs an interface with IPv6 on it"
        );
    }

    #[test]
    fn changes_between_two_readings_are_named() {
        let before = [iface("eth0", "10.0.0.5", 24), iface("eth1", "10.1.0.5", 24), iface("eth9", "10.9.0.5", 24)];
        let mut after = vec![
            iface("eth0", "10.0.0.5", 24),
            InterfaceInfo { up: false, ..iface("eth1", "10.1.0.6", 24) },
            InterfaceInfo { index: 7, ..iface("eth2", "10.2.0.5", 24) },
        ];
        assert_eq!(changes(&before, &after), ["eth1 down", "eth1 addresses", "eth2 added", "eth9 removed"]);
        assert!(changes(&after, &after).is_empty());
        after[0].index = 12;
        assert_eq!(changes(&before[..1], &after[..1]), ["eth0 added", "eth0 removed"], "same name, new index");
    }

    #[test]
    fn detects_ipvs_without_strict_arp() {
        let mut all = vec![iface("eth0", "10.0.0.5", 24), iface("kube-ipvs0", "10.96.0.10", 32)];
        let sysctl = |all_v: u8, eth0: u8| {
            std::collections::BTreeMap::from([("all".to_string(), all_v), ("eth0".to_string(), eth0)])
        };
        assert!(ipvs_without_strict_arp(&all, &sysctl(0, 0)), "the kernel answers for every VIP");
        assert!(!ipvs_without_strict_arp(&all, &sysctl(1, 0)), "strictARP sets all.arp_ignore=1");
        assert!(!ipvs_without_strict_arp(&all, &sysctl(0, 1)));
        all[1].ipv4.clear();
        assert!(!ipvs_without_strict_arp(&all, &sysctl(0, 0)), "no VIPs on kube-ipvs0: nothing to warn about");
    }

    #[test]
    fn an_address_goes_to_the_interfaces_whose_subnet_holds_it() {
        let all = [iface("eth0", "10.0.0.5", 24), iface("eth1", "192.168.1.5", 24)];
        let u = usable(&all, &BTreeSet::new(), Family::V4);
        let names =
            |ip: &str| for_address(&u, ip.parse().expect("ip")).iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names("192.168.1.77"), ["eth1"]);
        assert_eq!(names("198.19.0.1"), ["eth0", "eth1"], "no subnet holds it: every usable interface");
    }

    #[test]
    fn ipv6_addresses_go_by_their_own_prefixes_and_link_local_matches_nothing() {
        let with_v6 = |name: &str, v6: &[(&str, u8)]| InterfaceInfo {
            ipv6: v6.iter().map(|(a, b)| (a.parse().expect("ip"), *b)).collect(),
            ..iface(name, "10.0.0.5", 24)
        };
        let all = [
            with_v6("eth0", &[("2001:db8:18::11", 64), ("fe80::1", 64)]),
            with_v6("eth1", &[("2001:db8:20::11", 64), ("fe80::2", 64)]),
            with_v6("eth2", &[("fe80::3", 64)]),
        ];
        let u = usable(&all, &BTreeSet::new(), Family::V6);
        assert_eq!(u.len(), 3, "a link-local address is enough for NDP");
        let names =
            |ip: &str| for_address(&u, ip.parse().expect("ip")).iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names("2001:db8:20::7"), ["eth1"]);
        assert_eq!(names("2001:db8:19::7"), ["eth0", "eth1", "eth2"], "no prefix holds it: every usable interface");
        assert_eq!(names("fe80::9"), ["eth0", "eth1", "eth2"], "link-local prefixes hold no Service address");
        assert!(prefix_match(&[198, 19, 1, 0], &[198, 19, 0, 255], 23));
        assert!(!prefix_match(&[198, 19, 2, 0], &[198, 19, 0, 255], 23));
        assert!(prefix_match(&[1, 2, 3, 4], &[9, 9, 9, 9], 0));
    }
}
