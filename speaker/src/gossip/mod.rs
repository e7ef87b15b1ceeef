//! The liveness protocol's I/O: a heartbeat sender thread, a receiver and a ticker feeding [`Membership`], and
//! the "leaving" message on shutdown. Who is alive, and what to say to whom, is decided by the pure
//! [`crate::model::membership`]; the datagram format is [`crate::model::liveness`]. This module owns the
//! socket, the key, this speaker's incarnation and counter, and the map from speaker names to addresses.

use crate::error::{Error, Result};
use crate::model::liveness::{self, Kind, Message};
use crate::model::membership::{Config, Membership, Ring, Say, To};
use crate::settings::Settings;
use crate::telemetry::stats::Stats;
use crate::wake::{Wake, WakeSender};
use k8s_openapi::api::core::v1::Node;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Liveness shared between the protocol tasks and the election.
pub type SharedMembership = Arc<Mutex<Membership>>;

/// Speaker name → liveness address.
type Addresses = Arc<RwLock<BTreeMap<Arc<str>, SocketAddr>>>;

/// What this speaker says about itself: its incarnation, a message counter and its MACs.
pub struct Identity {
    /// This node's name.
    pub node: String,
    /// Chosen at start; only needs to differ from this node's earlier incarnations.
    pub incarnation: u64,
    counter: std::sync::atomic::AtomicU64,
    /// This node's interface MACs (refreshed with the interface scan).
    pub macs: RwLock<Vec<[u8; 6]>>,
}

impl Identity {
    /// A fresh incarnation: start time and process id, so a restart, even after a clock step, differs; marked
    /// [`liveness::READS_FLB3`], so peers never take this speaker's `FLB2` copies for an old speaker's.
    pub fn new(node: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let incarnation = (nanos ^ (u64::from(std::process::id()) << 40)) | liveness::READS_FLB3;
        Self {
            node: node.to_string(),
            incarnation,
            counter: std::sync::atomic::AtomicU64::new(0),
            macs: RwLock::new(Vec::new()),
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
            legacy: false,
        }
    }
}

/// The socket side: what is needed to turn a [`Say`] into datagrams.
struct Mouth {
    socket: UdpSocket,
    key: Vec<u8>,
    identity: Arc<Identity>,
    addresses: Addresses,
}

impl Mouth {
    /// Sends what the protocol says. `legacy`: old speakers run, so what goes to everyone and can be said in
    /// their format (alive, leaving) is, as new speakers read both.
    fn say(&self, says: &[Say], legacy: bool) {
        for say in says {
            let targets: Vec<SocketAddr> = match &say.to {
                To::Node(name) => self.addresses.read().ok().and_then(|a| a.get(name).copied()).into_iter().collect(),
                To::Everyone => self.addresses.read().map(|a| a.values().copied().collect()).unwrap_or_default(),
            };
            if targets.is_empty() {
                continue;
            }
            for _ in 0..say.copies.max(1) {
                let msg = self.identity.message(say.kind.clone());
                let old_format = legacy && say.to == To::Everyone && matches!(say.kind, Kind::Alive | Kind::Leaving);
                let datagram = if old_format {
                    liveness::encode_legacy(&self.key, &msg)
                } else {
                    liveness::encode(&self.key, &msg)
                };
                for to in &targets {
                    let _ = self.socket.send_to(&datagram, to);
                }
            }
        }
    }
}

/// The liveness protocol as the speaker holds it: the shared view of the peers, who the speakers are and (with a
/// key) the socket. Without a key there is no protocol and liveness falls back to Node `Ready`.
pub struct Liveness {
    membership: SharedMembership,
    identity: Arc<Identity>,
    mouth: Option<Arc<Mouth>>,
    addresses: Addresses,
}

impl Liveness {
    /// Starts the protocol when `settings` has a key; verdict changes wake the planner. A liveness port in use
    /// is waited for (up to [`PORT_WAIT`]) rather than a reason to exit.
    pub async fn start(settings: &Settings, stats: Arc<Stats>, wake: WakeSender) -> Result<Self> {
        let config = Config::new(settings.dead_after);
        let membership: SharedMembership =
            Arc::new(Mutex::new(Membership::new(&settings.node, config, Instant::now())));
        let identity = Arc::new(Identity::new(&settings.node));
        let addresses: Addresses = Arc::default();
        let mouth = match &settings.gossip_key {
            Some(key) => {
                let mouth = Mouth {
                    socket: bind_waiting(settings.gossip_port)
                        .await
                        .map_err(|source| raw_socket_error(settings, source))?,
                    key: key.clone(),
                    identity: identity.clone(),
                    addresses: addresses.clone(),
                };
                let mouth = Arc::new(mouth);
                start(settings, mouth.clone(), membership.clone(), wake, stats)
                    .map_err(|source| raw_socket_error(settings, source))?;
                tracing::info!(port = settings.gossip_port, heartbeat = ?settings.heartbeat, dead_after = ?settings.dead_after,
                    watchers = config.watchers, quorum = config.quorum, "liveness protocol on");
                Some(mouth)
            }
            None => {
                tracing::warn!(
                    "no gossip key (FERROLB_GOSSIP_KEY): no liveness protocol; a peer counts as alive while its Node is \
                     Ready, so failover waits for the node controller's grace period"
                );
                None
            }
        };
        Ok(Self { membership, identity, mouth, addresses })
    }

    /// Whether the protocol runs (a key was given).
    pub fn is_on(&self) -> bool {
        self.mouth.is_some()
    }

    /// The view shared with the announcer (which MACs are which node's).
    pub fn shared(&self) -> SharedMembership {
        self.membership.clone()
    }

    /// A copy of the view now.
    pub fn view(&self) -> Membership {
        self.membership.lock().map(|m| m.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Long enough after the protocol started that every running peer has answered this speaker's hello: before
    /// that a peer never heard from may just not have spoken yet.
    pub fn settled(&self) -> bool {
        self.is_on() && self.membership.lock().is_ok_and(|m| m.settled(Instant::now()))
    }

    /// The speakers are these (name → liveness address) from now on; the ones not heard yet are greeted.
    /// Without the protocol there is no ring: a peer on it that is never heard would count as dead once the view
    /// settles, so every speaker would plan every address (held back only by the owner's ARP answers, and
    /// reported as a clash with a stranger); without it, every peer counts by its Node's `Ready`.
    pub fn set_peers(&self, peers: BTreeMap<String, SocketAddr>) {
        if self.mouth.is_none() {
            return;
        }
        let peers: BTreeMap<Arc<str>, SocketAddr> = peers.into_iter().map(|(n, a)| (Arc::from(n), a)).collect();
        let mut names: Vec<Arc<str>> = peers.keys().cloned().collect();
        names.push(Arc::from(self.identity.node.as_str()));
        if let Ok(mut a) = self.addresses.write() {
            *a = peers;
        }
        let (hello, legacy) = match self.membership.lock() {
            Ok(mut m) => (m.set_ring(Arc::new(Ring::new(names))), m.legacy_peers(Instant::now())),
            Err(_) => return,
        };
        if let Some(mouth) = &self.mouth {
            mouth.say(&hello, legacy);
        }
    }

    /// The MACs this node answers with, told to peers in every message; a change is told to every speaker.
    pub fn set_macs(&self, macs: Vec<[u8; 6]>) {
        let changed = self.identity.macs.write().is_ok_and(|mut m| {
            let changed = *m != macs;
            *m = macs;
            changed
        });
        if let (true, Some(mouth)) = (changed, &self.mouth) {
            let legacy = self.membership.lock().is_ok_and(|m| m.legacy_peers(Instant::now()));
            mouth.say(&[Say { to: To::Everyone, kind: Kind::Alive, copies: 1 }], legacy);
        }
    }

    /// Tells every speaker this node is leaving, a few times in case one datagram is lost.
    pub async fn leave(&self) {
        let Some(mouth) = &self.mouth else { return };
        let legacy = self.membership.lock().is_ok_and(|m| m.legacy_peers(Instant::now()));
        for _ in 0..3 {
            mouth.say(&[Say { to: To::Everyone, kind: Kind::Leaving, copies: 1 }], legacy);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn raw_socket_error(settings: &Settings, source: std::io::Error) -> Error {
    Error::RawSocket { interface: format!("udp/{}", settings.gossip_port), source }
}

/// Starts the liveness protocol: a sender thread (a plain OS thread, so heartbeats keep their rhythm when the
/// async workers are busy), a receiver task, and a ticker that watches the subjects and triggers re-election
/// when a verdict may have changed.
fn start(
    settings: &Settings,
    mouth: Arc<Mouth>,
    membership: SharedMembership,
    wake: WakeSender,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    let interval = settings.heartbeat;
    let (beat_mouth, beat_membership) = (mouth.clone(), membership.clone());
    std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
        loop {
            let (targets, legacy) = match beat_membership.lock() {
                Ok(m) => (m.heartbeat_targets(), m.legacy_peers(Instant::now())),
                Err(_) => return,
            };
            if legacy {
                // Old speakers expect a heartbeat from everyone, in their format (new ones read it too).
                beat_mouth.say(&[Say { to: To::Everyone, kind: Kind::Alive, copies: 1 }], true);
            } else {
                let msg = beat_mouth.identity.message(Kind::Alive);
                let datagram = liveness::encode(&beat_mouth.key, &msg);
                let addresses = beat_mouth.addresses.read().map(|a| a.clone()).unwrap_or_default();
                for to in targets.iter().filter_map(|t| addresses.get(t)) {
                    let _ = beat_mouth.socket.send_to(&datagram, to);
                }
            }
            std::thread::sleep(interval);
        }
    })?;
    let receiver = tokio::net::UdpSocket::from_std({
        let r = mouth.socket.try_clone()?;
        r.set_nonblocking(true)?;
        r
    })?;
    let (recv_membership, recv_wake, recv_mouth, recv_stats) =
        (membership.clone(), wake.clone(), mouth.clone(), stats.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            let Ok((n, from)) = receiver.recv_from(&mut buf).await else { continue };
            let now = Instant::now();
            let taken = liveness::decode(&recv_mouth.key, &buf[..n]).and_then(|msg| {
                let mut m = recv_membership.lock().map_err(|_| liveness::Reject::Malformed)?;
                let before = m.version();
                let says = m.receive(&msg, now)?;
                Ok((says, m.version() != before, m.legacy_peers(now)))
            });
            match taken {
                Ok((says, changed, legacy)) => {
                    recv_mouth.say(&says, legacy);
                    if changed {
                        let _ = recv_wake.send(Wake::Liveness);
                    }
                }
                Err(reason) => {
                    let count = Stats::count(&recv_stats.gossip_rejects, reason.label());
                    // Loud but bounded: the 1st, 2nd, 4th, 8th… rejection of each kind is logged.
                    if count.is_power_of_two() {
                        tracing::warn!(%from, reason = reason.label(), count, "rejected a liveness datagram");
                    }
                }
            }
        }
    });
    let tick = (settings.dead_after / 10).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let (mut seen, mut last) = (None, BTreeMap::new());
        loop {
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            let Ok((says, version, declared, detected, legacy, verdicts)) = membership.lock().map(|mut m| {
                let says = m.tick(now);
                let version = m.version();
                // Only when something may have changed: listing every peer's verdict costs O(N).
                let verdicts = (seen != Some(version)).then(|| m.verdicts(now));
                (says, version, m.take_declared(), m.take_detected(), m.legacy_peers(now), verdicts)
            }) else {
                return;
            };
            mouth.say(&says, legacy);
            for (node, silent) in declared {
                tracing::info!(%node, silent_ms = silent.as_millis() as u64, "peer dead: its watchers agree");
            }
            for (_, silent) in detected {
                // Time from a watched peer's last word to this speaker holding it dead: the detection latency.
                Stats::observe(&stats.failure_detection, silent);
            }
            let Some(verdicts) = verdicts else { continue };
            seen = Some(version);
            for (node, verdict) in &verdicts {
                if last.get(node) != Some(verdict) {
                    tracing::info!(%node, ?verdict, "peer liveness changed");
                }
            }
            last = verdicts;
            if wake.send(Wake::Liveness).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// How long a speaker waits for its liveness port to come free before it gives up. MetalLB's memberlist uses
/// 7946 too: when one replaces the other, the old speakers may take a few seconds to exit, and a speaker that
/// exited at once would be restarted by its kubelet only after a growing back-off (10 s, 20 s, 40 s …) while
/// clients' neighbour entries expire (docs/design.md §5.2).
pub const PORT_WAIT: Duration = Duration::from_secs(120);

/// Binds the liveness socket, waiting while another process holds the port.
async fn bind_waiting(port: u16) -> std::io::Result<UdpSocket> {
    let started = Instant::now();
    let mut told = false;
    loop {
        match bind(port) {
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < PORT_WAIT => {
                if !told {
                    tracing::warn!(port, %error, wait = ?PORT_WAIT,
                        "liveness port in use (MetalLB's memberlist uses 7946 too: is a MetalLB speaker still running on this node?); waiting for it to come free");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(socket) => {
                if told {
                    tracing::info!(port, waited = ?started.elapsed(), "liveness port free: liveness protocol starting");
                }
                return Ok(socket);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The liveness socket: IPv6 with IPv4 mapped in (one socket for IPv4, IPv6 and dual-stack clusters), or IPv4
/// alone where the node has IPv6 switched off.
fn bind(port: u16) -> std::io::Result<UdpSocket> {
    match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)) {
        // Busy is not "no IPv6": falling back would leave a dual-stack or IPv6 cluster with an IPv4-only socket.
        Err(v6_error) if v6_error.kind() == std::io::ErrorKind::AddrInUse => Err(v6_error),
        Err(v6_error) => {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
            tracing::info!(error = %v6_error, "no IPv6 liveness socket; IPv4 only");
            Ok(socket)
        }
        ok => ok,
    }
}

/// Whether the liveness socket speaks IPv6 (and so needs IPv4 peers written as IPv4-mapped addresses).
pub fn is_ipv6(socket: &UdpSocket) -> bool {
    socket.local_addr().is_ok_and(|a| a.is_ipv6())
}

impl Liveness {
    /// Whether peers must be written as IPv6 addresses (the socket is IPv6; without a socket it does not matter).
    pub fn ipv6(&self) -> bool {
        self.mouth.as_ref().is_some_and(|m| is_ipv6(&m.socket))
    }
}

/// Peers' liveness addresses: every other node's first InternalIP of IPv4, or of IPv6 on IPv6-only nodes, for the
/// nodes in `speakers` (`None`: not known, every node). For an IPv6 socket (`ipv6_socket`), IPv4 addresses are
/// given in their IPv4-mapped form, which such a socket can send to.
pub fn peer_addresses(
    nodes: &[Arc<Node>],
    speakers: Option<&BTreeSet<String>>,
    me: &str,
    port: u16,
    ipv6_socket: bool,
) -> BTreeMap<String, SocketAddr> {
    nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            if name == me || speakers.is_some_and(|s| !s.contains(name)) {
                return None;
            }
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            let internal: Vec<IpAddr> =
                addrs.iter().filter(|a| a.type_ == "InternalIP").filter_map(|a| a.address.parse().ok()).collect();
            let ip = internal.iter().find(|ip| ip.is_ipv4()).or_else(|| internal.first())?;
            let ip = match ip {
                IpAddr::V4(v4) if ipv6_socket => IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(_) if !ipv6_socket => return None,
                other => *other,
            };
            Some((name.to_string(), SocketAddr::new(ip, port)))
        })
        .collect()
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

    /// A port held by another process (a MetalLB speaker still exiting) is waited for, not a reason to exit.
    #[tokio::test]
    async fn a_liveness_port_in_use_is_waited_for() {
        let holder = bind(0).expect("a free port");
        let port = holder.local_addr().expect("port").port();
        assert_eq!(bind(port).map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::AddrInUse), "held");
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = released.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            flag.store(true, Ordering::SeqCst);
            drop(holder);
        });
        let socket = bind_waiting(port).await.expect("bound once free");
        assert!(released.load(Ordering::SeqCst), "not before the holder let go");
        assert_eq!(socket.local_addr().expect("port").port(), port);
    }

    #[tokio::test]
    async fn without_a_key_no_peer_is_ever_judged_so_the_node_ready_fallback_decides() {
        let settings = Settings {
            node: "node-1".into(),
            namespace: "metallb-system".into(),
            pod_name: None,
            speaker_pod_selector: None,
            load_balancer_class: None,
            garp_schedule: vec![],
            garp_refresh: None,
            gossip_port: 7946,
            gossip_key: None,
            heartbeat: Duration::from_millis(50),
            dead_after: Duration::from_millis(200),
            policy: crate::model::election::Policy::default(),
            exclusions: crate::model::interfaces::Exclusions::default(),
            interface_rescan: Duration::from_secs(60),
        };
        let (wake, _woken) = tokio::sync::mpsc::unbounded_channel();
        let liveness =
            Liveness::start(&settings, Arc::new(Stats::default()), wake).await.expect("no socket without a key");
        assert!(!liveness.is_on());
        let peer: SocketAddr = "198.18.0.12:7946".parse().expect("address");
        liveness.set_peers(BTreeMap::from([("node-2".to_string(), peer)]));
        let much_later = Instant::now() + Duration::from_secs(60);
        let verdict = liveness.view().verdict("node-2", much_later);
        assert_eq!(verdict, crate::model::membership::Verdict::Unknown, "never heard, never judged");
    }

    #[test]
    fn this_speakers_old_format_copies_are_not_taken_for_an_old_speakers() {
        let identity = Identity::new("me");
        let copy = Message { legacy: true, ..identity.message(Kind::Alive) };
        assert!(!copy.from_old_speaker(), "incarnation {:#x}", identity.incarnation);
        // An old speaker's incarnation, from the same clock and pid: below the mark.
        let old = Message { incarnation: identity.incarnation & !liveness::READS_FLB3, ..copy };
        assert!(old.from_old_speaker());
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
        let peers = |v6: bool| peer_addresses(&nodes, None, "me", 7946, v6).into_values().collect::<Vec<_>>();
        let expect = |list: &[&str]| list.iter().map(|a| a.parse::<SocketAddr>().expect("addr")).collect::<Vec<_>>();
        let speakers = BTreeSet::from(["me".to_string(), "v6-only".to_string(), "no-address".to_string()]);
        assert_eq!(
            peer_addresses(&nodes, Some(&speakers), "me", 7946, true).into_values().collect::<Vec<_>>(),
            expect(&["[2001:db8:18::13]:7946"]),
            "only nodes that run a speaker hear heartbeats"
        );
        assert_eq!(
            peers(true),
            expect(&["[::ffff:198.18.0.12]:7946", "[::ffff:198.18.0.14]:7946", "[2001:db8:18::13]:7946"])
        );
        assert_eq!(
            peers(false),
            expect(&["198.18.0.12:7946", "198.18.0.14:7946"]),
            "an IPv4 socket cannot reach an IPv6-only peer"
        );
        let speakers = BTreeSet::from(["v4-only".to_string(), "me".to_string()]);
        let only = peer_addresses(&nodes, Some(&speakers), "me", 7946, false);
        assert_eq!(only.keys().collect::<Vec<_>>(), ["v4-only"], "nodes without a speaker get no heartbeat");
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
