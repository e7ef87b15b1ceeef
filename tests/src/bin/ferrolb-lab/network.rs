//! Subcommands that send and watch packets (run inside a namespace with `exec`), and inject network faults.

use anyhow::Context;
use clap::Subcommand;
use ferrolb_tests::lab::State;
use std::path::Path;

#[derive(Subcommand)]
pub enum Cmd {
    /// Sends one TCP or UDP probe and prints the answer (run it inside a namespace with `exec`).
    Probe {
        /// `tcp` or `udp`.
        protocol: String,
        /// Address and port, e.g. 198.19.0.1:53.
        addr: std::net::SocketAddr,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Sends ARP requests (IPv6: neighbour solicitations) and prints every MAC that answers, one per line (run it
    /// inside a namespace).
    Arping {
        /// Address to ask for.
        target: std::net::IpAddr,
        /// Interface to ask on.
        #[arg(long, default_value = "eth0")]
        iface: String,
        /// Requests to send, 100 ms apart.
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// How long to wait for late answers after the last request, in ms.
        #[arg(long, default_value_t = 300)]
        wait_ms: u64,
        /// Instead, measure round-trip times of --count requests and print them (µs) as a JSON list.
        #[arg(long)]
        rtt: bool,
    },
    /// Sends a liveness datagram signed with a key of your choosing (to show forged ones are rejected).
    GossipForge {
        /// Node the datagram claims to come from.
        #[arg(long)]
        node: String,
        /// Where to send it (a node's address and gossip port).
        #[arg(long)]
        to: std::net::SocketAddr,
        /// `alive` or `leaving`.
        #[arg(long, default_value = "leaving")]
        kind: String,
        /// The key to sign with (not the cluster's).
        #[arg(long, default_value = "not-the-key")]
        key: String,
        /// Keep sending (a flood, one datagram every 100 µs, each with a higher counter) for this many ms.
        #[arg(long, default_value_t = 0)]
        flood_ms: u64,
    },
    /// Probes ADDR every --interval-ms for --duration-ms and prints a JSON report of the longest outage.
    Prober {
        /// `udp`, `tcp` (the lab's echo servers) or `dns` (a DNS server answering CH TXT hostname.bind).
        protocol: String,
        /// Address and port.
        addr: std::net::SocketAddr,
        /// Probe interval.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// How long to probe.
        #[arg(long, default_value_t = 3000)]
        duration_ms: u64,
    },
    /// Drops incoming UDP (--tcp: and TCP) to a port on nodes (all of it, or --loss-percent of it at random), or
    /// clears that.
    Fault {
        /// Node names, or `all`.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// The UDP port (the speakers' liveness port by default).
        #[arg(long, default_value_t = 7946)]
        port: u16,
        /// Percent of datagrams dropped (100: the port is blocked).
        #[arg(long, default_value_t = 100)]
        loss_percent: u8,
        /// Drop TCP to the port too (memberlist, MetalLB's liveness, also uses TCP).
        #[arg(long)]
        tcp: bool,
        /// Remove the fault instead.
        #[arg(long)]
        clear: bool,
    },
    /// Claims an address with gratuitous ARP (IPv6: an unsolicited advertisement) from this namespace's interface, as a host with a clashing static
    /// address would; prints the MAC used (run it inside a namespace with `exec`).
    Claim {
        /// The address.
        ip: std::net::IpAddr,
        /// Interface.
        #[arg(long, default_value = "eth0")]
        iface: String,
        /// Announcements to send, 200 ms apart.
        #[arg(long, default_value_t = 3)]
        count: usize,
    },
    /// Asks for an address every --interval-ms for --duration-ms and prints, as JSON, how often nobody or several
    /// MACs answered and how often the answering MAC changed (run it inside a namespace).
    Arpwatch {
        /// The address.
        ip: std::net::IpAddr,
        /// Interface.
        #[arg(long, default_value = "eth0")]
        iface: String,
        /// Time between requests.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// How long to watch.
        #[arg(long, default_value_t = 10_000)]
        duration_ms: u64,
    },
    /// Listens, without asking, for gratuitous ARP about an IPv4 address for --duration-ms and prints the sender
    /// MAC of each one, a line per frame (run it inside a namespace).
    GarpListen {
        /// The address.
        ip: std::net::Ipv4Addr,
        /// Interface.
        #[arg(long, default_value = "eth0")]
        iface: String,
        /// How long to listen.
        #[arg(long, default_value_t = 5_000)]
        duration_ms: u64,
    },
}

/// Runs one of these subcommands (`dir`: the lab, for `fault`).
pub async fn run(command: Cmd, dir: &Path) -> anyhow::Result<()> {
    let load = || State::load(dir).with_context(|| format!("no lab at {} (run `ferrolb-lab up`)", dir.display()));
    match command {
        Cmd::Probe { protocol, addr, timeout_ms } => {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            let answer = match protocol.as_str() {
                "tcp" => ferrolb_tests::lab::exchange::tcp(addr, timeout)?,
                "udp" => ferrolb_tests::lab::exchange::udp(addr, "probe", timeout)?,
                other => anyhow::bail!("protocol must be tcp or udp, not {other:?}"),
            };
            println!("{answer}");
        }
        Cmd::Arping { target, iface, count, rtt: true, .. } => {
            let rtts = ferrolb_tests::lab::arping::rtt(&iface, target, count, std::time::Duration::from_millis(200))?;
            let micros: Vec<u128> = rtts.iter().map(std::time::Duration::as_micros).collect();
            println!("{}", serde_json::to_string(&micros)?);
        }
        Cmd::Arping { target, iface, count, wait_ms, rtt: false } => {
            let macs =
                ferrolb_tests::lab::arping::arping(&iface, target, count, std::time::Duration::from_millis(wait_ms))?;
            for mac in &macs {
                println!("{mac}");
            }
            if macs.is_empty() {
                anyhow::bail!("no answer for {target} on {iface}");
            }
        }
        Cmd::GossipForge { node, to, kind, key, flood_ms } => {
            use ferrolb_speaker::model::liveness::{Kind, Message, encode};
            let kind = if kind == "alive" { Kind::Alive } else { Kind::Leaving };
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let end = std::time::Instant::now() + std::time::Duration::from_millis(flood_ms);
            let mut counter = 1;
            loop {
                let message = Message {
                    kind: kind.clone(),
                    node: node.clone(),
                    incarnation: u64::MAX / 2,
                    counter,
                    macs: Vec::new(),
                    legacy: false,
                };
                socket.send_to(&encode(key.as_bytes(), &message), to)?;
                counter += 1;
                if std::time::Instant::now() >= end {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            if flood_ms > 0 {
                println!("sent {} datagrams to {to}", counter - 1);
            }
        }
        Cmd::Prober { protocol, addr, interval_ms, duration_ms } => {
            use ferrolb_tests::lab::outage;
            let (interval, duration) =
                (std::time::Duration::from_millis(interval_ms), std::time::Duration::from_millis(duration_ms));
            let report = match protocol.as_str() {
                "udp" => outage::udp(addr, interval, duration)?,
                "tcp" => outage::tcp(addr, interval, duration)?,
                "dns" => outage::dns(addr, interval, duration)?,
                other => anyhow::bail!("protocol must be tcp, udp or dns, not {other:?}"),
            };
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::Fault { nodes, port, loss_percent, tcp, clear } => {
            let state = load()?;
            let targets: Vec<_> = if nodes.iter().any(|n| n == "all") {
                state.nodes.clone()
            } else {
                nodes.iter().map(|n| state.node(n).cloned()).collect::<Result<_, _>>()?
            };
            for node in targets {
                if clear {
                    ferrolb_tests::lab::net::clear_fault(&node.netns)?;
                    println!("{}: fault cleared", node.name);
                } else {
                    ferrolb_tests::lab::net::inject_loss(&node.netns, port, loss_percent, tcp)?;
                    let what = if tcp { "UDP and TCP" } else { "UDP" };
                    println!("{}: dropping {loss_percent}% of incoming {what} {port}", node.name);
                }
            }
        }
        Cmd::Claim { ip, iface, count } => println!("{}", ferrolb_tests::lab::arping::claim(&iface, ip, count)?),
        Cmd::Arpwatch { ip, iface, interval_ms, duration_ms } => {
            let (interval, duration) =
                (std::time::Duration::from_millis(interval_ms), std::time::Duration::from_millis(duration_ms));
            let report = ferrolb_tests::lab::arping::watch(&iface, ip, interval, duration)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::GarpListen { ip, iface, duration_ms } => {
            let duration = std::time::Duration::from_millis(duration_ms);
            for mac in ferrolb_tests::lab::arping::gratuitous(&iface, ip, duration)? {
                println!("{mac}");
            }
        }
    }
    Ok(())
}
