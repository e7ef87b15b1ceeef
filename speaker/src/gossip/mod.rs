//! The liveness protocol's I/O: a heartbeat sender thread, a receiver feeding [`Membership`], a watcher
//! that wakes the speaker when a verdict changes, and the "leaving" message on shutdown. The rules (what a
//! datagram must carry, when a peer is dead) are in the pure [`crate::model::liveness`].

use crate::error::{Error, Result};
use crate::model::facts::has_speaker;
use crate::model::liveness::{self, Kind, Membership, Message, Verdict};
use crate::settings::Settings;
use crate::telemetry::stats::Stats;
use crate::wake::{Wake, WakeSender};
use k8s_openapi::api::core::v1::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Liveness shared between the protocol tasks and the election.
pub type SharedMembership = Arc<std::sync::Mutex<Membership>>;

/// What this speaker says about itself: its incarnation, a message counter and its MACs.
pub struct Identity {
    /// This node's name.
    pub node: String,
    /// Chosen at start; only needs to differ from this node's earlier incarnations.
    pub incarnation: u64,
    counter: std::sync::atomic::AtomicU64,
    /// This node's interface MACs (refreshed with the interface scan).
    pub macs: std::sync::RwLock<Vec<[u8; 6]>>,
}

impl Identity {
    /// A fresh incarnation: start time and process id, so a restart, even after a clock step, differs.
    pub fn new(node: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let incarnation = nanos ^ (u64::from(std::process::id()) << 40);
        Self {
            node: node.to_string(),
            incarnation,
            counter: std::sync::atomic::AtomicU64::new(0),
            macs: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// The next message of this incarnation.
    pub fn message(&self, kind: Kind) -> Message {
        Message {
            kind,
            node: self.node.clone(),
            incarnation: self.incarnation,
            counter: self.counter.fetch_add(1, Ordering::Relaxed) + 1,
            macs: self.macs.read().map(|m| m.clone()).unwrap_or_default(),
        }
    }
}

/// The liveness protocol as the speaker holds it: the shared view of the peers, who to send heartbeats to, and
/// (with a key) the socket. Without a key there is no protocol and liveness falls back to Node `Ready`.
pub struct Liveness {
    membership: SharedMembership,
    peers: Arc<std::sync::RwLock<Vec<SocketAddr>>>,
    identity: Arc<Identity>,
    socket: Option<(std::net::UdpSocket, Vec<u8>)>,
    started: Instant,
    dead_after: Duration,
}

impl Liveness {
    /// Starts the protocol when `settings` has a key; verdict changes wake the planner.
    pub fn start(settings: &Settings, stats: Arc<Stats>, wake: WakeSender) -> Result<Self> {
        let membership: SharedMembership =
            Arc::new(std::sync::Mutex::new(Membership::new(&settings.node, settings.dead_after)));
        let peers = Arc::new(std::sync::RwLock::new(Vec::new()));
        let identity = Arc::new(Identity::new(&settings.node));
        let socket = match &settings.gossip_key {
            Some(key) => {
                let socket =
                    start(settings, identity.clone(), key.clone(), membership.clone(), peers.clone(), wake, stats)
                        .map_err(|source| Error::RawSocket {
                            interface: format!("udp/{}", settings.gossip_port),
                            source,
                        })?;
                tracing::info!(port = settings.gossip_port, heartbeat = ?settings.heartbeat, dead_after = ?settings.dead_after, "liveness protocol on");
                Some((socket, key.clone()))
            }
            None => {
                tracing::warn!(
                    "no gossip key (FERROLB_GOSSIP_KEY): no liveness protocol; a peer counts as alive while its Node is \
                     Ready, so failover waits for the node controller's grace period"
                );
                None
            }
        };
        Ok(Self { membership, peers, identity, socket, started: Instant::now(), dead_after: settings.dead_after })
    }

    /// Whether the protocol runs (a key was given).
    pub fn is_on(&self) -> bool {
        self.socket.is_some()
    }

    /// The view shared with the announcer (which MACs are which node's).
    pub fn shared(&self) -> SharedMembership {
        self.membership.clone()
    }

    /// A copy of the view now.
    pub fn view(&self) -> Membership {
        self.membership.lock().map(|m| m.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Three heartbeat timeouts after the protocol started, every running peer has been heard: before that a
    /// peer never heard from may just not have spoken yet.
    pub fn settled(&self) -> bool {
        self.is_on() && self.started.elapsed() > self.dead_after * 3
    }

    /// Heartbeats go to these nodes from now on, to those of them that run a speaker when that is known.
    pub fn set_peers(&self, nodes: &[Arc<Node>], speaker_nodes: Option<&BTreeSet<String>>, me: &str, port: u16) {
        let ipv6 = self.socket.as_ref().is_some_and(|(socket, _)| is_ipv6(socket));
        if let Ok(mut p) = self.peers.write() {
            *p = peer_addresses(nodes, speaker_nodes, me, port, ipv6);
        }
    }

    /// The MACs this node answers with, told to peers in every heartbeat.
    pub fn set_macs(&self, macs: Vec<[u8; 6]>) {
        if let Ok(mut m) = self.identity.macs.write() {
            *m = macs;
        }
    }

    /// Tells every peer this node is leaving.
    pub async fn leave(&self) {
        if let Some((socket, key)) = &self.socket {
            let targets = self.peers.read().map(|p| p.clone()).unwrap_or_default();
            say_leaving(socket, key, &self.identity, &targets).await;
        }
    }
}

/// Starts the liveness protocol: a sender thread (a plain OS thread, so heartbeats keep their rhythm when the
/// async workers are busy), a receiver task, and a watcher that triggers re-election when a verdict changes.
fn start(
    settings: &Settings,
    identity: Arc<Identity>,
    key: Vec<u8>,
    membership: SharedMembership,
    peers: Arc<std::sync::RwLock<Vec<std::net::SocketAddr>>>,
    trigger: WakeSender,
    stats: Arc<Stats>,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = bind(settings.gossip_port)?;
    let sender = socket.try_clone()?;
    let (interval, send_key, send_peers) = (settings.heartbeat, key.clone(), peers.clone());
    std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
        loop {
            let datagram = liveness::encode(&send_key, &identity.message(Kind::Alive));
            for peer in send_peers.read().map(|p| p.clone()).unwrap_or_default() {
                let _ = sender.send_to(&datagram, peer);
            }
            std::thread::sleep(interval);
        }
    })?;
    let receiver = tokio::net::UdpSocket::from_std({
        let r = socket.try_clone()?;
        r.set_nonblocking(true)?;
        r
    })?;
    let (recv_membership, recv_trigger) = (membership.clone(), trigger.clone());
    let stats_for_detection = stats.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = receiver.recv_from(&mut buf).await else { continue };
            let now = std::time::Instant::now();
            let verdict = liveness::decode(&key, &buf[..n]).and_then(|msg| {
                let mut m = recv_membership.lock().map_err(|_| liveness::Reject::Malformed)?;
                let before = m.verdict(&msg.node, now);
                m.accept(&msg, now)?;
                Ok(before != m.verdict(&msg.node, now))
            });
            match verdict {
                Ok(true) => {
                    let _ = recv_trigger.send(Wake::Liveness);
                }
                Ok(false) => {}
                Err(reason) => {
                    let count = Stats::count(&stats.gossip_rejects, reason.label());
                    // Loud but bounded: the 1st, 2nd, 4th, 8th… rejection of each kind is logged.
                    if count.is_power_of_two() {
                        tracing::warn!(%from, reason = reason.label(), count, "rejected a liveness datagram");
                    }
                }
            }
        }
    });
    let tick = (settings.dead_after / 10).max(Duration::from_millis(10));
    let detect_stats = stats_for_detection;
    tokio::spawn(async move {
        let mut last = BTreeMap::new();
        loop {
            tokio::time::sleep(tick).await;
            let now = std::time::Instant::now();
            let (verdicts, silences) = membership
                .lock()
                .map(|m| {
                    let v = m.verdicts(now);
                    let s: BTreeMap<String, Duration> =
                        v.keys().filter_map(|n| Some((n.clone(), m.silence(n, now)?))).collect();
                    (v, s)
                })
                .unwrap_or_default();
            if verdicts != last {
                for (node, v) in &verdicts {
                    if last.get(node) != Some(v) {
                        let silent = silences.get(node).copied().unwrap_or_default();
                        tracing::info!(%node, verdict = ?v, silent_ms = silent.as_millis() as u64, "peer liveness changed");
                        if *v == Verdict::Dead && last.get(node) == Some(&Verdict::Alive) {
                            // Time from the peer's last word to our verdict: the detection latency.
                            Stats::observe(&detect_stats.failure_detection, silent);
                        }
                    }
                }
                last = verdicts;
                if trigger.send(Wake::Liveness).is_err() {
                    return;
                }
            }
        }
    });
    Ok(socket)
}

/// The liveness socket: IPv6 with IPv4 mapped in (one socket for IPv4, IPv6 and dual-stack clusters), or IPv4
/// alone where the node has IPv6 switched off.
fn bind(port: u16) -> std::io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).or_else(|v6_error| {
        tracing::info!(error = %v6_error, "no IPv6 liveness socket; IPv4 only");
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
    })
}

/// Whether the liveness socket speaks IPv6 (and so needs IPv4 peers written as IPv4-mapped addresses).
pub fn is_ipv6(socket: &std::net::UdpSocket) -> bool {
    socket.local_addr().is_ok_and(|a| a.is_ipv6())
}

/// Peers' liveness addresses: every other node's that runs a speaker (all when `speaker_nodes` is unknown) first
/// InternalIP of IPv4, or of IPv6 on IPv6-only nodes. For an IPv6 socket (`ipv6_socket`), IPv4 addresses are
/// given in their IPv4-mapped form, which such a socket can send to.
pub fn peer_addresses(
    nodes: &[Arc<Node>],
    speaker_nodes: Option<&BTreeSet<String>>,
    me: &str,
    port: u16,
    ipv6_socket: bool,
) -> Vec<SocketAddr> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        // Nothing listens where no speaker runs: a datagram there is wasted on both ends.
        .filter(|n| n.metadata.name.as_deref().is_some_and(|name| has_speaker(name, speaker_nodes)))
        .filter_map(|n| {
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            let internal: Vec<IpAddr> =
                addrs.iter().filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect();
            let ip = internal.iter().find(|ip| ip.is_ipv4()).or_else(|| internal.first())?;
            let ip = match ip {
                IpAddr::V4(v4) if ipv6_socket => IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(_) if !ipv6_socket => return None,
                other => *other,
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// Tells every peer this node is leaving, a few times in case one datagram is lost.
async fn say_leaving(socket: &std::net::UdpSocket, key: &[u8], identity: &Identity, peers: &[std::net::SocketAddr]) {
    for _ in 0..3 {
        let leaving = liveness::encode(key, &identity.message(Kind::Leaving));
        for peer in peers {
            let _ = socket.send_to(&leaving, peer);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addresses: &[&str]) -> Arc<Node> {
        let addresses: Vec<serde_json::Value> =
            addresses.iter().map(|a| serde_json::json!({"type": "InternalIP", "address": a})).collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "status": {"addresses": addresses}}))
                .expect("node"),
        )
    }

    #[test]
    fn peers_are_reached_over_ipv4_first_and_over_ipv6_on_ipv6_only_nodes() {
        let nodes = [
            node("me", &["198.18.0.11"]),
            node("dual", &["2001:db8:18::12", "198.18.0.12"]),
            node("v6-only", &["2001:db8:18::13"]),
            node("v4-only", &["198.18.0.14"]),
            node("no-address", &[]),
        ];
        let peers = |v6: bool| peer_addresses(&nodes, None, "me", 7946, v6);
        let expect = |list: &[&str]| list.iter().map(|a| a.parse::<SocketAddr>().expect("addr")).collect::<Vec<_>>();
        assert_eq!(
            peers(true),
            expect(&["[::ffff:198.18.0.12]:7946", "[2001:db8:18::13]:7946", "[::ffff:198.18.0.14]:7946"])
        );
        assert_eq!(
            peers(false),
            expect(&["198.18.0.12:7946", "198.18.0.14:7946"]),
            "an IPv4 socket cannot reach an IPv6-only peer"
        );
        let speakers = BTreeSet::from(["me".to_string(), "v6-only".to_string(), "no-address".to_string()]);
        assert_eq!(
            peer_addresses(&nodes, Some(&speakers), "me", 7946, true),
            expect(&["[2001:db8:18::13]:7946"]),
            "only nodes that run a speaker hear heartbeats"
        );
    }

    #[test]
    fn one_socket_carries_heartbeats_of_both_families() {
        let Ok(socket) = bind(0) else { return };
        if !is_ipv6(&socket) {
            return;
        }
        let port = socket.local_addr().expect("local").port();
        let sender = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).expect("sender");
        for to in [SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SocketAddr::from((Ipv6Addr::LOCALHOST, port))] {
            let to = match to {
                SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), port),
                v6 => v6,
            };
            sender.send_to(b"hello", to).expect("send");
            socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut buf = [0u8; 16];
            let (n, _) = socket.recv_from(&mut buf).expect("receive");
            assert_eq!(&buf[..n], b"hello", "to {to}");
        }
    }
}
