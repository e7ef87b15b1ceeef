//! Subcommands that build, inspect, fail and remove the lab: its processes, nodes and namespaces.

use anyhow::Context;
use clap::Subcommand;
use ferrolb_tests::lab::{State, kubelet, lifecycle, node};
use std::path::Path;

#[derive(Subcommand)]
pub enum Cmd {
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
        /// With --kubelets: kube-proxy (nftables mode) on every node, so LoadBalancer traffic reaches the pods.
        #[arg(long)]
        kube_proxy: bool,
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
        /// Only the first N nodes run a speaker: they are labelled ferrolb.io/lab-tier=edge and the chart is
        /// installed with speaker.nodeSelector on that label.
        #[arg(long, value_name = "N")]
        speaker_nodes: Option<usize>,
        /// Process mode: run this speaker binary on every node instead of the one built beside ferrolb-lab (e.g.
        /// an older release, to upgrade node by node with `restart-speaker --binary`).
        #[arg(long, value_name = "PATH")]
        speaker_binary: Option<std::path::PathBuf>,
        /// Install this chart directory instead of charts/ferrolb (e.g. a previous release's, extracted from git
        /// history, to try `helm upgrade` from it).
        #[arg(long, value_name = "DIR")]
        chart: Option<std::path::PathBuf>,
    },
    /// Installs the chart into a lab brought up with --bare (e.g. after MetalLB, to switch from it) and runs
    /// ferrolb: process mode starts the controller and speakers, real nodes wait for the pods.
    Install {
        /// Extra chart value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        helm_set: Vec<String>,
        /// Let Helm adopt existing objects it does not own (MetalLB's CRDs): helm's --take-ownership.
        #[arg(long)]
        take_ownership: bool,
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
    /// Restarts a node's speaker (process-mode lab) with extra environment (KEY=VALUE, repeatable), or from
    /// another binary.
    RestartSpeaker {
        /// Node name.
        node: String,
        /// Environment for the new process.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Start this speaker binary from now on (also when the node is revived), e.g. a newer release.
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
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

/// Runs one of these subcommands against the lab `name` in `dir`.
pub async fn run(command: Cmd, name: String, dir: &Path) -> anyhow::Result<()> {
    let load = || State::load(dir).with_context(|| format!("no lab at {} (run `ferrolb-lab up`)", dir.display()));
    match command {
        Cmd::Up {
            nodes,
            bare,
            kubelets,
            kube_proxy,
            kubeadm_labels,
            helm_set,
            ipv6_nodes,
            second_lan,
            speaker_nodes,
            speaker_binary,
            chart,
        } => {
            let options = lifecycle::UpOptions {
                name,
                dir: dir.to_path_buf(),
                nodes,
                bare,
                real_nodes: kubelets,
                kube_proxy,
                kubeadm_labels,
                helm_set,
                ipv6_nodes,
                second_lan,
                speaker_nodes,
                speaker_binary,
                chart,
            };
            let state = lifecycle::up(&options).await?;
            println!("{}", state.kubeconfig().display());
        }
        Cmd::Install { helm_set, take_ownership } => {
            let flags: &[&str] = if take_ownership { &["--take-ownership"] } else { &[] };
            let mut state = load()?;
            lifecycle::install(&mut state, &lifecycle::chart_dir(), &helm_set, flags).await?;
            eprintln!("[ferrolb-lab] ferrolb installed in lab {name:?}");
        }
        Cmd::Status => {
            let state = load()?;
            println!("lab {:?}  dir {}  running: {}", state.name, state.dir.display(), lifecycle::is_running(dir));
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
            for (node, binary) in &state.speaker_binaries {
                println!("speaker binary of {node} {}", binary.display());
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
            lifecycle::down(&name, dir)?;
            eprintln!("[ferrolb-lab] lab {name:?} removed");
        }
        Cmd::RestartSpeaker { node, env, binary } => {
            let env: Vec<(String, String)> = env
                .iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect::<Option<_>>()
                .context("--env takes KEY=VALUE")?;
            lifecycle::restart_speaker(&mut load()?, &node, &env, binary.as_deref()).await?;
        }
        Cmd::Agent => kubelet::run(load()?).await?,
        Cmd::NodeAgent { node: name } => node::run(load()?, &name).await?,
    }
    Ok(())
}
