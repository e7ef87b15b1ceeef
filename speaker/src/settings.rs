//! What the speaker is told at start (flags and environment, see `main.rs`).

use crate::model::election::Policy;
use crate::model::interfaces::Exclusions;
use std::time::Duration;

/// What the speaker is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// Namespace of the pools and advertisements (and of the speaker pods).
    pub namespace: String,
    /// This speaker's Pod, when it runs in one: the owner of its ConfigurationState.
    pub pod_name: Option<String>,
    /// Label selector of this release's speaker pods, which say which nodes run a speaker; `None`: not known,
    /// every node may.
    pub speaker_pod_selector: Option<String>,
    /// Only Services of this class (none: only Services without a class).
    pub load_balancer_class: Option<String>,
    /// Gratuitous ARP on takeover at these offsets.
    pub garp_schedule: Vec<Duration>,
    /// Re-announce every owned address this often (both gratuitous forms); `None`: only on takeover.
    pub garp_refresh: Option<Duration>,
    /// UDP port of the liveness protocol.
    pub gossip_port: u16,
    /// Shared key authenticating liveness messages; without one, liveness falls back to Node `Ready` only.
    pub gossip_key: Option<Vec<u8>>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Silence after which a peer is dead.
    pub dead_after: Duration,
    /// Who may announce (the same on every speaker).
    pub policy: Policy,
    /// Interface names not answered on unless an L2Advertisement names them.
    pub exclusions: Exclusions,
    /// Interfaces are read again at least this often, whatever netlink says (a safety net).
    pub interface_rescan: Duration,
}
