//! The host as the speaker reads it: the node's interfaces as the OS lists them, and the ARP sysctls that tell
//! whether kube-proxy's IPVS interface makes the kernel answer for every Service address.

use crate::model::interfaces::{Exclusions, InterfaceInfo};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The node's interfaces as the OS reports them, each marked when `exclusions` names it.
pub fn interfaces(exclusions: &Exclusions) -> Vec<InterfaceInfo> {
    pnet_datalink::interfaces()
        .into_iter()
        .map(|i| {
            let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
            for network in &i.ips {
                match network.ip() {
                    IpAddr::V4(v4) => ipv4.push((v4, network.prefix())),
                    IpAddr::V6(v6) => ipv6.push((v6, network.prefix())),
                }
            }
            InterfaceInfo {
                up: i.is_up() && i.is_running(),
                mac: i.mac.map(|m| m.octets()),
                ipv4,
                ipv6,
                index: i.index,
                excluded: exclusions.matches(&i.name),
                name: i.name,
            }
        })
        .collect()
}

/// `net.ipv4.conf.{all,<iface>}.arp_ignore` of this network namespace (missing files read as 0).
pub fn arp_ignore(interfaces: &[InterfaceInfo]) -> BTreeMap<String, u8> {
    std::iter::once("all")
        .chain(interfaces.iter().map(|i| i.name.as_str()))
        .map(|name| {
            let path = format!("/proc/sys/net/ipv4/conf/{name}/arp_ignore");
            let value = std::fs::read_to_string(path).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            (name.to_string(), value)
        })
        .collect()
}

/// What the speaker knows of its host between readings: the interfaces as last read, and whether kube-proxy's
/// IPVS was found without strictARP.
#[derive(Debug, Default)]
pub struct Host {
    exclusions: Exclusions,
    interfaces: Vec<InterfaceInfo>,
    strict_arp_missing: bool,
}

impl Host {
    /// A host whose interfaces named by `exclusions` are not answered on; nothing read yet.
    pub fn new(exclusions: Exclusions) -> Self {
        Self { exclusions, ..Self::default() }
    }

    /// The interfaces as last read.
    pub fn interfaces(&self) -> &[InterfaceInfo] {
        &self.interfaces
    }

    /// Reads the interfaces again; returns what changed, for the log (`eth2 added`, `eth1 down`, …).
    pub fn rescan(&mut self) -> Vec<String> {
        let now = interfaces(&self.exclusions);
        let changed = crate::model::interfaces::changes(&self.interfaces, &now);
        self.interfaces = now;
        changed
    }

    /// The MACs of the interfaces that are up (what peers learn this node answers with).
    pub fn macs(&self) -> Vec<[u8; 6]> {
        self.interfaces.iter().filter(|i| i.up).filter_map(|i| i.mac).filter(|m| *m != [0; 6]).collect()
    }

    /// Reads the ARP sysctls again (they change without any netlink notification, so this runs on every tick):
    /// returns whether IPVS runs without strictARP, before and now.
    pub fn check_strict_arp(&mut self) -> (bool, bool) {
        let before = self.strict_arp_missing;
        let ignore = arp_ignore(&self.interfaces);
        self.strict_arp_missing = crate::model::interfaces::ipvs_without_strict_arp(&self.interfaces, &ignore);
        (before, self.strict_arp_missing)
    }
}
