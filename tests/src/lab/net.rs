//! The lab network: a bridge in its own namespace (the machine's own interfaces are never touched), one
//! namespace per node with `eth0` on the bridge, and a `host` namespace with on-link static routes to the
//! pools. Dual-stack: every address is in 198.18.0.0/15 or 2001:db8::/32.

use super::addresses::{HOST_IP, HOST_IP6, LAN_BITS, LAN6_BITS, POOL_CIDR, POOL6_CIDR};
use super::{NodeInfo, Result, run};

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

/// Builds the LAN, the host and every node namespace.
pub fn create(lan_ns: &str, host_ns: &str, nodes: &[NodeInfo]) -> Result<()> {
    ip(&["netns", "add", lan_ns])?;
    in_ns(lan_ns, &["link", "add", "br0", "type", "bridge"])?;
    in_ns(lan_ns, &["link", "set", "br0", "up"])?;
    // No bridge netfilter or STP delays: frames flow at once.
    in_ns(lan_ns, &["link", "set", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;

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
    Ok(())
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
