//! The lab network: a bridge in its own namespace (the machine's own interfaces are never touched), one
//! namespace per node with `eth0` on the bridge, and a `host` namespace with on-link static routes to the
//! pools. Dual-stack: every address is in 198.18.0.0/15 or 2001:db8::/32.

use super::addresses::{
    HOST_IP, HOST_IP6, HOST2_IP, HOST2_IP6, LAN_BITS, LAN6_BITS, POOL_CIDR, POOL6_CIDR, node2_ip, node2_ip6,
};
use super::{LabError, NodeInfo, Result, run};

/// Name of the kube-proxy stand-in's VIP interface, as kube-proxy IPVS names it.
pub const IPVS_INTERFACE: &str = "kube-ipvs0";
/// The other end of the lab's `kube-ipvs0` veth (at most 15 characters, as every interface name).
const IPVS_PEER: &str = "kube-ipvs0-peer";

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Writes a sysctl inside a namespace (per-namespace `/proc/sys/net`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    run("ip", &["netns", "exec", ns, "sh", "-c", &format!("echo {value} > {path}")]).map(|_| ())
}

/// Namespaces that belong to a lab.
pub fn lab_namespaces(name: &str) -> Result<Vec<String>> {
    let prefix = format!("{name}-");
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| ns.starts_with(&prefix))
        .map(String::from)
        .collect())
}

/// The bridge of the second LAN (`--second-lan`), beside `br0` in the LAN namespace.
pub const SECOND_BRIDGE: &str = "br1";

/// A bridge in the LAN namespace.
fn bridge(lan_ns: &str, name: &str) -> Result<()> {
    in_ns(lan_ns, &["link", "add", name, "type", "bridge"])?;
    in_ns(lan_ns, &["link", "set", name, "up"])?;
    // No bridge netfilter or STP delays: frames flow at once.
    in_ns(lan_ns, &["link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"]).map(|_| ())
}

/// Builds the LAN, the host and every node namespace; with `second_lan` also a second segment (`br1`,
/// 198.18.1.0/24 and 2001:db8:20::/64) on which every node and the host have `eth1`.
pub fn create(lan_ns: &str, host_ns: &str, nodes: &[NodeInfo], second_lan: bool) -> Result<()> {
    ip(&["netns", "add", lan_ns])?;
    bridge(lan_ns, "br0")?;

    attach(lan_ns, host_ns, "h0", HOST_IP, HOST_IP6)?;
    in_ns(host_ns, &["route", "add", POOL_CIDR, "dev", "eth0"])?;
    in_ns(host_ns, &["-6", "route", "add", POOL6_CIDR, "dev", "eth0"])?;

    for (i, node) in nodes.iter().enumerate() {
        attach(lan_ns, &node.netns, &format!("n{}", i + 1), &node.ip, &node.ip6)?;
        // kube-proxy IPVS with strictARP: VIPs on kube-ipvs0 are local addresses, but the kernel answers ARP
        // only for addresses on the asking interface (arp_ignore=1) and sources ARP from them (arp_announce=2).
        // The machine's kernel has no dummy driver, so kube-ipvs0 is one end of a veth pair, which behaves the
        // same for local delivery and ARP. The peer's name starts like kube-ipvs0's, so speakers skip it by
        // default as they skip the real dummy device (with IPv6 every interface has a link-local address, and
        // the peer would otherwise count as a NIC that can answer neighbour solicitations).
        in_ns(&node.netns, &["link", "add", IPVS_INTERFACE, "type", "veth", "peer", "name", IPVS_PEER])?;
        in_ns(&node.netns, &["link", "set", IPVS_INTERFACE, "up"])?;
        in_ns(&node.netns, &["link", "set", IPVS_PEER, "up"])?;
        for iface in ["all", "eth0"] {
            sysctl(&node.netns, &format!("net.ipv4.conf.{iface}.arp_ignore"), "1")?;
            sysctl(&node.netns, &format!("net.ipv4.conf.{iface}.arp_announce"), "2")?;
        }
    }
    if second_lan {
        bridge(lan_ns, SECOND_BRIDGE)?;
        add_nic(lan_ns, host_ns, SECOND_BRIDGE, "h1", "eth1", Some((HOST2_IP, HOST2_IP6)))?;
        for (i, node) in nodes.iter().enumerate() {
            let (v4, v6) = (node2_ip(i + 1), node2_ip6(i + 1));
            add_nic(lan_ns, &node.netns, SECOND_BRIDGE, &format!("m{}", i + 1), "eth1", Some((&v4, &v6)))?;
        }
    }
    Ok(())
}

/// Gives the namespace `ns` one more NIC: `name`, a veth whose other end `lan_end` is a port of `bridge` in
/// the LAN namespace, up, with these IPv4 and IPv6 addresses (prefixes of the LAN), or none at all (only the
/// kernel's IPv6 link-local one). Works while the lab runs: that is how a NIC "appears" on a node.
pub fn add_nic(
    lan_ns: &str,
    ns: &str,
    bridge: &str,
    lan_end: &str,
    name: &str,
    addresses: Option<(&str, &str)>,
) -> Result<()> {
    in_ns(lan_ns, &["link", "add", lan_end, "type", "veth", "peer", "name", name, "netns", ns])?;
    in_ns(lan_ns, &["link", "set", lan_end, "master", bridge, "up"])?;
    if let Some((v4, v6)) = addresses {
        in_ns(ns, &["addr", "add", &format!("{v4}/{LAN_BITS}"), "dev", name])?;
        in_ns(ns, &["-6", "addr", "add", &format!("{v6}/{LAN6_BITS}"), "dev", name, "nodad"])?;
    }
    in_ns(ns, &["link", "set", name, "up"]).map(|_| ())
}

/// Removes a NIC from a namespace (the veth pair goes, so its bridge port too): a NIC unplugged.
pub fn remove_nic(ns: &str, name: &str) -> Result<()> {
    in_ns(ns, &["link", "delete", name]).map(|_| ())
}

/// A namespace with `lo` up and `eth0` (a veth whose other end, `lan_end`, is on the bridge) at `addr` and,
/// when given, `addr6`.
fn attach(lan_ns: &str, ns: &str, lan_end: &str, addr: &str, addr6: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    in_ns(ns, &["link", "set", "lo", "up"])?;
    in_ns(lan_ns, &["link", "add", lan_end, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
    in_ns(lan_ns, &["link", "set", lan_end, "master", "br0", "up"])?;
    in_ns(ns, &["addr", "add", &format!("{addr}/{LAN_BITS}"), "dev", "eth0"])?;
    if !addr6.is_empty() {
        // No duplicate-address detection: the lab hands out unique addresses, and a tentative address would
        // delay the first packets by a second.
        in_ns(ns, &["-6", "addr", "add", &format!("{addr6}/{LAN6_BITS}"), "dev", "eth0", "nodad"])?;
    }
    in_ns(ns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// Brings a node's link up or down (its bridge-side end, so the node sees carrier loss like a pulled cable).
pub fn set_node_link(lan_ns: &str, node_index: usize, up: bool) -> Result<()> {
    in_ns(lan_ns, &["link", "set", &format!("n{node_index}"), if up { "up" } else { "down" }]).map(|_| ())
}

/// Deletes every namespace of the lab (their veths and the bridge go with them).
pub fn destroy(name: &str) -> Result<()> {
    for ns in lab_namespaces(name)? {
        ip(&["netns", "delete", &ns])?;
    }
    Ok(())
}

/// Name of the nftables table the lab's fault injection lives in (inside a node namespace only).
const FAULT_TABLE: &str = "ferrolb_lab_fault";

/// Drops incoming UDP (and with `tcp_too`, TCP) to `port` inside a node namespace: all of it (`loss_percent`
/// 100), or each packet with that probability (nftables `numgen random`; the kernel here has no netem).
/// Replaces an earlier fault.
pub fn inject_loss(ns: &str, port: u16, loss_percent: u8, tcp_too: bool) -> Result<()> {
    clear_fault(ns)?;
    let verdict =
        if loss_percent >= 100 { "drop".to_string() } else { format!("numgen random mod 100 < {loss_percent} drop") };
    let protocols = if tcp_too { "{ tcp, udp }" } else { "udp" };
    let rules = format!(
        "table inet {FAULT_TABLE} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    meta l4proto {protocols} th dport {port} {verdict}\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{ns}-fault.nft"));
    std::fs::write(&file, rules).map_err(|e| super::io_err(&file, e))?;
    let applied = run("ip", &["netns", "exec", ns, "nft", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    applied.map(|_| ())
}

/// Removes the lab's fault rules from a node namespace (no error when there are none).
pub fn clear_fault(ns: &str) -> Result<()> {
    let tables = run("ip", &["netns", "exec", ns, "nft", "list", "tables"]).unwrap_or_default();
    if tables.contains(FAULT_TABLE) {
        run("ip", &["netns", "exec", ns, "nft", "delete", "table", "inet", FAULT_TABLE])?;
    }
    Ok(())
}

/// Name of the nftables table in which the lab counts datagrams (inside a node namespace only).
const COUNT_TABLE: &str = "ferrolb_lab_count";

/// Starts counting incoming UDP datagrams to `port` inside a node namespace (nftables named counter; nothing is
/// dropped). Replaces an earlier count, starting from 0.
pub fn count_udp(ns: &str, port: u16) -> Result<()> {
    let tables = run("ip", &["netns", "exec", ns, "nft", "list", "tables"]).unwrap_or_default();
    if tables.contains(COUNT_TABLE) {
        run("ip", &["netns", "exec", ns, "nft", "delete", "table", "inet", COUNT_TABLE])?;
    }
    let rules = format!(
        "table inet {COUNT_TABLE} {{\n  counter udp_in {{}}\n  chain input {{\n    type filter hook input priority -20; policy accept;\n    udp dport {port} counter name udp_in\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{ns}-count.nft"));
    std::fs::write(&file, rules).map_err(|e| super::io_err(&file, e))?;
    let applied = run("ip", &["netns", "exec", ns, "nft", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    applied.map(|_| ())
}

/// Name of the nftables table in which the lab counts liveness datagrams by format (inside a node namespace).
const FORMAT_TABLE: &str = "ferrolb_lab_formats";

/// Starts counting incoming UDP datagrams to `port` inside a node namespace by the liveness format their payload
/// starts with: `FLB2` (the speakers before the ring of watchers) or `FLB3`. Nothing is dropped; replaces an
/// earlier count, starting from 0.
pub fn count_liveness_formats(ns: &str, port: u16) -> Result<()> {
    let tables = run("ip", &["netns", "exec", ns, "nft", "list", "tables"]).unwrap_or_default();
    if tables.contains(FORMAT_TABLE) {
        run("ip", &["netns", "exec", ns, "nft", "delete", "table", "inet", FORMAT_TABLE])?;
    }
    // @th,64,32: the 32 bits after the 8-byte UDP header, the magic ("FLB2" = 0x464c4232).
    let rules = format!(
        "table inet {FORMAT_TABLE} {{\n  counter flb2 {{}}\n  counter flb3 {{}}\n  chain input {{\n    type filter hook input priority -20; policy accept;\n    udp dport {port} @th,64,32 0x464c4232 counter name flb2\n    udp dport {port} @th,64,32 0x464c4233 counter name flb3\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{ns}-formats.nft"));
    std::fs::write(&file, rules).map_err(|e| super::io_err(&file, e))?;
    let applied = run("ip", &["netns", "exec", ns, "nft", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    applied.map(|_| ())
}

/// The `FLB2` and `FLB3` datagrams counted since [`count_liveness_formats`] or the last call, and starts again
/// from 0 (both counters are read and reset by one nft command).
pub fn take_liveness_formats(ns: &str) -> Result<(u64, u64)> {
    let text = run("ip", &["netns", "exec", ns, "nft", "reset", "counters", "table", "inet", FORMAT_TABLE])?;
    let packets = |name: &str| {
        let after = text.split(&format!("counter {name} ")).nth(1)?;
        after.split_whitespace().skip_while(|w| *w != "packets").nth(1)?.parse::<u64>().ok()
    };
    match (packets("flb2"), packets("flb3")) {
        (Some(flb2), Some(flb3)) => Ok((flb2, flb3)),
        _ => Err(LabError::Usage(format!("no FLB2 and FLB3 packet counts in {text:?}"))),
    }
}

/// The datagrams counted since [`count_udp`] (or the last reset), and with `reset` starts again from 0.
pub fn counted_udp(ns: &str, reset: bool) -> Result<u64> {
    let verb = if reset { "reset" } else { "list" };
    let text = run("ip", &["netns", "exec", ns, "nft", verb, "counter", "inet", COUNT_TABLE, "udp_in"])?;
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| LabError::Usage(format!("no packet count in {text:?}")))
}
