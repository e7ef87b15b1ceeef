//! ferrolb-speaker: decides which node answers for each address and answers ARP (IPv4) or neighbour discovery
//! (IPv6) for it.
//!
//! Pure: [`arp`] and [`ndp`] (wire formats, accept/reply decisions), [`wire`] (which of the two a frame or an
//! address takes), [`claim`] (one answerer per address from what the wire shows), [`election`] (one owner per address), [`liveness`]
//! (heartbeat rules), [`view`] (Kubernetes objects to election facts), [`plan`] (what this node announces),
//! [`diagnose`] (why nobody announces), [`iface`] (which interface answers). I/O: [`announcer`] (raw sockets
//! and gratuitous ARP), [`gossip`] (the liveness protocol's sockets), [`report`] (ServiceL2Status and
//! Events), [`raw`] (AF_PACKET), [`netlink`] (interface change notifications), wired together by [`run`]. docs/design.md §1.3 and §4–7 tell the rules.

pub mod announcer;
pub mod arp;
pub mod claim;
pub mod diagnose;
pub mod election;
pub mod error;
pub mod gossip;
pub mod iface;
pub mod liveness;
pub mod metrics;
pub mod ndp;
pub mod netlink;
pub mod plan;
pub mod raw;
pub mod report;
pub mod run;
pub mod settings;
pub mod signs;
pub mod trim;
pub mod view;
pub mod wire;
