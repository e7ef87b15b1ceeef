//! The lab: etcd + kube-apiserver + kube-controller-manager built from source, Nodes kept alive without
//! kubelets, and one network namespace per node on a bridge, with a `host` namespace as the user's workstation.
//!
//! Everything the lab creates is named after the lab (`<name>-…` namespaces, `<dir>` for files), recorded in
//! `<dir>/state.json`, and removed by [`down`], which also works on a half-built or crashed lab.

pub mod arping;
pub mod control_plane;
pub mod exchange;
pub mod kubelet;
pub mod lifecycle;
pub mod net;
pub mod node;
pub mod outage;
pub mod pki;
pub mod realnode;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Everything that can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr.
        detail: String,
    },
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// State file could not be read or written.
    #[error("lab state {path}: {source}")]
    State {
        /// The state file.
        path: String,
        /// The error.
        source: serde_json::Error,
    },
    /// Something did not become ready in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// Kubernetes API call.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// Bad request from the user.
    #[error("{0}")]
    Usage(String),
}

/// Result with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Addresses that carry packets: everything lives in 198.18.0.0/15 (RFC 2544) and, for IPv6, in 2001:db8::/32
/// (RFC 3849), inside the lab's namespaces.
pub mod addresses {
    /// The lab LAN.
    pub const LAN_PREFIX: &str = "198.18.0";
    /// Prefix length of the LAN.
    pub const LAN_BITS: u8 = 24;
    /// The workstation's address.
    pub const HOST_IP: &str = "198.18.0.1";
    /// The pool the lab's packet tests announce from; the host routes it on-link (a static route).
    pub const POOL_CIDR: &str = "198.19.0.0/24";
    /// The whole benchmark range; the kube-proxy stand-in only ever configures addresses inside it.
    pub const PACKET_RANGE: (u32, u32) = (0xC612_0000, 0xC613_FFFF);
    /// The lab LAN's IPv6 prefix (a /64, as every Ethernet segment).
    pub const LAN6_PREFIX: &str = "2001:db8:18::";
    /// Prefix length of the IPv6 LAN.
    pub const LAN6_BITS: u8 = 64;
    /// The workstation's IPv6 address.
    pub const HOST_IP6: &str = "2001:db8:18::1";
    /// The IPv6 pool range the host routes on-link (a static route), beside [`POOL_CIDR`].
    pub const POOL6_CIDR: &str = "2001:db8:19::/64";
    /// The Service (ClusterIP) range's IPv6 half; the API server and kube-controller-manager run dual-stack.
    pub const SERVICE6_CIDR: &str = "2001:db8:96::/112";

    /// The second LAN (`up --second-lan`): the host is .1, node `i` is .(10+i), as on the first.
    pub const LAN2_PREFIX: &str = "198.18.1";
    /// The workstation's address on the second LAN.
    pub const HOST2_IP: &str = "198.18.1.1";
    /// The second LAN's IPv6 prefix.
    pub const LAN2_6_PREFIX: &str = "2001:db8:20::";
    /// The workstation's IPv6 address on the second LAN.
    pub const HOST2_IP6: &str = "2001:db8:20::1";

    /// Address of node `i` (1-based) on the second LAN.
    pub fn node2_ip(i: usize) -> String {
        format!("{LAN2_PREFIX}.{}", 10 + i)
    }

    /// IPv6 address of node `i` (1-based) on the second LAN.
    pub fn node2_ip6(i: usize) -> String {
        format!("{LAN2_6_PREFIX}{}", 10 + i)
    }

    /// Address of node `i` (1-based).
    pub fn node_ip(i: usize) -> String {
        format!("{LAN_PREFIX}.{}", 10 + i)
    }

    /// IPv6 address of node `i` (1-based): the same last digits as its IPv4 one.
    pub fn node_ip6(i: usize) -> String {
        format!("{LAN6_PREFIX}{}", 10 + i)
    }

    /// Whether an address may carry lab packets: 198.18.0.0/15 or 2001:db8::/32.
    pub fn in_packet_range(ip: std::net::IpAddr) -> bool {
        match ip {
            std::net::IpAddr::V4(v4) => (PACKET_RANGE.0..=PACKET_RANGE.1).contains(&u32::from(v4)),
            std::net::IpAddr::V6(v6) => v6.segments()[..2] == [0x2001, 0x0db8],
        }
    }
}

/// One lab node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node object name, e.g. `node-1`.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// InternalIP on the lab LAN.
    pub ip: String,
    /// IPv6 InternalIP on the lab LAN (empty in a lab from before IPv6).
    #[serde(default)]
    pub ip6: String,
}

/// A process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    /// What it is, e.g. `etcd` or `node-agent node-1`.
    pub role: String,
    /// Its pid (it leads its own process group).
    pub pid: i32,
    /// Its metrics/health port on 127.0.0.1, if it serves one.
    #[serde(default)]
    pub port: Option<u16>,
}

/// What `up` built; `down` reads it to take everything apart.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    /// Lab name: prefix of every namespace.
    pub name: String,
    /// State directory.
    pub dir: PathBuf,
    /// Directory of the control plane binaries.
    pub bin_dir: PathBuf,
    /// kube-apiserver's secure port on 127.0.0.1 (also forwarded into every node namespace).
    pub api_port: u16,
    /// etcd client port.
    pub etcd_port: u16,
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// Processes started, in start order.
    pub procs: Vec<Proc>,
    /// Speakers get the chart's gossip key (fast liveness); off, they fall back to Node Ready (a reference).
    #[serde(default = "yes")]
    pub speaker_gossip: bool,
    /// Nodes run containerd and a real kubelet, and ferrolb runs as the chart's pods (see [`realnode`]).
    #[serde(default)]
    pub real_nodes: bool,
    /// Real nodes also run kube-proxy in nftables mode.
    #[serde(default)]
    pub kube_proxy: bool,
    /// Nodes report only their IPv6 InternalIP, so speakers find their peers (liveness) over IPv6.
    #[serde(default)]
    pub ipv6_nodes: bool,
    /// A second LAN: every node and the host also have `eth1` on bridge `br1` (198.18.1.0/24).
    #[serde(default)]
    pub second_lan: bool,
    /// Arguments the chart gives the speaker DaemonSet's container (process mode passes them on, so chart
    /// values such as `loadBalancerClass` hold for the processes too); `--namespace` and `--metrics-addr` are
    /// the lab's own.
    #[serde(default)]
    pub speaker_args: Vec<String>,
    /// The same for the controller Deployment's container.
    #[serde(default)]
    pub controller_args: Vec<String>,
    /// What else process mode takes from the chart's speaker DaemonSet (see [`lifecycle::SpeakerTemplate`]).
    #[serde(default)]
    pub speaker_template: lifecycle::SpeakerTemplate,
    /// `up --speaker-nodes N`: only the first N nodes are labelled to run a speaker (the chart's
    /// `speaker.nodeSelector`); `None`: every node runs one.
    #[serde(default)]
    pub speaker_nodes: Option<usize>,
    /// Process mode: the speaker binary a node runs when it is not the one built beside `ferrolb-lab`
    /// (`up --speaker-binary`, `restart-speaker --binary`, e.g. an older release during a rolling upgrade);
    /// `revive` and `restart-speaker` start the same one again.
    #[serde(default)]
    pub speaker_binaries: std::collections::BTreeMap<String, PathBuf>,
}

fn yes() -> bool {
    true
}

impl State {
    /// `<dir>/state.json`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Loads the state of a lab.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|source| io_err(&path, source))?;
        serde_json::from_str(&text).map_err(|source| LabError::State { path: path.display().to_string(), source })
    }

    /// Saves it (atomically, so a crash never leaves half a file).
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|source| LabError::State { path: path.display().to_string(), source })?;
        std::fs::write(&tmp, text).map_err(|source| io_err(&tmp, source))?;
        std::fs::rename(&tmp, &path).map_err(|source| io_err(&path, source))
    }

    /// Admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Namespace of the workstation.
    pub fn host_netns(&self) -> String {
        format!("{}-host", self.name)
    }

    /// Namespace holding the bridge.
    pub fn lan_netns(&self) -> String {
        format!("{}-lan", self.name)
    }

    /// Node by name (`node-1`) or by namespace.
    pub fn node(&self, name: &str) -> Result<&NodeInfo> {
        self.nodes
            .iter()
            .find(|n| n.name == name || n.netns == name)
            .ok_or_else(|| LabError::Usage(format!("no node {name:?} in lab {:?}", self.name)))
    }

    /// The newest speaker process the lab started on `node` (process mode; it may have exited since).
    pub fn speaker(&self, node: &str) -> Option<&Proc> {
        let role = format!("speaker {node}");
        self.procs.iter().rev().find(|p| p.role == role)
    }

    /// The marker file whose presence stops a node's heartbeats.
    pub fn killed_marker(&self, node: &str) -> PathBuf {
        self.dir.join("killed").join(node)
    }

    /// Unix socket through which node namespaces reach the API server.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// Unix socket through which the API server reaches the kubelets (HTTP CONNECT, its egress selector).
    pub fn kubelet_proxy_socket(&self) -> PathBuf {
        self.dir.join("kubelet-proxy.sock")
    }

    /// Log file of a role.
    pub fn log(&self, role: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", role.replace(' ', "-")))
    }
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> LabError {
    LabError::Io { path: path.display().to_string(), source }
}

/// Runs a command to completion; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command { command: format!("{program} {}", args.join(" ")), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints a progress line (humans watch `up`, which takes a while).
pub fn step(msg: impl AsRef<str>) {
    eprintln!("[ferrolb-lab] {}", msg.as_ref());
}

/// Default state directory for a lab name.
pub fn default_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ferrolb-lab-{name}"))
}
