//! `ferrolb-lab`: a real Kubernetes control plane and a Layer-2 network of namespaces on one machine.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrolb_tests::lab::{State, default_dir, kubelet, lifecycle, node};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "A real Kubernetes control plane and a Layer-2 lab network on one machine (needs root)")]
struct Cli {
    /// Lab name: prefix of its network namespaces.
    #[arg(long, global = true, env = "FERROLB_LAB_NAME", default_value = "flb")]
    name: String,
    /// State directory (default: $TMPDIR/ferrolb-lab-<name>).
    #[arg(long, global = true, env = "FERROLB_LAB_DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (once) and start everything in the background; prints the admin kubeconfig path.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Only the cluster and the network: no chart, no ferrolb processes.
        #[arg(long)]
        bare: bool,
        /// Real nodes: containerd and a kubelet per node, ferrolb as the chart's pods from `make images`.
        #[arg(long)]
        kubelets: bool,
        /// Label every node as kubeadm labels a control-plane node (minikube's and kind's single node too).
        #[arg(long)]
        kubeadm_labels: bool,
        /// Extra chart value for `helm install` (repeatable), e.g. --set speaker.ignoreExcludeLB=true.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        helm_set: Vec<String>,
        /// Nodes report only their IPv6 InternalIP, as in an IPv6-only cluster (the network stays dual-stack).
        #[arg(long)]
        ipv6_nodes: bool,
        /// A second LAN segment (bridge br1, 198.18.1.0/24, 2001:db8:20::/64): every node and the host get eth1 on
        /// it, so `arping --iface eth1` from host asks there.
        #[arg(long)]
        second_lan: bool,
    },
    /// What runs, and where.
    Status,
    /// Prints the admin kubeconfig path.
    Kubeconfig,
    /// Runs a command in the `host` namespace or a node's (`node-1`, …).
    Exec {
        /// `host` or a node name.
        target: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Hard-fails a node: SIGKILL its processes (its speaker), stop its heartbeats, link down.
    Kill {
        /// Node name.
        node: String,
    },
    /// Brings a killed node back.
    Revive {
        /// Node name.
        node: String,
    },
    /// Removes every process, namespace and file the lab made.
    Down,
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
        /// `udp` or `tcp`.
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
    /// Restarts a node's speaker (process-mode lab) with extra environment (KEY=VALUE, repeatable).
    RestartSpeaker {
        /// Node name.
        node: String,
        /// Environment for the new process.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// (internal) fake kubelets and the API relay, run by `up`.
    #[command(hide = true)]
    Agent,
    /// (internal) per-node API relay and kube-proxy stand-in, run by `up` inside a node namespace.
    #[command(hide = true)]
    NodeAgent {
        /// Node name.
        #[arg(long)]
        node: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = cli.dir.unwrap_or_else(|| default_dir(&cli.name));
    let load = || State::load(&dir).with_context(|| format!("no lab at {} (run `ferrolb-lab up`)", dir.display()));
    match cli.command {
        Cmd::Up { nodes, bare, kubelets, kubeadm_labels, helm_set, ipv6_nodes, second_lan } => {
            let options = lifecycle::UpOptions {
                name: cli.name,
                dir: dir.clone(),
                nodes,
                bare,
                real_nodes: kubelets,
                kubeadm_labels,
                helm_set,
                ipv6_nodes,
                second_lan,
            };
            let state = lifecycle::up(&options).await?;
            println!("{}", state.kubeconfig().display());
        }
        Cmd::Status => {
            let state = load()?;
            println!("lab {:?}  dir {}  running: {}", state.name, state.dir.display(), lifecycle::is_running(&dir));
            println!("api  https://127.0.0.1:{}   kubeconfig {}", state.api_port, state.kubeconfig().display());
            println!(
                "host {} (198.18.0.1, route {} on-link)",
                state.host_netns(),
                ferrolb_tests::lab::addresses::POOL_CIDR
            );
            if state.second_lan {
                println!("host eth1 {} on the second LAN (bridge br1)", ferrolb_tests::lab::addresses::HOST2_IP);
            }
            for (i, n) in state.nodes.iter().enumerate() {
                let killed = if state.killed_marker(&n.name).exists() { "  KILLED" } else { "" };
                let eth1 = if state.second_lan {
                    format!("  eth1 {}", ferrolb_tests::lab::addresses::node2_ip(i + 1))
                } else {
                    String::new()
                };
                println!("node {:<8} {:<12} netns {}{eth1}{killed}", n.name, n.ip, n.netns);
            }
            if !state.speaker_args.is_empty() {
                println!("speaker args (from the chart) {}", state.speaker_args.join(" "));
            }
            for p in &state.procs {
                let up = if ferrolb_tests::lab::control_plane::alive(p.pid) { "running" } else { "DEAD" };
                println!("proc {:<24} pid {:<8} {up}", p.role, p.pid);
            }
        }
        Cmd::Kubeconfig => println!("{}", load()?.kubeconfig().display()),
        Cmd::Exec { target, command } => {
            let state = load()?;
            let ns = if target == "host" { state.host_netns() } else { state.node(&target)?.netns.clone() };
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&command)
                .env("KUBECONFIG", state.kubeconfig())
                .status()
                .context("running ip netns exec")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Kill { node } => lifecycle::kill(&load()?, &node)?,
        Cmd::Revive { node } => lifecycle::revive(&mut load()?, &node).await?,
        Cmd::Down => {
            lifecycle::down(&cli.name, &dir)?;
            eprintln!("[ferrolb-lab] lab {:?} removed", cli.name);
        }
        Cmd::Probe { protocol, addr, timeout_ms } => {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            let answer = match protocol.as_str() {
                "tcp" => ferrolb_tests::lab::probe::tcp(addr, timeout)?,
                "udp" => ferrolb_tests::lab::probe::udp(addr, "probe", timeout)?,
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
                let message =
                    Message { kind, node: node.clone(), incarnation: u64::MAX / 2, counter, macs: Vec::new() };
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
            use ferrolb_tests::lab::prober;
            let (interval, duration) =
                (std::time::Duration::from_millis(interval_ms), std::time::Duration::from_millis(duration_ms));
            let report = match protocol.as_str() {
                "udp" => prober::udp(addr, interval, duration)?,
                "tcp" => prober::tcp(addr, interval, duration)?,
                other => anyhow::bail!("protocol must be tcp or udp, not {other:?}"),
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
        Cmd::RestartSpeaker { node, env } => {
            let env: Vec<(String, String)> = env
                .iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect::<Option<_>>()
                .context("--env takes KEY=VALUE")?;
            lifecycle::restart_speaker(&mut load()?, &node, &env).await?;
        }
        Cmd::Agent => kubelet::run(load()?).await?,
        Cmd::NodeAgent { node: name } => node::run(load()?, &name).await?,
    }
    Ok(())
}
